//! SQLite persistence: the only module that speaks SQL.
//!
//! One writer connection, every write transaction `BEGIN IMMEDIATE` (a deferred one that
//! reads then writes can fail with "database is locked" under a concurrent reader), and a
//! separate pool of readers. WAL mode lets the merchant app and our readers see committed
//! states without blocking the writer. Pragmas live in the connect options so that every
//! pooled connection gets them. An exclusive lock on a sibling `.lock` file makes a second
//! daemon on the same database impossible.

pub use crate::event::EventSpec;
use crate::event::{event_body, Subject};
use crate::kinds::KindName;
use crate::payment::{
    now_ms, EventKey, LedgerKey, PaymentId, PaymentKey, State, UnixMs, WebhookState,
};
use anyhow::{Context, Result};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{FromRow, Sqlite};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// The schema, as the files in `migrations/` make it.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The newest schema version this build knows.
pub fn schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// One budget-ledger row as a restart reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub pool: String,
    pub sent_at: UnixMs,
    pub done_at: Option<UnixMs>,
    /// The boot it was sent in and ms since that boot began (see [`crate::boot`]).
    pub boot: Option<(String, i64)>,
}

/// A payment row, as stored.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct PaymentRow {
    pub pk: PaymentKey,
    pub kind: KindName,
    pub id: String,
    pub state: State,
    pub upstream_status: Option<String>,
    pub started_at: i64,
    pub jitter_ms: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub next_check_at: Option<i64>,
    pub checks_done: i64,
    pub last_checked_at: Option<i64>,
    pub last_error: Option<String>,
    pub finished_at: Option<i64>,
    pub response: Option<String>,
    pub metadata: Option<String>,
    pub callback_url: Option<String>,
    pub event_seq: i64,
}

/// A payment to start tracking.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub kind: KindName,
    pub id: PaymentId,
    pub started_at: UnixMs,
    pub jitter_ms: i64,
    pub next_check_at: UnixMs,
    pub callback_url: Option<String>,
    pub metadata: Option<Value>,
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Existing,
}

/// The result of one check, to commit.
#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub pk: PaymentKey,
    pub checked_at: UnixMs,
    /// The raw status seen, if the check got one.
    pub upstream_status: Option<String>,
    /// The payment's state after the check.
    pub state: State,
    /// The body of the answer (JSON text), kept when there is one.
    pub response: Option<String>,
    /// The error, if the check failed; `None` clears the previous one.
    pub error: Option<String>,
    /// When the next check is planned; `None` once final.
    pub next_check_at: Option<UnixMs>,
    /// A webhook event this check causes, if any.
    pub event: Option<EventSpec>,
    /// Whether the payment's state or raw status changed (kept in history).
    pub changed: bool,
    /// Whether Ninjapay answered that the payment is still pending (evidence for the
    /// learnt flip ages: `pending_seen_at`).
    pub saw_pending: bool,
    /// A check of a payment under reconciliation (its state was already final), or
    /// `None` for one of the ladder's.
    pub watch: Option<WatchCheck>,
}

/// What a check under reconciliation adds to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchCheck {
    /// A request was made (`false`: the watch ended without one, nothing was seen).
    pub asked: bool,
    /// Ninjapay answered and the payment had not moved (evidence: `watch_seen_at`).
    pub unchanged: bool,
}

/// A payment under reconciliation, as the scheduler resumes it.
#[derive(Debug, Clone, FromRow)]
pub struct WatchedRow {
    pub pk: PaymentKey,
    pub kind: KindName,
    pub id: String,
    pub state: State,
    pub upstream_status: Option<String>,
    pub started_at: i64,
    pub next_check_at: i64,
    /// The last check under watch that saw no move (else when the ladder ended it).
    pub seen_at: Option<i64>,
    /// How the ladder ended it.
    pub ended_state: State,
}

/// A payment the ladder ended in a watched state, as evidence of when late moves happen.
#[derive(Debug, Clone, FromRow)]
pub struct WatchEvidenceRow {
    pub kind: KindName,
    pub ended_state: State,
    pub started_at: i64,
    /// The last check that saw it unmoved: under watch, else the one that ended it.
    pub seen_at: Option<i64>,
    /// The check that saw its first move.
    pub moved_at: Option<i64>,
}

/// What committing a check changed, for the scheduler and telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Recorded.
    Updated { event_queued: bool },
    /// The payment was no longer pending (cancelled meanwhile): nothing written.
    Skipped,
}

/// A pending payment, as the scheduler resumes it.
#[derive(Debug, Clone, FromRow)]
pub struct PendingRow {
    pub pk: PaymentKey,
    pub kind: KindName,
    pub id: String,
    pub upstream_status: Option<String>,
    pub started_at: i64,
    pub jitter_ms: i64,
    pub next_check_at: Option<i64>,
    pub last_checked_at: Option<i64>,
}

/// A finished payment, as evidence of when payments flip.
#[derive(Debug, Clone, FromRow)]
pub struct FinishedRow {
    pub kind: KindName,
    pub started_at: i64,
    pub pending_seen_at: Option<i64>,
    pub last_checked_at: Option<i64>,
    pub state: State,
}

impl FinishedRow {
    /// When it was last seen pending and when it was seen final (`None`: no flip was seen:
    /// it timed out, its last check seeing it still pending, or was cancelled).
    pub fn evidence_times(&self) -> (Option<i64>, Option<i64>) {
        match self.state {
            State::TimedOut => (self.last_checked_at, None),
            State::Cancelled => (self.pending_seen_at, None),
            _ => (self.pending_seen_at, self.last_checked_at),
        }
    }
}

/// A list query.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<State>,
    pub kind: Option<KindName>,
    /// Only rows with a larger `pk` (the cursor).
    pub after_pk: Option<PaymentKey>,
    pub limit: u32,
}

/// The database.
#[derive(Clone)]
pub struct Store {
    write: SqlitePool,
    read: SqlitePool,
    /// Event URL when a payment has no `callback_url`.
    default_webhook_url: Option<Arc<str>>,
    health: Arc<WriteHealth>,
    /// The WAL file, whose size decides when a checkpoint truncates it.
    wal_path: PathBuf,
    /// The WAL's size at the last housekeeping, to tell an idle database.
    wal_seen: Arc<AtomicU64>,
    _lock: Arc<File>,
}

/// Whether writes are failing (e.g. a full disk), for `/v1/health` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteStatus {
    /// Failed write operations since start.
    pub failures_total: u64,
    /// When the current run of failures began; `None` while writes succeed.
    pub failing_since: Option<UnixMs>,
    /// The latest failure, in words.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct WriteHealth {
    failures: AtomicU64,
    failing: Mutex<Option<(UnixMs, String)>>,
}

impl WriteHealth {
    fn record<T>(&self, result: &Result<T>) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => *failing = None,
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let since = failing.as_ref().map_or_else(now_ms, |(t, _)| *t);
                *failing = Some((since, format!("{e:#}")));
            }
        }
    }
}

