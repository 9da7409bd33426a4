//! Payments: enqueue, the reads of the API, cancel and rechecks.

use super::Store;
use crate::account::AccountName;
use crate::kinds::KindName;
use crate::payment::{now_ms, PaymentId, PaymentKey, State, WallMs};
use anyhow::{Context, Result};
use serde_json::Value;
use sqlx::FromRow;

/// A payment row, as stored.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct PaymentRow {
    pub pk: PaymentKey,
    pub account: AccountName,
    pub kind: KindName,
    pub id: String,
    pub state: State,
    pub upstream_status: Option<String>,
    pub started_at: WallMs,
    pub jitter_ms: i64,
    pub created_at: WallMs,
    pub updated_at: WallMs,
    pub next_check_at: Option<WallMs>,
    pub checks_done: i64,
    pub last_checked_at: Option<WallMs>,
    pub last_error: Option<String>,
    pub finished_at: Option<WallMs>,
    pub response: Option<String>,
    pub metadata: Option<String>,
    pub callback_url: Option<String>,
    pub event_seq: i64,
}

/// A payment to start tracking.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub account: AccountName,
    pub kind: KindName,
    pub id: PaymentId,
    pub started_at: WallMs,
    pub jitter_ms: i64,
    pub next_check_at: WallMs,
    pub callback_url: Option<String>,
    pub metadata: Option<Value>,
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Existing,
}

/// A list query.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<State>,
    pub account: Option<AccountName>,
    pub kind: Option<KindName>,
    /// Only rows with a larger `pk` (the cursor).
    pub after_pk: Option<PaymentKey>,
    pub limit: u32,
}

/// The columns of a [`PaymentRow`], for the one query that is built at run time
/// ([`list_sql`]); [`payment_query!`] spells the same list for the compile-checked ones.
const PAYMENT_COLUMNS: &str =
    "pk, account, kind, id, state, upstream_status, started_at, jitter_ms, \
    created_at, updated_at, next_check_at, checks_done, last_checked_at, last_error, \
    finished_at, response, metadata, callback_url, event_seq";

impl Store {
    /// Inserts payments in one transaction; an existing account+kind+id is left untouched and
    /// returned as it is.
    pub async fn insert_payments(&self, new: &[NewPayment]) -> Result<Vec<(PaymentRow, Inserted)>> {
        self.write("enqueue", async |tx| {
            let now = now_ms();
            let mut out = Vec::with_capacity(new.len());
            for p in new {
                let metadata = p.metadata.as_ref().map(Value::to_string);
                let id = p.id.as_str();
                let inserted = payment_query!(
                    "INSERT INTO payments (account, kind, id, started_at, jitter_ms, created_at, \
                 updated_at, next_check_at, callback_url, metadata) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (account, kind, id) DO NOTHING RETURNING ",
                    "",
                    p.account,
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
                            " FROM payments WHERE account = ? AND kind = ? AND id = ?",
                            p.account,
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
            Ok(out)
        })
        .await
    }

    /// One payment by account, kind and id.
    pub async fn get(&self, account: &str, kind: &str, id: &str) -> Result<Option<PaymentRow>> {
        Ok(payment_query!(
            "SELECT ",
            " FROM payments WHERE account = ? AND kind = ? AND id = ?",
            account,
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
        if let Some(account) = &f.account {
            q = q.bind(account);
        }
        if let Some(kind) = &f.kind {
            q = q.bind(kind);
        }
        Ok(q.bind(f.limit).fetch_all(&self.read).await?)
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

    /// Pending payments per account and kind, for health (a kind or an account no longer
    /// configured is not polled).
    pub async fn pending_by_kind(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query!(
            r#"SELECT account, kind, COUNT(*) AS "n!: i64" FROM payments
               WHERE state = 'pending' GROUP BY account, kind"#
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.account, r.kind, r.n)).collect())
    }

    /// Cancels a pending payment. `Ok(None)`: no such payment; `Err` of the row: already final.
    pub async fn cancel(
        &self,
        account: &str,
        kind: &str,
        id: &str,
    ) -> Result<Option<Result<PaymentRow, PaymentRow>>> {
        self.write("cancel", async |tx| {
            let now = now_ms();
            let row = payment_query!(
                "SELECT ",
                " FROM payments WHERE account = ? AND kind = ? AND id = ?",
                account,
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
            Ok(Some(Ok(updated)))
        })
        .await
    }

    /// Plans a check of a final payment that may still move (a merchant's recheck after
    /// the ladder ended it): its next check is `at` at the latest, whatever its watch
    /// planned. `None`: no such payment in `state`.
    pub async fn rewatch(
        &self,
        account: &str,
        kind: &str,
        id: &str,
        state: State,
        at: WallMs,
    ) -> Result<Option<PaymentRow>> {
        self.write("rewatch", async |tx| {
            let row = payment_query!(
                "UPDATE payments SET next_check_at = MIN(COALESCE(next_check_at, ?1), ?1), \
             updated_at = ?1 WHERE account = ?2 AND kind = ?3 AND id = ?4 AND state = ?5 \
             RETURNING ",
                "",
                at,
                account,
                kind,
                id,
                state,
            )
            .fetch_optional(&mut *tx)
            .await?;
            Ok(row)
        })
        .await
    }

    /// Moves a pending payment's next check to `at` (a manual recheck). `None`: no such
    /// pending payment.
    pub async fn reschedule(
        &self,
        account: &str,
        kind: &str,
        id: &str,
        at: WallMs,
    ) -> Result<Option<PaymentRow>> {
        self.write("reschedule", async |tx| {
            let row = payment_query!(
                "UPDATE payments SET next_check_at = ?1, updated_at = ?1 WHERE account = ?2 \
             AND kind = ?3 AND id = ?4 AND state = 'pending' RETURNING ",
                "",
                at,
                account,
                kind,
                id,
            )
            .fetch_optional(&mut *tx)
            .await?;
            Ok(row)
        })
        .await
    }
}

/// The query of [`Store::list`] for the filters `f` gives (parameters in order: cursor,
/// state, account, kind, limit; absent filters take no parameter).
pub(super) fn list_sql(f: &ListFilter) -> String {
    let mut sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE pk > ?");
    if f.state.is_some() {
        sql.push_str(" AND state = ?");
    }
    if f.account.is_some() {
        sql.push_str(" AND account = ?");
    }
    if f.kind.is_some() {
        sql.push_str(" AND kind = ?");
    }
    sql.push_str(" ORDER BY pk LIMIT ?");
    sql
}
