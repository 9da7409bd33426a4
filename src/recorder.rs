//! The recorder and the ledger writer: the scheduler's two durable-write tasks. The
//! recorder group-commits check outcomes (with their history rows and webhook events);
//! the ledger writer pre-commits budget ledger rows so no fsync sits on a request's path.

use crate::payment::{now_ms, UnixMs};
use crate::store::{CheckRecord, Store};
use crate::telemetry::Telemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Outcomes to commit, with the budget ledger row of the request that produced them
/// (`(key, answered_at)`).
pub(crate) type RecordBatch = (Vec<CheckRecord>, Option<(i64, UnixMs)>);

/// A request for `count` fresh ledger rows for pool `index` (named `name`).
pub(crate) type Refill = (usize, String, usize);

/// Pre-commits budget ledger rows, so that a request takes an already durable row and
/// never waits for an fsync on its way out. A crash leaves the unused rows behind; a
/// restart counts them as spent, which costs at most one reserve of budget and never
/// hides a request that was really sent.
pub(crate) async fn ledger_loop(
    store: Store,
    telemetry: Arc<Telemetry>,
    mut rx: mpsc::Receiver<Refill>,
    done: mpsc::Sender<(usize, Vec<i64>)>,
) {
    while let Some((index, name, count)) = rx.recv().await {
        let entries: Vec<(String, UnixMs)> = (0..count).map(|_| (name.clone(), now_ms())).collect();
        let keys = loop {
            match store.ledger_send(&entries).await {
                Ok(keys) => break keys,
                Err(e) => {
                    telemetry.database_error("ledger");
                    // Without durable rows no request leaves: retry rather than guess.
                    tracing::error!(
                        error = format!("{e:#}"),
                        "budget ledger write failed; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        if done.send((index, keys)).await.is_err() {
            return;
        }
    }
}

/// Commits check outcomes in groups: whatever has arrived while the previous commit ran
/// goes into the next one, so a burst of answers costs one fsync, not one each.
pub(crate) async fn record_loop(
    store: Store,
    mut rx: mpsc::Receiver<RecordBatch>,
    telemetry: Arc<Telemetry>,
    events: Arc<Notify>,
) {
    while let Some(first) = rx.recv().await {
        let mut records = first.0;
        let mut ledger: Vec<(i64, UnixMs)> = first.1.into_iter().collect();
        while records.len() < 2048 {
            match rx.try_recv() {
                Ok((r, l)) => {
                    records.extend(r);
                    ledger.extend(l);
                }
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(50);
        loop {
            // A failed commit (disk full, I/O error) is retried until it lands: the outcome
            // is in no other place, and losing it would lose a payment's final state.
            let result = async {
                let applied = store.record_checks(&records).await?;
                store.ledger_done(&ledger).await?;
                anyhow::Ok(applied)
            }
            .await;
            match result {
                Ok(applied) => {
                    telemetry.commit(records.len());
                    if applied
                        .iter()
                        .any(|a| matches!(a, crate::store::Applied::Updated { event_queued: true }))
                    {
                        events.notify_one();
                    }
                    break;
                }
                Err(e) => {
                    telemetry.database_error("record_checks");
                    tracing::error!(
                        error = format!("{e:#}"),
                        "committing check outcomes failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
