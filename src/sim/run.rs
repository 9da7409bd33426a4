//! One run: the real core on simulated time, driven event by event (arrivals, answers,
//! the core's wake-ups and ticks) until every payment has ended and no watch is left.

use super::report::{judged, Judge};
use super::{Fate, Report, Scenario};
use crate::config::{self, Config};
use crate::kinds::{Kind, Observation};
use crate::payment::{LedgerKey, PaymentId, PaymentKey, SchedMs, State};
use crate::policy::{delay_at, Grid};
use crate::scheduler::{core_config, Action, Completion, Core, Tracked};
use anyhow::Result;
use serde_json::json;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

/// Runs `sc` on the real core; returns the figures and every payment's fate.
pub fn run(sc: &Scenario) -> Result<Report> {
    let mut run = Run::new(sc)?;
    run.simulate();
    Ok(run.report())
}

/// A live request's payment, its check number and the latency drawn for it.
#[cfg(test)]
pub(super) type LatencyDraw = (i64, u32, i64);

/// As [`run`], with each live request's `(payment, check number, latency)`.
#[cfg(test)]
pub(super) fn run_logging_latencies(sc: &Scenario) -> Result<(Report, Vec<LatencyDraw>)> {
    let mut run = Run::new(sc)?;
    run.latency_log = Some(Vec::new());
    run.simulate();
    let log = run.latency_log.take().unwrap_or_default();
    Ok((run.report(), log))
}

/// The latency of a live payment's `n`-th check: a draw of its own, from the run's seed,
/// the payment and `n`.
fn live_latency(seed: u64, pk: i64, n: u32, range: std::ops::RangeInclusive<i64>) -> i64 {
    let key = seed
        ^ 0x11fe_1a7e
        ^ (pk as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(n).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    fastrand::Rng::with_seed(key).i64(range)
}

/// A payment to come: when, its flip (age and state) if any, whether from a burst, and
/// its stream (0: the phases' and bursts', `i`: `others[i - 1]`).
type Arrival = (SchedMs, Option<(i64, State)>, bool, usize);

/// A run in progress: the core, the simulated provider and what is measured.
pub(super) struct Run<'a> {
    pub(super) sc: &'a Scenario,
    pub(super) scale: f64,
    core: Core,
    /// Each stream's kind.
    kinds: Vec<Arc<Kind>>,
    /// The reconciliation schedule on the run's scale.
    pub(super) schedule: Vec<i64>,
    rng: fastrand::Rng,
    /// Late moves draw from their own stream, so the live payments are the same with or
    /// without them.
    late_rng: fastrand::Rng,
    late_latency_rng: fastrand::Rng,
    pub(super) now: SchedMs,
    /// Every payment to come, in order of arrival, and when the arrivals end.
    arrivals: Vec<Arrival>,
    pub(super) arrivals_end: SchedMs,
    next_arrival: usize,
    pub(super) fates: Vec<Fate>,
    /// Each payment's flip (before its deadline, or a late move) and its state.
    flip_of: HashMap<i64, (SchedMs, State)>,
    /// Requests sent and not yet answered, by the time their answer arrives.
    completions: BinaryHeap<Reverse<(SchedMs, u64)>>,
    in_flight: HashMap<u64, Completion>,
    next_req: u64,
    pub(super) request_times: Vec<SchedMs>,
    ledger_key: i64,
    pub(super) tick_ms: i64,
    next_tick: SchedMs,
    actions: Vec<Action>,
    /// Payments not yet ended.
    active: usize,
    pub(super) samples: Samples,
    /// Requests for watched payments only, and those of them made while payments still
    /// arrived.
    pub(super) late_requests: usize,
    pub(super) late_while_arriving: usize,
    /// With `run_logging_latencies` (tests): each live request's payment, its check number and
    /// the latency drawn for it.
    latency_log: Option<Vec<(i64, u32, i64)>>,
}

/// What the ticks of the measured span sample from the core's status.
#[derive(Default)]
pub(super) struct Samples {
    /// How late each check went out after its due time (ms).
    pub(super) lateness: Vec<i64>,
    pub(super) levels: Vec<f64>,
    pub(super) planned: Vec<f64>,
    /// The last learnt flip share and flip ages.
    pub(super) learnt: (f64, [i64; 3]),
    /// With [`Scenario::judge_plans`]: the truth to judge the learnt plans against, when
    /// next to, and each judgement.
    judge: Option<Judge>,
    judged_at: SchedMs,
    pub(super) plan_losses: Vec<f64>,
}

