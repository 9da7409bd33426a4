//! Recording checks: a payment's new state, its status history and the webhook event a
//! change causes, committed together.

use super::{PaymentRow, Store};
use crate::account::AccountName;
use crate::event::{event_body, EventSpec, Subject};
use crate::kinds::KindName;
use crate::payment::{now_ms, LedgerKey, PaymentKey, State, WallMs};
use anyhow::{Context, Result};
use sqlx::SqliteConnection;
use std::collections::{HashMap, HashSet};

/// The result of one check, to commit.
#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub pk: PaymentKey,
    pub checked_at: WallMs,
    /// The raw status seen, if the check got one.
    pub upstream_status: Option<String>,
    /// The payment's state after the check.
    pub state: State,
    /// The body of the answer (JSON text), kept when there is one.
    pub response: Option<String>,
    /// The error, if the check failed; `None` clears the previous one.
    pub error: Option<String>,
    /// When the next check is planned; `None` once final.
    pub next_check_at: Option<WallMs>,
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
/// What committing a check changed, for the scheduler and telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Recorded.
    Updated { event_queued: bool },
    /// The payment was no longer pending (cancelled meanwhile): nothing written.
    Skipped,
}

impl Store {
    /// Commits the outcomes of several checks in one transaction (one fsync for many
    /// checks), with the budget ledger rows of the requests that produced them marked
    /// answered (`(key, answered_at)`). Each outcome's status change and webhook event land
    /// together or not at all, and a retry after a failure cannot record a change twice.
    pub async fn record_checks(
        &self,
        records: &[CheckRecord],
        ledger_done: &[(LedgerKey, WallMs)],
    ) -> Result<Vec<Applied>> {
        // Each statement is a round trip to SQLite's thread: the checks of live payments
        // that queue no event (most of them) and the ledger rows go a run at a time.
        let ledger: Vec<(i64, i64)> = ledger_done.iter().map(|(k, at)| (k.0, at.0)).collect();
        let ledger = serde_json::to_string(&ledger).context("encoding ledger rows")?;
        // Those of payments checked once in the batch go in one statement wherever they
        // are in it: different payments' rows do not depend on each other's order.
        let mut seen: HashMap<PaymentKey, usize> = HashMap::with_capacity(records.len());
        for r in records {
            *seen.entry(r.pk).or_default() += 1;
        }
        let alone = |r: &CheckRecord| r.live_without_event() && seen[&r.pk] == 1;
        let (together, apart): (Vec<usize>, Vec<usize>) =
            (0..records.len()).partition(|&i| alone(&records[i]));
        self.write("check outcomes", async |tx| {
            let mut out = vec![Applied::Skipped; records.len()];
            if !together.is_empty() {
                let run: Vec<&CheckRecord> = together.iter().map(|&i| &records[i]).collect();
                for (&i, a) in together.iter().zip(record_live_run(tx, &run).await?) {
                    out[i] = a;
                }
            }
            // The rows the others change, read at once, where the batch writes each once.
            let once: Vec<i64> = apart
                .iter()
                .map(|&i| records[i].pk)
                .filter(|pk| seen[pk] == 1)
                .map(|pk| pk.0)
                .collect();
            let mut read: HashMap<PaymentKey, PaymentRow> = HashMap::new();
            if !once.is_empty() {
                let once = serde_json::to_string(&once).context("encoding payment keys")?;
                for row in payment_query!(
                    "SELECT ",
                    " FROM payments WHERE pk IN (SELECT value FROM json_each(?))",
                    once,
                )
                .fetch_all(&mut *tx)
                .await?
                {
                    read.insert(row.pk, row);
                }
            }
            let mut rest = &apart[..];
            while let Some(&first) = rest.first() {
                if !records[first].live_without_event() {
                    let r = &records[first];
                    let row = (seen[&r.pk] == 1).then(|| read.remove(&r.pk));
                    out[first] = self.record_check(tx, r, row).await?;
                    rest = &rest[1..];
                    continue;
                }
                // A run of them, each payment once (a statement updates a row once).
                let mut pks = HashSet::new();
                let n = rest
                    .iter()
                    .take_while(|&&i| records[i].live_without_event() && pks.insert(records[i].pk))
                    .count();
                let (run, after) = rest.split_at(n);
                let rows: Vec<&CheckRecord> = run.iter().map(|&i| &records[i]).collect();
                for (&i, a) in run.iter().zip(record_live_run(tx, &rows).await?) {
                    out[i] = a;
                }
                rest = after;
            }
            if !ledger_done.is_empty() {
                sqlx::query!(
                    "UPDATE upstream_requests \
                     SET done_at = json_extract(l.value, '$[1]') \
                     FROM json_each(?) AS l \
                     WHERE upstream_requests.pk = json_extract(l.value, '$[0]')",
                    ledger,
                )
                .execute(&mut *tx)
                .await?;
            }
            Ok(out)
        })
        .await
    }

