//! The scheduler's pure core: every scheduling decision, as synchronous code. State plus an
//! event plus `now` gives actions; the driver (tokio) only waits and does the I/O, and the
//! simulator ([`crate::sim`]) runs this same core on simulated time.
//!
//! Times here are on the scheduler's clock (milliseconds, monotonic while the daemon
//! runs); the driver converts the wall-clock times of the database at the boundary.
//!
//! Policy. Each API key has a *price level*: 0 runs the documented ladder exactly; higher
//! levels follow the schedules of [`crate::policy`], which spend ever fewer requests where
//! they buy the least delay, by each payment's real age and its kind's learnt flip-age
//! distribution. Every tick the level is set to the lowest one whose projected demand over
//! the next window fits the budget; the budget limiter stays the hard guarantee. Due
//! checks go earliest-due-first; manual rechecks go first, within a bounded share. After a
//! burst, the checks that went late form a backlog with a bounded share of the budget, and
//! the plans of the other payments are priced for the rest and keep running.

use super::decide::decide;
use super::late::{LatePolicy, Watch, WatchStart};
use crate::budget::{BacklogShare, Budget};
use crate::kinds::{ErrorClass, Kind, KindName, Observation};
use crate::ladder::Ladder;
use crate::payment::{LedgerKey, PaymentId, PaymentKey, State, UnixMs};
use crate::policy::{arrival_rate, burst_cap, Evidence, Grid, Learner, Plans, RATE_WINDOWS};
use crate::status::{drain_eta, KindPolicy, LateStatus, PoolStatus};
use crate::store::{CheckRecord, EventSpec, PendingRow, WatchedRow};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Share of the budget the policy plans to spend; the limiter absorbs the rest of the
/// projection's error.
const PLAN_SHARE: f64 = 0.98;

/// The learner's long memory (see `Learner`): about this many payments, at most this many
/// lifetimes. Past 0.2 payments a second the payments are checked sparsely, each flip's
/// interval is wide, and a shape learnt from fewer of them costs delay. Measured seed by
/// seed against 1,500 (12 seeds): steady B at 1.0/s 0.043 nearer the bound (better on every
/// seed), A and B at 0.5/s 0.010 and 0.016, A at 1.0/s 0.009; a day's rise and fall 0.02–0.04
/// on each side for A and B; the 20 minutes after a step from 0.1/s to 0.5/s 0.06 further
/// from it. 3,000 gave half the day's gain.
const LONG_MEMORY_PAYMENTS: f64 = 6000.0;
const LONG_MEMORY_LIVES: i64 = 12;

/// How far back the learner may remember payments, for a ladder's timeout and a budget
/// window: its long memory at most, what a restart rebuilds it from, and so the least
/// `database.keep_finished` (the one source of that horizon).
pub fn memory_horizon_ms(timeout_ms: i64, window_ms: i64) -> i64 {
    LONG_MEMORY_LIVES.saturating_mul(timeout_ms.max(window_ms))
}

/// Most distinct unknown statuses remembered (each logged once).
const MAX_UNKNOWN_LOGGED: usize = 256;

/// Share of the budget manual rechecks may take in a window, all together.
const RECHECK_SHARE: f64 = 0.1;

/// The backlog leaves this fraction of the budget (1/50: 20 of 1,000) free when it takes
/// what the checks on plan leave: their load comes in spurts (payments that start together
/// have their dense early checks together), and a spurt that finds the window full goes
/// late and joins the backlog. Measured on a burst of 2,000 payments on top of 0.2/s
/// (`benches/policy.rs`, seeds 9–14, share 0.3): the stream's mean delay per 5 minutes of
/// arrivals after the burst was 11–33 s without it, 12–15 s with it (pre-burst 10 s). At
/// share 0.2, 1/25 measured alike and drained the burst slower.
const BACKLOG_LEAVES_DIVISOR: u32 = 50;

/// A due check this many windows late outranks every other in the backlog (earliest due
/// first), so none waits for ever behind worthier ones.
const PATIENCE_WINDOWS: i64 = 2;

/// A key is behind once its earliest due check is late by more than this fraction of a
/// window (1/2), or more checks are due than the budget sends in that time: then due checks
/// go by worth, not by due time. Measured: 1/10 or 1/30 let a change of mix (a transient
/// backlog while the model is wrong) rank by a wrong model.
const BEHIND_DIVISOR: i64 = 2;

/// When more checks are due than the budget sends in half a window, with the budget spent
/// (a burst), a due check late by more than this fraction of a window (1/20: 30 s) puts its
/// payment in the backlog for the rest of its life: its checks go by worth within the
/// backlog's share ([`CoreConfig::backlog_share`]), and after the first only the deadline
/// check is left. The checks still on time keep their plan, earliest due first, so the
/// payments that come after the burst are checked as planned. No payment is favoured by
/// its arrival: only by how late its check is.
const ON_PLAN_DIVISOR: i64 = 20;

/// On a small budget, a check is on plan while late by less than the time the budget takes
/// to send this many requests (see [`Core::on_time`]).
const ON_PLAN_REQUESTS: i64 = 20;

/// One API key, as the core knows it.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// Shown in health and logs.
    pub name: String,
    /// Names the key's rows in the budget ledger (a hash of the key, never the key).
    pub ledger_id: String,
    /// Whether a key is configured at all.
    pub has_key: bool,
}

/// What the core is built from.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub ladder: Ladder,
    pub kinds: BTreeMap<KindName, Arc<Kind>>,
    pub pools: Vec<PoolSpec>,
    /// Pool of each kind (absent: pool 0).
    pub kind_pool: HashMap<KindName, usize>,
    pub budget_requests: u32,
    pub budget_window_ms: i64,
    /// The share of a key's budget its backlog may take after a burst.
    pub backlog_share: BacklogShare,
    pub max_in_flight: usize,
    /// Seeds the core's randomness (back-off jitter, mixing draws): the simulator repeats.
    pub seed: u64,
    /// Which watched payment's check goes first when the spare budget is short.
    pub late_policy: LatePolicy,
}

/// A request for the driver to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub pool: usize,
    pub kind: Arc<Kind>,
    pub pks: Vec<PaymentKey>,
    pub ids: Vec<PaymentId>,
    /// Each payment's start (scheduler time): a listing's coverage is judged by it.
    pub started: Vec<UnixMs>,
    /// A listing's page size (0 for a single-payment kind).
    pub list_limit: u32,
    pub sent_at: UnixMs,
    /// The pre-committed ledger row it uses.
    pub ledger: Option<LedgerKey>,
}

/// A finished request, for [`Core::complete`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub pool: usize,
    pub pks: Vec<PaymentKey>,
    pub observations: Vec<Observation>,
    pub retry_after_ms: Option<i64>,
    pub sent_at: UnixMs,
    pub done_at: UnixMs,
    pub ledger: Option<LedgerKey>,
}

/// What a completion produced.
#[derive(Debug, Default)]
pub struct Completed {
    /// Outcomes to commit.
    pub records: Vec<CheckRecord>,
    /// The ledger row to close (`(row, answered_at)`).
    pub ledger: Option<(LedgerKey, UnixMs)>,
    /// For telemetry: `(index into the observations, kind, state after)`.
    pub checked: Vec<(usize, Arc<Kind>, State)>,
    /// Final outcomes, for whoever watches (the simulator): `(pk, state, sent_at)`.
    pub finished: Vec<(PaymentKey, State, UnixMs)>,
    /// Moves seen under reconciliation, after the ladder: `(pk, new state, sent_at)`.
    pub moved: Vec<(PaymentKey, State, UnixMs)>,
}

/// The core's actions, besides the ones methods return directly.
#[derive(Debug)]
pub enum Action {
    Send(Request),
    /// Outcomes to commit without a request (no API key configured).
    Record(Vec<CheckRecord>),
    /// Pre-commit `count` ledger rows for a pool.
    Refill {
        pool: usize,
        ledger_id: String,
        count: usize,
    },
}

/// Where a due check waits: see [`Core::peek_due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Recheck,
    Planned,
    /// Due, waiting in `ready`, still on plan.
    Ready,
    /// Due, waiting in `ready`, in the backlog.
    Backlog,
}

struct Entry {
    pk: PaymentKey,
    kind: Arc<Kind>,
    /// Index of the kind's model.
    model: usize,
    id: PaymentId,
    pool: usize,
    jitter: i64,
    t0: UnixMs,
    deadline: UnixMs,
    /// When the last answered check was sent.
    last: Option<UnixMs>,
    upstream_status: Option<String>,
    due: UnixMs,
    gen: u64,
    in_flight: bool,
    /// Consecutive unanswered checks, for back-off.
    failures: u32,
    /// A manual recheck is wanted (at `due` when it is queued).
    recheck: bool,
    /// The payment's draw for mixing two neighbouring price levels.
    phi: f64,
    /// In its key's backlog (see [`ON_PLAN_DIVISOR`]).
    backlog: bool,
    /// Since when its check is due, for telling whether it is late: a replan to a cheaper
    /// level may move `due` into the past, but the check was not due before then.
    due_from: UnixMs,
}

struct Model {
    /// The pool its kind's requests go to, and whether it is a list kind.
    pool: usize,
    list: bool,
    learner: Learner,
    plans: Plans,
    /// Arrival times of new payments, for the arrival rate.
    arrivals: VecDeque<UnixMs>,
    /// Payments of this kind that finished, since the plans were solved.
    fresh: usize,
    /// The distribution is given, not learnt.
    fixed: bool,
}

struct Pool {
    spec: PoolSpec,
    budget: Budget,
    heap: BinaryHeap<Reverse<(UnixMs, u64, PaymentKey)>>,
    /// Planned checks that came due and wait for budget (`(due, gen, pk)`): when the key
    /// is short, the one most likely to see a flip goes first (see [`Core::worth`]).
    ready: Vec<(UnixMs, u64, PaymentKey)>,
    rechecks: BinaryHeap<Reverse<(UnixMs, u64, PaymentKey)>>,
    /// When recent manual rechecks were sent.
    recheck_sent: VecDeque<UnixMs>,
    /// The requests of the last [`Core::on_time`]: when, and whether for the backlog.
    recent_sent: VecDeque<(UnixMs, bool)>,
    /// The backlog's requests of the last window, and since when it has had one: its pace.
    backlog_sent: VecDeque<UnixMs>,
    /// The live payments' requests of the last window: the pace reconciliation leaves room
    /// for.
    live_sent: VecDeque<UnixMs>,
    backlog_since: Option<UnixMs>,
    /// More checks are due than the budget sends in half a window, and the budget is
    /// spent (set every tick).
    piled: bool,
    /// Whether any of its payments is on plan, out of the backlog (as of the last tick).
    on_plan: bool,
    throttled: u32,
    /// Kinds answering 401/403 since when, and when it was last logged.
    auth_failing: HashMap<KindName, (UnixMs, UnixMs)>,
    /// Kinds whose last check got no usable answer (see [`ErrorClass::is_outage`]), with
    /// its error, until one is answered.
    outage: HashMap<KindName, String>,
    /// Earliest next request of each list kind (its cadence).
    list_not_before: HashMap<KindName, UnixMs>,
    last_probe: UnixMs,
    lateness_ms: Vec<i64>,
    ledger_keys: VecDeque<LedgerKey>,
    refilling: bool,
    level: f64,
    projected: f64,
    target: f64,
    /// Payments arriving per window (kinds checked one by one) at the rates the price was
    /// last set for.
    arrivals: f64,
}

