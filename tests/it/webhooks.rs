//! Webhooks (SPEC section 6) end to end: the real binary against the fake Ninjapay, and
//! a receiver on 127.0.0.1 that verifies every signature with the independent
//! `standardwebhooks` crate.
//!
//! The ladder is the harness's compressed one (first check at 100–120 ms) and the retry
//! schedule is compressed too, so every case takes well under a few seconds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ninjapoll::State;
use ninjapoll_test_support::*;
use serde_json::{json, Value};

/// Bound of every wait; the cases themselves take a fraction of it.
const WAIT: Duration = Duration::from_secs(10);

/// A second secret, for rotation: the daemon signs with both, the receiver knows one.
const OLD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A daemon configuration with a `[webhooks]` table.
fn hooks(url: Option<&str>, retry: &[&str], timeout: &str, prefixes: &[&str]) -> DaemonConfig {
    let q = |s: &str| format!("{s:?}");
    let list = |v: &[&str]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
    let mut t = String::from("[webhooks]\n");
    if let Some(u) = url {
        t += &format!("url = {}\n", q(u));
    }
    t += &format!(
        "secret = {}\nretry = [{}]\ntimeout = {}\nallowed_callback_prefixes = [{}]\n",
        q(&format!("{OLD_SECRET} {WEBHOOK_SECRET}")),
        list(retry),
        q(timeout),
        list(prefixes),
    );
    DaemonConfig {
        extra_toml: t,
        ..DaemonConfig::default()
    }
}

async fn setup(config: DaemonConfig) -> (FakeNinjapay, Daemon) {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let daemon = spawn_daemon(&fake.base_url(), config).await;
    (fake, daemon)
}

/// Polls `GET {path}` until `pred` holds for a 200 answer; panics after [`WAIT`].
async fn wait_api(d: &Daemon, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    d.wait_get(path, pred, WAIT).await
}

/// Waits until the event is delivered; returns it with its attempt log.
async fn wait_delivered(d: &Daemon, event_id: &str) -> Value {
    wait_api(d, &format!("/v1/webhooks/{event_id}"), |e| {
        e["state"] == "delivered"
    })
    .await
}

fn events(list: &Value) -> Vec<Value> {
    list["webhooks"].as_array().cloned().unwrap_or_default()
}

/// Deliveries grouped by `webhook-id`.
fn by_id(deliveries: &[Delivery]) -> BTreeMap<String, Vec<Delivery>> {
    let mut m: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
    for d in deliveries {
        m.entry(d.webhook_id.clone()).or_default().push(d.clone());
    }
    m
}

/// `ninjapoll --socket S ARGS…`: (exit success, stdout).
async fn cli(d: &Daemon, args: &[&str]) -> (bool, String) {
    let socket = d.socket_path().to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ninjapoll"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .output()
            .expect("run ninjapoll");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .expect("cli task")
}

