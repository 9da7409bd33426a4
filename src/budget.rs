//! The per-key request budget: "1,000 requests per 10 minutes per API key; past it the key
//! is locked out for 1 hour". Pure bookkeeping, driven by the scheduler's clock.
//!
//! The provider counts a request when it arrives, somewhere between our send and its
//! answer, on its own clock. So a request occupies the window from its send until `window`
//! (plus a skew margin) after its answer: a new request is allowed only while fewer than
//! `limit` requests are in flight or answered within that span. That bound holds for
//! every rolling window the provider could draw, whatever the latency.

use crate::payment::{SchedMs, WallMs};
use std::collections::VecDeque;

/// The share of a key's budget a burst's backlog may take (`ninjapay.backlog_share`): the
/// rest stays priced for the payments on plan. Between [`BacklogShare::MIN`] and
/// [`BacklogShare::MAX`]: none would leave a backlog waiting for ever, all would leave the
/// payments after a burst only their deadline checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BacklogShare(f64);

impl BacklogShare {
    /// The least share allowed.
    pub const MIN: f64 = 0.05;
    /// The largest share allowed.
    pub const MAX: f64 = 0.9;
    /// The default: the payments that keep coming after a burst are back near their usual
    /// delay within minutes, while the burst still drains within hours (the figures are in
    /// benches/README.md, "A burst").
    pub const DEFAULT: Self = Self(0.2);

    /// The share, if within bounds.
    pub const fn new(share: f64) -> Option<Self> {
        if share >= Self::MIN && share <= Self::MAX {
            Some(Self(share))
        } else {
            None
        }
    }

