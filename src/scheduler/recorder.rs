//! The recorder and the ledger writer: the scheduler's two durable-write tasks. The
//! recorder group-commits check outcomes (with their history rows and webhook events);
//! the ledger writer pre-commits budget ledger rows so no fsync sits on a request's path.
//!
//! Both retry a failed write (a full disk, an I/O error) with back-off until it lands; on
//! shutdown they give it a short grace and then stop, whatever the disk does: what was not
//! written is still pending in the database and is checked again after a restart.

use super::{Command, PoolId};
use crate::backoff::Backoff;
use crate::payment::{now_ms, LedgerKey, WallMs};
use crate::store::{Applied, CheckRecord, Store};
use crate::telemetry::Telemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Outcomes to commit, sent from the scheduler to the recorder.
#[derive(Debug)]
pub(crate) struct RecordBatch {
    pub records: Vec<CheckRecord>,
    /// The budget ledger row of the request that produced them, `(row key, answered_at)`,
    /// released in the same transaction.
    pub ledger: Option<(LedgerKey, WallMs)>,
}

/// A request from the scheduler to the ledger writer for fresh ledger rows.
#[derive(Debug)]
pub(crate) struct Refill {
    /// The pool (key) the rows are for.
    pub pool: PoolId,
    /// The pool's name in the ledger (see `ledger_id`).
    pub ledger_id: String,
    pub count: usize,
}

/// The ledger writer's answer to a [`Refill`]: the keys of the rows it committed.
#[derive(Debug)]
pub(crate) struct Refilled {
    pub pool: PoolId,
    pub keys: Vec<LedgerKey>,
}

/// Least time between the starts of two commits of outcomes: at a thousand keys' pace
/// about eighty checks' worth, each commit an fsync and the pages it touched written
/// again to the log; nothing a merchant waiting for a webhook notices.
const RECORD_GATHER: Duration = Duration::from_millis(50);

/// Most keys' ledger refills in one commit.
const REFILLS_PER_COMMIT: usize = 64;

/// Most outcomes in one commit.
const RECORD_GROUP: usize = 2048;