    /// One check's outcome: the payment's new state, its history row and webhook event.
    /// Skipped when the payment is no longer in the state the check was made for.
    /// `read`: the payment's row as read earlier in this transaction, if nothing else in
    /// it writes that row.
    async fn record_check(
        &self,
        tx: &mut SqliteConnection,
        r: &CheckRecord,
        read: Option<Option<PaymentRow>>,
    ) -> Result<Applied> {
        let before = match read {
            Some(row) => row.filter(|p| {
                if r.watch.is_some() {
                    p.state != State::Pending && p.next_check_at.is_some()
                } else {
                    p.state == State::Pending
                }
            }),
            None if r.watch.is_some() => {
                payment_query!(
                "SELECT ",
                " FROM payments WHERE pk = ? AND state != 'pending' AND next_check_at IS NOT NULL",
                r.pk,
            )
                .fetch_optional(&mut *tx)
                .await?
            }
            None => {
                payment_query!(
                    "SELECT ",
                    " FROM payments WHERE pk = ? AND state = 'pending'",
                    r.pk,
                )
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let Some(before) = before else {
            return Ok(Applied::Skipped);
        };
        let upstream_status = r
            .upstream_status
            .clone()
            .or_else(|| before.upstream_status.clone());
        let response = r.response.clone().or_else(|| before.response.clone());
        let now = now_ms();
        if let Some(w) = r.watch {
            record_watched(tx, r, w, &before, &upstream_status, &response, now).await?;
        } else {
            record_live(tx, r, &upstream_status, &response, now).await?;
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
                tx,
                r,
                &before,
                upstream_status.as_deref(),
                response.as_deref(),
            )
            .await?;
        Ok(Applied::Updated { event_queued })
    }

    /// Puts the webhook event a check causes in the outbox; whether one was queued.
    async fn queue_event(
        &self,
        tx: &mut SqliteConnection,
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
            .or_else(|| self.webhook_urls().get(&before.account).cloned());
        let Some(url) = url else {
            return Ok(false);
        };
        let sequence = before.event_seq + 1;
        let after = Subject {
            account: &before.account,
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
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "UPDATE payments SET event_seq = ? WHERE pk = ?",
            sequence,
            r.pk
        )
        .execute(&mut *tx)
        .await?;
        Ok(true)
    }

    /// The status history of a payment, oldest first: (at, previous state, state, raw).
    pub async fn history(
        &self,
        pk: PaymentKey,
    ) -> Result<Vec<(WallMs, String, String, Option<String>)>> {
        let rows = sqlx::query!(
            "SELECT at, previous_state, state, upstream_status FROM status_history \
             WHERE payment_pk = ? ORDER BY pk",
            pk
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (WallMs(r.at), r.previous_state, r.state, r.upstream_status))
            .collect())
    }
}

/// A check of the ladder's: a final state ends the ladder (`finished_at`, and how it
/// ended in `ended_state`); the next planned check is the core's (reconciliation's,
/// when the payment stays watched).
impl CheckRecord {
    /// A check of a live payment that queues no event: what it writes, a history row for
    /// a change included, needs nothing read first.
    fn live_without_event(&self) -> bool {
        self.watch.is_none() && self.event.is_none()
    }
}

/// What [`record_live`] writes of a check, as one element of a run's JSON array.
#[derive(serde::Serialize)]
struct LiveRow<'a> {
    pk: i64,
    state: State,
    upstream_status: Option<&'a str>,
    response: Option<&'a str>,
    error: Option<&'a str>,
    checked_at: i64,
    next_check_at: Option<i64>,
    finished_at: Option<i64>,
    pending_seen_at: Option<i64>,
    ended_state: Option<State>,
    changed: bool,
}

