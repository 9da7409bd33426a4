//! The core's payments under reconciliation (see [`crate::reconcile`]): each one's planned
//! check at its key's late price, which of them are due, what a check of one decided, the
//! late-move ages learnt per kind, and the late price itself. Pure: the core
//! ([`super::Core`]) decides when a request may be spent on them and sends it.

use super::core::{LateCheck, Outcome};
use crate::event::{event_for, EventSpec};
use crate::kinds::{Kind, KindName, Observation};
use crate::payment::{KeyMap, PaymentId, PaymentKey, SchedMs, State};
use crate::policy::{Evidence, FlipDist, Learner};
use crate::reconcile::{next_age, LateGrid, LatePlans, LATE_CELLS, LATE_PRICES};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

mod answers;
mod catch_up;
mod pricing;

use self::catch_up::{stale, stale_at};
use self::pricing::{draw, Pricing};

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

/// A watched payment, as the core resumes it or starts watching it (times on the core's
/// clock).
#[derive(Debug, Clone)]
pub struct WatchStart {
    pub pk: PaymentKey,
    pub kind: Arc<Kind>,
    pub id: PaymentId,
    pub pool: usize,
    pub started: SchedMs,
    pub state: State,
    pub ended: State,
    pub upstream_status: Option<String>,
    /// Last seen unmoved.
    pub seen: SchedMs,
}

struct Watched {
    pk: PaymentKey,
    kind: Arc<Kind>,
    id: PaymentId,
    pool: usize,
    t0: SchedMs,
    state: State,
    /// How the ladder ended it: the late-move model it belongs to.
    ended: State,
    /// One of [`Watch::statuses`]: the provider's few statuses, each held once.
    upstream_status: Option<Arc<str>>,
    seen: SchedMs,
    /// Index of the scheduled age its due check stands for.
    next: usize,
    due: SchedMs,
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
    /// Its place in [`Queues::ahead`]: its group's position and its key there.
    ahead: Option<(usize, SchedMs)>,
    /// Where it waits (see [`Queues`]).
    slot: Slot,
    /// Its place in [`Queues::stale`]: when it was last seen.
    stale: Option<SchedMs>,
}

/// A list kind's due payments of one late-move model: one listing finds them all.
type Listed = (KindName, State);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    None,
    Future(SchedMs),
    /// Also in [`Queues::lists`] when listed (under its kind's name and `ended`).
    Due(bool, SchedMs),
    Recheck(SchedMs),
}

/// A pool's watched payments by where they wait, so that finding the next one costs a
/// logarithm, not a scan, however many are watched.
#[derive(Default)]
struct Queues {
    /// Scheduled, not due yet, by due time.
    future: BTreeSet<(SchedMs, PaymentKey)>,
    /// Due, by due time.
    in_turn: BTreeSet<(SchedMs, PaymentKey)>,
    /// The due payments of list kinds, by kind and model, oldest start first.
    lists: BTreeMap<Listed, BTreeSet<(SchedMs, PaymentKey)>>,
    /// A merchant's rechecks, by due time.
    rechecks: BTreeSet<(SchedMs, PaymentKey)>,
    /// With the learnt plans, every waiting payment of a single-payment kind, by the first
    /// age of the schedule it has not been checked at: what the spare budget chooses among
    /// when no planned check is due, as the plans' checks are still to come, and when the
    /// plans are behind. Grouped by late-move model and by the position of the last check
    /// on the schedule (so one group's payments were last seen at the same age), each by
    /// the first of those ages (in a group, oldest start first).
    ahead: BTreeMap<Listed, Vec<BTreeSet<(SchedMs, PaymentKey)>>>,
    /// With the learnt plans, the waiting payments of single-payment kinds that may
    /// still hold an unseen move ([`catch_up::STALE_CHANCE`]), by when they were last
    /// seen: a move since then is caught within [`CATCH_WITHIN_MS`] only if one of them is
    /// checked before that much time has passed.
    stale: BTreeSet<(SchedMs, PaymentKey)>,
}

/// How much less likely to hold an unseen move a payment may be than the likeliest and
/// still count as likely: among those, the spare budget checks the youngest, whose move, if
/// it came, is the most recent. The learnt distribution is only an estimate: past the ages
/// where moves come, its small remaining mass would otherwise send every unplanned check to
/// the oldest payments, whose moves are the longest past.
const AHEAD_TIE: f64 = 0.05;

