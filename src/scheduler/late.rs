//! The core's payments under reconciliation (see [`crate::reconcile`]): each one's planned
//! check at its key's late price, which of them are due, what a check of one decided, the
//! late-move ages learnt per kind, and the late price itself. Pure: the core
//! ([`super::Core`]) decides when a request may be spent on them and sends it.

use crate::event::{event_for, EventSpec};
use crate::kinds::{Kind, KindName, Observation};
use crate::payment::{PaymentId, PaymentKey, State, UnixMs};
use crate::policy::{Evidence, FlipDist, Learner};
use crate::reconcile::{next_age, LateGrid, LatePlans, LATE_PRICES};
use crate::store::{CheckRecord, WatchCheck};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// Which of the schedule's ages a watched payment is checked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatePolicy {
    /// The ages the kind's learnt late-move distribution makes worth the spare budget: at
    /// the price where the plans' requests meet what the live payments leave, each payment
    /// follows the dynamic program's choice of ages ([`crate::reconcile::LatePlans`]).
    #[default]
    Learnt,
    /// Every age of the schedule, the earliest due first: the spare budget spread evenly
    /// (what `benches/late.rs` measures the learnt choice against).
    InTurn,
}

/// Windows of watch starts the arrival rate of watched payments is read over.
const START_WINDOWS: i64 = 6;

/// How far the price of late checks moves in a window.
const PRICE_STEP: f64 = 1.0;

/// Weight of the newest window in the smoothed supply of spare requests.
const SMOOTHING: f64 = 0.2;

/// A watched payment, as the core resumes it or starts watching it (times on the core's
/// clock).
#[derive(Debug, Clone)]
pub struct WatchStart {
    pub pk: PaymentKey,
    pub kind: Arc<Kind>,
    pub id: PaymentId,
    pub pool: usize,
    pub started: UnixMs,
    pub state: State,
    pub ended: State,
    pub upstream_status: Option<String>,
    /// Last seen unmoved.
    pub seen: UnixMs,
}

struct Watched {
    pk: PaymentKey,
    kind: Arc<Kind>,
    id: PaymentId,
    pool: usize,
    t0: UnixMs,
    state: State,
    /// How the ladder ended it: the late-move model it belongs to.
    ended: State,
    upstream_status: Option<String>,
    seen: UnixMs,
    /// Index of the scheduled age its due check stands for.
    next: usize,
    due: UnixMs,
    in_flight: bool,
    /// A merchant asked (a coalesced hint): due at `due`, before the spare budget's turn.
    recheck: bool,
    /// Unanswered checks in a row.
    failures: u32,
    /// Already seen to move once (its evidence is in).
    moved: bool,
    /// Position of its last check on the schedule: ages at or before it.
    pos: usize,
    /// Its draw between two neighbouring price levels.
    draw: f64,
    /// No check planned at the pool's price: it waits for the price to fall, or the end.
    parked: bool,
    /// Its place in [`Queues::ahead`].
    ahead: Option<UnixMs>,
    /// Where it waits (see [`Queues`]).
    slot: Slot,
}

/// A group of due payments: one late-move model, last seen unmoved in the same cell (a list
/// kind's all in one, so one listing finds them).
type Bucket = (KindName, State, usize);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    None,
    Future(UnixMs),
    Due(Bucket, UnixMs),
    Recheck(UnixMs),
}

/// A pool's watched payments by where they wait, so that finding the next one costs a
/// logarithm, not a scan, however many are watched.
#[derive(Default)]
struct Queues {
    /// Scheduled, not due yet, by due time.
    future: BTreeSet<(UnixMs, PaymentKey)>,
    /// Due, by bucket, oldest start first.
    due: BTreeMap<Bucket, BTreeSet<(UnixMs, PaymentKey)>>,
    /// The same due payments by due time.
    in_turn: BTreeSet<(UnixMs, PaymentKey)>,
    /// A merchant's rechecks, by due time.
    rechecks: BTreeSet<(UnixMs, PaymentKey)>,
    /// Payments with ages of the schedule before their planned check (or none planned),
    /// by the first of those ages: checks the spare budget makes when no planned one is
    /// due, as the plans' checks are still to come.
    ahead: BTreeSet<(UnixMs, PaymentKey)>,
}

/// Per kind, what reconciliation did since start (for health and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Payments watched now.
    pub watched: usize,
    /// Moves seen after the ladder ended.
    pub late_moves: u64,
    /// Requests made for watched payments (one listing counts once).
    pub checks: u64,
    /// Scheduled checks that passed without a request (no spare budget).
    pub skipped: u64,
}

/// One late-move model: a kind's payments the ladder ended in one state.
struct Model {
    learner: Learner,
    dist: FlipDist,
    /// The kind's schedule, once a payment of it is watched, and the plans over it.
    schedule: Vec<i64>,
    plans: Option<LatePlans>,
}

