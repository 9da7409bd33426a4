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

mod answers;
mod choosing;
mod entries;
mod io;
mod learning;
mod ledger;
mod lists;
mod pricing;
mod spare;
mod status;
mod tracking;
mod wakes;

#[cfg(test)]
mod tests;

use super::decide::{decide, Decision};
use super::late::{LatePolicy, Watch, WatchStart};
use crate::account::AccountName;
use crate::budget::{BacklogShare, Budget};
use crate::event::EventSpec;
use crate::kinds::{ErrorClass, Kind, KindName, Observation};
use crate::ladder::Ladder;
use crate::payment::{LedgerKey, PaymentId, PaymentKey, SchedMs, State};
use crate::policy::{arrival_rate, burst_cap, Evidence, Grid, Learner, Plans, RATE_WINDOWS};
use crate::status::{drain_eta, KindPolicy, LateStatus, PoolStatus};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

pub use io::{
    Action, Completed, Completion, CoreConfig, InvalidId, LateCheck, Outcome, PoolId, PoolSpec,
    Request, Tracked, Watched,
};

/// Share of the budget the policy plans to spend; the limiter absorbs the rest of the
/// projection's error.
const PLAN_SHARE: f64 = 0.98;

/// The learner's long memory (see `Learner`): about this many payments, at most this many
/// lifetimes. On a busy key payments are checked sparsely, so each flip's interval is
/// wide and the shape of the flip ages needs many of them to be learnt well; a long
/// memory costs little, because the recent one takes over when the traffic changes.
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

/// Most checks in flight across all keys (each key has its own bound below it): keeps the
/// open connections well within the service's file limit when the provider hangs.
const MAX_TOTAL_IN_FLIGHT: usize = 1024;

/// Share of the budget manual rechecks may take in a window, all together.
const RECHECK_SHARE: f64 = 0.1;

/// The backlog leaves this fraction of the budget (1/50: 20 of 1,000) free when it takes
/// what the checks on plan leave: their load comes in spurts (payments that start together
/// have their dense early checks together), and a spurt that finds the window full goes
/// late and joins the backlog. A fiftieth absorbs those spurts; more would only drain
/// the backlog slower.
const BACKLOG_LEAVES_DIVISOR: u32 = 50;

/// A due check this many windows late outranks every other in the backlog (earliest due
/// first), so none waits for ever behind worthier ones.
const PATIENCE_WINDOWS: i64 = 2;

/// A key is behind once its earliest due check is late by more than this fraction of a
/// window (1/2), or more checks are due than the budget sends in that time: then due checks
/// go by worth, not by due time. The lag is long because ranking by worth trusts the
/// learnt flip ages: after a change of mix they are wrong for a while, and a shorter lag
/// would let that transient backlog be ranked by a wrong model.
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

/// A tick prices every key while there are at most this many; with more, a share of them
/// in turn (see [`Core::tick`]).
const PRICED_PER_TICK: usize = 64;

/// With many keys, each is priced at least every this many ticks (seconds, under the
/// driver).
const PRICE_ROUND_TICKS: usize = 5;

/// A refit (every twentieth of a window) fits every model at once while there are at most
/// this many; with more, a share of them each tick, so that a round takes at most
/// [`FIT_ROUND_TICKS`] ticks: a thousand accounts' fits at once would hold the driver for
/// as long as hundreds of checks take.
const FITTED_PER_TICK: usize = 64;
const FIT_ROUND_TICKS: usize = 10;

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

/// Which of a watched payment's checks may go, and out of what: see
/// [`Core::send_watched`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LateTurn {
    /// A merchant's recheck, within the rechecks' share, as for live ones.
    Recheck,
    /// A scheduled check due no later than the live payments' earliest, where the spare
    /// budget affords the whole schedule (`Watch::affords_schedule`): it goes in its turn among theirs, within the budget's
    /// limit, so that a spurt of arrivals does not hold it past its age.
    OnSchedule,
    /// With no live check due, the watch's pick, only from what the live payments leave
    /// of the budget: room beyond a fiftieth of it (their spurts), every live check due
    /// within the time a check may go late and stay on plan, and their need over the
    /// next window ([`Core::live_need`]: never less than their usual pace).
    Spare,
}

struct Entry {
    pk: PaymentKey,
    kind: Arc<Kind>,
    /// Index of the kind's model.
    model: usize,
    id: PaymentId,
    pool: PoolId,
    jitter: i64,
    t0: SchedMs,
    deadline: SchedMs,
    /// When the last answered check was sent.
    last: Option<SchedMs>,
    upstream_status: Option<String>,
    due: SchedMs,
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
    due_from: SchedMs,
}

