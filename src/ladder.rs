//! The provider's back-off ladder as a pure function of time (SPEC section 1).
//!
//! Every time here is an offset in milliseconds from the payment's transaction start `t0`.
//! The plan is derived from `t0`, the payment's stored jitter and the configuration alone, so
//! nothing but the last check's time needs to be stored for a restart to resume it.

use std::time::Duration;

/// One rung: a check every `every` for `span` after the previous planned check; a rung
/// without a span runs until the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    every: i64,
    span: Option<i64>,
}

/// A validated ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    first_lo: i64,
    first_hi: i64,
    steps: Vec<Step>,
    timeout: i64,
}

/// Why a ladder was refused; each names the configuration key at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LadderError {
    #[error("schedule.first_check: the window [{lo:?}, {hi:?}] is inverted (the first bound must not exceed the second)")]
    InvertedJitter { lo: Duration, hi: Duration },
    #[error("schedule.steps[{index}].every must be greater than zero")]
    ZeroEvery { index: usize },
    #[error("schedule.steps[{index}].for ({span:?}) is shorter than its `every` ({every:?}), so the step plans no check")]
    SpanTooShort {
        index: usize,
        span: Duration,
        every: Duration,
    },
    #[error("schedule.steps[{index}] follows a step without `for`, which runs until the timeout, so it can never run")]
    Unreachable { index: usize },
    #[error("schedule.timeout ({timeout:?}) is before the latest first check ({first:?})")]
    TimeoutBeforeFirstCheck { timeout: Duration, first: Duration },
}