/// How many windows past its time a planned check may wait before the plans count as
/// behind: the spare budget then goes where the chance of an unseen move is greatest, as
/// the ages the plans chose have passed unchecked.
const BEHIND_WINDOWS: i64 = 1;

/// A group's payments under [`Queues::ahead`], by key.
type ByStart = BTreeSet<(SchedMs, PaymentKey)>;

/// Ages `(from, to)` holding payments of one group, and their chance of an unseen move.
type Stretch = (i64, i64, f64);

/// How recent a move must be for the spare budget to still go after it first: a day, the
/// time in which a customer who paid late is still waiting for the goods.
const CATCH_WITHIN_MS: i64 = 86_400_000;

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

/// Every watched payment and the late-move models.
pub struct Watch {
    grid: LateGrid,
    policy: LatePolicy,
    /// Boxed: the map's table (with its spare room) holds a pointer a payment, not the
    /// whole entry, and growing it past hundreds of thousands moves pointers only.
    entries: KeyMap<Box<Watched>>,
    queues: Vec<Queues>,
    /// When each watch ends at the latest (its last age plus the last gap).
    ends: BTreeSet<(SchedMs, PaymentKey)>,
    models: HashMap<(KindName, State), Model>,
    /// The upstream statuses the watched payments were last seen in, each held once
    /// (at most [`MAX_STATUSES`]; past that each payment holds its own).
    statuses: HashSet<Arc<str>>,
    pricing: Vec<Pricing>,
    /// By pool index and kind.
    stats: BTreeMap<(usize, KindName), WatchStats>,
    /// How long the evidence of a watched payment is remembered.
    memory_ms: i64,
    window_ms: i64,
}

