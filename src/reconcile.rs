//! Reconciliation after the ladder: pure decision code.
//!
//! A payment that the ladder ended in a state that may still move (`timed_out`; a kind's
//! documented moves, such as a quote's `succeeded` that can be `refunded`) stays watched on
//! a sparse schedule of ages since its start (`reconcile.after`). Those ages are the
//! densest checks allowed, as the ladder is for live payments; the checks are paid from
//! what the live payments leave of the key's budget, so on a busy key only some are made.
//! Which ones: those that see a move soonest for the requests there are, by the kind's
//! learnt distribution of late-move ages ([`LateGrid`], a [`crate::policy::Learner`] on it)
//! and the dynamic program over the schedule's ages ([`LateProblem`]), whatever the
//! payment's arrival order.
//!
//! Late moves spread over hours to days, so ages are on a logarithmic grid from the
//! ladder's timeout to the end of the longest schedule: a cell is a fixed fraction of the
//! age, fine where moves are dense (the first hour) and coarse where they are rare.

use crate::policy::{Evidence, FlipDist};

/// Cells of the late grid.
pub const LATE_CELLS: usize = 96;

/// Share of watched payments the prior expects to move late: small, so the first
/// evidence decides.
const PRIOR_MOVES: f64 = 0.1;

/// Ages from the ladder's timeout to the end of the watch, on a logarithmic grid: cell
/// `i` (`1 ≤ i ≤ n`) holds ages in `(start·r^(i-1), start·r^i]`; cell 0 is the ladder's
/// life.
#[derive(Debug, Clone, PartialEq)]
pub struct LateGrid {
    start_ms: i64,
    end_ms: i64,
    n: usize,
    /// `ln r`.
    log_ratio: f64,
}

impl LateGrid {
    /// The grid from `start_ms` (the ladder's timeout) to `end_ms` (the longest schedule's
    /// last age).
    pub fn new(start_ms: i64, end_ms: i64) -> Self {
        let start_ms = start_ms.max(1);
        let end_ms = end_ms.max(start_ms + 1);
        let n = LATE_CELLS;
        let log_ratio = ((end_ms as f64) / (start_ms as f64)).ln() / n as f64;
        Self {
            start_ms,
            end_ms,
            n,
            log_ratio: log_ratio.max(1e-9),
        }
    }

    /// Cells of the grid.
    #[cfg(test)]
    pub fn cells(&self) -> usize {
        self.n
    }

    fn position(&self, age_ms: i64) -> f64 {
        if age_ms <= self.start_ms {
            return 0.0;
        }
        ((age_ms as f64) / (self.start_ms as f64)).ln() / self.log_ratio
    }

    /// The cell of an age (a move seen after a check at this age happened in a later
    /// cell).
    pub fn cell(&self, age_ms: i64) -> usize {
        (self.position(age_ms).floor() as usize).min(self.n)
    }

    /// The first cell whose end is at or after an age (a move seen by a check at this age
    /// happened in this cell or before).
    pub fn cell_ceil(&self, age_ms: i64) -> usize {
        ((self.position(age_ms) - 1e-9).ceil().max(0.0) as usize).min(self.n)
    }

    /// The age (ms) at which cell `i` ends.
    pub fn age_ms(&self, i: usize) -> i64 {
        if i == 0 {
            return self.start_ms;
        }
        let a = self.start_ms as f64 * (self.log_ratio * i.min(self.n) as f64).exp();
        (a.round() as i64).min(self.end_ms.max(self.start_ms))
    }

    /// The prior of a kind's late moves: [`PRIOR_MOVES`] of the payments moving, evenly
    /// over the cells (log-uniform in age), the rest never.
    pub fn prior(&self) -> FlipDist {
        let mut pmf = vec![0.0; self.n + 2];
        for p in pmf.iter_mut().take(self.n + 1).skip(1) {
            *p = PRIOR_MOVES / self.n as f64;
        }
        pmf[self.n + 1] = 1.0 - PRIOR_MOVES;
        FlipDist::new(pmf)
    }