/// The scheduling state of every pending payment and every key.
pub struct Core {
    ladder: Ladder,
    grid: Grid,
    kinds: BTreeMap<KindName, Arc<Kind>>,
    kind_pool: HashMap<KindName, usize>,
    models: Vec<Model>,
    model_of: HashMap<KindName, usize>,
    pools: Vec<Pool>,
    entries: HashMap<PaymentKey, Entry>,
    max_in_flight: usize,
    in_flight: usize,
    gen: u64,
    rng: fastrand::Rng,
    unknown_logged: HashSet<(KindName, String)>,
    /// Per list kind, the page size its listings grew to after coming back cut short
    /// (the provider pages by size only, newest first).
    list_limit: HashMap<KindName, u32>,
    window: i64,
    /// See [`CoreConfig::backlog_share`].
    backlog_share: f64,
    last_fit: UnixMs,
    /// When the core started (arrival rates count from there).
    started: UnixMs,
    /// Payments under reconciliation after their ladder.
    watch: Watch,
    last_watch_fit: UnixMs,
    /// Outcomes to commit that no request produced (a watch that ended unchecked).
    unsent: Vec<CheckRecord>,
}

impl Core {
    /// A core with no payments, at `now`.
    pub fn new(cfg: CoreConfig, now: UnixMs) -> Self {
        let grid = Grid::new(&cfg.ladder);
        let window_cells = (cfg.budget_window_ms / grid.unit_ms()).max(1) as usize;
        // The whole long memory until the first refit sets it from the arrival rate: a
        // restart rebuilds that much, and a shorter horizon would drop it at the first fit.
        let horizon = memory_horizon_ms(cfg.ladder.timeout_ms(), cfg.budget_window_ms);
        let mut models = Vec::new();
        let mut model_of = HashMap::new();
        for (name, kind) in &cfg.kinds {
            model_of.insert(name.clone(), models.len());
            let prior = grid.ladder_prior();
            models.push(Model {
                pool: cfg.kind_pool.get(name).copied().unwrap_or(0),
                list: kind.is_list(),
                learner: Learner::new(prior.clone(), horizon),
                plans: Plans::new(&grid, prior, window_cells),
                arrivals: VecDeque::new(),
                fresh: 0,
                fixed: false,
            });
        }
        let longest = cfg
            .kinds
            .values()
            .filter_map(|k| k.reconcile_after.last().copied())
            .max()
            .unwrap_or(0);
        let watch = Watch::new(
            cfg.pools.len(),
            cfg.ladder.timeout_ms(),
            longest,
            cfg.budget_window_ms,
            cfg.late_policy,
        );
        let pools = cfg
            .pools
            .into_iter()
            .map(|spec| Pool {
                spec,
                budget: Budget::new(cfg.budget_requests, cfg.budget_window_ms),
                heap: BinaryHeap::new(),
                ready: Vec::new(),
                rechecks: BinaryHeap::new(),
                recheck_sent: VecDeque::new(),
                recent_sent: VecDeque::new(),
                backlog_sent: VecDeque::new(),
                live_sent: VecDeque::new(),
                backlog_since: None,
                piled: false,
                on_plan: false,
                throttled: 0,
                auth_failing: HashMap::new(),
                outage: HashMap::new(),
                list_not_before: HashMap::new(),
                last_probe: 0,
                lateness_ms: Vec::new(),
                ledger_keys: VecDeque::new(),
                refilling: false,
                level: 0.0,
                projected: 0.0,
                arrivals: 0.0,
                target: 0.0,
            })
            .collect();
        Self {
            ladder: cfg.ladder,
            grid,
            kinds: cfg.kinds,
            kind_pool: cfg.kind_pool,
            models,
            model_of,
            pools,
            entries: HashMap::new(),
            max_in_flight: cfg.max_in_flight.max(1),
            in_flight: 0,
            gen: 0,
            rng: fastrand::Rng::with_seed(cfg.seed),
            unknown_logged: HashSet::new(),
            list_limit: HashMap::new(),
            window: cfg.budget_window_ms,
            backlog_share: cfg.backlog_share.get(),
            last_fit: now,
            started: now,
            watch,
            last_watch_fit: now,
            unsent: Vec::new(),
        }
    }

    /// Counts a request made before a restart (see [`Budget::restore`]).
    pub fn restore_spent(&mut self, ledger_id: &str, done_at: Option<UnixMs>, now: UnixMs) {
        for p in &mut self.pools {
            if p.spec.ledger_id == ledger_id {
                p.budget.restore(done_at, now);
            }
        }
    }

    /// Learns from a payment that finished before a restart: `pending_seen`: the last
    /// check that saw it pending; `final_at`: the check that saw it final (`None`: it
    /// timed out or was cancelled, so no flip was seen).
    pub fn learn(
        &mut self,
        kind: &str,
        started: UnixMs,
        pending_seen: Option<UnixMs>,
        final_at: Option<UnixMs>,
    ) {
        let Some(&m) = self.model_of.get(kind) else {
            return;
        };
        let lo = pending_seen.map_or(0, |t| self.grid.cell(t - started));
        let hi = final_at.map(|t| self.grid.cell_ceil(t - started).max(lo + 1));
        self.models[m].learner.observe(started, Evidence { lo, hi });
    }

    /// Fixes a kind's flip distribution instead of learning it (the simulator's oracle).
    pub fn assume(&mut self, kind: &str, dist: crate::policy::FlipDist) {
        if let Some(&m) = self.model_of.get(kind) {
            let window_cells = (self.window / self.grid.unit_ms()).max(1) as usize;
            self.models[m].plans = Plans::new(&self.grid, dist, window_cells);
            self.models[m].fixed = true;
        }
    }

    /// A kind's current plans (its learnt or assumed flip ages and their schedules).
    pub fn plans(&self, kind: &str) -> Option<&Plans> {
        self.model_of.get(kind).map(|&m| &self.models[m].plans)
    }

    /// How far back the learner may remember payments (its long memory at most): what a
    /// restart rebuilds it from.
    pub fn memory_ms(&self) -> i64 {
        memory_horizon_ms(self.ladder.timeout_ms(), self.window)
    }

    /// The learner's unit of memory: a payment's lifetime (the ladder's timeout), or the
    /// budget's window if that is longer.
    fn life_ms(&self) -> i64 {
        self.ladder.timeout_ms().max(self.window)
    }

