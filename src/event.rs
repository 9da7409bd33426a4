//! Webhook events as domain facts (SPEC section 6): when a check calls for one, and the
//! body it carries. Pure: `store` writes the body into the outbox in the transaction of the
//! change, `webhooks` delivers it; neither needs the other for this.

use crate::account::AccountName;
use crate::kinds::KindName;
use crate::payment::{State, WallMs};
use crate::wire::{EventBody, EventData, PaymentFacts, Timestamp};

/// Event type of a flip of the upstream status.
pub const STATUS_CHANGED: &str = "payment.status_changed";
/// Event type of a ladder that ended without a final status.
pub const TIMED_OUT: &str = "payment.timed_out";

/// A webhook event to put in the outbox with the change that causes it.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub event_type: &'static str,
    /// The state before the change: `pending` for a flip the ladder saw, the final state
    /// it left for a move seen under reconciliation.
    pub previous_state: State,
    pub previous_upstream_status: Option<String>,
    /// Seen by reconciliation, after the ladder ended the payment.
    pub late: bool,
}

/// The payment an event is about, as it is after the change.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub account: &'a AccountName,
    pub kind: &'a KindName,
    pub id: &'a str,
    pub state: State,
    pub upstream_status: Option<&'a str>,
    pub started_at: WallMs,
    /// Ninjapay's last answer, as stored JSON text.
    pub response: Option<&'a str>,
    /// The merchant's metadata, as stored JSON text.
    pub metadata: Option<&'a str>,
}

/// Whether an event is needed: the raw status differs from the one before (before the
/// first check it counts as pending), or the ladder ended.
pub fn event_for(
    previous_raw: Option<&str>,
    new_raw: Option<&str>,
    previous_state: State,
    new_state: State,
) -> Option<&'static str> {
    if new_state == State::TimedOut {
        return Some(TIMED_OUT);
    }
    let before = previous_raw.unwrap_or("pending");
    match new_raw {
        Some(now) if !now.eq_ignore_ascii_case(before) => Some(STATUS_CHANGED),
        _ if new_state != previous_state => Some(STATUS_CHANGED),
        _ => None,
    }
}

/// The event's id and body. `after` is the payment as it is after the change. The
/// payment's fields are the API's ([`PaymentFacts`]), so a receiver and a client see the
/// same payment.
pub fn event_body(
    ev: &EventSpec,
    after: &Subject<'_>,
    sequence: i64,
    checked_at: WallMs,
) -> (String, String) {
    let body = EventBody {
        event_type: ev.event_type.to_owned(),
        timestamp: Timestamp(checked_at),
        data: EventData {
            payment: PaymentFacts::new(
                after.account,
                after.kind,
                after.id,
                after.state,
                after.upstream_status,
                after.started_at,
                after.response,
                after.metadata,
            ),
            sequence,
            previous_state: ev.previous_state,
            previous_upstream_status: ev.previous_upstream_status.clone(),
            checked_at: Timestamp(checked_at),
            late: ev.late,
        },
    };
    // Serialising plain data (strings, numbers, parsed JSON values) cannot fail.
    let text = serde_json::to_string(&body).unwrap_or_default();
    (new_event_id(), text)
}

/// A fresh event id.
pub fn new_event_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let tail: String = (0..24)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("msg_{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_fire_on_flips_only() {
        use State::*;
        assert_eq!(event_for(None, Some("pending"), Pending, Pending), None);
        assert_eq!(event_for(None, Some("PENDING"), Pending, Pending), None);
        assert_eq!(
            event_for(None, Some("approved"), Pending, Succeeded),
            Some(STATUS_CHANGED)
        );
        assert_eq!(
            event_for(Some("pending"), Some("weird"), Pending, Pending),
            Some(STATUS_CHANGED)
        );
        assert_eq!(event_for(Some("weird"), None, Pending, Pending), None);
        assert_eq!(
            event_for(Some("pending"), None, Pending, TimedOut),
            Some(TIMED_OUT)
        );
    }
}
