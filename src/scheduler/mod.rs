//! The scheduler: decides which payment to check when, within each key's budget, and
//! hands each check's outcome to the recorder for a group commit.
//!
//! Every decision lives in the synchronous [`core`] (state + event + `now` → actions), so
//! unit tests and the simulator drive it on simulated time. This module is the driver:
//! one tokio task that waits (next due time, a command, an answer, a ledger refill, a
//! tick, shutdown), hands the core what happened, and performs what it asks (requests,
//! commits, ledger refills). It never scans the database on a timer.

mod core;
mod decide;
mod late;
mod pools;
mod recorder;

pub use self::core::memory_horizon_ms;
pub use self::core::{
    Action, Completion, Core, CoreConfig, InvalidId, Outcome, PoolId, PoolSpec, Request, Tracked,
    Watched,
};
pub use self::late::LatePolicy;
pub use self::pools::core_config;
pub use crate::status::PoolStatus;

use self::recorder::{ledger_loop, record_loop, RecordBatch, Refill, Refilled};
use crate::config::Config;
use crate::payment::{now_ms, PaymentId, PaymentKey, SchedMs, WallMs};
use crate::secret::Secret;
use crate::store::{PendingRow, Store, WatchedRow};
use crate::systemd::{Notifier, Watchdog};
use crate::telemetry::Telemetry;
use crate::upstream::Upstream;
use anyhow::Result;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

/// A request to the scheduler from the API.
#[derive(Debug)]
pub enum Command {
    /// Start tracking a pending payment (new, or already stored; duplicates are ignored).
    Track(PendingRow),
    /// Stop tracking (cancelled).
    Untrack(PaymentKey),
    /// Check soon: a hint, coalesced (see [`Core::recheck`]). The reply carries when the
    /// check is due (wall clock), or `None` when the payment is not held.
    Recheck(PaymentKey, Option<oneshot::Sender<Option<WallMs>>>),
    /// Check a final payment that may still move, at its stored next check (a merchant's
    /// recheck after the ladder ended it); held already, it is a [`Command::Recheck`].
    Rewatch(WatchedRow, Option<oneshot::Sender<Option<WallMs>>>),
}

/// What the scheduler last published for health and metrics: `at` every tick, the keys'
/// state every tick or, with many keys, every few (see [`PUBLISH_KEYS_PER_TICK`]).
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Each key's state; paused times on the wall clock.
    pub pools: Vec<PoolStatus>,
    /// When it was published (wall clock): an old one means the scheduler's loop is stuck.
    pub at: WallMs,
}

/// The API's handle on the scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Published>,
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

    /// The scheduler's latest published status.
    pub fn status(&self) -> Published {
        self.status.borrow().clone()
    }
}

/// The scheduler's clock: monotonic, so a jump of the wall clock neither forgets spent
/// budget (forward) nor stalls every timer (backward). It reads as unix milliseconds at
/// start; wall-clock times from the database are converted at the boundary.
#[derive(Clone, Copy)]
struct Clock {
    /// Wall time at start, in microseconds.
    base_us: i64,
    start: tokio::time::Instant,
}

fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Clock {
    fn new() -> Self {
        Self {
            base_us: wall_us(),
            start: tokio::time::Instant::now(),
        }
    }

    fn now_us(&self) -> i64 {
        self.base_us + self.start.elapsed().as_micros() as i64
    }

    fn now(&self) -> SchedMs {
        SchedMs(self.now_us() / 1000)
    }

    /// Wall time minus scheduler time, now, in whole milliseconds: 0 until the wall
    /// clock is stepped (measured in microseconds, so rounding does not make it flicker).
    fn offset(&self) -> i64 {
        let us = wall_us() - self.now_us();
        (us as f64 / 1000.0).round() as i64
    }

    /// A wall-clock time (the database's) on the scheduler's clock: the one place wall
    /// time becomes scheduler time.
    fn sched(&self, wall: WallMs) -> SchedMs {
        SchedMs(wall.as_ms().saturating_sub(self.offset()))
    }

    /// A scheduler time on the wall clock (for the database, health and metrics): the one
    /// place scheduler time becomes wall time.
    fn wall(&self, sched: SchedMs) -> WallMs {
        WallMs(sched.as_ms().saturating_add(self.offset()))
    }

    /// A stored pending payment as the core tracks it: its times on the core's clock.
    fn tracked(&self, row: PendingRow) -> Result<Tracked, InvalidId> {
        let id = PaymentId::parse(&row.id).map_err(|_| InvalidId { pk: row.pk })?;
        Ok(Tracked {
            pk: row.pk,
            account: row.account,
            kind: row.kind,
            id,
            upstream_status: row.upstream_status,
            started_at: self.sched(row.started_at),
            jitter_ms: row.jitter_ms,
            next_check_at: row.next_check_at.map(|t| self.sched(t)),
            last_checked_at: row.last_checked_at.map(|t| self.sched(t)),
        })
    }

    /// A stored watched payment as the core watches it: its times on the core's clock.
    fn watched(&self, row: WatchedRow) -> Result<Watched, InvalidId> {
        let id = PaymentId::parse(&row.id).map_err(|_| InvalidId { pk: row.pk })?;
        Ok(Watched {
            pk: row.pk,
            account: row.account,
            kind: row.kind,
            id,
            state: row.state,
            upstream_status: row.upstream_status,
            started_at: self.sched(row.started_at),
            next_check_at: self.sched(row.next_check_at),
            seen_at: row.seen_at.map(|t| self.sched(t)),
            ended_state: row.ended_state,
        })
    }

    /// The core's outcome as the store records it: its times on the wall clock.
    fn record(&self, o: Outcome) -> crate::store::CheckRecord {
        crate::store::CheckRecord {
            pk: o.pk,
            checked_at: self.wall(o.checked_at),
            upstream_status: o.upstream_status,
            state: o.state,
            response: o.response,
            error: o.error,
            next_check_at: o.next_check_at.map(|t| self.wall(t)),
            event: o.event,
            changed: o.changed,
            saw_pending: o.saw_pending,
            watch: o.watch.map(|w| crate::store::WatchCheck {
                asked: w.asked,
                unchanged: w.unchanged,
            }),
        }
    }
}

/// Hands a stored pending payment to the core (one whose id does not parse is not polled).
fn track(core: &mut Core, clock: &Clock, row: PendingRow, now: SchedMs, resumed: bool) {
    match clock.tracked(row) {
        Ok(t) => core.track(t, now, resumed),
        Err(e) => {
            tracing::warn!(error = %e, "payment with an invalid id in the database is not polled")
        }
    }
}

/// Hands a stored watched payment to the core; when its next check is due.
fn watch(core: &mut Core, clock: &Clock, row: WatchedRow, now: SchedMs) -> Option<SchedMs> {
    match clock.watched(row) {
        Ok(w) => core.watch(w, now),
        Err(e) => {
            tracing::warn!(error = %e, "payment with an invalid id in the database is not watched");
            None
        }
    }
}

/// What was spent before a restart still counts: the newest rows by insertion order (no
/// window holds more than the limit, so twice that covers reserved rows too), each dated
/// by the boot clock where it can be, whatever the wall clock did.
async fn restore_ledger(
    core: &mut Core,
    clock: &Clock,
    store: &Store,
    budget_requests: u32,
    wall: WallMs,
) -> Result<()> {
    let boot = crate::boot::now();
    let newest = 2 * budget_requests;
    for row in store.ledger_newest(newest).await? {
        let boot_now = boot.as_ref().map(|(id, ms)| (id.as_str(), *ms));
        let done = crate::budget::restored_done_at(&row, wall, boot_now);
        core.restore_spent(&row.pool, Some(clock.sched(done)), clock.now());
    }
    Ok(())
}

