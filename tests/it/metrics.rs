//! `/metrics` (SPEC section 4): scraped through the real socket and the optional loopback
//! TCP listener (`metrics.listen`), every family an operator needs is there, in the
//! Prometheus text format, with seconds and `_total` where the conventions want them.

use ninjapoll_test_support::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A free loopback port (bound then released; the daemon binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The samples of a scrape: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

async fn scrape_tcp(port: u16, path: &str) -> (u16, String, String) {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, ct, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_checks_budget_policy_webhooks_and_errors_on_socket_and_tcp() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let receiver = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let port = free_port();
    let cfg = DaemonConfig {
        webhooks: Some((receiver.url().to_string(), WEBHOOK_SECRET.to_string())),
        extra_toml: format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        // M2 stays pending for the whole test; the failed delivery is retried at once.
        steps: vec![("500ms".into(), None)],
        timeout: "60s".into(),
        env: vec![("NINJAPOLL_WEBHOOKS__RETRY".into(), "[\"50ms\"]".into())],
        ..DaemonConfig::default()
    };
    let d = spawn_daemon(&fake.base_url(), cfg).await;
    fake.script("p2p", "M1", Script::pending_then(Kind::P2p, 2, "approved"));
    fake.script("p2p", "M2", Script::Sequence(vec![])); // pending throughout
    receiver.fail_next(500, 1);
    assert_eq!(d.enqueue("p2p", "M1", None).await.0, 201);
    assert_eq!(d.enqueue("p2p", "M2", None).await.0, 201);
    d.wait_final("p2p", "M1", Duration::from_secs(5)).await;
    receiver.wait_deliveries(2, Duration::from_secs(15)).await;

    // The scheduler publishes at its tick: wait until the scrape shows M2 held.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (_, body) = d.request("GET", "/metrics", None).await;
        let text = body.as_str().expect("text").to_string();
        let s = samples(&text);
        let settled = s.get("ninjapoll_pending{pool=\"default\",kind=\"p2p\"}") == Some(&1.0)
            && s.get("ninjapoll_webhook_queue_depth") == Some(&0.0)
            && s.contains_key("ninjapoll_check_lateness_seconds_count{pool=\"default\"}");
        if settled {
            break text;
        }
        assert!(Instant::now() < deadline, "metrics never settled:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let s = samples(&text);
    let get = |k: &str| -> f64 {
        *s.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in:\n{text}"))
    };
    // Pending by kind, and the database's view.
    assert_eq!(get("ninjapoll_payments{state=\"pending\"}"), 1.0);
    assert_eq!(get("ninjapoll_payments{state=\"succeeded\"}"), 1.0);
    // Checks by kind and outcome: M1 was seen pending twice, then approved.
    assert_eq!(
        get("ninjapoll_checks_total{kind=\"p2p\",outcome=\"succeeded\"}"),
        1.0
    );
    assert!(get("ninjapoll_checks_total{kind=\"p2p\",outcome=\"pending\"}") >= 2.0);
    // Upstream latency and lateness: histograms in seconds.
    let requests = get("ninjapoll_upstream_requests_total{kind=\"p2p\"}");
    assert!(requests >= 3.0);
    assert_eq!(
        get("ninjapoll_upstream_latency_seconds_count{kind=\"p2p\"}"),
        requests
    );
    assert_eq!(
        get("ninjapoll_upstream_latency_seconds_bucket{kind=\"p2p\",le=\"+Inf\"}"),
        requests
    );
    assert!(get("ninjapoll_upstream_latency_seconds_sum{kind=\"p2p\"}") < requests * 1.0);
    assert!(get("ninjapoll_check_lateness_seconds_count{pool=\"default\"}") >= 1.0);
    // One budget wait beside each lateness; a budget of 100,000 never makes one wait.
    assert_eq!(
        get("ninjapoll_check_budget_wait_seconds_count{pool=\"default\"}"),
        get("ninjapoll_check_lateness_seconds_count{pool=\"default\"}")
    );
    assert_eq!(
        get("ninjapoll_check_budget_wait_seconds_sum{pool=\"default\"}"),
        0.0
    );
    // Budget used and limit per key; the policy's figures.
    assert!(get("ninjapoll_budget_used{pool=\"default\"}") >= requests);
    assert_eq!(get("ninjapoll_budget_limit{pool=\"default\"}"), 100_000.0);
    assert_eq!(
        get("ninjapoll_budget_configured{pool=\"default\"}"),
        100_000.0
    );
    assert_eq!(get("ninjapoll_price_level{pool=\"default\"}"), 0.0);
    assert!(get("ninjapoll_expected_delay_seconds{pool=\"default\",kind=\"p2p\"}") >= 0.0);
    assert!(
        get("ninjapoll_flip_age_seconds{pool=\"default\",kind=\"p2p\",quantile=\"0.5\"}") > 0.0
    );
    assert!(get("ninjapoll_flip_share{pool=\"default\",kind=\"p2p\"}") > 0.0);
    // Webhooks: the first attempt failed, the retry delivered.
    assert_eq!(
        get("ninjapoll_webhook_attempts_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(
        get("ninjapoll_webhook_attempts_total{outcome=\"delivered\"}"),
        1.0
    );
    assert_eq!(
        get("ninjapoll_webhook_attempts_total{outcome=\"dead\"}"),
        0.0
    );
    assert_eq!(get("ninjapoll_webhook_events{state=\"delivered\"}"), 1.0);
    // Database errors: there were none, and the series says so rather than being absent.
    for op in [
        "record_checks",
        "ledger",
        "webhooks",
        "retention",
        "maintenance",
        "api",
    ] {
        assert_eq!(
            get(&format!(
                "ninjapoll_database_errors_total{{operation=\"{op}\"}}"
            )),
            0.0
        );
    }
    // Conventions: every counter ends in _total, every histogram is in seconds.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[3] {
            "counter" => assert!(f[2].ends_with("_total"), "{line}"),
            "histogram" => assert!(f[2].ends_with("_seconds"), "{line}"),
            _ => {}
        }
    }

    // The same families over TCP, in the Prometheus text format; nothing else is there.
    let (status, ct, tcp) = scrape_tcp(port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let names = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(String::from)
            .collect()
    };
    assert_eq!(names(&tcp), names(&text));
    assert_eq!(
        samples(&tcp).get("ninjapoll_payments{state=\"succeeded\"}"),
        Some(&1.0)
    );
    let (status, _, body) = scrape_tcp(port, "/v1/health").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("unknown_endpoint"), "{body}");
    let (status, _, _) = scrape_tcp(port, "/v1/checks/p2p/M1").await;
    assert_eq!(status, 404);
}