impl<'a> Run<'a> {
    fn new(sc: &'a Scenario) -> Result<Self> {
        let scale = sc.scale();
        let (cfg, stream_kinds) = configuration(sc)?;
        // The schedule on the scenario's scale; the configuration's own would not fit a
        // compressed ladder.
        let schedule: Vec<i64> = sc
            .late
            .schedule
            .iter()
            .flatten()
            .map(|a| (*a as f64 * scale) as i64)
            .collect();
        let mut cfg = cfg;
        for kind in cfg.kinds.values_mut() {
            Arc::make_mut(kind).reconcile_after = schedule.clone();
        }
        let (mut core_cfg, _) = core_config(&cfg, sc.seed);
        core_cfg.late_policy = sc.late.policy;
        let kinds = stream_kinds
            .iter()
            .map(|name| {
                cfg.kinds
                    .get(name.as_str())
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("no {name} kind"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut rng = fastrand::Rng::with_seed(sc.seed ^ 0x5eed);
        let late_rng = fastrand::Rng::with_seed(sc.seed ^ 0x1a7e);
        let mut core = Core::new(core_cfg, SchedMs(0));
        if sc.oracle {
            let grid = Grid::new(&sc.ladder);
            if let Some(ph) = sc.phases.first() {
                core.assume("p2p", ph.mix.dist(&grid, scale));
            }
            for (name, (_, mix)) in stream_kinds.iter().skip(1).zip(&sc.others) {
                core.assume(name, mix.dist(&grid, scale));
            }
        }
        let (arrivals, arrivals_end) = arrivals(sc, &mut rng, scale);
        Ok(Run {
            sc,
            scale,
            core,
            kinds,
            schedule,
            rng,
            late_rng,
            late_latency_rng: fastrand::Rng::with_seed(sc.seed ^ 0x01a7_e1a7),
            now: SchedMs(0),
            fates: Vec::with_capacity(arrivals.len()),
            arrivals,
            arrivals_end,
            next_arrival: 0,
            flip_of: HashMap::new(),
            completions: BinaryHeap::new(),
            in_flight: HashMap::new(),
            next_req: 0,
            request_times: Vec::new(),
            ledger_key: 0,
            tick_ms: (sc.window_ms / 600).clamp(20, 1000),
            next_tick: SchedMs(0),
            actions: Vec::new(),
            active: 0,
            samples: Samples {
                judge: judged(sc),
                judged_at: SchedMs(sc.warmup_ms),
                ..Samples::default()
            },
            late_requests: 0,
            late_while_arriving: 0,
            latency_log: None,
        })
    }

    /// Event by event until every payment has ended and nothing is left to do.
    fn simulate(&mut self) {
        loop {
            self.perform();
            if self.finished() {
                break;
            }
            self.now = self.next_event().max(self.now);
            self.arrive();
            self.answer();
            if self.now >= self.next_tick {
                self.tick();
            }
        }
    }

    /// Performs what the core asks for: requests go out (answered after a latency),
    /// ledger rows are granted at once.
    fn perform(&mut self) {
        let mut actions = std::mem::take(&mut self.actions);
        self.core.poll(self.now, &mut actions);
        for a in actions.drain(..) {
            match a {
                Action::Send(req) => self.send(req),
                Action::Refill { pool, count, .. } => {
                    let keys = (0..count as i64)
                        .map(|i| LedgerKey(self.ledger_key + i))
                        .collect();
                    self.ledger_key += count as i64;
                    self.core.refilled(pool, Some(keys));
                }
                Action::Record(_) => {}
            }
        }
        self.actions = actions;
    }

    /// One request: what the simulated provider will answer, and when.
    fn send(&mut self, req: crate::scheduler::Request) {
        let sc = self.sc;
        let watched = req.pks.iter().all(|pk| {
            self.fates
                .get(pk.0 as usize)
                .is_some_and(|f| f.ended.is_some())
        });
        // Late requests draw their latencies from a stream of their own, and a live
        // payment's n-th check from a draw of its own (its key and n), so the live
        // payments see the same provider with reconciliation on or off, whatever the
        // late requests change in the order of the live ones.
        let range = sc.latency_ms.0..=sc.latency_ms.1.max(sc.latency_ms.0);
        let lat = match req.pks.first() {
            Some(pk) if !watched => {
                let n = self.fates.get(pk.0 as usize).map_or(0, |f| f.checks);
                live_latency(sc.seed, pk.0, n, range)
            }
            _ => self.late_latency_rng.i64(range),
        };
        if let Some(log) = &mut self.latency_log {
            if let (false, Some(pk)) = (watched, req.pks.first()) {
                let n = self.fates.get(pk.0 as usize).map_or(0, |f| f.checks);
                log.push((pk.0, n, lat));
            }
        }
        self.late_requests += usize::from(watched);
        self.late_while_arriving += usize::from(watched && self.next_arrival < self.arrivals.len());
        let observations = req
            .pks
            .iter()
            .map(|pk| {
                if let Some(f) = self.fates.get_mut(pk.0 as usize) {
                    f.checks += 1;
                }
                let raw = match self.flip_of.get(&pk.0) {
                    Some((at, state)) if *at <= req.sent_at => match state {
                        State::Succeeded => "approved",
                        _ => "declined",
                    },
                    _ => "pending",
                };
                Observation::Status {
                    raw: raw.into(),
                    state: req.kind.map_status(raw),
                    response: json!({ "status": raw }),
                }
            })
            .collect();
        self.request_times.push(req.sent_at);
        self.next_req += 1;
        let done_at = self.now + lat;
        self.in_flight.insert(
            self.next_req,
            Completion {
                pool: req.pool,
                pks: req.pks,
                observations,
                retry_after_ms: None,
                sent_at: req.sent_at,
                done_at,
                ledger: req.ledger,
            },
        );
        self.completions.push(Reverse((done_at, self.next_req)));
    }

    /// Whether the run is over: every payment arrived and ended, every answer in, no
    /// payment watched.
    fn finished(&self) -> bool {
        self.next_arrival >= self.arrivals.len()
            && self.active == 0
            && self.in_flight.is_empty()
            && self.core.watched() == 0
    }

    /// The time of the next event: a tick, an arrival, an answer or the core's wake-up.
    fn next_event(&mut self) -> SchedMs {
        let mut next = self.next_tick;
        if let Some(&(at, ..)) = self.arrivals.get(self.next_arrival) {
            next = next.min(at);
        }
        if let Some(Reverse((at, _))) = self.completions.peek() {
            next = next.min(*at);
        }
        if let Some(w) = self.core.next_wake(self.now) {
            next = next.min(w.max(self.now + 1));
        }
        next
    }

    /// The payments arriving by now: their fates drawn, tracked by the core.
    fn arrive(&mut self) {
        let sc = self.sc;
        let deadline_of = |arrived: SchedMs| arrived + sc.ladder.timeout_ms();
        let (first_lo, first_hi) = sc.ladder.first_window();
        while let Some(&(at, flip, burst, stream)) = self.arrivals.get(self.next_arrival) {
            if at > self.now {
                break;
            }
            let pk = self.fates.len() as i64;
            let flip = flip.filter(|(age, _)| at + *age < deadline_of(at));
            if let Some((age, state)) = flip {
                self.flip_of.insert(pk, (at + age, state));
            }
            let late_flip = match (&sc.late.mix, flip) {
                (Some(mix), None) => mix
                    .draw(&mut self.late_rng, self.scale)
                    .filter(|age| at + *age >= deadline_of(at))
                    .map(|age| at + age),
                _ => None,
            };
            if let Some(t) = late_flip {
                self.flip_of.insert(pk, (t, State::Succeeded));
            }
            self.fates.push(Fate {
                arrived: at,
                flip: flip.map(|(age, _)| at + age),
                seen: None,
                ended: None,
                state: State::Pending,
                checks: 0,
                burst,
                stream,
                late_flip,
                late_seen: None,
            });
            // "S" and a number: an id that parses.
            if let Ok(id) = PaymentId::parse(&format!("S{pk}")) {
                self.core.track(
                    Tracked {
                        pk: PaymentKey(pk),
                        account: crate::account::AccountName::default(),
                        kind: self.kinds[stream].name.clone(),
                        id,
                        upstream_status: None,
                        started_at: at,
                        jitter_ms: self.rng.i64(first_lo..=first_hi),
                        next_check_at: None,
                        last_checked_at: None,
                    },
                    self.now,
                    false,
                );
            }
            self.active += 1;
            self.next_arrival += 1;
        }
    }

    /// The answers due by now, handed to the core; the payments they end or move.
    fn answer(&mut self) {
        while let Some(Reverse((at, id))) = self.completions.peek().copied() {
            if at > self.now {
                break;
            }
            self.completions.pop();
            let Some(done) = self.in_flight.remove(&id) else {
                continue;
            };
            let out = self.core.complete(&done);
            for (pk, _, sent_at) in &out.moved {
                if let Some(f) = self.fates.get_mut(pk.0 as usize) {
                    f.late_seen.get_or_insert(*sent_at);
                }
            }
            for (pk, state, sent_at) in out.finished {
                if let Some(f) = self.fates.get_mut(pk.0 as usize) {
                    f.state = state;
                    f.ended = Some(sent_at);
                    if state != State::TimedOut {
                        f.seen = Some(sent_at);
                    }
                    self.active -= 1;
                }
            }
        }
    }

    /// The core's tick, and over the measured span, a sample of its status.
    fn tick(&mut self) {
        let now = self.now;
        self.core.tick(now);
        self.next_tick = now + self.tick_ms;
        // Past the arrivals nothing reads it (the watch's tail can be days long).
        let st = if now < self.arrivals_end {
            self.core.status(now)
        } else {
            Vec::new()
        };
        if now < SchedMs(self.sc.warmup_ms) || now >= self.arrivals_end {
            return;
        }
        let s = &mut self.samples;
        if let Some((truth, own, checks)) = &s.judge {
            if now >= s.judged_at {
                s.judged_at = now + self.sc.window_ms / 2;
                let learnt = self
                    .core
                    .plans("p2p")
                    .and_then(|p| delay_at(&p.frontier_under(truth), *checks));
                if let (Some(l), Some(o)) = (learnt, own) {
                    if *o > 0.0 {
                        s.plan_losses.push(l / o);
                    }
                }
            }
        }
        if let Some(p) = st.first() {
            // The whole wait past due: the budget's and after it.
            s.lateness.extend(
                p.lateness_ms
                    .iter()
                    .zip(&p.budget_wait_ms)
                    .map(|(late, wait)| late + wait),
            );
            s.levels.push(p.price_level);
            if let Some(k) = p.kinds.iter().find(|k| k.kind == "p2p") {
                s.learnt = (k.flip_share, k.flip_age_ms);
            }
            s.planned.extend(
                p.kinds
                    .iter()
                    .filter(|k| k.kind == "p2p")
                    .map(|k| k.expected_delay_ms as f64),
            );
        }
    }
}

/// The daemon's configuration for `sc`: its budget, the `p2p` preset for the main stream
/// and for each other one (`s1`, `s2`, …), the scenario's ladder; and the streams' kinds.
fn configuration(sc: &Scenario) -> Result<(Config, Vec<String>)> {
    let mut raw = config::defaults();
    raw.ninjapay.api_key = Some("simulated".into());
    raw.ninjapay.budget_requests = Some(sc.budget);
    raw.ninjapay.budget_window = Some(std::time::Duration::from_millis(sc.window_ms.max(0) as u64));
    raw.ninjapay.max_in_flight = Some(64);
    raw.ninjapay.backlog_share = Some(sc.backlog_share.get());
    let p2p = crate::kinds::presets()
        .remove("p2p")
        .ok_or_else(|| anyhow::anyhow!("no p2p preset"))?;
    let stream_kinds: Vec<String> = std::iter::once("p2p".to_string())
        .chain((1..=sc.others.len()).map(|i| format!("s{i}")))
        .collect();
    for name in stream_kinds.iter().skip(1) {
        raw.kinds.insert(name.clone(), p2p.clone());
    }
    let mut cfg = Config::from_raw(raw)?;
    cfg.ladder = sc.ladder.clone();
    Ok((cfg, stream_kinds))
}

/// Every arrival of the run, drawn up front and in order, and when the arrivals end.
fn arrivals(sc: &Scenario, rng: &mut fastrand::Rng, scale: f64) -> (Vec<Arrival>, SchedMs) {
    let mut arrivals: Vec<Arrival> = Vec::new();
    let mut t0 = 0;
    for ph in &sc.phases {
        poisson(rng, (t0, t0 + ph.duration_ms), ph.rate, scale, |rng, at| {
            arrivals.push((SchedMs(at), ph.mix.draw(rng, scale), false, 0));
        });
        t0 += ph.duration_ms;
    }
    let arrivals_end = t0;
    for (i, (rate, mix)) in sc.others.iter().enumerate() {
        poisson(rng, (0, arrivals_end), *rate, scale, |rng, at| {
            arrivals.push((SchedMs(at), mix.draw(rng, scale), false, i + 1));
        });
    }
    for (at, count, spread, mix) in &sc.bursts {
        for _ in 0..*count {
            let t = at + rng.i64(0..=(*spread).max(0));
            arrivals.push((SchedMs(t), mix.draw(rng, scale), true, 0));
        }
    }
    arrivals.sort_by_key(|a| a.0);
    (arrivals, SchedMs(arrivals_end))
}

/// Poisson arrivals in `[from, to)` at `rate` per (scaled) second: `each(rng, at)` for
/// each, in turn (it may draw from `rng` too).
fn poisson(
    rng: &mut fastrand::Rng,
    (from, to): (i64, i64),
    rate: f64,
    scale: f64,
    mut each: impl FnMut(&mut fastrand::Rng, i64),
) {
    if rate <= 0.0 {
        return;
    }
    let mean_gap = 1000.0 * scale / rate;
    let mut t = from as f64;
    loop {
        t += -mean_gap * rng.f64().max(1e-12).ln();
        if t >= to as f64 {
            return;
        }
        each(rng, t as i64);
    }
}