/// Records a run of checks of live payments that queue no event (see
/// [`CheckRecord::live_without_event`]), distinct payments, in one statement and one more for
/// the history rows of those that changed: as [`Store::record_check`] each, skipping a payment no
/// longer pending.
async fn record_live_run(tx: &mut SqliteConnection, run: &[&CheckRecord]) -> Result<Vec<Applied>> {
    let rows: Vec<LiveRow> = run
        .iter()
        .map(|r| {
            let fin = r.state.is_final();
            LiveRow {
                pk: r.pk.0,
                state: r.state,
                upstream_status: r.upstream_status.as_deref(),
                response: r.response.as_deref(),
                error: r.error.as_deref(),
                checked_at: r.checked_at.0,
                next_check_at: r.next_check_at.map(|t| t.0),
                finished_at: fin.then_some(r.checked_at.0),
                pending_seen_at: r.saw_pending.then_some(r.checked_at.0),
                ended_state: fin.then_some(r.state),
                changed: r.changed,
            }
        })
        .collect();
    let rows = serde_json::to_string(&rows).context("encoding check outcomes")?;
    let now = now_ms();
    // The history rows first, while the payments still hold what they change from.
    if run.iter().any(|r| r.changed) {
        sqlx::query!(
            r#"INSERT INTO status_history (payment_pk, at, previous_state, state,
                 previous_upstream_status, upstream_status)
               SELECT payments.pk, json_extract(c.value, '$.checked_at'), payments.state,
                 json_extract(c.value, '$.state'), payments.upstream_status,
                 COALESCE(json_extract(c.value, '$.upstream_status'), payments.upstream_status)
               FROM json_each(?) AS c JOIN payments ON payments.pk = json_extract(c.value, '$.pk')
               WHERE json_extract(c.value, '$.changed') AND +payments.state = 'pending'"#,
            rows,
        )
        .execute(&mut *tx)
        .await?;
    }
    // The `+` keeps the state index out of the plan: led by it, SQLite would scan every
    // pending payment for the run's few; led by the run, each is one rowid lookup.
    let updated: HashSet<PaymentKey> = sqlx::query_scalar!(
        r#"UPDATE payments SET state = json_extract(c.value, '$.state'),
             upstream_status = COALESCE(json_extract(c.value, '$.upstream_status'),
                                        payments.upstream_status),
             response = COALESCE(json_extract(c.value, '$.response'), payments.response),
             last_error = json_extract(c.value, '$.error'),
             last_checked_at = json_extract(c.value, '$.checked_at'),
             checks_done = checks_done + 1,
             next_check_at = json_extract(c.value, '$.next_check_at'),
             finished_at = json_extract(c.value, '$.finished_at'),
             updated_at = ?,
             pending_seen_at = COALESCE(json_extract(c.value, '$.pending_seen_at'),
                                        payments.pending_seen_at),
             ended_state = json_extract(c.value, '$.ended_state')
           FROM json_each(?) AS c
           WHERE payments.pk = json_extract(c.value, '$.pk') AND +payments.state = 'pending'
           RETURNING payments.pk AS "pk!: PaymentKey""#,
        now,
        rows,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    Ok(run
        .iter()
        .map(|r| {
            if updated.contains(&r.pk) {
                Applied::Updated {
                    event_queued: false,
                }
            } else {
                Applied::Skipped
            }
        })
        .collect())
}

async fn record_live(
    tx: &mut SqliteConnection,
    r: &CheckRecord,
    upstream_status: &Option<String>,
    response: &Option<String>,
    now: WallMs,
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
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A check of a watched payment's (after the ladder): `watch_seen_at` when it saw no
/// move, `moved_at` at the first move; a check that did not ask Ninjapay (a watch that
/// ends unchecked) counts no check and keeps the last error.
async fn record_watched(
    tx: &mut SqliteConnection,
    r: &CheckRecord,
    w: WatchCheck,
    before: &PaymentRow,
    upstream_status: &Option<String>,
    response: &Option<String>,
    now: WallMs,
) -> Result<()> {
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
    Ok(())
}
