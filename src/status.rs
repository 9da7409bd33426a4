//! What the scheduler reports about each API key (budget, price level, learnt kinds), as
//! plain data: the scheduler publishes it, health and metrics read it, so telemetry needs
//! nothing of the scheduler.

use crate::kinds::KindName;
use crate::payment::UnixMs;

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
}

/// A key's state, for health and metrics.
#[derive(Debug, Clone, Default)]
pub struct PoolStatus {
    pub name: String,
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
    pub paused_until: Option<UnixMs>,
    pub auth_failing: Vec<KindName>,
    pub lateness_ms: Vec<i64>,
    pub kinds: Vec<KindPolicy>,
}
