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