/// A pool's price of late checks and what sets it.
#[derive(Default)]
struct Pricing {
    level: f64,
    /// Watch starts: when, and which model.
    starts: VecDeque<(UnixMs, (KindName, State))>,
    /// When the spare budget's late requests went, over the last window.
    spent: VecDeque<UnixMs>,
    /// Late requests the spare budget makes per window, smoothed.
    capacity: Option<f64>,
}

/// Every watched payment and the late-move models.
pub struct Watch {
    grid: LateGrid,
    policy: LatePolicy,
    entries: HashMap<PaymentKey, Watched>,
    queues: Vec<Queues>,
    /// When each watch ends at the latest (its last age plus the last gap).
    ends: BTreeSet<(UnixMs, PaymentKey)>,
    models: HashMap<(KindName, State), Model>,
    pricing: Vec<Pricing>,
    stats: BTreeMap<KindName, WatchStats>,
    /// How long the evidence of a watched payment is remembered.
    memory_ms: i64,
    window_ms: i64,
}

/// Requests a due watched payment may wait past its schedule's last age before its watch
/// ends without one: the schedule's last gap.
fn grace(schedule: &[i64]) -> i64 {
    match schedule {
        [.., a, b] => b - a,
        [a] => *a,
        [] => 0,
    }
}

impl Watch {
    /// `timeout_ms`: the ladder's (the watch starts there); `longest_ms`: the end of the
    /// longest schedule of any kind.
    pub fn new(
        pools: usize,
        timeout_ms: i64,
        longest_ms: i64,
        window_ms: i64,
        policy: LatePolicy,
    ) -> Self {
        let grid = LateGrid::new(timeout_ms, longest_ms);
        Self {
            grid,
            policy,
            entries: HashMap::new(),
            queues: (0..pools).map(|_| Queues::default()).collect(),
            ends: BTreeSet::new(),
            models: HashMap::new(),
            pricing: (0..pools).map(|_| Pricing::default()).collect(),
            stats: BTreeMap::new(),
            // Four whole watches: enough payments to learn from on a slow key, recent
            // enough to follow a change of the provider's habits within days.
            memory_ms: longest_ms.saturating_mul(4).max(window_ms),
            window_ms: window_ms.max(1),
        }
    }

    /// How far back a restart reads evidence of late moves.
    pub fn memory_ms(&self) -> i64 {
        self.memory_ms
    }

