//! Accounts (SPEC sections 3–7) end to end: the real binary with two Ninjapay accounts
//! against one fake that knows both keys, each account's webhooks at a receiver of its own
//! that verifies with that account's secret.
//!
//! Time is the harness's compressed ladder (first check at 100–120 ms, timeout 1.5 s).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ninjapoll_test_support::*;
use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::SqlitePool;

/// Bound of every wait; the cases themselves take a fraction of it.
const WAIT: Duration = Duration::from_secs(10);
/// The account `default`'s key (`[ninjapay]`).
const KEY: &str = "fake-api-key";
/// The account `shop2`'s key.
const SHOP2_KEY: &str = "shop2-api-key";
/// The account `shop2`'s webhook secret (not the default's [`WEBHOOK_SECRET`]).
const SHOP2_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Two accounts: `default` (`[ninjapay]`, `[webhooks]` to `default_url`) and `shop2` (its own
/// key, its webhooks to `shop2_url` signed with [`SHOP2_SECRET`]); `webhooks` holds extra
/// lines of `[webhooks]` (retry, timeout, max_in_flight).
fn two_accounts(
    default_url: Option<&str>,
    shop2_url: Option<&str>,
    webhooks: &str,
) -> DaemonConfig {
    let q = |s: &str| format!("{s:?}");
    let mut t = format!("[webhooks]\nsecret = {}\n{webhooks}\n", q(WEBHOOK_SECRET));
    if let Some(u) = default_url {
        t += &format!("url = {}\n", q(u));
    }
    t += &format!("\n[accounts.shop2]\napi_key = {}\n", q(SHOP2_KEY));
    t += &format!(
        "\n[accounts.shop2.webhooks]\nsecret = {}\n",
        q(SHOP2_SECRET)
    );
    if let Some(u) = shop2_url {
        t += &format!("url = {}\n", q(u));
    }
    DaemonConfig {
        api_key: KEY.into(),
        extra_toml: t,
        ..DaemonConfig::default()
    }
}

/// A fake that accepts both accounts' keys.
async fn fake() -> FakeNinjapay {
    FakeNinjapay::start(FakeOptions {
        api_key: KEY.into(),
        accounts: vec![SHOP2_KEY.into()],
        ..FakeOptions::default()
    })
    .await
    .unwrap()
}

/// Polls `GET {path}` until `pred` holds for a 200 answer; panics after [`WAIT`].
async fn wait_api(d: &Daemon, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    d.wait_get(path, pred, WAIT).await
}

/// `POST /v1/checks` of `id` (p2p) in `account`.
async fn enqueue_in(d: &Daemon, account: &str, id: &str) -> (u16, Value) {
    d.request(
        "POST",
        "/v1/checks",
        Some(json!({"account": account, "kind": "p2p", "id": id})),
    )
    .await
}

async fn open_db(path: &Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
        .await
        .unwrap()
}

/// `ninjapoll ARGS…` with `env`: (exit success, stdout, stderr).
async fn cli(args: Vec<String>, env: Vec<(String, String)>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ninjapoll"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("NINJAPOLL_") {
                c.env_remove(k);
            }
        }
        let out = c.args(args).envs(env).output().expect("run ninjapoll");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("cli task")
}

