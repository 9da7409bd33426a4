//! The scheduler: decides which payment to check when, within each key's budget, and
//! hands each check's outcome to the recorder for a group commit.
//!
//! One task owns all scheduling state. It keeps every pending payment in memory (a few
//! hundred bytes each) in an earliest-due-first heap per API key, sleeps until the next
//! due time, a new arrival or an answer, and never scans the database on a timer.
//!
//! Scarcity: each key's ladders run on a *virtual clock* that advances at `1/stretch` of
//! real time. With `stretch = 1` it is the wall clock and every plan is exactly the
//! documented one, anchored to `t0`. When the projected demand of the next window exceeds
//! the budget, the stretch grows so that every remaining plan is stretched by the same
//! factor (the ladder keeps its shape, dense early and sparse late); when demand falls it
//! shrinks back. Deadlines stay on the wall clock: every payment still gets a check at or
//! after its deadline before it is declared timed out.

use crate::budget::Budget;
use crate::config::{Config, Secret};
use crate::kinds::{ErrorClass, Kind, Observation};
use crate::ladder::Ladder;
use crate::payment::{now_ms, PaymentId, State, UnixMs};
use crate::recorder::{ledger_loop, record_loop, RecordBatch, Refill};
use crate::store::{CheckRecord, EventSpec, PendingRow, Store};
use crate::telemetry::{PoolSnapshot, Telemetry};
use crate::upstream::Upstream;
use anyhow::Result;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Fraction of the budget the stretch plans for; the rest absorbs manual rechecks,
/// deadline checks and projection error.
const PLAN_SHARE: f64 = 0.9;

/// Largest stretch applied.
const MAX_STRETCH: f64 = 10_000.0;

/// A request to the scheduler from the API.
#[derive(Debug)]
pub enum Command {
    /// Start tracking a pending payment (new, or already stored).
    Track(PendingRow),
    /// Stop tracking (cancelled).
    Untrack(i64),
    /// Check as soon as possible.
    Recheck(i64),
}

/// The API's handle on the scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl SchedulerHandle {
    /// Hands a command over without waiting: there is no await between a commit and this
    /// call that a dropped request could cut. Fails only when the scheduler has stopped
    /// (shutting down), in which case the database already holds the change and a
    /// restart picks it up. Unbounded on purpose: every command stands for a row already
    /// committed, bounded by what the API accepted.
    pub fn send(&self, cmd: Command) -> Result<()> {
        self.tx
            .send(cmd)
            .map_err(|_| anyhow::anyhow!("scheduler is shutting down"))
    }
}

/// The wall clock mapped to a key's virtual ladder clock: `V(t) = v_base + (t - t_base) / f`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VirtualClock {
    t_base: f64,
    v_base: f64,
    stretch: f64,
}

impl VirtualClock {
    /// A clock equal to the wall clock.
    pub fn identity(now: UnixMs) -> Self {
        Self {
            t_base: now as f64,
            v_base: now as f64,
            stretch: 1.0,
        }
    }

    /// The current stretch factor.
    pub fn stretch(&self) -> f64 {
        self.stretch
    }

    /// Virtual time at wall time `t` (for `t` at or after the last change of stretch).
    pub fn to_virtual(&self, t: UnixMs) -> f64 {
        self.v_base + (t as f64 - self.t_base) / self.stretch
    }

    /// Wall time at which virtual time reaches `v`, if the stretch stays as it is.
    pub fn to_real(&self, v: f64) -> UnixMs {
        (self.t_base + (v - self.v_base) * self.stretch).ceil() as UnixMs
    }

    /// Changes the stretch from `now` on, keeping the clock continuous.
    pub fn set_stretch(&mut self, now: UnixMs, stretch: f64) {
        self.v_base = self.to_virtual(now);
        self.t_base = now as f64;
        self.stretch = stretch.max(1.0);
    }
}

/// How many of the pending payments will still be pending at their deadline, learnt from
/// the ones that finished: a moving average over about the last 50, starting at 1 (every
/// deadline check counted, as a new daemon knows nothing) and never trusted below 10%.
/// The stretch counts a deadline check for that share of payments only, so the budget it
/// holds back for deadline checks matches what they really need; when it guesses low,
/// deadline checks wait for budget (a later timeout), never exceed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeadlineShare(f64);

impl Default for DeadlineShare {
    fn default() -> Self {
        Self(1.0)
    }
}

impl DeadlineShare {
    /// A payment became final; `reached` when it ran to its deadline (timed out).
    pub fn observe(&mut self, reached: bool) {
        self.0 = 0.98 * self.0 + 0.02 * f64::from(u8::from(reached));
    }

