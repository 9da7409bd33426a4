//! Retention: deleting finished payments and delivered events in short batches.

use super::Store;
use crate::payment::{PaymentKey, WallMs};
use anyhow::{Context, Result};

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
    pub async fn prune_finished(&self, before: WallMs, limit: u32) -> Result<Pruned> {
        self.write("retention batch", async |tx| {
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
            Ok(Pruned {
                payments,
                history,
                events,
                attempts,
            })
        })
        .await
    }

    /// Deletes up to `limit` events delivered before `before`, oldest first, with their
    /// attempts. The payment keeps its `event_seq`, so later events go on counting.
    pub async fn prune_delivered(&self, before: WallMs, limit: u32) -> Result<Pruned> {
        self.write("retention batch", async |tx| {
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
            Ok(Pruned {
                events,
                attempts,
                ..Pruned::default()
            })
        })
        .await
    }
}