    /// `moves(a, b)` of [`LateProblem`] for moves distributed as `dist`: each cell's share
    /// spread evenly over its log-age span.
    pub fn moves<'a>(&'a self, dist: &'a FlipDist) -> impl Fn(i64, i64) -> (f64, f64) + 'a {
        move |a: i64, b: i64| {
            let (pa, pb) = (self.position(a), self.position(b));
            if pb <= pa {
                return (0.0, a as f64);
            }
            let (mut share, mut weighted) = (0.0, 0.0);
            let first = pa.floor() as usize;
            let last = (pb.ceil() as usize).min(self.n);
            for i in (first + 1)..=last {
                let (lo, hi) = ((i - 1) as f64, i as f64);
                let (x, y) = (lo.max(pa), hi.min(pb));
                if y <= x {
                    continue;
                }
                let mass = (dist.survival(i - 1) - dist.survival(i)).max(0.0) * (y - x);
                let mid = self.start_ms as f64 * (self.log_ratio * (x + y) / 2.0).exp();
                share += mass;
                weighted += mass * mid;
            }
            if share > 0.0 {
                (share, weighted / share)
            } else {
                (0.0, a as f64)
            }
        }
    }

    /// A watched payment's evidence: last seen unmoved at `seen_ms` (since its start),
    /// seen moved at `moved_ms` (`None`: not seen to move).
    pub fn evidence(&self, seen_ms: i64, moved_ms: Option<i64>) -> Evidence {
        let lo = self.cell(seen_ms);
        let hi = moved_ms.map(|m| self.cell_ceil(m).max(lo + 1));
        Evidence { lo, hi }
    }
}

/// The schedule's next age strictly after `age_ms`: its index, or `None` past the last.
pub fn next_age(schedule: &[i64], age_ms: i64) -> Option<usize> {
    schedule.iter().position(|&a| a > age_ms)
}

/// One late-move model's choice of checks over a schedule: for a price `μ` per request,
/// the subset of the schedule's ages minimising `E[cost] + μ·E[checks]`, where a move seen
/// by a check costs its delay and a move no check sees costs the whole watch after it (as
/// if seen at the schedule's last age plus the last gap). Positions: 0 is the watch's
/// start (the ladder's timeout), `i + 1` the schedule's age `i`.
pub struct LateProblem<'a> {
    ages: Vec<i64>,
    miss_at: f64,
    moves: &'a dyn Fn(i64, i64) -> (f64, f64),
}

/// The checks of one price: after a check at position `t`, the next at `next[t]` (past
/// the schedule's end: none); per watched payment, the requests it spends, the delay of
/// the moves it sees (ms, summed over their share) and the share it sees.
#[derive(Debug, Clone, PartialEq)]
pub struct LatePlan {
    pub next: Vec<usize>,
    pub checks: f64,
    pub delay: f64,
    pub seen: f64,
}

impl<'a> LateProblem<'a> {
    /// `moves(a, b)`: the share of watched payments moving at an age in `(a, b]` and their
    /// mean age there (ms).
    pub fn new(schedule: &[i64], start_ms: i64, moves: &'a dyn Fn(i64, i64) -> (f64, f64)) -> Self {
        let k = schedule.len();
        let last_gap = match schedule {
            [.., a, b] => b - a,
            [a] => a - start_ms,
            [] => 0,
        };
        let miss_at = schedule
            .last()
            .map_or(0.0, |l| (l + last_gap.max(1)) as f64);
        let ages = std::iter::once(start_ms)
            .chain(schedule.iter().copied())
            .collect::<Vec<_>>();
        debug_assert_eq!(ages.len(), k + 1);
        Self {
            ages,
            miss_at,
            moves,
        }
    }

