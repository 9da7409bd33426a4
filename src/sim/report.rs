//! A run's figures: every payment's fate, the delays, the budget's use, reconciliation's
//! findings, and the bounds they are judged by.

use super::run::Run;
use super::{LateBound, LateMix, Scenario};
use crate::payment::{SchedMs, State};
use crate::policy::{bound, delay_at, FlipDist, Grid, Plans};

/// What judging the learnt plans needs: the true distribution, its own plans' delay
/// (cells) at the bound's requests per payment, and those requests.
pub(super) type Judge = (FlipDist, Option<f64>, f64);

/// One payment's fate in a run.
#[derive(Debug, Clone)]
pub struct Fate {
    pub arrived: SchedMs,
    /// When it flipped (before its deadline), if it did.
    pub flip: Option<SchedMs>,
    /// When the check that saw it final was sent.
    pub seen: Option<SchedMs>,
    /// When the check that ended it (final or timed out) was sent.
    pub ended: Option<SchedMs>,
    pub state: State,
    pub checks: u32,
    /// Whether it comes from a burst.
    pub burst: bool,
    /// Its stream: 0 for the phases' and bursts', `i` for `Scenario::others[i - 1]`.
    pub stream: usize,
    /// When it moved after its deadline (see [`LateMix`]), and when the check that saw the
    /// move was sent.
    pub late_flip: Option<SchedMs>,
    pub late_seen: Option<SchedMs>,
}

/// The figures of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub measured: usize,
    pub flips: usize,
    pub mean_ms: f64,
    pub median_ms: f64,
    pub p95_ms: f64,
    /// The bound for the flips drawn and the measured arrival rate.
    pub bound_ms: f64,
    pub ratio: f64,
    /// Requests per window over the measured span, as a share of the budget.
    pub budget_use: f64,
    /// Provider-side windows that held more requests than the budget.
    pub over_budget: u32,
    /// Payments whose deadline passed without a check at or after it.
    pub missed_deadlines: u32,
    pub requests: usize,
    /// How late checks went out after their due time, over the measured span (ms): mean
    /// and 95th percentile.
    pub late_mean_ms: f64,
    pub late_p95_ms: f64,
    /// The key's price level and the delay its plans expect (ms), averaged over the
    /// measured span's ticks.
    pub level_mean: f64,
    pub planned_delay_ms: f64,
    /// The price level's 10th, 50th and 90th percentile over the measured ticks, and the
    /// share of ticks on the ladder (level 0).
    pub level_pct: [f64; 4],
    /// What the core learnt by the end: the share flipping and the flip ages (ms) by which
    /// half, 90% and 99% of those flipped; beside the truth's (`true_*`).
    pub learnt_flip_share: f64,
    pub learnt_flip_age_ms: [i64; 3],
    pub true_flip_share: f64,
    pub true_flip_age_ms: [i64; 3],
    /// With [`Scenario::judge_plans`]: the mean delay the learnt plans would give under
    /// the true mix, at the bound's requests per payment, over what the true mix's own
    /// plans give (1.0: nothing lost to learning), averaged over the measured span every
    /// half window. The limiter, the arrivals' randomness and the price's steering play no
    /// part, so it varies far less from seed to seed than the ratio.
    pub learnt_plans: Option<f64>,
    /// Reconciliation's figures over the measured payments.
    pub late: LateReport,
    pub fates: Vec<Fate>,
}

/// What reconciliation found of the late moves of the measured payments.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LateReport {
    /// Measured payments that timed out.
    pub timed_out: usize,
    /// Late moves within the schedule (before its last age).
    pub moves: usize,
    /// Of those, seen at all, seen within 24 hours of the move (scaled), and seen by the
    /// schedule's first check after the move (one tick of slack).
    pub seen: usize,
    pub seen_24h: usize,
    pub seen_on_schedule: usize,
    /// Mean delay (ms) from a move to the check that saw it, over those seen.
    pub mean_ms: f64,
    /// Requests for watched payments over the whole run, and per timed-out payment of the
    /// run.
    pub requests: usize,
    pub requests_per_timed_out: f64,
    /// Of those, the ones made while payments still arrived (from what a live stream left).
    pub requests_while_arriving: usize,
}

impl Report {
    /// Mean flip-to-detection delay (ms) of the payments `keep` selects that flipped and
    /// were seen, and how many they are.
    pub fn mean_delay_ms(&self, keep: impl Fn(&Fate) -> bool) -> (f64, usize) {
        let d: Vec<f64> = self
            .fates
            .iter()
            .filter(|f| keep(f))
            .filter_map(|f| Some((f.seen? - f.flip?) as f64))
            .collect();
        (d.iter().sum::<f64>() / d.len().max(1) as f64, d.len())
    }
}