    /// Payments held.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn next_gen(&mut self) -> u64 {
        self.gen += 1;
        self.gen
    }

    /// Starts tracking a pending payment (a duplicate is ignored). `resumed`: read back at
    /// start-up, where a stored next check earlier than the plan is a manual recheck that
    /// must survive the restart. Times are on the core's clock.
    pub fn track(&mut self, row: PendingRow, now: UnixMs, resumed: bool) {
        if self.entries.contains_key(&row.pk) {
            return;
        }
        let Some(kind) = self.kinds.get(&row.kind).cloned() else {
            tracing::warn!(kind = %row.kind, id = %row.id, "payment of a kind no longer configured stays pending, unpolled");
            return;
        };
        let Ok(id) = PaymentId::parse(&row.id) else {
            tracing::warn!(
                pk = %row.pk,
                "payment with an invalid id in the database is not polled"
            );
            return;
        };
        let model = self.model_of[&row.kind];
        if !resumed {
            self.models[model].arrivals.push_back(now);
        }
        let pool = self.kind_pool.get(&row.kind).copied().unwrap_or(0);
        let gen = self.next_gen();
        let mut e = Entry {
            pk: row.pk,
            kind,
            model,
            id,
            pool,
            jitter: self.ladder.clamp_jitter(row.jitter_ms),
            t0: row.started_at,
            deadline: row.started_at + self.ladder.timeout_ms(),
            last: row.last_checked_at,
            upstream_status: row.upstream_status,
            due: now,
            gen,
            in_flight: false,
            failures: 0,
            recheck: false,
            phi: self.rng.f64(),
            backlog: false,
            due_from: now,
        };
        self.plan(&mut e);
        let stored = row.next_check_at.filter(|_| resumed);
        if let Some(at) = stored {
            if at < e.due && row.last_checked_at.is_none_or(|c| at > c) {
                e.recheck = true;
                e.due = at;
            }
        }
        e.due_from = e.due.max(now);
        self.queue(&e);
        self.entries.insert(e.pk, e);
    }

    /// Stops tracking (cancelled). An answer in flight finds it gone and is dropped.
    pub fn untrack(&mut self, pk: PaymentKey) {
        if let Some(e) = self.entries.remove(&pk) {
            let lo = e.last.map_or(0, |l| self.grid.cell(l - e.t0));
            self.models[e.model]
                .learner
                .observe(e.t0, Evidence { lo, hi: None });
        }
    }

    /// A manual recheck: a hint (the merchant forwarded Ninjapay's callback), so it is
    /// coalesced: at most one check per payment per ladder step, and rechecks as a whole
    /// take at most a tenth of the budget. Returns when the check is due, or `None` when
    /// the payment is not held.
    pub fn recheck(&mut self, pk: PaymentKey, now: UnixMs) -> Option<UnixMs> {
        if self.watch.holds(&pk) {
            return self.watch.recheck(pk, now, now);
        }
        let window = self.window;
        let gen = self.next_gen();
        let e = self.entries.get_mut(&pk)?;
        let earliest = e
            .last
            .map_or(now, |l| (l + self.grid.step_ms(l - e.t0)).max(now));
        let pool = &mut self.pools[e.pool];
        let cap = (pool.budget.effective_limit() as f64 * RECHECK_SHARE).max(1.0) as usize;
        forget_older(&mut pool.recheck_sent, window, now);
        let share_at = if pool.recheck_sent.len() >= cap {
            pool.recheck_sent[pool.recheck_sent.len() - cap] + window
        } else {
            now
        };
        let at = earliest.max(share_at);
        if e.recheck && e.due <= at {
            return Some(e.due);
        }
        if at >= e.due && !e.in_flight {
            return Some(e.due); // the plan checks it no later anyway
        }
        e.recheck = true;
        e.due = at;
        e.gen = gen;
        if !e.in_flight {
            pool.rechecks.push(Reverse((at, gen, pk)));
        }
        Some(at)
    }

    fn queue(&mut self, e: &Entry) {
        let pool = &mut self.pools[e.pool];
        if e.recheck {
            pool.rechecks.push(Reverse((e.due, e.gen, e.pk)));
        } else {
            pool.heap.push(Reverse((e.due, e.gen, e.pk)));
        }
    }

    /// Sets a payment's next due time: the documented ladder at level 0, else the
    /// schedule of its price level for its kind, by its real age. A payment in the
    /// backlog is left its deadline check only.
    fn plan(&self, e: &mut Entry) {
        let pool = &self.pools[e.pool];
        let plans = &self.models[e.model].plans;
        let level = if e.kind.is_list() {
            0.0
        } else if e.backlog {
            plans.top() as f64
        } else {
            pool.level
        };
        let table = plans.table(level, e.phi);
        // The documented ladder, first check jittered over its 20–25 s, while the budget
        // is not scarce. Once it is, a payment mixed onto the ladder's table keeps its steps
        // but not the jitter: the price and the limiter spread the load, and a first check
        // later than it may be only delays the flips it sees (measured on a mix flipping
        // before the first check: 1.36× the bound with the jitter).
        let due = if table.mu == 0.0 && level == 0.0 {
            match self
                .ladder
                .next_slot_after(e.jitter, e.last.map(|l| l - e.t0))
            {
                Some(slot) if slot < self.ladder.timeout_ms() => e.t0 + slot,
                _ => e.deadline,
            }
        } else {
            let t = e.last.map_or(0, |l| self.grid.cell(l - e.t0).max(1));
            let u = table.next(t);
            let mut due = e.t0 + u as i64 * self.grid.unit_ms();
            if let Some(l) = e.last {
                due = due.max(l + self.grid.step_ms(l - e.t0));
            }
            if u >= self.grid.cells() {
                due = e.deadline;
            }
            due
        };
        e.due = due.min(e.deadline);
    }

    /// Starts the checks that are due, within the in-flight bound and the budget.
    pub fn poll(&mut self, now: UnixMs, out: &mut Vec<Action>) {
        if !self.unsent.is_empty() {
            out.push(Action::Record(std::mem::take(&mut self.unsent)));
        }
        for p in 0..self.pools.len() {
            self.ensure_reserve(p, out);
            while self.in_flight < self.max_in_flight {
                if self.send_watched(p, now, false, out) {
                    continue;
                }
                let Some((from, pk)) = self.peek_due(p, now) else {
                    // Nothing of the ladder's is due: what it leaves of the budget may go
                    // to the payments under reconciliation.
                    if self.send_watched(p, now, true, out) {
                        continue;
                    }
                    break;
                };
                let recheck = from == Queue::Recheck;
                let kind = self.entries[&pk].kind.clone();
                // Keys answering 401/403 are probed by one request at a time, at most
                // every few seconds, instead of spending the budget on every payment.
                if let Some((since, _)) = self.pools[p].auth_failing.get(&kind.name) {
                    let probe_every = (self.window / 100).clamp(50, 30_000);
                    let last = self.pools[p].last_probe.max(*since);
                    if now < last + probe_every {
                        self.defer(p, pk, from, last + probe_every);
                        continue;
                    }
                    self.pools[p].last_probe = now;
                }
                if kind.is_list() {
                    if let Some(&nb) = self.pools[p].list_not_before.get(&kind.name) {
                        if now < nb {
                            self.defer(p, pk, from, nb);
                            continue;
                        }
                    }
                }
                if !self.pools[p].spec.has_key {
                    self.no_key(p, pk, from, now, out);
                    continue;
                }
                if self.pools[p].ledger_keys.is_empty() {
                    self.ensure_reserve(p, out);
                    break; // a refill wakes us
                }
                if !self.pools[p].budget.try_acquire(now) {
                    break;
                }
                self.take(p, pk, from);
                if recheck {
                    self.pools[p].recheck_sent.push_back(now);
                }
                self.pools[p].live_sent.push_back(now);
                if from == Queue::Backlog {
                    let sent = &mut self.pools[p].backlog_sent;
                    sent.push_back(now);
                    forget_older(sent, self.window, now);
                }
                let span = self.on_time(p);
                let recent = &mut self.pools[p].recent_sent;
                recent.push_back((now, from == Queue::Backlog));
                while recent.front().is_some_and(|(t, _)| *t + span <= now) {
                    recent.pop_front();
                }
                let pks = if kind.is_list() {
                    self.list_members(p, &kind, pk, now)
                } else {
                    vec![pk]
                };
                let req = self.launch(p, kind, pks, now);
                out.push(Action::Send(req));
                self.ensure_reserve(p, out);
            }
        }
    }

    /// Sends one check of a payment under reconciliation of pool `p`, if one is due: with
    /// `spare` false, a merchant's recheck (within the rechecks' share, as for live ones);
    /// with `spare` true, the scheduled check most worth it, and only from what the live
    /// payments leave of the budget: room beyond a fiftieth of it (their spurts) and every
    /// live check due within the time a check may go late and stay on plan.
    fn send_watched(&mut self, p: usize, now: UnixMs, spare: bool, out: &mut Vec<Action>) -> bool {
        if !self.pools[p].spec.has_key {
            return false;
        }
        let pk = if spare {
            if !self.watch.any_due(p, now) {
                return false;
            }
            // Over the next window the live payments must still find room as the window's
            // requests expire: for their checks due within the on-plan lateness, each as it
            // comes due, and for their pace of the last window all along, with a fiftieth
            // of the budget to spare.
            let window = self.window;
            forget_older(&mut self.pools[p].live_sent, window, now);
            let pace = self.pools[p].live_sent.len() as f64;
            let soon = now + self.on_time(p);
            let mut live_soon: Vec<UnixMs> = self
                .entries
                .values()
                .filter(|e| e.pool == p && !e.in_flight && e.due <= soon)
                .map(|e| e.due.max(now))
                .collect();
            live_soon.sort_unstable();
            let keep = self.pools[p].budget.effective_limit() / BACKLOG_LEAVES_DIVISOR;
            if !self.pools[p].budget.room_ahead(now, &live_soon, pace, keep) {
                return false;
            }
            let refused = &self.pools[p].auth_failing;
            let Some(pk) = self.watch.pick(p, now, |k| refused.contains_key(k)) else {
                return false;
            };
            pk
        } else {
            let Some(pk) = self.watch.due_recheck(p, now) else {
                return false;
            };
            let cap =
                (self.pools[p].budget.effective_limit() as f64 * RECHECK_SHARE).max(1.0) as usize;
            forget_older(&mut self.pools[p].recheck_sent, self.window, now);
            if self.pools[p].recheck_sent.len() >= cap {
                return false;
            }
            pk
        };
        if self.pools[p].ledger_keys.is_empty() {
            self.ensure_reserve(p, out);
            return false;
        }
        if !self.pools[p].budget.try_acquire(now) {
            return false;
        }
        let pks = self.watch.members(pk);
        let (ids, started, kind) = self.watch.launch(&pks);
        let Some(kind) = kind else {
            self.pools[p].budget.release(now);
            return false;
        };
        if !spare {
            self.pools[p].recheck_sent.push_back(now);
        }
        self.in_flight += 1;
        // A listing under reconciliation reaches back hours: the largest page at once.
        let list_limit = kind.list.as_ref().map_or(0, |l| l.max_limit);
        let ledger = self.pools[p].ledger_keys.pop_front();
        out.push(Action::Send(Request {
            pool: p,
            kind,
            pks,
            ids,
            started,
            list_limit,
            sent_at: now,
            ledger,
        }));
        self.ensure_reserve(p, out);
        true
    }

    /// The head of a pool's recheck or plan heap (`(due, pk)`), dropping stale entries
    /// (superseded plans, payments gone or in flight) on the way.
    fn live_head(&mut self, p: usize, recheck: bool) -> Option<(UnixMs, PaymentKey)> {
        loop {
            let pool = &mut self.pools[p];
            let heap = if recheck {
                &mut pool.rechecks
            } else {
                &mut pool.heap
            };
            let Reverse((due, gen, pk)) = heap.peek().copied()?;
            let live = self
                .entries
                .get(&pk)
                .is_some_and(|e| e.gen == gen && !e.in_flight && e.recheck == recheck);
            if live {
                return Some((due, pk));
            }
            heap.pop();
        }
    }

    /// The next due check of a pool and the queue it waits in: a due manual recheck
    /// first; else, while the key keeps up, the earliest due planned check; once it is
    /// behind (a burst), the due checks split into those on plan (earliest due first) and
    /// the backlog (the one most worth a request), the backlog within its share.
    fn peek_due(&mut self, p: usize, now: UnixMs) -> Option<(Queue, PaymentKey)> {
        if let Some((due, pk)) = self.live_head(p, true) {
            if due <= now {
                return Some((Queue::Recheck, pk));
            }
        }
        // Keeping up, the plans fit the budget, so they run as planned, earliest due
        // first, in O(log n). That needs no model: right after the traffic changes the
        // learnt flip ages are wrong, and ranking by them was measured to cost 3× the delay.
        let lag = self.window / BEHIND_DIVISOR;
        let on_time = self.on_time(p);
        let piled = self.pools[p].piled;
        let head = self.live_head(p, false).filter(|(due, _)| *due <= now);
        if self.pools[p].ready.is_empty() {
            match head {
                None => return None,
                Some((due, pk)) if now - due <= on_time || (now - due <= lag && !piled) => {
                    return Some((Queue::Planned, pk))
                }
                Some(_) => {}
            }
        }
        // Late: gather every due check, to see whether the key is behind.
        while let Some((due, pk)) = self.live_head(p, false).filter(|(due, _)| *due <= now) {
            let gen = self.entries[&pk].gen;
            self.pools[p].heap.pop();
            self.pools[p].ready.push((due, gen, pk));
        }
        let mut ready = std::mem::take(&mut self.pools[p].ready);
        ready.retain(|&item| self.live_ready(item));
        let earliest = ready.iter().map(|&(due, _, _)| due).min();
        // Behind: the earliest due check is late by more than `lag`, or the key is piled
        // up (a burst: then waiting for the first to be `lag` late would leave every
        // payment, the stream's too, that late).
        match earliest {
            None => None,
            Some(due) if now - due <= lag && !piled => {
                // Caught up: back to the plan's order.
                let heap = &mut self.pools[p].heap;
                heap.extend(ready.drain(..).map(Reverse));
                self.pools[p].ready = ready;
                self.live_head(p, false)
                    .filter(|(due, _)| *due <= now)
                    .map(|(_, pk)| (Queue::Planned, pk))
            }
            Some(_) => {
                // Behind. With more due than the budget sends in `lag` (a burst), a check
                // late by more than `on_time` puts its payment in the backlog.
                if piled {
                    for &(due, _, pk) in &ready {
                        if let Some(e) = self.entries.get_mut(&pk) {
                            let late = now - due.max(e.due_from);
                            if !e.backlog && !e.kind.is_list() && late > on_time {
                                e.backlog = true;
                                self.pools[p].backlog_since.get_or_insert(now);
                            }
                        }
                    }
                }
                // Without a backlog, every due check by worth.
                if !ready.iter().any(|(_, _, pk)| self.entries[pk].backlog) {
                    let best = ready
                        .iter()
                        .map(|&(due, _, pk)| (self.worth(&self.entries[&pk], due, now), pk))
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                        .map(|(_, pk)| (Queue::Ready, pk));
                    self.pools[p].ready = ready;
                    return best;
                }
                // With one, the checks on plan go earliest due first, and the backlog by
                // worth: first while it had less than half its share of the recent
                // requests, else when none on plan is due, leaving a little room for
                // theirs (see `BACKLOG_LEAVES_DIVISOR`).
                // On plan, deadline checks go after the others: those of payments started
                // together come due together, and would hold up the checks that can still
                // see a flip early.
                let mut on_plan: Option<(bool, UnixMs, u64, PaymentKey)> = None;
                let mut backlog: Option<(f64, PaymentKey)> = None;
                for &(due, gen, pk) in &ready {
                    let e = &self.entries[&pk];
                    if e.backlog {
                        let w = self.worth(e, due, now);
                        if backlog.is_none_or(|(b, _)| w > b) {
                            backlog = Some((w, pk));
                        }
                    } else {
                        let key = (due >= e.deadline, due, gen, pk);
                        if on_plan.is_none_or(|o| key < o) {
                            on_plan = Some(key);
                        }
                    }
                }
                self.pools[p].ready = ready;
                // The share is kept over a short span, request by request, so the checks
                // on plan never wait long behind a backlog that had none for a while.
                let recent = &mut self.pools[p].recent_sent;
                while recent.front().is_some_and(|(t, _)| *t + on_time <= now) {
                    recent.pop_front();
                }
                let of_backlog = recent.iter().filter(|(_, b)| *b).count() as f64;
                // Half its share first, so the checks on plan, priced for the rest, have
                // room to spare and are not made late by chance (measured: at a share of
                // 0.5, firsts of 0.25 and 0.35 alike).
                let backlog_turn = of_backlog < self.backlog_share / 2.0 * recent.len() as f64;
                match (on_plan, backlog) {
                    (Some(_), Some((_, pk))) if backlog_turn => Some((Queue::Backlog, pk)),
                    (Some((_, _, _, pk)), _) => Some((Queue::Ready, pk)),
                    (None, Some((_, pk))) => {
                        let keep = self.backlog_leaves(p);
                        self.pools[p]
                            .budget
                            .has_room_beyond(now, keep)
                            .then_some((Queue::Backlog, pk))
                    }
                    (None, None) => None,
                }
            }
        }
    }

    /// How late a check may go and still be on plan: a twentieth of a window, or the time
    /// the budget takes to send [`ON_PLAN_REQUESTS`] requests if longer (checks due
    /// together wait their turn), at most the lag that makes a key behind.
    fn on_time(&self, p: usize) -> i64 {
        let limit = i64::from(self.pools[p].budget.effective_limit().max(1));
        (self.window / ON_PLAN_DIVISOR)
            .max(ON_PLAN_REQUESTS * self.window / limit)
            .min(self.window / BEHIND_DIVISOR)
    }

    /// The room the backlog leaves free for the checks on plan (see
    /// [`BACKLOG_LEAVES_DIVISOR`]).
    fn backlog_leaves(&self, p: usize) -> u32 {
        let pool = &self.pools[p];
        if pool.on_plan {
            pool.budget.effective_limit() / BACKLOG_LEAVES_DIVISOR
        } else {
            0
        }
    }

    /// Whether a `ready` item still stands for its payment's current plan.
    fn live_ready(&self, (_, gen, pk): (UnixMs, u64, PaymentKey)) -> bool {
        self.entries
            .get(&pk)
            .is_some_and(|e| e.gen == gen && !e.in_flight && !e.recheck)
    }

    /// How much a check of a due payment is worth now. A check ends the wait of a flip that
    /// happened since the last one, so while the key is short the due check most likely to
    /// see one goes first: `P(flipped in (last, now] | pending at last)` from the kind's
    /// learnt flip ages. The same rule for every payment (its age, kind and last check),
    /// whenever it arrived. A check late by more than [`PATIENCE_WINDOWS`] outranks them
    /// all, earliest due first, so none waits for ever (deadline checks included).
    fn worth(&self, e: &Entry, due: UnixMs, now: UnixMs) -> f64 {
        let late = now - due;
        let patience = PATIENCE_WINDOWS * self.window;
        if late > patience {
            return 2.0 + late as f64 / self.window as f64;
        }
        if e.kind.is_list() {
            return 1.0; // one listing answers every member: always worth it
        }
        let dist = &self.models[e.model].plans.dist;
        let t = e.last.map_or(0, |l| self.grid.cell(l - e.t0));
        let a = self.grid.cell(now - e.t0);
        let alive = dist.survival(t);
        if alive <= 0.0 {
            return 0.0;
        }
        ((alive - dist.survival(a)) / alive).clamp(0.0, 1.0)
    }

    /// Removes a payment's due item (the one `peek_due` gave) from its queue.
    fn take(&mut self, p: usize, pk: PaymentKey, from: Queue) {
        match from {
            Queue::Recheck => {
                self.pools[p].rechecks.pop();
            }
            Queue::Planned => {
                self.pools[p].heap.pop();
            }
            Queue::Ready | Queue::Backlog => {
                let ready = &mut self.pools[p].ready;
                if let Some(i) = ready.iter().position(|&(_, _, k)| k == pk) {
                    ready.swap_remove(i);
                }
            }
        }
    }

    fn defer(&mut self, p: usize, pk: PaymentKey, from: Queue, until: UnixMs) {
        self.take(p, pk, from);
        let gen = self.next_gen();
        if let Some(e) = self.entries.get_mut(&pk) {
            e.gen = gen;
            e.due = until;
            e.due_from = until;
            let heap = if e.recheck {
                &mut self.pools[p].rechecks
            } else {
                &mut self.pools[p].heap
            };
            heap.push(Reverse((until, gen, pk)));
        }
    }

    /// Keeps a reserve of pre-committed ledger rows of at least the in-flight bound.
    fn ensure_reserve(&mut self, p: usize, out: &mut Vec<Action>) {
        let want = self.max_in_flight.max(4);
        let pool = &mut self.pools[p];
        if pool.spec.has_key && !pool.refilling && pool.ledger_keys.len() < want {
            pool.refilling = true;
            out.push(Action::Refill {
                pool: p,
                ledger_id: pool.spec.ledger_id.clone(),
                count: 2 * want - pool.ledger_keys.len(),
            });
        }
    }

    /// Ledger rows committed for pool `p` (or `None`: the refill failed; ask again).
    pub fn refilled(&mut self, p: usize, keys: Option<Vec<LedgerKey>>) {
        if let Some(pool) = self.pools.get_mut(p) {
            pool.ledger_keys.extend(keys.into_iter().flatten());
            pool.refilling = false;
        }
    }

    /// Ledger rows no request used: not spent budget.
    pub fn drain_reserve(&mut self) -> Vec<LedgerKey> {
        self.pools
            .iter_mut()
            .flat_map(|p| p.ledger_keys.drain(..))
            .collect()
    }

    /// Without a key no request is made: the payment stays due and the error says why.
    fn no_key(
        &mut self,
        p: usize,
        pk: PaymentKey,
        from: Queue,
        now: UnixMs,
        out: &mut Vec<Action>,
    ) {
        let retry = now + (self.window / 10).max(1000);
        if let Some(e) = self.entries.get(&pk) {
            out.push(Action::Record(vec![CheckRecord {
                pk,
                checked_at: now,
                upstream_status: None,
                state: State::Pending,
                response: None,
                error: Some(
                    "no API key configured (ninjapay.api_key or ninjapay.api_key_file)".into(),
                ),
                next_check_at: Some(retry.max(e.due)),
                event: None,
                changed: false,
                saw_pending: false,
                watch: None,
            }]));
        }
        self.defer(p, pk, from, retry);
    }

    /// The pending payments of a list kind one request covers: every one whose first
    /// check is due by now or that was checked before, and the one that is due.
    fn list_members(&self, p: usize, kind: &Kind, due: PaymentKey, now: UnixMs) -> Vec<PaymentKey> {
        let mut members: Vec<(UnixMs, PaymentKey)> = self
            .entries
            .values()
            .filter(|e| {
                e.pool == p
                    && e.kind.name == kind.name
                    && !e.in_flight
                    && (e.pk == due || e.due <= now || e.last.is_some())
            })
            .map(|e| (if e.pk == due { UnixMs::MIN } else { e.due }, e.pk))
            .collect();
        members.sort_unstable();
        let max = kind.list.as_ref().map_or(1, |l| l.max_limit as usize);
        members.truncate(max);
        members.into_iter().map(|(_, pk)| pk).collect()
    }

    fn launch(&mut self, p: usize, kind: Arc<Kind>, pks: Vec<PaymentKey>, now: UnixMs) -> Request {
        let mut ids = Vec::with_capacity(pks.len());
        let mut started = Vec::with_capacity(pks.len());
        for pk in &pks {
            if let Some(e) = self.entries.get_mut(pk) {
                e.in_flight = true;
                self.pools[p].lateness_ms.push((now - e.due).max(0));
                ids.push(e.id.clone());
                started.push(e.t0);
            }
        }
        self.in_flight += 1;
        let list_limit = if kind.is_list() {
            let grown = self.list_limit.get(&kind.name).copied().unwrap_or(0);
            kind.list_limit(ids.len()).max(grown)
        } else {
            0
        };
        Request {
            pool: p,
            kind,
            pks,
            ids,
            started,
            list_limit,
            sent_at: now,
            ledger: self.pools[p].ledger_keys.pop_front(),
        }
    }

    /// Takes a finished request's answers: decides each payment, plans its next check,
    /// learns from final ones, and reacts to throttling and refused keys.
    pub fn complete(&mut self, done: &Completion) -> Completed {
        self.in_flight = self.in_flight.saturating_sub(1);
        let now = done.done_at;
        let p = done.pool;
        let used_before = self.pools[p].budget.used(now);
        self.pools[p].budget.release(now);
        let mut out = Completed {
            ledger: done.ledger.map(|l| (l, now)),
            ..Completed::default()
        };
        let mut throttled = false;
        let mut auth_failed: Option<KindName> = None;
        let mut any_answer = false;
        let mut list_kind: Option<Arc<Kind>> = None;
        let mut min_every = i64::MAX;
        let mut answered_kinds: HashSet<KindName> = HashSet::new();
        let mut truncated = false;
        let mut outage: HashMap<KindName, String> = HashMap::new();
        for (i, (pk, obs)) in done.pks.iter().zip(&done.observations).enumerate() {
            let Some(mut e) = self.entries.remove(pk) else {
                // Watched after its ladder, or cancelled meanwhile.
                let retry = (self.window / 10).max(1);
                let Some((rec, kind)) = self.watch.complete(*pk, obs, done.sent_at, now, retry)
                else {
                    continue;
                };
                match obs {
                    Observation::Error { class, .. } => match class {
                        ErrorClass::RateLimited | ErrorClass::Unavailable => throttled = true,
                        ErrorClass::Auth => auth_failed = Some(kind.name.clone()),
                        _ => {}
                    },
                    Observation::Status { .. } => {
                        any_answer = true;
                        answered_kinds.insert(kind.name.clone());
                    }
                }
                if rec.event.is_some() {
                    out.moved.push((*pk, rec.state, done.sent_at));
                }
                out.checked.push((i, kind, rec.state));
                out.records.push(rec);
                continue;
            };
            e.in_flight = false;
            if e.kind.is_list() {
                list_kind = Some(e.kind.clone());
            }
            let cut_short = matches!(
                obs,
                Observation::Error {
                    class: ErrorClass::Truncated,
                    ..
                }
            );
            truncated |= cut_short;
            match obs {
                Observation::Error { class, message, .. } => {
                    if class.is_outage() {
                        outage.insert(e.kind.name.clone(), message.clone());
                    }
                    match class {
                        ErrorClass::RateLimited | ErrorClass::Unavailable => throttled = true,
                        ErrorClass::Auth => auth_failed = Some(e.kind.name.clone()),
                        _ => {}
                    }
                }
                Observation::Status { raw, state, .. } => {
                    any_answer = true;
                    // Bounded: past that many distinct unknown statuses, no more are logged.
                    if state.is_none()
                        && self.unknown_logged.len() < MAX_UNKNOWN_LOGGED
                        && self
                            .unknown_logged
                            .insert((e.kind.name.clone(), raw.to_lowercase()))
                    {
                        tracing::warn!(kind = %e.kind.name, id = %e.id, status = %raw, "unknown upstream status; payment stays pending (logged once per status)");
                    }
                }
            }
            let give_up = e.deadline + self.ladder.timeout_ms();
            // The check happened when it was sent: the provider answers for some moment
            // after that. Planning from the send keeps a slow answer from skipping a slot,
            // and a request sent before the deadline never settles it.
            let d = decide(
                e.upstream_status.as_deref(),
                obs,
                done.sent_at,
                e.deadline,
                give_up,
            );
            out.checked.push((i, e.kind.clone(), d.state));
            tracing::debug!(
                kind = %e.kind.name, id = %e.id, state = d.state.as_str(),
                upstream_status = d.upstream_status.as_deref().unwrap_or(""),
                error = d.error.as_deref().unwrap_or(""),
                "checked"
            );
            let was_recheck = e.recheck && e.due <= done.sent_at;
            if was_recheck {
                e.recheck = false;
            }
            let previous_last = e.last;
            if d.answered {
                e.last = Some(done.sent_at);
                e.failures = 0;
                self.plan(&mut e);
            } else {
                // No real answer: the next attempt is the plan's next slot after this one,
                // or later when failures pile up (exponential back-off), so a provider that
                // is down is not hammered, and past the deadline not retried in a loop. The
                // last answered check stays what it was: this one settles nothing.
                // A listing cut short is no fault of the provider's: the next one, larger,
                // follows at once rather than backing off.
                let step = self.grid.step_ms(now - e.t0);
                let backoff = if cut_short {
                    0
                } else {
                    e.failures += 1;
                    backoff_ms(&mut self.rng, e.failures, step)
                };
                e.last = Some(done.sent_at);
                self.plan(&mut e);
                e.last = previous_last;
                e.due = e.due.max(now + backoff);
            }
            if e.recheck {
                // A recheck asked for while this check was in flight still stands.
                let earliest = done.sent_at + self.grid.step_ms(done.sent_at - e.t0);
                e.due = e.due.min(earliest.max(now));
            }
            e.due_from = e.due.max(now);
            let previous_raw = e.upstream_status.clone();
            if d.upstream_status.is_some() {
                e.upstream_status = d.upstream_status.clone();
            }
            if d.answered {
                answered_kinds.insert(e.kind.name.clone());
            }
            min_every = min_every.min(self.ladder.every_at(e.jitter, now - e.t0));
            // A payment that ended in a state that may still move stays watched.
            let next_check_at = if !d.state.is_final() {
                Some(e.due)
            } else if e.kind.watches(d.state) {
                let start = WatchStart {
                    pk: e.pk,
                    kind: e.kind.clone(),
                    id: e.id.clone(),
                    pool: e.pool,
                    started: e.t0,
                    state: d.state,
                    ended: d.state,
                    upstream_status: d
                        .upstream_status
                        .clone()
                        .or_else(|| e.upstream_status.clone()),
                    seen: done.sent_at,
                };
                self.watch.start(start, None, now)
            } else {
                None
            };
            out.records.push(CheckRecord {
                pk: *pk,
                checked_at: now,
                upstream_status: d.upstream_status.clone(),
                state: d.state,
                response: d.response.clone(),
                error: d.error.clone(),
                next_check_at,
                event: d.event.map(|t| EventSpec {
                    event_type: t,
                    previous_state: State::Pending,
                    previous_upstream_status: previous_raw.clone(),
                    late: false,
                }),
                changed: d.changed,
                saw_pending: d.answered && !d.state.is_final(),
                watch: None,
            });
            if d.state.is_final() {
                // A timeout's own check saw the payment still pending at the deadline.
                let evidence = if d.state == State::TimedOut {
                    Evidence::of(&self.grid, e.t0, Some(done.sent_at), None)
                } else {
                    Evidence::of(&self.grid, e.t0, previous_last, Some(done.sent_at))
                };
                let model = &mut self.models[e.model];
                model.learner.observe(e.t0, evidence);
                model.fresh += 1;
                out.finished.push((*pk, d.state, done.sent_at));
                if d.state == State::TimedOut {
                    tracing::info!(kind = %e.kind.name, id = %e.id, "payment timed out");
                } else {
                    tracing::info!(
                        kind = %e.kind.name, id = %e.id, state = d.state.as_str(),
                        upstream_status = d.upstream_status.as_deref().unwrap_or(""),
                        "payment is final"
                    );
                }
            } else {
                e.gen = self.next_gen();
                self.queue(&e);
                self.entries.insert(e.pk, e);
            }
        }
        if let Some(kind) = list_kind {
            let mut cadence = if min_every == i64::MAX { 0 } else { min_every };
            let max = kind.list.as_ref().map_or(1, |l| l.max_limit);
            let asked = self.list_limit.get(&kind.name).copied().unwrap_or(0);
            let asked = asked.max(kind.list_limit(done.pks.len()));
            if truncated && asked < max {
                // Page further back: the next listing asks for twice as many, now.
                let grown = asked.saturating_mul(2).min(max);
                tracing::info!(kind = %kind.name, limit = grown, "a listing did not reach back to every payment's start; asking for more");
                self.list_limit.insert(kind.name.clone(), grown);
                cadence = 0;
            }
            self.pools[p]
                .list_not_before
                .insert(kind.name.clone(), now + cadence);
        }
        let window = self.window;
        let pool = &mut self.pools[p];
        for name in &answered_kinds {
            pool.outage.remove(name);
        }
        pool.outage.extend(outage);
        if throttled {
            pool.throttled += 1;
            let pause = done
                .retry_after_ms
                .unwrap_or_else(|| backoff_ms(&mut self.rng, pool.throttled, 1000));
            pool.budget.pause(now + pause);
            let rate_limited = done.observations.iter().any(|o| {
                matches!(
                    o,
                    Observation::Error {
                        class: ErrorClass::RateLimited,
                        ..
                    }
                )
            });
            if rate_limited {
                let limit = pool.budget.shrink(now);
                tracing::error!(
                    pool = %pool.spec.name, used_before, new_limit = limit, pause_ms = pause,
                    "Ninjapay answered 429 although the budget had room: another client may share the key, or the limit is lower than configured; lowering the limit in force"
                );
            } else {
                tracing::warn!(pool = %pool.spec.name, pause_ms = pause, "Ninjapay unavailable; pausing this key");
            }
        } else if any_answer {
            pool.throttled = 0;
        }
        match auth_failed {
            Some(kind) => {
                let entry = pool.auth_failing.entry(kind.clone()).or_insert((now, 0));
                let report_every = 60_000.min(window);
                if now - entry.1 >= report_every {
                    entry.1 = now;
                    tracing::error!(kind = %kind, pool = %pool.spec.name, "Ninjapay refuses the API key (401/403); checks of this kind are paused to probes until it works again");
                }
            }
            None => {
                for name in answered_kinds {
                    if pool.auth_failing.remove(&name).is_some() {
                        tracing::info!(kind = %name, "Ninjapay accepts the API key again");
                    }
                }
            }
        }
        out
    }

    /// Whether the last completion was a 429 the budget did not expect (for telemetry).
    pub fn rate_limited(done: &Completion) -> bool {
        done.observations.iter().any(|o| {
            matches!(
                o,
                Observation::Error {
                    class: ErrorClass::RateLimited,
                    ..
                }
            )
        })
    }

    /// Earliest time anything can happen without an outside event.
    pub fn next_wake(&mut self, now: UnixMs) -> Option<UnixMs> {
        if self.in_flight >= self.max_in_flight {
            return None; // an answer wakes us
        }
        let mut wake: Option<UnixMs> = None;
        for p in 0..self.pools.len() {
            let mut ready = std::mem::take(&mut self.pools[p].ready);
            ready.retain(|&item| self.live_ready(item));
            if !ready.is_empty() {
                let keep = if ready.iter().all(|(_, _, pk)| self.entries[pk].backlog) {
                    self.backlog_leaves(p)
                } else {
                    0
                };
                let at = self.pools[p]
                    .budget
                    .next_room_beyond(now, keep)
                    .unwrap_or(UnixMs::MAX);
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            self.pools[p].ready = ready;
            for recheck in [true, false] {
                if let Some((due, _)) = self.live_head(p, recheck) {
                    let at = if due <= now {
                        self.pools[p]
                            .budget
                            .next_room_at(now)
                            .unwrap_or(UnixMs::MAX)
                    } else {
                        due
                    };
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
            }
        }
        // Checks of watched payments as they come due; one due already waits for spare
        // room (or the rechecks' share), which the tick looks at.
        for p in 0..self.pools.len() {
            if let Some(due) = self.watch.next_due(p).filter(|d| *d > now) {
                wake = Some(wake.map_or(due, |w| w.min(due)));
            }
        }
        wake.filter(|w| *w != UnixMs::MAX)
    }

    /// Periodic work: re-learns the flip distributions now and then, and sets each key's
    /// price level from the demand it projects over the next window.
    pub fn tick(&mut self, now: UnixMs) {
        // Each kind's arrival rate, once a tick: the refit and every key's level read it.
        let arrivals: Vec<(f64, usize)> = (0..self.models.len())
            .map(|m| self.arrival_rate(m, now))
            .collect();
        let refit_every = (self.window / 20).max(1);
        if now - self.last_fit >= refit_every {
            self.last_fit = now;
            self.refit(now, &arrivals);
        }
        for p in 0..self.pools.len() {
            self.pools[p].budget.recover(now);
            self.set_level(p, now, &arrivals);
        }
        self.unsent.extend(self.watch.tick(now));
        // Late moves come over hours: the models move slowly, and a refit a window is plenty.
        if now - self.last_watch_fit >= self.window {
            self.last_watch_fit = now;
            self.watch.refit(now);
        }
    }

    /// Resumes watching a payment under reconciliation at start-up (or after a merchant's
    /// recheck of one whose watch had ended): `next_check_at` is its stored next check.
    /// Times are on the core's clock.
    pub fn watch(&mut self, row: WatchedRow, now: UnixMs) -> Option<UnixMs> {
        if self.entries.contains_key(&row.pk) {
            return None;
        }
        let kind = self.kinds.get(&row.kind).cloned()?;
        let Ok(id) = PaymentId::parse(&row.id) else {
            tracing::warn!(pk = %row.pk, "payment with an invalid id in the database is not watched");
            return None;
        };
        let pool = self.kind_pool.get(&row.kind).copied().unwrap_or(0);
        let start = WatchStart {
            pk: row.pk,
            kind,
            id,
            pool,
            started: row.started_at,
            state: row.state,
            ended: row.ended_state,
            upstream_status: row.upstream_status,
            seen: row.seen_at.unwrap_or(row.started_at),
        };
        self.watch.start(start, Some(row.next_check_at), now)
    }

    /// Learns from a payment watched before a restart (see [`Watch::learn`]).
    pub fn learn_late(
        &mut self,
        kind: &KindName,
        ended: State,
        started: UnixMs,
        seen: Option<UnixMs>,
        moved: Option<UnixMs>,
    ) {
        self.watch.learn(kind, ended, started, seen, moved);
    }

    /// How far back a restart reads the evidence of late moves.
    pub fn late_memory_ms(&self) -> i64 {
        self.watch.memory_ms()
    }

    /// Payments under reconciliation now.
    pub fn watched(&self) -> usize {
        self.watch.len()
    }

    /// `arrivals`: per kind, [`Core::arrival_rate`]'s rate and last window's count.
    fn refit(&mut self, now: UnixMs, arrivals: &[(f64, usize)]) {
        let window_cells = (self.window / self.grid.unit_ms()).max(1) as usize;
        let life = self.life_ms();
        for (m, &(rate, _)) in arrivals.iter().enumerate() {
            // Recent memory: enough payments to learn from (about 400), over at least two
            // lifetimes and at most three, so a change of traffic is followed within half
            // an hour. Long memory: about 6,000 payments, up to twelve lifetimes, used
            // while the recent evidence agrees with it (see `Learner`).
            let per_ms = rate / self.grid.unit_ms() as f64;
            // No arrivals (a lull) is the limit of a falling rate: the longest span, never
            // the shortest, which would make the learner drop what it knows for good.
            let span = |payments: f64, most: i64| {
                if per_ms > 0.0 {
                    ((payments / per_ms) as i64).clamp(2 * life, most * life)
                } else {
                    most * life
                }
            };
            let recent = span(400.0, 3);
            let horizon = span(LONG_MEMORY_PAYMENTS, LONG_MEMORY_LIVES).max(recent);
            self.models[m].learner.set_recent(recent);
            self.models[m].learner.set_horizon(horizon);
            let pending: Vec<Evidence> = self
                .entries
                .values()
                .filter(|e| e.model == m)
                .filter_map(|e| {
                    e.last.map(|l| Evidence {
                        lo: self.grid.cell(l - e.t0),
                        hi: None,
                    })
                })
                .collect();
            let model = &mut self.models[m];
            if model.fixed {
                continue;
            }
            let before = model.plans.dist.clone();
            let dist = model.learner.fit(now, pending.into_iter()).clone();
            let moved = (0..=self.grid.cells())
                .map(|a| (dist.survival(a) - before.survival(a)).abs())
                .fold(0.0, f64::max);
            // Solving the tables is the costly part: only when the estimate moved.
            if moved > 0.005 || model.fresh > 200 {
                model.plans = Plans::new(&self.grid, dist, window_cells);
                model.fresh = 0;
            }
        }
    }

    /// Arrivals per grid cell of a kind (see [`crate::policy::arrival_rate`]), and how many
    /// arrived in the last window.
    fn arrival_rate(&mut self, m: usize, now: UnixMs) -> (f64, usize) {
        let window = self.window;
        let arrivals = &mut self.models[m].arrivals;
        forget_older(arrivals, window * RATE_WINDOWS as i64, now);
        let last_window = arrivals
            .iter()
            .rev()
            .take_while(|t| **t > now - window)
            .count();
        let slice = (window / 10).max(1);
        // Only the slices the core has lived through: before its start nothing was
        // counted, which is not the same as nothing arriving.
        let lived = ((now - self.started) / slice).clamp(0, 10 * RATE_WINDOWS as i64) as usize;
        if lived == 0 {
            let elapsed = (now - self.started).max(1) as f64;
            let rate = arrivals.len() as f64 / elapsed.max(slice as f64 / 10.0)
                * self.grid.unit_ms() as f64;
            return (rate, last_window);
        }
        let mut counts = vec![0u32; lived];
        for t in arrivals.iter() {
            let i = ((now - t) / slice).max(0) as usize;
            if let Some(c) = counts.get_mut(i) {
                *c += 1;
            }
        }
        // One key serves at most its budget's payments a window, one request each.
        let pool = self.models[m].pool;
        let servable = f64::from(self.pools[pool].budget.limit()) / 10.0;
        let rate = arrival_rate(&counts, 10, servable) / slice as f64 * self.grid.unit_ms() as f64;
        (rate, last_window)
    }

    /// `arrivals` as for [`Core::refit`].
    fn set_level(&mut self, p: usize, now: UnixMs, arrivals: &[(f64, usize)]) {
        let horizon = (self.window / self.grid.unit_ms()).max(1) as usize;
        let (rates, last_window): (Vec<f64>, Vec<usize>) = arrivals.iter().copied().unzip();
        let pool = &mut self.pools[p];
        let window = self.window;
        forget_older(&mut pool.recheck_sent, window, now);
        let limit = pool.budget.effective_limit() as f64;
        let target = limit * PLAN_SHARE - pool.recheck_sent.len() as f64;
        let members: Vec<&Entry> = self
            .entries
            .values()
            .filter(|e| e.pool == p && !e.in_flight)
            .collect();
        let pile = limit as usize / BEHIND_DIVISOR as usize;
        let due = members
            .iter()
            .filter(|e| !e.recheck && e.due <= now)
            .count();
        // The backlog needs a check per payment at least; it gets up to its share of the
        // budget, and the schedules of the payments on plan are priced for the rest.
        let backlog = members.iter().filter(|e| e.backlog).count() as f64;
        let target_plan = target - backlog.min(self.backlog_share * target);
        let grid = &self.grid;
        let models = &self.models;
        // Demand at a level: of the payments on plan, and of those still to come.
        let demand = |level: usize| -> f64 {
            let mut n = 0.0;
            let mut lists: HashMap<&str, f64> = HashMap::new();
            for e in members.iter().filter(|e| !e.backlog) {
                let plans = &models[e.model].plans;
                let list = e.kind.is_list();
                let table = plans.at(if list { 0 } else { level });
                let last = e.last.map_or(0, |l| grid.cell(l - e.t0).max(1));
                let age = grid.cell(now - e.t0);
                let due = if e.recheck { age } else { table.next(last) };
                let c = table.demand(&plans.dist, last, due, age, horizon);
                if list {
                    let slot = lists.entry(e.kind.name.as_str()).or_insert(0.0);
                    *slot = slot.max(c);
                } else {
                    n += c;
                }
            }
            // Payments still to come, at the recent rate, each on the same schedule.
            for (m, model) in models.iter().enumerate() {
                if model.pool == p && !model.list && rates[m] > 0.0 {
                    n += rates[m] * model.plans.at(level).per_window;
                }
            }
            n + lists.values().sum::<f64>()
        };
        let top = self.models.first().map_or(0, |m| m.plans.top());
        let (mut level, mut projected) = fit(&demand, top, target_plan);
        // Overload (a burst): the payments held need more than the budget even at the
        // dearest schedules, or a backlog takes its share, or a burst spread over minutes is
        // coming in (far more payments arrived in the last window than the stream's rate
        // brings, and at the stream's price they would need more than the budget sends in
        // half a window beyond it). Raising the price for them all would send every
        // payment, the stream's too, deadline-only, and leave the budget unused until the
        // deadlines pile up (a burst spread over five minutes, priced in, spent 20% less
        // while it came, and a window later that room was missing: the stream's checks
        // went late and joined the backlog, 400–600 s for 15 minutes after it). So the
        // price is never dearer than the one at which a steady stream at the recent
        // arrival rate (which ignores a burst) fits: the held checks that do not fit go
        // late and join the backlog.
        let stream = |level: usize| -> f64 {
            models
                .iter()
                .enumerate()
                .filter(|(m, model)| model.pool == p && !model.list && rates[*m] > 0.0)
                .map(|(m, model)| rates[m] * horizon as f64 * model.plans.at(level).checks)
                .sum()
        };
        let (arrived, expected) = models
            .iter()
            .enumerate()
            .filter(|(_, model)| model.pool == p && !model.list)
            .map(|(m, _)| (last_window[m] as f64, rates[m] * horizon as f64))
            .fold((0.0, 0.0), |(a, e), (x, y)| (a + x, e + y));
        // Far more arrivals than a Poisson stream at the rate brings, and too many to price
        // in.
        let bursting = arrived > burst_cap(expected);
        let overload = backlog > 0.0 || projected > target_plan;
        if overload || bursting {
            let (l, d) = fit(&stream, top, target_plan);
            let priced_in = || demand(l.floor() as usize) - target_plan > pile as f64;
            if l < level && (overload || priced_in()) {
                (level, projected) = (l, d);
            }
        }
        if level > 0.0 {
            // Spending the budget pays only while the extra checks see flips sooner. Where
            // the dearer schedules lose (next to) nothing, e.g. when the flips come before
            // the first check allowed and the rest never flip, the cheaper is taken: the
            // checks saved would only queue at the limiter ahead of ones that see flips.
            let flip_delay = |l: f64| -> f64 {
                models
                    .iter()
                    .enumerate()
                    .filter(|(m, model)| model.pool == p && !model.list && rates[*m] > 0.0)
                    .map(|(m, model)| rates[m] * model.plans.dist.flips() * model.plans.delay(l))
                    .sum()
            };
            if let Some(l) = crate::policy::dearest_alike(level, top, flip_delay) {
                level = l as f64;
                projected = demand(l);
            }
        }
        let old = self.pools[p].level;
        let pool = &mut self.pools[p];
        // Only the budget makes a backlog: a pile that the in-flight bound holds up
        // clears at the pace of the answers.
        pool.piled = due > pile && f64::from(pool.budget.used(now)) >= target;
        pool.on_plan = members.len() - backlog as usize > 0;
        pool.projected = projected;
        // Arrival rates are per grid cell; a listed kind answers all in one request.
        pool.arrivals = models
            .iter()
            .enumerate()
            .filter(|(_, model)| model.pool == p && !model.list)
            .map(|(m, _)| rates[m] * horizon as f64)
            .sum();
        pool.target = target;
        if (level - old).abs() > 1e-3 {
            if old == 0.0 {
                tracing::info!(pool = %pool.spec.name, level, "request budget scarce: checks allocated by age");
            } else if level == 0.0 {
                tracing::info!(pool = %pool.spec.name, "request budget sufficient: back on the documented ladder");
            }
            pool.level = level;
            self.replan_pool(p, now);
        }
    }

    fn replan_pool(&mut self, p: usize, now: UnixMs) {
        let pks: Vec<PaymentKey> = self
            .entries
            .values()
            .filter(|e| e.pool == p && !e.in_flight && !e.recheck)
            .map(|e| e.pk)
            .collect();
        let mut heap = BinaryHeap::with_capacity(pks.len());
        for pk in pks {
            let Some(mut e) = self.entries.remove(&pk) else {
                continue;
            };
            let failures_due = e.due;
            // A payment in the backlog keeps its place: its due check is late already,
            // or it is left its deadline check, whatever the level.
            if !e.backlog {
                self.plan(&mut e);
                if e.failures > 0 {
                    e.due = e.due.max(failures_due);
                }
                e.due_from = if e.due > now {
                    e.due
                } else {
                    e.due.max(e.due_from.min(now))
                };
            }
            heap.push(Reverse((e.due, e.gen, e.pk)));
            self.entries.insert(pk, e);
        }
        self.pools[p].heap = heap;
        // Every plan is queued again, by its new due time.
        self.pools[p].ready.clear();
    }

    /// Every key's state, for health and metrics. Takes the lateness gathered since the
    /// last call.
    pub fn status(&mut self, now: UnixMs) -> Vec<PoolStatus> {
        let unit = self.grid.unit_ms();
        let mut out = Vec::with_capacity(self.pools.len());
        for p in 0..self.pools.len() {
            let mut held: HashMap<&str, usize> = HashMap::new();
            let (mut backlog, mut earliest_due) = (0, now);
            for e in self.entries.values().filter(|e| e.pool == p) {
                *held.entry(e.kind.name.as_str()).or_default() += 1;
                backlog += usize::from(e.backlog);
                if !e.in_flight {
                    earliest_due = earliest_due.min(e.due);
                }
            }
            let pending = held.values().sum();
            let mut kinds = Vec::new();
            for (name, &m) in &self.model_of {
                let model = &self.models[m];
                if model.pool != p {
                    continue;
                }
                let dist = &model.plans.dist;
                let delay = model.plans.delay(self.pools[p].level);
                kinds.push(KindPolicy {
                    kind: name.clone(),
                    evidence: model.learner.len(),
                    flip_share: dist.flips(),
                    flip_age_ms: [0.5, 0.9, 0.99].map(|q| dist.quantile(q) as i64 * unit),
                    expected_delay_ms: (delay * unit as f64) as i64,
                    pending: held.get(name.as_str()).copied().unwrap_or(0),
                    late: {
                        let s = self.watch.stats().get(name).copied().unwrap_or_default();
                        let (move_share, move_age_p50_ms) =
                            self.watch.learnt(name).unwrap_or((0.0, 0));
                        LateStatus {
                            watched: s.watched,
                            moves: s.late_moves,
                            checks: s.checks,
                            skipped: s.skipped,
                            move_share,
                            move_age_p50_ms,
                        }
                    },
                });
            }
            kinds.sort_by(|a, b| a.kind.cmp(&b.kind));
            let watched = now - self.started >= self.window;
            let window = self.window;
            let pool = &mut self.pools[p];
            forget_older(&mut pool.backlog_sent, window, now);
            if backlog == 0 {
                pool.backlog_since = None;
                pool.backlog_sent.clear();
            }
            let paced = pool
                .backlog_since
                .map_or(0, |since| (now - since).min(window));
            let drains_in = drain_eta(backlog, pool.backlog_sent.len(), paced, window);
            out.push(PoolStatus {
                name: pool.spec.name.clone(),
                budget_limit: pool.budget.limit(),
                budget_effective: pool.budget.effective_limit(),
                budget_used: pool.budget.used(now),
                window_ms: self.window,
                price_level: pool.level,
                projected: pool.projected,
                target: pool.target,
                pending,
                arrivals_per_window: watched.then_some(pool.arrivals),
                backlog,
                behind_ms: now - earliest_due,
                backlog_drains_in_ms: drains_in,
                paused_until: pool.budget.paused_until(now),
                auth_failing: pool.auth_failing.keys().cloned().collect(),
                outage: pool
                    .outage
                    .iter()
                    .map(|(k, m)| (k.clone(), m.clone()))
                    .collect(),
                lateness_ms: std::mem::take(&mut pool.lateness_ms),
                kinds,
            });
        }
        out
    }
}

/// The lowest price level at which `demand` (falling as the level rises) fits `target`,
/// mixed with the one below so the budget is spent, not left over; `(level, projected
/// demand)`. The top level when none fits.
fn fit(demand: &dyn Fn(usize) -> f64, top: usize, target: f64) -> (f64, f64) {
    let d0 = demand(0);
    if d0 <= target || top == 0 {
        return (0.0, d0);
    }
    let d_top = demand(top);
    if d_top > target {
        return (top as f64, d_top);
    }
    let (mut lo, mut hi) = (0usize, top);
    let (mut d_lo, mut d_hi) = (d0, d_top);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let d = demand(mid);
        if d > target {
            lo = mid;
            d_lo = d;
        } else {
            hi = mid;
            d_hi = d;
        }
    }
    let frac = if d_lo > d_hi {
        ((d_lo - target) / (d_lo - d_hi)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    (lo as f64 + frac, target)
}

/// Drops the times of `q` (oldest first) that are `span` or more before `now`.
fn forget_older(q: &mut VecDeque<UnixMs>, span: i64, now: UnixMs) {
    while q.front().is_some_and(|t| *t + span <= now) {
        q.pop_front();
    }
}

/// Exponential back-off with jitter: `base`, doubling per failure, up to 5 minutes.
fn backoff_ms(rng: &mut fastrand::Rng, failures: u32, base: i64) -> i64 {
    let exp = base
        .max(1)
        .saturating_mul(1 << failures.min(16).saturating_sub(1));
    let capped = exp.min(300_000);
    capped / 2 + rng.i64(0..=capped / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Config};
    use serde_json::json;

    fn core(budget: u32) -> (Core, Arc<Kind>) {
        core_sharing(budget, BacklogShare::DEFAULT)
    }

    fn core_sharing(budget: u32, share: BacklogShare) -> (Core, Arc<Kind>) {
        let mut raw = config::defaults();
        raw.ninjapay.api_key = Some("k".into());
        raw.ninjapay.budget_requests = Some(budget);
        raw.ninjapay.backlog_share = Some(share.get());
        // The live policy alone; reconciliation's own tests turn it on.
        raw.reconcile.after = Some(Vec::new());
        let cfg = Config::from_raw(raw).unwrap();
        let kind = cfg.kinds["p2p"].clone();
        let (cc, _) = crate::scheduler::core_config(&cfg, 1);
        (Core::new(cc, 0), kind)
    }

    fn row(pk: i64, started_at: i64, jitter_ms: i64) -> PendingRow {
        PendingRow {
            pk: PaymentKey(pk),
            kind: KindName::parse("p2p").unwrap(),
            id: format!("T{pk}"),
            upstream_status: None,
            started_at,
            jitter_ms,
            next_check_at: None,
            last_checked_at: None,
        }
    }

    /// Runs the core alone on simulated time until `end`, answering "pending" after 100 ms;
    /// returns each request's `(sent_at, pks)`.
    fn drive(core: &mut Core, kind: &Kind, from: i64, end: i64) -> Vec<(i64, Vec<i64>)> {
        Driver::default().run(core, kind, from, end, &mut VecDeque::new())
    }

    /// What a run of the core keeps between calls: requests in flight, ledger rows.
    #[derive(Default)]
    struct Driver {
        flying: Vec<Completion>,
        key: i64,
    }

    impl Driver {
        /// Runs until `end`, tracking each of `arrivals` (`(at, row)`, in order) at its
        /// time; answers "pending" after 100 ms. Returns each request's `(sent_at, pks)`.
        fn run(
            &mut self,
            core: &mut Core,
            kind: &Kind,
            from: i64,
            end: i64,
            arrivals: &mut VecDeque<(i64, PendingRow)>,
        ) -> Vec<(i64, Vec<i64>)> {
            let mut now = from;
            let mut sent = Vec::new();
            let mut actions = Vec::new();
            while now < end {
                while arrivals.front().is_some_and(|(at, _)| *at <= now) {
                    let (_, row) = arrivals.pop_front().unwrap();
                    core.track(row, now, false);
                }
                core.poll(now, &mut actions);
                for a in actions.drain(..) {
                    match a {
                        Action::Send(r) => {
                            sent.push((r.sent_at, r.pks.iter().map(|k| k.0).collect()));
                            let observations = r
                                .pks
                                .iter()
                                .map(|_| Observation::Status {
                                    raw: "pending".into(),
                                    state: kind.map_status("pending"),
                                    response: json!({}),
                                })
                                .collect();
                            self.flying.push(Completion {
                                pool: r.pool,
                                pks: r.pks,
                                observations,
                                retry_after_ms: None,
                                sent_at: r.sent_at,
                                done_at: now + 100,
                                ledger: r.ledger,
                            });
                        }
                        Action::Refill { pool, count, .. } => {
                            let key = self.key;
                            core.refilled(
                                pool,
                                Some((key..key + count as i64).map(LedgerKey).collect()),
                            );
                            self.key += count as i64;
                        }
                        Action::Record(_) => {}
                    }
                }
                let next_done = self.flying.iter().map(|c| c.done_at).min();
                let wake = core.next_wake(now).map(|w| w.max(now + 1));
                let next_arrival = arrivals.front().map(|(at, _)| *at);
                let next = [next_done, wake, next_arrival, Some(now + 1000)]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(end);
                now = next;
                let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flying)
                    .into_iter()
                    .partition(|c| c.done_at <= now);
                self.flying = rest;
                for c in due {
                    core.complete(&c);
                }
                core.tick(now);
            }
            sent
        }
    }

    #[test]
    fn below_the_budget_the_documented_ladder_runs_exactly() {
        let (mut core, kind) = core(1000);
        let ladder = Ladder::documented();
        core.track(row(1, 0, 21_000), 0, false);
        let sent = drive(&mut core, &kind, 0, 700_000);
        let times: Vec<i64> = sent.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, ladder.plan(21_000));
    }

    #[test]
    fn once_scarce_the_ladders_table_keeps_its_steps_but_not_the_jitter() {
        let (mut core, _) = core(1000);
        core.track(row(1, 0, 24_000), 0, false);
        let pk = PaymentKey(1);
        // Not scarce: the documented ladder, first check where its jitter put it.
        assert_eq!(core.entries[&pk].due, 24_000);
        // Scarce, with this payment mixed onto the ladder's table (level 0.5, draw 0.9):
        // the first check at the earliest the ladder allows.
        core.pools[0].level = 0.5;
        let mut e = core.entries.remove(&pk).unwrap();
        e.phi = 0.9;
        core.plan(&mut e);
        assert_eq!(e.due, 20_000);
        // And its steps after it: 3 s.
        e.last = Some(20_000);
        core.plan(&mut e);
        assert_eq!(e.due, 23_000);
    }

    #[test]
    fn requests_that_would_see_no_flip_are_not_spent_to_fill_the_budget() {
        // Every flip comes before the first check allowed (90% at 5–15 s), the rest never
        // flip: after the first check nothing is left to see but the deadline. At 0.5/s the
        // ladder would want 6,000 requests a window, so the budget is scarce, but filling it
        // would buy nothing.
        let (mut core, kind) = core(1000);
        let early = crate::sim::Mix::Parametric(vec![crate::sim::Component::Uniform {
            share: 0.9,
            lo_s: 5.0,
            hi_s: 15.0,
            state: crate::payment::State::Succeeded,
        }]);
        let dist = early.dist(&core.grid, 1.0);
        core.assume("p2p", dist);
        let mut arrivals: VecDeque<(i64, PendingRow)> = (0..1200)
            .map(|i| (i * 2_000, row(i, i * 2_000, 20_000 + i % 6 * 1000)))
            .collect();
        let sent = Driver::default().run(&mut core, &kind, 0, 40 * MIN, &mut arrivals);
        assert!(
            core.pools[0].level > 1.0,
            "scarce, above the ladder's table"
        );
        // The first check of each payment at 20 s, then (answered pending) its deadline.
        let mut first: HashMap<i64, i64> = HashMap::new();
        for (t, pks) in &sent {
            for pk in pks {
                first.entry(*pk).or_insert(*t - pk * 2_000);
            }
        }
        assert!(
            first.values().all(|&age| (20_000..21_000).contains(&age)),
            "{first:?}"
        );
        // The last 10 minutes: about 300 first checks and 300 deadline checks, not 980.
        let last_window = sent.iter().filter(|(t, _)| *t >= 30 * MIN).count();
        assert!(last_window < 700, "{last_window} requests in a window");
    }

    #[test]
    fn a_scarce_budget_is_never_exceeded_and_every_deadline_is_checked() {
        let (mut core, kind) = core(100);
        // 200 payments at once: the ladder would want 7,200 requests.
        for pk in 0..200 {
            core.track(row(pk, 0, 20_000), 0, false);
        }
        // 200 deadline checks on 100 a window take two windows; worthier checks may go
        // first, but none is later than its deadline plus the patience (two windows).
        let sent = drive(&mut core, &kind, 0, 600_000 + 2 * 600_000);
        let mut times: Vec<i64> = sent.iter().map(|(t, _)| *t).collect();
        times.sort_unstable();
        for (i, t) in times.iter().enumerate() {
            let in_window = times[..=i].iter().filter(|&&s| s > t - 600_000).count();
            assert!(
                in_window <= 100,
                "{in_window} requests in the window ending {t}"
            );
        }
        // Every payment got its check at or after its deadline.
        for pk in 0..200 {
            let last = sent
                .iter()
                .filter(|(_, pks)| pks.contains(&pk))
                .map(|(t, _)| *t)
                .max();
            assert!(last.is_some_and(|t| t >= 600_000), "payment {pk}: {last:?}");
        }
        assert_eq!(core.pending(), 0);
    }

    #[test]
    fn when_the_key_is_short_the_check_likeliest_to_see_a_flip_goes_first() {
        let (mut core, _) = core(1);
        let now = 2_000_000;
        // Due first, its deadline check 400 s late (the key is behind): a payment last seen
        // pending at 400 s of age, where flips are rare.
        let mut old = row(1, now - 1_000_000, 20_000);
        old.last_checked_at = Some(now - 600_000);
        core.track(old, now, true);
        // Due later: a young one never checked, where most flips happen.
        core.track(row(2, now - 30_000, 20_000), now, false);
        let mut out = Vec::new();
        core.poll(now, &mut out);
        core.refilled(0, Some((0..8).map(LedgerKey).collect()));
        out.clear();
        core.poll(now, &mut out);
        let sent: Vec<Vec<i64>> = out
            .iter()
            .filter_map(|a| match a {
                Action::Send(r) => Some(r.pks.iter().map(|k| k.0).collect()),
                _ => None,
            })
            .collect();
        assert_eq!(
            sent,
            vec![vec![2]],
            "one request in budget, to the young payment"
        );
    }

    /// A stream of one payment every 20 s for an hour on a key of 100 requests a window,
    /// and at 20 min a burst of 300 (three windows of budget); the flip ages are the
    /// ladder's prior, fixed. Returns the core, the requests, and the core's state at 35 min
    /// (`(pk, in the backlog)` of the payments held then).
    /// A stream of `stream` payments, one every `every` ms, and [`BURST`] more at once at
    /// [`BURST_AT`] (keys from [`BURST_PK`]); first checks jittered over 20–29 s.
    fn burst_arrivals(every: i64, stream: i64) -> VecDeque<(i64, PendingRow)> {
        let mut arrivals = VecDeque::new();
        for i in 0..stream {
            let at = i * every;
            if at == BURST_AT {
                for b in 0..BURST {
                    arrivals.push_back((at, row(BURST_PK + b, at, 20_000 + b % 10 * 1000)));
                }
            }
            arrivals.push_back((at, row(i, at, 20_000 + i % 10 * 1000)));
        }
        arrivals
    }

    fn burst_run() -> (Core, Sent, Vec<(i64, bool)>) {
        // The stream takes 30% of this small budget for its deadline checks alone: at the
        // default share its deadline checks would queue behind its other checks and go
        // late (the bench measures the default on the real budget).
        let (mut core, kind) = core_sharing(100, BURST_SHARE);
        let prior = core.grid.ladder_prior();
        core.assume("p2p", prior);
        let mut arrivals = burst_arrivals(EVERY, STREAM);
        let mut driver = Driver::default();
        let mut sent = driver.run(&mut core, &kind, 0, 35 * MIN, &mut arrivals);
        let held = core.entries.values().map(|e| (e.pk.0, e.backlog)).collect();
        sent.extend(driver.run(&mut core, &kind, 35 * MIN, 120 * MIN, &mut arrivals));
        (core, sent, held)
    }

    /// Requests as `(sent_at, pks)`.
    type Sent = Vec<(i64, Vec<i64>)>;

    const MIN: i64 = 60_000;
    const BURST_SHARE: BacklogShare = match BacklogShare::new(0.5) {
        Some(s) => s,
        None => BacklogShare::DEFAULT,
    };
    const BURST_AT: i64 = 20 * MIN;
    const BURST_PK: i64 = 1_000_000;
    const BURST: i64 = 300;
    const STREAM: i64 = 180;
    const EVERY: i64 = 20_000;

    #[test]
    fn a_burst_leaves_the_plans_of_later_payments_running() {
        let (core, sent, held) = burst_run();
        let checks_before_deadline = |pk: i64| {
            let start = pk * EVERY;
            sent.iter()
                .filter(|(t, pks)| pks.contains(&pk) && *t < start + 600_000)
                .count()
        };
        // The stream's payments from two minutes after the burst on stay on plan, out of
        // the backlog, and get checked before their deadline.
        let later: Vec<i64> = (0..STREAM)
            .filter(|pk| pk * EVERY >= BURST_AT + 2 * MIN)
            .collect();
        for (pk, backlog) in &held {
            if later.contains(pk) {
                assert!(!backlog, "payment {pk} of the stream in the backlog");
            }
        }
        let early: Vec<usize> = later
            .iter()
            .filter(|pk| **pk * EVERY < BURST_AT + 15 * MIN)
            .map(|pk| checks_before_deadline(*pk))
            .collect();
        let mean = early.iter().sum::<usize>() as f64 / early.len() as f64;
        assert!(
            mean >= 1.0,
            "stream payments get {mean:.2} checks before their deadline"
        );
        // The budget holds, and every payment, the burst's too, had its deadline check.
        let mut times: Vec<i64> = sent.iter().map(|(t, _)| *t).collect();
        times.sort_unstable();
        for (i, t) in times.iter().enumerate() {
            let in_window = times[..=i].iter().filter(|&&s| s > t - 600_000).count();
            assert!(
                in_window <= 100,
                "{in_window} requests in the window ending {t}"
            );
        }
        let burst = (BURST_PK..BURST_PK + BURST).map(|pk| (pk, BURST_AT));
        for (pk, start) in (0..STREAM).map(|pk| (pk, pk * EVERY)).chain(burst) {
            let last = sent
                .iter()
                .filter(|(_, pks)| pks.contains(&pk))
                .map(|(t, _)| *t)
                .max();
            assert!(
                last.is_some_and(|t| t >= start + 600_000),
                "payment {pk}: {last:?}"
            );
        }
        assert_eq!(core.pending(), 0);
    }

    #[test]
    fn a_backlog_leaves_room_for_the_payments_on_plan_and_none_without_them() {
        // 100 a window: the backlog leaves 2 free. Three payments long past their deadline,
        // in the backlog; one on plan, its first check not yet due.
        let (mut core, _) = core(100);
        let now = 3_000_000;
        for pk in 1..=3 {
            core.track(row(pk, now - 1_000_000, 20_000), now, false);
            core.entries.get_mut(&PaymentKey(pk)).unwrap().backlog = true;
        }
        core.track(row(9, now - 1_000, 20_000), now, false);
        for _ in 0..97 {
            assert!(core.pools[0].budget.try_acquire(now));
            core.pools[0].budget.release(now);
        }
        core.tick(now);
        // 97 used: one more leaves 2.
        assert_eq!(core.peek_due(0, now).map(|(q, _)| q), Some(Queue::Backlog));
        assert!(core.pools[0].budget.try_acquire(now));
        core.pools[0].budget.release(now);
        // 98 used: the last 2 wait for the payment on plan.
        assert_eq!(core.peek_due(0, now), None);
        assert_eq!(
            core.next_wake(now).map(|w| w > now),
            Some(true),
            "no busy wake"
        );
        // Without a payment on plan, the backlog takes them.
        core.untrack(PaymentKey(9));
        core.tick(now);
        assert_eq!(core.peek_due(0, now).map(|(q, _)| q), Some(Queue::Backlog));
    }

    #[test]
    fn status_tells_when_the_backlog_will_have_drained() {
        let (mut core, kind) = core_sharing(100, BURST_SHARE);
        core.assume("p2p", core.grid.ladder_prior());
        // A lighter stream than `burst_run`'s (a tenth of the budget), for as long as the
        // backlog drains, so its pace holds.
        let mut arrivals = burst_arrivals(3 * EVERY, 180 * MIN / (3 * EVERY));
        let mut driver = Driver::default();
        let mut now = 0;
        let mut estimates = Vec::new();
        let mut drained = None;
        while now < 180 * MIN && drained.is_none() {
            driver.run(&mut core, &kind, now, now + MIN, &mut arrivals);
            now += MIN;
            let st = core.status(now).remove(0);
            if st.backlog == 0 && now > BURST_AT + 5 * MIN {
                drained = Some(now);
                assert_eq!(st.backlog_drains_in_ms, None);
            } else if let Some(eta) = st.backlog_drains_in_ms {
                estimates.push((now, now + eta));
            }
        }
        let drained = drained.expect("the backlog drains");
        assert!(!estimates.is_empty(), "no estimate while it drained");
        // From a window and a half after the burst on, each estimate is within a third of
        // the time the backlog really took to drain (plus two minutes of rounding).
        for (at, eta) in estimates.iter().filter(|(t, _)| *t >= BURST_AT + 15 * MIN) {
            let (left, said) = ((drained - at) as f64, (eta - at) as f64);
            assert!(
                (said - left).abs() <= left / 3.0 + 2.0 * MIN as f64,
                "at {} min: said {} min left, took {}",
                at / MIN,
                said / MIN as f64,
                left / MIN as f64
            );
        }
    }

    #[test]
    fn the_backlog_gets_its_share_of_the_budget_and_drains() {
        let (_, sent, _) = burst_run();
        let is_burst = |pks: &Vec<i64>| pks.iter().any(|pk| *pk >= BURST_PK);
        // In each window from the burst on while it lasts, the backlog gets at least its
        // share ahead of the plans, and the stream keeps the rest.
        for w in 0..3 {
            let from = BURST_AT + 2 * MIN + w * 10 * MIN;
            let span: Vec<&(i64, Vec<i64>)> = sent
                .iter()
                .filter(|(t, _)| *t >= from && *t < from + 10 * MIN)
                .collect();
            let of_burst = span.iter().filter(|(_, pks)| is_burst(pks)).count() as f64;
            let total = span.len() as f64;
            eprintln!("window {w}: {of_burst} of {total} for the burst");
            assert!(
                of_burst >= BURST_SHARE.get() / 2.0 * total,
                "window {w}: the burst got {of_burst} of {total}"
            );
            assert!(
                total - of_burst >= 0.3 * total,
                "window {w}: the stream got {} of {total}",
                total - of_burst
            );
        }
    }

    #[test]
    fn rechecks_are_coalesced_to_one_per_ladder_step() {
        let (mut core, kind) = core(1000);
        core.track(row(1, 0, 20_000), 0, false);
        let mut sent = drive(&mut core, &kind, 0, 30_000);
        let before = sent.len();
        // 1,200 rechecks in 3 s (a merchant forwarding every callback, or a loop).
        let mut answers = Vec::new();
        for i in 0..1200 {
            answers.push(core.recheck(PaymentKey(1), 30_000 + i * 2));
        }
        assert!(answers.iter().all(|a| a.is_some()));
        sent.extend(drive(&mut core, &kind, 33_000, 40_000));
        let during = sent[before..].iter().filter(|(t, _)| *t < 40_000).count();
        // The ladder checks every 3 s here: a recheck adds at most one per step.
        assert!(
            during <= 6,
            "{during} checks in 10 s: {:?}",
            &sent[before..]
        );
        assert_eq!(core.recheck(PaymentKey(99), 40_000), None, "not held");
    }

    /// A restart during a lull: the evidence rebuilt from the long memory outlives the
    /// first refits although nothing arrives (rate 0 used to shrink it to two lifetimes).
    #[test]
    fn a_lull_does_not_shorten_the_learners_memory() {
        let (mut core, _) = core(1000);
        let life = core.life_ms();
        let memory = core.memory_ms();
        let mut n = 0;
        let mut started = -memory + 1000;
        while started < -1000 {
            core.learn(
                "p2p",
                started,
                Some(started + 5_000),
                Some(started + 40_000),
            );
            started += 997;
            n += 1;
        }
        assert!(n > 1000, "{n}");
        let m = core.model_of["p2p"];
        for now in (1..20).map(|i| i * (life / 4)) {
            core.tick(now);
        }
        // Some of it aged past the horizon during the lull (almost five lifetimes): not more.
        let kept = core.models[m].learner.len();
        let aged = (n as i64 * (5 * life) / memory) as usize + 2;
        assert!(kept + aged >= n, "kept {kept} of {n}");
    }

    /// The set of unknown statuses remembered (each logged once) is bounded.
    #[test]
    fn unknown_statuses_remembered_are_bounded() {
        let (mut core, _) = core(1000);
        core.track(row(1, 0, 20_000), 0, false);
        for i in 0..(MAX_UNKNOWN_LOGGED as i64 + 50) {
            core.complete(&Completion {
                pool: 0,
                pks: vec![PaymentKey(1)],
                observations: vec![Observation::Status {
                    raw: format!("odd{i}"),
                    state: None,
                    response: json!({}),
                }],
                retry_after_ms: None,
                sent_at: 1_000 + i,
                done_at: 1_000 + i,
                ledger: None,
            });
        }
        assert_eq!(core.unknown_logged.len(), MAX_UNKNOWN_LOGGED);
    }
}
