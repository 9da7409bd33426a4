//! Learning: the flip ages of each kind from interval-censored evidence, over a recent and
//! a long memory, and each kind's arrival rate.

use super::*;

impl Core {
    /// Learns from a payment that finished before a restart: `pending_seen`: the last
    /// check that saw it pending; `final_at`: the check that saw it final (`None`: it
    /// timed out or was cancelled, so no flip was seen).
    pub fn learn(
        &mut self,
        account: &AccountName,
        kind: &KindName,
        started: SchedMs,
        pending_seen: Option<SchedMs>,
        final_at: Option<SchedMs>,
    ) {
        let Some(k) = self.kinds.get(kind).cloned() else {
            return;
        };
        let Some(pool) = self.pool_of(account, kind) else {
            return;
        };
        let m = self.model_for(account, &k, pool, None);
        let lo = pending_seen.map_or(0, |t| self.grid.cell(t - started));
        let hi = final_at.map(|t| self.grid.cell_ceil(t - started).max(lo + 1));
        self.observe(m, started, Evidence { lo, hi });
    }

    /// Evidence of a model's payment: its own, and its kind's across accounts.
    pub(super) fn observe(&mut self, m: usize, started: SchedMs, e: Evidence) {
        let model = &mut self.models[m];
        model.learner.observe(started, e);
        model.unfit = true;
        if let Some(pooled) = self.pooled.get_mut(&model.kind) {
            pooled.observe(started, e);
        }
    }

    /// Fixes a kind's flip distribution instead of learning it (the simulator's oracle,
    /// which names kinds as text).
    pub fn assume(&mut self, kind: &str, dist: crate::policy::FlipDist) {
        if let Some(m) = self.default_model(kind) {
            let window_cells = (self.window / self.grid.unit_ms()).max(1) as usize;
            self.models[m].plans = Arc::new(Plans::new(&self.grid, dist, window_cells));
            self.models[m].fixed = true;
        }
    }

    /// A kind's current plans (its learnt or assumed flip ages and their schedules).
    /// For the simulator, which names kinds as text.
    pub fn plans(&self, kind: &str) -> Option<&Plans> {
        self.default_model(kind).map(|m| &*self.models[m].plans)
    }

    /// The account `default`'s model of `kind`.
    fn default_model(&self, kind: &str) -> Option<usize> {
        self.model_of
            .iter()
            .find(|((a, k), _)| a.is_default() && k.as_str() == kind)
            .map(|(_, &m)| m)
    }

    /// Each kind learnt across accounts, as the prior of every account's own estimate of
    /// it: an account with little evidence stays near it, one with much follows its own.
    /// A kind only one account uses keeps the ladder's prior.
    pub(super) fn pool_priors(&mut self, now: SchedMs) {
        let mut users: HashMap<&KindName, usize> = HashMap::new();
        for m in &self.models {
            *users.entry(&m.kind).or_default() += 1;
        }
        let shared: Vec<KindName> = users
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(k, _)| k.clone())
            .collect();
        for kind in shared {
            let Some(pooled) = self.pooled.get_mut(&kind) else {
                continue;
            };
            let dist = pooled.fit(now, std::iter::empty()).clone();
            for m in self.models.iter_mut().filter(|m| m.kind == kind) {
                m.learner.set_prior(dist.clone());
                m.unfit = true;
            }
        }
    }

    /// How far back the learner may remember payments (its long memory at most): what a
    /// restart rebuilds it from.
    pub fn memory_ms(&self) -> i64 {
        memory_horizon_ms(self.ladder.timeout_ms(), self.window)
    }

    /// The learner's unit of memory: a payment's lifetime (the ladder's timeout), or the
    /// budget's window if that is longer.
    pub(super) fn life_ms(&self) -> i64 {
        self.ladder.timeout_ms().max(self.window)
    }

    /// Learns from a payment watched before a restart (see [`Watch::learn`]).
    pub fn learn_late(
        &mut self,
        kind: &KindName,
        ended: State,
        started: SchedMs,
        seen: Option<SchedMs>,
        moved: Option<SchedMs>,
    ) {
        self.watch.learn(kind, ended, started, seen, moved);
    }

    /// How far back a restart reads the evidence of late moves.
    pub fn late_memory_ms(&self) -> i64 {
        self.watch.memory_ms()
    }

    /// Fits the next models of the round of refits in progress (see [`FITTED_PER_TICK`]).
    /// `arrivals`: per model, [`Core::arrival_rate`]'s rate and last window's count.
    pub(super) fn refit(&mut self, now: SchedMs, arrivals: &[(f64, usize)]) {
        let Some(from) = self.refit_next else {
            return;
        };
        let n = arrivals.len().min(self.models.len());
        let to = n.min(from.saturating_add(FITTED_PER_TICK.max(n.div_ceil(FIT_ROUND_TICKS))));
        self.refit_next = (to < n).then_some(to);
        let window_cells = (self.window / self.grid.unit_ms()).max(1) as usize;
        let life = self.life_ms();
        // The pending payments' evidence of the models fitted now: one pass over the
        // payments of their keys.
        let mut pending_of: Vec<Vec<Evidence>> = vec![Vec::new(); to.saturating_sub(from)];
        let mut keys: Vec<PoolId> = self.models[from..to].iter().map(|m| m.pool).collect();
        keys.sort_unstable();
        keys.dedup();
        for p in keys {
            for e in self.entries.of_pool(p) {
                if let (Some(l), Some(of)) = (e.last, e.model.checked_sub(from)) {
                    if let Some(pending) = pending_of.get_mut(of) {
                        pending.push(Evidence {
                            lo: self.grid.cell(l - e.t0),
                            hi: None,
                        });
                    }
                }
            }
        }
        for (m, &(rate, _)) in arrivals.iter().enumerate().take(to).skip(from) {
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
            let pending = std::mem::take(&mut pending_of[m - from]);
            let model = &mut self.models[m];
            // An idle kind (nothing learnt since its last fit, no payment held) keeps its
            // estimate: a fit would only age its evidence, and the plans it gives would
            // wait for the next payment, whose own fit comes within the refit interval.
            if model.fixed || (!model.unfit && pending.is_empty()) {
                continue;
            }
            model.unfit = false;
            let before = model.plans.dist.clone();
            let dist = model.learner.fit(now, pending.into_iter()).clone();
            let moved = (0..=self.grid.cells())
                .map(|a| (dist.survival(a) - before.survival(a)).abs())
                .fold(0.0, f64::max);
            // Solving the tables is the costly part: only when the estimate moved.
            if moved > 0.005 || model.fresh > 200 {
                model.plans = Arc::new(Plans::new(&self.grid, dist, window_cells));
                model.fresh = 0;
            }
        }
    }

    /// Arrivals per grid cell of a kind (see [`crate::policy::arrival_rate`]), and how many
    /// arrived in the last window.
    pub(super) fn arrival_rate(&mut self, m: usize, now: SchedMs) -> (f64, usize) {
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
            let i = ((now - *t) / slice).max(0) as usize;
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
}
