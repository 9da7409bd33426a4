//! The yardstick: what the best policy that knows the mix achieves on a budget, and the
//! least any policy needs.

use super::grid::{FlipDist, Grid};
use super::plans::Table;

/// What the best policy that knows the mix achieves for a budget of `checks` requests per
/// payment: the yardstick of [`crate::sim`] and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// Mean flip-to-detection delay, in cells.
    pub delay: f64,
    /// Requests per payment it spends (at most the budget).
    pub checks: f64,
}

/// Requests a key needs per budget window, at the least, for `rate_per_s` payments per
/// second: every payment costs one request whatever the policy (the check that sees its
/// flip, or its deadline check).
pub fn least_requests_per_window(rate_per_s: f64, window_ms: i64) -> f64 {
    rate_per_s.max(0.0) * window_ms as f64 / 1000.0
}

/// Whether one key can keep up at all: the least it needs per window (a request per payment
/// arriving, [`least_requests_per_window`]) is below its budget. Past it, the backlog and
/// every delay grow for as long as the rate lasts, and no schedule helps: only more keys do.
pub fn keeps_up(least_per_window: f64, budget: u32) -> bool {
    least_per_window < f64::from(budget)
}

/// The bound when each payment may cost `budget_checks` requests on average: the two
/// neighbouring prices whose schedules spend just more and just less, mixed to spend the
/// budget exactly; below the budget of the densest schedules, those. `streams` are
/// `(share of the payments, flip distribution)`, one per kind on the key: one price for
/// every stream, as a request costs the same whichever kind it checks; the delay is the
/// mean over all their flips.
pub fn bound(grid: &Grid, streams: &[(f64, &FlipDist)], budget_checks: f64) -> Bound {
    let total: f64 = streams.iter().map(|(w, _)| w.max(0.0)).sum();
    let at = |mu: f64| -> Bound {
        let (mut checks, mut delay, mut flips) = (0.0, 0.0, 0.0);
        for &(w, dist) in streams {
            let w = w.max(0.0) / total.max(f64::MIN_POSITIVE);
            let t = Table::solve(grid, dist, mu, 0);
            checks += w * t.checks;
            delay += w * dist.flips() * t.delay;
            flips += w * dist.flips();
        }
        Bound {
            delay: if flips > 0.0 { delay / flips } else { 0.0 },
            checks,
        }
    };
    let dense = at(0.0);
    if dense.checks <= budget_checks {
        return dense;
    }
    // Expected checks fall as the price rises: bisect on log μ.
    let (mut lo, mut hi) = (1e-4f64, 1e7f64);
    let (mut t_lo, mut t_hi) = (at(lo), at(hi));
    if t_hi.checks > budget_checks {
        return t_hi;
    }
    for _ in 0..60 {
        let mid = (lo * hi).sqrt();
        let t = at(mid);
        if t.checks > budget_checks {
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
    let span = t_lo.checks - t_hi.checks;
    let w = if span > 1e-12 {
        (budget_checks - t_hi.checks) / span
    } else {
        0.0
    };
    Bound {
        delay: w * t_lo.delay + (1.0 - w) * t_hi.delay,
        checks: w * t_lo.checks + (1.0 - w) * t_hi.checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::Ladder;
    use crate::policy::grid::CELLS;
    use crate::policy::test_dists::{lognormal_cdf, mix_a};

    #[test]
    fn a_key_keeps_up_only_below_one_request_per_payment() {
        let ten_min = 600_000;
        assert_eq!(super::least_requests_per_window(0.5, ten_min), 300.0);
        let keeps_up =
            |rate: f64| super::keeps_up(super::least_requests_per_window(rate, ten_min), 1000);
        assert!(keeps_up(1.0));
        assert!(keeps_up(1.6));
        assert!(!keeps_up(1000.0 / 600.0));
        assert!(!keeps_up(2.0));
    }

    #[test]
    fn the_bound_matches_the_published_figures() {
        // The bound's figures for mixes A and B at 0.1 / 0.2 / 0.5 / 1.0 payments per second:
        // every benchmark figure is judged against them, so a change here moves the yardstick.
        let grid = Grid::new(&Ladder::documented());
        let ln = lognormal_cdf(180.0, 0.6);
        let mix_b = FlipDist::from_cdf(CELLS, |a| {
            0.4 * ln(a) + 0.1 * ((a - 30.0) / 570.0).clamp(0.0, 1.0)
        });
        for (name, dist, published) in [
            ("A", mix_a(CELLS), [4.3, 8.1, 23.6, 78.8]),
            ("B", mix_b, [16.2, 22.7, 60.2, 143.5]),
        ] {
            for (rate, want) in [0.1, 0.2, 0.5, 1.0].into_iter().zip(published) {
                let b = bound(&grid, &[(1.0, &dist)], 1000.0 / 600.0 / rate);
                assert!(
                    (b.delay - want).abs() / want < 0.02,
                    "mix {name} at {rate}/s: {:.1} s, published {want} s",
                    b.delay
                );
            }
        }
    }

    #[test]
    fn kinds_sharing_a_budget_are_bounded_at_one_price() {
        let grid = Grid::new(&Ladder::documented());
        // Flips spread over the whole life, and flips done by 40 s with the rest never
        // flipping.
        let slow = FlipDist::from_cdf(CELLS, |a| 0.9 * ((a - 20.0) / 580.0).clamp(0.0, 1.0));
        let fast = FlipDist::from_cdf(CELLS, |a| 0.5 * ((a - 20.0) / 20.0).clamp(0.0, 1.0));
        let per_payment = 1000.0 / 600.0 / 0.5;
        // One stream split in two is the same stream.
        let one = bound(&grid, &[(1.0, &fast)], per_payment);
        let halves = bound(&grid, &[(1.0, &fast), (1.0, &fast)], per_payment);
        assert!((one.delay - halves.delay).abs() < 1e-6 * one.delay);
        assert!((halves.checks - per_payment).abs() < 1e-6);
        // Two mixes: one price beats giving each kind the same requests per payment, which
        // the quick kind cannot use.
        let both = bound(&grid, &[(1.0, &fast), (1.0, &slow)], per_payment);
        let (f, s) = (
            bound(&grid, &[(1.0, &fast)], per_payment),
            bound(&grid, &[(1.0, &slow)], per_payment),
        );
        let even =
            (fast.flips() * f.delay + slow.flips() * s.delay) / (fast.flips() + slow.flips());
        assert!((both.checks - per_payment).abs() < 1e-6);
        assert!(both.delay < even * 0.9, "{} vs {even}", both.delay);
    }
}
