//! List kinds: one listing answers every pending payment of the kind; its cadence is the
//! densest member's step, and a listing cut short pages further back next time.

use super::*;

impl Core {
    /// The pending payments of a list kind one request covers: every one whose first
    /// check is due by now or that was checked before, and the one that is due.
    pub(super) fn list_members(
        &self,
        p: PoolId,
        kind: &Kind,
        due: PaymentKey,
        now: SchedMs,
    ) -> Vec<PaymentKey> {
        let mut members: Vec<(SchedMs, PaymentKey)> = self
            .entries
            .of_pool(p)
            .filter(|e| {
                e.kind.name == kind.name
                    && !e.in_flight
                    && (e.pk == due || e.due <= now || e.last.is_some())
            })
            .map(|e| (if e.pk == due { SchedMs::MIN } else { e.due }, e.pk))
            .collect();
        members.sort_unstable();
        let max = kind.list.as_ref().map_or(1, |l| l.max_limit as usize);
        members.truncate(max);
        members.into_iter().map(|(_, pk)| pk).collect()
    }

    /// After a listing: the kind's next one waits for the densest member's step, unless it
    /// came back cut short; then the next, twice as large, goes now.
    pub(super) fn listing_answered(
        &mut self,
        p: PoolId,
        kind: &Kind,
        done: &Completion,
        seen: &answers::Answers,
    ) {
        let mut cadence = seen.min_every.filter(|&m| m != i64::MAX).unwrap_or(0);
        let max = kind.list.as_ref().map_or(1, |l| l.max_limit);
        let asked = self.list_limit.get(&kind.name).copied().unwrap_or(0);
        let asked = asked.max(kind.list_limit(done.pks.len()));
        if seen.truncated && asked < max {
            let grown = asked.saturating_mul(2).min(max);
            tracing::info!(kind = %kind.name, limit = grown, "a listing did not reach back to every payment's start; asking for more");
            self.list_limit.insert(kind.name.clone(), grown);
            cadence = 0;
        }
        self.pools[p]
            .list_not_before
            .insert(kind.name.clone(), done.done_at + cadence);
    }
}