/// How long writes are still retried once shutdown has begun.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Pre-commits budget ledger rows, so that a request takes an already durable row and
/// never waits for an fsync on its way out. A crash leaves the unused rows behind; a
/// restart counts them as spent, which costs at most one reserve of budget and never
/// hides a request that was really sent.
pub(crate) async fn ledger_loop(
    store: Store,
    telemetry: Arc<Telemetry>,
    mut rx: mpsc::Receiver<Refill>,
    done: mpsc::Sender<Refilled>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while let Some(first) = rx.recv().await {
        // The keys that asked meanwhile share the transaction: with many keys, a commit
        // (and its fsync) each would keep the writer busy and the reserves short.
        let refills = waiting(first, &mut rx, REFILLS_PER_COMMIT);
        let mut keys = loop {
            let at = now_ms();
            let entries: Vec<(String, WallMs)> = refills
                .iter()
                .flat_map(|r| (0..r.count).map(|_| (r.ledger_id.clone(), at)))
                .collect();
            match store.ledger_send(&entries).await {
                Ok(keys) => {
                    backoff.reset();
                    break keys;
                }
                Err(e) => {
                    telemetry.database_error("ledger");
                    // Without durable rows no request leaves: retry rather than guess.
                    let wait = backoff.next_delay();
                    tracing::error!(
                        error = format!("{e:#}"),
                        retry_in_ms = wait.as_millis() as u64,
                        "budget ledger write failed; no check goes out until it lands"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => return,
                    }
                }
            }
        };
        // The keys rise in the order the rows were given: each refill's, in turn.
        for r in refills {
            let rest = keys.split_off(r.count.min(keys.len()));
            let mine = std::mem::replace(&mut keys, rest);
            if done
                .send(Refilled {
                    pool: r.pool,
                    keys: mine,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// `first` and what else waits on `rx` already, `max` in all: one commit's worth.
fn waiting<T>(first: T, rx: &mut mpsc::Receiver<T>, max: usize) -> Vec<T> {
    let mut all = vec![first];
    while all.len() < max {
        match rx.try_recv() {
            Ok(more) => all.push(more),
            Err(_) => break,
        }
    }
    all
}

/// Commits check outcomes in groups: whatever has arrived while the previous commit ran,
/// or within [`RECORD_GATHER`] of its start, goes into the next one, so a burst of answers
/// costs one commit, not one each. A payment
/// the database no longer has pending (a cancel that raced its enqueue) is handed back to
/// the scheduler to forget: the database decides.
pub(crate) async fn record_loop(
    store: Store,
    mut rx: mpsc::Receiver<RecordBatch>,
    telemetry: Arc<Telemetry>,
    webhook_wake: Arc<Notify>,
    scheduler: mpsc::UnboundedSender<Command>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    // Set once shutdown has begun: after it, a failed write is not retried.
    let mut give_up_at: Option<Instant> = None;
    let mut last_commit: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut records = first.records;
        let mut ledger: Vec<(LedgerKey, WallMs)> = first.ledger.into_iter().collect();
        // Each commit costs a round of statements on SQLite's thread and a WAL frame: at
        // a busy pace, commits start at most every `RECORD_GATHER` and the outcomes that
        // come meanwhile go into one. The first after a pause goes at once.
        if let Some(next) = last_commit.map(|t| t + RECORD_GATHER) {
            if records.len() < RECORD_GROUP {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = cancel.cancelled() => {}
                }
            }
        }
        last_commit = Some(Instant::now());
        while records.len() < RECORD_GROUP {
            match rx.try_recv() {
                Ok(more) => {
                    records.extend(more.records);
                    ledger.extend(more.ledger);
                }
                Err(_) => break,
            }
        }
        loop {
            // One transaction for the outcomes and their ledger rows: a retry after a
            // failure can never record a change (and its webhook event) twice.
            match store.record_checks(&records, &ledger).await {
                Ok(applied) => {
                    backoff.reset();
                    telemetry.commit(records.len());
                    let mut queued = false;
                    for (r, a) in records.iter().zip(&applied) {
                        match a {
                            Applied::Updated { event_queued } => queued |= event_queued,
                            Applied::Skipped => {
                                let _ = scheduler.send(Command::Untrack(r.pk));
                            }
                        }
                    }
                    if queued {
                        webhook_wake.notify_one();
                    }
                    break;
                }
                Err(e) => {
                    telemetry.database_error("record_checks");
                    if cancel.is_cancelled() {
                        let at = *give_up_at.get_or_insert_with(|| Instant::now() + SHUTDOWN_GRACE);
                        if Instant::now() >= at {
                            tracing::error!(
                                error = format!("{e:#}"),
                                outcomes = records.len(),
                                "shutting down with check outcomes not recorded; those payments are still pending in the database and are checked again after a restart"
                            );
                            break;
                        }
                    }
                    // The outcome is in no other place: retried until it lands.
                    let wait = backoff.next_delay();
                    tracing::error!(
                        error = format!("{e:#}"),
                        retry_in_ms = wait.as_millis() as u64,
                        "committing check outcomes failed; retrying"
                    );
                    let until = give_up_at.map_or(wait, |at| {
                        wait.min(at.saturating_duration_since(Instant::now()))
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(until) => {}
                        _ = cancel.cancelled(), if give_up_at.is_none() => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::KindName;
    use crate::payment::{PaymentId, State};
    use crate::store::{EventSpec, NewPayment, WebhookFilter};

    /// What waits already is taken along, up to the bound; nothing is waited for.
    #[tokio::test]
    async fn what_waits_already_goes_into_one_commit() {
        let (tx, mut rx) = mpsc::channel(8);
        for i in 1..=4 {
            tx.send(i).await.unwrap();
        }
        assert_eq!(waiting(0, &mut rx, 3), [0, 1, 2]);
        assert_eq!(waiting(0, &mut rx, 3), [0, 3, 4]);
        assert_eq!(waiting(0, &mut rx, 3), [0]);
    }

    /// Refills taken together are written by one statement, and each key gets its own
    /// rows: releasing one key's leaves exactly the others'.
    #[tokio::test]
    async fn refills_asked_together_each_get_their_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), None).await.unwrap();
        let (tx, rx) = mpsc::channel(8);
        let (done_tx, mut done_rx) = mpsc::channel(8);
        for (i, (id, count)) in [("key:a", 2), ("key:b", 3), ("key:c", 4)]
            .iter()
            .enumerate()
        {
            tx.send(Refill {
                pool: PoolId::new(i),
                ledger_id: id.to_string(),
                count: *count,
            })
            .await
            .unwrap();
        }
        let cancel = CancellationToken::new();
        let task = tokio::spawn(ledger_loop(
            store.clone(),
            Arc::new(Telemetry::default()),
            rx,
            done_tx,
            cancel.clone(),
        ));
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(done_rx.recv().await.unwrap());
        }
        assert_eq!(
            got.iter()
                .map(|r| (r.pool, r.keys.len()))
                .collect::<Vec<_>>(),
            [
                (PoolId::new(0), 2),
                (PoolId::new(1), 3),
                (PoolId::new(2), 4)
            ]
        );
        store.ledger_release(&got[1].keys).await.unwrap();
        let mut left: Vec<String> = store
            .ledger_newest(10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.pool)
            .collect();
        left.dedup();
        assert_eq!(left, ["key:a", "key:c"]);
        assert_eq!(store.ledger_newest(10).await.unwrap().len(), 6);
        drop(tx);
        task.await.unwrap();
    }

    /// A write that fails after the outcome is in but before its ledger row is marked
    /// (a trigger refuses the ledger update for a while) is retried as a whole: the
    /// change and its webhook event are recorded once, with one webhook-id.
    #[tokio::test]
    async fn a_retried_commit_never_records_a_change_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("t.db"),
            Some("http://127.0.0.1:1/h".into()),
        )
        .await
        .unwrap();
        let rows = store
            .insert_payments(&[NewPayment {
                account: crate::account::AccountName::default(),
                kind: KindName::parse("p2p").unwrap(),
                id: PaymentId::parse("A").unwrap(),
                started_at: WallMs(0),
                jitter_ms: 0,
                next_check_at: WallMs(0),
                callback_url: None,
                metadata: None,
            }])
            .await
            .unwrap();
        let pk = rows[0].0.pk;
        let key = store
            .ledger_send(&[("key:t".into(), WallMs(1))])
            .await
            .unwrap()[0];
        store
            .exec_for_test(
                "CREATE TRIGGER refuse BEFORE UPDATE ON upstream_requests \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
            )
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        let (cmd, _cmd_rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(record_loop(
            store.clone(),
            rx,
            Arc::new(Telemetry::default()),
            Arc::new(Notify::new()),
            cmd,
            cancel.clone(),
        ));
        let record = CheckRecord {
            pk,
            checked_at: WallMs(10),
            upstream_status: Some("on_hold".into()),
            state: State::Pending,
            response: None,
            error: None,
            next_check_at: Some(WallMs(20)),
            event: Some(EventSpec {
                event_type: crate::event::STATUS_CHANGED,
                previous_state: State::Pending,
                previous_upstream_status: None,
                late: false,
            }),
            changed: true,
            saw_pending: true,
            watch: None,
        };
        tx.send(RecordBatch {
            records: vec![record],
            ledger: Some((key, WallMs(10))),
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.write_status().failing_since.is_some());
        store.exec_for_test("DROP TRIGGER refuse").await.unwrap();
        drop(tx);
        task.await.unwrap();
        let events = store
            .list_webhooks(&WebhookFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "{events:#?}");
        assert!(store.write_status().failing_since.is_none());
        let ledger = store.ledger_newest(10).await.unwrap();
        let got: Vec<_> = ledger
            .iter()
            .map(|r| (r.pool.as_str(), r.sent_at, r.done_at))
            .collect();
        assert_eq!(got, vec![("key:t", WallMs(1), Some(WallMs(10)))]);
    }
}