    /// The plan at price `mu` (requests are made only while a payment is seen unmoved).
    pub fn solve(&self, mu: f64) -> LatePlan {
        let ages = &self.ages;
        let k = ages.len() - 1;
        let (start, last) = (ages[0], ages[k]);
        let unmoved = |i: usize| -> f64 { 1.0 - (self.moves)(start, ages[i]).0 };
        let seen_cost = |t: usize, u: usize| -> (f64, f64) {
            let (share, mean) = (self.moves)(ages[t], ages[u]);
            (share * (ages[u] as f64 - mean), share)
        };
        let miss_cost = |t: usize| -> f64 {
            let (share, mean) = (self.moves)(ages[t], last);
            share * (self.miss_at - mean)
        };
        // value[t]: least cost after a check at position t.
        let mut value = vec![0.0f64; k + 1];
        let mut next = vec![k + 1; k + 1];
        for t in (0..=k).rev() {
            let mut best = (miss_cost(t), k + 1);
            for (u, v) in value.iter().enumerate().skip(t + 1) {
                let c = mu * unmoved(t) + seen_cost(t, u).0 + v;
                if c < best.0 {
                    best = (c, u);
                }
            }
            value[t] = best.0;
            next[t] = best.1;
        }
        let (mut t, mut checks, mut delay, mut seen) = (0usize, 0.0, 0.0, 0.0);
        while next[t] <= k {
            let u = next[t];
            checks += unmoved(t);
            let (d, s) = seen_cost(t, u);
            delay += d;
            seen += s;
            t = u;
        }
        LatePlan {
            next,
            checks,
            delay,
            seen,
        }
    }
}

/// Price levels of the late plans: level 0 checks every age of the schedule, each level
/// up a quarter decade dearer, the top checks none.
pub const LATE_PRICES: usize = 48;

/// The price at a level between two whole ones, in ms of delay per request (as
/// [`late_price`], the lowest free).
pub fn late_price_at(level: f64) -> f64 {
    if level <= 0.0 {
        0.0
    } else if level >= LATE_PRICES as f64 {
        f64::INFINITY
    } else {
        10f64.powf(level / 4.0)
    }
}

/// The price of a level, in ms of delay per request.
fn late_price(level: usize) -> f64 {
    match level {
        0 => 0.0,
        l if l >= LATE_PRICES => f64::INFINITY,
        l => 10f64.powf(l as f64 / 4.0),
    }
}

/// One late-move model's plans at every price level.
#[derive(Debug, Clone, PartialEq)]
pub struct LatePlans {
    plans: Vec<LatePlan>,
}

impl LatePlans {
    /// The plans over `schedule` for moves distributed as `dist` on `grid`.
    pub fn new(grid: &LateGrid, dist: &FlipDist, schedule: &[i64]) -> Self {
        let moves = grid.moves(dist);
        let problem = LateProblem::new(schedule, grid.start_ms, &moves);
        let plans = (0..=LATE_PRICES)
            .map(|l| match late_price(l) {
                mu if mu.is_finite() => problem.solve(mu),
                _ => LatePlan {
                    next: vec![schedule.len() + 1; schedule.len() + 1],
                    checks: 0.0,
                    delay: 0.0,
                    seen: 0.0,
                },
            })
            .collect();
        Self { plans }
    }

    /// Requests per watched payment at a whole level.
    pub fn checks(&self, level: usize) -> f64 {
        self.plans[level.min(LATE_PRICES)].checks
    }

    /// The position to check after position `t`, at a whole level (past the schedule's
    /// end: none).
    pub fn next(&self, level: usize, t: usize) -> usize {
        let plan = &self.plans[level.min(LATE_PRICES)];
        plan.next.get(t).copied().unwrap_or(plan.next.len())
    }
}

/// What the best policy that knows the late-move distribution achieves with `checks`
/// requests per watched payment, on the schedule's ages (the densest allowed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LateBound {
    /// Mean delay (ms) from a move to the check that sees it, over the moves seen.
    pub delay_ms: f64,
    /// Share of the moves within the schedule that are seen by its last age.
    pub seen: f64,
    /// Requests per watched payment it spends.
    pub checks: f64,
}

