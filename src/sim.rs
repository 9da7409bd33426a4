//! A simulator that runs the real scheduler core ([`crate::scheduler::Core`]) on simulated
//! time: Poisson arrivals, a flip mix, a provider that answers after a latency, and the
//! budget. Hours of traffic take seconds of CPU. It backs the policy benchmark
//! (`cargo bench --bench policy`) and `ninjapoll simulate`.
//!
//! Delay is measured as the provider sees it: from the flip to the send of the first check
//! that sees it. The yardstick is [`crate::policy::bound`] for the flips actually drawn.

pub use crate::budget::BacklogShare;
use crate::config::{self, Config};
use crate::ladder::Ladder;
use crate::payment::{LedgerKey, PaymentKey, State, UnixMs};
use crate::policy::{bound, delay_at, FlipDist, Grid, Plans};
pub use crate::reconcile::LateBound;
pub use crate::scheduler::LatePolicy;
use crate::scheduler::{core_config, Action, Completion, Core};
use crate::store::PendingRow;
use anyhow::Result;
use serde_json::json;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// One part of a flip mix.
#[derive(Debug, Clone, PartialEq)]
pub enum Component {
    /// A share flipping at a log-normal age (seconds), optionally clipped to a range.
    LogNormal {
        share: f64,
        median_s: f64,
        sigma: f64,
        clip: Option<(f64, f64)>,
        state: State,
    },
    /// A share flipping at a uniform age (seconds).
    Uniform {
        share: f64,
        lo_s: f64,
        hi_s: f64,
        state: State,
    },
}

/// How the payments of a kind end: the rest of the shares never flip.
#[derive(Debug, Clone, PartialEq)]
pub enum Mix {
    Parametric(Vec<Component>),
    /// A distribution on a grid of `unit_ms` cells (e.g. the daemon's learnt one).
    Empirical {
        dist: FlipDist,
        unit_ms: i64,
    },
}

impl Mix {
    /// Mix A (UPI-like): 60% approved at log-normal(45 s, 0.8) clipped to 5–550 s, 10%
    /// declined at uniform 60–180 s, 30% never flip.
    pub fn a() -> Self {
        Mix::Parametric(vec![
            Component::LogNormal {
                share: 0.6,
                median_s: 45.0,
                sigma: 0.8,
                clip: Some((5.0, 550.0)),
                state: State::Succeeded,
            },
            Component::Uniform {
                share: 0.1,
                lo_s: 60.0,
                hi_s: 180.0,
                state: State::Failed,
            },
        ])
    }

    /// Mix B (slow): 40% approved at log-normal(180 s, 0.6), 10% declined at uniform
    /// 30–600 s, 50% never flip.
    pub fn b() -> Self {
        Mix::Parametric(vec![
            Component::LogNormal {
                share: 0.4,
                median_s: 180.0,
                sigma: 0.6,
                clip: None,
                state: State::Succeeded,
            },
            Component::Uniform {
                share: 0.1,
                lo_s: 30.0,
                hi_s: 600.0,
                state: State::Failed,
            },
        ])
    }

    /// A mix by name: `A` or `B`.
    pub fn named(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "A" => Some(Self::a()),
            "B" => Some(Self::b()),
            _ => None,
        }
    }

    /// Draws one payment's flip: its age in ms (scaled by `scale`: 1.0 for real
    /// seconds) and the state it ends in; `None` when it never flips.
    pub fn draw(&self, rng: &mut fastrand::Rng, scale: f64) -> Option<(i64, State)> {
        match self {
            Mix::Parametric(parts) => {
                let mut u = rng.f64();
                for part in parts {
                    let share = match part {
                        Component::LogNormal { share, .. } | Component::Uniform { share, .. } => {
                            *share
                        }
                    };
                    if u >= share {
                        u -= share;
                        continue;
                    }
                    let (secs, state) = match part {
                        Component::LogNormal {
                            median_s,
                            sigma,
                            clip,
                            state,
                            ..
                        } => {
                            let z = normal(rng);
                            let mut a = median_s * (sigma * z).exp();
                            if let Some((lo, hi)) = clip {
                                a = a.clamp(*lo, *hi);
                            }
                            (a, *state)
                        }
                        Component::Uniform {
                            lo_s, hi_s, state, ..
                        } => (lo_s + (hi_s - lo_s) * rng.f64(), *state),
                    };
                    return Some(((secs * 1000.0 * scale) as i64, state));
                }
                None
            }
            Mix::Empirical { dist, unit_ms } => {
                let u = rng.f64();
                let n = dist.cells();
                let cell = (1..=n).find(|&a| 1.0 - dist.survival(a) >= u)?;
                let ms = ((cell as f64 - rng.f64()) * *unit_ms as f64 * scale) as i64;
                Some((ms.max(1), State::Succeeded))
            }
        }
    }
}

