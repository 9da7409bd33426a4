//! What to simulate: phases of traffic, bursts, more kinds on the key, late moves and
//! reconciliation.

use super::report::bound_ms;
use super::{BacklogShare, LatePolicy, Mix};
use crate::ladder::Ladder;
use crate::policy::Grid;

/// A stretch of traffic at one rate and mix.
#[derive(Debug, Clone)]
pub struct Phase {
    pub duration_ms: i64,
    /// Payments per second (of simulated time, at `scale` 1).
    pub rate: f64,
    pub mix: Mix,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub ladder: Ladder,
    pub budget: u32,
    pub window_ms: i64,
    pub phases: Vec<Phase>,
    /// Extra payments: `(at_ms, count, spread_ms, mix)`.
    pub bursts: Vec<(i64, usize, i64, Mix)>,
    /// Payments arriving before this are warm-up, not measured.
    pub warmup_ms: i64,
    /// Provider latency range, in ms.
    pub latency_ms: (i64, i64),
    pub seed: u64,
    /// Give the core the true flip distributions (the first phase's, and each other
    /// stream's) instead of letting it learn: separates the cost of learning from the cost
    /// of the policy.
    pub oracle: bool,
    /// The share of the budget a burst's backlog may take (`ninjapay.backlog_share`).
    pub backlog_share: BacklogShare,
    /// Judge the learnt plans against the true mix's own (a steady stream of one kind
    /// only): see [`super::Report::learnt_plans`]. Costs a solve of every price level per
    /// sample, so it is asked for.
    pub judge_plans: bool,
    /// More streams on the same key, each its own kind (`s1`, `s2`, …, checked like
    /// `p2p`), at `(rate, mix)` for as long as the phases last: a merchant taking several
    /// kinds of payment.
    pub others: Vec<(f64, Mix)>,
    /// Late moves and reconciliation (off by default).
    pub late: LateScenario,
}

/// Late moves after the ladder, and the reconciliation that looks for them.
#[derive(Debug, Clone, Default)]
pub struct LateScenario {
    /// How the payments that do not flip before their deadline move later, if at all.
    pub mix: Option<LateMix>,
    /// The reconciliation schedule: ages (ms, at the documented scale) since the start;
    /// `None` or empty: no reconciliation.
    pub schedule: Option<Vec<i64>>,
    /// Which due check goes first when the spare budget is short.
    pub policy: LatePolicy,
    /// The figures count the payments arriving after the warm-up and before this (`None`:
    /// all of them), so that arrivals may go on while their watch does.
    pub measured_until_ms: Option<i64>,
}

/// Of the payments that never flip before their deadline, a share approved later, at an
/// age drawn log-uniformly between two ages (seconds, at the documented scale).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LateMix {
    pub share: f64,
    pub lo_s: f64,
    pub hi_s: f64,
}

impl LateMix {
    /// The published late-flip workload: one in six of the payments that never flip in
    /// 10 minutes (5% of mix A's) approved late, log-uniformly between 15 minutes and 24
    /// hours.
    pub fn published() -> Self {
        Self {
            share: 1.0 / 6.0,
            lo_s: 900.0,
            hi_s: 86_400.0,
        }
    }

    /// A late move's age (ms, scaled), if this payment moves.
    pub(super) fn draw(&self, rng: &mut fastrand::Rng, scale: f64) -> Option<i64> {
        if rng.f64() >= self.share {
            return None;
        }
        let s = self.lo_s * (self.hi_s / self.lo_s.max(1e-9)).powf(rng.f64());
        Some((s * 1000.0 * scale) as i64)
    }

    /// The share moving at an age in `(a, b]` (ms, scaled) and their mean age there.
    pub fn moves(&self, scale: f64, a: i64, b: i64) -> (f64, f64) {
        let (lo, hi) = (self.lo_s * 1000.0 * scale, self.hi_s * 1000.0 * scale);
        let (a, b) = ((a as f64).clamp(lo, hi), (b as f64).clamp(lo, hi));
        if b <= a || hi <= lo {
            return (0.0, a);
        }
        (
            self.share * (b / a).ln() / (hi / lo).ln(),
            (b - a) / (b / a).ln(),
        )
    }
}

impl Scenario {
    /// The documented ladder and budget (1,000 requests / 10 min), one phase.
    pub fn steady(mix: Mix, rate: f64, warmup_ms: i64, measure_ms: i64, seed: u64) -> Self {
        Self {
            ladder: Ladder::documented(),
            budget: 1000,
            window_ms: 600_000,
            phases: vec![Phase {
                duration_ms: warmup_ms + measure_ms,
                rate,
                mix,
            }],
            bursts: Vec::new(),
            warmup_ms,
            latency_ms: (50, 300),
            seed,
            oracle: false,
            backlog_share: BacklogShare::DEFAULT,
            judge_plans: false,
            others: Vec::new(),
            late: LateScenario::default(),
        }
    }
}

impl Scenario {
    /// How compressed the scenario's ladder is against the documented one (10-minute
    /// timeout): flip ages, rates and the bound scale by it.
    pub fn scale(&self) -> f64 {
        self.ladder.timeout_ms() as f64 / 600_000.0
    }

    /// Requests per payment the budget gives a stream of `rate` payments per (unscaled)
    /// second: what the bound spends.
    pub(super) fn budget_per_payment(&self, rate: f64) -> f64 {
        let per_window = rate * self.window_ms as f64 / (1000.0 * self.scale());
        f64::from(self.budget) / per_window
    }

    /// The bound, in ms, for one stream of `mix` at `rate` payments per (unscaled) second on
    /// this scenario's ladder and budget: the yardstick of a stretch of a run whose rate
    /// varies.
    pub fn bound_ms_at(&self, rate: f64, mix: &Mix) -> f64 {
        let grid = Grid::new(&self.ladder);
        let scale = self.scale();
        bound_ms(&grid, &[(rate, &mix.dist(&grid, scale))], self)
    }
}