    /// The share as a fraction of the budget.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for BacklogShare {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A rolling-window budget for one API key.
#[derive(Debug, Clone)]
pub struct Budget {
    limit: u32,
    /// The limit in force: lowered when the provider rate-limits us despite room.
    effective: u32,
    window: i64,
    margin: i64,
    in_flight: u32,
    /// When each answered request stops counting, the soonest first: answers come in
    /// time order, so keeping them sorted costs nothing, and what is asked at every
    /// wake-up (the n-th expiry, the expiries over the next window in order) reads them
    /// as they lie.
    expiries: VecDeque<SchedMs>,
    paused_until: SchedMs,
    last_shrink: SchedMs,
    /// Since when the count has been below the limit in force without a break (`None`:
    /// at the limit): when a request held for room could first have gone.
    room_since: Option<SchedMs>,
}

impl Budget {
    /// A budget of `limit` requests per `window_ms`.
    pub fn new(limit: u32, window_ms: i64) -> Self {
        Self {
            limit,
            effective: limit,
            window: window_ms,
            // Our clock and the provider's may drift apart: count 2% longer.
            margin: window_ms / 50 + 1,
            in_flight: 0,
            expiries: VecDeque::new(),
            paused_until: SchedMs(0),
            last_shrink: SchedMs(0),
            room_since: Some(SchedMs(0)),
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The limit in force.
    pub fn effective_limit(&self) -> u32 {
        self.effective
    }

    fn prune(&mut self, now: SchedMs) {
        while let Some(t) = self.expiries.front().copied().filter(|t| *t <= now) {
            self.expiries.pop_front();
            if self.room_since.is_none() && self.count() < self.effective {
                self.room_since = Some(t);
            }
        }
    }

    fn count(&self) -> u32 {
        self.in_flight + self.expiries.len() as u32
    }

    /// After the count or the limit in force moved: whether room is left.
    fn note_room(&mut self, now: SchedMs) {
        if self.count() >= self.effective {
            self.room_since = None;
        } else if self.room_since.is_none() {
            self.room_since = Some(now);
        }
    }

    /// Since when a request could have gone without a break, as of `now`: the moment the
    /// expiry or the pause's end that made the room came, `now` when there is none. A
    /// check held for the budget is on time from then, not from its due time.
    pub fn room_since(&mut self, now: SchedMs) -> SchedMs {
        self.prune(now);
        self.room_since
            .map_or(now, |t| t.max(self.paused_until))
            .min(now)
    }

    /// Requests that still count against the window at `now`.
    pub fn used(&mut self, now: SchedMs) -> u32 {
        self.prune(now);
        self.count()
    }

    /// Whether the key is paused (429/503 with or without `Retry-After`) at `now`.
    pub fn paused_until(&self, now: SchedMs) -> Option<SchedMs> {
        (self.paused_until > now).then_some(self.paused_until)
    }

    /// Takes one request's room if there is some.
    pub fn try_acquire(&mut self, now: SchedMs) -> bool {
        if self.paused_until > now || self.used(now) >= self.effective {
            return false;
        }
        self.in_flight += 1;
        self.note_room(now);
        true
    }

    /// Records the answer (or failure) of a request acquired earlier, at `done_at`.
    pub fn release(&mut self, done_at: SchedMs) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.expire_at(done_at + self.window + self.margin);
        self.note_room(done_at);
    }

    /// Counts a request made before a restart: answered at `done_at`, or, if its answer was
    /// never recorded, assumed answered at `now` (the latest it can have arrived).
    pub fn restore(&mut self, done_at: Option<SchedMs>, now: SchedMs) {
        let at = done_at.unwrap_or(now).min(now);
        self.expire_at(at + self.window + self.margin);
        self.note_room(now);
    }

    /// Counts a request until `at`, in order (at the back unless a restart's rows or an
    /// out-of-order answer say otherwise).
    fn expire_at(&mut self, at: SchedMs) {
        let i = self.expiries.partition_point(|t| *t <= at);
        self.expiries.insert(i, at);
    }

    /// When room may next appear, if none now: the end of a pause or the next expiry.
    /// `None` when only an in-flight request's answer can free room.
    pub fn next_room_at(&mut self, now: SchedMs) -> Option<SchedMs> {
        self.next_room_beyond(now, 0)
    }

    /// Whether one more request now leaves room, at every moment of the next window, for
    /// the requests that must not wait and `keep` more, counting the window's requests as
    /// they expire. Those requests: by any moment `t`, the more of the sorted due times
    /// `due` up to `t` and a steady `per_window` requests a window since `now`.
    pub fn room_ahead(
        &mut self,
        now: SchedMs,
        due: &[SchedMs],
        per_window: f64,
        keep: u32,
    ) -> bool {
        debug_assert!(due.is_sorted(), "due times sorted");
        if self.paused_until > now {
            return false;
        }
        let used = u64::from(self.used(now)) + 1 + u64::from(keep);
        let limit = u64::from(self.effective);
        if used > limit {
            return false;
        }
        let window = self.window.max(1);
        let end = now.saturating_add(window);
        let steady = |t: SchedMs| -> u64 {
            (per_window.max(0.0) * (t - now).clamp(0, window) as f64 / window as f64).ceil() as u64
        };
        // The demand only grows between expiries: the moments to look at are just before
        // each expiry, at each due time, and at the window's end, in time order (at one
        // time an expiry first, as it still counts just before; then the due requests).
        // Both lists are sorted: a merge, with nothing collected.
        let mut expiries = self
            .expiries
            .iter()
            .copied()
            .take_while(|t| *t <= end)
            .peekable();
        let mut dues = due.iter().copied().take_while(|t| *t <= end).peekable();
        let (mut expired, mut came_due) = (0u64, 0u64);
        loop {
            let (at, expiry) = match (expiries.peek(), dues.peek()) {
                (Some(&e), Some(&d)) if e <= d => (e, true),
                (_, Some(&d)) => (d, false),
                (Some(&e), None) => (e, true),
                (None, None) => break,
            };
            if expiry {
                expiries.next();
            } else {
                dues.next();
                came_due += 1;
            }
            if used + came_due.max(steady(at)) > limit + expired {
                return false;
            }
            expired += u64::from(expiry);
        }
        used + came_due.max(steady(end)) <= limit + expired
    }

    /// Whether a request fits with `keep` requests of room left after it.
    pub fn has_room_beyond(&mut self, now: SchedMs, keep: u32) -> bool {
        self.paused_until <= now && self.used(now) + keep < self.effective
    }

    /// When room for a request with `keep` more left after it may next appear (see
    /// [`Self::next_room_at`]).
    pub fn next_room_beyond(&mut self, now: SchedMs, keep: u32) -> Option<SchedMs> {
        if self.paused_until > now {
            return Some(self.paused_until);
        }
        if self.used(now) + keep < self.effective {
            return Some(now);
        }
        // Room appears when enough expiries pass to go below the limit.
        let excess = (self.used(now) + keep + 1).saturating_sub(self.effective) as usize;
        if excess > self.expiries.len() {
            return None;
        }
        if excess == 0 {
            return None;
        }
        // The excess-th earliest expiry.
        self.expiries.get(excess - 1).copied()
    }

    /// Pauses the key until `until`.
    pub fn pause(&mut self, until: SchedMs) {
        self.paused_until = self.paused_until.max(until);
    }

    /// The provider said "too many" while we counted room: our count is wrong (another
    /// client shares the key, or the limit is lower than configured). Lowers the limit in
    /// force by a quarter (never below what we had counted as used, which the provider
    /// accepted); each further surprise lowers it again. Returns the new limit.
    pub fn shrink(&mut self, now: SchedMs) -> u32 {
        let used = self.used(now).saturating_sub(1);
        self.effective = (self.effective * 3 / 4)
            .max(used.min(self.effective))
            .max(1);
        self.last_shrink = now;
        self.note_room(now);
        self.effective
    }

    /// Lets a shrunken limit grow back by 10% per quiet window.
    pub fn recover(&mut self, now: SchedMs) {
        if self.effective < self.limit && now - self.last_shrink >= self.window {
            self.effective = (self.effective + self.limit.div_ceil(10)).min(self.limit);
            self.last_shrink = now;
            self.note_room(now);
        }
    }
}

/// When a request of a previous run is taken to have been answered, on the wall clock at
/// `now`, so that no step of the wall clock lets a restart overspend: within the same boot
/// (`boot_now`: this boot's id and ms since it began), its send is dated by the boot clock,
/// which never jumps; sent in an earlier boot, it was answered before this boot began, and
/// is taken as answered then, the latest it can have been; without a boot clock, its wall
/// time, never later than `now` (the row's time after a backward step).
pub fn restored_done_at(
    row: &crate::store::LedgerRow,
    now: WallMs,
    boot_now: Option<(&str, i64)>,
) -> WallMs {
    let wall = row.done_at.unwrap_or(now).min(now);
    let (Some((id, sent_ms)), Some((now_id, now_ms))) = (&row.boot, boot_now) else {
        return wall;
    };
    if id != now_id {
        return now.saturating_sub(now_ms).min(now);
    }
    let sent = now.saturating_sub(now_ms.saturating_sub(*sent_ms).max(0));
    match row.done_at {
        None => now,
        Some(done) => sent
            .saturating_add(done.saturating_since(row.sent_at).max(0))
            .min(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request held for room could first have gone when the expiry that made room came
    /// (or the pause ended), however late the next look is; with room all along, since
    /// then; at the limit, not before now.
    #[test]
    fn room_comes_back_at_the_expiry_that_makes_it() {
        // 2 requests per 100 ms, counted 3 ms longer.
        let mut b = Budget::new(2, 100);
        assert_eq!(b.room_since(SchedMs(0)), SchedMs(0));
        assert!(b.try_acquire(SchedMs(0)));
        assert_eq!(b.room_since(SchedMs(1)), SchedMs(0));
        assert!(b.try_acquire(SchedMs(10)));
        assert_eq!(b.room_since(SchedMs(20)), SchedMs(20), "at the limit");
        b.release(SchedMs(5));
        b.release(SchedMs(15));
        assert!(!b.try_acquire(SchedMs(50)));
        assert_eq!(
            b.room_since(SchedMs(107)),
            SchedMs(107),
            "counted until 108"
        );
        assert_eq!(b.room_since(SchedMs(150)), SchedMs(108));
        assert_eq!(b.room_since(SchedMs(400)), SchedMs(108), "room all along");
        assert!(b.try_acquire(SchedMs(400)));
        assert_eq!(b.room_since(SchedMs(401)), SchedMs(108), "one more fits");
        assert!(b.try_acquire(SchedMs(401)));
        assert_eq!(
            b.room_since(SchedMs(402)),
            SchedMs(402),
            "at the limit again"
        );
        b.release(SchedMs(402));
        b.release(SchedMs(402));
        // A pause past the expiries: room comes at its end.
        b.pause(SchedMs(600));
        assert_eq!(b.room_since(SchedMs(550)), SchedMs(550));
        assert_eq!(b.room_since(SchedMs(700)), SchedMs(600));
    }

    fn row(
        sent_at: i64,
        done_at: Option<i64>,
        boot: Option<(&str, i64)>,
    ) -> crate::store::LedgerRow {
        crate::store::LedgerRow {
            pool: "key:x".into(),
            sent_at: WallMs(sent_at),
            done_at: done_at.map(WallMs),
            boot: boot.map(|(id, ms)| (id.to_string(), ms)),
        }
    }

    /// A restart dates the ledger's rows by the boot clock: a step of the wall clock either
    /// way between runs changes nothing; an earlier boot's rows count until this boot's
    /// start; without a boot clock, no row is later than now.
    #[test]
    fn restored_rows_ignore_wall_clock_steps() {
        let wall = 10_000_000;
        let now = WallMs(wall);
        let boot_now = Some(("b", 500_000));
        // Sent 3 s ago by the boot clock (497 s after boot), answered 200 ms later: its
        // wall times an hour behind or ahead do not matter.
        for shift in [-3_600_000, 0, 3_600_000] {
            let r = row(
                wall - 3_000 + shift,
                Some(wall - 2_800 + shift),
                Some(("b", 497_000)),
            );
            assert_eq!(restored_done_at(&r, now, boot_now), now - 2_800, "{shift}");
        }
        // Never answered: counted as answered now.
        let r = row(wall - 3_600_000, None, Some(("b", 497_000)));
        assert_eq!(restored_done_at(&r, now, boot_now), now);
        // An earlier boot: answered before this boot began (500 s ago), at the latest.
        let r = row(
            wall - 3_600_000,
            Some(wall - 3_600_000),
            Some(("a", 9_000_000)),
        );
        assert_eq!(restored_done_at(&r, now, boot_now), now - 500_000);
        // No boot clock: the wall time, never later than now.
        let r = row(wall + 60_000, Some(wall + 60_100), None);
        assert_eq!(restored_done_at(&r, now, boot_now), now);
        let r = row(wall - 1_000, Some(wall - 900), Some(("b", 1)));
        assert_eq!(restored_done_at(&r, now, None), now - 900);
    }
    use proptest::prelude::*;

    #[test]
    fn room_frees_a_window_after_the_answer() {
        let mut b = Budget::new(2, 1000);
        assert!(b.try_acquire(SchedMs(0)));
        assert!(b.try_acquire(SchedMs(0)));
        assert!(!b.try_acquire(SchedMs(0)));
        assert_eq!(b.next_room_at(SchedMs(0)), None, "only answers free room");
        b.release(SchedMs(100));
        b.release(SchedMs(300));
        let at = b.next_room_at(SchedMs(200)).unwrap();
        assert_eq!(at, SchedMs(100 + 1000 + 21));
        assert!(!b.try_acquire(at - 1));
        assert!(b.try_acquire(at));
    }

    #[test]
    fn room_beyond_a_reserve_comes_when_enough_expire() {
        let mut b = Budget::new(4, 1000);
        for _ in 0..2 {
            assert!(b.try_acquire(SchedMs(0)));
            b.release(SchedMs(0));
        }
        // 2 of 4 used: one more fits with one left after it, not with two.
        assert!(b.has_room_beyond(SchedMs(0), 1));
        assert!(!b.has_room_beyond(SchedMs(0), 2));
        assert_eq!(b.next_room_beyond(SchedMs(0), 1), Some(SchedMs(0)));
        assert_eq!(
            b.next_room_beyond(SchedMs(0), 2),
            Some(SchedMs(1021)),
            "when one expires"
        );
        assert_eq!(
            b.next_room_beyond(SchedMs(0), 4),
            None,
            "more than the budget"
        );
        b.pause(SchedMs(50));
        assert!(!b.has_room_beyond(SchedMs(10), 0), "paused");
        assert_eq!(b.next_room_beyond(SchedMs(10), 0), Some(SchedMs(50)));
    }

    #[test]
    fn a_backlog_share_is_a_share() {
        assert_eq!(BacklogShare::new(0.2), Some(BacklogShare::DEFAULT));
        for bad in [0.0, 0.049, 0.91, 1.0, -0.5, f64::NAN, f64::INFINITY] {
            assert_eq!(BacklogShare::new(bad), None, "{bad}");
        }
    }

    #[test]
    fn restart_counts_unanswered_requests_as_answered_now() {
        let mut b = Budget::new(1, 1000);
        b.restore(None, SchedMs(5000));
        assert!(!b.try_acquire(SchedMs(5500)));
        assert!(b.try_acquire(SchedMs(6021)));
    }

    #[test]
    fn pause_and_shrink() {
        let mut b = Budget::new(10, 1000);
        b.pause(SchedMs(500));
        assert!(!b.try_acquire(SchedMs(0)));
        assert_eq!(b.next_room_at(SchedMs(0)), Some(SchedMs(500)));
        for _ in 0..5 {
            assert!(b.try_acquire(SchedMs(600)));
        }
        // 5 counted; the provider disagreed on the 5th: a quarter off the limit.
        assert_eq!(b.shrink(SchedMs(600)), 7);
        assert_eq!(b.shrink(SchedMs(600)), 5);
        assert_eq!(b.shrink(SchedMs(600)), 4);
        assert!(!b.try_acquire(SchedMs(600)));
        b.recover(SchedMs(1600));
        assert_eq!(b.effective_limit(), 5);
    }

    /// [`Budget::room_ahead`] as a sort of every moment: what the merge must agree with.
    fn room_ahead_by_sorting(
        b: &mut Budget,
        now: SchedMs,
        due: &[SchedMs],
        per_window: f64,
        keep: u32,
    ) -> bool {
        if b.paused_until > now {
            return false;
        }
        let used = u64::from(b.used(now)) + 1 + u64::from(keep);
        let limit = u64::from(b.effective);
        if used > limit {
            return false;
        }
        let end = now.saturating_add(b.window);
        let steady = |t: SchedMs| -> u64 {
            (per_window * (t - now).clamp(0, b.window) as f64 / b.window as f64).ceil() as u64
        };
        let mut moments: Vec<(SchedMs, u8)> = b
            .expiries
            .iter()
            .filter(|t| **t <= end)
            .map(|t| (*t, 0))
            .chain(due.iter().filter(|t| **t <= end).map(|t| (*t, 1)))
            .chain(std::iter::once((end, 2)))
            .collect();
        moments.sort_unstable();
        let (mut expired, mut came_due) = (0u64, 0u64);
        for (at, what) in moments {
            came_due += u64::from(what == 1);
            if used + came_due.max(steady(at)) > limit + expired {
                return false;
            }
            expired += u64::from(what == 0);
        }
        true
    }

    proptest! {
        /// The expiries kept in order answer as a sort of them would, whatever order the
        /// answers and a restart's rows come in: the room ahead, and when room appears.
        #[test]
        fn expiries_in_order_answer_as_a_sort_would(
            answers in prop::collection::vec(0i64..30, 0..60),
            due in prop::collection::vec(0i64..30, 0..40),
            per_window in 0.0f64..80.0,
            keep in 0u32..5,
            limit in 1u32..80,
        ) {
            // On a coarse grid, so that expiries and due times often meet (an answer at
            // `at` expires the window and the margin later: 1,021 ms).
            let mut b = Budget::new(limit, 1000);
            let answers = answers.iter().map(|a| a * 100);
            let due = due.iter().map(|d| d * 100 + 1_021);
            for (i, at) in answers.enumerate() {
                if i % 3 == 0 {
                    b.restore(Some(SchedMs(at)), SchedMs(3_000));
                } else {
                    b.release(SchedMs(at));
                }
            }
            prop_assert!(b.expiries.iter().is_sorted());
            let mut due: Vec<SchedMs> = due.map(SchedMs).collect();
            due.sort_unstable();
            for now in [0, 500, 1_000, 2_000, 3_500] {
                let now = SchedMs(now);
                let mut c = b.clone();
                prop_assert_eq!(
                    b.room_ahead(now, &due, per_window, keep),
                    room_ahead_by_sorting(&mut c, now, &due, per_window, keep)
                );
                let mut sorted: Vec<SchedMs> = c.expiries.iter().copied().collect();
                sorted.sort_unstable();
                let excess = (c.used(now) + keep + 1).saturating_sub(c.effective) as usize;
                let expected = if c.used(now) + keep < c.effective {
                    Some(now)
                } else if excess == 0 || excess > sorted.len() {
                    None
                } else {
                    Some(sorted[excess - 1])
                };
                prop_assert_eq!(b.next_room_beyond(now, keep), expected);
            }
        }

        /// Whatever the latencies, no rolling window on the provider's side (arrival anywhere
        /// between send and answer) sees more than the limit.
        #[test]
        fn never_over_budget_in_any_window(
            latencies in prop::collection::vec(0i64..400, 1..200),
            gaps in prop::collection::vec(0i64..50, 1..200),
            limit in 1u32..20,
        ) {
            let window = 1000;
            let mut b = Budget::new(limit, window);
            let mut now = 0;
            let mut in_flight: Vec<(i64, i64)> = vec![]; // (sent, done)
            let mut intervals: Vec<(i64, i64)> = vec![];
            for (i, lat) in latencies.iter().enumerate() {
                now += gaps[i % gaps.len()];
                in_flight.retain(|&(s, d)| {
                    if d <= now { b.release(SchedMs(d)); intervals.push((s, d)); false } else { true }
                });
                if b.try_acquire(SchedMs(now)) {
                    in_flight.push((now, now + lat));
                }
            }
            intervals.extend(in_flight);
            // Worst case arrivals: pack as many intervals as possible into one window.
            // For a window [x, x+window), interval (s, d) can land in it iff s < x+window && d >= x.
            for &(_, d0) in &intervals {
                let x = d0;
                let n = intervals.iter().filter(|&&(s, d)| s < x + window && d >= x).count();
                prop_assert!(n as u32 <= limit, "{} in window at {}", n, x);
            }
        }
    }
}