#[tokio::test]
async fn a_flip_delivers_one_verified_event() {
    let rx = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let (fake, d) = setup(hooks(Some(rx.url()), &["50ms"], "2s", &[])).await;
    fake.script("p2p", "F1", Script::pending_then(Kind::P2p, 2, "approved"));
    let (code, p) = d
        .request(
            "POST",
            "/v1/checks",
            Some(json!({"kind": "p2p", "id": "F1", "metadata": {"order": 7}})),
        )
        .await;
    assert_eq!(code, 201, "{p}");
    let fin = d.wait_final("p2p", "F1", WAIT).await;
    let list = wait_api(&d, "/v1/webhooks?state=delivered", |v| events(v).len() == 1).await;
    let ev = &events(&list)[0];
    assert_eq!(ev["type"], "payment.status_changed");
    assert_eq!(
        ev["payment"],
        json!({"account": "default", "kind": "p2p", "id": "F1"})
    );
    assert_eq!(ev["sequence"], 1);
    assert_eq!(ev["attempts"], 1);
    assert_eq!(ev["last_status_code"], 200);

    let got = rx.deliveries();
    assert_eq!(got.len(), 1, "{got:#?}");
    let one = &got[0];
    // Verified by standardwebhooks with one of the two rotated keys.
    assert!(one.verified, "{one:#?}");
    assert_eq!(one.webhook_id, ev["event_id"].as_str().unwrap());
    let ts: i64 = one.timestamp.parse().unwrap();
    assert!((ts - now_ms() / 1000).abs() <= 5, "timestamp {ts}");
    let b = &one.body;
    assert_eq!(b["type"], "payment.status_changed");
    assert!(rfc3339_ms(&b["timestamp"]).is_some(), "{b:#}");
    let data = &b["data"];
    assert_eq!(data["kind"], "p2p");
    assert_eq!(data["id"], "F1");
    assert_eq!(data["sequence"], 1);
    assert_eq!(data["state"], "succeeded");
    assert_eq!(data["previous_state"], "pending");
    assert_eq!(data["upstream_status"], "approved");
    assert_eq!(data["final"], true);
    assert_eq!(data["metadata"], json!({"order": 7}));
    assert_eq!(data["response"]["tid"], "F1");
    assert!(rfc3339_ms(&data["checked_at"]).is_some(), "{data:#}");
    assert!(rfc3339_ms(&data["started_at"]).is_some(), "{data:#}");

    // The receiver and a client see the same payment: every field the webhook's data
    // shares with the API's payment view has the same JSON, and they share all of these.
    let (_, view) = d.payment("p2p", "F1").await;
    let (view, data) = (view.as_object().unwrap(), data.as_object().unwrap());
    let shared: Vec<&str> = data
        .keys()
        .filter(|k| view.contains_key(*k))
        .map(String::as_str)
        .collect();
    assert_eq!(
        shared,
        [
            "account",
            "final",
            "id",
            "kind",
            "metadata",
            "response",
            "started_at",
            "state",
            "upstream_status"
        ],
        "{data:#?}"
    );
    for k in shared {
        assert_eq!(data[k], view[k], "{k}: webhook {data:#?}\nAPI {view:#?}");
    }
    // And both read back into the types the daemon wrote them with.
    assert_eq!(one.event().data.payment, fin.payment.facts);

    let (_, health) = d.request("GET", "/v1/health", None).await;
    assert_eq!(health["webhooks"]["delivered"], 1, "{health:#}");
    // Nothing more comes.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(rx.deliveries().len(), 1);
}

#[tokio::test]
async fn a_receiver_failing_for_a_while_gets_every_event_once() {
    let rx = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let retry = ["50ms", "100ms", "100ms", "100ms", "100ms", "100ms"];
    let (fake, d) = setup(hooks(Some(rx.url()), &retry, "2s", &[])).await;
    rx.fail_next(500, 5);
    let ids = ["R1", "R2", "R3"];
    for id in ids {
        fake.script("p2p", id, Script::pending_then(Kind::P2p, 1, "declined"));
        assert_eq!(d.enqueue("p2p", id, None).await.0, 201);
    }
    let list = wait_api(&d, "/v1/webhooks?state=delivered", |v| events(v).len() == 3).await;
    let got = rx.deliveries();
    assert!(got.iter().all(|g| g.verified), "{got:#?}");
    let groups = by_id(&got);
    assert_eq!(groups.len(), 3, "{got:#?}");
    for (id, ds) in &groups {
        let ok: Vec<_> = ds.iter().filter(|d| d.answered == 200).collect();
        assert_eq!(ok.len(), 1, "{id} delivered {} times: {ds:#?}", ok.len());
        assert_eq!(ds.last().unwrap().answered, 200, "{ds:#?}");
    }
    assert_eq!(got.iter().filter(|g| g.answered == 500).count(), 5);
    // Every attempt is in the log, with its status and latency.
    let mut logged = 0;
    for ev in events(&list) {
        let full = wait_delivered(&d, ev["event_id"].as_str().unwrap()).await;
        let log = full["attempt_log"].as_array().unwrap().clone();
        assert_eq!(log.len() as i64, full["attempts"].as_i64().unwrap());
        assert_eq!(log.last().unwrap()["status_code"], 200, "{full:#}");
        for a in &log[..log.len() - 1] {
            assert_eq!(a["status_code"], 500, "{full:#}");
            assert_eq!(a["error"], "HTTP 500", "{full:#}");
            assert!(a["latency_ms"].as_i64().unwrap() >= 0);
            assert!(rfc3339_ms(&a["at"]).is_some());
        }
        logged += log.len();
        assert_eq!(full["body"]["data"]["state"], "failed");
    }
    assert_eq!(logged, got.len());
}

