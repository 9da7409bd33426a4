//! Tracking: a payment comes in (or is resumed), is forgotten, or is asked to be checked
//! sooner; its next check is planned from its kind's schedule at the key's price level.

use super::*;

impl Core {
    /// Starts tracking a pending payment (a duplicate is ignored). `resumed`: read back at
    /// start-up, where a stored next check earlier than the plan is a manual recheck that
    /// must survive the restart. Times are on the core's clock. `payment` is a [`Tracked`],
    /// or what converts into one (a payment whose id does not parse is not polled).
    pub fn track<T>(&mut self, payment: T, now: SchedMs, resumed: bool)
    where
        T: TryInto<Tracked>,
        T::Error: std::fmt::Display,
    {
        let row = match payment.try_into() {
            Ok(row) => row,
            Err(e) => {
                tracing::warn!(error = %e, "payment with an invalid id in the database is not polled");
                return;
            }
        };
        if self.entries.contains_key(&row.pk) {
            return;
        }
        let Some(kind) = self.kinds.get(&row.kind).cloned() else {
            tracing::warn!(kind = %row.kind, id = %row.id, "payment of a kind no longer configured stays pending, unpolled");
            return;
        };
        let Some(pool) = self.pool_of(&row.account, &row.kind) else {
            tracing::warn!(account = %row.account, kind = %row.kind, id = %row.id, "payment of an account no longer configured stays pending, unpolled");
            return;
        };
        let id = row.id;
        let model = self.model_for(&row.account, &kind, pool, Some(now));
        if !resumed {
            self.models[model].arrivals.push_back(now);
        }
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
        self.touch(e.pool);
        self.entries.insert(e);
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
    pub fn recheck(&mut self, pk: PaymentKey, now: SchedMs) -> Option<SchedMs> {
        if self.watch.holds(&pk) {
            self.wakes.touch_all();
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
        let p = e.pool;
        self.touch(p);
        Some(at)
    }

    pub(super) fn queue(&mut self, e: &Entry) {
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
    pub(super) fn plan(&self, e: &mut Entry) {
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
        // later than it may be only delays the flips it sees (most, on a mix that flips
        // before the first check).
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

    /// Resumes watching a payment under reconciliation at start-up (or after a merchant's
    /// recheck of one whose watch had ended): `next_check_at` is its stored next check.
    /// Times are on the core's clock.
    pub fn watch(&mut self, row: Watched, now: SchedMs) -> Option<SchedMs> {
        if self.entries.contains_key(&row.pk) {
            return None;
        }
        let kind = self.kinds.get(&row.kind).cloned()?;
        let pool = self.pool_of(&row.account, &row.kind)?;
        // Its account's model, so that the key reports the kind (and its watch) even
        // while none of its payments is live.
        self.model_for(&row.account, &kind, pool, None);
        let start = WatchStart {
            pk: row.pk,
            kind,
            id: row.id,
            pool: pool.index(),
            started: row.started_at,
            state: row.state,
            ended: row.ended_state,
            upstream_status: row.upstream_status,
            seen: row.seen_at.unwrap_or(row.started_at),
        };
        self.wakes.touch_all();
        self.watch.start(start, Some(row.next_check_at), now)
    }

    /// Payments under reconciliation now.
    pub fn watched(&self) -> usize {
        self.watch.len()
    }
}