    /// The share to count, at least 10%.
    pub fn share(&self) -> f64 {
        self.0.max(0.1)
    }
}

/// What a check decided for one payment. Pure; see [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub state: State,
    pub upstream_status: Option<String>,
    pub error: Option<String>,
    pub response: Option<String>,
    pub event: Option<&'static str>,
    pub changed: bool,
    /// Whether this check counts as the one owed at or after the deadline.
    pub answered: bool,
}

/// Decides a pending payment's new state from one observation made at `checked_at`.
/// `give_up_at`: past it, even unanswered checks end the payment (the provider has been
/// unreachable for a whole extra ladder).
pub fn decide(
    previous_raw: Option<&str>,
    obs: &Observation,
    checked_at: UnixMs,
    deadline: UnixMs,
    give_up_at: UnixMs,
) -> Decision {
    let (mut state, raw, error, response, answered) = match obs {
        Observation::Status {
            raw,
            state,
            response,
        } => (
            state.unwrap_or(State::Pending),
            Some(raw.clone()),
            state
                .is_none()
                .then(|| format!("unknown upstream status {raw:?}")),
            Some(response.to_string()),
            true,
        ),
        Observation::Error {
            class,
            message,
            response,
            ..
        } => (
            State::Pending,
            None,
            Some(message.clone()),
            response.as_ref().map(|r| r.to_string()),
            class.is_answer(),
        ),
    };
    if state == State::Pending && ((answered && checked_at >= deadline) || checked_at >= give_up_at)
    {
        state = State::TimedOut;
    }
    let event = crate::webhooks::event_for(previous_raw, raw.as_deref(), State::Pending, state);
    let changed = state != State::Pending
        || raw
            .as_deref()
            .is_some_and(|r| !r.eq_ignore_ascii_case(previous_raw.unwrap_or("pending")));
    Decision {
        state,
        upstream_status: raw,
        error,
        response,
        event,
        changed,
        answered,
    }
}

struct Entry {
    pk: i64,
    kind: Arc<Kind>,
    id: PaymentId,
    pool: usize,
    jitter: i64,
    t0: UnixMs,
    /// Virtual time of `t0` on the pool's clock.
    v_anchor: f64,
    /// Virtual time of the last answered check.
    v_last: Option<f64>,
    deadline: UnixMs,
    upstream_status: Option<String>,
    due: UnixMs,
    /// The slot (virtual) the current due time serves; `None` when it is the deadline or
    /// an explicit time.
    planned: Option<f64>,
    gen: u64,
    in_flight: bool,
    /// Consecutive unanswered checks, for back-off.
    failures: u32,
}

struct Pool {
    name: String,
    key: Option<Secret>,
    budget: Budget,
    clock: VirtualClock,
    heap: BinaryHeap<Reverse<(UnixMs, u64, i64)>>,
    /// Consecutive 429/503 answers, for the exponential pause.
    throttled: u32,
    /// Kinds answering 401/403 since when, and when it was last logged.
    auth_failing: HashMap<String, (UnixMs, UnixMs)>,
    /// Earliest next request of each list kind (its cadence).
    list_not_before: HashMap<String, UnixMs>,
    /// When a refused key was last probed.
    last_probe: UnixMs,
    lateness_ms: Vec<i64>,
    /// Pre-committed budget ledger rows, one per request to send.
    ledger_keys: std::collections::VecDeque<i64>,
    refilling: bool,
}

/// One finished request.
struct Completion {
    pool: usize,
    pks: Vec<i64>,
    observations: Vec<Observation>,
    retry_after_ms: Option<i64>,
    sent_at: UnixMs,
    done_at: UnixMs,
    ledger: Option<i64>,
}

/// Everything the scheduler needs.
pub struct Scheduler {
    ladder: Ladder,
    kinds: std::collections::BTreeMap<String, Arc<Kind>>,
    upstream: Upstream,
    telemetry: Arc<Telemetry>,
    max_in_flight: usize,
    pools: Vec<Pool>,
    kind_pool: HashMap<String, usize>,
    entries: HashMap<i64, Entry>,
    in_flight: usize,
    gen: u64,
    unknown_logged: HashSet<(String, String)>,
    /// Share of recently finished payments that ran to their deadline: see
    /// [`DeadlineShare`].
    reach_deadline: DeadlineShare,
    records: mpsc::Sender<RecordBatch>,
    refill: mpsc::Sender<Refill>,
    refilled: Option<mpsc::Receiver<(usize, Vec<i64>)>>,
    store: Store,
}

