//! Upgrades and backups (SPEC section 5, README "Upgrades and backups"): migrations run
//! forward on start, a database from a newer ninjapoll is refused naming both versions, and
//! a backup taken with `VACUUM INTO` while the daemon writes is whole and restores.

use ninjapoll::State;
use ninjapoll_test_support::*;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::SqlitePool;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The highest version among the files in `migrations/` (`NNNN_name.sql`).
fn newest_migration() -> i64 {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.split('_').next()?.parse::<i64>().ok()
        })
        .max()
        .unwrap()
}

async fn open(path: &Path, read_only: bool) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .read_only(read_only),
        )
        .await
        .unwrap()
}

async fn count(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Runs `ninjapoll run --config CONFIG` and waits (10 s at most) for it to exit; its
/// status and stderr.
fn run_to_exit(config: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ninjapoll"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ninjapoll kept running on a database it should have refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_version_is_refused_naming_both_versions() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let mut d = spawn_daemon(&fake.base_url(), DaemonConfig::default()).await;
    assert_eq!(d.enqueue("p2p", "KEEP", None).await.0, 201);
    d.stop().await;
    let ours = newest_migration();
    let newer = ours + 1;
    // What a newer ninjapoll leaves: one more applied migration than we know.
    let db = open(&d.db_path(), false).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (?, 'from the future', 1, x'00', 0)",
    )
    .bind(newer)
    .execute(&db)
    .await
    .unwrap();
    db.close().await;

    let (status, stderr) = run_to_exit(d.config_path());
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("schema version {newer}"))
            && stderr.contains(&format!("up to {ours}")),
        "the refusal names both versions: {stderr}"
    );
    // Refused before writing anything: the newer version's data is as it left it.
    let db = open(&d.db_path(), true).await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM payments WHERE id = 'KEEP'").await,
        1
    );
    assert_eq!(
        count(&db, "SELECT MAX(version) FROM _sqlx_migrations").await,
        newer
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_database_is_migrated_forward_on_start() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let mut d = spawn_daemon(&fake.base_url(), DaemonConfig::default()).await;
    d.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", d.db_path().display()));
    }
    // The first release's schema: only migration 0001, applied by sqlx as that release did.
    let old = tempfile::tempdir().unwrap();
    let first = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/0001_payments.sql");
    std::fs::copy(first, old.path().join("0001_payments.sql")).unwrap();
    let db = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(d.db_path())
                .create_if_missing(true),
        )
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&db)
        .await
        .unwrap();
    let t0 = now_ms();
    sqlx::query(
        "INSERT INTO payments (kind, id, started_at, jitter_ms, created_at, updated_at, \
         next_check_at) VALUES ('p2p', 'OLD1', ?1, 100, ?1, ?1, ?1 + 100)",
    )
    .bind(t0)
    .execute(&db)
    .await
    .unwrap();
    db.close().await;

    fake.script(
        "p2p",
        "OLD1",
        Script::pending_then(Kind::P2p, 1, "approved"),
    );
    d.restart().await;
    // The payment of the old schema is polled to its end on the new one.
    let p = d.wait_final("p2p", "OLD1", Duration::from_secs(5)).await;
    assert_eq!(p.payment.facts.state, State::Succeeded, "{p:#?}");
    let db = open(&d.db_path(), true).await;
    assert_eq!(
        count(&db, "SELECT MAX(version) FROM _sqlx_migrations").await,
        newest_migration()
    );
    // The column a later migration added is filled in by the new code.
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM payments WHERE id = 'OLD1' AND pending_seen_at IS NOT NULL"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_is_whole_and_restores() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let mut d = spawn_daemon(&fake.base_url(), DaemonConfig::default()).await;
    let d_socket = d.socket_path().to_path_buf();
    // Load: batches of 20 payments, each settling after a few checks, until told to stop.
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let fake_scripts: Vec<String> = (0..4000).map(|i| format!("B{i:04}")).collect();
        for (i, id) in fake_scripts.iter().enumerate() {
            fake.script(
                "p2p",
                id,
                Script::pending_then(Kind::P2p, i % 4, "approved"),
            );
        }
        tokio::spawn(async move {
            for chunk in fake_scripts.chunks(20) {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let checks: Vec<_> = chunk
                    .iter()
                    .map(|id| json!({"kind": "p2p", "id": id}))
                    .collect();
                let (code, _) = ninjapoll::request(
                    &d_socket,
                    "POST",
                    "/v1/checks/batch",
                    Some(&json!({ "checks": checks })),
                )
                .await
                .unwrap();
                assert_eq!(code, 200);
                acked.fetch_add(chunk.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Let the load build up: payments pending, settling and firing history rows.
    while acked.load(Ordering::SeqCst) < 2000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = acked.load(Ordering::SeqCst) as i64;
    // The README's recipe, from a second process's point of view: a read-only connection.
    let copy = d.dir().join("backup.db");
    let live = open(&d.db_path(), true).await;
    let started = Instant::now();
    sqlx::query("VACUUM INTO ?")
        .bind(copy.to_string_lossy().to_string())
        .execute(&live)
        .await
        .unwrap();
    let took = started.elapsed();
    let after = acked.load(Ordering::SeqCst) as i64;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    eprintln!("VACUUM INTO took {took:?} with {before}..{after} payments acknowledged");

    let backup = open(&copy, true).await;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&backup)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    // Every payment acknowledged before the backup began is in it; nothing acknowledged
    // after it ended could be.
    let in_copy = count(&backup, "SELECT COUNT(*) FROM payments").await;
    assert!(
        (before..=after).contains(&in_copy),
        "{in_copy} payments in the copy, {before} acknowledged before, {after} after"
    );
    // A consistent snapshot: each final payment has the history row of its flip, and the
    // view reads.
    let unexplained = count(
        &backup,
        "SELECT COUNT(*) FROM payments p WHERE state != 'pending' AND NOT EXISTS \
         (SELECT 1 FROM status_history h WHERE h.payment_pk = p.pk AND h.state = p.state)",
    )
    .await;
    assert_eq!(unexplained, 0);
    let finals = count(
        &backup,
        "SELECT COUNT(*) FROM payment_states WHERE final = 1",
    )
    .await;
    assert!(
        finals > 0,
        "the load had settled payments before the backup"
    );
    backup.close().await;
    live.close().await;

    // Restore: the daemon starts on the copy and finishes what was pending in it.
    d.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", d.db_path().display()));
    }
    std::fs::rename(&copy, d.db_path()).unwrap();
    d.restart().await;
    let (_, health) = d.request("GET", "/v1/health", None).await;
    let total: i64 = health["payments"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_i64().unwrap())
        .sum();
    assert_eq!(total, in_copy, "{health:#}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, h) = d.request("GET", "/v1/health", None).await;
        if h["payments"].get("pending").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still pending after restore: {h:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