/// Most distinct upstream statuses held once for all watched payments: a provider has a
/// handful; the bound only keeps a misbehaving one from growing the set.
const MAX_STATUSES: usize = 64;

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
            entries: KeyMap::default(),
            queues: (0..pools).map(|_| Queues::default()).collect(),
            ends: BTreeSet::new(),
            models: HashMap::new(),
            statuses: HashSet::new(),
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

    /// `status` as a watched payment holds it: shared with every other in that status.
    fn status(&mut self, status: Option<&str>) -> Option<Arc<str>> {
        let status = status?;
        if let Some(s) = self.statuses.get(status) {
            return Some(s.clone());
        }
        let s: Arc<str> = status.into();
        if self.statuses.len() < MAX_STATUSES {
            self.statuses.insert(s.clone());
        }
        Some(s)
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

    /// Learns from a payment watched before a restart: last seen unmoved at `seen`, seen
    /// moved at `moved` (`None`: not seen to move).
    pub fn learn(
        &mut self,
        kind: &KindName,
        ended: State,
        started: SchedMs,
        seen: Option<SchedMs>,
        moved: Option<SchedMs>,
    ) {
        let e = self
            .grid
            .evidence(seen.map_or(0, |s| s - started), moved.map(|m| m - started));
        self.model(kind, ended).learner.observe(started, e);
    }

    /// Puts a held payment in the queue its fields say (it must be in none).
    fn enqueue(&mut self, pk: PaymentKey, now: SchedMs) {
        let learnt = self.policy == LatePolicy::Learnt;
        let catch = learnt
            && self
                .entries
                .get(&pk)
                .is_some_and(|e| !e.in_flight && !e.recheck && self.worth_catching_up(e));
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
            let listed = e.kind.is_list();
            if listed {
                let l = (e.kind.name.clone(), e.ended);
                q.lists.entry(l).or_default().insert((e.t0, pk));
            }
            q.in_turn.insert((e.due, pk));
            Slot::Due(listed, e.due)
        };
        let k = e.kind.reconcile_after.len();
        if !e.in_flight && !e.recheck && !e.kind.is_list() && e.pos < k {
            let first = e.t0.saturating_add(e.kind.reconcile_after[e.pos]);
            // With the plans behind, due payments are chosen among by the same chance.
            if learnt || e.parked || first < e.due {
                let groups = q.ahead.entry((e.kind.name.clone(), e.ended)).or_default();
                if groups.len() < k {
                    groups.resize_with(k, BTreeSet::new);
                }
                groups[e.pos].insert((first, pk));
                e.ahead = Some((e.pos, first));
            }
            if catch {
                q.stale.insert((e.seen, pk));
                e.stale = Some(e.seen);
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
        if let Some(seen) = e.stale.take() {
            q.stale.remove(&(seen, pk));
        }
        if let Some((pos, first)) = e.ahead.take() {
            let group = (e.kind.name.clone(), e.ended);
            if let Some(groups) = q.ahead.get_mut(&group) {
                if let Some(set) = groups.get_mut(pos) {
                    set.remove(&(first, pk));
                }
                if groups.iter().all(BTreeSet::is_empty) {
                    q.ahead.remove(&group);
                }
            }
        }
        match std::mem::replace(&mut e.slot, Slot::None) {
            Slot::None => {}
            Slot::Future(d) => {
                q.future.remove(&(d, pk));
            }
            Slot::Recheck(d) => {
                q.rechecks.remove(&(d, pk));
            }
            Slot::Due(listed, d) => {
                q.in_turn.remove(&(d, pk));
                if listed {
                    let l = (e.kind.name.clone(), e.ended);
                    if let Some(set) = q.lists.get_mut(&l) {
                        set.remove(&(e.t0, pk));
                        if set.is_empty() {
                            q.lists.remove(&l);
                        }
                    }
                }
            }
        }
    }

    /// Moves the scheduled checks of pool `p` that came due by `now` to the due queues.
    fn promote(&mut self, p: usize, now: SchedMs) {
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
    pub fn start(&mut self, w: WatchStart, due: Option<SchedMs>, now: SchedMs) -> Option<SchedMs> {
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
            let key = (w.pool, w.kind.name.clone());
            self.stats.entry(key).or_default().watched += 1;
        }
        let end = w
            .started
            .saturating_add(last)
            .saturating_add(grace(schedule));
        self.ends.insert((end, w.pk));
        self.model_of(&w.kind, w.ended);
        if due.is_none() {
            if let Some(p) = self.pricing.get_mut(w.pool) {
                p.starts.push_back((now, w.kind.clone(), w.ended));
            }
        }
        let pos = next_age(schedule, w.seen - w.started).unwrap_or(schedule.len());
        let upstream_status = self.status(w.upstream_status.as_deref());
        let mut e = Watched {
            pk: w.pk,
            kind: w.kind,
            id: w.id,
            pool: w.pool,
            t0: w.started,
            state: w.state,
            ended: w.ended,
            upstream_status,
            seen: w.seen,
            next: 0,
            due: SchedMs(0),
            in_flight: false,
            recheck: asked.is_some(),
            failures: 0,
            moved: false,
            pos,
            draw: draw(w.pk),
            parked: false,
            ahead: None,
            slot: Slot::None,
            stale: None,
        };
        match asked {
            Some((i, d)) => (e.next, e.due) = (i, d),
            None => self.plan(&mut e, now),
        }
        let due = e.due;
        self.entries.insert(w.pk, Box::new(e));
        self.enqueue(w.pk, now);
        Some(due)
    }

    /// A merchant's recheck of a watched payment: due at `at` unless one is due sooner.
    /// `None` when it is not watched.
    pub fn recheck(&mut self, pk: PaymentKey, at: SchedMs, now: SchedMs) -> Option<SchedMs> {
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
    pub fn due_recheck(&self, p: usize, now: SchedMs) -> Option<PaymentKey> {
        let &(due, pk) = self.queues.get(p)?.rechecks.first()?;
        (due <= now).then_some(pk)
    }

    /// Whether pool `p` has a scheduled check due by `now` that the spare budget could
    /// make (a quick look, before the core works out whether there is spare budget).
    pub fn any_due(&mut self, p: usize, now: SchedMs) -> bool {
        self.promote(p, now);
        self.queues.get(p).is_some_and(|q| {
            !q.in_turn.is_empty()
                || stale(q, now)
                    .next()
                    .is_some_and(|(seen, _)| stale_at(*seen) <= now)
                || q.ahead
                    .values()
                    .flatten()
                    .any(|set| set.first().is_some_and(|(t, _)| *t <= now))
        })
    }

    /// The earliest due planned check of pool `p` while the plans keep up (it is less than
    /// [`BEHIND_WINDOWS`] late, or a listing); otherwise, or with none due, the payment the
    /// learnt late moves make likeliest to have moved unseen since its last check (the
    /// youngest of those about as likely; see [`AHEAD_TIE`]), due or not. Kinds for which
    /// `blocked` holds are passed over. See also [`Watch::catch_up`].
    pub fn pick(
        &mut self,
        p: usize,
        now: SchedMs,
        blocked: impl Fn(&KindName) -> bool,
    ) -> Option<PaymentKey> {
        self.promote(p, now);
        let q = self.queues.get(p)?;
        let open = |pk: &PaymentKey| self.entries.get(pk).is_some_and(|e| !blocked(&e.kind.name));
        let earliest = q.in_turn.iter().find(|(_, pk)| open(pk)).copied();
        let behind = now
            .0
            .saturating_sub(self.window_ms.saturating_mul(BEHIND_WINDOWS));
        if let Some((due, pk)) = earliest {
            let listed = self.entries.get(&pk).is_some_and(|e| e.kind.is_list());
            if self.policy == LatePolicy::InTurn || listed || due.0 >= behind {
                return Some(pk);
            }
        }
        self.likeliest_ahead(q, now, &blocked)
            .map(|(pk, _)| pk)
            .or(earliest.map(|(_, pk)| pk))
    }

    /// See [`Watch::pick`]. A group's payments differ only in age, so the chance is read
    /// at the late grid's ages and, of those at or above the likely line, the youngest
    /// payment of the youngest stretch is taken; with it, the likeliest chance (see
    /// [`chance_since`]).
    fn likeliest_ahead<'a>(
        &self,
        q: &'a Queues,
        now: SchedMs,
        blocked: &impl Fn(&KindName) -> bool,
    ) -> Option<(PaymentKey, f64)> {
        let start = self.grid.age_ms(0);
        // A group's payments aged `lo..=hi` now, its key being their start plus `offset`.
        let aged = |set: &'a ByStart, offset: i64, lo: i64, hi: i64| {
            set.range(
                (SchedMs(now.0 - hi + offset), PaymentKey(i64::MIN))
                    ..=(SchedMs(now.0 - lo + offset), PaymentKey(i64::MAX)),
            )
        };
        // Per group: its payments by key, the key's offset from the start, and the chance
        // over each stretch of ages (youngest first) that holds payments.
        let mut stretches: Vec<(&ByStart, i64, Vec<Stretch>)> = Vec::new();
        for (key, by_pos) in &q.ahead {
            if blocked(&key.0) {
                continue;
            }
            let Some(model) = self.models.get(key) else {
                continue;
            };
            let moves = self.grid.moves(&model.dist);
            for (pos, set) in by_pos.iter().enumerate() {
                let (Some(&offset), Some(&(first, _))) = (model.schedule.get(pos), set.first())
                else {
                    continue;
                };
                if first > now {
                    continue;
                }
                let seen = pos
                    .checked_sub(1)
                    .and_then(|i| model.schedule.get(i).copied())
                    .unwrap_or(start);
                let Some(chance) = chance_since(&moves, seen) else {
                    continue;
                };
                let oldest = now - first + offset;
                let youngest = set
                    .range(..=(now, PaymentKey(i64::MAX)))
                    .next_back()
                    .map_or(oldest, |&(f, _)| now - f + offset);
                let mut ages: Vec<i64> = (0..=LATE_CELLS)
                    .map(|i| self.grid.age_ms(i))
                    .filter(|a| *a > youngest && *a < oldest)
                    .collect();
                ages.insert(0, youngest);
                ages.push(oldest);
                let list = ages
                    .windows(2)
                    .filter(|w| aged(set, offset, w[0], w[1]).next().is_some())
                    .map(|w| (w[0], w[1], chance(w[0]).max(chance(w[1]))))
                    .collect();
                stretches.push((set, offset, list));
            }
        }
        let best = stretches
            .iter()
            .flat_map(|(_, _, list)| list.iter().map(|s| s.2))
            .fold(0.0f64, f64::max);
        let line = best * (1.0 - AHEAD_TIE);
        stretches
            .iter()
            .filter_map(|(set, offset, list)| {
                let &(lo, hi, _) = list.iter().find(|s| s.2 >= line)?;
                let &(first, pk) = aged(set, *offset, lo, hi).next_back()?;
                Some((now - first + offset, pk))
            })
            .min_by_key(|&(age, pk)| (age, std::cmp::Reverse(pk)))
            .map(|(_, pk)| (pk, best))
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
        let listed = (e.kind.name.clone(), e.ended);
        let more = self
            .queues
            .get(e.pool)
            .and_then(|q| q.lists.get(&listed))
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
    ) -> (Vec<PaymentId>, Vec<SchedMs>, Option<Arc<Kind>>) {
        let (mut ids, mut started, mut kind) = (Vec::new(), Vec::new(), None);
        let mut pool = 0;
        for pk in pks {
            self.dequeue(*pk);
            if let Some(e) = self.entries.get_mut(pk) {
                e.in_flight = true;
                ids.push(e.id.clone());
                started.push(e.t0);
                kind.get_or_insert_with(|| e.kind.clone());
                pool = e.pool;
            }
        }
        if let Some(k) = &kind {
            self.stats.entry((pool, k.name.clone())).or_default().checks += 1;
        }
        (ids, started, kind)
    }

    /// Periodic upkeep: a watch whose due check waited past the schedule's last age plus
    /// its last gap ends without a request (the records to commit; the checks it never
    /// got count as skipped).
    pub fn tick(&mut self, now: SchedMs) -> Vec<Outcome> {
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
            let key = (e.pool, e.kind.name.clone());
            self.stats.entry(key).or_default().skipped += left as u64;
            records.push(Outcome {
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
                watch: Some(LateCheck {
                    asked: false,
                    unchanged: false,
                }),
            });
            self.ended(*e);
        }
        records
    }

    /// Re-estimates each late-move model from its evidence and the watched payments'.
    pub fn refit(&mut self, now: SchedMs) {
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

    /// What reconciliation did per kind.
    /// By pool index and kind.
    pub fn stats(&self) -> &BTreeMap<(usize, KindName), WatchStats> {
        &self.stats
    }

    /// A kind's learnt late moves after a timeout: the share moving within the watch
    /// and the age (ms) by which half of those moved.
    pub fn learnt(&self, kind: &KindName) -> Option<(f64, i64)> {
        let m = self.models.get(&(kind.clone(), State::TimedOut))?;
        Some((m.dist.flips(), self.grid.age_ms(m.dist.quantile(0.5))))
    }

    /// When pool `p`'s next merchant's recheck or scheduled check comes due, or the next
    /// payment goes ahead of the others to catch a move within a day (as of `now`).
    pub fn next_due(&self, p: usize, now: SchedMs) -> Option<SchedMs> {
        let q = self.queues.get(p)?;
        let recheck = q.rechecks.first().map(|&(d, _)| d);
        let scheduled = q.future.first().map(|&(d, _)| d);
        let stale = stale(q, now).next().map(|&(seen, _)| stale_at(seen));
        recheck.into_iter().chain(scheduled).chain(stale).min()
    }
}

/// The chance that a payment last seen unmoved at age `seen` has moved unseen by an age
/// (both clamped to the late grid), a move within the last day counting twice: one seen
/// later than that has cost what a late move costs already. `None` when the learnt moves
/// leave none after `seen`. The share unmoved at `seen` is reckoned once, for every age.
fn chance_since(
    moves: &impl Fn(i64, i64) -> (f64, f64),
    seen: i64,
) -> Option<impl Fn(i64) -> f64 + '_> {
    let unmoved = unmoved(moves, seen);
    (unmoved > 0.0).then_some(move |age: i64| {
        (moves(seen, age).0 + moves(seen.max(age - CATCH_WITHIN_MS), age).0) / unmoved
    })
}

/// The share of payments the learnt moves leave unmoved at age `seen`: what a chance
/// after a check there is conditioned on.
fn unmoved(moves: &impl Fn(i64, i64) -> (f64, f64), seen: i64) -> f64 {
    1.0 - moves(i64::MIN, seen).0
}

/// An answer as stored: see [`super::decide::bounded`].
fn bounded(v: &serde_json::Value) -> String {
    super::decide::bounded(v)
}

#[cfg(test)]
mod tests;
