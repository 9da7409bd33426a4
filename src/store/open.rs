//! Opening the database: the lock, the pools and their pragmas, migrations, and the one
//! writer's transactions with the health of its writes.

use super::{Store, StoreError};
use crate::account::AccountName;
use crate::payment::{now_ms, WallMs};
use anyhow::{Context, Result};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Sqlite;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The schema, as the files in `migrations/` make it.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The newest schema version this build knows.
pub fn schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Whether writes are failing (e.g. a full disk), for `/v1/health` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteStatus {
    /// Failed write operations since start.
    pub failures_total: u64,
    /// When the current run of failures began; `None` while writes succeed.
    pub failing_since: Option<WallMs>,
    /// The latest failure, in words.
    pub last_error: Option<String>,
}

#[derive(Default)]
pub(super) struct WriteHealth {
    failures: AtomicU64,
    failing: Mutex<Option<(WallMs, String)>>,
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
pub(super) const WAL_KEEP: u64 = 4 * 1024 * 1024;

pub(super) fn options(path: &Path) -> SqliteConnectOptions {
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

/// Brings the schema up to date, on a connection of its own with foreign keys off: a
/// migration that rebuilds a table (SQLite's way to change a constraint) drops the table
/// other rows refer to before the rebuilt one takes its name. The references are checked
/// once every migration has run, and a violation refuses the start.
async fn migrate(path: &Path) -> Result<(), StoreError> {
    let conn = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options(path).foreign_keys(false))
        .await
        .with_context(|| format!("opening database {}", path.display()))?;
    // Forward only: an older schema is migrated up; a newer one is refused before
    // anything is written (sqlx would refuse too, naming only its version).
    let migrated = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = '_sqlx_migrations')
               AS "migrated!: bool""#
    )
    .fetch_one(&conn)
    .await
    .context("reading the database's schema")?;
    let found: Option<i64> = if migrated {
        sqlx::query_scalar!(r#"SELECT MAX(version) AS "version?: i64" FROM _sqlx_migrations"#)
            .fetch_one(&conn)
            .await
            .context("reading the database's schema version")?
    } else {
        None
    };
    if let Some(found) = found.filter(|v| *v > schema_version()) {
        conn.close().await;
        return Err(StoreError::TooNew {
            found,
            ours: schema_version(),
            ours_release: env!("CARGO_PKG_VERSION"),
        });
    }
    MIGRATOR.run(&conn).await.context("applying migrations")?;
    let broken = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&conn)
        .await
        .context("checking the database's references")?;
    conn.close().await;
    if !broken.is_empty() {
        return Err(anyhow::anyhow!(
            "{} row(s) refer to rows that do not exist after migrating; the database needs repair",
            broken.len()
        )
        .into());
    }
    Ok(())
}

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
        migrate(path).await?;
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options(path))
            .await
            .with_context(|| format!("opening database {}", path.display()))?;
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
            webhook_urls: Arc::new(RwLock::new(Arc::new(
                default_webhook_url
                    .map(|u| (AccountName::default_account(), u))
                    .into_iter()
                    .collect(),
            ))),
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

    /// Runs `body` in one write transaction on the writer connection and commits it;
    /// the outcome, a failed BEGIN or COMMIT included, is kept for health. Every write of
    /// the store goes through here (`what` names it in a failed commit's error). A body
    /// that fails, or a write cancelled midway, leaves the transaction unfinished: the
    /// connection is closed and SQLite rolls it back (see [`WriteTx`]).
    pub(super) async fn write<T>(
        &self,
        what: &'static str,
        body: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        let result = async {
            let mut tx = self.begin().await?;
            let out = body(&mut tx).await?;
            tx.commit()
                .await
                .with_context(|| format!("committing {what}"))?;
            Ok(out)
        }
        .await;
        self.note(result)
    }

    /// Keeps a write operation's success or failure for health.
    pub(super) fn note<T>(&self, result: Result<T>) -> Result<T> {
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
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}