/// Spawns the scheduler and its recorder. Returns the handle for the API and the join
/// handle that completes once both have drained.
pub async fn spawn(
    config: &Config,
    store: Store,
    telemetry: Arc<Telemetry>,
    events: Arc<Notify>,
    cancel: CancellationToken,
) -> Result<(SchedulerHandle, tokio::task::JoinHandle<()>)> {
    let upstream = Upstream::new(&config.ninjapay)?;
    let now = now_ms();
    let window = config.ninjapay.budget_window.as_millis() as i64;
    let mut pools: Vec<Pool> = Vec::new();
    let mut kind_pool = HashMap::new();
    let new_pool = |name: String, key: Option<Secret>| Pool {
        name,
        key,
        budget: Budget::new(config.ninjapay.budget_requests, window),
        clock: VirtualClock::identity(now),
        heap: BinaryHeap::new(),
        throttled: 0,
        auth_failing: HashMap::new(),
        list_not_before: HashMap::new(),
        last_probe: 0,
        lateness_ms: Vec::new(),
        ledger_keys: Default::default(),
        refilling: false,
    };
    pools.push(new_pool("default".into(), config.ninjapay.api_key.clone()));
    for (name, kind) in &config.kinds {
        let idx = match &kind.api_key {
            None => 0,
            Some(key) => match pools.iter().position(|p| p.key.as_ref() == Some(key)) {
                Some(i) => i,
                None => {
                    pools.push(new_pool(format!("kind:{name}"), Some(key.clone())));
                    pools.len() - 1
                }
            },
        };
        kind_pool.insert(name.clone(), idx);
    }
    // What was spent before a restart still counts.
    for (pool, _sent, done) in store.ledger_since(now - 2 * window).await? {
        if let Some(p) = pools.iter_mut().find(|p| p.name == pool) {
            p.budget.restore(done, now);
        }
    }

    let (rec_tx, rec_rx) = mpsc::channel(1024);
    // Rows of a previous run that never got an answer were counted above as answered now;
    // record that, so housekeeping can forget them after a window.
    store.ledger_close_open(now).await?;
    let (refill_tx, refill_rx) = mpsc::channel(64);
    let (refilled_tx, refilled_rx) = mpsc::channel(64);
    tokio::spawn(ledger_loop(store.clone(), refill_rx, refilled_tx));
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let mut sched = Scheduler {
        ladder: config.ladder.clone(),
        kinds: config.kinds.clone(),
        upstream,
        telemetry: telemetry.clone(),
        max_in_flight: config.ninjapay.max_in_flight,
        pools,
        kind_pool,
        entries: HashMap::new(),
        in_flight: 0,
        gen: 0,
        unknown_logged: HashSet::new(),
        reach_deadline: DeadlineShare::default(),
        records: rec_tx,
        refill: refill_tx,
        refilled: Some(refilled_rx),
        store: store.clone(),
    };
    let pending = store.pending().await?;
    let resumed = pending.len();
    for row in pending {
        sched.track(row, now, true);
    }
    tracing::info!(resumed, "scheduler resuming pending payments");
    let recorder = tokio::spawn(record_loop(store, rec_rx, telemetry, events));
    let task = tokio::spawn(async move {
        sched.run(cmd_rx, cancel).await;
        drop(sched); // closes the recorder's channel so it drains and stops
        if let Err(e) = recorder.await {
            tracing::error!(error = %e, "recorder task failed");
        }
    });
    Ok((SchedulerHandle { tx: cmd_tx }, task))
}

impl Scheduler {
    fn next_gen(&mut self) -> u64 {
        self.gen += 1;
        self.gen
    }

    /// Starts tracking a pending payment. `resumed`: read back at start-up, where a stored
    /// next check earlier than the plan is a manual recheck that must survive the restart.
    fn track(&mut self, row: PendingRow, now: UnixMs, resumed: bool) {
        if self.entries.contains_key(&row.pk) {
            return;
        }
        let Some(kind) = self.kinds.get(&row.kind).cloned() else {
            tracing::warn!(kind = %row.kind, id = %row.id, "payment of a kind no longer configured stays pending, unpolled");
            return;
        };
        let Ok(id) = PaymentId::parse(&row.id) else {
            tracing::warn!(
                pk = row.pk,
                "payment with an invalid id in the database is not polled"
            );
            return;
        };
        let pool = self.kind_pool.get(&row.kind).copied().unwrap_or(0);
        let clock = self.pools[pool].clock;
        // Age already lived ran on the wall clock; a start still ahead (an app clock a
        // little fast) is as far ahead on the virtual clock as the stretch makes it.
        let age = now - row.started_at;
        let v_anchor = if age >= 0 {
            clock.to_virtual(now) - age as f64
        } else {
            clock.to_virtual(row.started_at)
        };
        let jitter = self.ladder.clamp_jitter(row.jitter_ms);
        let deadline = row.started_at + self.ladder.timeout_ms();
        let v_last = row
            .last_checked_at
            .map(|c| clock.to_virtual(now) - (now - c) as f64);
        let gen = self.next_gen();
        let mut e = Entry {
            pk: row.pk,
            kind,
            id,
            pool,
            jitter,
            t0: row.started_at,
            v_anchor,
            v_last,
            deadline,
            upstream_status: row.upstream_status,
            due: now,
            planned: None,
            gen,
            in_flight: false,
            failures: 0,
        };
        plan(&self.ladder, &clock, &mut e);
        // A stored next check earlier than the plan is an explicit recheck: honour it.
        if let Some(stored) = row.next_check_at.filter(|_| resumed) {
            if stored < e.due && row.last_checked_at.is_none_or(|c| stored > c) {
                e.due = stored;
                e.planned = None;
            }
        }
        self.pools[pool].heap.push(Reverse((e.due, e.gen, e.pk)));
        self.entries.insert(e.pk, e);
    }

