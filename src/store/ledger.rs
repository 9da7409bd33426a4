//! The budget ledger: one row per request, committed before it is sent.

use super::Store;
use crate::payment::{LedgerKey, WallMs};
use anyhow::{Context, Result};

/// One budget-ledger row as a restart reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub pool: String,
    pub sent_at: WallMs,
    pub done_at: Option<WallMs>,
    /// The boot it was sent in and ms since that boot began (see [`crate::boot`]).
    pub boot: Option<(String, i64)>,
}

impl Store {
    /// Writes the budget ledger's entries `(pool, sent_at)` for requests about to be sent;
    /// returns their keys, in order. Committed before the requests go out, so a crash can
    /// never hide spent budget.
    pub async fn ledger_send(&self, entries: &[(String, WallMs)]) -> Result<Vec<LedgerKey>> {
        // One statement for them all: each is a round trip to SQLite's thread.
        let rows: Vec<(&str, i64)> = entries.iter().map(|(p, at)| (p.as_str(), at.0)).collect();
        let rows = serde_json::to_string(&rows).context("encoding ledger rows")?;
        self.write("budget ledger", async |tx| {
            let (boot_id, boot_ms) = crate::boot::now().unzip();
            let mut keys = sqlx::query_scalar!(
                r#"INSERT INTO upstream_requests (pool, sent_at, boot_id, boot_ms)
                   SELECT json_extract(e.value, '$[0]'), json_extract(e.value, '$[1]'), ?, ?
                   FROM json_each(?) AS e ORDER BY e.key
                   RETURNING pk AS "pk!: LedgerKey""#,
                boot_id,
                boot_ms,
                rows,
            )
            .fetch_all(&mut *tx)
            .await?;
            // RETURNING's order is SQLite's to choose; the keys rise in insertion order.
            keys.sort_unstable();
            Ok(keys)
        })
        .await
    }

    /// Marks every ledger row still open (sent by a previous run that never recorded the
    /// answer) as answered at `at`; the budget has already counted them so.
    pub async fn ledger_close_open(&self, at: WallMs) -> Result<()> {
        self.write("closing open ledger rows", async |tx| {
            sqlx::query!(
                "UPDATE upstream_requests SET done_at = ? WHERE done_at IS NULL",
                at
            )
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
        .await
    }

    /// Forgets reserved ledger rows that no request used (clean shutdown).
    pub async fn ledger_release(&self, keys: &[LedgerKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.write("releasing ledger rows", async |tx| {
            for k in keys {
                sqlx::query!(
                    "DELETE FROM upstream_requests WHERE pk = ? AND done_at IS NULL",
                    k
                )
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        })
        .await
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
                sent_at: WallMs(r.sent_at),
                done_at: r.done_at.map(WallMs),
                boot: r.boot_id.zip(r.boot_ms),
            })
            .collect())
    }

    /// Forgets ledger rows answered before `before`: no window can count them any more.
    pub(super) async fn prune_ledger(&self, before: WallMs) -> Result<()> {
        self.write("ledger housekeeping", async |tx| {
            // Open rows are this run's reserve: kept until used.
            sqlx::query!(
                "DELETE FROM upstream_requests WHERE done_at IS NOT NULL AND done_at < ?",
                before
            )
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
        .await
    }
}
