//! The webhook outbox: events queued with their check, the delivery worker's heads,
//! attempts, listings and replays.

use super::Store;
use crate::account::AccountName;
use crate::kinds::KindName;
use crate::payment::{now_ms, EventKey, PaymentKey, WallMs, WebhookOutcome, WebhookState};
use anyhow::{Context, Result};
use sqlx::FromRow;

/// A webhook event, as the delivery worker and the API see it.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct WebhookEvent {
    pub pk: EventKey,
    pub event_id: String,
    pub payment_pk: PaymentKey,
    pub account: AccountName,
    pub kind: KindName,
    pub id: String,
    pub sequence: i64,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub url: String,
    pub body: String,
    pub created_at: WallMs,
    pub state: WebhookState,
    /// Every attempt ever made, replays included.
    pub attempts: i64,
    /// `attempts` when the current retry schedule began (0, or the count at a replay).
    pub retry_from: i64,
    pub next_attempt_at: WallMs,
    pub delivered_at: Option<WallMs>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<WallMs>,
    pub last_status_code: Option<i64>,
    /// Whether `url` is the payment's own `callback_url` (else the configured
    /// `webhooks.url`): a callback is checked against the allow-list before each send.
    pub callback: bool,
}

/// One delivery attempt, as logged.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct WebhookAttempt {
    pub at: WallMs,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub latency_ms: i64,
}

/// What an attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; try again at this time.
    Retry(WallMs),
    /// Failed, and it was the last try of the schedule.
    Dead,
}

impl AttemptOutcome {
    /// The attempt's outcome as metrics count it.
    pub fn outcome(self) -> WebhookOutcome {
        match self {
            AttemptOutcome::Delivered => WebhookOutcome::Delivered,
            AttemptOutcome::Retry(_) => WebhookOutcome::Failed,
            AttemptOutcome::Dead => WebhookOutcome::Dead,
        }
    }

    /// The event's state after the attempt (while its retry schedule is still the one
    /// the attempt was made under).
    pub fn state(self) -> WebhookState {
        match self {
            AttemptOutcome::Delivered => WebhookState::Delivered,
            AttemptOutcome::Retry(_) => WebhookState::Pending,
            AttemptOutcome::Dead => WebhookState::Dead,
        }
    }

    /// When to try again, if the event is retried.
    fn next_attempt(self) -> Option<WallMs> {
        match self {
            AttemptOutcome::Retry(at) => Some(at),
            AttemptOutcome::Delivered | AttemptOutcome::Dead => None,
        }
    }
}

/// A webhook list query.
#[derive(Debug, Clone, Default)]
pub struct WebhookFilter {
    pub state: Option<WebhookState>,
    pub account: Option<String>,
    pub kind: Option<String>,
    pub id: Option<String>,
    /// Only rows with a larger `pk` (the cursor).
    pub after_pk: Option<EventKey>,
    pub limit: u32,
}

impl Store {
    /// The pending events that head their payment's queue (no earlier pending event of the
    /// same payment), earliest due first, leaving out the payments in `busy` (an attempt
    /// is in flight). Order per payment comes from the head rule; other payments are never
    /// held up by one that is retrying, and no account by another: only the accounts in
    /// `open` are read (those with a signing key and room for another attempt in flight).
    pub async fn webhook_heads(
        &self,
        busy: &[PaymentKey],
        open: &[&AccountName],
        limit: u32,
    ) -> Result<Vec<WebhookEvent>> {
        let busy: Vec<i64> = busy.iter().map(|k| k.0).collect();
        let busy = serde_json::to_string(&busy).context("encoding busy payments")?;
        let open = serde_json::to_string(open).context("encoding open accounts")?;
        let urls = serde_json::to_string(&*self.webhook_urls()).context("encoding URLs")?;
        // An event without a callback goes to the URL configured now, not the one in force
        // when it was queued: a merchant who moves the receiver gets pending and replayed
        // events at the new address.
        event_query!(
            "CASE WHEN p.callback_url IS NULL \
             THEN COALESCE(json_extract(?3, '$.\"' || p.account || '\"'), e.url) \
             ELSE e.url END",
            "FROM webhook_events e JOIN payments p ON p.pk = e.payment_pk \
             WHERE e.state = 'pending' \
             AND e.payment_pk NOT IN (SELECT value FROM json_each(?1)) \
             AND p.account IN (SELECT value FROM json_each(?4)) \
             AND NOT EXISTS (SELECT 1 FROM webhook_events b WHERE b.payment_pk = e.payment_pk \
                             AND b.state = 'pending' AND b.sequence < e.sequence) \
             ORDER BY e.next_attempt_at, e.pk LIMIT ?2",
            busy,
            limit,
            urls,
            open,
        )
        .fetch_all(&self.read)
        .await
        .context("reading due webhook events")
    }

