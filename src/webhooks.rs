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

use crate::account::{Account, AccountName};
use crate::backoff::Backoff;
use crate::callback::CallbackPrefix;
use crate::config::WebhooksConfig;
use crate::payment::{now_ms, EventKey, PaymentKey, WallMs};
use crate::secret::decode_secret;
use crate::store::{AttemptOutcome, Store, WebhookAttempt, WebhookEvent};
use crate::telemetry::Telemetry;
use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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

/// Most webhook attempts in flight across all accounts.
const MAX_TOTAL_IN_FLIGHT: usize = 256;

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
    now: WallMs,
    unit: f64,
) -> AttemptOutcome {
    if sent.error.is_none() {
        return AttemptOutcome::Delivered;
    }
    match retry_delay(schedule, attempts_in_schedule, unit, sent.retry_after) {
        Some(d) => AttemptOutcome::Retry(
            now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        ),
        None => AttemptOutcome::Dead,
    }
}

/// The delivery side: a client without redirects and the signing keys.
struct Deliverer {
    client: reqwest::Client,
    /// Each account's signing keys; an account without any has its events kept unsent.
    keys: HashMap<AccountName, Vec<Vec<u8>>>,
    retry: Vec<Duration>,
    timeout: Duration,
    /// Attempts in flight per account: a receiver that hangs holds only its own account's.
    max_in_flight: usize,
    /// Attempts in flight in all.
    max_total: usize,
    /// Re-checked before each send of a callback: the list may have shrunk since the
    /// payment was enqueued.
    allowed_callbacks: Vec<CallbackPrefix>,
}

/// Why an event is not sent to its callback URL, or `None` when it may go. The
/// configured `webhooks.url` is the operator's own and always may.
pub fn refusal(allowed: &[CallbackPrefix], ev: &WebhookEvent) -> Option<String> {
    if !ev.callback {
        return None;
    }
    crate::callback::check_callback(allowed, &ev.url)
        .err()
        .map(|e| format!("not sent: the callback URL is no longer allowed ({e})"))
}

/// Starts the delivery worker. It stops when `cancel` fires, after giving the attempts in
/// flight their timeout to finish (an attempt cut short is simply made again after a
/// restart, with the same `webhook-id`).
pub fn spawn(
    cfg: &WebhooksConfig,
    accounts: &BTreeMap<AccountName, Arc<Account>>,
    store: Store,
    telemetry: Arc<Telemetry>,
    webhook_wake: Arc<Notify>,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut keys = HashMap::new();
    for (name, account) in accounts {
        let decoded = account
            .webhooks
            .secrets
            .iter()
            .map(decode_secret)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("the webhook secret of account {name}"))?;
        if !decoded.is_empty() {
            keys.insert(name.clone(), decoded);
        }
    }
    let max_in_flight = cfg.max_in_flight.max(1);
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
        max_total: max_in_flight
            .saturating_mul(keys.len().max(1))
            .min(MAX_TOTAL_IN_FLIGHT),
        keys,
        retry: cfg.retry.clone(),
        timeout: cfg.timeout,
        max_in_flight,
        allowed_callbacks: cfg.allowed_callback_prefixes.clone(),
    });
    Ok(tokio::spawn(run(d, store, telemetry, webhook_wake, cancel)))
}

/// An attempt made but not yet logged (the database refused the write): kept in memory
/// and written once the database takes writes again. Until then its payment is held to
/// the attempt's outcome, so the retry schedule is followed (a delivered or dead event is
/// not sent again) and the count of attempts stays right.
#[derive(Debug, Clone)]
struct Unlogged {
    event_pk: EventKey,
    payment_pk: PaymentKey,
    retry_from: i64,
    record: WebhookAttempt,
    outcome: AttemptOutcome,
}

impl Unlogged {
    /// When the payment's event may be tried again: `None` never (delivered, or dead
    /// until replayed).
    fn due(&self) -> Option<WallMs> {
        match self.outcome {
            AttemptOutcome::Retry(at) => Some(at),
            AttemptOutcome::Delivered | AttemptOutcome::Dead => None,
        }
    }
}

