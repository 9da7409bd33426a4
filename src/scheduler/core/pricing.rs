//! Pricing: each key's price level, the lowest whose projected demand over the next window
//! fits the budget, and the replan of its payments when it moves.

use super::*;

impl Core {
    /// Periodic work: re-learns the flip distributions now and then, and sets the keys'
    /// price levels (every key's, or with many a share in turn) from the demand each
    /// projects over the next window.
    pub fn tick(&mut self, now: SchedMs) {
        // Prices, budgets and the spare room for late checks move: every key is looked at.
        self.wakes.touch_all();
        // Each kind's arrival rate, once a tick: the refit and every key's level read it.
        let arrivals: Vec<(f64, usize)> = (0..self.models.len())
            .map(|m| self.arrival_rate(m, now))
            .collect();
        let refit_every = (self.window / 20).max(1);
        if now - self.last_fit >= refit_every {
            self.last_fit = now;
            self.pool_priors(now);
            self.refit_next = Some(0);
        }
        self.refit(now, &arrivals);
        let priced = self.priced_this_tick();
        for p in self.pools.ids() {
            self.pools[p].budget.recover(now);
            if priced(p.index()) {
                self.set_level(p, now, &arrivals);
            }
            // The live pace, for what they are taken to want of a window to come.
            let pool = &mut self.pools[p];
            forget_older(&mut pool.live_sent, self.window, now);
            let pace = pool.live_sent.len() as f64;
            pool.live_pace.observe(pace, now, self.window);
        }
        self.unsent.extend(self.watch.tick(now));
        // Late moves come over hours: the models move slowly, and a refit a window is plenty.
        if now - self.last_watch_fit >= self.window {
            self.last_watch_fit = now;
            self.watch.refit(now);
            for p in self.pools.ids() {
                let supply = self.late_supply(p, now);
                self.watch.price(p.index(), supply, now);
            }
        }
    }

    /// Which keys this tick prices (by index), and the turn moved on: every key while
    /// there are at most [`PRICED_PER_TICK`], else a share in turn, so that each is priced
    /// at least every [`PRICE_ROUND_TICKS`] ticks. A key's projection over a window moves
    /// little in a few seconds, and pricing a thousand keys every second would cost more
    /// than their checks.
    fn priced_this_tick(&mut self) -> impl Fn(usize) -> bool + use<> {
        let n = self.pools.len();
        let share = n.min(PRICED_PER_TICK.max(n.div_ceil(PRICE_ROUND_TICKS)));
        let from = self.price_from;
        self.price_from = (from + share) % n.max(1);
        // The keys from `from` on, `share` of them, wrapping round.
        move |i| (i + n - from) % n.max(1) < share
    }

    /// Requests per window the live payments of pool `p` leave for late checks: the
    /// budget less their need over the next window and the share kept for their spurts
    /// (what [`Core::send_watched`]'s rule lets through in a steady state).
    fn late_supply(&mut self, p: PoolId, now: SchedMs) -> f64 {
        let limit = self.pools[p].budget.effective_limit();
        let keep = limit / BACKLOG_LEAVES_DIVISOR;
        f64::from(limit) - f64::from(keep) - self.live_need(p, now)
    }

    /// Requests the live payments of pool `p` are taken to want over the next window
    /// (see [`spare::LivePace`]).
    pub(super) fn live_need(&mut self, p: PoolId, now: SchedMs) -> f64 {
        let window = self.window;
        let pool = &mut self.pools[p];
        forget_older(&mut pool.live_sent, window, now);
        pool.live_pace.need(pool.live_sent.len() as f64)
    }

