//! The bodies of the socket API (SPEC section 4) and of webhook events (section 6), as
//! serde types: the server writes JSON only through them, the CLI and the tests read
//! answers into them. One definition, so the daemon, its client and the contract cannot
//! drift apart; the shapes are the contract's, field for field.
//!
//! Pure data: no I/O, no HTTP status codes (the API sets those). Stored JSON text (a
//! payment's `response` and `metadata`) is parsed here, once.

use crate::account::AccountName;
use crate::kinds::KindName;
use crate::payment::{rfc3339, State, WallMs, WebhookState};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeMap;

/// A point in time on the wire: RFC 3339, UTC, millisecond precision (unix milliseconds
/// inside, as everywhere else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub WallMs);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(self.0))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .map(|ms| Timestamp(WallMs(ms)))
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not RFC 3339")))
    }
}

/// Stored JSON text as a JSON value; `null` when absent or (never expected) unparsable,
/// so one bad row cannot break a page.
pub fn stored_json(text: Option<&str>) -> Value {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

/// What a payment is, as both the API's payment view and a webhook event's `data` show
/// it: the fields the two share, built in one place ([`PaymentFacts::new`]) so that they
/// agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentFacts {
    /// The Ninjapay account that created it (`default` from a daemon before accounts).
    #[serde(default)]
    pub account: AccountName,
    pub kind: KindName,
    pub id: String,
    pub state: State,
    pub upstream_status: Option<String>,
    /// Whether polling has stopped for good (`state` is not `pending`).
    #[serde(rename = "final")]
    pub is_final: bool,
    pub started_at: Timestamp,
    /// Ninjapay's last answer.
    pub response: Value,
    /// The merchant's metadata.
    pub metadata: Value,
}

impl PaymentFacts {
    /// The facts of a payment from its stored fields (`response` and `metadata` as the
    /// JSON text the database holds).
    // One argument per stored field: the two callers hold them in different row types.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        account: &AccountName,
        kind: &KindName,
        id: &str,
        state: State,
        upstream_status: Option<&str>,
        started_at: WallMs,
        response: Option<&str>,
        metadata: Option<&str>,
    ) -> Self {
        Self {
            account: account.clone(),
            kind: kind.clone(),
            id: id.to_owned(),
            state,
            upstream_status: upstream_status.map(str::to_owned),
            is_final: state.is_final(),
            started_at: Timestamp(started_at),
            response: stored_json(response),
            metadata: stored_json(metadata),
        }
    }
}

/// A payment as the API shows it (SPEC section 4: "A payment in JSON carries …").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentView {
    #[serde(flatten)]
    pub facts: PaymentFacts,
    /// The next planned check: the ladder's while pending, reconciliation's after.
    pub next_check_at: Option<Timestamp>,
    /// No check is planned any more (final, and not or no longer watched).
    #[serde(default)]
    pub settled: bool,
    pub checks_done: i64,
    pub last_checked_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub finished_at: Option<Timestamp>,
    pub callback_url: Option<String>,
    pub created_at: Timestamp,
}

/// One observed change of a payment (`GET /v1/checks/{kind}/{id}`'s `history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: Timestamp,
    pub previous_state: State,
    pub state: State,
    pub upstream_status: Option<String>,
}

/// `GET /v1/checks/{kind}/{id}`: the payment with every observed change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentDetail {
    #[serde(flatten)]
    pub payment: PaymentView,
    pub history: Vec<HistoryEntry>,
}

/// `POST /v1/checks/{kind}/{id}/recheck`: the payment and when the coalesced check is due
/// (`null` if the scheduler did not say in time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecheckAnswer {
    #[serde(flatten)]
    pub payment: PaymentView,
    pub check_at: Option<Timestamp>,
}

/// `POST /v1/checks` (and each item of a batch): one payment to track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// The Ninjapay account that created the payment (`default` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub kind: String,
    pub id: String,
    /// Unix seconds (a number or a string of digits) or RFC 3339: kept as JSON, because
    /// the API accepts several forms and reports a bad one with its own code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// `POST /v1/checks/batch`. The items stay raw JSON so that a malformed one is reported
/// in its own result rather than failing the batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub checks: Vec<Value>,
}

/// The answer to a batch: a result per item, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchAnswer {
    pub results: Vec<BatchResult>,
}

/// One item's result: the status a single enqueue would have had, the payment (when it
/// is stored) and the error (when it failed or conflicts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// `GET /v1/checks`: a page of payments in enqueue order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentPage {
    pub payments: Vec<PaymentView>,
    /// Where the next page starts; set whenever the page is not empty.
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

/// The payment a webhook event is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRef {
    /// Part of the payment's identity: the same kind and id may be in two accounts.
    #[serde(default)]
    pub account: AccountName,
    pub kind: KindName,
    pub id: String,
}

