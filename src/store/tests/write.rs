use super::super::open::WAL_KEEP;
use super::super::payments::list_sql;
use crate::kinds::KindName;
use crate::payment::*;
use crate::store::*;
use serde_json::Value;
use sqlx::Row;

fn payment(id: &str, metadata: Option<Value>) -> NewPayment {
    NewPayment {
        account: crate::account::AccountName::default(),
        kind: KindName::parse("p2p").unwrap(),
        id: PaymentId::parse(id).unwrap(),
        started_at: WallMs(0),
        jitter_ms: 0,
        next_check_at: WallMs(0),
        callback_url: None,
        metadata,
    }
}

#[tokio::test]
async fn a_state_listing_walks_the_state_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db"), None).await.unwrap();
    let f = ListFilter {
        state: Some(State::Succeeded),
        limit: 10,
        ..Default::default()
    };
    let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {}", list_sql(&f)))
        .bind(0)
        .bind("succeeded")
        .bind(10)
        .fetch_all(&store.read)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("detail"))
        .collect();
    assert!(
        plan.iter().any(|d| d.contains("payments_state_pk")),
        "{plan:?}"
    );
    // And it answers what it should.
    store
        .insert_payments(&[payment("A", None), payment("B", None)])
        .await
        .unwrap();
    let all = store
        .list(&ListFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let pending = store
        .list(&ListFilter {
            state: Some(State::Pending),
            account: Some(crate::account::AccountName::default()),
            kind: Some(KindName::parse("p2p").unwrap()),
            after_pk: Some(all[0].pk),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        pending.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["B"]
    );
    assert!(store.list(&f).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_wal_shrinks_after_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db"), None).await.unwrap();
    let meta = serde_json::json!({ "note": "x".repeat(4000) });
    for batch in 0..4 {
        let new: Vec<NewPayment> = (0..800)
            .map(|i| payment(&format!("B{batch}-{i}"), Some(meta.clone())))
            .collect();
        store.insert_payments(&new).await.unwrap();
    }
    let wal = || std::fs::metadata(dir.path().join("t.db-wal")).map_or(0, |m| m.len());
    assert!(wal() > WAL_KEEP, "the burst grew the WAL: {}", wal());
    store.maintain(WallMs(0)).await.unwrap();
    assert!(wal() <= WAL_KEEP, "after housekeeping: {} bytes", wal());
    // Idle since: the next housekeeping truncates it to nothing.
    store.insert_payments(&[payment("C", None)]).await.unwrap();
    store.maintain(WallMs(0)).await.unwrap();
    store.maintain(WallMs(0)).await.unwrap();
    assert_eq!(wal(), 0);
    assert_eq!(store.write_status(), WriteStatus::default());
}

async fn get_d(store: &Store) -> crate::store::PaymentRow {
    store.get("default", "p2p", "D").await.unwrap().unwrap()
}

/// The checks that only move a pending payment on go a run at a time: each is written as
/// alone, a payment no longer pending is skipped, one checked twice in a group counts
/// twice, a change among them is written with its history wherever it stands; the ledger
/// rows come back in order and are closed together.
#[tokio::test]
async fn a_group_of_checks_is_written_as_each_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db"), None).await.unwrap();
    let rows = store
        .insert_payments(&[
            payment("A", None),
            payment("B", None),
            payment("C", None),
            payment("D", None),
        ])
        .await
        .unwrap();
    let pk: Vec<PaymentKey> = rows.iter().map(|(r, _)| r.pk).collect();
    store.cancel("default", "p2p", "C").await.unwrap();
    let keys = store
        .ledger_send(&[
            ("p".into(), WallMs(1)),
            ("p".into(), WallMs(2)),
            ("p".into(), WallMs(3)),
        ])
        .await
        .unwrap();
    assert_eq!(keys.len(), 3);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    let check = |pk, at: i64, status: Option<&str>, error: Option<&str>| CheckRecord {
        pk,
        checked_at: WallMs(at),
        upstream_status: status.map(String::from),
        state: State::Pending,
        response: status.map(|s| format!("{{\"status\":\"{s}\"}}")),
        error: error.map(String::from),
        next_check_at: Some(WallMs(at + 100)),
        event: None,
        changed: false,
        saw_pending: status.is_some(),
        watch: None,
    };
    let applied = store
        .record_checks(
            &[
                check(pk[0], 10, Some("pending"), None),
                check(pk[1], 30, None, Some("timeout")),
                CheckRecord {
                    state: State::Succeeded,
                    changed: true,
                    next_check_at: None,
                    ..check(pk[3], 25, Some("success"), None)
                },
                check(pk[0], 20, Some("waiting"), None),
                check(pk[2], 20, Some("pending"), None),
            ],
            &[(keys[0], WallMs(40)), (keys[1], WallMs(50))],
        )
        .await
        .unwrap();
    let updated = Applied::Updated {
        event_queued: false,
    };
    assert_eq!(
        applied,
        [
            updated.clone(),
            updated.clone(),
            updated.clone(),
            updated,
            Applied::Skipped
        ]
    );
    let d = get_d(&store).await;
    assert_eq!((d.state, d.checks_done), (State::Succeeded, 1));
    assert_eq!(d.upstream_status.as_deref(), Some("success"));
    assert_eq!(
        store.history(pk[3]).await.unwrap(),
        [(
            WallMs(25),
            "pending".to_string(),
            "succeeded".to_string(),
            Some("success".to_string())
        )]
    );
    // The unchanged ones leave no history; the one skipped only its cancel's.
    for p in [pk[0], pk[1]] {
        assert_eq!(store.history(p).await.unwrap(), []);
    }
    assert_eq!(store.history(pk[2]).await.unwrap().len(), 1);
    let get = |id: &'static str| store.get("default", "p2p", id);
    let a = get("A").await.unwrap().unwrap();
    assert_eq!(a.checks_done, 2);
    assert_eq!(a.upstream_status.as_deref(), Some("waiting"));
    assert_eq!(a.response.as_deref(), Some("{\"status\":\"waiting\"}"));
    assert_eq!(a.last_checked_at, Some(WallMs(20)));
    assert_eq!(a.next_check_at, Some(WallMs(120)));
    assert_eq!((a.state, a.last_error), (State::Pending, None));
    let b = get("B").await.unwrap().unwrap();
    assert_eq!(b.checks_done, 1);
    assert_eq!(b.last_error.as_deref(), Some("timeout"));
    assert_eq!((b.upstream_status, b.response), (None, None));
    let c = get("C").await.unwrap().unwrap();
    assert_eq!((c.state, c.checks_done), (State::Cancelled, 0));
    let ledger = store.ledger_newest(10).await.unwrap();
    let done: Vec<Option<WallMs>> = ledger.iter().map(|r| r.done_at).collect();
    assert_eq!(done, [Some(WallMs(40)), Some(WallMs(50)), None]);
}
