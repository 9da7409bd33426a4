//! Reconciliation after the ladder: pure decision code.
//!
//! A payment that the ladder ended in a state that may still move (`timed_out`; a kind's
//! documented moves, such as a quote's `succeeded` that can be `refunded`) stays watched on
//! a sparse schedule of ages since its start (`reconcile.after`). Those ages are the
//! densest checks allowed, as the ladder is for live payments; the checks are paid from
//! what the live payments leave of the key's budget, so on a busy key only some are made.
//! Which ones: the check most likely to see a move since the payment's last check, by the
//! kind's learnt distribution of late-move ages ([`LateGrid`], a [`crate::policy::Learner`]
//! on it), whatever the payment's arrival order.
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

    /// A watched payment's evidence: last seen unmoved at `seen_ms` (since its start),
    /// seen moved at `moved_ms` (`None`: not seen to move).
    pub fn evidence(&self, seen_ms: i64, moved_ms: Option<i64>) -> Evidence {
        let lo = self.cell(seen_ms);
        let hi = moved_ms.map(|m| self.cell_ceil(m).max(lo + 1));
        Evidence { lo, hi }
    }
}

/// How much a check of a watched payment is worth now: the chance that it moved since
/// it was last seen unmoved, by the late-move distribution `dist` (`P(move in (seen, now]
/// | no move by seen)`).
pub fn worth(grid: &LateGrid, dist: &FlipDist, seen_age_ms: i64, now_age_ms: i64) -> f64 {
    let t = grid.cell(seen_age_ms);
    let a = grid.cell(now_age_ms);
    let alive = dist.survival(t);
    if alive <= 0.0 || a <= t {
        return 0.0;
    }
    ((alive - dist.survival(a)) / alive).clamp(0.0, 1.0)
}

/// The schedule's next age strictly after `age_ms`: its index, or `None` past the last.
pub fn next_age(schedule: &[i64], age_ms: i64) -> Option<usize> {
    schedule.iter().position(|&a| a > age_ms)
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
    let k = schedule.len();
    if k == 0 {
        return LateBound {
            delay_ms: 0.0,
            seen: 0.0,
            checks: 0.0,
        };
    }
    let ages: Vec<i64> = std::iter::once(start_ms)
        .chain(schedule.iter().copied())
        .collect();
    let last_gap = if k >= 2 {
        schedule[k - 1] - schedule[k - 2]
    } else {
        schedule[0] - start_ms
    };
    let miss_at = (schedule[k - 1] + last_gap.max(1)) as f64;
    let total_moves = moves(start_ms, schedule[k - 1]).0;
    // Survival (not yet moved) at each age: checks are made only while unmoved.
    let unmoved = |i: usize| -> f64 { 1.0 - moves(start_ms, ages[i]).0 };
    // Delay of the moves in (ages[t], ages[u]] seen at ages[u]; the cost of those after
    // ages[t] that no later check sees.
    let seen_cost = |t: usize, u: usize| -> (f64, f64) {
        let (share, mean) = moves(ages[t], ages[u]);
        (share * (ages[u] as f64 - mean), share)
    };
    let miss_cost = |t: usize| -> f64 {
        let (share, mean) = moves(ages[t], schedule[k - 1]);
        share * (miss_at - mean)
    };
    // value[t]: least cost after a check at ages[t]; next[t]: the next check (k+1: none).
    let solve = |mu: f64| -> (f64, f64, f64) {
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
        // Walk the schedule from the start: requests, delay of the moves seen, their share.
        let (mut t, mut req, mut delay, mut share) = (0usize, 0.0, 0.0, 0.0);
        while next[t] <= k {
            let u = next[t];
            req += unmoved(t);
            let (d, s) = seen_cost(t, u);
            delay += d;
            share += s;
            t = u;
        }
        (req, delay, share)
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
    fn worth_is_the_chance_of_a_move_since_the_last_check() {
        let g = LateGrid::new(10 * MIN, 72 * 60 * MIN);
        let prior = g.prior();
        let w1 = worth(&g, &prior, 10 * MIN, 60 * MIN);
        let w2 = worth(&g, &prior, 10 * MIN, 24 * 60 * MIN);
        assert!(w1 > 0.0 && w2 > w1 && w2 < 0.1 + 1e-9, "{w1} {w2}");
        assert_eq!(worth(&g, &prior, 60 * MIN, 60 * MIN), 0.0);
        assert_eq!(worth(&g, &prior, 60 * MIN, 30 * MIN), 0.0);
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
}