async fn run(
    d: Arc<Deliverer>,
    store: Store,
    telemetry: Arc<Telemetry>,
    webhook_wake: Arc<Notify>,
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
    let mut w = Worker::new(d, store, telemetry);
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let now = now_ms();
        let mut wake = Wake { now, in_: None };
        w.log_unlogged(now, &mut wake).await;
        // A payment whose last attempt is unlogged waits for that attempt's outcome.
        let held = w.held();
        if w.free() > 0 {
            w.start_due(now, &held, &mut wake).await;
        }
        let sleep = async {
            match wake.in_ {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = webhook_wake.notified() => {}
            Some(done) = w.in_flight.join_next_with_id(), if !w.in_flight.is_empty() => {
                w.landed(done);
            }
            _ = sleep => {}
        }
    }
    w.drain().await;
}

/// When the worker's loop should look again: `in_` is `None` when there is nothing to
/// wait for but a wake-up, a finished attempt or shutdown.
struct Wake {
    now: WallMs,
    in_: Option<Duration>,
}

impl Wake {
    /// Look again at `at` at the latest.
    fn at(&mut self, at: WallMs) {
        let d = Duration::from_millis((at - self.now).max(0) as u64);
        self.in_ = Some(self.in_.map_or(d, |w| w.min(d)));
    }
}

/// The delivery worker's state between turns of its loop.
struct Worker {
    d: Arc<Deliverer>,
    store: Store,
    telemetry: Arc<Telemetry>,
    in_flight: JoinSet<Option<Unlogged>>,
    /// Task id -> payment and its account, so a finished (or panicked) attempt frees both.
    busy: HashMap<tokio::task::Id, (PaymentKey, AccountName)>,
    /// Attempts waiting to be logged, oldest first.
    unlogged: Vec<Unlogged>,
    read_backoff: Backoff,
    log_backoff: Backoff,
    /// When to try logging `unlogged` again.
    log_at: WallMs,
}

impl Worker {
    fn new(d: Arc<Deliverer>, store: Store, telemetry: Arc<Telemetry>) -> Self {
        Self {
            d,
            store,
            telemetry,
            in_flight: JoinSet::new(),
            busy: HashMap::new(),
            unlogged: Vec::new(),
            read_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            log_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            log_at: now_ms(),
        }
    }

    /// Room for more attempts in flight.
    fn free(&self) -> usize {
        self.d.max_total.saturating_sub(self.busy.len())
    }

    /// Attempts in flight per account.
    fn per_account(&self) -> HashMap<AccountName, usize> {
        let mut n = HashMap::new();
        for (_, a) in self.busy.values() {
            *n.entry(a.clone()).or_default() += 1;
        }
        n
    }

    /// Tries to log the unlogged attempts when it is time to.
    async fn log_unlogged(&mut self, now: WallMs, wake: &mut Wake) {
        if !self.unlogged.is_empty() && now >= self.log_at {
            match flush(&self.store, &mut self.unlogged).await {
                Ok(()) => self.log_backoff.reset(),
                Err(e) => {
                    let wait = self.log_backoff.next_delay();
                    tracing::error!(
                        error = format!("{e:#}"),
                        unlogged = self.unlogged.len(),
                        retry_in_ms = wait.as_millis() as u64,
                        "logging webhook attempts failed; their events follow their retry schedule meanwhile"
                    );
                    self.log_at = now + wait.as_millis() as i64;
                }
            }
        }
        if !self.unlogged.is_empty() {
            wake.at(self.log_at);
        }
    }

    /// Each payment whose last attempt is unlogged, and when it may be tried again.
    fn held(&self) -> HashMap<PaymentKey, Option<WallMs>> {
        let mut held = HashMap::new();
        for u in &self.unlogged {
            held.insert(u.payment_pk, u.due());
        }
        held
    }