/// A client command against `d`'s socket.
async fn client(d: &Daemon, args: &[&str]) -> (bool, String, String) {
    let mut all = vec![
        "--socket".to_owned(),
        d.socket_path().to_string_lossy().into_owned(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    cli(all, Vec::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_in_two_accounts_is_two_payments_each_checked_and_signed_as_its_own() {
    let rx_default = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let rx_shop2 = WebhookReceiver::start(SHOP2_SECRET).await;
    let fake = fake().await;
    let d = spawn_daemon(
        &fake.base_url(),
        two_accounts(Some(rx_default.url()), Some(rx_shop2.url()), ""),
    )
    .await;
    // One id, two accounts, two outcomes: only the account's own key sees its script.
    fake.script("p2p", "P1", Script::pending_then(Kind::P2p, 1, "approved"));
    fake.script_for_key(
        SHOP2_KEY,
        "p2p",
        "P1",
        Script::pending_then(Kind::P2p, 2, "declined"),
    );

    let (code, a) = enqueue_in(&d, "default", "P1").await;
    assert_eq!(code, 201, "{a}");
    assert_eq!(a["account"], "default", "{a}");
    let (code, b) = d
        .request(
            "POST",
            "/v1/checks",
            Some(json!({"account": "shop2", "kind": "p2p", "id": "P1", "metadata": {"shop": 2}})),
        )
        .await;
    assert_eq!(code, 201, "a second payment, not the first one again: {b}");
    assert_eq!(b["account"], "shop2", "{b}");
    // Idempotent per account: enqueuing shop2's again is the same payment.
    let (code, again) = d
        .request(
            "POST",
            "/v1/checks",
            Some(json!({"account": "shop2", "kind": "p2p", "id": "P1", "metadata": {"shop": 2}})),
        )
        .await;
    assert_eq!(code, 200, "{again}");

    let fin_default = d.wait_final("p2p", "P1", WAIT).await;
    let fin_shop2 = wait_api(&d, "/v1/checks/p2p/P1?account=shop2", |p| {
        p["final"] == true
    })
    .await;
    assert_eq!(fin_default.payment.facts.state, ninjapoll::State::Succeeded);
    assert_eq!(fin_default.payment.facts.account.as_str(), "default");
    assert_eq!(fin_shop2["state"], "failed", "{fin_shop2:#}");
    assert_eq!(fin_shop2["account"], "shop2", "{fin_shop2:#}");
    assert_eq!(fin_shop2["upstream_status"], "declined", "{fin_shop2:#}");
    assert_eq!(fin_shop2["metadata"], json!({"shop": 2}), "{fin_shop2:#}");
    // The default's payment read without ?account= and with ?account=default is the same.
    let (code, explicit) = d
        .request("GET", "/v1/checks/p2p/P1?account=default", None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(explicit["state"], "succeeded", "{explicit:#}");

    // Every request of each payment carried its own account's key: the default's 2 checks
    // (1 pending + the flip) with the default key, shop2's 3 with shop2's.
    let reqs = fake.requests_for("p2p", "P1");
    assert!(
        reqs.iter().all(|r| r.auth_ok && r.status == 200),
        "{reqs:#?}"
    );
    let with = |key: &str| {
        reqs.iter()
            .filter(|r| r.key.as_deref() == Some(key))
            .count()
    };
    assert_eq!(with(KEY), 2, "{reqs:#?}");
    assert_eq!(with(SHOP2_KEY), 3, "{reqs:#?}");
    assert_eq!(with(KEY) + with(SHOP2_KEY), reqs.len(), "{reqs:#?}");
    assert_eq!(fin_shop2["checks_done"], 3, "{fin_shop2:#}");

    // Each account's event at its own receiver, verified with its own secret.
    let got_default = rx_default.wait_deliveries(1, WAIT).await;
    let got_shop2 = rx_shop2.wait_deliveries(1, WAIT).await;
    for (got, account, state) in [
        (&got_default, "default", "succeeded"),
        (&got_shop2, "shop2", "failed"),
    ] {
        assert_eq!(got.len(), 1, "{account}: {got:#?}");
        assert!(
            got[0].verified,
            "{account}'s event signed with its secret: {got:#?}"
        );
        let data = &got[0].body["data"];
        assert_eq!(data["account"], account, "{data:#}");
        assert_eq!(data["id"], "P1", "{data:#}");
        assert_eq!(data["state"], state, "{data:#}");
    }
    // Signed with its own account's secret only: the other account's does not verify it.
    for (got, other) in [(&got_default, SHOP2_SECRET), (&got_shop2, WEBHOOK_SECRET)] {
        let other = standardwebhooks::Webhook::new(other).unwrap();
        assert!(
            other.verify(&got[0].raw_body, &got[0].headers).is_err(),
            "{got:#?}"
        );
    }

    // Listings by account.
    let (_, list) = d.request("GET", "/v1/checks?account=shop2", None).await;
    let payments = list["payments"].as_array().unwrap();
    assert_eq!(payments.len(), 1, "{list:#}");
    assert_eq!(payments[0]["account"], "shop2", "{list:#}");
    let (_, list) = d.request("GET", "/v1/checks?account=default", None).await;
    let payments = list["payments"].as_array().unwrap();
    assert_eq!(payments.len(), 1, "{list:#}");
    assert_eq!(payments[0]["account"], "default", "{list:#}");
    let (_, all) = d.request("GET", "/v1/checks", None).await;
    assert_eq!(all["payments"].as_array().unwrap().len(), 2, "{all:#}");
    let events = wait_api(&d, "/v1/webhooks?account=shop2&state=delivered", |v| {
        v["webhooks"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    assert_eq!(
        events["webhooks"][0]["payment"],
        json!({"account": "shop2", "kind": "p2p", "id": "P1"}),
        "{events:#}"
    );

    // Cancel and recheck name the account too.
    fake.script("p2p", "C1", Script::Sequence(vec![]));
    fake.script_for_key(SHOP2_KEY, "p2p", "C1", Script::Sequence(vec![]));
    assert_eq!(enqueue_in(&d, "default", "C1").await.0, 201);
    assert_eq!(enqueue_in(&d, "shop2", "C1").await.0, 201);
    let (code, c) = d
        .request("DELETE", "/v1/checks/p2p/C1?account=shop2", None)
        .await;
    assert_eq!((code, c["state"].clone()), (200, json!("cancelled")), "{c}");
    let (_, c_default) = d.payment("p2p", "C1").await;
    assert_eq!(c_default["state"], "pending", "{c_default}");
    let (code, r) = d
        .request("POST", "/v1/checks/p2p/C1/recheck?account=shop2", None)
        .await;
    assert_eq!(code, 409, "{r}");
    let (code, r) = d.request("POST", "/v1/checks/p2p/C1/recheck", None).await;
    assert_eq!(code, 202, "{r}");
    // The CLI's --account.
    let (ok, out, err) = client(&d, &["--account", "shop2", "--json", "status", "p2p", "C1"]).await;
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (shown["account"].clone(), shown["state"].clone()),
        (json!("shop2"), json!("cancelled")),
        "{out}"
    );

    // The view a merchant app reads has the account.
    let db = open_db(&d.db_path()).await;
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT account, id, state FROM payment_states ORDER BY id, account")
            .fetch_all(&db)
            .await
            .unwrap();
    let want = [
        ("default", "C1", "pending"),
        ("shop2", "C1", "cancelled"),
        ("default", "P1", "succeeded"),
        ("shop2", "P1", "failed"),
    ];
    let rows: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(a, i, s)| (a.as_str(), i.as_str(), s.as_str()))
        .collect();
    assert_eq!(rows, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_account_is_refused_and_nothing_is_stored() {
    let fake = fake().await;
    let d = spawn_daemon(&fake.base_url(), two_accounts(None, None, "")).await;
    fake.script("p2p", "OK1", Script::Sequence(vec![]));
    for account in ["nope", "", "Shop2", "default "] {
        let (code, v) = enqueue_in(&d, account, "U1").await;
        assert_eq!(code, 400, "{account:?}: {v}");
        assert_eq!(v["error"]["code"], "unknown_account", "{account:?}: {v}");
    }
    let (code, v) = d
        .request(
            "POST",
            "/v1/checks/batch",
            Some(json!({"checks": [
                {"kind": "p2p", "id": "OK1"},
                {"account": "nope", "kind": "p2p", "id": "U2"},
            ]})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["results"][0]["status"], 201, "{v}");
    assert_eq!(v["results"][1]["status"], 400, "{v}");
    assert_eq!(v["results"][1]["error"]["code"], "unknown_account", "{v}");
    for (method, path) in [
        ("GET", "/v1/checks/p2p/OK1?account=nope"),
        ("DELETE", "/v1/checks/p2p/OK1?account=nope"),
        ("POST", "/v1/checks/p2p/OK1/recheck?account=nope"),
        ("GET", "/v1/checks?account=nope"),
    ] {
        let (code, v) = d.request(method, path, None).await;
        assert_eq!(code, 400, "{method} {path}: {v}");
        assert_eq!(
            v["error"]["code"], "unknown_account",
            "{method} {path}: {v}"
        );
    }
    // The CLI says so and fails.
    let (ok, _, err) = client(&d, &["--account", "nope", "enqueue", "p2p", "U3"]).await;
    assert!(!ok);
    assert!(err.contains("unknown account"), "{err}");
    // The default's payment was not cancelled by the refused DELETE; nothing else stored.
    let (_, p) = d.payment("p2p", "OK1").await;
    assert_eq!(p["state"], "pending", "{p}");
    let db = open_db(&d.db_path()).await;
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT account, id FROM payments")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(rows, vec![("default".to_owned(), "OK1".to_owned())]);
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.ids.iter().all(|i| i == "OK1")));
}

/// One account's key is locked out or refused; the other's payments go on at the ladder's
/// pace: every one is checked as planned and settles on its flip, never times out.
async fn the_other_account_goes_on_while(fault: Fault) {
    let fake = fake().await;
    let config = two_accounts(None, None, "");
    let ladder = config.ladder();
    let (_, first_max) = config.first_check_ms();
    let d = spawn_daemon(&fake.base_url(), config).await;
    fake.set_key_fault(SHOP2_KEY, Some(fault.clone()));
    // shop2's payments first, so that they are due first.
    for i in 0..20 {
        let id = format!("S{i}");
        fake.script_for_key(
            SHOP2_KEY,
            "p2p",
            &id,
            Script::pending_then(Kind::P2p, 1, "approved"),
        );
        assert_eq!(enqueue_in(&d, "shop2", &id).await.0, 201);
    }
    // shop2's key is answered with the fault from its first request.
    let deadline = Instant::now() + WAIT;
    while fake.requests_with_key(SHOP2_KEY).is_empty() {
        assert!(Instant::now() < deadline, "shop2's payments never checked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut enqueued = Vec::new();
    for i in 0..10 {
        let id = format!("D{i}");
        // Settles at the 6th check: well inside the ladder (20 ms apart after the first).
        fake.script("p2p", &id, Script::pending_then(Kind::P2p, 5, "approved"));
        assert_eq!(enqueue_in(&d, "default", &id).await.0, 201);
        enqueued.push((id, now_ms()));
    }
    for (id, at) in &enqueued {
        let fin = d.wait_final("p2p", id, WAIT).await;
        assert_eq!(
            fin.payment.facts.state,
            ninjapoll::State::Succeeded,
            "{fin:#?}"
        );
        // The first check on time, and the 6 checks within the ladder's 6 first steps
        // (with room for a slow machine, far below a stalled pool's wait).
        let reqs = fake.requests_for("p2p", id);
        assert_eq!(reqs.len(), 6, "{id}: {reqs:#?}");
        assert!(reqs.iter().all(|r| r.key.as_deref() == Some(KEY)));
        let first = reqs[0].unix_ms - at;
        assert!(
            first <= first_max + 300,
            "{id}: first check {first} ms after enqueue"
        );
        let planned_sixth = ladder.plan(first_max)[5];
        let last = reqs[5].unix_ms - at;
        assert!(
            last <= planned_sixth + 500,
            "{id}: 6th check at {last} ms, planned by {planned_sixth} ms"
        );
    }
    // shop2 is held back by its own fault, not hammered: its pool waits.
    let shop2 = fake.requests_with_key(SHOP2_KEY);
    assert!(
        shop2.iter().all(|r| r.status == 429 || r.status == 401),
        "{shop2:#?}"
    );
    assert!(
        shop2.len() <= 20,
        "{} requests on a faulty key",
        shop2.len()
    );
    for i in 0..20 {
        let (_, p) = d
            .request("GET", &format!("/v1/checks/p2p/S{i}?account=shop2"), None)
            .await;
        assert_ne!(p["state"], "succeeded", "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_locked_out_does_not_delay_the_others_checks() {
    the_other_account_goes_on_while(Fault::Status {
        code: 429,
        retry_after: Some("3600".into()),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_refused_does_not_delay_the_others_checks() {
    the_other_account_goes_on_while(Fault::Status {
        code: 401,
        retry_after: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_accounts_hanging_receiver_does_not_delay_the_others_events() {
    let rx_default = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let rx_shop2 = WebhookReceiver::start(SHOP2_SECRET).await;
    // shop2's receiver takes every delivery and never answers within the test.
    rx_shop2.hang_next(Duration::from_secs(120), 10_000);
    let fake = fake().await;
    let timeout = Duration::from_secs(8);
    let d = spawn_daemon(
        &fake.base_url(),
        two_accounts(
            Some(rx_default.url()),
            Some(rx_shop2.url()),
            "timeout = \"8s\"\nmax_in_flight = 2\nretry = [\"50ms\"]\n",
        ),
    )
    .await;
    for i in 0..6 {
        let id = format!("S{i}");
        fake.script_for_key(
            SHOP2_KEY,
            "p2p",
            &id,
            Script::pending_then(Kind::P2p, 0, "approved"),
        );
        assert_eq!(enqueue_in(&d, "shop2", &id).await.0, 201);
    }
    // shop2's deliveries are stuck (as many as it may have in flight).
    rx_shop2.wait_deliveries(2, WAIT).await;
    let start = Instant::now();
    for i in 0..6 {
        let id = format!("D{i}");
        fake.script("p2p", &id, Script::pending_then(Kind::P2p, 0, "approved"));
        assert_eq!(enqueue_in(&d, "default", &id).await.0, 201);
    }
    let got = rx_default.wait_deliveries(6, WAIT).await;
    let took = start.elapsed();
    assert!(
        took < timeout,
        "the default's events waited {took:?}, as long as shop2's hanging attempts"
    );
    assert!(
        got.iter().all(|g| g.verified && g.answered == 200),
        "{got:#?}"
    );
    let mut ids: Vec<_> = got
        .iter()
        .map(|g| g.body["data"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["D0", "D1", "D2", "D3", "D4", "D5"]);
    assert!(got.iter().all(|g| g.body["data"]["account"] == "default"));
    // shop2's attempts are still hanging: none timed out yet, none beyond its own cap.
    let stuck = rx_shop2.deliveries();
    assert_eq!(stuck.len(), 2, "shop2 has 2 attempts in flight: {stuck:#?}");
    let (_, pending) = d
        .request("GET", "/v1/webhooks?account=shop2&state=delivered", None)
        .await;
    assert_eq!(pending["webhooks"], json!([]), "{pending:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_accounts_migrates_with_every_row_in_default() {
    let fake = fake().await;
    let rx = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let mut d = spawn_daemon(&fake.base_url(), two_accounts(Some(rx.url()), None, "")).await;
    d.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", d.db_path().display()));
    }
    // The schema of the release before accounts: every migration before 0009.
    let old = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.as_str() < "0009" {
            std::fs::copy(e.path(), old.path().join(&name)).unwrap();
        }
    }
    let db = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(d.db_path())
                .create_if_missing(true)
                .foreign_keys(true),
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
    // A pending payment, and a finished one with its history, its event and an attempt.
    for sql in [
        "INSERT INTO payments (pk, kind, id, started_at, jitter_ms, created_at, updated_at, \
         next_check_at) VALUES (1, 'p2p', 'OLD1', ?1, 100, ?1, ?1, ?1 + 100)",
        "INSERT INTO payments (pk, kind, id, state, upstream_status, started_at, jitter_ms, \
         created_at, updated_at, checks_done, last_checked_at, finished_at, event_seq, \
         ended_state) VALUES (2, 'p2p', 'OLD2', 'succeeded', 'approved', ?1 - 5000, 100, \
         ?1 - 5000, ?1 - 4000, 2, ?1 - 4000, ?1 - 4000, 1, 'succeeded')",
        "INSERT INTO status_history (payment_pk, at, previous_state, state, \
         previous_upstream_status, upstream_status) VALUES (2, ?1 - 4000, 'pending', \
         'succeeded', 'pending', 'approved')",
        "INSERT INTO webhook_events (pk, event_id, payment_pk, sequence, type, url, body, \
         created_at, state, attempts, next_attempt_at, delivered_at) VALUES (7, 'evt_old2', 2, \
         1, 'payment.status_changed', 'http://127.0.0.1:9/old', '{}', ?1 - 4000, 'delivered', \
         1, ?1 - 4000, ?1 - 3900)",
        "INSERT INTO webhook_attempts (event_pk, at, status_code, latency_ms) \
         VALUES (7, ?1 - 3900, 200, 12)",
    ] {
        sqlx::query(sql).bind(t0).execute(&db).await.unwrap();
    }
    db.close().await;

    fake.script(
        "p2p",
        "OLD1",
        Script::pending_then(Kind::P2p, 1, "approved"),
    );
    d.restart().await;
    // The pending payment is polled on with the default's key, and fires to its receiver.
    let p = d.wait_final("p2p", "OLD1", WAIT).await;
    assert_eq!(p.payment.facts.state, ninjapoll::State::Succeeded);
    assert_eq!(p.payment.facts.account.as_str(), "default");
    assert!(fake
        .requests_for("p2p", "OLD1")
        .iter()
        .all(|r| r.key.as_deref() == Some(KEY) && r.auth_ok));
    let got = rx.wait_deliveries(1, WAIT).await;
    assert_eq!(got[0].body["data"]["account"], "default");
    // The finished one keeps its history and its event.
    let (code, old2) = d.payment("p2p", "OLD2").await;
    assert_eq!(code, 200, "{old2}");
    assert_eq!(old2["account"], "default");
    assert_eq!(
        old2["history"].as_array().map(Vec::len),
        Some(1),
        "{old2:#}"
    );
    let (code, ev) = d.request("GET", "/v1/webhooks/evt_old2", None).await;
    assert_eq!(code, 200, "{ev}");
    assert_eq!(
        ev["attempt_log"].as_array().map(Vec::len),
        Some(1),
        "{ev:#}"
    );
    let (_, listed) = d
        .request("GET", "/v1/webhooks?account=default&id=OLD2", None)
        .await;
    assert_eq!(
        listed["webhooks"].as_array().map(Vec::len),
        Some(1),
        "{listed:#}"
    );

    let db = open_db(&d.db_path()).await;
    let accounts: Vec<(String, i64)> =
        sqlx::query_as("SELECT account, COUNT(*) FROM payment_states GROUP BY account")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(accounts, vec![("default".to_owned(), 2)]);
    let violations: Vec<(String,)> =
        sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    // The rows still point at their payment.
    let joined: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM status_history h JOIN payments p ON p.pk = h.payment_pk \
         WHERE p.id = 'OLD2'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(joined, 1);
    let joined: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_events e JOIN payments p ON p.pk = e.payment_pk \
         WHERE p.id = 'OLD2' AND e.event_id = 'evt_old2'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(joined, 1);
    // Foreign keys are enforced again on the daemon's connections: the schema's references
    // still name the payments table.
    let sql: String =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'status_history'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(sql.contains("REFERENCES payments"), "{sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_key_from_the_environment_is_used_and_redacted() {
    const ENV_KEY: &str = "shop2-key-from-the-environment";
    let fake = FakeNinjapay::start(FakeOptions {
        accounts: vec![ENV_KEY.into()],
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    // The file names the account without a key; the environment gives it.
    let config = DaemonConfig {
        extra_toml: "[accounts.shop2]\nbudget_requests = 500\n".into(),
        env: vec![("NINJAPOLL_ACCOUNTS__SHOP2__API_KEY".into(), ENV_KEY.into())],
        ..DaemonConfig::default()
    };
    let d = spawn_daemon(&fake.base_url(), config).await;
    let config_arg = d.config_path().to_string_lossy().into_owned();
    let (ok, out, err) = cli(
        vec!["check-config".into(), "--config".into(), config_arg.clone()],
        vec![("NINJAPOLL_ACCOUNTS__SHOP2__API_KEY".into(), ENV_KEY.into())],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        !out.contains(ENV_KEY) && !err.contains(ENV_KEY),
        "{out}\n{err}"
    );
    let toml_part = out.split_once('\n').map(|(_, t)| t).unwrap_or_default();
    let shown: toml::Value = toml::from_str(toml_part).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        shown["accounts"]["shop2"]["api_key"].as_str(),
        Some("<redacted>"),
        "{out}"
    );
    assert_eq!(
        shown["accounts"]["shop2"]["budget_requests"].as_integer(),
        Some(500),
        "{out}"
    );
    // Without the environment the account has no key: refused, naming the setting.
    let (ok, _, err) = cli(
        vec!["check-config".into(), "--config".into(), config_arg],
        vec![],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("accounts.shop2.api_key"), "{err}");

    // The daemon checks shop2's payments with the key from the environment.
    fake.script_for_key(
        ENV_KEY,
        "p2p",
        "E1",
        Script::pending_then(Kind::P2p, 1, "approved"),
    );
    assert_eq!(enqueue_in(&d, "shop2", "E1").await.0, 201);
    let p = wait_api(&d, "/v1/checks/p2p/E1?account=shop2", |p| {
        p["final"] == true
    })
    .await;
    assert_eq!(p["state"], "succeeded", "{p:#}");
    let reqs = fake.requests_for("p2p", "E1");
    assert!(
        reqs.iter().all(|r| r.key.as_deref() == Some(ENV_KEY)),
        "{reqs:#?}"
    );
    assert!(!d.log().contains(ENV_KEY), "the key reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_shown_by_the_cli_health_and_metrics() {
    let fake = fake().await;
    let d = spawn_daemon(&fake.base_url(), two_accounts(None, None, "")).await;
    for i in 0..3 {
        let id = format!("S{i}");
        fake.script_for_key(SHOP2_KEY, "p2p", &id, Script::Sequence(vec![]));
        assert_eq!(enqueue_in(&d, "shop2", &id).await.0, 201);
    }
    fake.script("p2p", "D0", Script::Sequence(vec![]));
    assert_eq!(enqueue_in(&d, "default", "D0").await.0, 201);

    // The scheduler reports every tick: wait until health holds both accounts' counts.
    let health = wait_api(&d, "/v1/health", |h| {
        let of = |a: &str| {
            h["accounts"]
                .as_array()
                .and_then(|v| v.iter().find(|x| x["account"] == a).cloned())
        };
        of("default").is_some_and(|a| a["pending"] == 1)
            && of("shop2").is_some_and(|a| a["pending"] == 3)
    })
    .await;
    let accounts = health["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2, "{health:#}");
    for a in accounts {
        for field in [
            "pending",
            "budget_used",
            "budget_limit",
            "keeps_up",
            "expected_delay_ms",
            "backlog",
        ] {
            assert!(!a[field].is_null(), "{field} missing: {a:#}");
        }
        assert_eq!(a["budget_limit"], 100_000, "{a:#}");
        assert_eq!(a["keeps_up"], true, "{a:#}");
    }

    let (ok, out, err) = client(&d, &["accounts"]).await;
    assert!(ok, "{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}: {out}"))
            .to_owned()
    };
    assert!(line("default").contains(" 1 pending"), "{out}");
    assert!(line("shop2").contains(" 3 pending"), "{out}");
    let (ok, out, err) = client(&d, &["accounts", "--json"]).await;
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "shop2"]);

    let (code, metrics) = d.request("GET", "/metrics", None).await;
    assert_eq!(code, 200);
    let text = metrics.as_str().unwrap();
    let sample = |name: &str, account: &str| -> Option<f64> {
        let prefix = format!("{name}{{account=\"{account}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    };
    for account in ["default", "shop2"] {
        for family in [
            "ninjapoll_account_pending",
            "ninjapoll_account_budget_used",
            "ninjapoll_account_budget_limit",
            "ninjapoll_account_keeps_up",
            "ninjapoll_account_expected_delay_seconds",
            "ninjapoll_account_backlog_payments",
        ] {
            assert!(
                sample(family, account).is_some(),
                "{family} of {account} missing:\n{text}"
            );
        }
    }
    assert_eq!(
        sample("ninjapoll_account_pending", "shop2"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample("ninjapoll_account_pending", "default"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample("ninjapoll_account_keeps_up", "shop2"),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btc_listings_are_per_account_and_each_account_learns_and_simulates_its_own() {
    let fake = fake().await;
    // A short window: the learner refits every twentieth of it.
    let mut config = DaemonConfig {
        budget_window: "2s".into(),
        ..two_accounts(None, None, "")
    };
    config.extra_toml = config.extra_toml.replace(
        &format!("[accounts.shop2]\napi_key = {SHOP2_KEY:?}\n"),
        &format!("[accounts.shop2]\napi_key = {SHOP2_KEY:?}\nbudget_requests = 5000\n"),
    );
    let d = spawn_daemon(&fake.base_url(), config).await;

    // One btc id in both accounts' histories, with two outcomes: each account's listing
    // (with its own key) finds its own.
    fake.script(
        "btc",
        "210660277897",
        Script::pending_then(Kind::Btc, 1, "paid"),
    );
    fake.script_for_key(
        SHOP2_KEY,
        "btc",
        "210660277897",
        Script::pending_then(Kind::Btc, 2, "declined"),
    );
    for account in ["default", "shop2"] {
        let (code, v) = d
            .request(
                "POST",
                "/v1/checks",
                Some(json!({"account": account, "kind": "btc", "id": "210660277897"})),
            )
            .await;
        assert_eq!(code, 201, "{v}");
    }
    let paid = d.wait_final("btc", "210660277897", WAIT).await;
    assert_eq!(paid.payment.facts.upstream_status.as_deref(), Some("paid"));
    let declined = wait_api(&d, "/v1/checks/btc/210660277897?account=shop2", |p| {
        p["final"] == true
    })
    .await;
    assert_eq!(declined["upstream_status"], "declined", "{declined:#}");

    // Learning per account and kind: default's p2p flip at the first check, shop2's after
    // four more 20 ms steps.
    let ids: Vec<String> = (0..8).map(|i| format!("L{i}")).collect();
    for id in &ids {
        fake.script("p2p", id, Script::pending_then(Kind::P2p, 0, "approved"));
        fake.script_for_key(
            SHOP2_KEY,
            "p2p",
            id,
            Script::pending_then(Kind::P2p, 4, "approved"),
        );
        assert_eq!(enqueue_in(&d, "default", id).await.0, 201);
        assert_eq!(enqueue_in(&d, "shop2", id).await.0, 201);
    }
    for id in &ids {
        d.wait_final("p2p", id, WAIT).await;
        wait_api(&d, &format!("/v1/checks/p2p/{id}?account=shop2"), |p| {
            p["final"] == true
        })
        .await;
    }
    // Each account's key (its pool in health) learnt its own ages.
    let p50_of = |h: &Value, pool: &str| -> Option<i64> {
        h["budget"].as_array()?.iter().find(|p| p["name"] == pool)?["policy"]
            .as_array()?
            .iter()
            .find(|k| k["kind"] == "p2p")?["flip_age_p50_ms"]
            .as_i64()
    };
    let h = wait_api(&d, "/v1/health", |h| {
        p50_of(h, "default").is_some_and(|a| a < 100)
            && p50_of(h, "account:shop2").is_some_and(|b| b > 150)
    })
    .await;
    let shop2 = h["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account"] == "shop2")
        .unwrap()
        .clone();
    assert_eq!(shop2["budget_limit"], 5000, "{h:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_runs_on_the_named_accounts_learnt_ages_and_budget() {
    let fake = fake().await;
    let mut config = two_accounts(None, None, "");
    config.extra_toml = config.extra_toml.replace(
        &format!("[accounts.shop2]\napi_key = {SHOP2_KEY:?}\n"),
        &format!("[accounts.shop2]\napi_key = {SHOP2_KEY:?}\nbudget_requests = 5000\n"),
    );
    let mut d = spawn_daemon(&fake.base_url(), config).await;
    let ids: Vec<String> = (0..4).map(|i| format!("L{i}")).collect();
    for id in &ids {
        fake.script_for_key(
            SHOP2_KEY,
            "p2p",
            id,
            Script::pending_then(Kind::P2p, 2, "approved"),
        );
        assert_eq!(enqueue_in(&d, "shop2", id).await.0, 201);
    }
    for id in &ids {
        wait_api(&d, &format!("/v1/checks/p2p/{id}?account=shop2"), |p| {
            p["final"] == true
        })
        .await;
    }
    d.stop().await;

    // `simulate --account` runs on that account's learnt ages and budget.
    let sim = |account: &str| {
        let config = d.config_path().to_string_lossy().into_owned();
        let args: Vec<String> = [
            "--config",
            &config,
            "--account",
            account,
            "simulate",
            "--rate",
            "1/s",
            "--warmup",
            "3s",
            "--hours",
            "0.002",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cli(args, Vec::new())
    };
    let (ok, out, err) = sim("shop2").await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["budget_requests"], 5000, "{v:#}");
    assert!(
        v["mix"]
            .as_str()
            .unwrap_or("")
            .contains("learnt from 4 finished p2p payments"),
        "{v:#}"
    );
    let (ok, out, err) = sim("default").await;
    assert!(ok, "{err}");
    let d_v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d_v["budget_requests"], 100_000, "{d_v:#}");
    assert!(
        d_v["mix"]
            .as_str()
            .unwrap_or("")
            .contains("no finished p2p payments"),
        "the default's own evidence (none), not shop2's: {d_v:#}"
    );
    let (ok, _, err) = sim("nope").await;
    assert!(!ok);
    assert!(err.contains("unknown account"), "{err}");
}
