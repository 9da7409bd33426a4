//! The dynamic program: for one flip-age distribution and one price of a request, the
//! schedule of check ages that minimises `E[delay] + μ·E[checks]` under the ladder's rules
//! ([`Table`]); a ladder of such prices for one kind ([`Plans`]); how a price level is
//! judged against a dearer one ([`dearest_alike`]) and against another distribution's plans
//! ([`delay_at`]).

use super::grid::{FlipDist, Grid, CELLS};
use std::sync::OnceLock;

/// A cell of the grid as a table holds it: a kind's plans hold up to 73 tables of
/// [`CELLS`] entries, and each account has its own plans.
type Cell = u16;
const _: () = assert!(CELLS < Cell::MAX as usize);

/// The schedule that is optimal for one price of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The price it was solved for (cells of delay per request); 0 for the ladder itself.
    pub mu: f64,
    /// After a check in cell `t` (`0`: no check yet), the cell of the next one.
    next: Box<[Cell]>,
    /// Expected requests per payment.
    pub checks: f64,
    /// Expected delay of a flip before the deadline, in cells.
    pub delay: f64,
    /// Expected requests in the first `h` cells of a payment's life, summed over
    /// `h = 0..window`: a steady stream of one payment per cell costs this many requests
    /// in a window.
    pub per_window: f64,
}

impl Table {
    /// The next check's cell after a check in cell `t` (`0`: before any).
    pub fn next(&self, t: usize) -> usize {
        usize::from(self.next[t.min(self.next.len() - 1)])
    }

    fn from_next(next: &[usize], mu: f64, dist: &FlipDist, window_cells: usize) -> Self {
        let n = next.len();
        let (mut t, mut checks, mut delay) = (0usize, 0.0, 0.0);
        let mut at: Vec<(usize, f64)> = Vec::new();
        loop {
            let u = next[t];
            let w = dist.survival(t);
            checks += w;
            at.push((u, w));
            delay += dist.delay(t, u);
            if u >= n {
                break;
            }
            t = u;
        }
        let flips = dist.flips();
        // Requests in the first `h` cells: each check at cell `u` counts for `h > u`... summed
        // over `h < window` it counts `window - u` times.
        let per_window = at
            .iter()
            .map(|&(u, w)| w * window_cells.saturating_sub(u) as f64)
            .sum();
        Self {
            mu,
            next: next.iter().map(|&u| u as Cell).collect(),
            checks,
            delay: if flips > 0.0 { delay / flips } else { 0.0 },
            per_window,
        }
    }

    /// The ladder as a table.
    fn ladder(grid: &Grid, dist: &FlipDist, window_cells: usize) -> Self {
        Self::from_next(&grid.ladder_next, 0.0, dist, window_cells)
    }

    /// Solves the dynamic program for price `mu`.
    pub(super) fn solve(grid: &Grid, dist: &FlipDist, mu: f64, window_cells: usize) -> Self {
        let n = grid.n;
        let mut value = vec![0.0f64; n + 1];
        let mut next = vec![n; n];
        for t in (0..n).rev() {
            let lo = if t == 0 {
                grid.first
            } else {
                (t + grid.step[t]).max(grid.first)
            };
            let base = mu * dist.survival(t);
            // The deadline check is always allowed, whatever the step.
            let mut best = (base + dist.delay(t, n), n);
            for (u, v) in value.iter().enumerate().take(n).skip(lo) {
                let c = base + dist.delay(t, u) + v;
                if c < best.0 {
                    best = (c, u);
                }
            }
            value[t] = best.0;
            next[t] = best.1;
        }
        Self::from_next(&next, mu, dist, window_cells)
    }

    /// Expected requests in `(now, now + horizon]` cells of age for a payment last checked
    /// in cell `last` and now `age` cells old whose next check is due at cell `due`,
    /// given that it is pending now.
    pub fn demand(
        &self,
        dist: &FlipDist,
        last: usize,
        due: usize,
        age: usize,
        horizon: usize,
    ) -> f64 {
        let n = self.next.len();
        let end = age + horizon;
        let s0 = dist.survival(last).max(1e-9);
        let mut u = due.max(age);
        let mut t;
        let mut w = 1.0;
        let mut total = 0.0;
        loop {
            if u > end {
                break;
            }
            total += w;
            if u >= n {
                break;
            }
            t = u;
            w = (dist.survival(t) / s0).min(1.0);
            u = usize::from(self.next[t]);
        }
        total
    }
}

