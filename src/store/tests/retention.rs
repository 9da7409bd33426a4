use crate::event::STATUS_CHANGED;
use crate::kinds::KindName;
use crate::payment::*;
use crate::store::*;

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
        account: crate::account::AccountName::default(),
        kind: KindName::parse("p2p").unwrap(),
        id: PaymentId::parse(id).unwrap(),
        started_at: WallMs(0),
        jitter_ms: 0,
        next_check_at: WallMs(0),
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
                checked_at: WallMs(at),
                upstream_status: Some(format!("raw-{id}")),
                state,
                response: None,
                error: None,
                next_check_at: (state == State::Pending).then_some(WallMs(at + 1)),
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
        at: WallMs(1),
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
            account: crate::account::AccountName::default(),
            kind: KindName::parse("p2p").unwrap(),
            id: PaymentId::parse(&format!("E{i}")).unwrap(),
            started_at: WallMs(started_at),
            jitter_ms: 0,
            next_check_at: WallMs(0),
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
            checked_at: WallMs(started_at + 5),
            upstream_status: Some("raw".into()),
            state,
            response: None,
            error: None,
            next_check_at: Some(WallMs(started_at + 6)),
            event: None,
            changed: true,
        };
        store.record_checks(&[check], &[]).await.unwrap();
    }
    let started = |rows: Vec<FinishedRow>| -> Vec<i64> {
        rows.into_iter().map(|r| r.started_at.as_ms()).collect()
    };
    let all = store
        .finished_since(WallMs(0), EVIDENCE_ROWS)
        .await
        .unwrap();
    assert_eq!(started(all), [10, 20, 30, 40, 50]);
    let latest = store.finished_since(WallMs(15), 3).await.unwrap();
    assert_eq!(started(latest), [30, 40, 50]);
    let read = Store::read_finished(&dir.path().join("t.db"), WallMs(0), 2)
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
    attempt(&store, undelivered, AttemptOutcome::Retry(WallMs(10_000))).await;

    // A batch of one takes the oldest.
    let p = store.prune_finished(WallMs(1_000), 1).await.unwrap();
    assert_eq!(
        p,
        Pruned {
            payments: 1,
            history: 1,
            events: 1,
            attempts: 1
        }
    );
    assert!(store.get("default", "p2p", "OLD1").await.unwrap().is_none());
    assert!(store.get("default", "p2p", "OLD2").await.unwrap().is_some());
    let p = store.prune_finished(WallMs(1_000), 10).await.unwrap();
    assert_eq!(p.payments, 1);
    assert_eq!(
        store.prune_finished(WallMs(1_000), 10).await.unwrap(),
        Pruned::default()
    );
    for id in ["YOUNG", "PEND", "UNDEL"] {
        assert!(
            store.get("default", "p2p", id).await.unwrap().is_some(),
            "{id} kept"
        );
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
    assert_eq!(
        store
            .prune_finished(WallMs(1_000), 10)
            .await
            .unwrap()
            .payments,
        1
    );
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
            account: crate::account::AccountName::default(),
            kind: KindName::parse("p2p").unwrap(),
            id: PaymentId::parse(&format!("P{i}")).unwrap(),
            started_at: WallMs(0),
            jitter_ms: 0,
            next_check_at: WallMs(0),
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
            checked_at: WallMs(100),
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
            .prune_finished(WallMs(1_000), crate::retention::BATCH)
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
    assert!(store.prune_finished(WallMs(1_000), 10).await.is_err());
    assert_eq!(store.write_status().failures_total, 1);
    assert!(store.write_status().failing_since.is_some());
    store
        .exec_for_test("ALTER TABLE attempts_gone RENAME TO webhook_attempts")
        .await
        .unwrap();
    assert_eq!(
        store
            .prune_finished(WallMs(1_000), 10)
            .await
            .unwrap()
            .payments,
        1
    );
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
    attempt(&store, b, AttemptOutcome::Retry(WallMs(10_000))).await;
    let now = now_ms();
    let p = store.prune_delivered(now + 1, 10).await.unwrap();
    assert_eq!((p.events, p.attempts, p.payments), (1, 1, 0));
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM webhook_events").await,
        1
    );
    assert!(store.get("default", "p2p", "A").await.unwrap().is_some());
    // A's next event is number 2, not a reused 1.
    let flip = CheckRecord {
        saw_pending: false,
        watch: None,
        pk: a,
        checked_at: WallMs(200),
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
