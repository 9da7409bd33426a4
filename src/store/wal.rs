//! WAL upkeep: the maintenance task's housekeeping and checkpoints.

use super::open::WAL_KEEP;
use super::Store;
use crate::payment::WallMs;
use anyhow::{Context, Result};
use std::sync::atomic::Ordering;

impl Store {
    /// Housekeeping: forgets ledger entries no window can count any more, and checkpoints
    /// the WAL so a long-lived reader cannot make it grow without bound. The checkpoint
    /// truncates the WAL to nothing when the database was idle since the last housekeeping
    /// or a burst left it larger than [`WAL_KEEP`]; else it is a passive one that never
    /// waits. A truncating checkpoint waits for readers only briefly (a merchant's long read
    /// must not hold the writer): if one is in the way it simply happens next time.
    pub async fn maintain(&self, ledger_before: WallMs) -> Result<()> {
        self.prune_ledger(ledger_before).await?;
        self.checkpoint().await
    }

    /// Checkpoints the WAL: truncating when idle or after a burst, else passive. Returns
    /// after at most a short wait for readers.
    pub async fn checkpoint(&self) -> Result<()> {
        let result = self.checkpoint_once().await;
        // A checkpoint that went through says little about writes (it may have had
        // nothing to copy): only its failure is news for health.
        if result.is_err() {
            return self.note(result);
        }
        result
    }

    async fn checkpoint_once(&self) -> Result<()> {
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
