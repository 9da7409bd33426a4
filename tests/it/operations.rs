//! What an on-call engineer relies on: the database readable by the merchant app while the
//! daemon writes, config mistakes refused at start-up, secrets kept out of logs, upstream
//! faults contained, the in-flight bound held against a hung upstream, an idle daemon idle.

use ninjapoll::State;
use ninjapoll_test_support::*;
use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};
use std::process::Command;
use std::time::{Duration, Instant};

fn started(ms: i64) -> Value {
    json!(ms as f64 / 1000.0)
}

/// The daemon's CPU time so far (user + system), from /proc.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks * 1000 / 100 // USER_HZ is 100 on Linux
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_reading_the_database_never_sees_an_error_or_a_half_state() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let d = spawn_daemon(&fake.base_url(), DaemonConfig::default()).await;
    let t0 = now_ms();
    let mut batch = Vec::new();
    for i in 0..200 {
        let id = format!("M{i:03}");
        let status = ["approved", "declined"][i % 2];
        fake.script("p2p", &id, Script::pending_then(Kind::P2p, i % 7, status));
        batch.push(json!({"kind": "p2p", "id": id, "started_at": started(t0)}));
    }
    let (code, _) = d
        .request("POST", "/v1/checks/batch", Some(json!({ "checks": batch })))
        .await;
    assert_eq!(code, 200);
    // The merchant app, another process than the daemon, reads the view while the daemon
    // commits: a fresh read-only connection per read, as a client script opens one, through
    // the SQLite library (no `sqlite3` tool needed).
    let db = d.db_path();
    let query = "SELECT state, final, finished_at IS NOT NULL, checks_done FROM payment_states";
    let mut reads = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let options = SqliteConnectOptions::new()
            .filename(&db)
            .read_only(true)
            .busy_timeout(Duration::from_secs(5));
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .unwrap_or_else(|e| panic!("the merchant app could not open the database: {e}"));
        let rows = sqlx::query(query)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("the merchant app's read failed: {e}"));
        conn.close().await.expect("close");
        let mut finals = 0;
        for row in &rows {
            let state: String = row.get(0);
            let final_: bool = row.get::<i64, _>(1) == 1;
            let finished: bool = row.get::<i64, _>(2) == 1;
            // Never half-written: final iff not pending, final iff finished_at is set.
            assert_eq!(final_, state != "pending", "{state} final={final_}");
            assert_eq!(
                final_, finished,
                "{state} final={final_} finished={finished}"
            );
            finals += usize::from(final_);
        }
        reads += 1;
        if finals == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not all final: {finals}/200");
    }
    assert!(
        reads > 3,
        "the reader overlapped the writes ({reads} reads)"
    );
}