    /// Starts attempts at the due events of payments neither busy nor held.
    async fn start_due(
        &mut self,
        now: WallMs,
        held: &HashMap<PaymentKey, Option<WallMs>>,
        wake: &mut Wake,
    ) {
        let mut per_account = self.per_account();
        // Only accounts with a signing key and room for another attempt are read: one
        // whose receiver hangs holds its own slots, never another account's.
        let open: Vec<AccountName> = self
            .d
            .keys
            .keys()
            .filter(|a| per_account.get(*a).copied().unwrap_or(0) < self.d.max_in_flight)
            .cloned()
            .collect();
        if open.is_empty() {
            return;
        }
        let open: Vec<&AccountName> = open.iter().collect();
        let mut skip: Vec<PaymentKey> = self.busy.values().map(|(p, _)| *p).collect();
        for (payment, due) in held {
            match due {
                Some(at) if *at <= now => {}
                Some(at) => {
                    skip.push(*payment);
                    wake.at(*at);
                }
                None => skip.push(*payment),
            }
        }
        // One more than there is room for: if it is not due yet, its due time is when
        // to look again.
        match self
            .store
            .webhook_heads(
                &skip,
                &open,
                u32::try_from(self.free())
                    .unwrap_or(u32::MAX)
                    .saturating_add(1),
            )
            .await
        {
            Ok(rows) => {
                self.read_backoff.reset();
                for ev in rows {
                    if self.busy.len() >= self.d.max_total {
                        break;
                    }
                    let n = per_account.entry(ev.account.clone()).or_default();
                    if *n >= self.d.max_in_flight {
                        // Its account is full now; the next turn reads without it.
                        wake.at(now);
                        continue;
                    }
                    if ev.next_attempt_at > now && !held.contains_key(&ev.payment_pk) {
                        wake.at(ev.next_attempt_at);
                        break;
                    }
                    *n += 1;
                    let payment = (ev.payment_pk, ev.account.clone());
                    let before = self.unlogged.iter().filter(|u| u.event_pk == ev.pk).count();
                    let handle = self.in_flight.spawn(attempt(
                        self.d.clone(),
                        self.store.clone(),
                        self.telemetry.clone(),
                        ev,
                        before,
                    ));
                    self.busy.insert(handle.id(), payment);
                }
            }
            Err(e) => {
                self.telemetry.database_error("webhooks");
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reading the webhook outbox failed; retrying"
                );
                let wait = self.read_backoff.next_delay();
                wake.at(now + wait.as_millis() as i64);
            }
        }
    }

    /// An attempt finished (or panicked): its payment is free, its record kept if unlogged.
    fn landed(
        &mut self,
        done: Result<(tokio::task::Id, Option<Unlogged>), tokio::task::JoinError>,
    ) {
        let id = match done {
            Ok((id, not_logged)) => {
                self.unlogged.extend(not_logged);
                id
            }
            Err(e) => {
                tracing::error!(error = %e, "a webhook attempt failed unexpectedly");
                e.id()
            }
        };
        self.busy.remove(&id);
    }

    /// At shutdown: lets attempts in flight land and logs what it can.
    async fn drain(mut self) {
        // Each attempt is bounded by the client's timeout, the margin covers the database
        // write.
        let unlogged = &mut self.unlogged;
        let in_flight = &mut self.in_flight;
        let drain = async {
            while let Some(done) = in_flight.join_next().await {
                if let Ok(Some(u)) = done {
                    unlogged.push(u);
                }
            }
        };
        if tokio::time::timeout(self.d.timeout + Duration::from_secs(2), drain)
            .await
            .is_err()
        {
            self.in_flight.shutdown().await;
        }
        if !self.unlogged.is_empty() {
            if let Err(e) = flush(&self.store, &mut self.unlogged).await {
                // At-least-once: those events are sent again after a restart (same webhook-id).
                tracing::warn!(
                    error = format!("{e:#}"),
                    unlogged = self.unlogged.len(),
                    "shutting down with webhook attempts not logged; their events will be sent again"
                );
            }
        }
    }
}

/// Logs the attempts in order, removing each one that landed; stops at the first failure.
async fn flush(store: &Store, unlogged: &mut Vec<Unlogged>) -> Result<()> {
    while let Some(u) = unlogged.first() {
        store
            .record_webhook_attempt(u.event_pk, u.retry_from, &u.record, u.outcome)
            .await?;
        unlogged.remove(0);
    }
    Ok(())
}

