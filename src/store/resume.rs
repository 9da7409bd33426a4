//! What the scheduler reads back at start: pending payments, the ones under
//! reconciliation (watched), and the evidence its learners rebuild from.

use super::open::options;
use super::Store;
use crate::account::AccountName;
use crate::kinds::KindName;
use crate::payment::{PaymentKey, State, WallMs};
use anyhow::{Context, Result};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::FromRow;
use std::path::Path;

/// A payment under reconciliation, as the scheduler resumes it.
#[derive(Debug, Clone, FromRow)]
pub struct WatchedRow {
    pub pk: PaymentKey,
    pub account: AccountName,
    pub kind: KindName,
    pub id: String,
    pub state: State,
    pub upstream_status: Option<String>,
    pub started_at: WallMs,
    pub next_check_at: WallMs,
    /// The last check under watch that saw no move (else when the ladder ended it).
    pub seen_at: Option<WallMs>,
    /// How the ladder ended it.
    pub ended_state: State,
}

/// A payment the ladder ended in a watched state, as evidence of when late moves happen.
#[derive(Debug, Clone, FromRow)]
pub struct WatchEvidenceRow {
    pub kind: KindName,
    pub ended_state: State,
    pub started_at: WallMs,
    /// The last check that saw it unmoved: under watch, else the one that ended it.
    pub seen_at: Option<WallMs>,
    /// The check that saw its first move.
    pub moved_at: Option<WallMs>,
}
/// A pending payment, as the scheduler resumes it.
#[derive(Debug, Clone, FromRow)]
pub struct PendingRow {
    pub pk: PaymentKey,
    pub account: AccountName,
    pub kind: KindName,
    pub id: String,
    pub upstream_status: Option<String>,
    pub started_at: WallMs,
    pub jitter_ms: i64,
    pub next_check_at: Option<WallMs>,
    pub last_checked_at: Option<WallMs>,
}

/// A finished payment, as evidence of when payments flip.
#[derive(Debug, Clone, FromRow)]
pub struct FinishedRow {
    pub account: AccountName,
    pub kind: KindName,
    pub started_at: WallMs,
    pub pending_seen_at: Option<WallMs>,
    pub last_checked_at: Option<WallMs>,
    pub state: State,
}

impl FinishedRow {
    /// When it was last seen pending and when it was seen final (`None`: no flip was seen:
    /// it timed out, its last check seeing it still pending, or was cancelled).
    pub fn evidence_times(&self) -> (Option<WallMs>, Option<WallMs>) {
        match self.state {
            State::TimedOut => (self.last_checked_at, None),
            State::Cancelled => (self.pending_seen_at, None),
            _ => (self.pending_seen_at, self.last_checked_at),
        }
    }
}

/// The finished payments started since `$since`, as [`FinishedRow`]s: one query for the
/// daemon's reader pool and for `ninjapoll simulate`'s own connection.
macro_rules! finished_query {
    ($since:expr, $most:expr) => {
        sqlx::query_as!(
            FinishedRow,
            r#"SELECT account AS "account: AccountName", kind AS "kind: KindName", started_at AS "started_at: WallMs",
               pending_seen_at AS "pending_seen_at: WallMs",
               finished_at AS "last_checked_at: WallMs", COALESCE(ended_state, state) AS "state!: State"
               FROM payments WHERE started_at >= ? AND state != 'pending'
               ORDER BY started_at DESC LIMIT ?"#,
            $since,
            $most
        )
    };
}

/// The most finished payments read back as evidence of flip ages, the newest: the learner
/// keeps at most 20,000 a kind, and a long window on a busy key (or `simulate` on a
/// database of months) would otherwise read them all into memory.
pub const EVIDENCE_ROWS: i64 = 100_000;

impl Store {
    /// Every pending payment, for the scheduler at start-up.
    pub async fn pending(&self) -> Result<Vec<PendingRow>> {
        Ok(sqlx::query_as!(
            PendingRow,
            r#"SELECT pk AS "pk!: PaymentKey", account AS "account: AccountName", kind AS "kind: KindName", id, upstream_status,
               started_at AS "started_at: WallMs", jitter_ms, next_check_at AS "next_check_at: WallMs",
               last_checked_at AS "last_checked_at: WallMs" FROM payments WHERE state = 'pending' ORDER BY pk"#
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Every payment under reconciliation (final, with a check still planned), for the
    /// scheduler at start-up.
    pub async fn watched(&self) -> Result<Vec<WatchedRow>> {
        Ok(sqlx::query_as!(
            WatchedRow,
            r#"SELECT pk AS "pk!: PaymentKey", account AS "account: AccountName", kind AS "kind: KindName", id, state AS "state: State",
               upstream_status, started_at AS "started_at: WallMs",
               next_check_at AS "next_check_at!: WallMs",
               COALESCE(watch_seen_at, finished_at) AS "seen_at: WallMs",
               COALESCE(ended_state, state) AS "ended_state!: State"
               FROM payments WHERE state != 'pending' AND next_check_at IS NOT NULL ORDER BY pk"#
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Payments started since `since` that the ladder ended in one of `states` (the
    /// watched ones): when they were last seen unmoved and first seen moved. At most
    /// `most`, the latest started, oldest first.
    pub async fn watch_evidence(&self, since: WallMs, most: i64) -> Result<Vec<WatchEvidenceRow>> {
        let mut rows = sqlx::query_as!(
            WatchEvidenceRow,
            r#"SELECT kind AS "kind: KindName", COALESCE(ended_state, state) AS "ended_state!: State",
               started_at AS "started_at: WallMs",
               COALESCE(watch_seen_at, finished_at) AS "seen_at: WallMs", moved_at AS "moved_at: WallMs"
               FROM payments WHERE started_at >= ? AND state != 'pending' AND state != 'cancelled'
               AND (watch_seen_at IS NOT NULL OR moved_at IS NOT NULL OR next_check_at IS NOT NULL)
               ORDER BY started_at DESC LIMIT ?"#,
            since,
            most
        )
        .fetch_all(&self.read)
        .await?;
        rows.reverse();
        Ok(rows)
    }

    /// Payments started since `since` that finished: `(kind, started_at, pending_seen_at,
    /// last_checked_at, state)`, the evidence the scheduler learns flip ages from.
    /// At most `most`, the latest started, oldest first.
    pub async fn finished_since(&self, since: WallMs, most: i64) -> Result<Vec<FinishedRow>> {
        let mut rows = finished_query!(since, most).fetch_all(&self.read).await?;
        rows.reverse();
        Ok(rows)
    }

    /// The same evidence, read from a database file another process (the daemon) may be
    /// writing: a read-only connection, no lock, no migration. For `ninjapoll simulate`.
    pub async fn read_finished(path: &Path, since: WallMs, most: i64) -> Result<Vec<FinishedRow>> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options(path).read_only(true).create_if_missing(false))
            .await
            .with_context(|| format!("opening database {} read-only", path.display()))?;
        let rows = finished_query!(since, most)
            .fetch_all(&pool)
            .await
            .context("reading finished payments (is this a ninjapoll database?)");
        pool.close().await;
        rows.map(|mut rows| {
            rows.reverse();
            rows
        })
    }
}