/// What was learnt before a restart, rebuilt from the payments themselves: the flip ages
/// of the finished ones (how many, returned). The learner's whole long memory, not only
/// its recent one: a restart would otherwise leave a busy key learning from a fraction of
/// what it had.
async fn restore_learning(
    core: &mut Core,
    clock: &Clock,
    store: &Store,
    wall: WallMs,
) -> Result<usize> {
    let horizon = core.memory_ms();
    let finished = store
        .finished_since(wall - horizon, crate::store::EVIDENCE_ROWS)
        .await?;
    let learnt = finished.len();
    for row in finished {
        let (pending_seen, final_seen) = row.evidence_times();
        core.learn(
            &row.account,
            &row.kind,
            clock.sched(row.started_at),
            pending_seen.map(|t| clock.sched(t)),
            final_seen.map(|t| clock.sched(t)),
        );
    }
    Ok(learnt)
}

/// The pending payments, tracked again; how many.
async fn resume_pending(core: &mut Core, clock: &Clock, store: &Store) -> Result<usize> {
    let pending = store.pending().await?;
    let resumed = pending.len();
    for row in pending {
        track(core, clock, row, clock.now(), true);
    }
    Ok(resumed)
}

/// Reconciliation: what was learnt of late moves, and the payments still watched (how
/// many).
async fn resume_watched(
    core: &mut Core,
    clock: &Clock,
    store: &Store,
    wall: WallMs,
) -> Result<usize> {
    let late = store
        .watch_evidence(wall - core.late_memory_ms(), crate::store::EVIDENCE_ROWS)
        .await?;
    for row in late {
        core.learn_late(
            &row.kind,
            row.ended_state,
            clock.sched(row.started_at),
            row.seen_at.map(|t| clock.sched(t)),
            row.moved_at.map(|t| clock.sched(t)),
        );
    }
    let watched = store.watched().await?;
    let watching = watched.len();
    for row in watched {
        watch(core, clock, row, clock.now());
    }
    Ok(watching)
}

/// Spawns the scheduler and its recorder. Returns the handle for the API and the join
/// handle that completes once both have drained. The driver's loop feeds `notifier`'s
/// watchdog and publishes its `STATUS=` line.
pub async fn spawn(
    config: &Config,
    store: Store,
    telemetry: Arc<Telemetry>,
    webhook_wake: Arc<Notify>,
    cancel: CancellationToken,
    notifier: Notifier,
) -> Result<(SchedulerHandle, tokio::task::JoinHandle<()>)> {
    let upstream = Upstream::new(&config.ninjapay)?;
    let clock = Clock::new();
    let (core_cfg, keys) = core_config(config, fastrand::u64(..));
    let window = core_cfg.budget_window_ms;
    let mut core = Core::new(core_cfg, clock.now());
    let wall = now_ms();
    // Every key's budget (each account's, and each of the account default's kinds with
    // a key of its own): the ledger's newest rows must cover each key's window.
    let own_keys = config
        .kinds
        .values()
        .filter(|k| k.api_key.is_some())
        .count();
    let budgets = config
        .accounts
        .values()
        .map(|a| a.budget_requests)
        .chain(std::iter::repeat_n(
            config.ninjapay.budget_requests,
            own_keys,
        ))
        .fold(0, u32::saturating_add);
    restore_ledger(&mut core, &clock, &store, budgets, wall).await?;
    let learnt = restore_learning(&mut core, &clock, &store, wall).await?;
    // Rows of a previous run that never got an answer were counted above as answered now;
    // record that, so housekeeping can forget them after a window.
    store.ledger_close_open(wall).await?;
    let resumed = resume_pending(&mut core, &clock, &store).await?;
    let watching = resume_watched(&mut core, &clock, &store, wall).await?;
    core.tick(clock.now());
    tracing::info!(
        resumed,
        watching,
        learnt,
        "scheduler resuming pending payments"
    );
    // Published before the API serves, so health never shows an empty scheduler.
    let (status_tx, status_rx) = watch::channel(Published::default());

    let (rec_tx, rec_rx) = mpsc::channel(1024);
    let (refill_tx, refill_rx) = mpsc::channel(64);
    let (refilled_tx, refilled_rx) = mpsc::channel(64);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let ledger = tokio::spawn(ledger_loop(
        store.clone(),
        telemetry.clone(),
        refill_rx,
        refilled_tx,
        cancel.clone(),
    ));
    let recorder = tokio::spawn(record_loop(
        store.clone(),
        rec_rx,
        telemetry.clone(),
        webhook_wake,
        cmd_tx.clone(),
        cancel.clone(),
    ));
    let mut driver = Driver {
        core,
        clock,
        keys,
        upstream,
        telemetry,
        records: rec_tx,
        refill: refill_tx,
        store,
        window,
        backlog: Default::default(),
        status: status_tx,
        watchdog: Watchdog::new(&notifier),
        status_line: StatusLine::new(notifier),
        ticks_unpublished: 0,
    };
    driver.publish(driver.clock.now());
    let task = tokio::spawn(async move {
        driver.run(cmd_rx, refilled_rx, cancel).await;
        // The driver dropped its senders: the recorder drains and stops, the ledger
        // writer stops.
        for (name, task) in [("recorder", recorder), ("ledger writer", ledger)] {
            if let Err(e) = task.await {
                tracing::error!(error = %e, task = name, "scheduler task failed");
            }
        }
    });
    Ok((
        SchedulerHandle {
            tx: cmd_tx,
            status: status_rx,
        },
        task,
    ))
}

