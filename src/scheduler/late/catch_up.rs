//! Catching a move within a day: the waiting payments last seen almost a day ago that
//! go ahead of the spare budget's other choices (see [`Queues::stale`]).

use super::{Queues, Watch, Watched, CATCH_WITHIN_MS};
use crate::kinds::KindName;
use crate::payment::{PaymentKey, SchedMs};
use crate::reconcile::{late_price_at, LATE_CELLS};

/// How early, before a day has passed since a payment was last seen, its turn to catch up
/// begins (see [`Watch::catch_up`]): room for the spare budget to come.
const CATCH_GUARD_MS: i64 = 3 * 3_600_000;

/// The payments of [`Queues::stale`] a move since whose last check can still be caught
/// within a day at `now`, the earliest seen first.
pub(super) fn stale(q: &Queues, now: SchedMs) -> impl Iterator<Item = &(SchedMs, PaymentKey)> {
    q.stale
        .range((now.saturating_sub(CATCH_WITHIN_MS), PaymentKey(i64::MIN))..)
}

/// When a payment last seen at `seen` goes ahead of the others (see [`Queues::stale`]).
pub(super) fn stale_at(seen: SchedMs) -> SchedMs {
    seen.saturating_add(CATCH_WITHIN_MS - CATCH_GUARD_MS)
}

/// The least chance of a move not seen yet (from its last check to the end of the
/// schedule, given none before) for which a payment is checked within a day of its last
/// check, however cheap the requests: below it, its check waits for the plans or the
/// likeliest rule.
pub(super) const STALE_CHANCE: f64 = 0.003;

/// What a move seen more than a day after it came costs, in ms of delay, when the key's
/// late price (ms of delay a request must save) decides whether a payment last seen
/// almost a day ago is worth a request ahead of the plans: four days. The plans count
/// delay alone; a customer who paid and has heard nothing for a day is a support call.
const MISSED_DAY_MS: f64 = 4.0 * CATCH_WITHIN_MS as f64;

/// How many of the payments due to catch up are weighed against the likeliest choice
/// at once, the earliest seen first.
const CATCH_LOOK: usize = 16;

/// How likely to hold an unseen move, against the likeliest other waiting payment, a
/// payment must be to catch up when its turn begins ([`CATCH_GUARD_MS`] before its day is
/// over). The share falls evenly to nothing by the end of its day: while there is time,
/// a spare request goes to the likelier move; by the end, the move a day would miss.
const CATCH_SHARE: f64 = 1.0;

impl Watch {
    /// Whether `e`, waiting, belongs in [`Queues::stale`]: its learnt chance of a move
    /// after its last check is at least [`STALE_CHANCE`] and worth a request at its key's
    /// late price, a missed day counting [`MISSED_DAY_MS`].
    pub(super) fn worth_catching_up(&self, e: &Watched) -> bool {
        let Some(m) = self.models.get(&(e.kind.name.clone(), e.ended)) else {
            return false;
        };
        let moves = self.grid.moves(&m.dist);
        let (start, end) = (self.grid.age_ms(0), self.grid.age_ms(LATE_CELLS));
        let seen = (e.seen - e.t0).clamp(start, end);
        let unmoved = super::unmoved(&moves, seen);
        if unmoved <= 0.0 {
            return false;
        }
        let chance = moves(seen, end).0 / unmoved;
        let price = self
            .pricing
            .get(e.pool)
            .map_or(0.0, |p| late_price_at(p.level));
        chance >= STALE_CHANCE && chance * MISSED_DAY_MS >= price
    }

    /// The payment of pool `p` that goes ahead of [`Watch::pick`]'s to catch a move
    /// within a day (see [`Queues::stale`]), if one is due by `now`: of the first
    /// [`CATCH_LOOK`] due, the earliest seen first, the first whose chance of an unseen
    /// move is at least the likeliest waiting payment's times [`CATCH_SHARE`], times the
    /// share of its turn left before its day is over. Kinds for which `blocked` holds are
    /// passed over. Only the spare budget's turn takes one: the plans are priced on what
    /// it leaves.
    pub fn catch_up(
        &self,
        p: usize,
        now: SchedMs,
        blocked: impl Fn(&KindName) -> bool,
    ) -> Option<PaymentKey> {
        let q = self.queues.get(p)?;
        let mut due = stale(q, now)
            .take_while(|(seen, _)| stale_at(*seen) <= now)
            .filter_map(|(_, pk)| self.entries.get(pk))
            .filter(|e| !blocked(&e.kind.name))
            .take(CATCH_LOOK)
            .peekable();
        due.peek()?;
        let best = self
            .likeliest_ahead(q, now, &blocked)
            .map_or(0.0, |(_, best)| best);
        due.find(|e| {
            let left = e
                .seen
                .0
                .saturating_add(CATCH_WITHIN_MS)
                .saturating_sub(now.0);
            let left = left.clamp(0, CATCH_GUARD_MS) as f64 / CATCH_GUARD_MS as f64;
            self.chance_now(e, now) >= best * CATCH_SHARE * left
        })
        .map(|e| e.pk)
    }

    /// `e`'s chance (see [`super::chance_since`]) of a move unseen at `now`.
    pub(super) fn chance_now(&self, e: &Watched, now: SchedMs) -> f64 {
        let Some(m) = self.models.get(&(e.kind.name.clone(), e.ended)) else {
            return 0.0;
        };
        let moves = self.grid.moves(&m.dist);
        super::chance_since(&moves, e.seen - e.t0).map_or(0.0, |chance| chance(now - e.t0))
    }
}
