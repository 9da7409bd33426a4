//! The flip-age distribution of one kind, learnt from interval-censored evidence.

use super::grid::{FlipDist, Grid};
use crate::payment::SchedMs;
use std::collections::VecDeque;

/// One payment's evidence about its flip age, in cells: the flip happened in `(lo, hi]`;
/// `hi = None` when it was not seen to flip (still pending at `lo`, timed out, cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    pub lo: usize,
    pub hi: Option<usize>,
}

impl Evidence {
    /// A finished payment's evidence from its times (ms): `pending_seen`, the last check
    /// that saw it pending; `final_seen`, the check that saw it final (`None`: timed out
    /// or cancelled, no flip seen).
    pub fn of<T: std::ops::Sub<Output = i64> + Copy>(
        grid: &Grid,
        started: T,
        pending_seen: Option<T>,
        final_seen: Option<T>,
    ) -> Self {
        let lo = pending_seen.map_or(0, |t| grid.cell(t - started));
        let hi = final_seen.map(|t| grid.cell_ceil(t - started).max(lo + 1));
        Evidence { lo, hi }
    }
}

/// Learns one kind's flip distribution from the evidence of recent payments.
///
/// Two memories: a recent one (a few lifetimes, so a change of traffic is followed within
/// half an hour) and a long one (many more payments, so a slow stream's estimate is not
/// the noise of a few hundred). The long fit is used while the recent evidence is about
/// as likely under it as under the recent fit itself; once it is clearly less likely
/// (a likelihood-ratio test, [`CHANGE_TEST`]), the traffic changed: the older evidence
/// is dropped and the recent fit is used.
#[derive(Debug, Clone)]
pub struct Learner {
    n: usize,
    prior: FlipDist,
    /// Weight of the prior, in payments.
    prior_weight: f64,
    /// Evidence of finished payments, with their start (ms, scheduler clock).
    finished: VecDeque<(SchedMs, Evidence)>,
    /// Keep evidence of payments started within this long.
    horizon_ms: i64,
    /// The recent memory: payments started within this long.
    recent_ms: i64,
    /// The fits of the recent and of the long memory (each the next one's start).
    recent: FlipDist,
    long: FlipDist,
    current: FlipDist,
    /// The last fit's likelihood-ratio statistic (recent fit against long fit).
    pub change_stat: f64,
    /// When a change of traffic was last detected: older evidence reaches the estimate
    /// only through the recent memory, which slides past it.
    floor: SchedMs,
}

/// Averages each cell with its neighbours within about 5% of its age (at least one
/// cell), keeping the total.
fn smooth(p: &mut [f64]) {
    let n = p.len();
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for v in p.iter() {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + v);
    }
    let total = prefix[n];
    let mut out: Vec<f64> = (0..n)
        .map(|i| {
            let r = (i / 20).max(1);
            let (lo, hi) = (i.saturating_sub(r), (i + r + 1).min(n));
            (prefix[hi] - prefix[lo]) / (hi - lo) as f64
        })
        .collect();
    let after: f64 = out.iter().sum();
    if after > 0.0 {
        out.iter_mut().for_each(|v| *v *= total / after);
    }
    p.copy_from_slice(&out);
}

/// Weight of the ladder's prior, in payments. It only has to carry the estimate until
/// evidence comes: its flips sit where the ladder is dense, so a heavy prior keeps the
/// schedules checking early ages too often, most visibly on a slow stream, where the
/// evidence takes longest to outweigh it.
const PRIOR_WEIGHT: f64 = 2.0;

/// EM passes per fit: the estimate moves little between fits, and each starts from the
/// previous one.
const EM_PASSES: usize = 40;
/// Most finished payments remembered per kind.
const MAX_EVIDENCE: usize = 20_000;
/// The likelihood-ratio statistic (twice the log-likelihood gain of the recent fit over
/// the long one, on the recent evidence) above which the traffic is taken to have
/// changed. Without a change it stays near the recent fit's effective number of free
/// cells (it fits its own noise); a real change of mix grows it by the hundreds.
pub const CHANGE_TEST: f64 = 60.0;