/// Schedules for a ladder of prices, for one kind's flip distribution. Index 0 is the
/// documented ladder itself (the budget is not scarce); higher indices are ever dearer
/// requests, so ever fewer checks. Each is solved the first time it is needed: a key's
/// level search visits a handful of them, so the others cost a pointer each. Plans may be
/// shared (`Arc`) by every account whose estimate of a kind is the same distribution:
/// solved once, by whichever asks first.
#[derive(Debug, Clone)]
pub struct Plans {
    pub dist: FlipDist,
    grid: Grid,
    window_cells: usize,
    tables: Box<[OnceLock<Box<Table>>]>,
}

/// Number of priced tables above the ladder.
const PRICES: usize = 72;
/// Cheapest and dearest price, in cells of delay per request.
const MU_MIN: f64 = 0.01;
const MU_MAX: f64 = 100_000.0;

impl Plans {
    /// Plans for `dist`. `window_cells`: the budget window on the grid.
    pub fn new(grid: &Grid, dist: FlipDist, window_cells: usize) -> Self {
        Self {
            dist,
            grid: grid.clone(),
            window_cells,
            tables: (0..=PRICES).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The price of level `i` (0 for the ladder).
    fn mu(i: usize) -> f64 {
        if i == 0 {
            return 0.0;
        }
        let ratio = (MU_MAX / MU_MIN).powf(1.0 / (PRICES - 1) as f64);
        MU_MIN * ratio.powi(i as i32 - 1)
    }

    /// The schedule of level `i` (clamped to the top).
    pub fn at(&self, i: usize) -> &Table {
        let i = i.min(PRICES);
        self.tables[i].get_or_init(|| {
            Box::new(if i == 0 {
                Table::ladder(&self.grid, &self.dist, self.window_cells)
            } else {
                Table::solve(&self.grid, &self.dist, Self::mu(i), self.window_cells)
            })
        })
    }

    /// The table a payment with mixing draw `phi ∈ [0, 1)` follows at price level `level`
    /// (fractional: `level = 3.25` sends a quarter of the payments to table 4).
    pub fn table(&self, level: f64, phi: f64) -> &Table {
        let lo = level.floor().max(0.0) as usize;
        let frac = level - lo as f64;
        self.at(if phi < frac { lo + 1 } else { lo })
    }

    /// Expected delay (cells) at a fractional level, mixing its two tables.
    pub fn delay(&self, level: f64) -> f64 {
        let lo = level.floor().max(0.0) as usize;
        let frac = level - lo as f64;
        self.at(lo).delay * (1.0 - frac) + self.at(lo + 1).delay * frac
    }

    /// Each level's schedule, solved for this plan's distribution, as (requests per
    /// payment, mean delay in cells) when the flips follow `truth` instead. Against
    /// `truth`'s own plans (see [`delay_at`]) it tells how much a learnt distribution's
    /// schedules lose by being learnt, whatever the budget's pressure and the limiter do.
    pub fn frontier_under(&self, truth: &FlipDist) -> Vec<(f64, f64)> {
        (0..=PRICES)
            .map(|i| {
                let t = self.at(i);
                let next: Vec<usize> = t.next.iter().map(|&u| usize::from(u)).collect();
                let e = Table::from_next(&next, t.mu, truth, self.window_cells);
                (e.checks, e.delay)
            })
            .collect()
    }

    /// The highest level.
    pub fn top(&self) -> usize {
        PRICES
    }
}

/// A dearer price whose schedules' expected flip delay is within this fraction of the
/// fitted price's is taken instead: the requests it saves would see (next to) no flip, and
/// would only queue at the limiter ahead of checks that do (mix E: every flip before the
/// first check allowed, the rest never). Small, because a wider margin also skips prices
/// whose extra checks do buy delay on the published mixes.
pub const NEGLIGIBLE_GAIN: f64 = 0.001;

/// The dearest whole price level above `level` (up to `top`) whose expected flip delay,
/// `flip_delay(l)` (rising with the level), stays within [`NEGLIGIBLE_GAIN`] of `level`'s;
/// `None` when the next one up already costs more, or nothing flips.
pub fn dearest_alike(level: f64, top: usize, flip_delay: impl Fn(f64) -> f64) -> Option<usize> {
    let at_fit = flip_delay(level);
    if at_fit <= 0.0 {
        return None;
    }
    ((level.floor() as usize + 1)..=top)
        .take_while(|&l| flip_delay(l as f64) <= at_fit * (1.0 + NEGLIGIBLE_GAIN))
        .last()
}

/// The least mean delay along `frontier` (see [`Plans::frontier_under`]) at `checks`
/// requests per payment, mixing two neighbouring levels as the core does; `None` when no
/// two neighbours span it.
pub fn delay_at(frontier: &[(f64, f64)], checks: f64) -> Option<f64> {
    frontier
        .windows(2)
        .filter_map(|w| {
            let ((c0, d0), (c1, d1)) = (w[0], w[1]);
            let (lo, hi) = (c0.min(c1), c0.max(c1));
            if checks < lo || checks > hi {
                return None;
            }
            let x = if hi - lo > 1e-12 {
                (checks - c0) / (c1 - c0)
            } else {
                0.0
            };
            Some(d0 + x * (d1 - d0))
        })
        .min_by(f64::total_cmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::Ladder;
    use crate::policy::grid::CELLS;
    use crate::policy::test_dists::mix_a;

    #[test]
    fn a_dearer_price_is_taken_only_when_it_sees_the_flips_as_soon() {
        // Flat up to level 6 (the checks it drops see nothing), rising after.
        let flat = |l: f64| if l <= 6.0 { 10.0 } else { 10.0 + l };
        assert_eq!(super::dearest_alike(2.5, 72, flat), Some(6));
        // Rising from the start: the fitted level stays.
        assert_eq!(super::dearest_alike(2.5, 72, |l| 10.0 + l), None);
        // Within 0.1% counts as alike, more does not.
        let slow = |l: f64| 10.0 * (1.0 + 0.0004 * l);
        assert_eq!(super::dearest_alike(2.0, 72, slow), Some(4));
        // Nothing flips: no delay to compare.
        assert_eq!(super::dearest_alike(2.0, 72, |_| 0.0), None);
        // Never past the top.
        assert_eq!(super::dearest_alike(70.5, 72, |_| 1.0), Some(72));
    }

    #[test]
    fn cheap_requests_give_a_schedule_as_dense_as_the_ladder() {
        let grid = Grid::new(&Ladder::documented());
        let plans = Plans::new(&grid, mix_a(CELLS), CELLS);
        let ladder = plans.at(0);
        assert_eq!(ladder.next(0), 20);
        assert_eq!(ladder.next(20), 23);
        let cheap = plans.at(1);
        assert_eq!(cheap.next(0), 20, "first check as early as allowed");
        let mut t = 0;
        let mut count = 0;
        while t < CELLS {
            let u = cheap.next(t);
            if t > 0 && u < CELLS {
                assert!(
                    u - t >= grid.step[t],
                    "gap {t} → {u} shorter than the ladder's"
                );
            }
            t = u;
            count += 1;
        }
        assert!((30..=40).contains(&count), "{count} checks");
    }

    #[test]
    fn dear_requests_leave_only_the_deadline_check() {
        let grid = Grid::new(&Ladder::documented());
        let plans = Plans::new(&grid, mix_a(CELLS), CELLS);
        let top = plans.at(plans.top());
        assert_eq!(top.next(0), CELLS);
        assert!((top.checks - 1.0).abs() < 1e-9);
    }

    #[test]
    fn tables_spend_less_and_wait_longer_as_the_price_rises() {
        let grid = Grid::new(&Ladder::documented());
        let plans = Plans::new(&grid, mix_a(CELLS), CELLS);
        for i in 1..plans.top() {
            let (a, b) = (plans.at(i), plans.at(i + 1));
            assert!(b.checks <= a.checks + 1e-9);
            assert!(b.delay >= a.delay - 1e-9);
        }
    }

    #[test]
    fn plans_learnt_from_another_distribution_lose_against_the_true_ones() {
        let grid = Grid::new(&Ladder::documented());
        let truth = mix_a(CELLS);
        let own = Plans::new(&grid, truth.clone(), CELLS);
        let frontier = own.frontier_under(&truth);
        // Under their own distribution, the plans' figures are the tables' own.
        for (i, &(checks, delay)) in frontier.iter().enumerate().step_by(9) {
            let t = own.at(i);
            assert!((checks - t.checks).abs() < 1e-9 && (delay - t.delay).abs() < 1e-9);
        }
        // Plans solved for the ladder's prior see mix A's flips later at every budget
        // between a few checks and the ladder's own.
        let prior = Plans::new(&grid, grid.ladder_prior(), CELLS);
        let other = prior.frontier_under(&truth);
        for checks in [4.0, 8.0, 16.0] {
            let best = delay_at(&frontier, checks).expect("spanned");
            let got = delay_at(&other, checks).expect("spanned");
            assert!(
                got > best * 1.01,
                "at {checks} checks: {got:.2} vs {best:.2}"
            );
        }
        assert_eq!(delay_at(&frontier, 1e6), None);
    }
}
