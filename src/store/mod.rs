//! SQLite persistence: the only module that speaks SQL.
//!
//! One writer connection, every write transaction `BEGIN IMMEDIATE` (a deferred one that
//! reads then writes can fail with "database is locked" under a concurrent reader), and a
//! separate pool of readers. WAL mode lets the merchant app and our readers see committed
//! states without blocking the writer. Pragmas live in the connect options so that every
//! pooled connection gets them. An exclusive lock on a sibling `.lock` file makes a second
//! daemon on the same database impossible.
//!
//! One file per concern: `open` (connections, pragmas, the lock, the single writer and
//! its transactions, `write_status`), `payments` (enqueue, reads, cancel and rechecks),
//! `history` (a check's outcome, its history row and webhook event), `resume` (what the
//! scheduler reads back at start: pending and watched payments, the learners' evidence),
//! `ledger` (the budget ledger), `wal` (housekeeping and checkpoints), `retention` and
//! `outbox` (webhook events and attempts). Every write goes through [`Store::write`]: one
//! `BEGIN IMMEDIATE` transaction, committed, its outcome kept for health.

#[cfg(test)]
pub use crate::event::EventSpec;
use open::WriteHealth;
use sqlx::sqlite::SqlitePool;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use crate::account::AccountName;

/// Errors a caller may want to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("another ninjapoll holds {0} (a second daemon on one database is refused)")]
    Locked(PathBuf),
    /// The database was migrated by a newer ninjapoll: its schema is one we do not know, and
    /// writing to it could lose what the newer version keeps.
    #[error(
        "the database is at schema version {found} (made by a newer ninjapoll), but this \
         ninjapoll {ours_release} knows schema versions up to {ours}; run the newer version, \
         or restore the backup taken before the upgrade"
    )]
    TooNew {
        found: i64,
        ours: i64,
        ours_release: &'static str,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A compile-checked query returning [`PaymentRow`]s: `$before` + the row's columns +
/// `$after`. The macros take only string literals, so the column list lives here, with the
/// overrides that decode straight into the domain types.
macro_rules! payment_query {
    ($before:literal, $after:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            PaymentRow,
            $before
                + r#"pk AS "pk!: PaymentKey", account AS "account: AccountName", kind AS "kind: KindName", id, state AS "state: State", upstream_status,
                started_at AS "started_at: WallMs", jitter_ms, created_at AS "created_at: WallMs",
                updated_at AS "updated_at: WallMs", next_check_at AS "next_check_at: WallMs",
                checks_done, last_checked_at AS "last_checked_at: WallMs", last_error,
                finished_at AS "finished_at: WallMs", response, metadata, callback_url, event_seq"#
                + $after
            $(, $arg)*
        )
    };
}

/// A compile-checked query returning [`WebhookEvent`]s: `SELECT` the event's columns, with
/// its payment and last attempt, then `$from` (which names `webhook_events e` and
/// `payments p`). `$url` is the expression for the `url` column.
macro_rules! event_query {
    ($url:literal, $from:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            WebhookEvent,
            r#"SELECT e.pk AS "pk!: EventKey", e.event_id, e.payment_pk AS "payment_pk: PaymentKey",
                p.account AS "account: AccountName", p.kind AS "kind: KindName", p.id, e.sequence, e.type AS event_type, "#
                + $url
                + r#" AS "url!", e.body, e.created_at AS "created_at: WallMs", e.state AS "state: WebhookState",
                e.attempts, e.retry_from, e.next_attempt_at AS "next_attempt_at: WallMs",
                e.delivered_at AS "delivered_at: WallMs", e.last_error,
                (SELECT a.at FROM webhook_attempts a WHERE a.event_pk = e.pk
                 ORDER BY a.pk DESC LIMIT 1) AS "last_attempt_at: WallMs",
                (SELECT a.status_code FROM webhook_attempts a WHERE a.event_pk = e.pk
                 ORDER BY a.pk DESC LIMIT 1) AS last_status_code,
                (p.callback_url IS NOT NULL) AS "callback!: bool" "#
                + $from
            $(, $arg)*
        )
    };
}

mod history;
mod ledger;
mod open;
mod outbox;
mod payments;
mod resume;
mod retention;
#[cfg(test)]
mod tests;
mod wal;

pub use history::{Applied, CheckRecord, WatchCheck};
pub use ledger::LedgerRow;
pub use open::WriteStatus;
pub use outbox::{AttemptOutcome, WebhookAttempt, WebhookEvent, WebhookFilter};
pub use payments::{Inserted, ListFilter, NewPayment, PaymentRow};
#[allow(unused_imports)] // every row type a read returns, for callers that name it
pub use resume::{FinishedRow, PendingRow, WatchEvidenceRow, WatchedRow, EVIDENCE_ROWS};
pub use retention::Pruned;

/// The database.
#[derive(Clone)]
pub struct Store {
    write: SqlitePool,
    read: SqlitePool,
    /// Each account's event URL, for a payment without a `callback_url` (a reload may
    /// change them).
    webhook_urls: Arc<RwLock<Arc<WebhookUrls>>>,
    health: Arc<WriteHealth>,
    /// The WAL file, whose size decides when a checkpoint truncates it.
    wal_path: PathBuf,
    /// The WAL's size at the last housekeeping, to tell an idle database.
    wal_seen: Arc<AtomicU64>,
    _lock: Arc<File>,
}

/// Each account's event URL (`[webhooks] url`, `[accounts.NAME.webhooks] url`).
pub type WebhookUrls = std::collections::BTreeMap<AccountName, String>;

impl Store {
    /// Sets each account's event URL: events queued from now on, and pending ones without
    /// a callback, go there.
    pub fn set_webhook_urls(&self, urls: WebhookUrls) {
        *self.webhook_urls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(urls);
    }

    /// Each account's event URL, as set now.
    pub(crate) fn webhook_urls(&self) -> Arc<WebhookUrls> {
        self.webhook_urls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