    /// Logs an attempt and moves the event on, in one transaction. `retry_from` is the
    /// value the attempt was started under: if a replay began a new schedule meanwhile, a
    /// failure leaves the replay's plan alone (a success still counts).
    pub async fn record_webhook_attempt(
        &self,
        event_pk: EventKey,
        retry_from: i64,
        attempt: &WebhookAttempt,
        outcome: AttemptOutcome,
    ) -> Result<()> {
        self.write("webhook attempt", async |tx| {
            let delivered = outcome == AttemptOutcome::Delivered;
            let (new_state, next) = (outcome.state(), outcome.next_attempt());
            sqlx::query!(
                "INSERT INTO webhook_attempts (event_pk, at, status_code, error, latency_ms) \
             VALUES (?, ?, ?, ?, ?)",
                event_pk,
                attempt.at,
                attempt.status_code,
                attempt.error,
                attempt.latency_ms,
            )
            .execute(&mut *tx)
            .await
            .context("logging webhook attempt")?;
            let now = now_ms();
            sqlx::query!(
                "UPDATE webhook_events SET attempts = attempts + 1, last_error = ?1, \
             state = CASE WHEN ?2 THEN 'delivered' WHEN retry_from = ?3 THEN ?4 ELSE state END, \
             next_attempt_at = CASE WHEN NOT ?2 AND retry_from = ?3 AND ?5 IS NOT NULL \
                               THEN ?5 ELSE next_attempt_at END, \
             delivered_at = CASE WHEN ?2 THEN ?6 ELSE delivered_at END \
             WHERE pk = ?7",
                attempt.error,
                delivered,
                retry_from,
                new_state,
                next,
                now,
                event_pk,
            )
            .execute(&mut *tx)
            .await
            .context("updating webhook event")?;
            Ok(())
        })
        .await
    }

    /// A page of webhook events in insertion order.
    pub async fn list_webhooks(&self, f: &WebhookFilter) -> Result<Vec<WebhookEvent>> {
        let after_pk = f.after_pk.map_or(0, |k| k.0);
        Ok(event_query!(
            "e.url",
            "FROM webhook_events e JOIN payments p ON p.pk = e.payment_pk \
             WHERE e.pk > ?1 AND (?2 IS NULL OR e.state = ?2) AND (?3 IS NULL OR p.kind = ?3) \
             AND (?4 IS NULL OR p.id = ?4) AND (?6 IS NULL OR p.account = ?6) \
             ORDER BY e.pk LIMIT ?5",
            after_pk,
            f.state,
            f.kind,
            f.id,
            f.limit,
            f.account,
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// One webhook event by its `webhook-id`.
    pub async fn webhook(&self, event_id: &str) -> Result<Option<WebhookEvent>> {
        Ok(event_query!(
            "e.url",
            "FROM webhook_events e JOIN payments p ON p.pk = e.payment_pk WHERE e.event_id = ?",
            event_id,
        )
        .fetch_optional(&self.read)
        .await?)
    }

    /// An event's attempts, oldest first.
    pub async fn webhook_attempts(&self, event_pk: EventKey) -> Result<Vec<WebhookAttempt>> {
        Ok(sqlx::query_as!(
            WebhookAttempt,
            r#"SELECT at AS "at: WallMs", status_code, error, latency_ms FROM webhook_attempts
             WHERE event_pk = ? ORDER BY pk"#,
            event_pk
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Makes an event due at `at` with a fresh retry schedule (a delivered or dead one goes
    /// back to pending; a pending one is simply tried sooner). `None`: no such event.
    pub async fn replay_webhook(&self, event_id: &str, at: WallMs) -> Result<Option<WebhookEvent>> {
        self.write("webhook replay", async |tx| {
            let done = sqlx::query!(
                "UPDATE webhook_events SET state = 'pending', next_attempt_at = ?1, \
             retry_from = attempts, delivered_at = NULL WHERE event_id = ?2",
                at,
                event_id
            )
            .execute(&mut *tx)
            .await
            .context("replaying webhook event")?;
            let row = if done.rows_affected() == 0 {
                None
            } else {
                event_query!(
                "e.url",
                "FROM webhook_events e JOIN payments p ON p.pk = e.payment_pk WHERE e.event_id = ?",
                event_id,
            )
                .fetch_optional(&mut *tx)
                .await?
            };
            Ok(row)
        })
        .await
    }

    /// Webhook events per state.
    pub async fn webhook_state_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query!(
            r#"SELECT state, COUNT(*) AS "n!: i64" FROM webhook_events GROUP BY state"#
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.state, r.n)).collect())
    }
}
