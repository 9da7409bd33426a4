//! Webhooks (SPEC section 6): the event body and the Standard Webhooks signature. Events
//! are written to the outbox by `store` in the transaction of the change that causes them.

use crate::config::Secret;
use crate::payment::{rfc3339, State, UnixMs};
use crate::store::{EventSpec, PaymentRow};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// Event type of a flip of the upstream status.
pub const STATUS_CHANGED: &str = "payment.status_changed";
/// Event type of a ladder that ended without a final status.
pub const TIMED_OUT: &str = "payment.timed_out";

/// A webhook secret that is not of the `whsec_<base64>` form.
#[derive(Debug, thiserror::Error)]
#[error("a webhook secret is \"whsec_\" followed by base64 (the key is not shown)")]
pub struct BadSecret;

/// The signing key: the base64-decoded part of `whsec_…`.
pub fn decode_secret(secret: &Secret) -> Result<Vec<u8>, BadSecret> {
    let s = secret.expose();
    let b64 = s.strip_prefix("whsec_").unwrap_or(s);
    B64.decode(b64)
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or(BadSecret)
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    // HMAC accepts a key of any length, so `new_from_slice` cannot fail here.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per key, space-separated (rotation).
pub fn signature_header(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &str) -> String {
    keys.iter()
        .map(|k| sign(k, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A fresh event id.
pub fn new_event_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let tail: String = (0..24)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("msg_{tail}")
}

fn parse_json(text: &Option<String>) -> Value {
    text.as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

/// The event's id and body, for a payment as it is after the change.
pub fn event_body(
    ev: &EventSpec,
    after: &PaymentRow,
    sequence: i64,
    checked_at: UnixMs,
) -> (String, String) {
    let state = after.state();
    let body = json!({
        "type": ev.event_type,
        "timestamp": rfc3339(checked_at),
        "data": {
            "kind": after.kind,
            "id": after.id,
            "sequence": sequence,
            "state": state,
            "previous_state": ev.previous_state,
            "upstream_status": after.upstream_status,
            "previous_upstream_status": ev.previous_upstream_status,
            "final": state.is_final(),
            "checked_at": rfc3339(checked_at),
            "started_at": rfc3339(after.started_at),
            "response": parse_json(&after.response),
            "metadata": parse_json(&after.metadata),
        }
    });
    (new_event_id(), body.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_reference_vector() {
        let key = decode_secret(&Secret::new(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
        ))
        .unwrap();
        let sig = sign(
            &key,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn rotation_gives_one_signature_per_key() {
        let h = signature_header(&[vec![1], vec![2]], "msg_1", 1, "{}");
        assert_eq!(h.split(' ').count(), 2);
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(decode_secret(&Secret::new("whsec_!!!".into())).is_err());
        assert!(decode_secret(&Secret::new("whsec_".into())).is_err());
    }

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