/// A webhook event in the outbox, as the API shows it (without its body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookView {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub state: WebhookState,
    pub payment: PaymentRef,
    pub sequence: i64,
    pub url: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub last_status_code: Option<i64>,
    pub last_attempt_at: Option<Timestamp>,
    /// Set only while the event is pending.
    pub next_attempt_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// One delivery attempt of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    pub at: Timestamp,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub latency_ms: i64,
}

/// `GET /v1/webhooks/{event_id}`: the event, its body and every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDetail {
    #[serde(flatten)]
    pub event: WebhookView,
    /// The body as sent (a string if the stored text is not JSON).
    pub body: Value,
    pub attempt_log: Vec<AttemptView>,
}

/// `GET /v1/webhooks`: a page of events in insertion order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookPage {
    pub webhooks: Vec<WebhookView>,
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

/// A webhook event's body (SPEC section 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBody {
    /// `payment.status_changed` or `payment.timed_out`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub timestamp: Timestamp,
    pub data: EventData,
}

/// A webhook event's `data`: the payment after the change, and what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    #[serde(flatten)]
    pub payment: PaymentFacts,
    /// Counts the payment's events from 1: a receiver can drop a stale one.
    pub sequence: i64,
    pub previous_state: State,
    pub previous_upstream_status: Option<String>,
    pub checked_at: Timestamp,
    /// Seen by reconciliation, after the ladder had ended the payment.
    #[serde(default)]
    pub late: bool,
}

/// `{"code", "message"}`: an error, and each failed batch item's. The code is text here:
/// a client must cope with codes newer than itself (the API's list is `ErrorCode`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: ErrorBody,
    /// The payment concerned (the stored one on a conflict, the final one on
    /// `already_final`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentView>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// One verdict, said twice: `status` for people, `healthy` for programs.
    pub status: HealthStatus,
    pub version: String,
    pub healthy: bool,
    /// Every reason `healthy` is false, each a line a person can act on.
    pub problems: Vec<String>,
    /// Payments in the database by state.
    pub payments: BTreeMap<String, i64>,
    pub scheduler: SchedulerHealth,
    /// One entry per API key.
    pub budget: Vec<PoolHealth>,
    /// One entry per account, over its keys.
    #[serde(default)]
    pub accounts: Vec<AccountHealth>,
    /// Webhook events by state.
    pub webhooks: BTreeMap<String, i64>,
    pub database: DatabaseHealth,
    /// The last configuration reload (SIGHUP), if there was one since the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadHealth>,
}

/// How the last configuration reload went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadHealth {
    pub result: ReloadResult,
    pub at: Timestamp,
    /// Why it was refused: the line `ninjapoll check-config` prints for the same file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Settings that changed but only take effect at the next start (kept at their old
    /// values meanwhile).
    #[serde(default)]
    pub restart_required: Vec<String>,
}

/// `result` of [`ReloadHealth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    /// The new configuration is in force.
    Applied,
    /// The new configuration was invalid; the running one stayed.
    Refused,
}

impl ReloadResult {
    /// The value of the `result` label of `ninjapoll_config_reloads_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
        }
    }
}

/// `status` of [`Health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Degraded,
}

/// What the scheduler holds, as it last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerHealth {
    pub pending: usize,
    /// Pending payments of kinds no longer configured: nobody polls them.
    pub unpolled: i64,
    pub reported_at: Option<Timestamp>,
}

/// One account: its payments, its budget and whether it keeps up (over its keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountHealth {
    pub account: AccountName,
    /// Pending payments the scheduler holds for it.
    pub pending: usize,
    pub budget_used: u32,
    /// Requests in force per window.
    pub budget_limit: u32,
    pub keeps_up: bool,
    /// The mean flip-to-detection delay to expect for its payments now.
    pub expected_delay_ms: i64,
    /// Payments in its backlog (more came than its budget checks on time).
    pub backlog: usize,
}

/// One API key's budget and policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolHealth {
    pub name: String,
    pub budget_used: u32,
    /// In force (lowered after an unexpected 429).
    pub budget_limit: u32,
    pub budget_configured: u32,
    pub budget_window_ms: i64,
    pub price_level: f64,
    pub scarce: bool,
    pub projected_requests: f64,
    pub planned_requests: f64,
    pub pending: usize,
    /// Payments arriving per budget window (kinds checked one by one); `null` until the
    /// daemon has watched a whole window.
    pub arrivals_per_window: Option<f64>,
    /// Whether the key can keep up at all: fewer arrivals per window than requests in force
    /// (every payment needs one at least). When it cannot, delays grow while it lasts.
    pub keeps_up: bool,
    /// Payments in the key's backlog: a burst past the budget, checked within a share of it.
    pub backlog: usize,
    /// How late the earliest due check waiting to be sent is (0: none waits).
    pub behind_ms: i64,
    /// How long the backlog takes to drain at its pace over the last window (`null`
    /// without a backlog, or before its pace is known). A floor: payments may still join.
    pub backlog_drains_in_ms: Option<i64>,
    pub policy: Vec<KindPolicyView>,
    pub paused_for_ms: Option<i64>,
    pub unhealthy_kinds: Vec<KindName>,
}