struct Model {
    /// Its kind; the pool its requests go to (its account's key), and whether it is a
    /// list kind.
    kind: KindName,
    pool: PoolId,
    list: bool,
    learner: Learner,
    /// Shared with other accounts' models while the estimate is the one they started
    /// from (see [`Core::model_for`]).
    plans: Arc<Plans>,
    /// Arrival times of new payments, for the arrival rate.
    arrivals: VecDeque<SchedMs>,
    /// Payments of this kind that finished, since the plans were solved.
    fresh: usize,
    /// Evidence learnt since the last fit (a kind with none and no payment held has
    /// nothing to fit again).
    unfit: bool,
    /// The distribution is given, not learnt.
    fixed: bool,
}

struct Pool {
    spec: PoolSpec,
    budget: Budget,
    heap: BinaryHeap<Reverse<(SchedMs, u64, PaymentKey)>>,
    /// Planned checks that came due and wait for budget (`(due, gen, pk)`): when the key
    /// is short, the one most likely to see a flip goes first (see [`Core::worth`]).
    ready: Vec<(SchedMs, u64, PaymentKey)>,
    rechecks: BinaryHeap<Reverse<(SchedMs, u64, PaymentKey)>>,
    /// When recent manual rechecks were sent.
    recheck_sent: VecDeque<SchedMs>,
    /// The requests of the last [`Core::on_time`]: when, and whether for the backlog.
    recent_sent: VecDeque<(SchedMs, bool)>,
    /// The backlog's requests of the last window, and since when it has had one: its pace.
    backlog_sent: VecDeque<SchedMs>,
    /// The live payments' requests of the last window: the pace reconciliation leaves room
    /// for.
    live_sent: VecDeque<SchedMs>,
    /// Their usual pace: what reconciliation leaves them over a window to come.
    live_pace: spare::LivePace,
    backlog_since: Option<SchedMs>,
    /// More checks are due than the budget sends in half a window, and the budget is
    /// spent (set every tick).
    piled: bool,
    /// Whether any of its payments is on plan, out of the backlog (as of the last tick).
    on_plan: bool,
    throttled: u32,
    /// Its requests in flight (each key has [`CoreConfig::max_in_flight`] of its own).
    in_flight: usize,
    /// Kinds answering 401/403 since when, and when it was last logged.
    auth_failing: HashMap<KindName, (SchedMs, SchedMs)>,
    /// Kinds whose last check got no usable answer (see [`ErrorClass::is_outage`]), with
    /// its error, until one is answered.
    outage: HashMap<KindName, String>,
    /// Earliest next request of each list kind (its cadence).
    list_not_before: HashMap<KindName, SchedMs>,
    last_probe: SchedMs,
    lateness_ms: Vec<i64>,
    /// Beside each of `lateness_ms`: how long that check waited for the budget's room.
    budget_wait_ms: Vec<i64>,
    ledger_keys: VecDeque<LedgerKey>,
    refilling: bool,
    level: f64,
    projected: f64,
    target: f64,
    /// Payments arriving per window (kinds checked one by one) at the rates the price was
    /// last set for.
    arrivals: f64,
}

impl Pool {
    fn new(spec: PoolSpec) -> Self {
        Self {
            budget: Budget::new(spec.budget_requests, spec.budget_window_ms),
            spec,
            heap: BinaryHeap::new(),
            ready: Vec::new(),
            rechecks: BinaryHeap::new(),
            recheck_sent: VecDeque::new(),
            recent_sent: VecDeque::new(),
            backlog_sent: VecDeque::new(),
            live_sent: VecDeque::new(),
            live_pace: spare::LivePace::default(),
            backlog_since: None,
            piled: false,
            on_plan: false,
            throttled: 0,
            in_flight: 0,
            auth_failing: HashMap::new(),
            outage: HashMap::new(),
            list_not_before: HashMap::new(),
            last_probe: SchedMs(0),
            lateness_ms: Vec::new(),
            budget_wait_ms: Vec::new(),
            ledger_keys: VecDeque::new(),
            refilling: false,
            level: 0.0,
            projected: 0.0,
            arrivals: 0.0,
            target: 0.0,
        }
    }
}

/// The keys, indexed by [`PoolId`] only.
struct Pools(Vec<Pool>);

impl Pools {
    fn len(&self) -> usize {
        self.0.len()
    }

    /// Every key's id, in order.
    fn ids(&self) -> impl Iterator<Item = PoolId> + use<> {
        (0..self.0.len()).map(PoolId::new)
    }

    fn get_mut(&mut self, p: PoolId) -> Option<&mut Pool> {
        self.0.get_mut(p.index())
    }

    fn iter_mut(&mut self) -> std::slice::IterMut<'_, Pool> {
        self.0.iter_mut()
    }
}

impl std::ops::Index<PoolId> for Pools {
    type Output = Pool;