/// Interval-censored evidence as `(lo, hi]` cell indices of the pmf (`hi = n + 1`: after
/// `lo`, or never), each interval once with how many payments gave it (the check ages are
/// few, so thousands of payments fall on a few hundred intervals); evidence that rules
/// nothing out teaches nothing and is left out.
fn intervals<'a>(
    n: usize,
    evidence: impl Iterator<Item = &'a Evidence>,
) -> Vec<(usize, usize, f64)> {
    let mut obs: Vec<(usize, usize)> = evidence
        .filter_map(|e| {
            let lo = e.lo.min(n);
            // Seen unchanged at the grid's end: whatever came after lies beyond it.
            let hi = if lo >= n {
                n + 1
            } else {
                e.hi.map_or(n + 1, |h| h.clamp(lo + 1, n))
            };
            (!(lo == 0 && hi == n + 1)).then_some((lo, hi))
        })
        .collect();
    obs.sort_unstable();
    let mut counted: Vec<(usize, usize, f64)> = Vec::new();
    for (lo, hi) in obs {
        match counted.last_mut() {
            Some((l, h, c)) if *l == lo && *h == hi => *c += 1.0,
            _ => counted.push((lo, hi, 1.0)),
        }
    }
    counted
}

/// Log-likelihood of interval-censored evidence under `dist`.
fn log_likelihood(dist: &FlipDist, obs: &[(usize, usize, f64)]) -> f64 {
    obs.iter()
        .map(|&(lo, hi, c)| c * (dist.cdf[hi] - dist.cdf[lo]).max(1e-12).ln())
        .sum()
}

impl Learner {
    /// A learner starting from `prior`, remembering payments started within `horizon_ms`.
    pub fn new(prior: FlipDist, horizon_ms: i64) -> Self {
        Self {
            n: prior.pmf.len() - 2,
            current: prior.clone(),
            recent: prior.clone(),
            long: prior.clone(),
            prior,
            prior_weight: PRIOR_WEIGHT,
            finished: VecDeque::new(),
            horizon_ms,
            recent_ms: horizon_ms,
            change_stat: 0.0,
            floor: SchedMs::MIN,
        }
    }

    /// A finished payment's evidence (`started`: its start on the scheduler's clock).
    pub fn observe(&mut self, started: SchedMs, e: Evidence) {
        self.finished.push_back((started, e));
        while self.finished.len() > MAX_EVIDENCE {
            self.finished.pop_front();
        }
    }

    /// Estimates towards `prior` while evidence is scarce (a new account starts from what
    /// the daemon learnt of the kind across accounts); with no evidence yet, that is the
    /// estimate.
    pub fn set_prior(&mut self, prior: FlipDist) {
        if prior.pmf.len() != self.prior.pmf.len() {
            return;
        }
        if self.finished.is_empty() {
            self.current = prior.clone();
            self.recent = prior.clone();
            self.long = prior.clone();
        }
        self.prior = prior;
    }

    /// Remember evidence of payments started within `ms` from now on (the long memory).
    pub fn set_horizon(&mut self, ms: i64) {
        self.horizon_ms = ms.max(1);
    }

    /// The recent memory: payments started within `ms` (at most the long one).
    pub fn set_recent(&mut self, ms: i64) {
        self.recent_ms = ms.max(1);
    }

    /// Finished payments remembered.
    pub fn len(&self) -> usize {
        self.finished.len()
    }