/// One attempt at one event: send, then log it and move the event on. `unlogged_before`:
/// earlier attempts at this event that the database has not taken yet. Returns the
/// attempt when it could not be logged.
async fn attempt(
    d: Arc<Deliverer>,
    store: Store,
    telemetry: Arc<Telemetry>,
    ev: WebhookEvent,
    unlogged_before: usize,
) -> Option<Unlogged> {
    let at = now_ms();
    let started = Instant::now();
    let refused = refusal(&d.allowed_callbacks, &ev);
    let sent = match &refused {
        None => send(&d, &ev).await,
        Some(why) => Sent {
            status: None,
            error: Some(why.clone()),
            retry_after: None,
        },
    };
    let latency_ms = started.elapsed().as_millis() as i64;
    let in_schedule = (ev.attempts - ev.retry_from).max(0) as usize + unlogged_before + 1;
    let was_refused = refused.is_some();
    let outcome = match refused {
        // Retrying cannot help until the allow-list changes; a replay tries again.
        Some(_) => AttemptOutcome::Dead,
        None => outcome_of(&sent, &d.retry, in_schedule, now_ms(), fastrand::f64()),
    };
    let record = WebhookAttempt {
        at,
        status_code: sent.status.map(i64::from),
        error: sent.error.clone(),
        latency_ms,
    };
    let attempts = ev.attempts + unlogged_before as i64 + 1;
    telemetry.webhook(outcome.outcome());
    match outcome {
        AttemptOutcome::Delivered => {
            tracing::debug!(event = %ev.event_id, kind = %ev.kind, id = %ev.id, sequence = ev.sequence, latency_ms, "webhook delivered");
        }
        AttemptOutcome::Retry(next) => {
            tracing::info!(
                event = %ev.event_id, kind = %ev.kind, id = %ev.id, sequence = ev.sequence,
                error = sent.error.as_deref().unwrap_or(""),
                retry_in_ms = next - now_ms(),
                "webhook attempt failed; will retry"
            );
        }
        AttemptOutcome::Dead if was_refused => {
            tracing::warn!(
                event = %ev.event_id, payment = %ev.id, sequence = ev.sequence,
                error = sent.error.as_deref().unwrap_or(""),
                "webhook event failed without being sent: its callback URL is not under webhooks.allowed_callback_prefixes any more"
            );
        }
        AttemptOutcome::Dead => {
            tracing::warn!(
                event = %ev.event_id, kind = %ev.kind, id = %ev.id, sequence = ev.sequence,
                error = sent.error.as_deref().unwrap_or(""),
                attempts,
                "webhook event is dead after its last retry; replay it with `ninjapoll webhooks replay`"
            );
        }
    }
    let unlogged = Unlogged {
        event_pk: ev.pk,
        payment_pk: ev.payment_pk,
        retry_from: ev.retry_from,
        record,
        outcome,
    };
    if unlogged_before > 0 {
        // Earlier attempts go first; the worker logs this one after them.
        return Some(unlogged);
    }
    match store
        .record_webhook_attempt(ev.pk, ev.retry_from, &unlogged.record, outcome)
        .await
    {
        Ok(()) => None,
        Err(e) => {
            telemetry.database_error("webhooks");
            tracing::error!(error = format!("{e:#}"), event = %ev.event_id, kind = %ev.kind, id = %ev.id, "logging a webhook attempt failed; kept until the database takes writes again");
            Some(unlogged)
        }
    }
}

/// Sends the event once, signed afresh with this attempt's timestamp.
async fn send(d: &Deliverer, ev: &WebhookEvent) -> Sent {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.as_secs() as i64)
        .unwrap_or(0);
    // Only accounts with keys are read from the outbox, so there always are some.
    let keys = d.keys.get(&ev.account).map_or(&[][..], Vec::as_slice);
    let signature = signature_header(keys, &ev.event_id, timestamp, &ev.body);
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
    use crate::secret::Secret;

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
        assert_eq!(
            outcome_of(&ok, &s, 5, WallMs(0), 0.5),
            AttemptOutcome::Delivered
        );
        let bad = Sent {
            status: Some(500),
            error: Some("HTTP 500".into()),
            retry_after: None,
        };
        assert_eq!(
            outcome_of(&bad, &s, 1, WallMs(1000), 0.5),
            AttemptOutcome::Retry(WallMs(2000))
        );
        assert_eq!(
            outcome_of(&bad, &s, 2, WallMs(1000), 0.5),
            AttemptOutcome::Dead
        );
    }
}
