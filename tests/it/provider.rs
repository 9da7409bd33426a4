//! What the provider says, taken with care (issue 24): an answer without a usable status is
//! an outage, a long `Retry-After` is capped and shown, a huge status is not kept, and a
//! plain-http base URL never goes through a proxy.

use ninjapoll::State;
use ninjapoll_test_support::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn health_until(d: &Daemon, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, h) = d.request("GET", "/v1/health", None).await;
        assert_eq!(code, 200);
        if pred(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "health never got there: {h:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn problems(h: &Value) -> Vec<String> {
    h["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect()
}

/// An HTML page or a JSON body without a status, answered with 200 at every check, keeps
/// the payment pending past its deadline (as a 500 would), health says so, and the check
/// after the provider comes back settles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_a_status_is_an_outage_not_an_answer() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let d = spawn_daemon(&fake.base_url(), DaemonConfig::default()).await;
    fake.script("p2p", "html", Script::Sequence(vec![Step::NotJson]));
    fake.script("quote", "bare", Script::Sequence(vec![Step::MissingStatus]));
    let t0 = now_ms();
    let started = json!(t0 as f64 / 1000.0);
    assert_eq!(d.enqueue("p2p", "html", Some(started.clone())).await.0, 201);
    assert_eq!(d.enqueue("quote", "bare", Some(started)).await.0, 201);
    let h = health_until(&d, |h| {
        let p = problems(h);
        ["p2p", "quote"].iter().all(|k| {
            p.iter()
                .any(|l| l.contains(&format!("no usable answer for kind {k}")))
        })
    })
    .await;
    assert_eq!(h["healthy"], false, "{h:#}");
    // Past the 1.5 s deadline, short of the give-up a whole ladder later.
    tokio::time::sleep(Duration::from_millis((t0 + 2000 - now_ms()).max(0) as u64)).await;
    for (kind, id) in [("p2p", "html"), ("quote", "bare")] {
        let (_, p) = d.payment(kind, id).await;
        assert_eq!(p["state"], "pending", "{kind}/{id}: {p:#}");
    }
    fake.script(
        "p2p",
        "html",
        Script::pending_then(Kind::P2p, 0, "approved"),
    );
    fake.script(
        "quote",
        "bare",
        Script::pending_then(Kind::Quote, 0, Kind::Quote.final_statuses()[0]),
    );
    for (kind, id) in [("p2p", "html"), ("quote", "bare")] {
        // The back-off after the outage, on a loaded machine, can take a few seconds.
        let p = d.wait_final(kind, id, Duration::from_secs(15)).await;
        assert_eq!(p.payment.facts.state, State::Succeeded, "{p:#?}");
    }
    health_until(&d, |h| {
        !problems(h).iter().any(|l| l.contains("no usable answer"))
    })
    .await;
}

/// One 429 with `Retry-After: 86400` pauses the key for at most `ninjapay.max_pause` (1 h
/// by default), and the pause is a health problem at once, with `/metrics` showing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_long_retry_after_is_capped_and_shown() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let d = spawn_daemon(&fake.base_url(), DaemonConfig::default()).await;
    fake.script(
        "p2p",
        "lock",
        Script::Sequence(vec![Step::Http {
            code: 429,
            body: r#"{"success": false, "message": "Too many requests"}"#.into(),
            retry_after: Some("86400".into()),
        }]),
    );
    assert_eq!(d.enqueue("p2p", "lock", None).await.0, 201);
    let h = health_until(&d, |h| {
        problems(h).iter().any(|l| l.contains("pause its checks"))
    })
    .await;
    let paused = h["budget"][0]["paused_for_ms"].as_i64().unwrap_or(-1);
    assert!(
        (3_000_000..=3_600_000).contains(&paused),
        "paused for {paused} ms: {h:#}"
    );
    let (_, m) = d.request("GET", "/metrics", None).await;
    let line = m
        .as_str()
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("ninjapoll_key_paused_seconds{"))
        .map(str::to_owned)
        .unwrap_or_default();
    let secs: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    assert!((3000.0..=3600.0).contains(&secs), "{line:?}");
}

/// A 2 MB status is not kept: not in the payment's history, not in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_status_is_not_kept() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let d = spawn_daemon(&fake.base_url(), DaemonConfig::default()).await;
    fake.script(
        "p2p",
        "big",
        Script::Sequence(vec![
            Step::Status("z".repeat(2_000_000)),
            Step::Status("approved".into()),
        ]),
    );
    assert_eq!(d.enqueue("p2p", "big", None).await.0, 201);
    d.wait_final("p2p", "big", Duration::from_secs(5)).await;
    let (_, p) = d.payment("p2p", "big").await;
    let text = p.to_string();
    assert!(text.len() < 64 * 1024, "{} bytes stored", text.len());
    assert!(!text.contains(&"z".repeat(100)), "the status was kept");
    assert!(d.log().len() < 64 * 1024, "{} bytes of log", d.log().len());
}

/// A plain-http base URL (the local machine) never goes through a proxy, whatever the
/// environment says: the proxy would see the key in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_base_url_never_goes_through_a_proxy() {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = proxy.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            record
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = conn
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let env = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .into_iter()
        .map(|k| (k.to_string(), proxy_url.clone()))
        .collect();
    let d = spawn_daemon(
        &fake.base_url(),
        DaemonConfig {
            env,
            ..DaemonConfig::default()
        },
    )
    .await;
    fake.script(
        "p2p",
        "direct",
        Script::pending_then(Kind::P2p, 1, "approved"),
    );
    assert_eq!(d.enqueue("p2p", "direct", None).await.0, 201);
    let p = d.wait_final("p2p", "direct", Duration::from_secs(5)).await;
    assert_eq!(p.payment.facts.state, State::Succeeded);
    let seen = seen.lock().unwrap();
    assert!(seen.is_empty(), "the proxy received: {seen:?}");
}