    /// Sets pool `p`'s price level from the demand it projects over the next window;
    /// `arrivals` as for [`Core::refit`].
    pub(super) fn set_level(&mut self, p: PoolId, now: SchedMs, arrivals: &[(f64, usize)]) {
        let pool = &mut self.pools[p];
        forget_older(&mut pool.recheck_sent, self.window, now);
        let limit = pool.budget.effective_limit() as f64;
        let target = limit * PLAN_SHARE - pool.recheck_sent.len() as f64;
        let priced = self.price(p, now, arrivals, limit, target);
        let old = self.pools[p].level;
        let pool = &mut self.pools[p];
        // Only the budget makes a backlog: a pile that the in-flight bound holds up
        // clears at the pace of the answers.
        pool.piled = priced.due > priced.pile && f64::from(pool.budget.used(now)) >= target;
        pool.on_plan = priced.held - priced.backlog > 0;
        pool.projected = priced.projected;
        pool.arrivals = priced.arrivals;
        pool.target = target;
        let level = priced.level;
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

    /// The price level of pool `p` for a `target` of requests over the next window, and
    /// what it was judged by.
    fn price(
        &self,
        p: PoolId,
        now: SchedMs,
        arrivals: &[(f64, usize)],
        limit: f64,
        target: f64,
    ) -> Priced {
        let (rates, last_window): (Vec<f64>, Vec<usize>) = arrivals.iter().copied().unzip();
        let members: Vec<&Entry> = self.entries.of_pool(p).filter(|e| !e.in_flight).collect();
        let pile = limit as usize / BEHIND_DIVISOR as usize;
        let due = members
            .iter()
            .filter(|e| !e.recheck && e.due <= now)
            .count();
        // The backlog needs a check per payment at least; it gets up to its share of the
        // budget, and the schedules of the payments on plan are priced for the rest.
        let backlog = members.iter().filter(|e| e.backlog).count() as f64;
        let target_plan = target - backlog.min(self.backlog_share * target);
        let held = members.len();
        let demand = Demand {
            now,
            horizon: (self.window / self.grid.unit_ms()).max(1) as usize,
            grid: &self.grid,
            models: &self.models,
            own: self.pool_models.get(p.index()).map_or(&[], Vec::as_slice),
            rates: &rates,
            members,
        };
        let top = self.models.first().map_or(0, |m| m.plans.top());
        let (mut level, mut projected) = fit(&|l| demand.at(l), top, target_plan);
        // Overload (a burst): the payments held need more than the budget even at the
        // dearest schedules, or a backlog takes its share, or a burst spread over minutes is
        // coming in (far more payments arrived in the last window than the stream's rate
        // brings, and at the stream's price they would need more than the budget sends in
        // half a window beyond it). Raising the price for them all would send every
        // payment, the stream's too, deadline-only, and leave the budget unused until the
        // deadlines pile up; a window later that room is missing, and the stream's checks
        // go late and join the backlog. So the price is never dearer than the one at which
        // a steady stream at the recent arrival rate (which ignores a burst) fits: the held
        // checks that do not fit go late and join the backlog.
        let (arrived, expected) = demand.arrived(&last_window);
        // Far more arrivals than a Poisson stream at the rate brings, and too many to price
        // in.
        let bursting = arrived > burst_cap(expected);
        let overload = backlog > 0.0 || projected > target_plan;
        if overload || bursting {
            let (l, d) = fit(&|l| demand.stream(l), top, target_plan);
            let priced_in = || demand.at(l.floor() as usize) - target_plan > pile as f64;
            if l < level && (overload || priced_in()) {
                (level, projected) = (l, d);
            }
        }
        if level > 0.0 {
            // Spending the budget pays only while the extra checks see flips sooner. Where
            // the dearer schedules lose (next to) nothing, e.g. when the flips come before
            // the first check allowed and the rest never flip, the cheaper is taken: the
            // checks saved would only queue at the limiter ahead of ones that see flips.
            if let Some(l) = crate::policy::dearest_alike(level, top, |l| demand.flip_delay(l)) {
                level = l as f64;
                projected = demand.at(l);
            }
        }
        Priced {
            level,
            projected,
            due,
            pile,
            held,
            backlog: backlog as usize,
            arrivals: demand.per_window(),
        }
    }

    pub(super) fn replan_pool(&mut self, p: PoolId, now: SchedMs) {
        let pks: Vec<PaymentKey> = self
            .entries
            .of_pool(p)
            .filter(|e| !e.in_flight && !e.recheck)
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
            self.entries.insert(e);
        }
        self.pools[p].heap = heap;
        // Every plan is queued again, by its new due time.
        self.pools[p].ready.clear();
    }
}

