//! Retention (SPEC section 3, `database.keep_finished`, `webhooks.keep_delivered`) through
//! the real daemon on compressed time: finished payments go with their history, events and
//! attempts; delivered events go sooner; an event still being delivered keeps its payment;
//! and under a steady load the database file stops growing.

use ninjapoll_test_support::*;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::SqlitePool;
use std::path::Path;
use std::time::{Duration, Instant};

async fn reader(path: &Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
        .await
        .unwrap()
}

async fn count(db: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

/// The rows of payment `id` in each table: payments, history, events, attempts.
async fn rows_of(db: &SqlitePool, id: &str) -> [i64; 4] {
    let pk = format!("(SELECT pk FROM payments WHERE id = '{id}')");
    [
        count(
            db,
            &format!("SELECT COUNT(*) FROM payments WHERE id = '{id}'"),
        )
        .await,
        count(
            db,
            &format!("SELECT COUNT(*) FROM status_history WHERE payment_pk = {pk}"),
        )
        .await,
        count(
            db,
            &format!("SELECT COUNT(*) FROM webhook_events WHERE payment_pk = {pk}"),
        )
        .await,
        count(
            db,
            &format!(
                "SELECT COUNT(*) FROM webhook_attempts WHERE event_pk IN \
                 (SELECT pk FROM webhook_events WHERE payment_pk = {pk})"
            ),
        )
        .await,
    ]
}

async fn wait_rows(db: &SqlitePool, id: &str, want: [i64; 4], timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = rows_of(db, id).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{id}: rows {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Compressed: the learner's memory, twelve lifetimes of 250 ms (the ladder's timeout and
/// the budget window), is 3 s, the least `keep_finished` the configuration accepts.
fn compressed(
    receiver: &WebhookReceiver,
    keep_finished: &str,
    keep_delivered: &str,
) -> DaemonConfig {
    DaemonConfig {
        budget_window: "250ms".into(),
        timeout: "250ms".into(),
        webhooks: Some((receiver.url().to_string(), WEBHOOK_SECRET.to_string())),
        env: vec![
            (
                "NINJAPOLL_DATABASE__KEEP_FINISHED".into(),
                keep_finished.into(),
            ),
            (
                "NINJAPOLL_WEBHOOKS__KEEP_DELIVERED".into(),
                keep_delivered.into(),
            ),
        ],
        // Retention of watched payments has its own test (tests/it/reconcile.rs).
        extra_toml: "[reconcile]\nafter = []\n".into(),
        ..DaemonConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_payments_go_with_their_rows_and_delivered_events_sooner() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let receiver = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let d = spawn_daemon(&fake.base_url(), compressed(&receiver, "3s", "1s")).await;
    let db = reader(&d.db_path()).await;

    fake.script("p2p", "A", Script::pending_then(Kind::P2p, 1, "approved"));
    assert_eq!(d.enqueue("p2p", "A", None).await.0, 201);
    d.wait_final("p2p", "A", Duration::from_secs(5)).await;
    receiver.wait_deliveries(1, Duration::from_secs(5)).await;
    // B's event is never accepted: it stays pending (the next retry is 5 s away).
    receiver.fail_next(500, 1000);
    fake.script("p2p", "B", Script::pending_then(Kind::P2p, 1, "declined"));
    assert_eq!(d.enqueue("p2p", "B", None).await.0, 201);
    d.wait_final("p2p", "B", Duration::from_secs(5)).await;
    receiver.wait_deliveries(2, Duration::from_secs(5)).await;
    assert_eq!(rows_of(&db, "A").await, [1, 1, 1, 1]);

    // After keep_delivered (1 s) A's delivered event and its attempt go; A stays.
    let t = wait_rows(&db, "A", [1, 1, 0, 0], Duration::from_secs(3)).await;
    assert!(
        t > Duration::from_millis(500),
        "went after {t:?}, before its time"
    );
    let (code, p) = d.payment("p2p", "A").await;
    assert_eq!((code, p["history"].as_array().unwrap().len()), (200, 1));
    // After keep_finished (3 s) A goes entirely; B, whose event is still pending, stays.
    wait_rows(&db, "A", [0, 0, 0, 0], Duration::from_secs(5)).await;
    assert_eq!(d.payment("p2p", "A").await.0, 404);
    assert_eq!(rows_of(&db, "B").await, [1, 1, 1, 1]);
    // The kind+id can be tracked afresh.
    assert_eq!(d.enqueue("p2p", "A", None).await.0, 201);

    let (_, metrics) = d.request("GET", "/metrics", None).await;
    let text = metrics.as_str().unwrap();
    for table in [
        "payments",
        "status_history",
        "webhook_events",
        "webhook_attempts",
    ] {
        assert!(
            text.contains(&format!(
                "ninjapoll_retention_deleted_rows_total{{table=\"{table}\"}}"
            )),
            "{table}:\n{text}"
        );
    }
}

/// An hour of steady load, compressed 400× (the 1.5 s ladder stands for 10 minutes), with
/// finished payments kept 20 minutes (3 s) and delivered events half that: the database
/// file grows for one retention period, then stays flat. Prints the sizes.
///
/// Sizes are compared at the same point of each half hour: once retention has caught up
/// with what the half hour finished (no more than a retention period's payments stored),
/// so a busy machine that slows retention down moves the moment, not the figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_file_stops_growing_under_a_steady_load() {
    const COMPRESSION: f64 = 400.0;
    const HALF_HOUR: Duration = Duration::from_millis(4_500); // 1800 s / 400
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let receiver = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let d = spawn_daemon(&fake.base_url(), compressed(&receiver, "3s", "1500ms")).await;
    let socket = d.socket_path().to_path_buf();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let wal = d.dir().join("ninjapoll.db-wal");
    let db = reader(&d.db_path()).await;

    let start = Instant::now();
    let mut samples: Vec<(Duration, u64, u64)> = Vec::new();
    let mut n = 0usize;
    let mut settled = Vec::new();
    for half in 1..=2u32 {
        // 25 payments every 100 ms (250/s, or 0.6 per simulated second), each settling
        // after 0–3 pending checks with a webhook.
        while start.elapsed() < HALF_HOUR * half {
            let checks: Vec<_> = (0..25)
                .map(|_| {
                    let id = format!("L{n:06}");
                    let status = ["approved", "declined"][n % 2];
                    fake.script("p2p", &id, Script::pending_then(Kind::P2p, n % 4, status));
                    n += 1;
                    json!({"kind": "p2p", "id": id, "metadata": {"order": n, "note": "steady load"}})
                })
                .collect();
            let (code, _) = ninjapoll::request(
                &socket,
                "POST",
                "/v1/checks/batch",
                Some(&json!({ "checks": checks })),
            )
            .await
            .unwrap();
            assert_eq!(code, 200);
            samples.push((start.elapsed(), size(&d.db_path()), size(&wal)));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Caught up: at most a retention period (3 s) of payments, plus margin, stored.
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let stored = count(&db, "SELECT COUNT(*) FROM payments").await;
            if stored <= 1_000 || Instant::now() > until {
                settled.push((stored, size(&d.db_path())));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!("simulated minute | database bytes | WAL bytes");
    let mut next = Duration::ZERO;
    for (at, db, w) in &samples {
        if *at >= next {
            eprintln!(
                "{:>4.0} | {db:>10} | {w:>9}",
                at.as_secs_f64() * COMPRESSION / 60.0
            );
            next += HALF_HOUR / 6;
        }
    }
    let wal_max = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let [(kept_half, half), (kept_end, end)] = settled[..] else {
        panic!("two samples: {settled:?}");
    };
    eprintln!(
        "{n} payments; database after 30 min {half} bytes ({kept_half} stored), after 60 min \
         {end} bytes ({kept_end} stored); WAL at most {wal_max} bytes"
    );
    assert!(
        kept_end <= 1_000,
        "retention did not catch up: {kept_end} stored"
    );
    // The second half hour adds as many payments again, and (almost) no bytes. The WAL is
    // bounded by checkpoints, whatever retention does.
    assert!(
        end as f64 <= half as f64 * 1.15,
        "the database grew from {half} to {end} bytes in the second half hour"
    );
    assert!(wal_max <= 8 << 20, "the WAL reached {wal_max} bytes");
}

/// `0` keeps everything, and is accepted as the environment gives it (a bare number).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_from_the_environment_keeps_everything() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let receiver = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let d = spawn_daemon(&fake.base_url(), compressed(&receiver, "0", "0")).await;
    let db = reader(&d.db_path()).await;
    fake.script("p2p", "K", Script::pending_then(Kind::P2p, 0, "approved"));
    assert_eq!(d.enqueue("p2p", "K", None).await.0, 201);
    d.wait_final("p2p", "K", Duration::from_secs(5)).await;
    receiver.wait_deliveries(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_rows(&db, "K", [1, 1, 1, 1], Duration::from_secs(1)).await;
}