/// Reconciliation's figures over the measured payments: `schedule` on the run's scale,
/// `slack` the time a check due at a scheduled age may take to go out and still count as
/// on schedule (a tick and the provider's latency).
fn late_report(measured: &[&Fate], schedule: &[i64], scale: f64, slack: i64) -> LateReport {
    let timed_out = measured
        .iter()
        .filter(|f| f.state == State::TimedOut)
        .count();
    let last = schedule.last().copied().unwrap_or(0);
    let day = (86_400_000.0 * scale) as i64;
    let moves: Vec<(&&Fate, SchedMs)> = measured
        .iter()
        .filter(|f| f.state == State::TimedOut)
        .filter_map(|f| Some((f, f.late_flip?)))
        .filter(|(f, t)| *t - f.arrived < last)
        .collect();
    let delays: Vec<i64> = moves
        .iter()
        .filter_map(|(f, t)| Some(f.late_seen? - *t))
        .collect();
    let on_schedule = moves
        .iter()
        .filter(|(f, t)| {
            let Some(seen) = f.late_seen else {
                return false;
            };
            crate::reconcile::next_age(schedule, *t - f.arrived - 1)
                .is_some_and(|i| seen <= f.arrived + schedule[i] + slack)
        })
        .count();
    LateReport {
        timed_out,
        moves: moves.len(),
        seen: delays.len(),
        seen_24h: delays.iter().filter(|d| **d <= day).count(),
        seen_on_schedule: on_schedule,
        mean_ms: delays.iter().sum::<i64>() as f64 / delays.len().max(1) as f64,
        requests: 0,
        requests_per_timed_out: 0.0,
        requests_while_arriving: 0,
    }
}

/// The bound on late moves for `mix` (see [`crate::reconcile::late_bound`]): the least
/// mean delay, and the share seen, that any choice of checks on `schedule` (ms since the
/// start, documented scale) achieves with `checks` requests per timed-out payment.
pub fn late_bound(schedule: &[i64], timeout_ms: i64, mix: &LateMix, checks: f64) -> LateBound {
    crate::reconcile::late_bound(schedule, timeout_ms, &|a, b| mix.moves(1.0, a, b), checks)
}

/// For [`Scenario::judge_plans`] on a steady stream of one kind: the true distribution,
/// its own plans' delay (cells) at the bound's requests per payment, and those requests.
pub(super) fn judged(sc: &Scenario) -> Option<Judge> {
    let [ph] = sc.phases.as_slice() else {
        return None;
    };
    if !sc.judge_plans || !sc.others.is_empty() || ph.rate <= 0.0 {
        return None;
    }
    let grid = Grid::new(&sc.ladder);
    let scale = sc.scale();
    let truth = ph.mix.dist(&grid, scale);
    let window_cells = (sc.window_ms / grid.unit_ms()).max(1) as usize;
    let checks = sc.budget_per_payment(ph.rate);
    let own = Plans::new(&grid, truth.clone(), window_cells);
    let best = delay_at(&own.frontier_under(&truth), checks);
    Some((truth, best, checks))
}

/// The bound, in ms, for streams `(rate, flip distribution)` at their rates per (scaled)
/// second, sharing the scenario's budget at one price.
pub(super) fn bound_ms(grid: &Grid, streams: &[(f64, &FlipDist)], sc: &Scenario) -> f64 {
    let rate: f64 = streams.iter().map(|(r, _)| r.max(0.0)).sum();
    if rate <= 0.0 {
        return 0.0;
    }
    bound(grid, streams, sc.budget_per_payment(rate)).delay * grid.unit_ms() as f64
}