/// A key's price level and what it was judged by.
struct Priced {
    level: f64,
    projected: f64,
    /// Planned checks due now.
    due: usize,
    /// More due than this is a pile (what the budget sends in half a window).
    pile: usize,
    /// Payments held, not in flight.
    held: usize,
    /// Of them, in the backlog.
    backlog: usize,
    /// Payments arriving per window (kinds checked one by one) at the recent rates.
    arrivals: f64,
}

/// What a key's demand at a price level is projected from: its payments held and its
/// kinds' arrival rates (per grid cell).
struct Demand<'a> {
    now: SchedMs,
    /// The budget's window, in grid cells.
    horizon: usize,
    grid: &'a Grid,
    models: &'a [Model],
    /// The models of this key.
    own: &'a [usize],
    rates: &'a [f64],
    members: Vec<&'a Entry>,
}

impl Demand<'_> {
    /// This key's models, with their index.
    fn own(&self) -> impl Iterator<Item = (usize, &Model)> {
        self.own.iter().map(|&m| (m, &self.models[m]))
    }

    /// The kinds of this key checked one by one that are arriving, with their model index.
    fn streams(&self) -> impl Iterator<Item = (usize, &Model)> {
        self.own()
            .filter(|(m, model)| !model.list && self.rates[*m] > 0.0)
    }

    /// Requests over the next window at `level`: of the payments on plan, and of those
    /// still to come.
    fn at(&self, level: usize) -> f64 {
        let (grid, now) = (self.grid, self.now);
        let mut n = 0.0;
        let mut lists: HashMap<&str, f64> = HashMap::new();
        for e in self.members.iter().filter(|e| !e.backlog) {
            let plans = &self.models[e.model].plans;
            let list = e.kind.is_list();
            let table = plans.at(if list { 0 } else { level });
            let last = e.last.map_or(0, |l| grid.cell(l - e.t0).max(1));
            let age = grid.cell(now - e.t0);
            let due = if e.recheck { age } else { table.next(last) };
            let c = table.demand(&plans.dist, last, due, age, self.horizon);
            if list {
                let slot = lists.entry(e.kind.name.as_str()).or_insert(0.0);
                *slot = slot.max(c);
            } else {
                n += c;
            }
        }
        // Payments still to come, at the recent rate, each on the same schedule.
        for (m, model) in self.streams() {
            n += self.rates[m] * model.plans.at(level).per_window;
        }
        n + lists.values().sum::<f64>()
    }

    /// Requests over the next window at `level` of a steady stream at the recent rates.
    fn stream(&self, level: usize) -> f64 {
        self.streams()
            .map(|(m, model)| self.rates[m] * self.horizon as f64 * model.plans.at(level).checks)
            .sum()
    }

    /// Payments of the kinds checked one by one: arrived in the last window, and expected
    /// in a window at the recent rates.
    fn arrived(&self, last_window: &[usize]) -> (f64, f64) {
        self.own()
            .filter(|(_, model)| !model.list)
            .map(|(m, _)| (last_window[m] as f64, self.rates[m] * self.horizon as f64))
            .fold((0.0, 0.0), |(a, e), (x, y)| (a + x, e + y))
    }

    /// Payments arriving per window (kinds checked one by one) at the recent rates.
    fn per_window(&self) -> f64 {
        self.own()
            .filter(|(_, model)| !model.list)
            .map(|(m, _)| self.rates[m] * self.horizon as f64)
            .sum()
    }

    /// The arriving flips' delay at level `l`, weighted by arrivals.
    fn flip_delay(&self, l: f64) -> f64 {
        self.streams()
            .map(|(m, model)| self.rates[m] * model.plans.dist.flips() * model.plans.delay(l))
            .sum()
    }
}