/// A write transaction on the writer connection (`BEGIN IMMEDIATE`). sqlx's own
/// `Transaction` is not used: after a COMMIT that SQLite already rolled back (disk full,
/// I/O error), its ROLLBACK on drop fails and leaves sqlx's transaction depth at 1, and every
/// later `begin` on that connection then fails until restart. Here a failed BEGIN or
/// COMMIT, or a transaction dropped unfinished (an error, a cancelled request), closes the
/// connection instead (SQLite rolls back what a closed connection left open) and the pool
/// opens a fresh one for the next write.
struct WriteTx {
    conn: PoolConnection<Sqlite>,
    open: bool,
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl WriteTx {
    async fn commit(mut self) -> Result<()> {
        // Transaction control, not a query: nothing for the macros to check.
        sqlx::query("COMMIT")
            .execute(&mut *self.conn)
            .await
            .context("COMMIT failed (the writer connection is replaced)")?;
        self.open = false;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// What a checkpoint leaves of the WAL at most after a burst (`journal_size_limit`).
const WAL_KEEP: u64 = 4 * 1024 * 1024;

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a committed check survives power loss, not just a crash; group commits
        // keep the fsync count low.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        // A WAL grown by a burst shrinks back to this at the next reset.
        .pragma("journal_size_limit", WAL_KEEP.to_string())
}

/// The columns of a [`PaymentRow`], for the one query that is built at run time
/// ([`list_sql`]); [`payment_query!`] spells the same list for the compile-checked ones.
const PAYMENT_COLUMNS: &str = "pk, kind, id, state, upstream_status, started_at, jitter_ms, \
    created_at, updated_at, next_check_at, checks_done, last_checked_at, last_error, \
    finished_at, response, metadata, callback_url, event_seq";

/// A compile-checked query returning [`PaymentRow`]s: `$before` + the row's columns +
/// `$after`. The macros take only string literals, so the column list lives here, with the
/// overrides that decode straight into the domain types.
macro_rules! payment_query {
    ($before:literal, $after:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            PaymentRow,
            $before
                + r#"pk AS "pk!: PaymentKey", kind AS "kind: KindName", id, state AS "state: State", upstream_status,
                started_at, jitter_ms, created_at, updated_at, next_check_at, checks_done,
                last_checked_at, last_error, finished_at, response, metadata, callback_url,
                event_seq"#
                + $after
            $(, $arg)*
        )
    };
}

/// The finished payments started since `$since`, as [`FinishedRow`]s: one query for the
/// daemon's reader pool and for `ninjapoll simulate`'s own connection.
macro_rules! finished_query {
    ($since:expr, $most:expr) => {
        sqlx::query_as!(
            FinishedRow,
            r#"SELECT kind AS "kind: KindName", started_at, pending_seen_at,
               finished_at AS last_checked_at, COALESCE(ended_state, state) AS "state!: State"
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
    /// Opens (creating if needed) the database, takes the daemon lock, and migrates.
    pub async fn open(
        path: &Path,
        default_webhook_url: Option<String>,
    ) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating database directory {}", dir.display()))?;
        }
        let lock_path = lock_path(path);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening lock file {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(lock_path));
        }
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options(path))
            .await
            .with_context(|| format!("opening database {}", path.display()))?;
        // Forward only: an older schema is migrated up; a newer one is refused before
        // anything is written (sqlx would refuse too, naming only its version).
        let migrated = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = '_sqlx_migrations')
               AS "migrated!: bool""#
        )
        .fetch_one(&write)
        .await
        .context("reading the database's schema")?;
        let found: Option<i64> = if migrated {
            sqlx::query_scalar!(r#"SELECT MAX(version) AS "version?: i64" FROM _sqlx_migrations"#)
                .fetch_one(&write)
                .await
                .context("reading the database's schema version")?
        } else {
            None
        };
        if let Some(found) = found.filter(|v| *v > schema_version()) {
            write.close().await;
            return Err(StoreError::TooNew {
                found,
                ours: schema_version(),
                ours_release: env!("CARGO_PKG_VERSION"),
            });
        }
        MIGRATOR.run(&write).await.context("applying migrations")?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options(path).read_only(true))
            .await
            .context("opening database readers")?;
        let mut wal = path.as_os_str().to_os_string();
        wal.push("-wal");
        Ok(Self {
            write,
            read,
            default_webhook_url: default_webhook_url.map(Into::into),
            health: Arc::default(),
            wal_path: PathBuf::from(wal),
            wal_seen: Arc::default(),
            _lock: Arc::new(lock),
        })
    }

    /// Whether writes are failing, and how many have failed.
    pub fn write_status(&self) -> WriteStatus {
        let failing = self
            .health
            .failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        WriteStatus {
            failures_total: self.health.failures.load(Ordering::Relaxed),
            failing_since: failing.as_ref().map(|(t, _)| *t),
            last_error: failing.map(|(_, e)| e),
        }
    }

    /// Runs a statement on the writer, for tests that need the database to misbehave.
    #[cfg(test)]
    pub(crate) async fn exec_for_test(&self, sql: &str) -> Result<()> {
        sqlx::query(sql).execute(&self.write).await?;
        Ok(())
    }

    /// Keeps a write operation's success or failure for health.
    fn note<T>(&self, result: Result<T>) -> Result<T> {
        self.health.record(&result);
        result
    }

    /// Starts a write transaction on the writer connection.
    async fn begin(&self) -> Result<WriteTx> {
        let mut conn = self
            .write
            .acquire()
            .await
            .context("waiting for the database writer")?;
        // Transaction control, not a query: nothing for the macros to check.
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e).context("BEGIN IMMEDIATE failed (the writer connection is replaced)");
        }
        Ok(WriteTx { conn, open: true })
    }

    /// Closes both pools, flushing the WAL.
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    /// Inserts payments in one transaction; an existing kind+id is left untouched and
    /// returned as it is.
    pub async fn insert_payments(&self, new: &[NewPayment]) -> Result<Vec<(PaymentRow, Inserted)>> {
        let result = self.insert_payments_tx(new).await;
        self.note(result)
    }

    async fn insert_payments_tx(&self, new: &[NewPayment]) -> Result<Vec<(PaymentRow, Inserted)>> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let mut out = Vec::with_capacity(new.len());
        for p in new {
            let metadata = p.metadata.as_ref().map(Value::to_string);
            let id = p.id.as_str();
            let inserted = payment_query!(
                "INSERT INTO payments (kind, id, started_at, jitter_ms, created_at, updated_at, \
                 next_check_at, callback_url, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (kind, id) DO NOTHING RETURNING ",
                "",
                p.kind,
                id,
                p.started_at,
                p.jitter_ms,
                now,
                now,
                p.next_check_at,
                p.callback_url,
                metadata,
            )
            .fetch_optional(&mut *tx)
            .await
            .context("inserting payment")?;
            match inserted {
                Some(row) => out.push((row, Inserted::New)),
                None => {
                    let row = payment_query!(
                        "SELECT ",
                        " FROM payments WHERE kind = ? AND id = ?",
                        p.kind,
                        id,
                    )
                    .fetch_one(&mut *tx)
                    .await
                    .context("reading existing payment")?;
                    out.push((row, Inserted::Existing));
                }
            }
        }
        tx.commit().await.context("committing enqueue")?;
        Ok(out)
    }

    /// One payment by kind and id.
    pub async fn get(&self, kind: &str, id: &str) -> Result<Option<PaymentRow>> {
        Ok(payment_query!(
            "SELECT ",
            " FROM payments WHERE kind = ? AND id = ?",
            kind,
            id
        )
        .fetch_optional(&self.read)
        .await?)
    }

    /// A page of payments in insertion order. The filters are written into the query only
    /// when given, so that a `state` filter walks the `(state, pk)` index instead of
    /// scanning every payment (`?2 IS NULL OR state = ?2` hides the index from SQLite).
    pub async fn list(&self, f: &ListFilter) -> Result<Vec<PaymentRow>> {
        // Built at run time: see above; the `payments_state_pk` test checks the plan.
        let sql = list_sql(f);
        let mut q = sqlx::query_as(&sql).bind(f.after_pk.map_or(0, |k| k.0));
        if let Some(state) = f.state {
            q = q.bind(state);
        }
        if let Some(kind) = &f.kind {
            q = q.bind(kind);
        }
        Ok(q.bind(f.limit).fetch_all(&self.read).await?)
    }

    /// Every pending payment, for the scheduler at start-up.
    pub async fn pending(&self) -> Result<Vec<PendingRow>> {
        Ok(sqlx::query_as!(
            PendingRow,
            r#"SELECT pk AS "pk!: PaymentKey", kind AS "kind: KindName", id, upstream_status, started_at, jitter_ms,
               next_check_at, last_checked_at FROM payments WHERE state = 'pending' ORDER BY pk"#
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Every payment under reconciliation (final, with a check still planned), for the
    /// scheduler at start-up.
    pub async fn watched(&self) -> Result<Vec<WatchedRow>> {
        Ok(sqlx::query_as!(
            WatchedRow,
            r#"SELECT pk AS "pk!: PaymentKey", kind AS "kind: KindName", id, state AS "state: State",
               upstream_status, started_at, next_check_at AS "next_check_at!",
               COALESCE(watch_seen_at, finished_at) AS "seen_at: i64",
               COALESCE(ended_state, state) AS "ended_state!: State"
               FROM payments WHERE state != 'pending' AND next_check_at IS NOT NULL ORDER BY pk"#
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Payments started since `since` that the ladder ended in one of `states` (the
    /// watched ones): when they were last seen unmoved and first seen moved. At most
    /// `most`, the latest started, oldest first.
    pub async fn watch_evidence(&self, since: UnixMs, most: i64) -> Result<Vec<WatchEvidenceRow>> {
        let mut rows = sqlx::query_as!(
            WatchEvidenceRow,
            r#"SELECT kind AS "kind: KindName", COALESCE(ended_state, state) AS "ended_state!: State",
               started_at, COALESCE(watch_seen_at, finished_at) AS "seen_at: i64", moved_at
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
    pub async fn finished_since(&self, since: UnixMs, most: i64) -> Result<Vec<FinishedRow>> {
        let mut rows = finished_query!(since, most).fetch_all(&self.read).await?;
        rows.reverse();
        Ok(rows)
    }

    /// The same evidence, read from a database file another process (the daemon) may be
    /// writing: a read-only connection, no lock, no migration. For `ninjapoll simulate`.
    pub async fn read_finished(path: &Path, since: UnixMs, most: i64) -> Result<Vec<FinishedRow>> {
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

    /// Counts per state, for health and metrics. The state stays the database's text: a
    /// value this version does not know shows up in health instead of failing it.
    pub async fn state_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query!(r#"SELECT state, COUNT(*) AS "n!: i64" FROM payments GROUP BY state"#)
                .fetch_all(&self.read)
                .await?;
        Ok(rows.into_iter().map(|r| (r.state, r.n)).collect())
    }

    /// Pending payments per kind, for health (a kind no longer configured is not polled).
    pub async fn pending_by_kind(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query!(
            r#"SELECT kind, COUNT(*) AS "n!: i64" FROM payments WHERE state = 'pending'
               GROUP BY kind"#
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.kind, r.n)).collect())
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

    /// Commits the outcomes of several checks in one transaction (one fsync for many
    /// checks), with the budget ledger rows of the requests that produced them marked
    /// answered (`(key, answered_at)`). Each outcome's status change and webhook event land
    /// together or not at all, and a retry after a failure cannot record a change twice.
    pub async fn record_checks(
        &self,
        records: &[CheckRecord],
        ledger_done: &[(LedgerKey, UnixMs)],
    ) -> Result<Vec<Applied>> {
        let result = self.record_checks_tx(records, ledger_done).await;
        self.note(result)
    }

    async fn record_checks_tx(
        &self,
        records: &[CheckRecord],
        ledger_done: &[(LedgerKey, UnixMs)],
    ) -> Result<Vec<Applied>> {
        let mut tx = self.begin().await?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let before = if r.watch.is_some() {
                payment_query!(
                    "SELECT ",
                    " FROM payments WHERE pk = ? AND state != 'pending' AND next_check_at IS NOT NULL",
                    r.pk,
                )
                .fetch_optional(&mut *tx)
                .await?
            } else {
                payment_query!(
                    "SELECT ",
                    " FROM payments WHERE pk = ? AND state = 'pending'",
                    r.pk,
                )
                .fetch_optional(&mut *tx)
                .await?
            };
            let Some(before) = before else {
                out.push(Applied::Skipped);
                continue;
            };
            let upstream_status = r
                .upstream_status
                .clone()
                .or_else(|| before.upstream_status.clone());
            let response = r.response.clone().or_else(|| before.response.clone());
            let now = now_ms();
            if let Some(w) = r.watch {
                let seen_at = w.unchanged.then_some(r.checked_at);
                let moved_at = (r.state != before.state).then_some(r.checked_at);
                let (asked, error) = (
                    w.asked,
                    if w.asked {
                        r.error.clone()
                    } else {
                        before.last_error.clone()
                    },
                );
                sqlx::query!(
                    "UPDATE payments SET state = ?, upstream_status = ?, response = ?, \
                     last_error = ?, next_check_at = ?, updated_at = ?, \
                     last_checked_at = CASE WHEN ? THEN ? ELSE last_checked_at END, \
                     checks_done = checks_done + CASE WHEN ? THEN 1 ELSE 0 END, \
                     watch_seen_at = COALESCE(?, watch_seen_at), \
                     moved_at = COALESCE(moved_at, ?) WHERE pk = ?",
                    r.state,
                    upstream_status,
                    response,
                    error,
                    r.next_check_at,
                    now,
                    asked,
                    r.checked_at,
                    asked,
                    seen_at,
                    moved_at,
                    r.pk,
                )
                .execute(&mut *tx)
                .await?;
            } else {
                self.record_live(&mut tx, r, &upstream_status, &response, now)
                    .await?;
            }
            if r.changed {
                sqlx::query!(
                    "INSERT INTO status_history (payment_pk, at, previous_state, state, \
                     previous_upstream_status, upstream_status) VALUES (?, ?, ?, ?, ?, ?)",
                    r.pk,
                    r.checked_at,
                    before.state,
                    r.state,
                    before.upstream_status,
                    upstream_status,
                )
                .execute(&mut *tx)
                .await?;
            }
            let event_queued = self
                .queue_event(
                    &mut tx,
                    r,
                    &before,
                    upstream_status.as_deref(),
                    response.as_deref(),
                )
                .await?;
            out.push(Applied::Updated { event_queued });
        }
        for (pk, at) in ledger_done {
            sqlx::query!(
                "UPDATE upstream_requests SET done_at = ? WHERE pk = ?",
                at,
                pk
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await.context("committing check outcomes")?;
        Ok(out)
    }

    /// A check of the ladder's: a final state ends the ladder (`finished_at`, and how it
    /// ended in `ended_state`); the next planned check is the core's (reconciliation's,
    /// when the payment stays watched).
    async fn record_live(
        &self,
        tx: &mut WriteTx,
        r: &CheckRecord,
        upstream_status: &Option<String>,
        response: &Option<String>,
        now: UnixMs,
    ) -> Result<()> {
        let finished_at = r.state.is_final().then_some(r.checked_at);
        let ended_state = r.state.is_final().then_some(r.state);
        let pending_seen_at = r.saw_pending.then_some(r.checked_at);
        sqlx::query!(
            "UPDATE payments SET state = ?, upstream_status = ?, response = ?, \
                 last_error = ?, last_checked_at = ?, checks_done = checks_done + 1, \
                 next_check_at = ?, finished_at = ?, updated_at = ?, \
                 pending_seen_at = COALESCE(?, pending_seen_at), ended_state = ? WHERE pk = ?",
            r.state,
            upstream_status,
            response,
            r.error,
            r.checked_at,
            r.next_check_at,
            finished_at,
            now,
            pending_seen_at,
            ended_state,
            r.pk,
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Puts the webhook event a check causes in the outbox; whether one was queued.
    async fn queue_event(
        &self,
        tx: &mut WriteTx,
        r: &CheckRecord,
        before: &PaymentRow,
        upstream_status: Option<&str>,
        response: Option<&str>,
    ) -> Result<bool> {
        let Some(ev) = &r.event else {
            return Ok(false);
        };
        let url = before
            .callback_url
            .clone()
            .or_else(|| self.default_webhook_url.as_deref().map(String::from));
        let Some(url) = url else {
            return Ok(false);
        };
        let sequence = before.event_seq + 1;
        let after = Subject {
            kind: &before.kind,
            id: &before.id,
            state: r.state,
            upstream_status,
            started_at: before.started_at,
            response,
            metadata: before.metadata.as_deref(),
        };
        let (event_id, body) = event_body(ev, &after, sequence, r.checked_at);
        sqlx::query!(
            "INSERT INTO webhook_events (event_id, payment_pk, sequence, type, url, \
             body, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            event_id,
            r.pk,
            sequence,
            ev.event_type,
            url,
            body,
            r.checked_at,
            r.checked_at,
        )
        .execute(&mut **tx)
        .await?;
        sqlx::query!(
            "UPDATE payments SET event_seq = ? WHERE pk = ?",
            sequence,
            r.pk
        )
        .execute(&mut **tx)
        .await?;
        Ok(true)
    }

    /// Cancels a pending payment. `Ok(None)`: no such payment; `Err` of the row: already final.
    pub async fn cancel(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<Result<PaymentRow, PaymentRow>>> {
        let result = self.cancel_tx(kind, id).await;
        self.note(result)
    }

    async fn cancel_tx(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<Result<PaymentRow, PaymentRow>>> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let row = payment_query!(
            "SELECT ",
            " FROM payments WHERE kind = ? AND id = ?",
            kind,
            id
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        if row.state.is_final() {
            return Ok(Some(Err(row)));
        }
        let updated = payment_query!(
            "UPDATE payments SET state = 'cancelled', next_check_at = NULL, finished_at = ?1, \
             updated_at = ?1 WHERE pk = ?2 RETURNING ",
            "",
            now,
            row.pk,
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query!(
            "INSERT INTO status_history (payment_pk, at, previous_state, state, \
             previous_upstream_status, upstream_status) VALUES (?, ?, ?, 'cancelled', ?, ?)",
            row.pk,
            now,
            row.state,
            row.upstream_status,
            row.upstream_status,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Ok(updated)))
    }

    /// Plans a check of a final payment that may still move (a merchant's recheck after
    /// the ladder ended it): its next check is `at` at the latest, whatever its watch
    /// planned. `None`: no such payment in `state`.
    pub async fn rewatch(
        &self,
        kind: &str,
        id: &str,
        state: State,
        at: UnixMs,
    ) -> Result<Option<PaymentRow>> {
        let result = self.rewatch_tx(kind, id, state, at).await;
        self.note(result)
    }

    async fn rewatch_tx(
        &self,
        kind: &str,
        id: &str,
        state: State,
        at: UnixMs,
    ) -> Result<Option<PaymentRow>> {
        let mut tx = self.begin().await?;
        let row = payment_query!(
            "UPDATE payments SET next_check_at = MIN(COALESCE(next_check_at, ?1), ?1), \
             updated_at = ?1 WHERE kind = ?2 AND id = ?3 AND state = ?4 RETURNING ",
            "",
            at,
            kind,
            id,
            state,
        )
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Moves a pending payment's next check to `at` (a manual recheck). `None`: no such
    /// pending payment.
    pub async fn reschedule(&self, kind: &str, id: &str, at: UnixMs) -> Result<Option<PaymentRow>> {
        let result = self.reschedule_tx(kind, id, at).await;
        self.note(result)
    }

    async fn reschedule_tx(&self, kind: &str, id: &str, at: UnixMs) -> Result<Option<PaymentRow>> {
        let mut tx = self.begin().await?;
        let row = payment_query!(
            "UPDATE payments SET next_check_at = ?1, updated_at = ?1 WHERE kind = ?2 AND id = ?3 \
             AND state = 'pending' RETURNING ",
            "",
            at,
            kind,
            id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// The status history of a payment, oldest first: (at, previous state, state, raw).
    pub async fn history(
        &self,
        pk: PaymentKey,
    ) -> Result<Vec<(i64, String, String, Option<String>)>> {
        let rows = sqlx::query!(
            "SELECT at, previous_state, state, upstream_status FROM status_history \
             WHERE payment_pk = ? ORDER BY pk",
            pk
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.at, r.previous_state, r.state, r.upstream_status))
            .collect())
    }

    /// Writes the budget ledger's entries `(pool, sent_at)` for requests about to be sent;
    /// returns their keys, in order. Committed before the requests go out, so a crash can
    /// never hide spent budget.
    pub async fn ledger_send(&self, entries: &[(String, UnixMs)]) -> Result<Vec<LedgerKey>> {
        let result = self.ledger_send_tx(entries).await;
        self.note(result)
    }

    async fn ledger_send_tx(&self, entries: &[(String, UnixMs)]) -> Result<Vec<LedgerKey>> {
        let mut tx = self.begin().await?;
        let mut keys = Vec::with_capacity(entries.len());
        let (boot_id, boot_ms) = crate::boot::now().unzip();
        for (pool, at) in entries {
            let pk = sqlx::query_scalar!(
                r#"INSERT INTO upstream_requests (pool, sent_at, boot_id, boot_ms)
                   VALUES (?, ?, ?, ?)
                   RETURNING pk AS "pk!: LedgerKey""#,
                pool,
                at,
                boot_id,
                boot_ms
            )
            .fetch_one(&mut *tx)
            .await?;
            keys.push(pk);
        }
        tx.commit().await.context("committing budget ledger")?;
        Ok(keys)
    }

    /// Marks every ledger row still open (sent by a previous run that never recorded the
    /// answer) as answered at `at`; the budget has already counted them so.
    pub async fn ledger_close_open(&self, at: UnixMs) -> Result<()> {
        let result = self.ledger_close_open_tx(at).await;
        self.note(result)
    }

    async fn ledger_close_open_tx(&self, at: UnixMs) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query!(
            "UPDATE upstream_requests SET done_at = ? WHERE done_at IS NULL",
            at
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Forgets reserved ledger rows that no request used (clean shutdown).
    pub async fn ledger_release(&self, keys: &[LedgerKey]) -> Result<()> {
        let result = self.ledger_release_tx(keys).await;
        self.note(result)
    }

    async fn ledger_release_tx(&self, keys: &[LedgerKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for k in keys {
            sqlx::query!(
                "DELETE FROM upstream_requests WHERE pk = ? AND done_at IS NULL",
                k
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest `per_pool` ledger rows of each pool by insertion order, never by their
    /// wall times (which a clock step makes lie): `(pool, sent_at, done_at, boot)`.
    pub async fn ledger_newest(&self, per_pool: u32) -> Result<Vec<LedgerRow>> {
        let rows = sqlx::query!(
            r#"SELECT pool AS "pool!: String", sent_at AS "sent_at!: i64",
                      done_at AS "done_at?: i64", boot_id AS "boot_id?: String",
                      boot_ms AS "boot_ms?: i64"
               FROM (SELECT pool, sent_at, done_at, boot_id, boot_ms,
                            ROW_NUMBER() OVER (PARTITION BY pool ORDER BY pk DESC) AS n
                     FROM upstream_requests)
               WHERE n <= ?1 ORDER BY pool, n DESC"#,
            per_pool
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| LedgerRow {
                pool: r.pool,
                sent_at: r.sent_at,
                done_at: r.done_at,
                boot: r.boot_id.zip(r.boot_ms),
            })
            .collect())
    }

    /// Housekeeping: forgets ledger entries no window can count any more, and checkpoints
    /// the WAL so a long-lived reader cannot make it grow without bound. The checkpoint
    /// truncates the WAL to nothing when the database was idle since the last housekeeping
    /// or a burst left it larger than [`WAL_KEEP`]; else it is a passive one that never
    /// waits. A truncating checkpoint waits for readers only briefly (a merchant's long read
    /// must not hold the writer): if one is in the way it simply happens next time.
    pub async fn maintain(&self, ledger_before: UnixMs) -> Result<()> {
        let result = self.prune_ledger(ledger_before).await;
        self.note(result)?;
        self.checkpoint().await
    }

    async fn prune_ledger(&self, ledger_before: UnixMs) -> Result<()> {
        let mut tx = self.begin().await?;
        // Open rows are this run's reserve: kept until used.
        sqlx::query!(
            "DELETE FROM upstream_requests WHERE done_at IS NOT NULL AND done_at < ?",
            ledger_before
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Checkpoints the WAL: truncating when idle or after a burst, else passive. Returns
    /// after at most a short wait for readers.
    pub async fn checkpoint(&self) -> Result<()> {
        let result = self.checkpoint_tx().await;
        // A checkpoint that went through says little about writes (it may have had
        // nothing to copy): only its failure is news for health.
        if result.is_err() {
            return self.note(result);
        }
        result
    }

    async fn checkpoint_tx(&self) -> Result<()> {
        {
            let size = std::fs::metadata(&self.wal_path).map_or(0, |m| m.len());
            let idle = size == self.wal_seen.swap(size, Ordering::Relaxed);
            let mut conn = self.write.acquire().await?;
            // PRAGMAs below: connection settings, not queries; the macros have nothing to check.
            if size > 0 && (idle || size > WAL_KEEP) {
                let done = match sqlx::query("PRAGMA busy_timeout = 200")
                    .execute(&mut *conn)
                    .await
                {
                    Ok(_) => sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                        .execute(&mut *conn)
                        .await
                        .map(drop),
                    Err(e) => Err(e),
                };
                let restored = sqlx::query("PRAGMA busy_timeout = 10000")
                    .execute(&mut *conn)
                    .await;
                if restored.is_err() {
                    // Not left with the short wait: a fresh connection gets the options.
                    conn.close_on_drop();
                }
                done.context("truncating the WAL")?;
                let after = std::fs::metadata(&self.wal_path).map_or(0, |m| m.len());
                self.wal_seen.store(after, Ordering::Relaxed);
            } else {
                sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&mut *conn)
                    .await
                    .context("checkpointing the WAL")?;
            }
            Ok(())
        }
    }
}

/// The query of [`Store::list`] for the filters `f` gives (parameters in order: cursor,
/// state, kind, limit; absent filters take no parameter).
fn list_sql(f: &ListFilter) -> String {
    let mut sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE pk > ?");
    if f.state.is_some() {
        sql.push_str(" AND state = ?");
    }
    if f.kind.is_some() {
        sql.push_str(" AND kind = ?");
    }
    sql.push_str(" ORDER BY pk LIMIT ?");
    sql
}

/// What one retention batch deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub payments: u64,
    pub history: u64,
    pub events: u64,
    pub attempts: u64,
}

impl Pruned {
    /// Adds another batch's counts.
    pub fn add(&mut self, o: &Pruned) {
        self.payments += o.payments;
        self.history += o.history;
        self.events += o.events;
        self.attempts += o.attempts;
    }
}

impl Store {
    /// Deletes up to `limit` payments that finished before `before`, oldest first, with
    /// their history, webhook events and attempts, in one short transaction. A payment
    /// with an event still being delivered (pending) stays until the event is delivered
    /// or dead.
    pub async fn prune_finished(&self, before: UnixMs, limit: u32) -> Result<Pruned> {
        let result = self.prune_finished_tx(before, limit).await;
        self.note(result)
    }

    async fn prune_finished_tx(&self, before: UnixMs, limit: u32) -> Result<Pruned> {
        let mut tx = self.begin().await?;
        let pks = sqlx::query_scalar!(
            r#"SELECT pk AS "pk!: PaymentKey" FROM payments p
               WHERE state != 'pending' AND finished_at < ?1 AND next_check_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM webhook_events e
                               WHERE e.payment_pk = p.pk AND e.state = 'pending')
               ORDER BY finished_at LIMIT ?2"#,
            before,
            limit
        )
        .fetch_all(&mut *tx)
        .await
        .context("choosing finished payments to delete")?;
        if pks.is_empty() {
            return Ok(Pruned::default());
        }
        let pks: Vec<i64> = pks.into_iter().map(|k| k.0).collect();
        let pks = serde_json::to_string(&pks).context("encoding payment keys")?;
        // Children first: the foreign keys are enforced.
        let attempts = sqlx::query!(
            "DELETE FROM webhook_attempts WHERE event_pk IN (SELECT pk FROM webhook_events \
             WHERE payment_pk IN (SELECT value FROM json_each(?1)))",
            pks
        )
        .execute(&mut *tx)
        .await
        .context("deleting a retention batch's webhook attempts")?
        .rows_affected();
        let events = sqlx::query!(
            "DELETE FROM webhook_events WHERE payment_pk IN (SELECT value FROM json_each(?1))",
            pks
        )
        .execute(&mut *tx)
        .await
        .context("deleting a retention batch's webhook events")?
        .rows_affected();
        let history = sqlx::query!(
            "DELETE FROM status_history WHERE payment_pk IN (SELECT value FROM json_each(?1))",
            pks
        )
        .execute(&mut *tx)
        .await
        .context("deleting a retention batch's history")?
        .rows_affected();
        let payments = sqlx::query!(
            "DELETE FROM payments WHERE pk IN (SELECT value FROM json_each(?1))",
            pks
        )
        .execute(&mut *tx)
        .await
        .context("deleting a retention batch's payments")?
        .rows_affected();
        tx.commit().await.context("committing retention batch")?;
        Ok(Pruned {
            payments,
            history,
            events,
            attempts,
        })
    }

    /// Deletes up to `limit` events delivered before `before`, oldest first, with their
    /// attempts. The payment keeps its `event_seq`, so later events go on counting.
    pub async fn prune_delivered(&self, before: UnixMs, limit: u32) -> Result<Pruned> {
        let result = self.prune_delivered_tx(before, limit).await;
        self.note(result)
    }

    async fn prune_delivered_tx(&self, before: UnixMs, limit: u32) -> Result<Pruned> {
        let mut tx = self.begin().await?;
        let pks = sqlx::query_scalar!(
            r#"SELECT pk AS "pk!" FROM webhook_events WHERE state = 'delivered'
               AND delivered_at < ? ORDER BY delivered_at LIMIT ?"#,
            before,
            limit
        )
        .fetch_all(&mut *tx)
        .await
        .context("choosing delivered events to delete")?;
        if pks.is_empty() {
            return Ok(Pruned::default());
        }
        let pks = serde_json::to_string(&pks).context("encoding event keys")?;
        let attempts = sqlx::query!(
            "DELETE FROM webhook_attempts WHERE event_pk IN (SELECT value FROM json_each(?))",
            pks
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let events = sqlx::query!(
            "DELETE FROM webhook_events WHERE pk IN (SELECT value FROM json_each(?))",
            pks
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await.context("committing retention batch")?;
        Ok(Pruned {
            events,
            attempts,
            ..Pruned::default()
        })
    }
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

// ---- webhook outbox ----

/// A webhook event, as the delivery worker and the API see it.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct WebhookEvent {
    pub pk: EventKey,
    pub event_id: String,
    pub payment_pk: PaymentKey,
    pub kind: KindName,
    pub id: String,
    pub sequence: i64,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub url: String,
    pub body: String,
    pub created_at: i64,
    pub state: WebhookState,
    /// Every attempt ever made, replays included.
    pub attempts: i64,
    /// `attempts` when the current retry schedule began (0, or the count at a replay).
    pub retry_from: i64,
    pub next_attempt_at: i64,
    pub delivered_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<i64>,
    pub last_status_code: Option<i64>,
    /// Whether `url` is the payment's own `callback_url` (else the configured
    /// `webhooks.url`): a callback is checked against the allow-list before each send.
    pub callback: bool,
}

/// One delivery attempt, as logged.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct WebhookAttempt {
    pub at: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub latency_ms: i64,
}

/// What an attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; try again at this time.
    Retry(UnixMs),
    /// Failed, and it was the last try of the schedule.
    Dead,
}

/// A webhook list query.
#[derive(Debug, Clone, Default)]
pub struct WebhookFilter {
    pub state: Option<WebhookState>,
    pub kind: Option<String>,
    pub id: Option<String>,
    /// Only rows with a larger `pk` (the cursor).
    pub after_pk: Option<EventKey>,
    pub limit: u32,
}

/// A compile-checked query returning [`WebhookEvent`]s: `SELECT` the event's columns, with
/// its payment and last attempt, then `$from` (which names `webhook_events e` and
/// `payments p`). `$url` is the expression for the `url` column.
macro_rules! event_query {
    ($url:literal, $from:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            WebhookEvent,
            r#"SELECT e.pk AS "pk!: EventKey", e.event_id, e.payment_pk AS "payment_pk: PaymentKey",
                p.kind AS "kind: KindName", p.id, e.sequence, e.type AS event_type, "#
                + $url
                + r#" AS "url!", e.body, e.created_at, e.state AS "state: WebhookState",
                e.attempts, e.retry_from, e.next_attempt_at, e.delivered_at, e.last_error,
                (SELECT a.at FROM webhook_attempts a WHERE a.event_pk = e.pk
                 ORDER BY a.pk DESC LIMIT 1) AS last_attempt_at,
                (SELECT a.status_code FROM webhook_attempts a WHERE a.event_pk = e.pk
                 ORDER BY a.pk DESC LIMIT 1) AS last_status_code,
                (p.callback_url IS NOT NULL) AS "callback!: bool" "#
                + $from
            $(, $arg)*
        )
    };
}

impl Store {
    /// The pending events that head their payment's queue (no earlier pending event of the
    /// same payment), earliest due first, leaving out the payments in `busy` (an attempt
    /// is in flight). Order per payment comes from the head rule; other payments are never
    /// held up by one that is retrying.
    pub async fn webhook_heads(
        &self,
        busy: &[PaymentKey],
        limit: u32,
    ) -> Result<Vec<WebhookEvent>> {
        let busy: Vec<i64> = busy.iter().map(|k| k.0).collect();
        let busy = serde_json::to_string(&busy).context("encoding busy payments")?;
        let default_url = self.default_webhook_url.as_deref();
        // An event without a callback goes to the URL configured now, not the one in force
        // when it was queued: a merchant who moves the receiver gets pending and replayed
        // events at the new address.
        event_query!(
            "CASE WHEN p.callback_url IS NULL THEN COALESCE(?3, e.url) ELSE e.url END",
            "FROM webhook_events e JOIN payments p ON p.pk = e.payment_pk \
             WHERE e.state = 'pending' \
             AND e.payment_pk NOT IN (SELECT value FROM json_each(?1)) \
             AND NOT EXISTS (SELECT 1 FROM webhook_events b WHERE b.payment_pk = e.payment_pk \
                             AND b.state = 'pending' AND b.sequence < e.sequence) \
             ORDER BY e.next_attempt_at, e.pk LIMIT ?2",
            busy,
            limit,
            default_url,
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
        let result = self
            .record_webhook_attempt_tx(event_pk, retry_from, attempt, outcome)
            .await;
        self.note(result)
    }

    async fn record_webhook_attempt_tx(
        &self,
        event_pk: EventKey,
        retry_from: i64,
        attempt: &WebhookAttempt,
        outcome: AttemptOutcome,
    ) -> Result<()> {
        let (delivered, new_state, next) = match outcome {
            AttemptOutcome::Delivered => (true, "delivered", None),
            AttemptOutcome::Retry(at) => (false, "pending", Some(at)),
            AttemptOutcome::Dead => (false, "dead", None),
        };
        let mut tx = self.begin().await?;
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
        tx.commit().await.context("committing webhook attempt")?;
        Ok(())
    }

    /// A page of webhook events in insertion order.
    pub async fn list_webhooks(&self, f: &WebhookFilter) -> Result<Vec<WebhookEvent>> {
        let after_pk = f.after_pk.map_or(0, |k| k.0);
        Ok(event_query!(
            "e.url",
            "FROM webhook_events e JOIN payments p ON p.pk = e.payment_pk \
             WHERE e.pk > ?1 AND (?2 IS NULL OR e.state = ?2) AND (?3 IS NULL OR p.kind = ?3) \
             AND (?4 IS NULL OR p.id = ?4) ORDER BY e.pk LIMIT ?5",
            after_pk,
            f.state,
            f.kind,
            f.id,
            f.limit,
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
            "SELECT at, status_code, error, latency_ms FROM webhook_attempts \
             WHERE event_pk = ? ORDER BY pk",
            event_pk
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Makes an event due at `at` with a fresh retry schedule (a delivered or dead one goes
    /// back to pending; a pending one is simply tried sooner). `None`: no such event.
    pub async fn replay_webhook(&self, event_id: &str, at: UnixMs) -> Result<Option<WebhookEvent>> {
        let result = self.replay_webhook_tx(event_id, at).await;
        self.note(result)
    }

    async fn replay_webhook_tx(&self, event_id: &str, at: UnixMs) -> Result<Option<WebhookEvent>> {
        let mut tx = self.begin().await?;
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
        tx.commit().await.context("committing webhook replay")?;
        Ok(row)
    }
}

#[cfg(test)]
mod outbox_tests {
    use super::*;
    use crate::event::STATUS_CHANGED;

    async fn store_with_events(dir: &Path, events_a: usize) -> (Store, PaymentKey, PaymentKey) {
        let store = Store::open(&dir.join("t.db"), Some("http://127.0.0.1:1/h".into()))
            .await
            .unwrap();
        let new = |id: &str| NewPayment {
            kind: KindName::parse("p2p").unwrap(),
            id: PaymentId::parse(id).unwrap(),
            started_at: 0,
            jitter_ms: 0,
            next_check_at: 0,
            callback_url: None,
            metadata: None,
        };
        let rows = store.insert_payments(&[new("A"), new("B")]).await.unwrap();
        let (a, b) = (rows[0].0.pk, rows[1].0.pk);
        let flip = |pk: PaymentKey, raw: &str, at: i64| CheckRecord {
            saw_pending: false,
            watch: None,
            pk,
            checked_at: at,
            upstream_status: Some(raw.into()),
            state: State::Pending,
            response: None,
            error: None,
            next_check_at: Some(at + 1),
            event: Some(EventSpec {
                event_type: STATUS_CHANGED,
                previous_upstream_status: None,
                previous_state: State::Pending,
                late: false,
            }),
            changed: true,
        };
        for i in 0..events_a {
            store
                .record_checks(&[flip(a, &format!("s{i}"), 10 + i as i64)], &[])
                .await
                .unwrap();
        }
        store
            .record_checks(&[flip(b, "x", 100)], &[])
            .await
            .unwrap();
        (store, a, b)
    }

    fn failed(at: i64) -> WebhookAttempt {
        WebhookAttempt {
            at,
            status_code: Some(500),
            error: Some("HTTP 500".into()),
            latency_ms: 1,
        }
    }

    #[tokio::test]
    async fn heads_are_one_per_payment_and_skip_busy_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a, b) = store_with_events(dir.path(), 2).await;
        let heads = store.webhook_heads(&[], 10).await.unwrap();
        let got: Vec<(PaymentKey, i64)> =
            heads.iter().map(|e| (e.payment_pk, e.sequence)).collect();
        assert_eq!(got, vec![(a, 1), (b, 1)]);
        let heads = store.webhook_heads(&[a], 10).await.unwrap();
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].payment_pk, b);

        // A's first event retrying later: its second still waits behind it.
        let first = store.webhook_heads(&[], 1).await.unwrap().remove(0);
        store
            .record_webhook_attempt(first.pk, 0, &failed(20), AttemptOutcome::Retry(5_000))
            .await
            .unwrap();
        let heads = store.webhook_heads(&[], 10).await.unwrap();
        let got: Vec<(PaymentKey, i64, i64)> = heads
            .iter()
            .map(|e| (e.payment_pk, e.sequence, e.next_attempt_at))
            .collect();
        assert_eq!(got, vec![(b, 1, 100), (a, 1, 5_000)]);
        assert_eq!(heads[1].attempts, 1);
        assert_eq!(heads[1].last_status_code, Some(500));

        // Dead: the next event of the payment moves up.
        store
            .record_webhook_attempt(first.pk, 0, &failed(30), AttemptOutcome::Dead)
            .await
            .unwrap();
        let heads = store.webhook_heads(&[b], 10).await.unwrap();
        assert_eq!((heads[0].payment_pk, heads[0].sequence), (a, 2));
        assert_eq!(store.webhook_attempts(first.pk).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_replay_starts_a_fresh_schedule_and_survives_a_late_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, _) = store_with_events(dir.path(), 1).await;
        let ev = store.webhook_heads(&[], 1).await.unwrap().remove(0);
        store
            .record_webhook_attempt(ev.pk, 0, &failed(20), AttemptOutcome::Dead)
            .await
            .unwrap();
        let dead = store.webhook(&ev.event_id).await.unwrap().unwrap();
        assert_eq!((dead.state.as_str(), dead.attempts), ("dead", 1));

        let replayed = store
            .replay_webhook(&ev.event_id, 1_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(replayed.state, WebhookState::Pending);
        assert_eq!((replayed.retry_from, replayed.next_attempt_at), (1, 1_000));
        assert!(store.replay_webhook("msg_none", 0).await.unwrap().is_none());

        // An attempt started before the replay fails late: the replay's plan stands.
        store
            .record_webhook_attempt(ev.pk, 0, &failed(1_001), AttemptOutcome::Dead)
            .await
            .unwrap();
        let e = store.webhook(&ev.event_id).await.unwrap().unwrap();
        assert_eq!(
            (e.state.as_str(), e.next_attempt_at, e.attempts),
            ("pending", 1_000, 2)
        );
        // ...but a success still counts.
        let ok = WebhookAttempt {
            at: 1_002,
            status_code: Some(200),
            error: None,
            latency_ms: 1,
        };
        store
            .record_webhook_attempt(ev.pk, 0, &ok, AttemptOutcome::Delivered)
            .await
            .unwrap();
        let e = store.webhook(&ev.event_id).await.unwrap().unwrap();
        assert_eq!(e.state, WebhookState::Delivered);
        assert_eq!(e.last_error, None);
        assert!(e.delivered_at.is_some());
        let list = store
            .list_webhooks(&WebhookFilter {
                state: Some(WebhookState::Delivered),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(list.len(), 1);
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;
    use crate::event::STATUS_CHANGED;

    async fn count(store: &Store, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&store.read)
            .await
            .unwrap()
    }

    /// A payment that flipped at `at` (one history row, one webhook event), or stays
    /// pending with `final_state` None.
    async fn payment(store: &Store, id: &str, final_state: Option<State>, at: i64) -> PaymentKey {
        let new = NewPayment {
            kind: KindName::parse("p2p").unwrap(),
            id: PaymentId::parse(id).unwrap(),
            started_at: 0,
            jitter_ms: 0,
            next_check_at: 0,
            callback_url: None,
            metadata: None,
        };
        let pk = store.insert_payments(&[new]).await.unwrap()[0].0.pk;
        let state = final_state.unwrap_or(State::Pending);
        store
            .record_checks(
                &[CheckRecord {
                    saw_pending: false,
                    watch: None,
                    pk,
                    checked_at: at,
                    upstream_status: Some(format!("raw-{id}")),
                    state,
                    response: None,
                    error: None,
                    next_check_at: (state == State::Pending).then_some(at + 1),
                    event: Some(EventSpec {
                        event_type: STATUS_CHANGED,
                        previous_upstream_status: None,
                        previous_state: State::Pending,
                        late: false,
                    }),
                    changed: true,
                }],
                &[],
            )
            .await
            .unwrap();
        pk
    }

    async fn attempt(store: &Store, payment_pk: PaymentKey, outcome: AttemptOutcome) {
        let ev: EventKey = sqlx::query_scalar("SELECT pk FROM webhook_events WHERE payment_pk = ?")
            .bind(payment_pk)
            .fetch_one(&store.read)
            .await
            .unwrap();
        let a = WebhookAttempt {
            at: 1,
            status_code: Some(200),
            error: None,
            latency_ms: 1,
        };
        store
            .record_webhook_attempt(ev, 0, &a, outcome)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_evidence_read_back_is_the_latest_started_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), None).await.unwrap();
        // Five finished payments started at 10..50 and one still pending at 60.
        for (i, started_at) in [30, 10, 50, 20, 40, 60].into_iter().enumerate() {
            let new = NewPayment {
                kind: KindName::parse("p2p").unwrap(),
                id: PaymentId::parse(&format!("E{i}")).unwrap(),
                started_at,
                jitter_ms: 0,
                next_check_at: 0,
                callback_url: None,
                metadata: None,
            };
            let pk = store.insert_payments(&[new]).await.unwrap()[0].0.pk;
            let state = if started_at == 60 {
                State::Pending
            } else {
                State::Succeeded
            };
            let check = CheckRecord {
                saw_pending: false,
                watch: None,
                pk,
                checked_at: started_at + 5,
                upstream_status: Some("raw".into()),
                state,
                response: None,
                error: None,
                next_check_at: Some(started_at + 6),
                event: None,
                changed: true,
            };
            store.record_checks(&[check], &[]).await.unwrap();
        }
        let started = |rows: Vec<FinishedRow>| -> Vec<i64> {
            rows.into_iter().map(|r| r.started_at).collect()
        };
        let all = store.finished_since(0, EVIDENCE_ROWS).await.unwrap();
        assert_eq!(started(all), [10, 20, 30, 40, 50]);
        let latest = store.finished_since(15, 3).await.unwrap();
        assert_eq!(started(latest), [30, 40, 50]);
        let read = Store::read_finished(&dir.path().join("t.db"), 0, 2)
            .await
            .unwrap();
        assert_eq!(started(read), [40, 50]);
    }

    #[tokio::test]
    async fn finished_payments_go_with_their_rows_oldest_first_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("t.db"),
            Some("http://127.0.0.1:1/h".into()),
        )
        .await
        .unwrap();
        let old1 = payment(&store, "OLD1", Some(State::Succeeded), 100).await;
        let old2 = payment(&store, "OLD2", Some(State::Failed), 200).await;
        let young = payment(&store, "YOUNG", Some(State::Succeeded), 5_000).await;
        let pending = payment(&store, "PEND", None, 100).await;
        // Finished long ago, but its event is still being delivered: it stays.
        let undelivered = payment(&store, "UNDEL", Some(State::Succeeded), 100).await;
        for pk in [old1, old2, young, pending] {
            attempt(&store, pk, AttemptOutcome::Delivered).await;
        }
        attempt(&store, undelivered, AttemptOutcome::Retry(10_000)).await;

        // A batch of one takes the oldest.
        let p = store.prune_finished(1_000, 1).await.unwrap();
        assert_eq!(
            p,
            Pruned {
                payments: 1,
                history: 1,
                events: 1,
                attempts: 1
            }
        );
        assert!(store.get("p2p", "OLD1").await.unwrap().is_none());
        assert!(store.get("p2p", "OLD2").await.unwrap().is_some());
        let p = store.prune_finished(1_000, 10).await.unwrap();
        assert_eq!(p.payments, 1);
        assert_eq!(
            store.prune_finished(1_000, 10).await.unwrap(),
            Pruned::default()
        );
        for id in ["YOUNG", "PEND", "UNDEL"] {
            assert!(store.get("p2p", id).await.unwrap().is_some(), "{id} kept");
        }
        // Nothing of the deleted payments is left behind.
        for table in ["status_history", "webhook_events"] {
            let orphans = count(
                &store,
                &format!(
                    "SELECT COUNT(*) FROM {table} WHERE payment_pk NOT IN (SELECT pk FROM payments)"
                ),
            )
            .await;
            assert_eq!(orphans, 0, "{table}");
        }
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM webhook_attempts WHERE event_pk NOT IN \
                 (SELECT pk FROM webhook_events)"
            )
            .await,
            0
        );
        // Once the event is dead the payment can go.
        attempt(&store, undelivered, AttemptOutcome::Dead).await;
        assert_eq!(store.prune_finished(1_000, 10).await.unwrap().payments, 1);
    }

    /// A full batch (500 payments, each with a history row, an event and an attempt) holds
    /// the writer for milliseconds, not seconds. Prints the figures.
    #[tokio::test]
    async fn a_full_batch_holds_the_writer_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("t.db"),
            Some("http://127.0.0.1:1/h".into()),
        )
        .await
        .unwrap();
        let n = 2 * crate::retention::BATCH as usize + 100;
        let news: Vec<NewPayment> = (0..n)
            .map(|i| NewPayment {
                kind: KindName::parse("p2p").unwrap(),
                id: PaymentId::parse(&format!("P{i}")).unwrap(),
                started_at: 0,
                jitter_ms: 0,
                next_check_at: 0,
                callback_url: None,
                metadata: Some(serde_json::json!({"order": i, "note": "x".repeat(200)})),
            })
            .collect();
        let rows = store.insert_payments(&news).await.unwrap();
        let records: Vec<CheckRecord> = rows
            .iter()
            .map(|(r, _)| CheckRecord {
                saw_pending: true,
                watch: None,
                pk: r.pk,
                checked_at: 100,
                upstream_status: Some("approved".into()),
                state: State::Succeeded,
                response: Some("{\"status\":\"approved\"}".into()),
                error: None,
                next_check_at: None,
                event: Some(EventSpec {
                    event_type: STATUS_CHANGED,
                    previous_upstream_status: None,
                    previous_state: State::Pending,
                    late: false,
                }),
                changed: true,
            })
            .collect();
        store.record_checks(&records, &[]).await.unwrap();
        sqlx::query(
            "INSERT INTO webhook_attempts (event_pk, at, status_code, latency_ms) \
             SELECT pk, 100, 200, 1 FROM webhook_events",
        )
        .execute(&store.write)
        .await
        .unwrap();
        sqlx::query("UPDATE webhook_events SET state = 'delivered', delivered_at = 100")
            .execute(&store.write)
            .await
            .unwrap();
        let mut took = Vec::new();
        loop {
            let started = std::time::Instant::now();
            let p = store
                .prune_finished(1_000, crate::retention::BATCH)
                .await
                .unwrap();
            took.push((p.payments, started.elapsed()));
            if p.payments < u64::from(crate::retention::BATCH) {
                break;
            }
        }
        eprintln!("retention batches (payments, time holding the writer): {took:?}");
        assert_eq!(took.iter().map(|t| t.0).sum::<u64>(), n as u64);
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM webhook_attempts").await,
            0
        );
        let slowest = took.iter().map(|t| t.1).max().unwrap();
        assert!(slowest < std::time::Duration::from_secs(1), "{took:?}");
    }

    /// Retention writes like every other write: on the writer's own transaction, and a
    /// failure is reported in health (and the next write starts afresh).
    #[tokio::test]
    async fn a_failed_retention_batch_is_reported_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("t.db"),
            Some("http://127.0.0.1:1/h".into()),
        )
        .await
        .unwrap();
        let old = payment(&store, "OLD", Some(State::Succeeded), 100).await;
        attempt(&store, old, AttemptOutcome::Delivered).await;
        store
            .exec_for_test("ALTER TABLE webhook_attempts RENAME TO attempts_gone")
            .await
            .unwrap();
        assert!(store.prune_finished(1_000, 10).await.is_err());
        assert_eq!(store.write_status().failures_total, 1);
        assert!(store.write_status().failing_since.is_some());
        store
            .exec_for_test("ALTER TABLE attempts_gone RENAME TO webhook_attempts")
            .await
            .unwrap();
        assert_eq!(store.prune_finished(1_000, 10).await.unwrap().payments, 1);
        assert!(store.write_status().failing_since.is_none());
    }

    #[tokio::test]
    async fn delivered_events_go_sooner_and_the_sequence_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("t.db"),
            Some("http://127.0.0.1:1/h".into()),
        )
        .await
        .unwrap();
        let a = payment(&store, "A", None, 100).await;
        let b = payment(&store, "B", None, 100).await;
        attempt(&store, a, AttemptOutcome::Delivered).await;
        attempt(&store, b, AttemptOutcome::Retry(10_000)).await;
        let now = now_ms();
        let p = store.prune_delivered(now + 1, 10).await.unwrap();
        assert_eq!((p.events, p.attempts, p.payments), (1, 1, 0));
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM webhook_events").await,
            1
        );
        assert!(store.get("p2p", "A").await.unwrap().is_some());
        // A's next event is number 2, not a reused 1.
        let flip = CheckRecord {
            saw_pending: false,
            watch: None,
            pk: a,
            checked_at: 200,
            upstream_status: Some("approved".into()),
            state: State::Succeeded,
            response: None,
            error: None,
            next_check_at: None,
            event: Some(EventSpec {
                event_type: STATUS_CHANGED,
                previous_upstream_status: None,
                previous_state: State::Pending,
                late: false,
            }),
            changed: true,
        };
        store.record_checks(&[flip], &[]).await.unwrap();
        assert_eq!(
            count(
                &store,
                &format!("SELECT sequence FROM webhook_events WHERE payment_pk = {a}")
            )
            .await,
            2
        );
    }
}

#[cfg(test)]
mod write_tests {
    use super::*;
    use sqlx::Row;

    fn payment(id: &str, metadata: Option<Value>) -> NewPayment {
        NewPayment {
            kind: KindName::parse("p2p").unwrap(),
            id: PaymentId::parse(id).unwrap(),
            started_at: 0,
            jitter_ms: 0,
            next_check_at: 0,
            callback_url: None,
            metadata,
        }
    }

    #[tokio::test]
    async fn a_state_listing_walks_the_state_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), None).await.unwrap();
        let f = ListFilter {
            state: Some(State::Succeeded),
            limit: 10,
            ..Default::default()
        };
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {}", list_sql(&f)))
            .bind(0)
            .bind("succeeded")
            .bind(10)
            .fetch_all(&store.read)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect();
        assert!(
            plan.iter().any(|d| d.contains("payments_state_pk")),
            "{plan:?}"
        );
        // And it answers what it should.
        store
            .insert_payments(&[payment("A", None), payment("B", None)])
            .await
            .unwrap();
        let all = store
            .list(&ListFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 2);
        let pending = store
            .list(&ListFilter {
                state: Some(State::Pending),
                kind: Some(KindName::parse("p2p").unwrap()),
                after_pk: Some(all[0].pk),
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(
            pending.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["B"]
        );
        assert!(store.list(&f).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_wal_shrinks_after_a_burst() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), None).await.unwrap();
        let meta = serde_json::json!({ "note": "x".repeat(4000) });
        for batch in 0..4 {
            let new: Vec<NewPayment> = (0..800)
                .map(|i| payment(&format!("B{batch}-{i}"), Some(meta.clone())))
                .collect();
            store.insert_payments(&new).await.unwrap();
        }
        let wal = || std::fs::metadata(dir.path().join("t.db-wal")).map_or(0, |m| m.len());
        assert!(wal() > WAL_KEEP, "the burst grew the WAL: {}", wal());
        store.maintain(0).await.unwrap();
        assert!(wal() <= WAL_KEEP, "after housekeeping: {} bytes", wal());
        // Idle since: the next housekeeping truncates it to nothing.
        store.insert_payments(&[payment("C", None)]).await.unwrap();
        store.maintain(0).await.unwrap();
        store.maintain(0).await.unwrap();
        assert_eq!(wal(), 0);
        assert_eq!(store.write_status(), WriteStatus::default());
    }
}