    /// One EM fit (maximum a posteriori with the prior) from `start`.
    fn em(&self, start: &FlipDist, obs: &[(usize, usize, f64)]) -> FlipDist {
        let n = self.n;
        let mut p = start.pmf.to_vec();
        let count: f64 = obs.iter().map(|o| o.2).sum();
        let mut weights = vec![0.0f64; n + 3];
        let mut prefix = vec![0.0f64; n + 2];
        for _ in 0..EM_PASSES {
            let mut acc = 0.0;
            for (i, v) in p.iter().enumerate() {
                acc += v;
                prefix[i] = acc;
            }
            weights.iter_mut().for_each(|w| *w = 0.0);
            for &(lo, hi, c) in obs {
                let s = prefix[hi] - prefix[lo];
                if s > 1e-300 {
                    weights[lo + 1] += c / s;
                    weights[hi + 1] -= c / s;
                }
            }
            let mut w = 0.0;
            for j in 0..p.len() {
                w += weights[j];
                p[j] = p[j] * w + self.prior_weight * self.prior.pmf[j];
            }
            let total = count + self.prior_weight;
            p.iter_mut().for_each(|v| *v /= total);
            // Smoothing step (EMS): flip ages spread over neighbouring cells, in
            // proportion to the age, so the estimate does not collapse onto the check
            // ages the schedule happened to use.
            smooth(&mut p[1..=n]);
        }
        FlipDist::new(p)
    }

    /// Re-estimates the distribution from the finished payments (and the censored
    /// evidence of the pending ones): see [`Learner`] for the two memories.
    pub fn fit(&mut self, now: SchedMs, pending: impl Iterator<Item = Evidence>) -> &FlipDist {
        // One cohort: the payments started since `since`, finished or not. Evidence
        // arrives in order of finishing, not of starting (a timeout finishes a whole
        // lifetime after its start), so the cut is by start, over the whole queue.
        let recent_since = now - self.recent_ms.min(self.horizon_ms);
        let since = (now - self.horizon_ms).max(self.floor).min(recent_since);
        self.finished.retain(|(s, _)| *s >= since);
        let n = self.n;
        let pending: Vec<Evidence> = pending.collect();
        let recent_obs = intervals(
            n,
            self.finished
                .iter()
                .filter(|(s, _)| *s >= recent_since)
                .map(|(_, e)| e)
                .chain(pending.iter()),
        );
        self.recent = self.em(&self.recent, &recent_obs);
        let older = self.finished.iter().any(|(s, _)| *s < recent_since);
        if !older {
            self.long = self.recent.clone();
            self.change_stat = 0.0;
            self.current = self.recent.clone();
            return &self.current;
        }
        let long_obs = intervals(
            n,
            self.finished.iter().map(|(_, e)| e).chain(pending.iter()),
        );
        self.long = self.em(&self.long, &long_obs);
        self.change_stat = 2.0
            * (log_likelihood(&self.recent, &recent_obs) - log_likelihood(&self.long, &recent_obs));
        if self.change_stat > CHANGE_TEST {
            // The traffic changed: what came before describes other traffic.
            self.floor = now;
            self.finished.retain(|(s, _)| *s >= recent_since);
            self.long = self.recent.clone();
            self.current = self.recent.clone();
        } else {
            self.current = self.long.clone();
        }
        &self.current
    }