    async fn run(
        &mut self,
        mut cmd_rx: mpsc::UnboundedReceiver<Command>,
        cancel: CancellationToken,
    ) {
        let (done_tx, mut done_rx) = mpsc::channel::<Completion>(1024);
        let tick_ms = self
            .pools
            .first()
            .map(|p| (p.budget.window_ms() / 600).clamp(20, 1000))
            .unwrap_or(1000);
        let mut tick = tokio::time::interval(Duration::from_millis(tick_ms as u64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let Some(mut refilled) = self.refilled.take() else {
            return;
        };
        for p in 0..self.pools.len() {
            self.ensure_reserve(p);
        }
        loop {
            let now = now_ms();
            self.dispatch(now, &done_tx);
            let wake = self.next_wake(now);
            let sleep = tokio::time::sleep(Duration::from_millis(
                wake.map(|w| (w - now).clamp(0, 3_600_000) as u64)
                    .unwrap_or(3_600_000),
            ));
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = cmd_rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd, now_ms()),
                    None => break,
                },
                Some(done) = done_rx.recv() => self.complete(done),
                Some((p, keys)) = refilled.recv() => {
                    if let Some(pool) = self.pools.get_mut(p) {
                        pool.ledger_keys.extend(keys);
                        pool.refilling = false;
                    }
                }
                _ = tick.tick() => self.restretch(now_ms()),
                _ = sleep => {}
            }
        }
        // Shutdown: no new checks; the ones in flight finish (bounded by the request
        // timeout) and are recorded. Whatever did not start stays due in the database.
        drop(done_tx);
        while self.in_flight > 0 {
            match done_rx.recv().await {
                Some(done) => self.complete(done),
                None => break,
            }
        }
        // Reserved rows that no request used are not spent budget.
        let unused: Vec<i64> = self
            .pools
            .iter_mut()
            .flat_map(|p| p.ledger_keys.drain(..))
            .collect();
        if let Err(e) = self.store.ledger_release(&unused).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not release unused budget ledger rows"
            );
        }
        tracing::info!("scheduler stopped");
    }

    fn command(&mut self, cmd: Command, now: UnixMs) {
        match cmd {
            Command::Track(row) => self.track(row, now, false),
            // If a check is in flight, its answer finds the payment gone here and cancelled
            // in the database, and is dropped.
            Command::Untrack(pk) => {
                self.entries.remove(&pk);
            }
            Command::Recheck(pk) => {
                let gen = self.next_gen();
                if let Some(e) = self.entries.get_mut(&pk) {
                    e.due = now;
                    e.planned = None;
                    e.gen = gen;
                    if !e.in_flight {
                        self.pools[e.pool].heap.push(Reverse((now, gen, pk)));
                    }
                }
            }
        }
    }

    /// Earliest time anything can happen without an outside event.
    fn next_wake(&mut self, now: UnixMs) -> Option<UnixMs> {
        if self.in_flight >= self.max_in_flight {
            return None; // an answer wakes us
        }
        let mut wake: Option<UnixMs> = None;
        for pool in &mut self.pools {
            while let Some(Reverse((due, gen, pk))) = pool.heap.peek().copied() {
                let live = self
                    .entries
                    .get(&pk)
                    .is_some_and(|e| e.gen == gen && !e.in_flight);
                if !live {
                    pool.heap.pop();
                    continue;
                }
                let at = if due <= now {
                    pool.budget.next_room_at(now).unwrap_or(UnixMs::MAX)
                } else {
                    due
                };
                wake = Some(wake.map_or(at, |w| w.min(at)));
                break;
            }
        }
        wake.filter(|w| *w != UnixMs::MAX)
    }

    fn dispatch(&mut self, now: UnixMs, done_tx: &mpsc::Sender<Completion>) {
        for p in 0..self.pools.len() {
            while self.in_flight < self.max_in_flight {
                let Some(Reverse((due, gen, pk))) = self.pools[p].heap.peek().copied() else {
                    break;
                };
                let live = self
                    .entries
                    .get(&pk)
                    .is_some_and(|e| e.gen == gen && !e.in_flight);
                if !live {
                    self.pools[p].heap.pop();
                    continue;
                }
                if due > now {
                    break;
                }
                let kind = self.entries[&pk].kind.clone();
                // Keys answering 401/403 are probed by one request at a time, at most
                // every few seconds, instead of spending the budget on every payment.
                if let Some((since, _)) = self.pools[p].auth_failing.get(&kind.name) {
                    let probe_every = (self.pools[p].budget.window_ms() / 100).clamp(50, 30_000);
                    let last = self.pools[p].last_probe.max(*since);
                    if now < last + probe_every {
                        self.defer(p, pk, last + probe_every);
                        continue;
                    }
                    self.pools[p].last_probe = now;
                }
                if kind.is_list() {
                    if let Some(&nb) = self.pools[p].list_not_before.get(&kind.name) {
                        if now < nb {
                            self.defer(p, pk, nb);
                            continue;
                        }
                    }
                }
                if self.pools[p].key.is_none() {
                    self.no_key(p, pk, now);
                    continue;
                }
                if self.pools[p].ledger_keys.is_empty() {
                    self.ensure_reserve(p);
                    break; // a refill wakes us
                }
                if !self.pools[p].budget.try_acquire(now) {
                    break;
                }
                self.pools[p].heap.pop();
                let members: Vec<i64> = if kind.is_list() {
                    self.list_members(p, &kind, now)
                } else {
                    vec![pk]
                };
                self.launch(p, kind, members, now, done_tx);
            }
        }
    }

    /// Keeps a reserve of pre-committed ledger rows of at least the in-flight bound.
    fn ensure_reserve(&mut self, p: usize) {
        let pool = &mut self.pools[p];
        let want = self.max_in_flight.max(4);
        if !pool.refilling && pool.ledger_keys.len() < want {
            let count = 2 * want - pool.ledger_keys.len();
            if self.refill.try_send((p, pool.name.clone(), count)).is_ok() {
                pool.refilling = true;
            }
        }
    }

    fn defer(&mut self, p: usize, pk: i64, until: UnixMs) {
        self.pools[p].heap.pop();
        let gen = self.next_gen();
        if let Some(e) = self.entries.get_mut(&pk) {
            e.gen = gen;
            e.due = until;
            self.pools[p].heap.push(Reverse((until, gen, pk)));
        }
    }

    /// Without a key no request is made: the payment stays due and the error says why.
    fn no_key(&mut self, p: usize, pk: i64, now: UnixMs) {
        let retry = now + (self.pools[p].budget.window_ms() / 10).max(1000);
        if let Some(e) = self.entries.get(&pk) {
            let record = CheckRecord {
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
            };
            let _ = self.records.try_send((vec![record], None));
        }
        self.defer(p, pk, retry);
    }

    /// The pending payments of a list kind one request covers: every one whose first
    /// check is due by now, and the one that is due.
    fn list_members(&mut self, p: usize, kind: &Kind, now: UnixMs) -> Vec<i64> {
        let mut members: Vec<(UnixMs, i64)> = self
            .entries
            .values()
            .filter(|e| {
                e.pool == p
                    && e.kind.name == kind.name
                    && !e.in_flight
                    && (e.due <= now || e.v_last.is_some())
            })
            .map(|e| (e.due, e.pk))
            .collect();
        members.sort_unstable();
        let max = kind.list.as_ref().map_or(1, |l| l.max_limit as usize);
        members.truncate(max);
        members.into_iter().map(|(_, pk)| pk).collect()
    }

    fn launch(
        &mut self,
        p: usize,
        kind: Arc<Kind>,
        pks: Vec<i64>,
        now: UnixMs,
        done_tx: &mpsc::Sender<Completion>,
    ) {
        let mut ids = Vec::with_capacity(pks.len());
        for pk in &pks {
            if let Some(e) = self.entries.get_mut(pk) {
                e.in_flight = true;
                let late = now - e.due;
                self.pools[p].lateness_ms.push(late.max(0));
                ids.push(e.id.clone());
            }
        }
        self.in_flight += 1;
        self.telemetry.request(&kind.name);
        let ledger = self.pools[p].ledger_keys.pop_front();
        self.ensure_reserve(p);
        let upstream = self.upstream.clone();
        let Some(key) = self.pools[p].key.clone() else {
            return;
        };
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let refs: Vec<&PaymentId> = ids.iter().collect();
            let answer = upstream.check(&kind, &key, &refs).await;
            let _ = done_tx
                .send(Completion {
                    pool: p,
                    pks,
                    observations: answer.observations,
                    retry_after_ms: answer.retry_after_ms,
                    sent_at: now,
                    done_at: now_ms(),
                    ledger,
                })
                .await;
        });
    }

    fn complete(&mut self, done: Completion) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let now = done.done_at;
        let p = done.pool;
        self.telemetry.latency(done.done_at - done.sent_at);
        let used_before = self.pools[p].budget.used(now);
        self.pools[p].budget.release(now);
        let mut records = Vec::with_capacity(done.pks.len());
        let mut throttled = false;
        let mut auth_failed: Option<String> = None;
        let mut any_answer = false;
        let mut list_kind: Option<Arc<Kind>> = None;
        let mut min_every = i64::MAX;
        let mut answered_kinds: HashSet<String> = HashSet::new();
        for (pk, obs) in done.pks.iter().zip(&done.observations) {
            let Some(mut e) = self.entries.remove(pk) else {
                continue; // cancelled meanwhile
            };
            e.in_flight = false;
            if e.kind.is_list() {
                list_kind = Some(e.kind.clone());
            }
            if let Observation::Error { class, .. } = obs {
                match class {
                    ErrorClass::RateLimited | ErrorClass::Unavailable => throttled = true,
                    ErrorClass::Auth => auth_failed = Some(e.kind.name.clone()),
                    _ => {}
                }
            } else {
                any_answer = true;
            }
            if let Observation::Status {
                raw, state: None, ..
            } = obs
            {
                if self
                    .unknown_logged
                    .insert((e.kind.name.clone(), raw.to_lowercase()))
                {
                    tracing::warn!(kind = %e.kind.name, status = %raw, "unknown upstream status; payment stays pending (logged once per status)");
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
            self.telemetry.check(&e.kind.name, obs, d.state);
            let clock = self.pools[p].clock;
            if d.answered {
                e.v_last = Some(clock.to_virtual(done.sent_at));
                e.failures = 0;
                plan(&self.ladder, &clock, &mut e);
            } else {
                // No real answer: the next attempt is the plan's next slot after this one,
                // or later when failures pile up (exponential back-off), so a provider that
                // is down is not hammered, and past the deadline not retried in a loop. The
                // last answered check stays what it was: this one settles nothing.
                e.failures += 1;
                let backoff = backoff_ms(e.failures, self.ladder.every_at(e.jitter, now - e.t0));
                let answered = e.v_last;
                e.v_last = Some(clock.to_virtual(done.sent_at));
                plan(&self.ladder, &clock, &mut e);
                e.v_last = answered;
                e.due = e.due.max(now + backoff);
                e.planned = None;
            }
            let previous_raw = e.upstream_status.clone();
            if d.upstream_status.is_some() {
                e.upstream_status = d.upstream_status.clone();
            }
            if d.answered {
                answered_kinds.insert(e.kind.name.clone());
            }
            min_every = min_every.min(
                self.ladder
                    .every_at(e.jitter, (clock.to_virtual(now) - e.v_anchor) as i64),
            );
            records.push(CheckRecord {
                pk: *pk,
                checked_at: now,
                upstream_status: d.upstream_status.clone(),
                state: d.state,
                response: d.response.clone(),
                error: d.error.clone(),
                next_check_at: (!d.state.is_final()).then_some(e.due),
                event: d.event.map(|t| EventSpec {
                    event_type: t,
                    previous_state: State::Pending,
                    previous_upstream_status: previous_raw.clone(),
                }),
                changed: d.changed,
            });
            if d.state.is_final() {
                self.reach_deadline.observe(d.state == State::TimedOut);
                if d.state == State::TimedOut {
                    tracing::info!(kind = %e.kind.name, id = %e.id, "payment timed out");
                }
            } else {
                let gen = self.next_gen();
                e.gen = gen;
                self.pools[p].heap.push(Reverse((e.due, gen, e.pk)));
                self.entries.insert(e.pk, e);
            }
        }
        if let Some(kind) = list_kind {
            let stretch = self.pools[p].clock.stretch();
            let cadence = if min_every == i64::MAX {
                0
            } else {
                (min_every as f64 * stretch) as i64
            };
            self.pools[p]
                .list_not_before
                .insert(kind.name.clone(), now + cadence);
        }
        let pool = &mut self.pools[p];
        if throttled {
            pool.throttled += 1;
            let pause = done
                .retry_after_ms
                .unwrap_or_else(|| backoff_ms(pool.throttled, 1000));
            pool.budget.pause(now + pause);
            if done.observations.iter().any(|o| {
                matches!(
                    o,
                    Observation::Error {
                        class: ErrorClass::RateLimited,
                        ..
                    }
                )
            }) {
                let limit = pool.budget.shrink(now);
                tracing::error!(
                    pool = %pool.name, used_before, new_limit = limit, pause_ms = pause,
                    "Ninjapay answered 429 although the budget had room: another client may share the key, or the limit is lower than configured; lowering the limit in force"
                );
                self.telemetry.unexpected_429();
            } else {
                tracing::warn!(pool = %pool.name, pause_ms = pause, "Ninjapay unavailable; pausing this key");
            }
        } else if any_answer {
            pool.throttled = 0;
        }
        match auth_failed {
            Some(kind) => {
                let entry = pool.auth_failing.entry(kind.clone()).or_insert((now, 0));
                let report_every = 60_000.min(pool.budget.window_ms());
                if now - entry.1 >= report_every {
                    entry.1 = now;
                    tracing::error!(kind = %kind, pool = %pool.name, "Ninjapay refuses the API key (401/403); checks of this kind are paused to probes until it works again");
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
        let ledger = done.ledger.map(|l| (l, now));
        if !records.is_empty() || ledger.is_some() {
            if let Err(e) = self.records.try_send((records, ledger)) {
                // The recorder is full (a stalled disk): wait in a task rather than block
                // the scheduler; order per payment is kept because a payment has one check
                // in flight at a time.
                let tx = self.records.clone();
                if let mpsc::error::TrySendError::Full(v) = e {
                    tokio::spawn(async move {
                        let _ = tx.send(v).await;
                    });
                }
            }
        }
    }

    /// Recomputes each pool's stretch from the projected demand of the next window, and
    /// re-plans every waiting payment when it changed noticeably.
    fn restretch(&mut self, now: UnixMs) {
        for p in 0..self.pools.len() {
            self.pools[p].budget.recover(now);
            let window = self.pools[p].budget.window_ms();
            let target = self.pools[p].budget.effective_limit() as f64 * PLAN_SHARE;
            let clock = self.pools[p].clock;
            let members: Vec<&Entry> = self.entries.values().filter(|e| e.pool == p).collect();
            let reach_deadline = self.reach_deadline.share();
            let demand = |f: f64| -> f64 {
                let mut n = 0.0;
                let mut lists: HashMap<&str, f64> = HashMap::new();
                for e in &members {
                    let v_now = (clock.to_virtual(now) - e.v_anchor) as i64;
                    // Slots run until the real deadline at most (then the deadline check
                    // replaces them); one overdue check counts once, however many slots
                    // it missed.
                    let horizon = window.min((e.deadline - now).max(0));
                    let to = v_now + (horizon as f64 / f) as i64;
                    let mut c = self.ladder.checks_between(
                        e.jitter,
                        Some(v_now),
                        to.min(self.ladder.timeout_ms() - 1),
                    ) as f64;
                    if e.due <= now {
                        c += 1.0;
                    }
                    if e.deadline <= now + window && e.deadline > now {
                        c += reach_deadline;
                    }
                    if e.kind.is_list() {
                        let slot = lists.entry(e.kind.name.as_str()).or_insert(0.0);
                        *slot = slot.max(c);
                    } else {
                        n += c;
                    }
                }
                n + lists.values().sum::<f64>()
            };
            let mut f = 1.0;
            if demand(1.0) > target {
                let (mut lo, mut hi) = (1.0f64, 2.0f64);
                // Past MAX_STRETCH only deadline checks are left; stretching further
                // changes nothing but the figure on the dashboard.
                while demand(hi) > target && hi < MAX_STRETCH {
                    lo = hi;
                    hi *= 2.0;
                }
                for _ in 0..20 {
                    let mid = (lo + hi) / 2.0;
                    if demand(mid) > target {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                f = hi.min(MAX_STRETCH);
            }
            tracing::debug!(pool = %self.pools[p].name, pending = members.len(), stretch = f, target, "stretch re-evaluated");
            let old = self.pools[p].clock.stretch();
            if (f - old).abs() / old > 0.05 || (f == 1.0 && old != 1.0) {
                self.pools[p].clock.set_stretch(now, f);
                tracing::info!(pool = %self.pools[p].name, stretch = f, "request budget scarce: plans stretched");
                self.replan_pool(p);
            }
            let pool = &mut self.pools[p];
            let lateness = std::mem::take(&mut pool.lateness_ms);
            let pending = self.entries.values().filter(|e| e.pool == p).count();
            self.telemetry.pool(PoolSnapshot {
                name: pool.name.clone(),
                budget_limit: pool.budget.limit(),
                budget_effective: pool.budget.effective_limit(),
                budget_used: pool.budget.used(now),
                window_ms: window,
                stretch: pool.clock.stretch(),
                pending,
                paused_until: pool.budget.paused_until(now),
                auth_failing: pool.auth_failing.keys().cloned().collect(),
                lateness_ms: lateness,
            });
        }
    }

    fn replan_pool(&mut self, p: usize) {
        let clock = self.pools[p].clock;
        let mut heap = BinaryHeap::new();
        let ladder = &self.ladder;
        for e in self
            .entries
            .values_mut()
            .filter(|e| e.pool == p && !e.in_flight)
        {
            if e.planned.is_some() {
                plan(ladder, &clock, e);
            }
            heap.push(Reverse((e.due, e.gen, e.pk)));
        }
        self.pools[p].heap = heap;
    }
}

/// Sets a payment's next due time from the ladder on its pool's virtual clock, capped by
/// its deadline on the wall clock.
fn plan(ladder: &Ladder, clock: &VirtualClock, e: &mut Entry) {
    let last = e.v_last.map(|v| (v - e.v_anchor).floor() as i64);
    match ladder.next_slot_after(e.jitter, last) {
        Some(slot) if slot < ladder.timeout_ms() => {
            let v = e.v_anchor + slot as f64;
            e.planned = Some(v);
            e.due = clock.to_real(v).min(e.deadline);
        }
        _ => {
            e.planned = None;
            e.due = e.deadline;
        }
    }
}

/// Exponential back-off with jitter: `base`, doubling per failure, up to 5 minutes.
fn backoff_ms(failures: u32, base: i64) -> i64 {
    let exp = base
        .max(1)
        .saturating_mul(1 << failures.min(16).saturating_sub(1));
    let capped = exp.min(300_000);
    capped / 2 + fastrand::i64(0..=capped / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(raw: &str, state: Option<State>) -> Observation {
        Observation::Status {
            raw: raw.into(),
            state,
            response: json!({"status": raw}),
        }
    }

    #[test]
    fn decide_maps_flips_and_timeouts() {
        let d = decide(
            None,
            &status("approved", Some(State::Succeeded)),
            10,
            100,
            200,
        );
        assert_eq!(d.state, State::Succeeded);
        assert_eq!(d.event, Some(crate::webhooks::STATUS_CHANGED));
        let d = decide(None, &status("pending", Some(State::Pending)), 10, 100, 200);
        assert_eq!((d.state, d.event, d.changed), (State::Pending, None, false));
        let d = decide(
            Some("pending"),
            &status("pending", Some(State::Pending)),
            100,
            100,
            200,
        );
        assert_eq!(d.state, State::TimedOut);
        assert_eq!(d.event, Some(crate::webhooks::TIMED_OUT));
        let d = decide(None, &status("weird", None), 10, 100, 200);
        assert_eq!(d.state, State::Pending);
        assert!(d.error.unwrap().contains("weird"));
        assert!(d.changed);
    }

    #[test]
    fn unanswered_checks_do_not_settle_the_deadline() {
        let err = |class| Observation::error(class, "x".into(), None);
        assert_eq!(
            decide(None, &err(ErrorClass::Transport), 150, 100, 200).state,
            State::Pending
        );
        assert_eq!(
            decide(None, &err(ErrorClass::Transport), 200, 100, 200).state,
            State::TimedOut
        );
        // 404 at the deadline: the payment never appeared.
        let d = decide(None, &err(ErrorClass::NotFound), 100, 100, 200);
        assert_eq!(d.state, State::TimedOut);
        assert_eq!(d.error.as_deref(), Some("x"));
    }

    #[test]
    fn virtual_clock_stretches_remaining_plans_by_one_factor() {
        let mut c = VirtualClock::identity(1000);
        assert_eq!(c.to_real(1500.0), 1500);
        c.set_stretch(1000, 2.0);
        assert_eq!(c.to_real(1500.0), 2000);
        assert!((c.to_virtual(3000) - 2000.0).abs() < 1e-9);
        c.set_stretch(3000, 1.0);
        assert_eq!(c.to_real(2500.0), 3500);
    }

    #[test]
    fn deadline_share_learns_from_finished_payments() {
        let mut s = DeadlineShare::default();
        assert_eq!(s.share(), 1.0);
        for _ in 0..200 {
            s.observe(false);
        }
        assert_eq!(s.share(), 0.1, "never trusted below 10%");
        for _ in 0..50 {
            s.observe(true);
        }
        assert!(s.share() > 0.6, "{}", s.share());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for f in 1..30 {
            let b = backoff_ms(f, 1000);
            assert!((500..=300_000).contains(&b), "{b}");
        }
    }
}
