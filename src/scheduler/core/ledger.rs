//! The budget ledger: a reserve of pre-committed rows per key, refilled before it runs
//! out, and what a previous run spent.

use super::*;

impl Core {
    /// Counts a request made before a restart (see [`Budget::restore`]).
    pub fn restore_spent(&mut self, ledger_id: &str, done_at: Option<SchedMs>, now: SchedMs) {
        let Some(pools) = self.ledger_pools.get(ledger_id) else {
            return;
        };
        for &p in pools {
            self.pools[p].budget.restore(done_at, now);
        }
    }

    /// Keeps a reserve of pre-committed ledger rows of at least the in-flight bound.
    pub(super) fn ensure_reserve(&mut self, p: PoolId, out: &mut Vec<Action>) {
        let want = self.max_in_flight.max(4);
        let pool = &mut self.pools[p];
        if pool.spec.has_key && !pool.refilling && pool.ledger_keys.len() < want {
            pool.refilling = true;
            out.push(Action::Refill {
                pool: p,
                ledger_id: pool.spec.ledger_id.clone(),
                count: 2 * want - pool.ledger_keys.len(),
            });
        }
    }

    /// Ledger rows committed for pool `p` (or `None`: the refill failed; ask again).
    pub fn refilled(&mut self, p: PoolId, keys: Option<Vec<LedgerKey>>) {
        if let Some(pool) = self.pools.get_mut(p) {
            // A failed refill is asked again at the key's next visit, not at once: the
            // writer is busy, and asking in a loop would only keep it so.
            let got = keys.is_some();
            pool.ledger_keys.extend(keys.into_iter().flatten());
            pool.refilling = false;
            if got {
                self.touch(p);
            }
        }
    }

    /// Ledger rows no request used: not spent budget.
    pub fn drain_reserve(&mut self) -> Vec<LedgerKey> {
        self.pools
            .iter_mut()
            .flat_map(|p| p.ledger_keys.drain(..))
            .collect()
    }
}
