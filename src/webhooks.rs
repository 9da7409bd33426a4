//! Webhooks (SPEC section 6): the event body, the Standard Webhooks signature, and the
//! delivery worker. Events are written to the outbox by `store` in the transaction of the
//! change that causes them; the worker sends each until a 2xx answer or the end of the
//! retry schedule, logging every attempt in the transaction that moves the event on.
//!
//! Order without head-of-line blocking: only the lowest-sequence pending event of a payment
//! is eligible, so a later event waits while an earlier one retries, and the worker picks
//! eligible events across payments, earliest due first, up to `webhooks.max_in_flight` at
//! once. It sleeps until the earliest due time, a wake-up (a new event, a replay) or
//! shutdown; there is no periodic scan.

use crate::config::{Secret, WebhooksConfig};
use crate::payment::{now_ms, rfc3339, State, UnixMs};
use crate::store::{AttemptOutcome, EventSpec, PaymentRow, Store, WebhookAttempt, WebhookEvent};
use crate::telemetry::Telemetry;
use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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

/// Relative jitter on retry delays (±20%), so that events which failed together during a
/// receiver's outage do not all come back in the same instant when it recovers.
pub const JITTER: f64 = 0.2;

/// Longest part of a failed answer's body kept in `last_error`.
const ERROR_SNIPPET: usize = 200;

/// The wait before the next attempt, after the `failures`-th failed attempt (1-based) of
/// the current schedule, or `None` when the schedule is used up (the event is dead).
/// `unit` is a uniform draw in `[0, 1)` that places the delay within ±[`JITTER`] of the
/// configured one; a `Retry-After` longer than that wins.
pub fn retry_delay(
    schedule: &[Duration],
    failures: usize,
    unit: f64,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let base = *schedule.get(failures.checked_sub(1)?)?;
    let factor = 1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0);
    let jittered = base.mul_f64(factor);
    Some(jittered.max(retry_after.unwrap_or_default()))
}

/// What came of one HTTP attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The answer's status, when there was one.
    pub status: Option<u16>,
    /// Why it failed; `None` on a 2xx.
    pub error: Option<String>,
    /// `Retry-After` of a 429 or 503.
    pub retry_after: Option<Duration>,
}

/// Where an event goes after an attempt, given how many attempts its current schedule has
/// seen including this one.
pub fn outcome_of(
    sent: &Sent,
    schedule: &[Duration],
    attempts_in_schedule: usize,
    now: UnixMs,
    unit: f64,
) -> AttemptOutcome {
    if sent.error.is_none() {
        return AttemptOutcome::Delivered;
    }
    match retry_delay(schedule, attempts_in_schedule, unit, sent.retry_after) {
        Some(d) => AttemptOutcome::Retry(now + d.as_millis() as i64),
        None => AttemptOutcome::Dead,
    }
}

/// The delivery side: a client without redirects and the signing keys.
struct Deliverer {
    client: reqwest::Client,
    keys: Vec<Vec<u8>>,
    retry: Vec<Duration>,
    timeout: Duration,
    max_in_flight: usize,
}

