//! Status: what each key publishes for health and metrics.

use super::*;

impl Core {
    /// Every key's state, for health and metrics. Takes the lateness gathered since the
    /// last call.
    pub fn status(&mut self, now: SchedMs) -> Vec<PoolStatus<SchedMs>> {
        let unit = self.grid.unit_ms();
        let mut out = Vec::with_capacity(self.pools.len());
        // Each key's payments per kind, backlog and earliest due check, in one pass over the
        // payments (not one per key: a daemon of many accounts has many keys).
        let n = self.pools.len();
        let mut held_of: Vec<HashMap<&str, usize>> = vec![HashMap::new(); n];
        let mut backlog_of = vec![0usize; n];
        let mut due_of = vec![now; n];
        for e in self.entries.values() {
            let i = e.pool.index();
            *held_of[i].entry(e.kind.name.as_str()).or_default() += 1;
            backlog_of[i] += usize::from(e.backlog);
            if !e.in_flight {
                due_of[i] = due_of[i].min(e.due);
            }
        }
        for p in self.pools.ids() {
            let held = std::mem::take(&mut held_of[p.index()]);
            let (backlog, earliest_due) = (backlog_of[p.index()], due_of[p.index()]);
            let pending = held.values().sum();
            let mut kinds = Vec::new();
            let own = self
                .pool_models
                .get(p.index())
                .map_or(&[][..], Vec::as_slice);
            for model in own.iter().map(|&m| &self.models[m]) {
                let name = &model.kind;
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
                        let s = (self.watch.stats().get(&(p.index(), name.clone())))
                            .copied()
                            .unwrap_or_default();
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
                account: pool.spec.account.clone(),
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
                budget_wait_ms: std::mem::take(&mut pool.budget_wait_ms),
                kinds,
            });
        }
        out
    }
}
