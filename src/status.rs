//! What the scheduler reports about each API key (budget, price level, learnt kinds), as
//! plain data: the scheduler publishes it, health and metrics read it, so telemetry needs
//! nothing of the scheduler.

use crate::account::AccountName;
use crate::kinds::KindName;
use crate::payment::WallMs;
use std::time::Duration;

/// A kind's learnt distribution, as health shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct KindPolicy {
    pub kind: KindName,
    /// Finished payments the estimate rests on.
    pub evidence: usize,
    /// Share of payments flipping before the deadline.
    pub flip_share: f64,
    /// Ages (ms) by which 50%, 90% and 99% of the flipping payments flipped.
    pub flip_age_ms: [i64; 3],
    /// Expected mean flip-to-detection delay at the current load, in ms.
    pub expected_delay_ms: i64,
    /// Pending payments of the kind the scheduler holds.
    pub pending: usize,
    /// Reconciliation after the ladder (see [`crate::reconcile`]).
    pub late: LateStatus,
}

/// A kind's reconciliation: payments watched now, what was done since start, and the
/// late moves learnt for its timed-out payments.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LateStatus {
    pub watched: usize,
    pub moves: u64,
    pub checks: u64,
    pub skipped: u64,
    /// Learnt share of timed-out payments moving within the watch.
    pub move_share: f64,
    /// Learnt age (ms since the start) by which half of those moved.
    pub move_age_p50_ms: i64,
}

/// A key's state, for health and metrics. Its one instant is on the clock `T`: the core
/// reports on its own ([`SchedMs`](crate::payment::SchedMs)), the driver publishes on the wall clock.
#[derive(Debug, Clone, Default)]
pub struct PoolStatus<T = WallMs> {
    pub name: String,
    /// The account whose key it is.
    pub account: AccountName,
    pub budget_limit: u32,
    pub budget_effective: u32,
    pub budget_used: u32,
    pub window_ms: i64,
    /// 0: the documented ladder; higher: dearer requests, fewer checks.
    pub price_level: f64,
    /// Requests the policy expects over the next window, and what it plans to spend.
    pub projected: f64,
    pub target: f64,
    pub pending: usize,
    /// Payments arriving per window (kinds checked one by one), once the scheduler has
    /// watched for a whole window; each needs a request at least.
    pub arrivals_per_window: Option<f64>,
    /// Payments in the key's backlog (a burst past the budget: see the scheduler core).
    pub backlog: usize,
    /// How late the earliest due check waiting to be sent is, in ms (0: none waits).
    pub behind_ms: i64,
    /// When the backlog would be drained at its pace so far (see [`drain_eta`]).
    pub backlog_drains_in_ms: Option<i64>,
    pub paused_until: Option<T>,
    pub auth_failing: Vec<KindName>,
    /// Kinds the provider gives no usable answer for, with the last error.
    pub outage: Vec<(KindName, String)>,
    /// How late each check since the last status went out: from when it was due, or
    /// when the budget had room for it if that came later.
    pub lateness_ms: Vec<i64>,
    /// Beside each of `lateness_ms`: how long it waited past its due time for the budget.
    pub budget_wait_ms: Vec<i64>,
    pub kinds: Vec<KindPolicy>,
}

impl<T> PoolStatus<T> {
    /// The same status with its instant moved to another clock by `to`.
    pub fn on_clock<U>(self, to: impl Fn(T) -> U) -> PoolStatus<U> {
        PoolStatus {
            name: self.name,
            account: self.account,
            budget_limit: self.budget_limit,
            budget_effective: self.budget_effective,
            budget_used: self.budget_used,
            window_ms: self.window_ms,
            price_level: self.price_level,
            projected: self.projected,
            target: self.target,
            pending: self.pending,
            arrivals_per_window: self.arrivals_per_window,
            backlog: self.backlog,
            behind_ms: self.behind_ms,
            backlog_drains_in_ms: self.backlog_drains_in_ms,
            paused_until: self.paused_until.map(to),
            auth_failing: self.auth_failing,
            outage: self.outage,
            lateness_ms: self.lateness_ms,
            budget_wait_ms: self.budget_wait_ms,
            kinds: self.kinds,
        }
    }

    /// Whether the key can keep up at all: every payment costs a request at least (the
    /// check that sees its flip, or its deadline check), so with as many arrivals per window
    /// as requests in force no schedule keeps up. Unknown until a whole window was watched.
    pub fn keeps_up(&self) -> bool {
        self.arrivals_per_window
            .is_none_or(|a| crate::policy::keeps_up(a, self.budget_effective))
    }

    /// The budget window, for messages.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms.max(0) as u64)
    }

    /// How late the earliest due check is, in whole seconds, for messages.
    pub fn behind(&self) -> Duration {
        Duration::from_secs((self.behind_ms.max(0) / 1000) as u64)
    }

    /// How long the backlog takes to drain at its pace so far, in whole minutes (at least
    /// one), for messages.
    pub fn backlog_drains_in(&self) -> Option<Duration> {
        self.backlog_drains_in_ms
            .map(|ms| Duration::from_secs((ms.max(0) as u64).div_ceil(60_000).max(1) * 60))
    }

    /// Whether the key is far behind: a due check has waited more than a window. A burst
    /// past the budget does that to its backlog, and so does a key paused or refused; a
    /// brief wait behind the budget's pace is normal operation when it is scarce.
    pub fn far_behind(&self) -> bool {
        self.behind_ms > self.window_ms
    }
}