/// Starts the delivery worker. It stops when `cancel` fires, after giving the attempts in
/// flight their timeout to finish (an attempt cut short is simply made again after a
/// restart, with the same `webhook-id`).
pub fn spawn(
    cfg: &WebhooksConfig,
    store: Store,
    telemetry: Arc<Telemetry>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let keys = cfg
        .secrets
        .iter()
        .map(decode_secret)
        .collect::<Result<Vec<_>, _>>()
        .context("webhooks.secret")?;
    let client = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        // A redirect is a failed attempt: the receiver's address is the configured one, and
        // a signed event must not wander to wherever a Location header points.
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(cfg.max_in_flight)
        .user_agent(concat!("ninjapoll/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the webhook HTTP client")?;
    let d = Arc::new(Deliverer {
        client,
        keys,
        retry: cfg.retry.clone(),
        timeout: cfg.timeout,
        max_in_flight: cfg.max_in_flight.max(1),
    });
    Ok(tokio::spawn(run(d, store, telemetry, wake, cancel)))
}

async fn run(
    d: Arc<Deliverer>,
    store: Store,
    telemetry: Arc<Telemetry>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    if d.keys.is_empty() {
        // Config refuses a URL or callback prefixes without a secret, so this is a
        // database from another configuration: keep its events rather than send them
        // unsigned or burn their retries.
        tracing::info!("no webhook secret configured: webhook delivery is off");
        cancel.cancelled().await;
        return;
    }
    let mut in_flight: JoinSet<()> = JoinSet::new();
    // Task id -> payment, so a finished (or panicked) attempt frees its payment.
    let mut busy: HashMap<tokio::task::Id, i64> = HashMap::new();
    let mut db_backoff = Duration::from_millis(100);
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let free = d.max_in_flight.saturating_sub(busy.len());
        // `None`: nothing to wait for but a wake-up, a finished attempt or shutdown.
        let mut wake_in: Option<Duration> = None;
        if free > 0 {
            let busy_payments: Vec<i64> = busy.values().copied().collect();
            // One more than there is room for: if it is not due yet, its due time is when
            // to look again.
            match store.webhook_heads(&busy_payments, free as u32 + 1).await {
                Ok(rows) => {
                    db_backoff = Duration::from_millis(100);
                    let now = now_ms();
                    for ev in rows {
                        if busy.len() >= d.max_in_flight {
                            break;
                        }
                        if ev.next_attempt_at > now {
                            wake_in =
                                Some(Duration::from_millis((ev.next_attempt_at - now) as u64));
                            break;
                        }
                        let payment = ev.payment_pk;
                        let handle = in_flight.spawn(attempt(
                            d.clone(),
                            store.clone(),
                            telemetry.clone(),
                            ev,
                        ));
                        busy.insert(handle.id(), payment);
                    }
                }
                Err(e) => {
                    telemetry.database_error("webhooks");
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "reading the webhook outbox failed; retrying"
                    );
                    wake_in = Some(db_backoff);
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let sleep = async {
            match wake_in {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = wake.notified() => {}
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        tracing::error!(error = %e, "a webhook attempt failed unexpectedly");
                        e.id()
                    }
                };
                busy.remove(&id);
            }
            _ = sleep => {}
        }
    }
    // Let attempts in flight land and be logged; each is bounded by the client's timeout,
    // the margin covers the database write.
    let drain = async { while in_flight.join_next().await.is_some() {} };
    if tokio::time::timeout(d.timeout + Duration::from_secs(2), drain)
        .await
        .is_err()
    {
        in_flight.shutdown().await;
    }
}