/// The documented ladder, in seconds: the one source of it (`Ladder::documented`, the
/// configuration's defaults). First check's window, then `(every, for)` steps, then the
/// timeout.
pub const DOCUMENTED_FIRST_CHECK_SECS: (u64, u64) = (20, 25);
pub const DOCUMENTED_STEPS_SECS: [(u64, Option<u64>); 5] = [
    (3, Some(30)),
    (6, Some(60)),
    (10, Some(60)),
    (30, Some(60)),
    (60, None),
];
pub const DOCUMENTED_TIMEOUT_SECS: u64 = 600;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl Ladder {
    /// Validates a ladder: `first` is the window the first check's offset is drawn from,
    /// `steps` are `(every, for)` pairs, `timeout` the end of polling.
    pub fn new(
        first: (Duration, Duration),
        steps: &[(Duration, Option<Duration>)],
        timeout: Duration,
    ) -> Result<Self, LadderError> {
        let (lo, hi) = first;
        if lo > hi {
            return Err(LadderError::InvertedJitter { lo, hi });
        }
        let mut out = Vec::with_capacity(steps.len());
        for (index, &(every, span)) in steps.iter().enumerate() {
            if out.iter().any(|s: &Step| s.span.is_none()) {
                return Err(LadderError::Unreachable { index });
            }
            if ms(every) <= 0 {
                return Err(LadderError::ZeroEvery { index });
            }
            if let Some(span) = span {
                if span < every {
                    return Err(LadderError::SpanTooShort { index, span, every });
                }
            }
            out.push(Step {
                every: ms(every),
                span: span.map(ms),
            });
        }
        if timeout < hi {
            return Err(LadderError::TimeoutBeforeFirstCheck { timeout, first: hi });
        }
        Ok(Self {
            first_lo: ms(lo),
            first_hi: ms(hi),
            steps: out,
            timeout: ms(timeout),
        })
    }

    /// The provider's documented ladder: first check at 20–25 s, then 3 s for 30 s, 6 s for
    /// 60 s, 10 s for 60 s, 30 s for 60 s, then every minute until 10 minutes.
    pub fn documented() -> Self {
        let s = Duration::from_secs;
        let (lo, hi) = DOCUMENTED_FIRST_CHECK_SECS;
        let steps: Vec<_> = DOCUMENTED_STEPS_SECS
            .iter()
            .map(|&(every, span)| (s(every), span.map(s)))
            .collect();
        Self::new((s(lo), s(hi)), &steps, s(DOCUMENTED_TIMEOUT_SECS))
            .expect("the documented ladder is valid")
    }

    /// The same ladder with the first check's offset drawn from `first` instead.
    pub fn with_first_check(&self, first: (Duration, Duration)) -> Result<Self, LadderError> {
        let (lo, hi) = first;
        if lo > hi {
            return Err(LadderError::InvertedJitter { lo, hi });
        }
        if ms(hi) > self.timeout {
            return Err(LadderError::TimeoutBeforeFirstCheck {
                timeout: Duration::from_millis(self.timeout.max(0) as u64),
                first: hi,
            });
        }
        Ok(Self {
            first_lo: ms(lo),
            first_hi: ms(hi),
            ..self.clone()
        })
    }

    /// The window the first check's offset is drawn from, in milliseconds.
    pub fn first_window(&self) -> (i64, i64) {
        (self.first_lo, self.first_hi)
    }

    /// The timeout, as an offset from `t0`.
    pub fn timeout_ms(&self) -> i64 {
        self.timeout
    }

    /// Draws a payment's first-check offset uniformly from the configured window.
    pub fn draw_jitter(&self) -> i64 {
        fastrand::i64(self.first_lo..=self.first_hi)
    }

    /// A new payment's first check: its drawn offset (stored, so a restart keeps the plan)
    /// and the time it falls due, for a payment started at `started_at` (ms).
    pub fn first_check<T: std::ops::Add<i64, Output = T>>(&self, started_at: T) -> (i64, T) {
        let jitter = self.draw_jitter();
        (jitter, started_at + jitter)
    }

    /// Clamps a stored jitter into the window, so a database edited by hand (or written
    /// under another configuration) still yields a valid plan.
    pub fn clamp_jitter(&self, jitter: i64) -> i64 {
        jitter.clamp(self.first_lo, self.first_hi)
    }

    /// The first planned slot strictly after `after` (`None`: before any check), or `None`
    /// when no planned slot remains at or before the timeout. The deadline check itself is
    /// not a slot; see [`Ladder::next_check`].
    pub fn next_slot_after(&self, jitter: i64, after: Option<i64>) -> Option<i64> {
        let first = self.clamp_jitter(jitter);
        let after = match after {
            Some(a) if a >= first => a,
            _ => return Some(first).filter(|&f| f <= self.timeout),
        };
        let mut base = first;
        for step in &self.steps {
            let count = step.span.map(|s| s / step.every);
            let end = count.map(|n| base + n * step.every);
            if end.is_none_or(|e| after < e) {
                let k = (after - base) / step.every + 1;
                let slot = base + k * step.every;
                return Some(slot).filter(|&s| s <= self.timeout);
            }
            base = end.unwrap_or(base);
        }
        None
    }

    /// When the check after one made at `after` is due: the next planned slot, else the
    /// deadline (`timeout`). `None` once a check at or after the deadline has been made: a
    /// payment still pending then has timed out.
    pub fn next_check(&self, jitter: i64, after: Option<i64>) -> Option<i64> {
        if after.is_some_and(|a| a >= self.timeout) {
            return None;
        }
        Some(match self.next_slot_after(jitter, after) {
            Some(p) if p < self.timeout => p,
            _ => self.timeout,
        })
    }

    /// The interval of the step in force at `offset` (before the first check: the first
    /// step's), used to pace list endpoints and to project demand.
    pub fn every_at(&self, jitter: i64, offset: i64) -> i64 {
        let mut base = self.clamp_jitter(jitter);
        for step in &self.steps {
            match step.span {
                Some(span) if offset >= base + (span / step.every) * step.every => {
                    base += (span / step.every) * step.every;
                }
                _ => return step.every,
            }
        }
        (self.timeout - base).max(1)
    }

    /// Every check a payment that stays pending gets, if each runs on time.
    pub fn plan(&self, jitter: i64) -> Vec<i64> {
        let mut out = Vec::new();
        let mut at = None;
        while let Some(next) = self.next_check(jitter, at) {
            out.push(next);
            at = Some(next);
        }
        out
    }

    /// Planned slots strictly before the timeout and at or before `x`.
    fn slots_upto(&self, jitter: i64, x: i64) -> i64 {
        let first = self.clamp_jitter(jitter);
        let x = x.min(self.timeout - 1);
        if x < first {
            return 0;
        }
        let mut n = 1;
        let mut base = first;
        for step in &self.steps {
            let k = (x - base).div_euclid(step.every).max(0);
            match step.span.map(|s| s / step.every) {
                Some(count) => {
                    n += k.min(count);
                    if k < count {
                        return n;
                    }
                    base += count * step.every;
                }
                None => return n + k,
            }
        }
        n
    }

    /// How many checks fall in `(from, to]`, counting the deadline check, when each check
    /// runs on its slot. Closed form (no iteration over slots): the scheduler projects
    /// demand on the budget with it for every pending payment, many times a second.
    pub fn checks_between(&self, jitter: i64, from: Option<i64>, to: i64) -> u32 {
        let before = from.map_or(0, |f| self.slots_upto(jitter, f));
        let slots = (self.slots_upto(jitter, to) - before).max(0);
        let deadline = from.is_none_or(|f| f < self.timeout) && to >= self.timeout;
        (slots + i64::from(deadline)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_first_check_falls_in_the_window_after_the_start() {
        let l = Ladder::documented();
        let (lo, hi) = l.first_window();
        for _ in 0..100 {
            let (jitter, due) = l.first_check(1_000_000);
            assert!((lo..=hi).contains(&jitter));
            assert_eq!(due, 1_000_000 + jitter);
        }
    }

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn another_first_check_keeps_the_steps_and_is_validated() {
        let l = Ladder::documented();
        let at20 = l.with_first_check((d(20_000), d(20_000))).unwrap();
        assert_eq!(at20.first_window(), (20_000, 20_000));
        assert_eq!(at20.plan(20_000), l.plan(20_000));
        assert_eq!(
            l.with_first_check((d(25_000), d(20_000))),
            Err(LadderError::InvertedJitter {
                lo: d(25_000),
                hi: d(20_000)
            })
        );
        assert!(matches!(
            l.with_first_check((d(0), d(700_000))),
            Err(LadderError::TimeoutBeforeFirstCheck { .. })
        ));
    }

    #[test]
    fn documented_ladder_gives_36_checks_for_any_jitter() {
        let l = Ladder::documented();
        for j in [20_000, 21_234, 25_000] {
            let plan = l.plan(j);
            assert_eq!(plan.len(), 36, "jitter {j}: {plan:?}");
            assert_eq!(plan[0], j);
            assert_eq!(plan[1], j + 3_000);
            assert_eq!(*plan.last().unwrap(), 600_000);
        }
    }

    #[test]
    fn documented_plan_has_the_documented_gaps() {
        let plan = Ladder::documented().plan(20_000);
        let gaps: Vec<i64> = plan.windows(2).map(|w| (w[1] - w[0]) / 1000).collect();
        let mut expected = vec![3; 10];
        expected.extend([6; 10]);
        expected.extend([10; 6]);
        expected.extend([30; 2]);
        expected.extend([60; 6]);
        expected.push(10); // 590 s → the deadline at 600 s
        assert_eq!(gaps, expected);
    }

    #[test]
    fn missed_slots_are_skipped_not_replayed() {
        let l = Ladder::documented();
        // Down from 30 s to 100 s: the next check after one made at 100 s is the next
        // slot of the plan, not the first missed one.
        let next = l.next_check(20_000, Some(100_000)).unwrap();
        assert_eq!(next, 104_000);
    }

    #[test]
    fn after_the_deadline_check_there_is_nothing() {
        let l = Ladder::documented();
        assert_eq!(l.next_check(20_000, Some(590_000)), Some(600_000));
        assert_eq!(l.next_check(20_000, Some(600_000)), None);
        // Down past the deadline: a late check is still owed before the timeout.
        assert_eq!(l.next_check(20_000, Some(599_999)), Some(600_000));
    }

    #[test]
    fn bad_ladders_name_the_key() {
        let e = Ladder::new((d(25), d(20)), &[], d(100)).unwrap_err();
        assert!(e.to_string().starts_with("schedule.first_check"));
        let e = Ladder::new((d(1), d(2)), &[(d(0), None)], d(100)).unwrap_err();
        assert!(e.to_string().starts_with("schedule.steps[0].every"));
        let e = Ladder::new((d(1), d(2)), &[(d(5), Some(d(3)))], d(100)).unwrap_err();
        assert!(e.to_string().starts_with("schedule.steps[0].for"));
        let e = Ladder::new((d(1), d(2)), &[(d(5), None), (d(5), None)], d(100)).unwrap_err();
        assert!(e.to_string().starts_with("schedule.steps[1]"));
        let e = Ladder::new((d(10), d(20)), &[], d(15)).unwrap_err();
        assert!(e.to_string().starts_with("schedule.timeout"));
    }

    #[test]
    fn every_at_follows_the_steps() {
        let l = Ladder::documented();
        assert_eq!(l.every_at(20_000, 0), 3_000);
        assert_eq!(l.every_at(20_000, 49_999), 3_000);
        assert_eq!(l.every_at(20_000, 50_000), 6_000);
        assert_eq!(l.every_at(20_000, 300_000), 60_000);
    }

    #[test]
    fn checks_between_counts_the_plan() {
        let l = Ladder::documented();
        assert_eq!(l.checks_between(20_000, None, 600_000), 36);
        assert_eq!(l.checks_between(20_000, None, 19_999), 0);
        assert_eq!(l.checks_between(20_000, Some(20_000), 50_000), 10);
    }

    fn ladder_strategy() -> impl Strategy<Value = Ladder> {
        (
            1u64..50,
            0u64..20,
            prop::collection::vec((1u64..30, prop::option::of(1u64..10)), 0..5),
            0u64..2000,
        )
            .prop_filter_map("valid ladder", |(lo, extra, steps, slack)| {
                let steps: Vec<_> = steps
                    .into_iter()
                    .map(|(every, mult)| (d(every), mult.map(|m| d(every * m))))
                    .collect();
                // Only the last step may run until the timeout.
                let n = steps.len();
                let steps: Vec<_> = steps
                    .into_iter()
                    .enumerate()
                    .map(|(i, (e, s))| (e, if i + 1 < n { s.or(Some(e)) } else { s }))
                    .collect();
                Ladder::new((d(lo), d(lo + extra)), &steps, d(lo + extra + slack)).ok()
            })
    }

    proptest! {
        #[test]
        fn plan_is_increasing_ends_at_the_deadline_and_is_anchored(
            l in ladder_strategy(), j in 0i64..100, late in 0i64..500
        ) {
            let j = l.clamp_jitter(j);
            let plan = l.plan(j);
            prop_assert!(!plan.is_empty());
            prop_assert!(plan.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(*plan.last().unwrap(), l.timeout_ms());
            // A check made late, anywhere, is followed by the first planned check after
            // it: the plan never shifts, missed slots are skipped.
            for &slot in &plan {
                let at = slot + late;
                match l.next_check(j, Some(at)) {
                    Some(next) => {
                        prop_assert!(next > at);
                        prop_assert!(plan.contains(&next));
                        prop_assert!(plan.iter().all(|&p| p <= at || p >= next));
                    }
                    None => prop_assert!(at >= l.timeout_ms()),
                }
            }
        }

        #[test]
        fn checks_between_matches_walking_the_plan(
            l in ladder_strategy(), j in 0i64..100, from in prop::option::of(-10i64..3000), len in 0i64..3000
        ) {
            let to = from.unwrap_or(-10) + len;
            let mut walked = 0;
            let mut at = from;
            while let Some(next) = l.next_check(j, at) {
                if next > to { break; }
                walked += 1;
                at = Some(next);
            }
            prop_assert_eq!(l.checks_between(j, from, to), walked);
        }

        #[test]
        fn there_is_always_a_check_at_or_after_the_deadline(
            l in ladder_strategy(), j in 0i64..100, checks in prop::collection::vec(0i64..3000, 0..20)
        ) {
            // Whatever times checks actually ran at, `None` (timed out) comes only after one
            // at or after the deadline.
            let mut sorted = checks.clone();
            sorted.sort();
            for at in sorted {
                if l.next_check(j, Some(at)).is_none() {
                    prop_assert!(at >= l.timeout_ms());
                }
            }
        }
    }
}