#[test]
fn bad_config_is_refused_at_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[schedule]\nsteps = [{ every = \"0s\" }]\n",
            "schedule.steps[0].every",
        ),
        (
            "[schedule]\nfirst_check = [\"25s\", \"20s\"]\n",
            "schedule.first_check",
        ),
        ("[schedule]\ntimeout = \"10s\"\n", "schedule.timeout"),
        (
            "[ninjapay]\nbudget_requests = 0\n",
            "ninjapay.budget_requests",
        ),
        (
            "[ninjapay]\nbacklog_share = 1.0\n",
            "ninjapay.backlog_share",
        ),
        ("[kinds.x]\nmethod = \"GET\"\n", "kinds.x"),
    ];
    for (toml, key) in cases {
        let path = dir.path().join("bad.toml");
        let toml = format!(
            "[database]\npath = {:?}\n[socket]\npath = {:?}\n{toml}",
            dir.path().join("db"),
            dir.path().join("sock")
        );
        std::fs::write(&path, toml).unwrap();
        for cmd in ["run", "check-config"] {
            let out = Command::new(env!("CARGO_BIN_EXE_ninjapoll"))
                .args([cmd, "--config"])
                .arg(&path)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{cmd} accepted {key}");
            assert!(err.contains(key), "{cmd}: {err:?} does not name {key}");
        }
        assert!(
            !dir.path().join("db").exists(),
            "nothing created for a bad config"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_reaches_a_log_line_or_check_config() {
    let key = "sk_live_TOPSECRET_4242";
    let fake = FakeNinjapay::start(FakeOptions {
        api_key: "something-else".into(),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let cfg = DaemonConfig {
        api_key: key.into(),
        extra_toml: "[log]\nlevel = \"trace\"\n".into(),
        ..DaemonConfig::default()
    };
    let d = spawn_daemon(&fake.base_url(), cfg).await;
    d.enqueue("p2p", "AUTH1", None).await;
    d.wait_for(
        "p2p",
        "AUTH1",
        |p| p["last_error"].as_str().is_some_and(|e| e.contains("401")),
        Duration::from_secs(5),
    )
    .await;
    // The fake saw the key (so it was really sent), the log never did.
    assert!(fake.requests().iter().all(|r| !r.auth_ok));
    let log = d.log();
    assert!(log.contains("refuses the API key"), "{log}");
    assert!(!log.contains(key), "the key leaked into the log");
    let out = Command::new(env!("CARGO_BIN_EXE_ninjapoll"))
        .args(["check-config", "--config"])
        .arg(d.config_path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("<redacted>") && !shown.contains(key),
        "{shown}"
    );
    let (_, p) = d.payment("p2p", "AUTH1").await;
    assert!(!p.to_string().contains(key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_and_timeouts_stay_on_the_ladder() {
    // Nothing listens on the prod URL: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let d = spawn_daemon(&dead_url, DaemonConfig::default()).await;
    d.enqueue("p2p", "REFUSED", None).await;
    let p = d
        .wait_for(
            "p2p",
            "REFUSED",
            |p| p["checks_done"].as_i64() >= Some(2),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(p["state"], "pending", "{p:#}");
    assert!(
        p["last_error"]
            .as_str()
            .unwrap()
            .contains("connection failed"),
        "{p:#}"
    );
    // A provider that is down is retried on the ladder with back-off, not in a loop.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, p) = d.payment("p2p", "REFUSED").await;
    let tries = p["checks_done"].as_i64().unwrap();
    assert!(
        tries <= 30,
        "{tries} attempts in about a second against a refused port"
    );

    // An upstream that answers too late: the request timeout ends the wait.
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let cfg = DaemonConfig {
        env: vec![("NINJAPOLL_NINJAPAY__REQUEST_TIMEOUT".into(), "150ms".into())],
        ..DaemonConfig::default()
    };
    let d = spawn_daemon(&fake.base_url(), cfg).await;
    fake.script(
        "p2p",
        "SLOW",
        Script::Sequence(vec![
            Step::Hang(Duration::from_secs(5)),
            Step::Status("approved".into()),
        ]),
    );
    d.enqueue("p2p", "SLOW", None).await;
    let p = d.wait_final("p2p", "SLOW", Duration::from_secs(10)).await;
    assert_eq!(p.payment.facts.state, State::Succeeded, "{p:#?}");
    let (_, hist) = d.payment("p2p", "SLOW").await;
    assert!(hist["checks_done"].as_i64().unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_never_holds_more_than_the_in_flight_bound() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let cfg = DaemonConfig {
        env: vec![
            ("NINJAPOLL_NINJAPAY__MAX_IN_FLIGHT".into(), "2".into()),
            ("NINJAPOLL_NINJAPAY__REQUEST_TIMEOUT".into(), "400ms".into()),
        ],
        ..DaemonConfig::default()
    };
    let d = spawn_daemon(&fake.base_url(), cfg).await;
    let t0 = now_ms();
    for i in 0..8 {
        let id = format!("H{i}");
        fake.script(
            "p2p",
            &id,
            Script::Sequence(vec![Step::Hang(Duration::from_secs(10))]),
        );
        d.enqueue("p2p", &id, Some(started(t0))).await;
    }
    // Every check hangs until the 400 ms timeout: with a bound of 2, at most 2 requests
    // can have arrived in any 350 ms.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let times: Vec<i64> = fake.requests().iter().map(|r| r.unix_ms).collect();
    assert!(times.len() >= 4, "checks went on: {}", times.len());
    for (i, &t) in times.iter().enumerate() {
        let within = times[i..].iter().take_while(|&&u| u < t + 350).count();
        assert!(
            within <= 2,
            "{within} requests in flight at once: {times:?}"
        );
    }
    // The scheduler still answers while every slot is taken by a hung request.
    let (code, _) = d.request("GET", "/v1/health", None).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_uses_next_to_no_cpu() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    // The real ladder and budget: nothing is due for 20 s after an enqueue.
    let cfg = DaemonConfig {
        budget_requests: 1000,
        first_check: ("20s".into(), "25s".into()),
        steps: vec![("3s".into(), Some("30s".into())), ("1m".into(), None)],
        timeout: "10m".into(),
        ..DaemonConfig::default()
    };
    let d = spawn_daemon(&fake.base_url(), cfg).await;
    d.enqueue("p2p", "IDLE", None).await;
    let pid = d.pid().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ms(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ms(pid) - before;
    assert!(used <= 60, "an idle daemon used {used} ms of CPU in 2 s");
    assert!(fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_defined_only_in_the_config_is_polled_and_mapped() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let cfg = DaemonConfig {
        extra_toml: r#"
[kinds.fiat]
method = "GET"
url = "{prod}/sapi/v1/checkQuote"
id_field = "tid"
auth_header = "Authorization"
status_pointer = "/status"
status_map = { pending = "pending", completed = "succeeded", refunded = "refunded" }
"#
        .into(),
        ..DaemonConfig::default()
    };
    let d = spawn_daemon(&fake.base_url(), cfg).await;
    fake.script(
        "quote",
        "F1",
        Script::pending_then(Kind::Quote, 2, "REFUNDED"),
    );
    assert_eq!(d.enqueue("fiat", "F1", None).await.0, 201);
    let p = d.wait_final("fiat", "F1", Duration::from_secs(5)).await;
    assert_eq!(p.payment.facts.state, State::Refunded, "{p:#?}");
    assert_eq!(p.payment.facts.upstream_status.as_deref(), Some("REFUNDED"));
    assert_eq!(p.payment.checks_done, 3);
    let (_, metrics) = d.request("GET", "/metrics", None).await;
    let text = metrics.as_str().unwrap();
    for name in [
        "ninjapoll_upstream_requests_total{kind=\"fiat\"} 3",
        "ninjapoll_budget_used",
        "ninjapoll_price_level",
        "ninjapoll_flip_age_seconds{pool=\"default\",kind=\"fiat\",quantile=\"0.5\"}",
        "ninjapoll_expected_delay_seconds{pool=\"default\",kind=\"fiat\"}",
        "ninjapoll_check_lateness_seconds_bucket",
        "ninjapoll_pending",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
}

#[test]
fn the_demo_runs_the_whole_loop() {
    let out = Command::new(env!("CARGO_BIN_EXE_ninjapoll"))
        .args(["demo", "--payments", "4"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every kind settles, and every webhook it printed carried a valid signature.
    for kind in ["p2p", "quote", "paywall", "btc"] {
        assert!(
            text.lines()
                .any(|l| l.contains(kind) && l.contains("pending ->")),
            "{kind} never settled:\n{text}"
        );
    }
    assert!(text.contains("signature valid"), "{text}");
    assert!(!text.contains("INVALID"), "{text}");
}