struct Driver {
    core: Core,
    clock: Clock,
    keys: Vec<Option<Secret>>,
    upstream: Upstream,
    telemetry: Arc<Telemetry>,
    records: mpsc::Sender<RecordBatch>,
    refill: mpsc::Sender<Refill>,
    store: Store,
    window: i64,
    /// Outcomes waiting for room in the recorder's channel, oldest first.
    backlog: std::collections::VecDeque<RecordBatch>,
    /// Where health and metrics read the scheduler's state.
    status: watch::Sender<Published>,
    /// Fed every time the loop turns: a scheduler that stops turning is restarted by
    /// systemd rather than pinged by some other, healthy task.
    watchdog: Option<Watchdog>,
    status_line: StatusLine,
    /// Ticks since the keys' state was last published.
    ticks_unpublished: usize,
}

/// The service's `STATUS=` line: what `systemctl status` shows.
struct StatusLine {
    notifier: Notifier,
    last: String,
    sent_at: Option<tokio::time::Instant>,
}

impl StatusLine {
    /// At most one update a second: the line is for people.
    const EVERY: Duration = Duration::from_secs(1);

    fn new(notifier: Notifier) -> Self {
        Self {
            notifier,
            last: String::new(),
            sent_at: None,
        }
    }

    fn publish(&mut self, pools: &[PoolStatus]) {
        if !self.notifier.enabled() || self.sent_at.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        let line = status_line(pools);
        if line != self.last {
            self.notifier.status(&line);
            self.sent_at = Some(tokio::time::Instant::now());
            self.last = line;
        }
    }
}

/// Keys the status line names one by one; with more, it sums them up (systemd drops a
/// notification of 4 KiB or more).
const STATUS_KEYS: usize = 4;

/// The status line of many keys: their budgets together, how many are scarce, and the
/// largest backlog.
fn status_summary(pending: usize, pools: &[PoolStatus]) -> String {
    let used: u64 = pools.iter().map(|p| u64::from(p.budget_used)).sum();
    let limit: u64 = pools.iter().map(|p| u64::from(p.budget_effective)).sum();
    let scarce = pools.iter().filter(|p| p.price_level > 0.0).count();
    let mut line = format!(
        "{pending} pending; {} keys: budget {used}/{limit} in all, {scarce} scarce",
        pools.len()
    );
    if let Some(worst) = pools
        .iter()
        .filter(|p| p.backlog > 0)
        .max_by_key(|p| p.backlog)
    {
        let behind = pools.iter().filter(|p| p.backlog > 0).count();
        line.push_str(&format!(
            ", {behind} with a backlog (largest: {} {}, {} behind)",
            worst.name,
            worst.backlog,
            humantime::format_duration(worst.behind())
        ));
    }
    line
}

