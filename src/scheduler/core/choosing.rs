//! Choosing what to send: due checks from each key's heaps, manual rechecks first,
//! earliest due first while the key keeps up and by worth once it is behind; a burst's
//! backlog within its share; watched payments from what the live ones leave.

use super::*;

impl Core {
    /// Starts the checks that are due, within the in-flight bound and the budget.
    pub fn poll(&mut self, now: SchedMs, out: &mut Vec<Action>) {
        if !self.unsent.is_empty() {
            out.push(Action::Record(std::mem::take(&mut self.unsent)));
        }
        let n = self.pools.len();
        self.poll_from = (self.poll_from + 1) % n.max(1);
        for p in self.wakes.take_due(now, n, self.poll_from) {
            self.poll_pool(p, now, out);
            let wake = self.pool_wake(p, now);
            self.wakes.set(p.index(), wake);
        }
    }

    /// Starts pool `p`'s checks that are due, within the in-flight bounds and its budget.
    fn poll_pool(&mut self, p: PoolId, now: SchedMs, out: &mut Vec<Action>) {
        self.ensure_reserve(p, out);
        while self.has_slot(p) {
            if self.send_watched(p, now, LateTurn::Recheck, out) {
                continue;
            }
            let live = self.peek_due(p, now);
            // Where the spare budget affords the whole schedule, a due scheduled check goes
            // in its turn among the live ones, earliest due first; not while the budget
            // holds a pile of theirs (a burst), which is theirs first.
            let live_due = live.map(|(_, pk)| self.entries[&pk].due);
            if !self.pools[p].piled
                && self
                    .watch
                    .due_on_schedule(p.index(), now)
                    .is_some_and(|d| live_due.is_none_or(|l| d <= l))
                && self.send_watched(p, now, LateTurn::OnSchedule, out)
            {
                continue;
            }
            let Some((from, pk)) = live else {
                // Nothing of the ladder's is due: what it leaves of the budget may go
                // to the payments under reconciliation.
                if self.send_watched(p, now, LateTurn::Spare, out) {
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
            let room = self.pools[p].budget.room_since(now);
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
            let req = self.launch(p, kind, pks, now, room);
            out.push(Action::Send(req));
            self.ensure_reserve(p, out);
        }
    }

    /// Sends one check of a payment under reconciliation of pool `p`, if one is due, as
    /// `turn` allows (see [`LateTurn`]).
    pub(super) fn send_watched(
        &mut self,
        p: PoolId,
        now: SchedMs,
        turn: LateTurn,
        out: &mut Vec<Action>,
    ) -> bool {
        if !self.pools[p].spec.has_key {
            return false;
        }
        // Sent to catch a move within a day, not by the plans.
        let mut caught = false;
        let pk = if turn == LateTurn::OnSchedule {
            // The spare budget covers the schedule: the limiter below is the rule.
            let refused = &self.pools[p].auth_failing;
            let Some(pk) = self.watch.pick(p.index(), now, |k| refused.contains_key(k)) else {
                return false;
            };
            pk
        } else if turn == LateTurn::Spare {
            // Over the next window the live payments must still find room as the window's
            // requests expire: for their checks due within the on-plan lateness, each as it
            // comes due, and for their need all along, with a fiftieth of the budget to
            // spare. A late request holds its room for that whole window, and a dip of the
            // last window's live pace says nothing of the next one's: the need is never
            // less than their usual pace.
            let pace = self.live_need(p, now);
            let limit = self.pools[p].budget.effective_limit();
            let keep = limit / BACKLOG_LEAVES_DIVISOR;
            // What the look ahead asks first and last, before it looks at the live checks
            // due: room now, and room for the pace once the window's requests expire.
            if !self.pools[p].budget.has_room_beyond(now, keep)
                || pace + f64::from(keep) + 1.0 > f64::from(limit)
                || !self.watch.any_due(p.index(), now)
            {
                return false;
            }
            let soon = now + self.on_time(p);
            let mut live_soon = std::mem::take(&mut self.due_soon);
            live_soon.clear();
            live_soon.extend(
                self.entries
                    .of_pool(p)
                    .filter(|e| !e.in_flight && e.due <= soon)
                    .map(|e| e.due.max(now)),
            );
            live_soon.sort_unstable();
            let room = self.pools[p].budget.room_ahead(now, &live_soon, pace, keep);
            self.due_soon = live_soon;
            if !room {
                return false;
            }
            let refused = &self.pools[p].auth_failing;
            if let Some(pk) = self
                .watch
                .catch_up(p.index(), now, |k| refused.contains_key(k))
            {
                caught = true;
                pk
            } else {
                let Some(pk) = self.watch.pick(p.index(), now, |k| refused.contains_key(k)) else {
                    return false;
                };
                pk
            }
        } else {
            let Some(pk) = self.watch.due_recheck(p.index(), now) else {
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
        if turn != LateTurn::Recheck {
            self.watch.spent(p.index(), now, caught);
        } else {
            self.pools[p].recheck_sent.push_back(now);
        }
        self.start_flight(p);
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
    pub(super) fn live_head(&mut self, p: PoolId, recheck: bool) -> Option<(SchedMs, PaymentKey)> {
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
    pub(super) fn peek_due(&mut self, p: PoolId, now: SchedMs) -> Option<(Queue, PaymentKey)> {
        if let Some((due, pk)) = self.live_head(p, true) {
            if due <= now {
                return Some((Queue::Recheck, pk));
            }
        }
        // Keeping up, the plans fit the budget, so they run as planned, earliest due
        // first, in O(log n). That needs no model: right after the traffic changes the
        // learnt flip ages are wrong, and ranking by them would put the wrong checks first.
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
        let mut earliest = None;
        let mut any_backlog = false;
        // One look at each item's payment: whether it is live, and in the backlog.
        ready.retain(|&item| {
            let Some(e) = self.live_ready(item) else {
                return false;
            };
            earliest = Some(earliest.map_or(item.0, |d: SchedMs| d.min(item.0)));
            any_backlog |= e.backlog;
            true
        });
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
            Some(_) => self.behind(p, now, ready, any_backlog, on_time, piled),
        }
    }

    /// The next due check of a pool that is behind: with more due than the budget sends in
    /// `lag` (a burst), a check late by more than `on_time` puts its payment in the backlog;
    /// without a backlog every due check goes by worth, with one the checks on plan go
    /// earliest due first and the backlog by worth within its share. `ready`: live items
    /// only; `any_backlog`: whether one of them is in the backlog.
    fn behind(
        &mut self,
        p: PoolId,
        now: SchedMs,
        ready: Vec<(SchedMs, u64, PaymentKey)>,
        mut any_backlog: bool,
        on_time: i64,
        piled: bool,
    ) -> Option<(Queue, PaymentKey)> {
        if piled {
            for &(due, _, pk) in &ready {
                if let Some(e) = self.entries.get_mut(&pk) {
                    let late = now - due.max(e.due_from);
                    if !e.backlog && !e.kind.is_list() && late > on_time {
                        e.backlog = true;
                        any_backlog = true;
                        self.pools[p].backlog_since.get_or_insert(now);
                    }
                }
            }
        }
        // Without a backlog, every due check by worth.
        if !any_backlog {
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
        let mut on_plan: Option<(bool, SchedMs, u64, PaymentKey)> = None;
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
        // room to spare and are not made late by chance.
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

    /// How late a check may go and still be on plan: a twentieth of a window, or the time
    /// the budget takes to send [`ON_PLAN_REQUESTS`] requests if longer (checks due
    /// together wait their turn), at most the lag that makes a key behind.
    pub(super) fn on_time(&self, p: PoolId) -> i64 {
        let limit = i64::from(self.pools[p].budget.effective_limit().max(1));
        (self.window / ON_PLAN_DIVISOR)
            .max(ON_PLAN_REQUESTS * self.window / limit)
            .min(self.window / BEHIND_DIVISOR)
    }

    /// The room the backlog leaves free for the checks on plan (see
    /// [`BACKLOG_LEAVES_DIVISOR`]).
    pub(super) fn backlog_leaves(&self, p: PoolId) -> u32 {
        let pool = &self.pools[p];
        if pool.on_plan {
            pool.budget.effective_limit() / BACKLOG_LEAVES_DIVISOR
        } else {
            0
        }
    }

    /// The payment of a `ready` item, if the item still stands for its current plan.
    pub(super) fn live_ready(&self, (_, gen, pk): (SchedMs, u64, PaymentKey)) -> Option<&Entry> {
        self.entries
            .get(&pk)
            .filter(|e| e.gen == gen && !e.in_flight && !e.recheck)
    }

    /// How much a check of a due payment is worth now. A check ends the wait of a flip that
    /// happened since the last one, so while the key is short the due check most likely to
    /// see one goes first: `P(flipped in (last, now] | pending at last)` from the kind's
    /// learnt flip ages. The same rule for every payment (its age, kind and last check),
    /// whenever it arrived. A check late by more than [`PATIENCE_WINDOWS`] outranks them
    /// all, earliest due first, so none waits for ever (deadline checks included).
    pub(super) fn worth(&self, e: &Entry, due: SchedMs, now: SchedMs) -> f64 {
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
    pub(super) fn take(&mut self, p: PoolId, pk: PaymentKey, from: Queue) {
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

    pub(super) fn defer(&mut self, p: PoolId, pk: PaymentKey, from: Queue, until: SchedMs) {
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

    /// Without a key no request is made: the payment stays due and the error says why.
    pub(super) fn no_key(
        &mut self,
        p: PoolId,
        pk: PaymentKey,
        from: Queue,
        now: SchedMs,
        out: &mut Vec<Action>,
    ) {
        let retry = now + (self.window / 10).max(1000);
        if let Some(e) = self.entries.get(&pk) {
            out.push(Action::Record(vec![Outcome {
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

    pub(super) fn launch(
        &mut self,
        p: PoolId,
        kind: Arc<Kind>,
        pks: Vec<PaymentKey>,
        now: SchedMs,
        room: SchedMs,
    ) -> Request {
        let mut ids = Vec::with_capacity(pks.len());
        let mut started = Vec::with_capacity(pks.len());
        for pk in &pks {
            if let Some(e) = self.entries.get_mut(pk) {
                e.in_flight = true;
                // Due since its plan made it so: a replan to a cheaper level moves `due`
                // into the past, but planned then, the check was due no earlier. Late
                // once the budget had room for it: the wait before is the budget's.
                let due = e.due.max(e.due_from);
                let pool = &mut self.pools[p];
                pool.lateness_ms.push((now - due.max(room)).max(0));
                pool.budget_wait_ms.push((room.min(now) - due).max(0));
                ids.push(e.id.clone());
                started.push(e.t0);
            }
        }
        self.start_flight(p);
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

    /// Earliest time anything can happen without an outside event.
    pub fn next_wake(&mut self, now: SchedMs) -> Option<SchedMs> {
        if self.in_flight >= MAX_TOTAL_IN_FLIGHT {
            return None; // an answer wakes us
        }
        if self.wakes.any_touched() {
            return Some(now);
        }
        self.wakes.first()
    }

    /// When pool `p` next has something to do, as of a visit at `now` (`None`: only an
    /// event: an answer, a payment, a refill).
    pub(super) fn pool_wake(&mut self, p: PoolId, now: SchedMs) -> Option<SchedMs> {
        if !self.has_slot(p) {
            // An answer wakes it: its own, or under the total bound any key's, if it has
            // checks waiting.
            let pool = &self.pools[p];
            let waiting = !pool.ready.is_empty()
                || !pool.heap.is_empty()
                || !pool.rechecks.is_empty()
                || self.watch.next_due(p.index(), now).is_some()
                || self.watch.any_due(p.index(), now);
            if pool.in_flight < self.max_in_flight && waiting {
                self.wakes.hold(p.index());
            }
            return None;
        }
        let mut wake: Option<SchedMs> = None;
        let mut ready = std::mem::take(&mut self.pools[p].ready);
        let mut all_backlog = true;
        ready.retain(|&item| {
            let Some(e) = self.live_ready(item) else {
                return false;
            };
            all_backlog &= e.backlog;
            true
        });
        if !ready.is_empty() {
            let keep = if all_backlog {
                self.backlog_leaves(p)
            } else {
                0
            };
            let at = self.pools[p]
                .budget
                .next_room_beyond(now, keep)
                .unwrap_or(SchedMs::MAX);
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        self.pools[p].ready = ready;
        for recheck in [true, false] {
            if let Some((due, _)) = self.live_head(p, recheck) {
                let at = if due <= now {
                    self.pools[p]
                        .budget
                        .next_room_at(now)
                        .unwrap_or(SchedMs::MAX)
                } else {
                    due
                };
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        // Checks of watched payments as they come due; one due already waits for spare
        // room (or the rechecks' share), which the tick looks at.
        if let Some(due) = self.watch.next_due(p.index(), now).filter(|d| *d > now) {
            wake = Some(wake.map_or(due, |w| w.min(due)));
        }
        wake.filter(|w| *w != SchedMs::MAX)
    }
}