impl Run<'_> {
    /// The figures over the measured payments, and every payment's fate.
    pub(super) fn report(mut self) -> Report {
        let sc = self.sc;
        let scale = self.scale;
        let until = sc.late.measured_until_ms.unwrap_or(i64::MAX);
        let measured: Vec<&Fate> = self
            .fates
            .iter()
            .filter(|f| {
                !f.burst && f.arrived >= SchedMs(sc.warmup_ms) && f.arrived < SchedMs(until)
            })
            .collect();
        let mut delays: Vec<f64> = measured
            .iter()
            .filter_map(|f| Some((f.seen? - f.flip?) as f64))
            .collect();
        delays.sort_by(f64::total_cmp);
        let mean = delays.iter().sum::<f64>() / delays.len().max(1) as f64;
        let pct = |q: f64| -> f64 {
            if delays.is_empty() {
                0.0
            } else {
                delays[((delays.len() - 1) as f64 * q).round() as usize]
            }
        };
        let grid = Grid::new(&sc.ladder);
        let bound_ms = run_bound_ms(sc, &grid, scale);
        let missed = self
            .fates
            .iter()
            .filter(|f| {
                f.state == State::Pending || (f.state != State::TimedOut && f.seen.is_none())
            })
            .count() as u32;
        let over = over_budget(&mut self.request_times, sc.window_ms, sc.budget);
        let budget_use = self.budget_use();
        let s = &mut self.samples;
        s.lateness.sort_unstable();
        let truth = sc
            .phases
            .last()
            .map(|ph| ph.mix.dist(&grid, scale))
            .unwrap_or_else(|| grid.ladder_prior());
        let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let all_timed_out = self
            .fates
            .iter()
            .filter(|f| f.state == State::TimedOut)
            .count();
        let mut reconciled = late_report(
            &measured,
            &self.schedule,
            scale,
            self.tick_ms + sc.latency_ms.1,
        );
        reconciled.requests = self.late_requests;
        reconciled.requests_while_arriving = self.late_while_arriving;
        reconciled.requests_per_timed_out = self.late_requests as f64 / all_timed_out.max(1) as f64;
        let late = &s.lateness;
        Report {
            late: reconciled,
            late_mean_ms: late.iter().sum::<i64>() as f64 / late.len().max(1) as f64,
            late_p95_ms: late.get(late.len() * 95 / 100).copied().unwrap_or(0) as f64,
            level_mean: avg(&s.levels),
            level_pct: level_pct(&s.levels),
            planned_delay_ms: avg(&s.planned),
            learnt_flip_share: s.learnt.0,
            learnt_plans: (!s.plan_losses.is_empty()).then(|| avg(&s.plan_losses)),
            learnt_flip_age_ms: s.learnt.1,
            true_flip_share: truth.flips(),
            true_flip_age_ms: [0.5, 0.9, 0.99].map(|q| truth.quantile(q) as i64 * grid.unit_ms()),
            measured: measured.len(),
            flips: delays.len(),
            mean_ms: mean,
            median_ms: pct(0.5),
            p95_ms: pct(0.95),
            bound_ms,
            ratio: if bound_ms > 0.0 { mean / bound_ms } else { 0.0 },
            budget_use,
            over_budget: over,
            missed_deadlines: missed,
            requests: self.request_times.len(),
            fates: self.fates,
        }
    }

    /// Requests over the measured span, as a share of the budget over it.
    fn budget_use(&self) -> f64 {
        let sc = self.sc;
        let span = (self.arrivals_end - SchedMs(sc.warmup_ms)).max(1);
        let in_span = self
            .request_times
            .iter()
            .filter(|&&t| t >= SchedMs(sc.warmup_ms) && t < self.arrivals_end)
            .count();
        in_span as f64 / (span as f64 / sc.window_ms as f64 * f64::from(sc.budget))
    }
}

/// The bound of the run: every stream at its (last) rate, one budget for all, priced alike.
fn run_bound_ms(sc: &Scenario, grid: &Grid, scale: f64) -> f64 {
    let streams: Vec<(f64, FlipDist)> = sc
        .phases
        .last()
        .map(|ph| (ph.rate, ph.mix.dist(grid, scale)))
        .into_iter()
        .chain(sc.others.iter().map(|(r, m)| (*r, m.dist(grid, scale))))
        .collect();
    let refs: Vec<(f64, &FlipDist)> = streams.iter().map(|(r, d)| (*r, d)).collect();
    bound_ms(grid, &refs, sc)
}

/// Provider-side windows that held more requests than the budget: every request's
/// arrival starts one. Sorts `request_times`.
fn over_budget(request_times: &mut [SchedMs], window_ms: i64, budget: u32) -> u32 {
    request_times.sort_unstable();
    let mut over = 0;
    let mut lo = 0;
    for (i, &t) in request_times.iter().enumerate() {
        while request_times[lo] <= t - window_ms {
            lo += 1;
        }
        if (i - lo + 1) as u32 > budget {
            over += 1;
        }
    }
    over
}

/// The price level's 10th, 50th and 90th percentile, and the share on the ladder.
fn level_pct(levels: &[f64]) -> [f64; 4] {
    let mut l = levels.to_vec();
    l.sort_by(f64::total_cmp);
    let q = |f: f64| l.get((l.len() as f64 * f) as usize).copied().unwrap_or(0.0);
    let zero = l.iter().filter(|v| **v == 0.0).count() as f64 / l.len().max(1) as f64;
    [q(0.1), q(0.5), q(0.9), zero]
}