/// The bound on late moves: the dynamic program of [`crate::policy`] over the schedule's
/// ages instead of the ladder's cells. For a price `μ` per request it picks the subset of
/// ages minimising `E[cost] + μ·E[checks]`, where a move seen by a check costs its delay
/// and a move no check sees costs the whole watch after it (as if seen at the schedule's
/// last age plus the last gap); the price is bisected so the checks meet `checks`, the two
/// neighbouring prices mixed. `moves(a, b)` is the share of watched payments moving at an
/// age in `(a, b]` and `moved_age(a, b)` their mean age there (ms); `start_ms` is where the
/// watch begins (the ladder's timeout).
pub fn late_bound(
    schedule: &[i64],
    start_ms: i64,
    moves: &dyn Fn(i64, i64) -> (f64, f64),
    checks: f64,
) -> LateBound {
    if schedule.is_empty() {
        return LateBound {
            delay_ms: 0.0,
            seen: 0.0,
            checks: 0.0,
        };
    }
    let problem = LateProblem::new(schedule, start_ms, moves);
    let total_moves = moves(start_ms, schedule[schedule.len() - 1]).0;
    let solve = |mu: f64| -> (f64, f64, f64) {
        let plan = problem.solve(mu);
        (plan.checks, plan.delay, plan.seen)
    };
    let figures = |(req, delay, share): (f64, f64, f64)| LateBound {
        delay_ms: if share > 0.0 { delay / share } else { 0.0 },
        seen: if total_moves > 0.0 {
            (share / total_moves).min(1.0)
        } else {
            1.0
        },
        checks: req,
    };
    let dense = solve(0.0);
    if dense.0 <= checks {
        return figures(dense);
    }
    let (mut lo, mut hi) = (1e-6f64, 1e12f64);
    let (mut t_lo, mut t_hi) = (solve(lo), solve(hi));
    if t_hi.0 > checks {
        return figures(t_hi);
    }
    for _ in 0..80 {
        let mid = (lo * hi).sqrt();
        let t = solve(mid);
        if t.0 > checks {
            lo = mid;
            t_lo = t;
        } else {
            hi = mid;
            t_hi = t;
        }
        if hi / lo < 1.0 + 1e-9 {
            break;
        }
    }
    // Mix the neighbours so the requests meet the budget exactly.
    let span = t_lo.0 - t_hi.0;
    let w = if span > 1e-12 {
        (checks - t_hi.0) / span
    } else {
        0.0
    };
    let mix = |a: f64, b: f64| w * a + (1.0 - w) * b;
    figures((
        mix(t_lo.0, t_hi.0),
        mix(t_lo.1, t_hi.1),
        mix(t_lo.2, t_hi.2),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn the_grid_is_logarithmic_and_round_trips() {
        let g = LateGrid::new(10 * MIN, 72 * 60 * MIN);
        assert_eq!(g.cell(5 * MIN), 0);
        assert_eq!(g.cell(10 * MIN), 0);
        assert_eq!(g.cell(72 * 60 * MIN), g.cells());
        assert_eq!(g.cell(1_000 * 60 * MIN), g.cells());
        // Equal ratios of age, equal numbers of cells.
        let a = g.cell(20 * MIN) as i64 - g.cell(10 * MIN) as i64;
        let b = g.cell(40 * MIN) as i64 - g.cell(20 * MIN) as i64;
        assert!((a - b).abs() <= 1, "{a} {b}");
        for i in 1..=g.cells() {
            let age = g.age_ms(i);
            assert!(g.cell_ceil(age).abs_diff(i) <= 1, "{i}");
            assert!(g.cell(age).abs_diff(i) <= 1, "{i}");
        }
        // A move seen at an age lies at or before the cell it is seen in.
        let e = g.evidence(15 * MIN, Some(31 * MIN));
        assert!(e.lo < e.hi.unwrap());
    }

    #[test]
    fn the_schedule_s_next_age_comes_strictly_after() {
        let s = [15 * MIN, 30 * MIN, 60 * MIN];
        assert_eq!(next_age(&s, 10 * MIN), Some(0));
        assert_eq!(next_age(&s, 15 * MIN), Some(1));
        assert_eq!(next_age(&s, 59 * MIN), Some(2));
        assert_eq!(next_age(&s, 60 * MIN), None);
    }

    /// Log-uniform moves between 15 minutes and 24 hours for a share `p` of the payments.
    fn log_uniform(p: f64) -> impl Fn(i64, i64) -> (f64, f64) {
        let (lo, hi) = (15.0 * MIN as f64, 24.0 * 60.0 * MIN as f64);
        move |a: i64, b: i64| {
            let (a, b) = ((a as f64).clamp(lo, hi), (b as f64).clamp(lo, hi));
            if b <= a {
                return (0.0, a);
            }
            let share = p * (b / a).ln() / (hi / lo).ln();
            // Mean of a log-uniform over (a, b]: (b - a) / ln(b / a).
            (share, (b - a) / (b / a).ln())
        }
    }

    #[test]
    fn the_bound_sees_every_move_when_the_whole_schedule_is_affordable() {
        let s: Vec<i64> = [15, 30, 60, 120, 360, 720, 1440, 2880, 4320]
            .iter()
            .map(|m| m * MIN)
            .collect();
        let moves = log_uniform(0.05);
        let rich = late_bound(&s, 10 * MIN, &moves, 100.0);
        assert!((rich.seen - 1.0).abs() < 1e-9, "{rich:?}");
        assert!(rich.checks <= 9.0 + 1e-9);
        // Fewer requests: later detection, never more requests than given.
        let poor = late_bound(&s, 10 * MIN, &moves, 2.0);
        assert!((poor.checks - 2.0).abs() < 1e-6, "{poor:?}");
        assert!(poor.delay_ms >= rich.delay_ms, "{poor:?} {rich:?}");
        let none = late_bound(&s, 10 * MIN, &moves, 0.0);
        assert!(none.seen < 1e-9, "{none:?}");
    }

    #[test]
    fn the_plans_check_every_age_when_cheap_and_the_day_s_age_alone_when_dear() {
        let s: Vec<i64> = [15, 30, 60, 120, 360, 720, 1440, 2880, 4320]
            .iter()
            .map(|m| m * MIN)
            .collect();
        let g = LateGrid::new(10 * MIN, 4320 * MIN);
        // A sixth of the watched payments move, log-uniformly between 15 minutes and a day.
        let mut pmf = vec![0.0; LATE_CELLS + 2];
        let (lo, hi) = (g.cell(15 * MIN), g.cell(1440 * MIN));
        for p in pmf.iter_mut().take(hi + 1).skip(lo + 1) {
            *p = (1.0 / 6.0) / (hi - lo) as f64;
        }
        pmf[LATE_CELLS + 1] = 5.0 / 6.0;
        let plans = LatePlans::new(&g, &FlipDist::new(pmf), &s);
        let ages = |level: usize| -> Vec<i64> {
            let (mut t, mut out) = (0, Vec::new());
            while (1..=s.len()).contains(&plans.next(level, t)) {
                t = plans.next(level, t);
                out.push(s[t - 1] / MIN);
            }
            out
        };
        // Nothing moves after a day: the ages past it are never worth a request.
        assert_eq!(ages(0), [15, 30, 60, 120, 360, 720, 1440]);
        assert!(ages(LATE_PRICES).is_empty());
        // Dearer, fewer checks; the last one kept is the day's, which sees every move.
        let mut last = f64::INFINITY;
        for level in 0..=LATE_PRICES {
            assert!(plans.checks(level) <= last + 1e-9, "level {level}");
            last = plans.checks(level);
        }
        let one = (0..=LATE_PRICES)
            .find(|&l| ages(l).len() == 1)
            .expect("a price with one check");
        assert_eq!(ages(one), [1440]);
    }
}
