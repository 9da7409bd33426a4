use crate::event::STATUS_CHANGED;
use crate::kinds::KindName;
use crate::payment::*;
use crate::store::*;
use std::path::Path;

async fn store_with_events(dir: &Path, events_a: usize) -> (Store, PaymentKey, PaymentKey) {
    let store = Store::open(&dir.join("t.db"), Some("http://127.0.0.1:1/h".into()))
        .await
        .unwrap();
    let new = |id: &str| NewPayment {
        account: crate::account::AccountName::default(),
        kind: KindName::parse("p2p").unwrap(),
        id: PaymentId::parse(id).unwrap(),
        started_at: WallMs(0),
        jitter_ms: 0,
        next_check_at: WallMs(0),
        callback_url: None,
        metadata: None,
    };
    let rows = store.insert_payments(&[new("A"), new("B")]).await.unwrap();
    let (a, b) = (rows[0].0.pk, rows[1].0.pk);
    let flip = |pk: PaymentKey, raw: &str, at: i64| CheckRecord {
        saw_pending: false,
        watch: None,
        pk,
        checked_at: WallMs(at),
        upstream_status: Some(raw.into()),
        state: State::Pending,
        response: None,
        error: None,
        next_check_at: Some(WallMs(at + 1)),
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
        at: WallMs(at),
        status_code: Some(500),
        error: Some("HTTP 500".into()),
        latency_ms: 1,
    }
}

#[tokio::test]
async fn heads_are_one_per_payment_and_skip_busy_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (store, a, b) = store_with_events(dir.path(), 2).await;
    let heads = store
        .webhook_heads(&[], &[&crate::account::AccountName::default()], 10)
        .await
        .unwrap();
    let got: Vec<(PaymentKey, i64)> = heads.iter().map(|e| (e.payment_pk, e.sequence)).collect();
    assert_eq!(got, vec![(a, 1), (b, 1)]);
    let heads = store
        .webhook_heads(&[a], &[&crate::account::AccountName::default()], 10)
        .await
        .unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].payment_pk, b);

    // A's first event retrying later: its second still waits behind it.
    let first = store
        .webhook_heads(&[], &[&crate::account::AccountName::default()], 1)
        .await
        .unwrap()
        .remove(0);
    store
        .record_webhook_attempt(
            first.pk,
            0,
            &failed(20),
            AttemptOutcome::Retry(WallMs(5_000)),
        )
        .await
        .unwrap();
    let heads = store
        .webhook_heads(&[], &[&crate::account::AccountName::default()], 10)
        .await
        .unwrap();
    let got: Vec<(PaymentKey, i64, i64)> = heads
        .iter()
        .map(|e| (e.payment_pk, e.sequence, e.next_attempt_at.as_ms()))
        .collect();
    assert_eq!(got, vec![(b, 1, 100), (a, 1, 5_000)]);
    assert_eq!(heads[1].attempts, 1);
    assert_eq!(heads[1].last_status_code, Some(500));

    // Dead: the next event of the payment moves up.
    store
        .record_webhook_attempt(first.pk, 0, &failed(30), AttemptOutcome::Dead)
        .await
        .unwrap();
    let heads = store
        .webhook_heads(&[b], &[&crate::account::AccountName::default()], 10)
        .await
        .unwrap();
    assert_eq!((heads[0].payment_pk, heads[0].sequence), (a, 2));
    assert_eq!(store.webhook_attempts(first.pk).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_replay_starts_a_fresh_schedule_and_survives_a_late_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _) = store_with_events(dir.path(), 1).await;
    let ev = store
        .webhook_heads(&[], &[&crate::account::AccountName::default()], 1)
        .await
        .unwrap()
        .remove(0);
    store
        .record_webhook_attempt(ev.pk, 0, &failed(20), AttemptOutcome::Dead)
        .await
        .unwrap();
    let dead = store.webhook(&ev.event_id).await.unwrap().unwrap();
    assert_eq!((dead.state.as_str(), dead.attempts), ("dead", 1));

    let replayed = store
        .replay_webhook(&ev.event_id, WallMs(1_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replayed.state, WebhookState::Pending);
    assert_eq!(
        (replayed.retry_from, replayed.next_attempt_at.as_ms()),
        (1, 1_000)
    );
    assert!(store
        .replay_webhook("msg_none", WallMs(0))
        .await
        .unwrap()
        .is_none());

    // An attempt started before the replay fails late: the replay's plan stands.
    store
        .record_webhook_attempt(ev.pk, 0, &failed(1_001), AttemptOutcome::Dead)
        .await
        .unwrap();
    let e = store.webhook(&ev.event_id).await.unwrap().unwrap();
    assert_eq!(
        (e.state.as_str(), e.next_attempt_at.as_ms(), e.attempts),
        ("pending", 1_000, 2)
    );
    // ...but a success still counts.
    let ok = WebhookAttempt {
        at: WallMs(1_002),
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