/// The status line for the keys' snapshots: payments being polled, then each key's
/// budget use in its current window (and whether it is scarce, so checks go by age).
pub fn status_line(pools: &[PoolStatus]) -> String {
    let pending: usize = pools.iter().map(|p| p.pending).sum();
    if pools.len() > STATUS_KEYS {
        return status_summary(pending, pools);
    }
    let budgets: Vec<String> = pools
        .iter()
        .map(|p| {
            let name = if pools.len() > 1 {
                format!("{}: ", p.name)
            } else {
                String::new()
            };
            let scarce = if p.price_level > 0.0 {
                " (scarce: checks by age)"
            } else {
                ""
            };
            // A burst's backlog is what an operator looking at `systemctl status` after
            // one wants to see first: how big, how far behind, and for how long yet.
            let backlog = if p.backlog > 0 {
                format!(
                    ", backlog {} ({} behind{})",
                    p.backlog,
                    humantime::format_duration(p.behind()),
                    p.backlog_drains_in()
                        .map(|d| format!(", drains in {}+", humantime::format_duration(d)))
                        .unwrap_or_default()
                )
            } else {
                String::new()
            };
            format!(
                "budget {name}{}/{} per {}{scarce}{backlog}",
                p.budget_used,
                p.budget_effective,
                humantime::format_duration(p.window())
            )
        })
        .collect();
    format!("{pending} pending; {}", budgets.join("; "))
}

/// Keys whose state is gathered for health and metrics each tick: with more, the full
/// state is gathered every few ticks (a thousand keys: every five) and in between only
/// the report's time moves on. Gathering walks every payment, and a second's staleness in
/// a health screen is worth less than the checks that time would make.
const PUBLISH_KEYS_PER_TICK: usize = 200;

/// Ticks between two gatherings of the keys' state for `pools` keys.
fn ticks_per_publish(pools: usize) -> usize {
    pools.div_ceil(PUBLISH_KEYS_PER_TICK).max(1)
}

/// Most answers taken in one turn of the scheduler's loop before it polls again (and
/// looks at a shutdown).
const ANSWERS_PER_TURN: usize = 64;