/// How long a backlog of `backlog` payments takes to drain at the pace it had: `sent`
/// backlog checks over the last `span_ms` (at most a window). Each payment in it needs
/// one check at least, and payments may still join it, so this is a floor at the current
/// pace, not a promise. `None` with no backlog, or before a fifth of a window of pace (while
/// a burst is still forming its backlog, the pace says nothing yet).
pub fn drain_eta(backlog: usize, sent: usize, span_ms: i64, window_ms: i64) -> Option<i64> {
    if backlog == 0 || sent == 0 || span_ms < window_ms / 5 || span_ms <= 0 {
        return None;
    }
    Some((backlog as f64 * span_ms as f64 / sent as f64).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::{drain_eta, PoolStatus};
    use std::time::Duration;

    #[test]
    fn a_backlog_drains_at_the_pace_it_had() {
        // 1,800 left, 200 sent over the last window: nine windows more.
        assert_eq!(drain_eta(1800, 200, 600_000, 600_000), Some(5_400_000));
        // Half a window since it formed, 100 sent: the same pace.
        assert_eq!(drain_eta(1800, 100, 300_000, 600_000), Some(5_400_000));
        assert_eq!(drain_eta(0, 100, 600_000, 600_000), None, "no backlog");
        assert_eq!(drain_eta(50, 0, 600_000, 600_000), None, "no pace yet");
        assert_eq!(
            drain_eta(50, 30, 100_000, 600_000),
            None,
            "too short to tell"
        );
        let said = |ms: Option<i64>| {
            PoolStatus::<crate::payment::WallMs> {
                backlog_drains_in_ms: ms,
                ..PoolStatus::default()
            }
            .backlog_drains_in()
        };
        assert_eq!(said(Some(5_400_000)), Some(Duration::from_secs(90 * 60)));
        assert_eq!(
            said(Some(5_400_001)),
            Some(Duration::from_secs(91 * 60)),
            "up"
        );
        assert_eq!(
            said(Some(10_000)),
            Some(Duration::from_secs(60)),
            "a minute at least"
        );
        assert_eq!(said(None), None);
    }

    #[test]
    fn a_key_keeps_up_below_one_arrival_per_request() {
        let at = |arrivals: Option<f64>| PoolStatus::<crate::payment::WallMs> {
            budget_effective: 1000,
            arrivals_per_window: arrivals,
            ..PoolStatus::default()
        };
        assert!(at(None).keeps_up(), "not watched long enough to say");
        assert!(at(Some(999.0)).keeps_up());
        assert!(!at(Some(1000.0)).keeps_up());
        assert!(!at(Some(1500.0)).keeps_up());
    }

    #[test]
    fn a_key_is_far_behind_once_a_due_check_waited_a_window() {
        let at = |behind_ms: i64| PoolStatus::<crate::payment::WallMs> {
            window_ms: 600_000,
            behind_ms,
            ..PoolStatus::default()
        };
        assert!(!at(0).far_behind());
        assert!(!at(600_000).far_behind());
        assert!(at(600_001).far_behind());
    }
}

/// One account, over its keys (the account `default` may have kinds with keys of their
/// own): what health and metrics show per account.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountStatus {
    pub account: AccountName,
    pub pending: usize,
    pub budget_used: u32,
    /// Requests in force per window, over its keys.
    pub budget_limit: u32,
    /// Every key of it keeps up.
    pub keeps_up: bool,
    /// The mean flip-to-detection delay to expect, over its pending payments (over its
    /// kinds while none is pending), in ms.
    pub expected_delay_ms: i64,
    pub backlog: usize,
}

/// Each account's status from its keys', in the order of the accounts' names.
pub fn accounts(pools: &[PoolStatus]) -> Vec<AccountStatus> {
    let mut by: std::collections::BTreeMap<&AccountName, Vec<&PoolStatus>> = Default::default();
    for p in pools {
        by.entry(&p.account).or_default().push(p);
    }
    by.into_iter()
        .map(|(account, ps)| {
            let kinds = || ps.iter().flat_map(|p| p.kinds.iter());
            let pending: usize = kinds().map(|k| k.pending).sum();
            let weight = |k: &KindPolicy| if pending > 0 { k.pending as f64 } else { 1.0 };
            let total: f64 = kinds().map(weight).sum();
            let delay: f64 = kinds()
                .map(|k| weight(k) * k.expected_delay_ms as f64)
                .sum();
            AccountStatus {
                account: account.clone(),
                pending: ps.iter().map(|p| p.pending).sum(),
                budget_used: ps.iter().map(|p| p.budget_used).sum(),
                budget_limit: ps.iter().map(|p| p.budget_effective).sum(),
                keeps_up: ps.iter().all(|p| p.keeps_up()),
                expected_delay_ms: if total > 0.0 {
                    (delay / total) as i64
                } else {
                    0
                },
                backlog: ps.iter().map(|p| p.backlog).sum(),
            }
        })
        .collect()
}