    /// The latest estimate.
    pub fn current(&self) -> &FlipDist {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::Ladder;
    use crate::policy::grid::CELLS;
    use crate::policy::test_dists::{lognormal_cdf, mix_a};

    /// Evidence of one payment drawn from `dist`, checked every 10 cells from cell 20.
    fn checked_every_10(dist: &FlipDist, rng: &mut fastrand::Rng) -> Evidence {
        let u = rng.f64();
        let flip = (1..=CELLS + 1)
            .find(|&a| dist.cdf[a.min(CELLS + 1)] >= u)
            .unwrap_or(CELLS + 1);
        let (mut last, mut t) = (0, 20 + rng.usize(0..10));
        loop {
            let at = t.min(CELLS);
            if flip <= at {
                return Evidence {
                    lo: last,
                    hi: Some(at),
                };
            }
            if at >= CELLS {
                return Evidence { lo: at, hi: None };
            }
            last = at;
            t += 10;
        }
    }

    #[test]
    fn learner_keeps_its_long_memory_for_steady_traffic_and_drops_it_on_a_change() {
        let grid = Grid::new(&Ladder::documented());
        let a = mix_a(CELLS);
        let ln = lognormal_cdf(180.0, 0.6);
        let b = FlipDist::from_cdf(CELLS, |x| {
            0.4 * ln(x) + 0.1 * ((x - 30.0) / 570.0).clamp(0.0, 1.0)
        });
        // 720 payments over two hours (0.1/s), the recent memory the last half hour.
        let run = |later: &FlipDist| {
            let mut rng = fastrand::Rng::with_seed(5);
            let mut learner = Learner::new(grid.ladder_prior(), 7_200_000);
            learner.set_recent(1_800_000);
            for i in 0..720i64 {
                let started = i * 10_000;
                let dist = if started < 5_400_000 { &a } else { later };
                learner.observe(SchedMs(started), checked_every_10(dist, &mut rng));
                if i % 30 == 29 {
                    learner.fit(SchedMs(started), std::iter::empty());
                }
            }
            learner
        };
        let steady = run(&a);
        assert!(
            steady.change_stat < CHANGE_TEST,
            "steady traffic read as a change: {}",
            steady.change_stat
        );
        assert_eq!(steady.len(), 720, "the long memory is kept");
        let changed = run(&b);
        assert!(
            changed.len() < 360,
            "a change drops the older evidence: {} kept",
            changed.len()
        );
        let got = changed.current();
        for q in [120, 300] {
            assert!(
                (got.cdf[q] - b.cdf[q]).abs() < 0.08,
                "F({q}) learnt {:.3}, B's {:.3}",
                got.cdf[q],
                b.cdf[q]
            );
        }
    }

    #[test]
    fn evidence_past_the_grid_s_end_is_taken_as_after_it() {
        // A check at or past the last cell that saw a change: no cell of the grid holds it.
        assert_eq!(
            intervals(
                10,
                [
                    Evidence {
                        lo: 10,
                        hi: Some(11)
                    },
                    Evidence {
                        lo: 12,
                        hi: Some(13)
                    }
                ]
                .iter()
            ),
            vec![(10, 11, 2.0)]
        );
    }

    #[test]
    fn learner_recovers_a_distribution_from_interval_censored_checks() {
        let grid = Grid::new(&Ladder::documented());
        let truth = mix_a(CELLS);
        let mut learner = Learner::new(grid.ladder_prior(), i64::MAX / 4);
        let mut rng = fastrand::Rng::with_seed(7);
        // Checks every 40 cells from cell 20 (different phases), then the deadline.
        for i in 0..4000 {
            let u = rng.f64();
            let flip = (1..=CELLS + 1)
                .find(|&a| truth.cdf[a.min(CELLS + 1)] >= u)
                .unwrap_or(CELLS + 1);
            let phase = i % 40;
            let mut last = 0;
            let mut t = 20 + phase;
            let e = loop {
                let at = t.min(CELLS);
                if flip <= at {
                    break Evidence {
                        lo: last,
                        hi: Some(at),
                    };
                }
                if at >= CELLS {
                    break Evidence { lo: at, hi: None };
                }
                last = at;
                t += 40;
            };
            learner.observe(SchedMs(0), e);
        }
        for _ in 0..5 {
            learner.fit(SchedMs(0), std::iter::empty());
        }
        let got = learner.current();
        for q in [60, 120, 300] {
            let (a, b) = (got.cdf[q], truth.cdf[q]);
            assert!((a - b).abs() < 0.04, "F({q}) learnt {a:.3}, true {b:.3}");
        }
        assert!((got.flips() - truth.flips()).abs() < 0.04);
    }
}