impl Driver {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::UnboundedReceiver<Command>,
        mut refilled: mpsc::Receiver<Refilled>,
        cancel: CancellationToken,
    ) {
        let (done_tx, mut done_rx) = mpsc::channel::<Completion>(1024);
        let tick_ms = (self.window / 600).clamp(20, 1000);
        let mut tick = tokio::time::interval(Duration::from_millis(tick_ms as u64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut actions = Vec::new();
        loop {
            if let Some(w) = &mut self.watchdog {
                w.turned(tokio::time::Instant::now());
            }
            let now = self.clock.now();
            // A stalled disk fills the recorder's channel: outcomes wait in the backlog
            // (bounded by the checks in flight) and no new check starts until it drains.
            if self.backlog.is_empty() {
                self.core.poll(now, &mut actions);
            }
            self.perform(&mut actions, &done_tx);
            let wake = self.core.next_wake(now);
            let mut sleep_for = Duration::from_millis(
                wake.map(|w| (w - now).clamp(0, 3_600_000) as u64)
                    .unwrap_or(3_600_000),
            );
            if let Some(w) = &self.watchdog {
                sleep_for = sleep_for.min(w.max_sleep());
            }
            let sleep = tokio::time::sleep(sleep_for);
            let records = self.records.clone();
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = cmd_rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                Some(done) = done_rx.recv() => {
                    self.complete(done);
                    // Answers that came meanwhile, before the next poll: with many keys
                    // answers come faster than one poll and one timer each can follow.
                    for _ in 1..ANSWERS_PER_TURN {
                        match done_rx.try_recv() {
                            Ok(done) => self.complete(done),
                            Err(_) => break,
                        }
                    }
                }
                Some(r) = refilled.recv() => self.core.refilled(r.pool, Some(r.keys)),
                permit = records.reserve(), if !self.backlog.is_empty() => {
                    if let (Ok(permit), Some(batch)) = (permit, self.backlog.pop_front()) {
                        permit.send(batch);
                    }
                }
                _ = tick.tick() => {
                    let now = self.clock.now();
                    self.core.tick(now);
                    let every = ticks_per_publish(self.core.pools());
                    self.ticks_unpublished += 1;
                    if self.ticks_unpublished >= every {
                        self.ticks_unpublished = 0;
                        self.publish(now);
                    } else {
                        let at = self.clock.wall(now);
                        self.status.send_modify(|p| p.at = at);
                    }
                }
                _ = sleep => {}
            }
        }
        // Shutdown: no new checks; the ones in flight finish (bounded by the request
        // timeout) and are recorded. Whatever did not start stays due in the database.
        drop(done_tx);
        while self.core.in_flight() > 0 {
            match done_rx.recv().await {
                Some(done) => self.complete(done),
                None => break,
            }
        }
        // Hand over what is waiting; the recorder gives up on it only if the disk never
        // comes back, and then the payments are still pending and due in the database.
        for batch in self.backlog.drain(..) {
            if self.records.send(batch).await.is_err() {
                break;
            }
        }
        // Reserved rows that no request used are not spent budget.
        let unused = self.core.drain_reserve();
        if let Err(e) = self.store.ledger_release(&unused).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not release unused budget ledger rows"
            );
        }
        tracing::info!("scheduler stopped");
    }

    fn command(&mut self, cmd: Command) {
        let now = self.clock.now();
        match cmd {
            Command::Track(row) => track(&mut self.core, &self.clock, row, now, false),
            Command::Untrack(pk) => self.core.untrack(pk),
            Command::Recheck(pk, reply) => {
                let at = self.core.recheck(pk, now);
                if let Some(reply) = reply {
                    let _ = reply.send(at.map(|t| self.clock.wall(t)));
                }
            }
            Command::Rewatch(row, reply) => {
                let pk = row.pk;
                let at = match self.core.recheck(pk, now) {
                    Some(at) => Some(at),
                    None => watch(&mut self.core, &self.clock, row, now),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(at.map(|t| self.clock.wall(t)));
                }
            }
        }
    }

    fn perform(&mut self, actions: &mut Vec<Action>, done_tx: &mpsc::Sender<Completion>) {
        for action in actions.drain(..) {
            match action {
                Action::Send(req) => self.send(req, done_tx),
                Action::Record(records) => {
                    let batch = RecordBatch {
                        records: records.into_iter().map(|o| self.clock.record(o)).collect(),
                        ledger: None,
                    };
                    if let Err(mpsc::error::TrySendError::Full(batch)) =
                        self.records.try_send(batch)
                    {
                        self.backlog.push_back(batch);
                    }
                }
                Action::Refill {
                    pool,
                    ledger_id,
                    count,
                } => {
                    let refill = Refill {
                        pool,
                        ledger_id,
                        count,
                    };
                    if self.refill.try_send(refill).is_err() {
                        // The writer is busy: the core asks again on its next poll.
                        self.core.refilled(pool, None);
                    }
                }
            }
        }
    }

    fn send(&mut self, req: Request, done_tx: &mpsc::Sender<Completion>) {
        self.telemetry.request(&req.kind.name);
        let Some(Some(key)) = self.keys.get(req.pool.index()).cloned() else {
            return;
        };
        let upstream = self.upstream.clone();
        let done_tx = done_tx.clone();
        let clock = self.clock;
        let telemetry = self.telemetry.clone();
        let started: Vec<WallMs> = req.started.iter().map(|t| clock.wall(*t)).collect();
        tokio::spawn(async move {
            let refs: Vec<&crate::payment::PaymentId> = req.ids.iter().collect();
            let listing = req.kind.is_list().then_some((req.list_limit, &started[..]));
            let started_at = std::time::Instant::now();
            let answer = upstream.check(&req.kind, &key, &refs, listing).await;
            telemetry.latency(&req.kind.name, started_at.elapsed().as_millis() as i64);
            let _ = done_tx
                .send(Completion {
                    pool: req.pool,
                    pks: req.pks,
                    observations: answer.observations,
                    retry_after_ms: answer.retry_after_ms,
                    sent_at: req.sent_at,
                    done_at: clock.now(),
                    ledger: req.ledger,
                })
                .await;
        });
    }

    fn complete(&mut self, done: Completion) {
        if Core::rate_limited(&done) {
            self.telemetry.unexpected_429();
        }
        let out = self.core.complete(&done);
        for (i, kind, state) in &out.checked {
            if let Some(obs) = done.observations.get(*i) {
                self.telemetry.check(&kind.name, obs, *state);
            }
        }
        let ledger = out.ledger.map(|(l, at)| (l, self.clock.wall(at)));
        if out.records.is_empty() && ledger.is_none() {
            return;
        }
        let batch = RecordBatch {
            records: out
                .records
                .into_iter()
                .map(|o| self.clock.record(o))
                .collect(),
            ledger,
        };
        // Outcomes are in no other place: never dropped. When the recorder is full they
        // wait, in order, in the backlog.
        if !self.backlog.is_empty() {
            self.backlog.push_back(batch);
        } else if let Err(mpsc::error::TrySendError::Full(batch)) = self.records.try_send(batch) {
            self.backlog.push_back(batch);
        }
    }

    fn publish(&mut self, now: SchedMs) {
        let clock = self.clock;
        let mut pools: Vec<PoolStatus> = (self.core.status(now).into_iter())
            .map(|s| s.on_clock(|t| clock.wall(t)))
            .collect();
        self.status_line.publish(&pools);
        for s in &mut pools {
            self.telemetry.lateness(
                &s.name,
                &std::mem::take(&mut s.lateness_ms),
                &std::mem::take(&mut s.budget_wait_ms),
            );
        }
        self.status.send_replace(Published {
            pools,
            at: clock.wall(now),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::AccountName;

    /// A cancel that races an enqueue can leave the scheduler told to track a payment after
    /// it was told to forget it (the enqueue's hand-over arriving last). The database
    /// decides: the first outcome finds the payment cancelled, and the scheduler forgets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_that_raced_an_enqueue_leaves_nothing_polled() {
        use crate::store::{NewPayment, Store};
        use ninjapoll_fake::{FakeNinjapay, FakeOptions, Script};
        let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
        fake.script("p2p", "RACE", Script::Sequence(vec![]));
        let dir = tempfile::tempdir().unwrap();
        let mut raw = crate::config::defaults();
        raw.database.path = Some(dir.path().join("t.db"));
        raw.ninjapay.api_key = Some(FakeOptions::default().api_key);
        raw.ninjapay.prod_base_url = Some(fake.base_url());
        raw.ninjapay.api_base_url = Some(fake.base_url());
        let ms = Duration::from_millis;
        raw.schedule.first_check = Some(vec![ms(100), ms(120)]);
        raw.schedule.steps = Some(vec![
            crate::config::RawStep {
                every: ms(20),
                span: Some(ms(200)),
            },
            crate::config::RawStep {
                every: ms(100),
                span: None,
            },
        ]);
        raw.schedule.timeout = Some(ms(1500));
        let config = Config::from_raw(raw).unwrap();
        let store = Store::open(&config.database_path, None).await.unwrap();
        let cancel = CancellationToken::new();
        let (handle, task) = spawn(
            &config,
            store.clone(),
            Default::default(),
            Default::default(),
            cancel.clone(),
            Default::default(),
        )
        .await
        .unwrap();
        let now = crate::payment::now_ms();
        let rows = store
            .insert_payments(&[NewPayment {
                account: crate::account::AccountName::default(),
                kind: crate::kinds::KindName::parse("p2p").unwrap(),
                id: crate::payment::PaymentId::parse("RACE").unwrap(),
                started_at: now,
                jitter_ms: 100,
                next_check_at: now + 100,
                callback_url: None,
                metadata: None,
            }])
            .await
            .unwrap();
        let r = &rows[0].0;
        let stale = PendingRow {
            account: crate::account::AccountName::default(),
            pk: r.pk,
            kind: r.kind.clone(),
            id: r.id.clone(),
            upstream_status: None,
            started_at: r.started_at,
            jitter_ms: r.jitter_ms,
            next_check_at: r.next_check_at,
            last_checked_at: None,
        };
        // The cancel commits and hands over first; the enqueue's hand-over comes last.
        assert!(matches!(
            store.cancel("default", "p2p", "RACE").await,
            Ok(Some(Ok(_)))
        ));
        handle.send(Command::Untrack(r.pk)).unwrap();
        handle.send(Command::Track(stale)).unwrap();
        tokio::time::sleep(Duration::from_millis(900)).await;
        let asked = fake.requests_for("p2p", "RACE").len();
        assert!(asked <= 1, "a cancelled payment was polled {asked} times");
        let p = store.get("default", "p2p", "RACE").await.unwrap().unwrap();
        assert_eq!(p.state, crate::payment::State::Cancelled);
        cancel.cancel();
        task.await.unwrap();
    }

    fn pool(name: &str, pending: usize, used: u32, level: f64) -> PoolStatus {
        PoolStatus {
            name: name.into(),
            account: AccountName::default(),
            budget_limit: 1000,
            budget_effective: 1000,
            budget_used: used,
            window_ms: 600_000,
            price_level: level,
            projected: 0.0,
            target: 0.0,
            pending,
            arrivals_per_window: None,
            backlog: 0,
            behind_ms: 0,
            backlog_drains_in_ms: None,
            paused_until: None,
            auth_failing: Vec::new(),
            outage: Vec::new(),
            lateness_ms: Vec::new(),
            budget_wait_ms: Vec::new(),
            kinds: Vec::new(),
        }
    }

    /// Up to 200 keys their state is gathered every tick; a thousand, every fifth (the
    /// 10 s stuck rule reads `at`, which moves every tick).
    #[test]
    fn many_keys_are_gathered_every_few_ticks() {
        assert_eq!(ticks_per_publish(0), 1);
        assert_eq!(ticks_per_publish(1), 1);
        assert_eq!(ticks_per_publish(200), 1);
        assert_eq!(ticks_per_publish(201), 2);
        assert_eq!(ticks_per_publish(1_000), 5);
    }

    #[test]
    fn status_line_names_pending_and_budget() {
        assert_eq!(
            status_line(&[pool("default", 12, 340, 0.0)]),
            "12 pending; budget 340/1000 per 10m"
        );
        assert_eq!(
            status_line(&[pool("default", 12, 990, 2.0), pool("kind:btc", 3, 7, 0.0)]),
            "15 pending; budget default: 990/1000 per 10m (scarce: checks by age); \
             budget kind:btc: 7/1000 per 10m"
        );
        let burst = PoolStatus {
            backlog: 1820,
            behind_ms: 842_500,
            ..pool("default", 1900, 1000, 3.5)
        };
        assert_eq!(
            status_line(std::slice::from_ref(&burst)),
            "1900 pending; budget 1000/1000 per 10m (scarce: checks by age), backlog 1820 (14m 2s behind)"
        );
        let paced = PoolStatus {
            backlog_drains_in_ms: Some(5_400_000),
            ..burst
        };
        assert_eq!(
            status_line(&[paced]),
            "1900 pending; budget 1000/1000 per 10m (scarce: checks by age), backlog 1820 (14m 2s behind, drains in 1h 30m+)"
        );
    }

    #[test]
    fn with_many_accounts_the_status_line_sums_them_up_under_systemd_s_limit() {
        let mut pools: Vec<PoolStatus> = (0..1000)
            .map(|i| pool(&format!("account:a{i:04}"), 100, 990, 2.0))
            .collect();
        pools[7].backlog = 40;
        pools[7].behind_ms = 90_000;
        pools[9].backlog = 3;
        let line = status_line(&pools);
        assert_eq!(
            line,
            "100000 pending; 1000 keys: budget 990000/1000000 in all, 1000 scarce, \
             2 with a backlog (largest: account:a0007 40, 1m 30s behind)"
        );
        assert!(line.len() < 4096);
    }
}