#[tokio::test]
async fn a_hanging_receiver_is_retried_after_the_timeout() {
    let rx = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let (fake, d) = setup(hooks(Some(rx.url()), &["50ms", "50ms"], "300ms", &[])).await;
    rx.hang_next(Duration::from_secs(3), 1);
    fake.script("p2p", "H1", Script::pending_then(Kind::P2p, 1, "approved"));
    let start = Instant::now();
    d.enqueue("p2p", "H1", None).await;
    let got = rx.wait_deliveries(2, WAIT).await;
    assert_eq!(got[0].webhook_id, got[1].webhook_id);
    assert!(got[1].at - got[0].at >= Duration::from_millis(300));
    let list = wait_api(&d, "/v1/webhooks?state=delivered", |v| events(v).len() == 1).await;
    let full = wait_delivered(&d, events(&list)[0]["event_id"].as_str().unwrap()).await;
    let log = full["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2, "{full:#}");
    assert_eq!(log[0]["status_code"], Value::Null);
    assert!(
        log[0]["error"].as_str().unwrap().contains("timed out"),
        "{full:#}"
    );
    let latency = log[0]["latency_ms"].as_i64().unwrap();
    assert!((290..1500).contains(&latency), "{full:#}");
    assert_eq!(log[1]["status_code"], 200);
    // Not held for the receiver's 3 s.
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let rx = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let (fake, d) = setup(hooks(Some(rx.url()), &["50ms"], "2s", &[])).await;
    rx.fail_next(307, 1);
    fake.script("p2p", "X1", Script::pending_then(Kind::P2p, 1, "approved"));
    d.enqueue("p2p", "X1", None).await;
    let list = wait_api(&d, "/v1/webhooks?state=delivered", |v| events(v).len() == 1).await;
    let full = wait_delivered(&d, events(&list)[0]["event_id"].as_str().unwrap()).await;
    let log = full["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2, "{full:#}");
    assert_eq!(log[0]["status_code"], 307);
    assert!(log[0]["error"].as_str().unwrap().contains("redirect"));
    assert_eq!(rx.deliveries().len(), 2);
}

#[tokio::test]
async fn one_payment_in_order_while_another_is_not_held_up() {
    // Payment A's events go to a receiver that fails its first three deliveries; B's go to
    // a healthy one. A has two flips (an unknown raw status, then approved).
    let slow = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let fast = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let prefix = slow.url().to_string();
    let (fake, d) = setup(hooks(
        Some(fast.url()),
        &["50ms", "100ms", "200ms", "200ms"],
        "2s",
        &[&prefix],
    ))
    .await;
    slow.fail_next(500, 3);
    fake.script(
        "p2p",
        "A",
        Script::Sequence(vec![
            Step::Status("on_hold".into()),
            Step::Status("approved".into()),
        ]),
    );
    fake.script("p2p", "B", Script::pending_then(Kind::P2p, 1, "approved"));
    let (code, p) = d
        .request(
            "POST",
            "/v1/checks",
            Some(json!({"kind": "p2p", "id": "A", "callback_url": prefix})),
        )
        .await;
    assert_eq!(code, 201, "{p}");
    assert_eq!(d.enqueue("p2p", "B", None).await.0, 201);

    let a = slow.wait_deliveries(5, WAIT).await;
    let b = fast.wait_deliveries(1, WAIT).await;
    assert!(a.iter().chain(&b).all(|x| x.verified));
    let seqs: Vec<i64> = a
        .iter()
        .map(|x| x.body["data"]["sequence"].as_i64().unwrap())
        .collect();
    // Sequence 1 three times refused then taken, and only then sequence 2.
    assert_eq!(seqs, vec![1, 1, 1, 1, 2], "{a:#?}");
    assert_eq!(a[0].body["data"]["upstream_status"], "on_hold");
    assert_eq!(a[4].body["data"]["upstream_status"], "approved");
    assert_eq!(a[4].body["data"]["previous_upstream_status"], "on_hold");
    assert_eq!(b[0].body["data"]["id"], "B");
    // B's event was delivered while A's first was still being refused.
    assert!(b[0].at < a[3].at, "B waited for A: {b:#?} {a:#?}");
    wait_api(&d, "/v1/webhooks?state=delivered", |v| events(v).len() == 3).await;
    // Paged two at a time: every event once, in order, then no more.
    let (_, p1) = d
        .request("GET", "/v1/webhooks?state=delivered&limit=2", None)
        .await;
    assert_eq!(
        (events(&p1).len(), &p1["has_more"]),
        (2, &json!(true)),
        "{p1:#}"
    );
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = d
        .request(
            "GET",
            &format!("/v1/webhooks?state=delivered&limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(
        (events(&p2).len(), &p2["has_more"]),
        (1, &json!(false)),
        "{p2:#}"
    );
    assert_eq!(slow.deliveries().len(), 5);
    assert_eq!(fast.deliveries().len(), 1);
}

#[tokio::test]
async fn kill_9_mid_delivery_then_restart_delivers() {
    let rx = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let (fake, mut d) = setup(hooks(Some(rx.url()), &["50ms"], "5s", &[])).await;
    // The first delivery hangs well past the kill.
    rx.hang_next(Duration::from_secs(8), 1);
    fake.script("p2p", "K1", Script::pending_then(Kind::P2p, 1, "approved"));
    d.enqueue("p2p", "K1", None).await;
    let first = rx.wait_deliveries(1, WAIT).await;
    d.kill9();
    d.restart().await;
    let got = rx.wait_deliveries(2, WAIT).await;
    assert_eq!(got[1].webhook_id, first[0].webhook_id);
    assert!(got[1].verified);
    assert_eq!(got[1].answered, 200);
    wait_api(&d, "/v1/webhooks?state=delivered", |v| events(v).len() == 1).await;
    let (_, health) = d.request("GET", "/v1/health", None).await;
    assert_eq!(health["webhooks"]["delivered"], 1, "{health:#}");
    assert_eq!(health["webhooks"].get("pending"), None, "{health:#}");
}

#[tokio::test]
async fn a_dead_event_is_listed_and_delivered_after_replay() {
    let rx = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let (fake, d) = setup(hooks(Some(rx.url()), &["50ms", "100ms"], "2s", &[])).await;
    rx.fail_next(503, 3);
    fake.script(
        "quote",
        "D1",
        Script::pending_then(Kind::Quote, 1, "expired"),
    );
    d.enqueue("quote", "D1", None).await;
    let list = wait_api(&d, "/v1/webhooks?state=dead", |v| events(v).len() == 1).await;
    let ev = &events(&list)[0];
    assert_eq!(ev["attempts"], 3);
    assert_eq!(ev["last_error"], "HTTP 503");
    assert_eq!(ev["next_attempt_at"], Value::Null);
    let id = ev["event_id"].as_str().unwrap().to_string();
    assert_eq!(rx.deliveries().len(), 3);
    let (_, health) = d.request("GET", "/v1/health", None).await;
    assert_eq!(health["webhooks"]["dead"], 1, "{health:#}");

    // The command line sees it and replays it.
    let (ok, out) = cli(&d, &["webhooks", "list", "--state", "dead"]).await;
    assert!(ok && out.contains(&id) && out.contains("dead"), "{out}");
    let (ok, out) = cli(&d, &["webhooks", "replay", &id]).await;
    assert!(ok, "{out}");
    let full = wait_delivered(&d, &id).await;
    assert_eq!(full["attempts"], 4, "{full:#}");
    let got = rx.deliveries();
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|g| g.webhook_id == id && g.verified));
    assert_eq!(got[3].answered, 200);

    // Replaying a delivered event sends it again; an unknown one is a 404.
    let (code, again) = d
        .request("POST", &format!("/v1/webhooks/{id}/replay"), None)
        .await;
    assert_eq!(code, 202, "{again}");
    assert_eq!(again["event_id"], id.as_str());
    rx.wait_deliveries(5, WAIT).await;
    let (code, e) = d
        .request("POST", "/v1/webhooks/msg_nope/replay", None)
        .await;
    assert_eq!(code, 404, "{e}");
    assert_eq!(e["error"]["code"], "not_found");
    let (code, e) = d.request("GET", "/v1/webhooks?state=lost", None).await;
    assert_eq!(code, 400, "{e}");
}

#[tokio::test]
async fn the_ladder_ending_delivers_payment_timed_out() {
    let rx = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let (fake, d) = setup(hooks(Some(rx.url()), &["50ms"], "2s", &[])).await;
    fake.script("p2p", "T1", Script::Sequence(vec![]));
    d.enqueue("p2p", "T1", None).await;
    let p = d.wait_final("p2p", "T1", WAIT).await;
    assert_eq!(p.payment.facts.state, State::TimedOut);
    let got = rx.wait_deliveries(1, WAIT).await;
    let b = &got[0].body;
    assert!(got[0].verified);
    assert_eq!(b["type"], "payment.timed_out");
    assert_eq!(b["data"]["state"], "timed_out");
    assert_eq!(b["data"]["previous_state"], "pending");
    assert_eq!(b["data"]["final"], true);
    assert_eq!(b["data"]["sequence"], 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.deliveries().len(), 1);
}

#[tokio::test]
async fn without_url_or_callback_nothing_is_queued() {
    let (fake, d) = setup(DaemonConfig::default()).await;
    fake.script("p2p", "N1", Script::pending_then(Kind::P2p, 1, "approved"));
    // A callback is refused while no prefix is allowed.
    let (code, e) = d
        .request(
            "POST",
            "/v1/checks",
            Some(json!({"kind": "p2p", "id": "N1", "callback_url": "http://127.0.0.1:1/x"})),
        )
        .await;
    assert_eq!(code, 400, "{e}");
    assert_eq!(e["error"]["code"], "callback_url_not_allowed");
    assert_eq!(d.enqueue("p2p", "N1", None).await.0, 201);
    let p = d.wait_final("p2p", "N1", WAIT).await;
    assert_eq!(p.payment.facts.state, State::Succeeded);
    let (code, list) = d.request("GET", "/v1/webhooks", None).await;
    assert_eq!(code, 200);
    assert!(events(&list).is_empty(), "{list:#}");
    let (_, health) = d.request("GET", "/v1/health", None).await;
    assert_eq!(health["webhooks"], json!({}), "{health:#}");

    // The final state is in the database, for the app to read.
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(d.db_path())
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    let (state, fin): (String, i64) =
        sqlx::query_as("SELECT state, final FROM payment_states WHERE kind = 'p2p' AND id = 'N1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), fin), ("succeeded", 1));
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    pool.close().await;
}

#[tokio::test]
async fn retry_after_of_a_429_is_honoured() {
    use std::sync::{Arc, Mutex};
    // A receiver that answers 429 with `Retry-After: 1` once, then 204.
    let arrivals: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let seen = arrivals.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen.clone();
        async move {
            let id = req
                .headers()
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let mut s = seen.lock().unwrap();
            s.push((Instant::now(), id));
            if s.len() == 1 {
                (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1")],
                )
                    .into_response()
            } else {
                axum::http::StatusCode::NO_CONTENT.into_response()
            }
        }
    });
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    // The schedule alone would retry after ~50 ms.
    let (fake, d) = setup(hooks(Some(&url), &["50ms"], "2s", &[])).await;
    fake.script("p2p", "RA", Script::pending_then(Kind::P2p, 1, "approved"));
    d.enqueue("p2p", "RA", None).await;
    let list = wait_api(&d, "/v1/webhooks?state=delivered", |v| events(v).len() == 1).await;
    let a = arrivals.lock().unwrap().clone();
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0].1, a[1].1);
    assert!(
        a[1].0 - a[0].0 >= Duration::from_millis(990),
        "retried after {:?}",
        a[1].0 - a[0].0
    );
    let full = wait_delivered(&d, events(&list)[0]["event_id"].as_str().unwrap()).await;
    assert_eq!(full["attempt_log"][0]["status_code"], 429, "{full:#}");
    assert_eq!(full["attempt_log"][1]["status_code"], 204, "{full:#}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_the_configured_url_when_the_receiver_moves() {
    let old = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let new = WebhookReceiver::start(WEBHOOK_SECRET).await;
    old.fail_next(500, 1000);
    let (fake, mut d) = setup(hooks(Some(old.url()), &["50ms"], "300ms", &[])).await;
    fake.script(
        "p2p",
        "MOVE",
        Script::pending_then(Kind::P2p, 0, "approved"),
    );
    d.enqueue("p2p", "MOVE", None).await;
    let dead = wait_api(&d, "/v1/webhooks?state=dead", |v| !events(v).is_empty()).await;
    let event_id = events(&dead)[0]["event_id"].as_str().unwrap().to_string();
    // The merchant moves its receiver and points the config at the new address.
    d.stop().await;
    let cfg = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(d.config_path(), cfg.replace(old.url(), new.url())).unwrap();
    d.restart().await;
    let (code, _) = d
        .request("POST", &format!("/v1/webhooks/{event_id}/replay"), None)
        .await;
    assert_eq!(code, 202);
    let got = new.wait_deliveries(1, WAIT).await;
    assert_eq!(got[0].webhook_id, event_id);
    assert!(got[0].verified);
    wait_delivered(&d, &event_id).await;
}