    fn index(&self, p: PoolId) -> &Pool {
        &self.0[p.index()]
    }
}

impl std::ops::IndexMut<PoolId> for Pools {
    fn index_mut(&mut self, p: PoolId) -> &mut Pool {
        &mut self.0[p.index()]
    }
}

/// The scheduling state of every pending payment and every key.
pub struct Core {
    ladder: Ladder,
    grid: Grid,
    kinds: BTreeMap<KindName, Arc<Kind>>,
    kind_pool: HashMap<KindName, PoolId>,
    account_pool: HashMap<AccountName, PoolId>,
    /// One model per account and kind, made when its first payment comes (the account
    /// `default`'s at once).
    models: Vec<Model>,
    model_of: HashMap<(AccountName, KindName), usize>,
    /// Indexed by [`PoolId`]: the models whose requests go to that key.
    pool_models: Vec<Vec<usize>>,
    /// Per kind, what every account's payments of it teach: a new account's prior.
    pooled: HashMap<KindName, Learner>,
    /// Per kind, the plans of the last prior a model started from: every model made from
    /// that same estimate (a restart makes a thousand accounts' at once) shares them, and
    /// solves each table once, until its own evidence moves it (see [`Core::refit`]).
    started_plans: HashMap<KindName, Arc<Plans>>,
    pools: Pools,
    entries: entries::Entries,
    /// Requests in flight per key, at most.
    max_in_flight: usize,
    /// Requests in flight, all keys.
    in_flight: usize,
    /// The key [`Core::poll`] starts at, turning, so none is always served last when
    /// the total bound is reached.
    poll_from: usize,
    /// When each key next has something to do.
    wakes: wakes::Wakes,
    /// The key the next tick's pricing starts at (see [`PRICED_PER_TICK`]).
    price_from: usize,
    /// The keys of each budget ledger (see [`Core::restore_spent`]).
    ledger_pools: HashMap<String, Vec<PoolId>>,
    gen: u64,
    rng: fastrand::Rng,
    unknown_logged: HashSet<(KindName, String)>,
    /// Per list kind, the page size its listings grew to after coming back cut short
    /// (the provider pages by size only, newest first).
    list_limit: HashMap<KindName, u32>,
    window: i64,
    /// See [`CoreConfig::backlog_share`].
    backlog_share: f64,
    last_fit: SchedMs,
    /// The next model the round of refits in progress fits (`None`: none in progress).
    refit_next: Option<usize>,
    /// When the core started (arrival rates count from there).
    started: SchedMs,
    /// Payments under reconciliation after their ladder.
    watch: Watch,
    last_watch_fit: SchedMs,
    /// Outcomes to commit that no request produced (a watch that ended unchecked).
    /// A key's live checks due soon, as the spare budget's look ahead gathers them: kept
    /// between looks, which come at every visit of a key with room.
    due_soon: Vec<SchedMs>,
    unsent: Vec<Outcome>,
}