/// A kind's learnt flip ages and what the policy expects of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindPolicyView {
    pub kind: KindName,
    pub pending: usize,
    pub evidence: usize,
    pub flip_share: f64,
    pub flip_age_p50_ms: i64,
    pub flip_age_p90_ms: i64,
    pub flip_age_p99_ms: i64,
    pub expected_delay_ms: i64,
    /// Payments under reconciliation after their ladder.
    #[serde(default)]
    pub watched: usize,
    /// Since start: moves seen after the ladder, checks made for watched payments, and
    /// scheduled checks skipped for lack of spare budget.
    #[serde(default)]
    pub late_moves: u64,
    #[serde(default)]
    pub late_checks: u64,
    #[serde(default)]
    pub late_skipped: u64,
    /// Learnt share of timed-out payments that move within the watch, and the age by
    /// which half of those moved.
    #[serde(default)]
    pub late_move_share: f64,
    #[serde(default)]
    pub late_move_p50_ms: i64,
}

/// Whether the database takes writes, how large it is and how long it keeps rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseHealth {
    pub writes_failing: bool,
    pub write_errors: u64,
    /// The database file with its write-ahead log, in bytes (`null` if it cannot be read;
    /// absent from older daemons).
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// `database.keep_finished` in ms (`null`: finished payments are kept forever).
    #[serde(default)]
    pub keep_finished_ms: Option<i64>,
    /// `webhooks.keep_delivered` in force, in ms (`null`: as long as their payment).
    #[serde(default)]
    pub keep_delivered_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view() -> PaymentView {
        PaymentView {
            facts: PaymentFacts::new(
                &AccountName::default(),
                &KindName::parse("p2p").unwrap(),
                "A198660213997",
                State::Succeeded,
                Some("approved"),
                WallMs(1_769_860_800_123),
                Some(r#"{"status":"approved","amount":10}"#),
                Some(r#"{"order":7}"#),
            ),
            next_check_at: None,
            settled: true,
            checks_done: 3,
            last_checked_at: Some(Timestamp(WallMs(1_769_860_830_456))),
            last_error: None,
            finished_at: Some(Timestamp(WallMs(1_769_860_830_456))),
            callback_url: Some("https://app.example.com/hooks/1".into()),
            created_at: Timestamp(WallMs(1_769_860_800_999)),
        }
    }

    #[test]
    fn a_payment_view_round_trips_and_has_the_contracts_fields() {
        let v = view();
        let json = serde_json::to_value(&v).unwrap();
        // SPEC section 4: the fields a payment carries, flat, timestamps RFC 3339 UTC.
        assert_eq!(
            json,
            json!({
                "account": "default", "kind": "p2p", "id": "A198660213997", "state": "succeeded",
                "upstream_status": "approved", "final": true,
                "started_at": "2026-01-31T12:00:00.123Z",
                "next_check_at": null, "settled": true, "checks_done": 3,
                "last_checked_at": "2026-01-31T12:00:30.456Z", "last_error": null,
                "finished_at": "2026-01-31T12:00:30.456Z",
                "response": {"status": "approved", "amount": 10},
                "metadata": {"order": 7},
                "callback_url": "https://app.example.com/hooks/1",
                "created_at": "2026-01-31T12:00:00.999Z",
            })
        );
        let back: PaymentView = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);
        let detail = PaymentDetail {
            payment: v,
            history: vec![HistoryEntry {
                at: Timestamp(WallMs(1_769_860_830_456)),
                previous_state: State::Pending,
                state: State::Succeeded,
                upstream_status: Some("approved".into()),
            }],
        };
        let text = serde_json::to_string(&detail).unwrap();
        assert_eq!(
            serde_json::from_str::<PaymentDetail>(&text).unwrap(),
            detail
        );
    }

    #[test]
    fn stored_json_that_does_not_parse_shows_as_null() {
        assert_eq!(stored_json(Some("{not json")), Value::Null);
        assert_eq!(stored_json(None), Value::Null);
        assert_eq!(stored_json(Some("[1]")), json!([1]));
    }

    #[test]
    fn a_timestamp_that_is_not_rfc3339_is_refused_by_name() {
        let e = serde_json::from_str::<Timestamp>(r#""yesterday""#).unwrap_err();
        assert!(
            e.to_string().contains("\"yesterday\" is not RFC 3339"),
            "{e}"
        );
    }
}