    pub fn holds(&self, pk: &PaymentKey) -> bool {
        self.entries.contains_key(pk)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn model(&mut self, kind: &KindName, ended: State) -> &mut Model {
        let (grid, memory) = (&self.grid, self.memory_ms);
        self.models
            .entry((kind.clone(), ended))
            .or_insert_with(|| Model {
                learner: Learner::new(grid.prior(), memory),
                dist: grid.prior(),
                schedule: Vec::new(),
                plans: None,
            })
    }

    /// The model of a watched kind's payments, with its plans.
    fn model_of(&mut self, kind: &Kind, ended: State) -> &mut Model {
        let grid = self.grid.clone();
        let m = self.model(&kind.name, ended);
        if m.plans.is_none() || m.schedule != kind.reconcile_after {
            m.schedule = kind.reconcile_after.clone();
            m.plans = Some(LatePlans::new(&grid, &m.dist, &m.schedule));
        }
        m
    }

    /// The schedule index of `e`'s next check after its last (`None`: none planned at the
    /// pool's price, or the schedule is over).
    fn planned(&self, e: &Watched, now: UnixMs) -> Option<usize> {
        let k = e.kind.reconcile_after.len();
        if e.pos >= k {
            return None;
        }
        // A listing sees every due payment of its kind at once: the whole schedule.
        if self.policy == LatePolicy::InTurn || e.kind.is_list() {
            return Some(e.pos);
        }
        let Some(plans) = self
            .models
            .get(&(e.kind.name.clone(), e.ended))
            .and_then(|m| m.plans.as_ref())
        else {
            return Some(e.pos);
        };
        let level = self.pricing.get(e.pool).map_or(0.0, |p| p.level);
        let lo = level.floor() as usize;
        let l = if e.draw < level - lo as f64 {
            lo + 1
        } else {
            lo
        };
        // An age the plan wanted that has passed unchecked (the price fell since) is not
        // made up: the plan goes on from the first of its ages still to come.
        let age = now - e.t0;
        let mut u = plans.next(l, e.pos);
        while u >= 1 && u <= k && e.kind.reconcile_after[u - 1] < age {
            u = plans.next(l, u);
        }
        (u >= 1 && u <= k).then(|| u - 1)
    }

    /// Sets `e`'s next check by [`Watch::planned`], or parks it.
    fn plan(&self, e: &mut Watched, now: UnixMs) {
        match self.planned(e, now) {
            Some(i) => {
                e.next = i;
                e.due = e.t0.saturating_add(e.kind.reconcile_after[i]);
                e.parked = false;
            }
            None => {
                e.next = e.kind.reconcile_after.len();
                e.due =
                    e.t0.saturating_add(e.kind.reconcile_after.last().copied().unwrap_or(0));
                e.parked = true;
            }
        }
    }

    /// Learns from a payment watched before a restart: last seen unmoved at `seen`, seen
    /// moved at `moved` (`None`: not seen to move).
    pub fn learn(
        &mut self,
        kind: &KindName,
        ended: State,
        started: UnixMs,
        seen: Option<UnixMs>,
        moved: Option<UnixMs>,
    ) {
        let e = self
            .grid
            .evidence(seen.map_or(0, |s| s - started), moved.map(|m| m - started));
        self.model(kind, ended).learner.observe(started, e);
    }

    /// Puts a held payment in the queue its fields say (it must be in none).
    fn enqueue(&mut self, pk: PaymentKey, now: UnixMs) {
        let grid = &self.grid;
        let Some(e) = self.entries.get_mut(&pk) else {
            return;
        };
        let Some(q) = self.queues.get_mut(e.pool) else {
            return;
        };
        e.slot = if e.in_flight || (e.parked && !e.recheck) {
            Slot::None
        } else if e.recheck {
            q.rechecks.insert((e.due, pk));
            Slot::Recheck(e.due)
        } else if e.due > now {
            q.future.insert((e.due, pk));
            Slot::Future(e.due)
        } else {
            let cell = if e.kind.is_list() {
                usize::MAX
            } else {
                grid.cell(e.seen - e.t0)
            };
            let bucket = (e.kind.name.clone(), e.ended, cell);
            q.due.entry(bucket.clone()).or_default().insert((e.t0, pk));
            q.in_turn.insert((e.due, pk));
            Slot::Due(bucket, e.due)
        };
        let k = e.kind.reconcile_after.len();
        if !e.in_flight && !e.recheck && !e.kind.is_list() && e.pos < k {
            let first = e.t0.saturating_add(e.kind.reconcile_after[e.pos]);
            if e.parked || first < e.due {
                q.ahead.insert((first, pk));
                e.ahead = Some(first);
            }
        }
    }

    /// Takes a held payment out of its queue.
    fn dequeue(&mut self, pk: PaymentKey) {
        let Some(e) = self.entries.get_mut(&pk) else {
            return;
        };
        let Some(q) = self.queues.get_mut(e.pool) else {
            return;
        };
        if let Some(first) = e.ahead.take() {
            q.ahead.remove(&(first, pk));
        }
        match std::mem::replace(&mut e.slot, Slot::None) {
            Slot::None => {}
            Slot::Future(d) => {
                q.future.remove(&(d, pk));
            }
            Slot::Recheck(d) => {
                q.rechecks.remove(&(d, pk));
            }
            Slot::Due(bucket, d) => {
                q.in_turn.remove(&(d, pk));
                if let Some(set) = q.due.get_mut(&bucket) {
                    set.remove(&(e.t0, pk));
                    if set.is_empty() {
                        q.due.remove(&bucket);
                    }
                }
            }
        }
    }

    /// Moves the scheduled checks of pool `p` that came due by `now` to the due queues.
    fn promote(&mut self, p: usize, now: UnixMs) {
        loop {
            let Some(&(due, pk)) = self.queues.get(p).and_then(|q| q.future.first()) else {
                return;
            };
            if due > now {
                return;
            }
            self.dequeue(pk);
            self.enqueue(pk, now);
        }
    }

    /// Starts watching (or resumes, `due`: the stored next check). Returns the next check's
    /// time, `None` when the schedule has nothing left (then nothing is held).
    pub fn start(&mut self, w: WatchStart, due: Option<UnixMs>, now: UnixMs) -> Option<UnixMs> {
        let schedule = &w.kind.reconcile_after;
        let last = schedule.last().copied().unwrap_or(0);
        let age = now - w.started;
        // Resumed: a stored due time before its age's scheduled check is a merchant's
        // recheck (it may even lie past the end of the schedule) and stands; any other is
        // planned again.
        let asked = match due {
            Some(d) => match next_age(schedule, d - w.started - 1) {
                Some(i) if d < w.started + schedule[i] => Some((i, d)),
                Some(_) => None,
                None => Some((schedule.len(), d)),
            },
            None => {
                next_age(schedule, age)?;
                None
            }
        };
        if self.entries.contains_key(&w.pk) {
            self.dequeue(w.pk);
        } else {
            self.stats.entry(w.kind.name.clone()).or_default().watched += 1;
        }
        let end = w
            .started
            .saturating_add(last)
            .saturating_add(grace(schedule));
        self.ends.insert((end, w.pk));
        self.model_of(&w.kind, w.ended);
        if due.is_none() {
            if let Some(p) = self.pricing.get_mut(w.pool) {
                p.starts.push_back((now, (w.kind.name.clone(), w.ended)));
            }
        }
        let pos = next_age(schedule, w.seen - w.started).unwrap_or(schedule.len());
        let mut e = Watched {
            pk: w.pk,
            kind: w.kind,
            id: w.id,
            pool: w.pool,
            t0: w.started,
            state: w.state,
            ended: w.ended,
            upstream_status: w.upstream_status,
            seen: w.seen,
            next: 0,
            due: 0,
            in_flight: false,
            recheck: asked.is_some(),
            failures: 0,
            moved: false,
            pos,
            draw: draw(w.pk),
            parked: false,
            ahead: None,
            slot: Slot::None,
        };
        match asked {
            Some((i, d)) => (e.next, e.due) = (i, d),
            None => self.plan(&mut e, now),
        }
        let due = e.due;
        self.entries.insert(w.pk, e);
        self.enqueue(w.pk, now);
        Some(due)
    }

    /// A merchant's recheck of a watched payment: due at `at` unless one is due sooner.
    /// `None` when it is not watched.
    pub fn recheck(&mut self, pk: PaymentKey, at: UnixMs, now: UnixMs) -> Option<UnixMs> {
        let e = self.entries.get(&pk)?;
        if e.in_flight || (e.recheck && e.due <= at) {
            return Some(e.due.max(at));
        }
        self.dequeue(pk);
        let e = self.entries.get_mut(&pk)?;
        e.recheck = true;
        e.due = e.due.min(at);
        let due = e.due;
        self.enqueue(pk, now);
        Some(due)
    }

    /// The earliest due merchant's recheck of pool `p`, if one is due by `now`.
    pub fn due_recheck(&self, p: usize, now: UnixMs) -> Option<PaymentKey> {
        let &(due, pk) = self.queues.get(p)?.rechecks.first()?;
        (due <= now).then_some(pk)
    }

    /// Whether pool `p` has a scheduled check due by `now` that the spare budget could
    /// make (a quick look, before the core works out whether there is spare budget).
    pub fn any_due(&mut self, p: usize, now: UnixMs) -> bool {
        self.promote(p, now);
        self.queues.get(p).is_some_and(|q| {
            !q.in_turn.is_empty() || q.ahead.first().is_some_and(|(t, _)| *t <= now)
        })
    }

    /// The earliest due planned check of pool `p`; with none due, the payment whose
    /// unplanned age came most recently (its check sees a move soonest after it happens).
    /// Kinds for which `blocked` holds are passed over.
    pub fn pick(
        &mut self,
        p: usize,
        now: UnixMs,
        blocked: impl Fn(&KindName) -> bool,
    ) -> Option<PaymentKey> {
        self.promote(p, now);
        let q = self.queues.get(p)?;
        let open = |pk: &PaymentKey| self.entries.get(pk).is_some_and(|e| !blocked(&e.kind.name));
        q.in_turn.iter().map(|&(_, pk)| pk).find(open).or_else(|| {
            q.ahead
                .range(..=(now, PaymentKey(i64::MAX)))
                .rev()
                .map(|&(_, pk)| pk)
                .find(open)
        })
    }

    /// The payments one request for `pk` covers: itself, and for a list kind every due
    /// watched payment of the kind in the pool, up to a page.
    pub fn members(&self, pk: PaymentKey) -> Vec<PaymentKey> {
        let Some(e) = self.entries.get(&pk) else {
            return Vec::new();
        };
        let Some(list) = &e.kind.list else {
            return vec![pk];
        };
        let bucket = (e.kind.name.clone(), e.ended, usize::MAX);
        let more = self
            .queues
            .get(e.pool)
            .and_then(|q| q.due.get(&bucket))
            .into_iter()
            .flatten()
            .map(|&(_, k)| k)
            .filter(|k| *k != pk);
        std::iter::once(pk)
            .chain(more)
            .take(list.max_limit.max(1) as usize)
            .collect()
    }

    /// Marks the request's payments in flight: `(ids, starts)` for the request.
    pub fn launch(
        &mut self,
        pks: &[PaymentKey],
    ) -> (Vec<PaymentId>, Vec<UnixMs>, Option<Arc<Kind>>) {
        let (mut ids, mut started, mut kind) = (Vec::new(), Vec::new(), None);
        for pk in pks {
            self.dequeue(*pk);
            if let Some(e) = self.entries.get_mut(pk) {
                e.in_flight = true;
                ids.push(e.id.clone());
                started.push(e.t0);
                kind.get_or_insert_with(|| e.kind.clone());
            }
        }
        if let Some(k) = &kind {
            self.stats.entry(k.name.clone()).or_default().checks += 1;
        }
        (ids, started, kind)
    }

    /// A check's answer for a watched payment, sent at `sent_at`: what to record (`None`
    /// when it is not watched any more). `retry_ms`: when an unanswered check is tried
    /// again, doubling per failure.
    pub fn complete(
        &mut self,
        pk: PaymentKey,
        obs: &Observation,
        sent_at: UnixMs,
        now: UnixMs,
        retry_ms: i64,
    ) -> Option<(CheckRecord, Arc<Kind>)> {
        self.dequeue(pk);
        let mut e = self.entries.remove(&pk)?;
        e.in_flight = false;
        let was_recheck = e.recheck && e.due <= sent_at;
        let (seen_state, raw, error, response, answered) = match obs {
            Observation::Status {
                raw,
                state,
                response,
            } => (
                *state,
                Some(raw.clone()),
                state
                    .is_none()
                    .then(|| format!("unknown upstream status {raw:?}")),
                Some(bounded(response)),
                state.is_some(),
            ),
            // An answer that is no status (a 404: the provider does not know the payment
            // any more) is no move either.
            Observation::Error {
                class,
                message,
                response,
            } => (
                None,
                None,
                Some(message.clone()),
                response.as_ref().map(bounded),
                class.is_answer(),
            ),
        };
        // A move is a final state other than the one the ladder (or an earlier move) left;
        // `pending` from the provider after a timeout is no move.
        let moved_to = seen_state.filter(|s| s.is_final() && *s != e.state);
        let unchanged = answered && moved_to.is_none();
        let (before, before_raw) = (e.state, e.upstream_status.clone());
        let new_raw = raw.clone().filter(|_| answered);
        let event = moved_to
            .and_then(|to| event_for(before_raw.as_deref(), new_raw.as_deref(), before, to))
            .map(|t| EventSpec {
                event_type: t,
                previous_state: before,
                previous_upstream_status: before_raw.clone(),
                late: true,
            });
        let raw_changed = new_raw
            .as_deref()
            .is_some_and(|r| !r.eq_ignore_ascii_case(before_raw.as_deref().unwrap_or("pending")));
        if let Some(to) = moved_to {
            if !e.moved {
                let ev = self.grid.evidence(e.seen - e.t0, Some(sent_at - e.t0));
                self.model(&e.kind.name, e.ended).learner.observe(e.t0, ev);
            }
            e.moved = true;
            e.state = to;
            self.stats
                .entry(e.kind.name.clone())
                .or_default()
                .late_moves += 1;
            tracing::info!(
                kind = %e.kind.name, id = %e.id, from = before.as_str(), to = to.as_str(),
                "a payment moved after its ladder ended"
            );
        }
        if unchanged {
            e.seen = e.seen.max(sent_at);
        }
        if new_raw.is_some() {
            e.upstream_status = new_raw.clone();
        }
        // The next check: the planned one after this one; a failure tries the same
        // scheduled check again later (a later age, once come, stands for it).
        let schedule = &e.kind.reconcile_after;
        let asked_past_schedule = e.recheck && e.next >= schedule.len();
        let planned: Option<(usize, UnixMs)> = if answered {
            e.failures = 0;
            let pos = next_age(schedule, sent_at - e.t0).unwrap_or(schedule.len());
            let passed = pos.saturating_sub(e.pos + 1);
            self.stats.entry(e.kind.name.clone()).or_default().skipped += passed as u64;
            e.pos = e.pos.max(pos);
            if e.kind.watches(e.state) {
                self.plan(&mut e, now);
                Some((e.next, e.due))
            } else {
                None
            }
        } else {
            e.failures = e.failures.saturating_add(1);
            let age = now - e.t0;
            let mut i = e.next.min(schedule.len().saturating_sub(1));
            while i + 1 < schedule.len() && schedule[i + 1] <= age {
                i += 1;
            }
            let backoff = retry_ms.saturating_mul(1 << e.failures.min(6));
            let at = schedule
                .get(i)
                .map_or(now, |a| e.t0 + a)
                .max(now.saturating_add(backoff));
            // A merchant's recheck past the schedule is tried again until it is answered.
            (e.kind.watches(e.state) || asked_past_schedule).then_some((i, at))
        };
        e.recheck = e.recheck && !was_recheck;
        let (keep, due) = (planned.map(|(i, _)| i), planned.map(|(_, at)| at));
        let record = CheckRecord {
            pk,
            checked_at: now,
            upstream_status: new_raw,
            state: e.state,
            response,
            error,
            next_check_at: due,
            event,
            changed: moved_to.is_some() || raw_changed,
            saw_pending: false,
            watch: Some(WatchCheck {
                asked: true,
                unchanged,
            }),
        };
        let kind = e.kind.clone();
        match (keep, due) {
            (Some(i), Some(d)) => {
                e.next = i;
                e.due = if e.recheck { e.due.min(d) } else { d };
                e.parked = e.parked && answered && !e.recheck;
                self.entries.insert(pk, e);
                self.enqueue(pk, now);
            }
            _ => self.ended(e),
        }
        Some((record, kind))
    }

    /// The watch of `e` is over: its evidence, if it never moved, is that it did not by
    /// its last check.
    fn ended(&mut self, e: Watched) {
        if !e.moved {
            let ev = self.grid.evidence(e.seen - e.t0, None);
            self.model(&e.kind.name, e.ended).learner.observe(e.t0, ev);
        }
        let schedule = &e.kind.reconcile_after;
        let end =
            e.t0.saturating_add(schedule.last().copied().unwrap_or(0))
                .saturating_add(grace(schedule));
        self.ends.remove(&(end, e.pk));
        let stats = self.stats.entry(e.kind.name.clone()).or_default();
        stats.watched = stats.watched.saturating_sub(1);
    }

    /// Periodic upkeep: a watch whose due check waited past the schedule's last age plus
    /// its last gap ends without a request (the records to commit; the checks it never
    /// got count as skipped).
    pub fn tick(&mut self, now: UnixMs) -> Vec<CheckRecord> {
        let mut records = Vec::new();
        while let Some(&(end, pk)) = self.ends.first() {
            if end > now {
                break;
            }
            self.ends.remove(&(end, pk));
            let busy = self
                .entries
                .get(&pk)
                .is_some_and(|e| e.in_flight || e.recheck);
            if busy {
                // Its answer (or the merchant's check) decides; look again a gap later.
                self.ends.insert((end.saturating_add(self.window_ms), pk));
                continue;
            }
            self.dequeue(pk);
            let Some(e) = self.entries.remove(&pk) else {
                continue;
            };
            let left = e.kind.reconcile_after.len().saturating_sub(e.pos);
            self.stats.entry(e.kind.name.clone()).or_default().skipped += left as u64;
            records.push(CheckRecord {
                pk,
                checked_at: now,
                upstream_status: None,
                state: e.state,
                response: None,
                error: None,
                next_check_at: None,
                event: None,
                changed: false,
                saw_pending: false,
                watch: Some(WatchCheck {
                    asked: false,
                    unchanged: false,
                }),
            });
            self.ended(e);
        }
        records
    }

    /// Re-estimates each late-move model from its evidence and the watched payments'.
    pub fn refit(&mut self, now: UnixMs) {
        let mut pending: HashMap<(KindName, State), Vec<Evidence>> = HashMap::new();
        for e in self.entries.values().filter(|e| !e.moved) {
            pending
                .entry((e.kind.name.clone(), e.ended))
                .or_default()
                .push(self.grid.evidence(e.seen - e.t0, None));
        }
        for key in pending.keys() {
            self.model(&key.0, key.1);
        }
        for (key, model) in &mut self.models {
            let evidence = pending.remove(key).unwrap_or_default();
            model.dist = model.learner.fit(now, evidence.into_iter()).clone();
            if !model.schedule.is_empty() {
                model.plans = Some(LatePlans::new(&self.grid, &model.dist, &model.schedule));
            }
        }
    }

    /// A late request of pool `p` went out of the spare budget.
    pub fn spent(&mut self, p: usize, now: UnixMs) {
        if let Some(pricing) = self.pricing.get_mut(p) {
            pricing.spent.push_back(now);
        }
    }

    /// Sets pool `p`'s price of late checks, once a window: where the plans' requests
    /// per window meet the spare budget's. That is read, on average over windows, as what
    /// the late requests made while planned checks were left waiting (all of the spare
    /// budget went), and otherwise as `supply`, what the live payments' pace leaves. The
    /// price moves a step at a time: a jump would plan a wave of checks for the same ages.
    /// Replans the pool's payments whose checks are not due yet when it changes.
    pub fn price(&mut self, p: usize, supply: f64, now: UnixMs) {
        if self.policy != LatePolicy::Learnt {
            return;
        }
        let span = self.window_ms.saturating_mul(START_WINDOWS);
        let window = self.window_ms;
        let waiting = self.queues.get(p).map_or(0, |q| q.in_turn.len());
        let Some(pricing) = self.pricing.get_mut(p) else {
            return;
        };
        while pricing
            .starts
            .front()
            .is_some_and(|(t, _)| *t + span <= now)
        {
            pricing.starts.pop_front();
        }
        while pricing.spent.front().is_some_and(|t| *t + window <= now) {
            pricing.spent.pop_front();
        }
        let made = pricing.spent.len() as f64;
        let first = pricing.capacity.is_none();
        let seen = if waiting > 0 { made } else { supply.max(made) };
        let capacity = pricing
            .capacity
            .map_or(supply, |c| c + SMOOTHING * (seen - c))
            .max(0.0);
        pricing.capacity = Some(capacity);
        let old = pricing.level;
        let mut rates: HashMap<&(KindName, State), f64> = HashMap::new();
        for (_, key) in &pricing.starts {
            *rates.entry(key).or_default() += 1.0 / START_WINDOWS as f64;
        }
        let demand = |level: usize| -> f64 {
            rates
                .iter()
                .filter_map(|(key, rate)| {
                    let plans = self.models.get(*key)?.plans.as_ref()?;
                    Some(rate * plans.checks(level))
                })
                .sum()
        };
        let fitted = fit_level(&demand, capacity);
        // The first price plans no wave: nothing was planned at another.
        let level = if first {
            fitted
        } else {
            fitted.clamp(old - PRICE_STEP, old + PRICE_STEP)
        };
        if (level - old).abs() > 1e-3 {
            self.pricing[p].level = level;
            self.replan(p, now);
        }
    }

    /// Plans pool `p`'s waiting payments again at its price.
    fn replan(&mut self, p: usize, now: UnixMs) {
        let pks: Vec<PaymentKey> = self
            .entries
            .values()
            .filter(|e| {
                e.pool == p
                    && !e.in_flight
                    && !e.recheck
                    && e.failures == 0
                    && !matches!(e.slot, Slot::Due(..))
            })
            .map(|e| e.pk)
            .collect();
        for pk in pks {
            self.dequeue(pk);
            if let Some(mut e) = self.entries.remove(&pk) {
                self.plan(&mut e, now);
                self.entries.insert(pk, e);
            }
            self.enqueue(pk, now);
        }
    }

    /// What reconciliation did per kind.
    pub fn stats(&self) -> &BTreeMap<KindName, WatchStats> {
        &self.stats
    }

    /// A kind's learnt late moves after a timeout: the share moving within the watch
    /// and the age (ms) by which half of those moved.
    pub fn learnt(&self, kind: &KindName) -> Option<(f64, i64)> {
        let m = self.models.get(&(kind.clone(), State::TimedOut))?;
        Some((m.dist.flips(), self.grid.age_ms(m.dist.quantile(0.5))))
    }

    /// When pool `p`'s next merchant's recheck or scheduled check comes due.
    pub fn next_due(&self, p: usize) -> Option<UnixMs> {
        let q = self.queues.get(p)?;
        let recheck = q.rechecks.first().map(|&(d, _)| d);
        let scheduled = q.future.first().map(|&(d, _)| d);
        recheck.into_iter().chain(scheduled).min()
    }
}

/// The lowest price level at which `demand` (falling as the level rises) fits `target`,
/// mixed with the one below so the spare budget is spent, not left over.
fn fit_level(demand: &dyn Fn(usize) -> f64, target: f64) -> f64 {
    if demand(0) <= target {
        return 0.0;
    }
    let (mut lo, mut hi) = (0usize, LATE_PRICES);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if demand(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (d_lo, d_hi) = (demand(lo), demand(hi));
    let frac = if d_lo > d_hi {
        ((d_lo - target) / (d_lo - d_hi)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    lo as f64 + frac
}

/// A payment's fixed draw in `[0, 1)` between two price levels: from its key, so it is
/// the same after a restart and owes nothing to arrival order.
fn draw(pk: PaymentKey) -> f64 {
    let h = (pk.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// An answer as stored: see [`super::decide::bounded`].
fn bounded(v: &serde_json::Value) -> String {
    super::decide::bounded(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Config};

    /// Ladder timeout 10 s; schedule 20 s, 40 s, 60 s (last gap 20 s).
    fn kinds() -> (Arc<Kind>, Arc<Kind>) {
        let cfg = Config::from_raw(config::defaults()).unwrap();
        let with = |name: &str| {
            let mut k = (*cfg.kinds[name]).clone();
            k.reconcile_after = vec![20_000, 40_000, 60_000];
            Arc::new(k)
        };
        (with("p2p"), with("btc"))
    }

    fn start(w: &mut Watch, kind: &Arc<Kind>, pk: i64, now: UnixMs) -> Option<UnixMs> {
        w.start(
            WatchStart {
                pk: PaymentKey(pk),
                kind: kind.clone(),
                id: PaymentId::parse(&format!("T{pk}")).unwrap(),
                pool: 0,
                started: 0,
                state: State::TimedOut,
                ended: State::TimedOut,
                upstream_status: Some("pending".into()),
                seen: 10_000,
            },
            None,
            now,
        )
    }

    #[test]
    fn a_watch_no_spare_budget_serves_ends_unchecked_after_its_last_gap() {
        let (p2p, _) = kinds();
        let mut w = Watch::new(1, 10_000, 60_000, 600_000, LatePolicy::InTurn);
        assert_eq!(start(&mut w, &p2p, 1, 10_000), Some(20_000));
        assert!(w.any_due(0, 20_000));
        // Never checked: nothing ends before the last age plus the last gap (80 s).
        assert!(w.tick(79_999).is_empty());
        let ended = w.tick(80_000);
        assert_eq!(ended.len(), 1);
        let r = &ended[0];
        assert_eq!((r.state, r.next_check_at), (State::TimedOut, None));
        assert_eq!(
            r.watch,
            Some(WatchCheck {
                asked: false,
                unchanged: false
            })
        );
        assert!(!w.holds(&PaymentKey(1)));
        let s = w.stats()[&p2p.name];
        assert_eq!((s.watched, s.checks, s.skipped), (0, 0, 3));
    }

    #[test]
    fn a_check_overtaken_by_later_ages_counts_them_skipped_and_plans_the_next() {
        let (p2p, _) = kinds();
        let mut w = Watch::new(1, 10_000, 60_000, 600_000, LatePolicy::InTurn);
        start(&mut w, &p2p, 1, 10_000);
        let pk = w.pick(0, 45_000, |_| false).unwrap();
        w.launch(&[pk]);
        let pending = Observation::Status {
            raw: "pending".into(),
            state: Some(State::Pending),
            response: serde_json::json!({"status": "pending"}),
        };
        let (r, _) = w.complete(pk, &pending, 45_000, 45_100, 1_000).unwrap();
        // The 20 s check went at 45 s: the 40 s one is skipped, the next is at 60 s.
        assert_eq!(r.next_check_at, Some(60_000));
        assert!(r.event.is_none());
        let s = w.stats()[&p2p.name];
        assert_eq!((s.checks, s.skipped), (1, 1));
    }

    const MIN: i64 = 60_000;

    /// The default schedule (15 m … 72 h) after a 10-minute ladder, 10-minute windows.
    fn learnt_watch(pks: i64) -> Watch {
        let cfg = Config::from_raw(config::defaults()).unwrap();
        let p2p = cfg.kinds["p2p"].clone();
        assert_eq!(p2p.reconcile_after.last(), Some(&(72 * 60 * MIN)));
        let mut w = Watch::new(1, 10 * MIN, 72 * 60 * MIN, 10 * MIN, LatePolicy::Learnt);
        for pk in 1..=pks {
            start(&mut w, &p2p, pk, 10 * MIN);
        }
        w
    }

    #[test]
    fn with_spare_budget_for_the_whole_schedule_every_age_is_planned() {
        let mut w = learnt_watch(30);
        w.price(0, 10_000.0, 20 * MIN);
        assert_eq!(
            w.next_due(0),
            Some(15 * MIN),
            "the first age of the schedule"
        );
    }

    #[test]
    fn without_spare_budget_no_age_is_planned_and_a_spare_request_takes_the_newest_come() {
        let mut w = learnt_watch(30);
        w.price(0, 0.0, 12 * MIN);
        assert_eq!(w.next_due(0), None, "nothing planned");
        assert!(!w.any_due(0, 14 * MIN));
        // Past an age, a request the spare budget does make goes to a payment whose
        // unplanned age has come.
        assert!(w.any_due(0, 16 * MIN));
        let pk = w.pick(0, 16 * MIN, |_| false).unwrap();
        assert!((1..=30).contains(&pk.0));
        // A spare budget that makes some requests prices between the two: fewer planned
        // checks than the schedule's, more than none.
        let mut some = learnt_watch(30);
        some.price(0, 30.0, 12 * MIN);
        let planned = some.next_due(0).expect("some planned");
        assert!(
            planned > 15 * MIN,
            "the first ages are not worth it: {planned}"
        );
    }

    #[test]
    fn one_listing_covers_every_due_watched_payment_of_a_list_kind() {
        let (_, btc) = kinds();
        let mut w = Watch::new(1, 10_000, 60_000, 600_000, LatePolicy::Learnt);
        for pk in 1..=3 {
            start(&mut w, &btc, pk, 10_000);
        }
        let first = w.pick(0, 20_000, |_| false).unwrap();
        let mut members = w.members(first);
        members.sort();
        assert_eq!(members, [PaymentKey(1), PaymentKey(2), PaymentKey(3)]);
        w.launch(&members);
        assert!(!w.any_due(0, 20_000), "all three are in flight");
    }

    #[test]
    fn a_merchant_s_recheck_past_the_schedule_is_one_check_then_settled() {
        let (p2p, _) = kinds();
        let mut w = Watch::new(1, 10_000, 60_000, 600_000, LatePolicy::InTurn);
        // Resumed from the database with its next check asked for at 100 s: past the
        // schedule's last age (a recheck after the watch had ended).
        let start = WatchStart {
            pk: PaymentKey(7),
            kind: p2p.clone(),
            id: PaymentId::parse("T7").unwrap(),
            pool: 0,
            started: 0,
            state: State::TimedOut,
            ended: State::TimedOut,
            upstream_status: None,
            seen: 60_000,
        };
        assert_eq!(w.start(start, Some(100_000), 100_000), Some(100_000));
        assert_eq!(w.due_recheck(0, 100_000), Some(PaymentKey(7)));
        w.launch(&[PaymentKey(7)]);
        let approved = Observation::Status {
            raw: "approved".into(),
            state: Some(State::Succeeded),
            response: serde_json::json!({"status": "approved"}),
        };
        let (r, _) = w
            .complete(PaymentKey(7), &approved, 100_000, 100_050, 1_000)
            .unwrap();
        assert_eq!((r.state, r.next_check_at), (State::Succeeded, None));
        let ev = r.event.unwrap();
        assert!(ev.late);
        assert_eq!(ev.previous_state, State::TimedOut);
        assert!(!w.holds(&PaymentKey(7)));
    }
}