impl Core {
    /// A core with no payments, at `now`.
    pub fn new(cfg: CoreConfig, now: SchedMs) -> Self {
        let grid = Grid::new(&cfg.ladder);
        let window_cells = (cfg.budget_window_ms / grid.unit_ms()).max(1) as usize;
        // The whole long memory until the first refit sets it from the arrival rate: a
        // restart rebuilds that much, and a shorter horizon would drop it at the first fit.
        let horizon = memory_horizon_ms(cfg.ladder.timeout_ms(), cfg.budget_window_ms);
        let mut models = Vec::new();
        let mut model_of = HashMap::new();
        let mut pooled = HashMap::new();
        for (name, kind) in &cfg.kinds {
            model_of.insert((AccountName::default(), name.clone()), models.len());
            let prior = grid.ladder_prior();
            pooled.insert(name.clone(), Learner::new(prior.clone(), horizon));
            models.push(Model {
                kind: name.clone(),
                pool: cfg.kind_pool.get(name).copied().unwrap_or(PoolId::DEFAULT),
                list: kind.is_list(),
                learner: Learner::new(prior.clone(), horizon),
                plans: Arc::new(Plans::new(&grid, prior, window_cells)),
                arrivals: VecDeque::new(),
                fresh: 0,
                unfit: true,
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
        let mut pool_models = vec![Vec::new(); cfg.pools.len()];
        for (i, model) in models.iter().enumerate() {
            if let Some(own) = pool_models.get_mut(model.pool.index()) {
                own.push(i);
            }
        }
        let pools = cfg.pools.into_iter().map(Pool::new).collect();
        let pools = Pools(pools);
        let wakes = wakes::Wakes::new(pools.len());
        // A restart restores up to two budgets of rows per key: found by their ledger, not
        // by a pass over every key per row.
        let mut ledger_pools: HashMap<String, Vec<PoolId>> = HashMap::new();
        for (i, pool) in pools.0.iter().enumerate() {
            ledger_pools
                .entry(pool.spec.ledger_id.clone())
                .or_default()
                .push(PoolId::new(i));
        }
        Self {
            ladder: cfg.ladder,
            grid,
            kinds: cfg.kinds,
            kind_pool: cfg.kind_pool,
            account_pool: cfg.account_pool,
            models,
            model_of,
            pool_models,
            pooled,
            started_plans: HashMap::new(),
            pools,
            entries: entries::Entries::default(),
            max_in_flight: cfg.max_in_flight.max(1),
            in_flight: 0,
            poll_from: 0,
            wakes,
            price_from: 0,
            ledger_pools,
            gen: 0,
            rng: fastrand::Rng::with_seed(cfg.seed),
            unknown_logged: HashSet::new(),
            list_limit: HashMap::new(),
            window: cfg.budget_window_ms,
            backlog_share: cfg.backlog_share.get(),
            last_fit: now,
            refit_next: None,
            started: now,
            watch,
            last_watch_fit: now,
            unsent: Vec::new(),
            due_soon: Vec::new(),
        }
    }

    /// Payments held.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    /// Keys (pools) the core schedules.
    pub fn pools(&self) -> usize {
        self.pools.len()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The key an account's payments of `kind` are checked with; `None`: the account is
    /// not configured (its payments stay pending, unpolled).
    pub(super) fn pool_of(&self, account: &AccountName, kind: &KindName) -> Option<PoolId> {
        if account.is_default() {
            Some(self.kind_pool.get(kind).copied().unwrap_or(PoolId::DEFAULT))
        } else {
            self.account_pool.get(account).copied()
        }
    }

    /// The model of an account's payments of `kind`, made on its first payment: it starts
    /// from what every account taught of the kind (fitted at `now`, when given), not from
    /// the ladder's prior.
    pub(super) fn model_for(
        &mut self,
        account: &AccountName,
        kind: &Arc<Kind>,
        pool: PoolId,
        now: Option<SchedMs>,
    ) -> usize {
        let key = (account.clone(), kind.name.clone());
        if let Some(&m) = self.model_of.get(&key) {
            return m;
        }
        let window_cells = (self.window / self.grid.unit_ms()).max(1) as usize;
        let horizon = memory_horizon_ms(self.ladder.timeout_ms(), self.window);
        let prior = match (self.pooled.get_mut(&kind.name), now) {
            (Some(l), Some(now)) if l.len() > 0 => l.fit(now, std::iter::empty()).clone(),
            (Some(l), _) => l.current().clone(),
            (None, _) => self.grid.ladder_prior(),
        };
        let mut learner = Learner::new(self.grid.ladder_prior(), horizon);
        learner.set_prior(prior.clone());
        let plans = match self.started_plans.get(&kind.name) {
            Some(p) if p.dist == prior => p.clone(),
            _ => {
                let p = Arc::new(Plans::new(&self.grid, prior, window_cells));
                self.started_plans.insert(kind.name.clone(), p.clone());
                p
            }
        };
        let m = self.models.len();
        self.models.push(Model {
            kind: kind.name.clone(),
            pool,
            list: kind.is_list(),
            learner,
            plans,
            arrivals: VecDeque::new(),
            fresh: 0,
            fixed: false,
            unfit: true,
        });
        self.model_of.insert(key, m);
        if let Some(own) = self.pool_models.get_mut(pool.index()) {
            own.push(m);
        }
        m
    }

    /// Whether pool `p` may start another request: its own bound and the total.
    pub(super) fn has_slot(&self, p: PoolId) -> bool {
        self.pools[p].in_flight < self.max_in_flight && self.in_flight < MAX_TOTAL_IN_FLIGHT
    }

    /// Something happened to pool `p` that may bring its work sooner: the next poll
    /// visits it (see [`wakes`]).
    pub(super) fn touch(&mut self, p: PoolId) {
        self.wakes.touch(p.index());
    }

    /// A request of pool `p` starts.
    pub(super) fn start_flight(&mut self, p: PoolId) {
        self.pools[p].in_flight += 1;
        self.in_flight += 1;
    }

    pub(super) fn next_gen(&mut self) -> u64 {
        self.gen += 1;
        self.gen
    }
}

/// The lowest price level at which `demand` (falling as the level rises) fits `target`,
/// mixed with the one below so the budget is spent, not left over; `(level, projected
/// demand)`. The top level when none fits.
pub(super) fn fit(demand: &dyn Fn(usize) -> f64, top: usize, target: f64) -> (f64, f64) {
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
fn forget_older(q: &mut VecDeque<SchedMs>, span: i64, now: SchedMs) {
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