impl Mix {
    /// The mix's flip-age distribution on `grid` (ages scaled by `scale`).
    pub fn dist(&self, grid: &Grid, scale: f64) -> FlipDist {
        match self {
            Mix::Empirical { dist, .. } => dist.clone(),
            Mix::Parametric(parts) => {
                let secs_per_cell = grid.unit_ms() as f64 / 1000.0 / scale;
                FlipDist::from_cdf(grid.cells(), |cell| {
                    let a = cell * secs_per_cell;
                    parts
                        .iter()
                        .map(|part| match part {
                            Component::LogNormal {
                                share,
                                median_s,
                                sigma,
                                clip,
                                ..
                            } => {
                                let (lo, hi) = clip.unwrap_or((0.0, f64::INFINITY));
                                let c = if a < lo {
                                    0.0
                                } else if a >= hi {
                                    1.0
                                } else {
                                    0.5 * erfc(
                                        -(a / median_s).ln() / (sigma * std::f64::consts::SQRT_2),
                                    )
                                };
                                share * c
                            }
                            Component::Uniform {
                                share, lo_s, hi_s, ..
                            } => share * ((a - lo_s) / (hi_s - lo_s)).clamp(0.0, 1.0),
                        })
                        .sum()
                })
            }
        }
    }
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(1e-12);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

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
    /// only): see [`Report::learnt_plans`]. Costs a solve of every price level per
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
    fn draw(&self, rng: &mut fastrand::Rng, scale: f64) -> Option<i64> {
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

/// A payment to come: when, its flip (age and state) if any, whether from a burst, and
/// its stream (0: the phases' and bursts', `i`: `others[i - 1]`).
type Arrival = (UnixMs, Option<(i64, State)>, bool, usize);

/// One payment's fate in a run.
#[derive(Debug, Clone)]
pub struct Fate {
    pub arrived: UnixMs,
    /// When it flipped (before its deadline), if it did.
    pub flip: Option<UnixMs>,
    /// When the check that saw it final was sent.
    pub seen: Option<UnixMs>,
    /// When the check that ended it (final or timed out) was sent.
    pub ended: Option<UnixMs>,
    pub state: State,
    pub checks: u32,
    /// Whether it comes from a burst.
    pub burst: bool,
    /// Its stream: 0 for the phases' and bursts', `i` for `Scenario::others[i - 1]`.
    pub stream: usize,
    /// When it moved after its deadline (see [`LateMix`]), and when the check that saw the
    /// move was sent.
    pub late_flip: Option<UnixMs>,
    pub late_seen: Option<UnixMs>,
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

/// Runs `sc` on the real core; returns the figures and every payment's fate.
pub fn run(sc: &Scenario) -> Result<Report> {
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
    let scale = sc.scale();
    // The schedule on the scenario's scale; the configuration's own would not fit a
    // compressed ladder.
    let schedule: Vec<i64> = sc
        .late
        .schedule
        .iter()
        .flatten()
        .map(|a| (*a as f64 * scale) as i64)
        .collect();
    for kind in cfg.kinds.values_mut() {
        std::sync::Arc::make_mut(kind).reconcile_after = schedule.clone();
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
    // Late moves draw from their own stream, so the live payments are the same with or
    // without them.
    let mut late_rng = fastrand::Rng::with_seed(sc.seed ^ 0x1a7e);
    let mut now: UnixMs = 0;
    let mut core = Core::new(core_cfg, now);
    if sc.oracle {
        let grid = Grid::new(&sc.ladder);
        if let Some(ph) = sc.phases.first() {
            core.assume("p2p", ph.mix.dist(&grid, scale));
        }
        for (name, (_, mix)) in stream_kinds.iter().skip(1).zip(&sc.others) {
            core.assume(name, mix.dist(&grid, scale));
        }
    }
    let (first_lo, first_hi) = sc.ladder.first_window();

    // Arrivals, drawn up front: (at, flip age and state, burst).
    let mut arrivals: Vec<Arrival> = Vec::new();
    let mut t0 = 0;
    for ph in &sc.phases {
        poisson(
            &mut rng,
            (t0, t0 + ph.duration_ms),
            ph.rate,
            scale,
            |rng, at| {
                arrivals.push((at, ph.mix.draw(rng, scale), false, 0));
            },
        );
        t0 += ph.duration_ms;
    }
    let arrivals_end = t0;
    for (i, (rate, mix)) in sc.others.iter().enumerate() {
        poisson(&mut rng, (0, arrivals_end), *rate, scale, |rng, at| {
            arrivals.push((at, mix.draw(rng, scale), false, i + 1));
        });
    }
    for (at, count, spread, mix) in &sc.bursts {
        for _ in 0..*count {
            let t = at + rng.i64(0..=(*spread).max(0));
            arrivals.push((t, mix.draw(&mut rng, scale), true, 0));
        }
    }
    arrivals.sort_by_key(|a| a.0);

    let deadline_of = |arrived: UnixMs| arrived + sc.ladder.timeout_ms();
    let mut fates: Vec<Fate> = Vec::with_capacity(arrivals.len());
    let mut flip_of: HashMap<i64, (UnixMs, State)> = HashMap::new();
    let mut completions: BinaryHeap<Reverse<(UnixMs, u64)>> = BinaryHeap::new();
    let mut in_flight: HashMap<u64, Completion> = HashMap::new();
    let mut request_times: Vec<UnixMs> = Vec::new();
    let mut next_req = 0u64;
    let mut ledger_key = 0i64;
    let tick_ms = (sc.window_ms / 600).clamp(20, 1000);
    let mut next_tick = 0;
    let mut next_arrival = 0usize;
    let mut actions = Vec::new();
    let mut active = 0usize;
    let (mut late, mut levels, mut planned) = (Vec::new(), Vec::new(), Vec::new());
    let mut learnt = (0.0, [0i64; 3]);
    let judge = judged(sc);
    let mut judged_at = sc.warmup_ms;
    let mut plan_losses = Vec::new();
    let mut late_requests = 0usize;
    let mut late_while_arriving = 0usize;

    loop {
        // Perform what the core asked for.
        core.poll(now, &mut actions);
        for a in actions.drain(..) {
            match a {
                Action::Send(req) => {
                    let lat = rng.i64(sc.latency_ms.0..=sc.latency_ms.1.max(sc.latency_ms.0));
                    let watched = req
                        .pks
                        .iter()
                        .all(|pk| fates.get(pk.0 as usize).is_some_and(|f| f.ended.is_some()));
                    late_requests += usize::from(watched);
                    late_while_arriving += usize::from(watched && next_arrival < arrivals.len());
                    let observations = req
                        .pks
                        .iter()
                        .map(|pk| {
                            let pk_ix = pk.0 as usize;
                            if let Some(f) = fates.get_mut(pk_ix) {
                                f.checks += 1;
                            }
                            let raw = match flip_of.get(&pk.0) {
                                Some((at, state)) if *at <= req.sent_at => match state {
                                    State::Succeeded => "approved",
                                    _ => "declined",
                                },
                                _ => "pending",
                            };
                            crate::kinds::Observation::Status {
                                raw: raw.into(),
                                state: req.kind.map_status(raw),
                                response: json!({ "status": raw }),
                            }
                        })
                        .collect();
                    request_times.push(req.sent_at);
                    next_req += 1;
                    in_flight.insert(
                        next_req,
                        Completion {
                            pool: req.pool,
                            pks: req.pks,
                            observations,
                            retry_after_ms: None,
                            sent_at: req.sent_at,
                            done_at: now + lat,
                            ledger: req.ledger,
                        },
                    );
                    completions.push(Reverse((now + lat, next_req)));
                }
                Action::Refill { pool, count, .. } => {
                    let keys = (0..count as i64)
                        .map(|i| LedgerKey(ledger_key + i))
                        .collect();
                    ledger_key += count as i64;
                    core.refilled(pool, Some(keys));
                }
                Action::Record(_) => {}
            }
        }
        if next_arrival >= arrivals.len()
            && active == 0
            && in_flight.is_empty()
            && core.watched() == 0
        {
            break;
        }
        // The next event.
        let mut next = next_tick;
        if let Some(&(at, ..)) = arrivals.get(next_arrival) {
            next = next.min(at);
        }
        if let Some(Reverse((at, _))) = completions.peek() {
            next = next.min(*at);
        }
        if let Some(w) = core.next_wake(now) {
            next = next.min(w.max(now + 1));
        }
        now = next.max(now);
        while let Some(&(at, flip, burst, stream)) = arrivals.get(next_arrival) {
            if at > now {
                break;
            }
            let pk = fates.len() as i64;
            let flip = flip.filter(|(age, _)| at + age < deadline_of(at));
            if let Some((age, state)) = flip {
                flip_of.insert(pk, (at + age, state));
            }
            let late_flip = match (&sc.late.mix, flip) {
                (Some(mix), None) => mix
                    .draw(&mut late_rng, scale)
                    .filter(|age| at + age >= deadline_of(at))
                    .map(|age| at + age),
                _ => None,
            };
            if let Some(t) = late_flip {
                flip_of.insert(pk, (t, State::Succeeded));
            }
            fates.push(Fate {
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
            core.track(
                PendingRow {
                    pk: PaymentKey(pk),
                    kind: kinds[stream].name.clone(),
                    id: format!("S{pk}"),
                    upstream_status: None,
                    started_at: at,
                    jitter_ms: rng.i64(first_lo..=first_hi),
                    next_check_at: None,
                    last_checked_at: None,
                },
                now,
                false,
            );
            active += 1;
            next_arrival += 1;
        }
        while let Some(Reverse((at, id))) = completions.peek().copied() {
            if at > now {
                break;
            }
            completions.pop();
            if let Some(done) = in_flight.remove(&id) {
                let out = core.complete(&done);
                for (pk, _, sent_at) in &out.moved {
                    if let Some(f) = fates.get_mut(pk.0 as usize) {
                        f.late_seen.get_or_insert(*sent_at);
                    }
                }
                for (pk, state, sent_at) in out.finished {
                    if let Some(f) = fates.get_mut(pk.0 as usize) {
                        f.state = state;
                        f.ended = Some(sent_at);
                        if state != State::TimedOut {
                            f.seen = Some(sent_at);
                        }
                        active -= 1;
                    }
                }
            }
        }
        if now >= next_tick {
            core.tick(now);
            next_tick = now + tick_ms;
            // Past the arrivals nothing reads it (the watch's tail can be days long).
            let st = if now < arrivals_end {
                core.status(now)
            } else {
                Vec::new()
            };
            if now >= sc.warmup_ms && now < arrivals_end {
                if let Some((truth, own, checks)) = &judge {
                    if now >= judged_at {
                        judged_at = now + sc.window_ms / 2;
                        let learnt = core
                            .plans("p2p")
                            .and_then(|p| delay_at(&p.frontier_under(truth), *checks));
                        if let (Some(l), Some(o)) = (learnt, own) {
                            if *o > 0.0 {
                                plan_losses.push(l / o);
                            }
                        }
                    }
                }
                if let Some(p) = st.first() {
                    late.extend_from_slice(&p.lateness_ms);
                    levels.push(p.price_level);
                    if let Some(k) = p.kinds.iter().find(|k| k.kind == "p2p") {
                        learnt = (k.flip_share, k.flip_age_ms);
                    }
                    planned.extend(
                        p.kinds
                            .iter()
                            .filter(|k| k.kind == "p2p")
                            .map(|k| k.expected_delay_ms as f64),
                    );
                }
            }
        }
    }

    // Figures over the measured payments.
    let until = sc.late.measured_until_ms.unwrap_or(i64::MAX);
    let measured: Vec<&Fate> = fates
        .iter()
        .filter(|f| !f.burst && f.arrived >= sc.warmup_ms && f.arrived < until)
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
    let span = (arrivals_end - sc.warmup_ms).max(1);
    // One budget for every stream: the bound prices them alike.
    let streams: Vec<(f64, FlipDist)> = sc
        .phases
        .last()
        .map(|ph| (ph.rate, ph.mix.dist(&grid, scale)))
        .into_iter()
        .chain(sc.others.iter().map(|(r, m)| (*r, m.dist(&grid, scale))))
        .collect();
    let refs: Vec<(f64, &FlipDist)> = streams.iter().map(|(r, d)| (*r, d)).collect();
    let bound_ms = bound_ms(&grid, &refs, sc);
    let missed = fates
        .iter()
        .filter(|f| f.state == State::Pending || (f.state != State::TimedOut && f.seen.is_none()))
        .count() as u32;
    // Provider-side windows: every request's arrival starts one.
    request_times.sort_unstable();
    let mut over = 0;
    let mut lo = 0;
    for (i, &t) in request_times.iter().enumerate() {
        while request_times[lo] <= t - sc.window_ms {
            lo += 1;
        }
        if (i - lo + 1) as u32 > sc.budget {
            over += 1;
        }
    }
    let in_span = request_times
        .iter()
        .filter(|&&t| t >= sc.warmup_ms && t < arrivals_end)
        .count();
    let budget_use = in_span as f64 / (span as f64 / sc.window_ms as f64 * f64::from(sc.budget));
    late.sort_unstable();
    let truth = sc
        .phases
        .last()
        .map(|ph| ph.mix.dist(&grid, scale))
        .unwrap_or_else(|| grid.ladder_prior());
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let all_timed_out = fates.iter().filter(|f| f.state == State::TimedOut).count();
    let mut reconciled = late_report(&measured, &schedule, scale, tick_ms + sc.latency_ms.1);
    reconciled.requests = late_requests;
    reconciled.requests_while_arriving = late_while_arriving;
    reconciled.requests_per_timed_out = late_requests as f64 / all_timed_out.max(1) as f64;
    Ok(Report {
        late: reconciled,
        late_mean_ms: late.iter().sum::<i64>() as f64 / late.len().max(1) as f64,
        late_p95_ms: late.get(late.len() * 95 / 100).copied().unwrap_or(0) as f64,
        level_mean: avg(&levels),
        level_pct: {
            let mut l = levels.clone();
            l.sort_by(f64::total_cmp);
            let q = |f: f64| l.get((l.len() as f64 * f) as usize).copied().unwrap_or(0.0);
            let zero = l.iter().filter(|v| **v == 0.0).count() as f64 / l.len().max(1) as f64;
            [q(0.1), q(0.5), q(0.9), zero]
        },
        planned_delay_ms: avg(&planned),
        learnt_flip_share: learnt.0,
        learnt_plans: (!plan_losses.is_empty()).then(|| avg(&plan_losses)),
        learnt_flip_age_ms: learnt.1,
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
        requests: request_times.len(),
        fates,
    })
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
    let moves: Vec<(&&Fate, UnixMs)> = measured
        .iter()
        .filter(|f| f.state == State::TimedOut)
        .filter_map(|f| Some((f, f.late_flip?)))
        .filter(|(f, t)| *t - f.arrived < last)
        .collect();
    let delays: Vec<i64> = moves
        .iter()
        .filter_map(|(f, t)| Some(f.late_seen? - t))
        .collect();
    let on_schedule = moves
        .iter()
        .filter(|(f, t)| {
            let Some(seen) = f.late_seen else {
                return false;
            };
            crate::reconcile::next_age(schedule, t - f.arrived - 1)
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

impl Scenario {
    /// How compressed the scenario's ladder is against the documented one (10-minute
    /// timeout): flip ages, rates and the bound scale by it.
    pub fn scale(&self) -> f64 {
        self.ladder.timeout_ms() as f64 / 600_000.0
    }

    /// Requests per payment the budget gives a stream of `rate` payments per (unscaled)
    /// second: what the bound spends.
    fn budget_per_payment(&self, rate: f64) -> f64 {
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

/// For [`Scenario::judge_plans`] on a steady stream of one kind: the true distribution,
/// its own plans' delay (cells) at the bound's requests per payment, and those requests.
fn judged(sc: &Scenario) -> Option<(FlipDist, Option<f64>, f64)> {
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
fn bound_ms(grid: &Grid, streams: &[(f64, &FlipDist)], sc: &Scenario) -> f64 {
    let rate: f64 = streams.iter().map(|(r, _)| r.max(0.0)).sum();
    if rate <= 0.0 {
        return 0.0;
    }
    bound(grid, streams, sc.budget_per_payment(rate)).delay * grid.unit_ms() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_a_draws_the_published_shares() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mix = Mix::a();
        let n = 20_000;
        let draws: Vec<_> = (0..n).map(|_| mix.draw(&mut rng, 1.0)).collect();
        let approved = draws
            .iter()
            .filter(|d| matches!(d, Some((_, State::Succeeded))))
            .count() as f64
            / n as f64;
        let never = draws.iter().filter(|d| d.is_none()).count() as f64 / n as f64;
        assert!((approved - 0.6).abs() < 0.02, "{approved}");
        assert!((never - 0.3).abs() < 0.02, "{never}");
        assert!(draws
            .iter()
            .flatten()
            .all(|(ms, _)| (5_000..=550_000).contains(ms)));
    }

    /// The documented ladder compressed 100×: the whole ladder in 6 s.
    fn compressed_ladder() -> Ladder {
        let s = |secs: u64| std::time::Duration::from_millis(secs * 10);
        Ladder::new(
            (s(20), s(25)),
            &[
                (s(3), Some(s(30))),
                (s(6), Some(s(60))),
                (s(10), Some(s(60))),
                (s(30), Some(s(60))),
                (s(60), None),
            ],
            s(600),
        )
        .unwrap()
    }

    #[test]
    fn a_light_stream_runs_the_ladder_and_a_heavy_one_stays_within_budget() {
        // Compressed 100×, the budget per 6 s.
        let ladder = compressed_ladder();
        let scenario = |rate: f64| Scenario {
            ladder: ladder.clone(),
            budget: 1000,
            window_ms: 6_000,
            phases: vec![Phase {
                duration_ms: 36_000,
                rate,
                mix: Mix::a(),
            }],
            bursts: Vec::new(),
            warmup_ms: 6_000,
            latency_ms: (1, 3),
            seed: 3,
            oracle: false,
            backlog_share: BacklogShare::DEFAULT,
            judge_plans: false,
            others: Vec::new(),
            late: LateScenario::default(),
        };
        let light = run(&scenario(0.02)).unwrap();
        assert_eq!(light.over_budget, 0);
        assert_eq!(light.missed_deadlines, 0);
        assert!(
            light.ratio < 1.25,
            "light: {:?}",
            (light.mean_ms, light.bound_ms)
        );
        let heavy = run(&scenario(0.5)).unwrap();
        // The yardstick of a stretch at one rate is the run's own at that rate.
        assert_eq!(scenario(0.5).bound_ms_at(0.5, &Mix::a()), heavy.bound_ms);
        assert!(scenario(0.5).bound_ms_at(0.02, &Mix::a()) < heavy.bound_ms);
        assert_eq!(heavy.over_budget, 0);
        assert_eq!(heavy.missed_deadlines, 0);
        assert!(
            heavy.budget_use > 0.9,
            "spends the budget: {}",
            heavy.budget_use
        );
        assert!(
            heavy.ratio < 1.5,
            "heavy: {:?}",
            (heavy.mean_ms, heavy.bound_ms)
        );
    }

    #[test]
    fn late_moves_are_all_seen_on_schedule_when_the_spare_budget_affords_it() {
        // Compressed 100×: a light stream whose watched payments' whole schedule fits in
        // what the live payments leave.
        let run_with = |schedule: Option<Vec<i64>>| {
            let mut sc = Scenario::steady(Mix::a(), 0.05, 6_000, 36_000, 11);
            sc.ladder = compressed_ladder();
            sc.window_ms = 6_000;
            sc.latency_ms = (1, 3);
            sc.late = LateScenario {
                mix: Some(LateMix {
                    share: 0.5,
                    ..LateMix::published()
                }),
                schedule,
                policy: LatePolicy::Worth,
                measured_until_ms: None,
            };
            run(&sc).unwrap()
        };
        let schedule: Vec<i64> = [900, 1800, 3600, 7200, 21_600, 43_200, 86_400]
            .iter()
            .map(|s| s * 1000)
            .collect();
        let on = run_with(Some(schedule));
        let off = run_with(None);
        let l = on.late;
        assert!(l.moves >= 5, "{l:?}");
        assert_eq!((l.seen, l.seen_on_schedule), (l.moves, l.moves), "{l:?}");
        assert_eq!(l.seen_24h, l.moves, "{l:?}");
        assert_eq!(off.late.seen, 0, "nothing watches without a schedule");
        for r in [&on, &off] {
            assert_eq!(r.over_budget, 0);
            assert_eq!(r.missed_deadlines, 0);
        }
        // The live payments are not delayed by the watch.
        assert!(
            on.mean_ms <= off.mean_ms * 1.03,
            "live {} with reconciliation, {} without",
            on.mean_ms,
            off.mean_ms
        );
        // Every late check spent was a scheduled one: at most the schedule's length each.
        assert!(l.requests_per_timed_out <= 7.0 + 1e-9, "{l:?}");
    }

    #[test]
    fn judging_the_learnt_plans_changes_no_decision_and_the_true_mix_loses_nothing() {
        // Mix A at 0.5/s, compressed 100×.
        let stream = |judge: bool, oracle: bool| {
            let mut sc = Scenario::steady(Mix::a(), 0.5, 6_000, 30_000, 5);
            sc.ladder = compressed_ladder();
            sc.window_ms = 6_000;
            sc.latency_ms = (1, 3);
            sc.judge_plans = judge;
            sc.oracle = oracle;
            run(&sc).unwrap()
        };
        let plain = stream(false, false);
        let judged = stream(true, false);
        assert_eq!(plain.learnt_plans, None);
        // The judge reads the core's plans and decides nothing: every payment alike.
        let fates = |r: &Report| -> Vec<_> {
            r.fates
                .iter()
                .map(|f| (f.arrived, f.seen, f.ended, f.checks))
                .collect()
        };
        assert_eq!(fates(&plain), fates(&judged));
        let learnt = judged.learnt_plans.expect("judged");
        assert!((1.0..1.5).contains(&learnt), "{learnt}");
        // Told the true mix, the plans are the true mix's own.
        let told = stream(true, true).learnt_plans.expect("judged");
        assert!((told - 1.0).abs() < 1e-9, "{told}");
    }

    #[test]
    fn kinds_on_one_key_share_its_budget_and_are_each_checked() {
        // Mix A as `p2p` and mix B as `s1`, 0.25/s each, compressed 100×.
        let mut sc = Scenario::steady(Mix::a(), 0.25, 6_000, 30_000, 4);
        sc.ladder = compressed_ladder();
        sc.window_ms = 6_000;
        sc.latency_ms = (1, 3);
        sc.others = vec![(0.25, Mix::b())];
        let r = run(&sc).unwrap();
        assert_eq!(r.over_budget, 0);
        assert_eq!(r.missed_deadlines, 0);
        assert!(r.budget_use > 0.9, "spends the budget: {}", r.budget_use);
        for stream in [0, 1] {
            let seen = r
                .fates
                .iter()
                .filter(|f| f.stream == stream && f.seen.is_some())
                .count();
            assert!(seen > 100, "stream {stream}: {seen} flips seen");
        }
        // Against the bound of both streams on the one budget, which is above mix A's
        // alone at the same total rate (B flips later).
        let grid = Grid::new(&sc.ladder);
        let a_alone = bound_ms(&grid, &[(0.5, &Mix::a().dist(&grid, 0.01))], &sc);
        assert!(r.bound_ms > a_alone, "{} vs {a_alone}", r.bound_ms);
        assert!(r.ratio < 1.5, "{:?}", (r.mean_ms, r.bound_ms));
    }

    #[test]
    fn the_stream_recovers_after_a_burst_spread_over_minutes() {
        // 2,000 payments over five minutes on top of mix A at 0.2/s, compressed 100×.
        let min = 600; // a minute, compressed
        let mut sc = Scenario::steady(Mix::a(), 0.2, 60 * min, 35 * min, 9);
        sc.ladder = compressed_ladder();
        sc.window_ms = 6_000;
        sc.latency_ms = (1, 3);
        sc.bursts = vec![(60 * min, 2000, 5 * min, Mix::a())];
        let r = run(&sc).unwrap();
        assert_eq!(r.over_budget, 0);
        assert_eq!(r.missed_deadlines, 0);
        let mean = |from: i64, to: i64| {
            r.mean_delay_ms(|f| !f.burst && f.arrived >= from && f.arrived < to)
                .0
        };
        let before = mean(45 * min, 60 * min);
        // The payments that arrive in the ten minutes after the burst are seen about as
        // soon as before it. A burst priced in would leave the room it saved unused, that
        // room would be missing a window later, and their checks would go late into the
        // backlog.
        let after = mean(65 * min, 75 * min);
        assert!(
            after < 6.0 * before,
            "{after:.0} ms after, {before:.0} ms before"
        );
    }
}