/// One attempt at one event: send, then log it and move the event on.
async fn attempt(d: Arc<Deliverer>, store: Store, telemetry: Arc<Telemetry>, ev: WebhookEvent) {
    let at = now_ms();
    let started = Instant::now();
    let sent = send(&d, &ev).await;
    let latency_ms = started.elapsed().as_millis() as i64;
    let in_schedule = (ev.attempts - ev.retry_from).max(0) as usize + 1;
    let outcome = outcome_of(&sent, &d.retry, in_schedule, now_ms(), fastrand::f64());
    let record = WebhookAttempt {
        at,
        status_code: sent.status.map(i64::from),
        error: sent.error.clone(),
        latency_ms,
    };
    match outcome {
        AttemptOutcome::Delivered => {
            telemetry.webhook("delivered");
            tracing::debug!(event = %ev.event_id, kind = %ev.kind, id = %ev.id, sequence = ev.sequence, latency_ms, "webhook delivered");
        }
        AttemptOutcome::Retry(next) => {
            telemetry.webhook("failed");
            tracing::info!(
                event = %ev.event_id, kind = %ev.kind, id = %ev.id, sequence = ev.sequence,
                error = sent.error.as_deref().unwrap_or(""),
                retry_in_ms = next - now_ms(),
                "webhook attempt failed; will retry"
            );
        }
        AttemptOutcome::Dead => {
            telemetry.webhook("dead");
            tracing::warn!(
                event = %ev.event_id, kind = %ev.kind, id = %ev.id, sequence = ev.sequence,
                error = sent.error.as_deref().unwrap_or(""),
                attempts = ev.attempts + 1,
                "webhook event is dead after its last retry; replay it with `ninjapoll webhooks replay`"
            );
        }
    }
    // The attempt is only known here; a few tries keep a brief database hiccup from
    // causing a duplicate. If it still fails, the event stays pending and is sent again
    // (at-least-once, same webhook-id).
    let mut delay = Duration::from_millis(50);
    for left in (0..5).rev() {
        match store
            .record_webhook_attempt(ev.pk, ev.retry_from, &record, outcome)
            .await
        {
            Ok(()) => return,
            Err(e) if left == 0 => {
                telemetry.database_error("webhooks");
                tracing::error!(error = format!("{e:#}"), event = %ev.event_id, kind = %ev.kind, id = %ev.id, "logging a webhook attempt failed; the event will be sent again");
            }
            Err(_) => {
                telemetry.database_error("webhooks");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

/// Sends the event once, signed afresh with this attempt's timestamp.
async fn send(d: &Deliverer, ev: &WebhookEvent) -> Sent {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.as_secs() as i64)
        .unwrap_or(0);
    let signature = signature_header(&d.keys, &ev.event_id, timestamp, &ev.body);
    let result = d
        .client
        .post(&ev.url)
        .header("webhook-id", &ev.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(ev.body.clone())
        .send()
        .await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            return Sent {
                status: None,
                error: Some(describe(&e, d.timeout)),
                retry_after: None,
            }
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Sent {
            status: Some(status.as_u16()),
            error: None,
            retry_after: None,
        };
    }
    let retry_after = matches!(status.as_u16(), 429 | 503)
        .then(|| {
            resp.headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::upstream::parse_retry_after(v, SystemTime::now()))
        })
        .flatten()
        .map(|ms| Duration::from_millis(ms.max(0) as u64));
    let error = if status.is_redirection() {
        format!("HTTP {}: redirects are not followed", status.as_u16())
    } else {
        // A little of the body tells the operator why the receiver refused; no more, and
        // only within the attempt's timeout.
        let mut snippet = Vec::new();
        while snippet.len() < ERROR_SNIPPET {
            match resp.chunk().await {
                Ok(Some(c)) => snippet.extend_from_slice(&c),
                _ => break,
            }
        }
        snippet.truncate(ERROR_SNIPPET);
        let text: String = String::from_utf8_lossy(&snippet)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text = text.trim();
        if text.is_empty() {
            format!("HTTP {}", status.as_u16())
        } else {
            format!("HTTP {}: {text}", status.as_u16())
        }
    };
    Sent {
        status: Some(status.as_u16()),
        error: Some(error),
        retry_after,
    }
}

/// A transport error in words, without the URL (it may carry a token).
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {}", humantime::format_duration(timeout));
    }
    crate::upstream::describe(e)
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
    #[test]
    fn retry_delays_follow_the_schedule_with_bounded_jitter() {
        let s = [Duration::from_secs(10), Duration::from_secs(60)];
        assert_eq!(retry_delay(&s, 0, 0.5, None), None);
        assert_eq!(retry_delay(&s, 1, 0.5, None), Some(Duration::from_secs(10)));
        assert_eq!(retry_delay(&s, 1, 0.0, None), Some(Duration::from_secs(8)));
        assert_eq!(retry_delay(&s, 2, 1.0, None), Some(Duration::from_secs(72)));
        assert_eq!(retry_delay(&s, 3, 0.5, None), None, "schedule used up");
        for _ in 0..1000 {
            let d = retry_delay(&s, 2, fastrand::f64(), None).unwrap();
            assert!(
                d >= Duration::from_secs(48) && d <= Duration::from_secs(72),
                "{d:?}"
            );
        }
        assert_eq!(retry_delay(&[], 1, 0.5, None), None);
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let s = [Duration::from_secs(10)];
        let long = Some(Duration::from_secs(120));
        assert_eq!(retry_delay(&s, 1, 0.5, long), long);
        let short = Some(Duration::from_secs(1));
        assert_eq!(
            retry_delay(&s, 1, 0.5, short),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn outcomes() {
        let s = [Duration::from_secs(1)];
        let ok = Sent {
            status: Some(204),
            error: None,
            retry_after: None,
        };
        assert_eq!(outcome_of(&ok, &s, 5, 0, 0.5), AttemptOutcome::Delivered);
        let bad = Sent {
            status: Some(500),
            error: Some("HTTP 500".into()),
            retry_after: None,
        };
        assert_eq!(
            outcome_of(&bad, &s, 1, 1000, 0.5),
            AttemptOutcome::Retry(2000)
        );
        assert_eq!(outcome_of(&bad, &s, 2, 1000, 0.5), AttemptOutcome::Dead);
    }
}
