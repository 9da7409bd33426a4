//! The tool as scripts/sqlx-prepare runs it: a fresh database with every migration applied,
//! and a refusal to touch an existing file.

use sqlx::{ConnectOptions, Connection};
use std::path::{Path, PathBuf};
use std::process::Command;

fn migrations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations")
}

fn run(db: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ninjapoll-dev-db"))
        .arg(migrations())
        .arg(db)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running ninjapoll-dev-db")
}

#[test]
fn makes_a_database_at_the_newest_schema_and_refuses_an_existing_one() {
    let dir = std::env::temp_dir().join(format!("ninjapoll-dev-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("schema.db");
    let _ = std::fs::remove_file(&db);

    let out = run(&db);
    assert!(out.status.success(), "{out:?}");

    let mut files: Vec<i64> = std::fs::read_dir(migrations())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.split('_').next()?.parse().ok()
        })
        .collect();
    files.sort_unstable();
    let applied: Vec<i64> = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&db)
                .read_only(true)
                .connect()
                .await
                .unwrap();
            let versions = sqlx::query_scalar(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            // The tables the queries name are there.
            let tables: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN \
                 ('payments', 'status_history', 'upstream_requests', 'webhook_events', \
                  'webhook_attempts')",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert_eq!(tables, 5);
            conn.close().await.unwrap();
            versions
        });
    assert!(!files.is_empty());
    assert_eq!(applied, files);

    // A second run would migrate a database that is not a scratch one: refused.
    let again = run(&db);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{again:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
