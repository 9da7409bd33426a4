//! `GET /v1/health` (SPEC section 4) tells one consistent story: `status` and `healthy`
//! agree, the scheduler's pending count is the payments it holds, `payments.pending` counts
//! the same rows plus those nobody polls, and every reason for `healthy: false` is a line in
//! `problems`.

use ninjapoll_test_support::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The one story health must tell, whatever the state.
fn assert_consistent(h: &Value) {
    let healthy = h["healthy"].as_bool().expect("healthy");
    let problems = h["problems"].as_array().expect("problems");
    assert_eq!(healthy, problems.is_empty(), "{h:#}");
    assert_eq!(
        h["status"],
        if healthy { "ok" } else { "degraded" },
        "{h:#}"
    );
    let pools: u64 = h["budget"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pending"].as_u64().unwrap())
        .sum();
    assert_eq!(h["scheduler"]["pending"], pools, "{h:#}");
    for p in h["budget"].as_array().unwrap() {
        let by_kind: u64 = p["policy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["pending"].as_u64().unwrap())
            .sum();
        assert_eq!(p["pending"], by_kind, "{h:#}");
    }
}

/// Polls health until `pred` holds, checking consistency on every answer.
async fn health_until(d: &Daemon, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, h) = d.request("GET", "/v1/health", None).await;
        assert_eq!(code, 200);
        assert_consistent(&h);
        if pred(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "health never got there: {h:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const FIAT: &str = r#"
[kinds.fiat]
method = "GET"
url = "{prod}/sapi/v1/checkQuote"
id_field = "tid"
auth_header = "Authorization"
status_pointer = "/status"
status_map = { pending = "pending", completed = "succeeded" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_counts_agree_and_every_reason_is_a_problem() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let cfg = DaemonConfig {
        // A slow ladder that outlives the test: payments stay pending and held.
        steps: vec![("500ms".into(), None)],
        timeout: "60s".into(),
        extra_toml: FIAT.into(),
        ..DaemonConfig::default()
    };
    let mut d = spawn_daemon(&fake.base_url(), cfg).await;
    for i in 0..5 {
        let id = format!("P{i}");
        fake.script("p2p", &id, Script::Sequence(vec![]));
        assert_eq!(d.enqueue("p2p", &id, None).await.0, 201);
    }
    for i in 0..3 {
        let id = format!("F{i}");
        fake.script("quote", &id, Script::Sequence(vec![]));
        assert_eq!(d.enqueue("fiat", &id, None).await.0, 201);
    }
    let h = health_until(&d, |h| h["scheduler"]["pending"] == 8).await;
    assert_eq!(h["payments"]["pending"], 8, "{h:#}");
    assert_eq!(h["scheduler"]["unpolled"], 0);
    assert_eq!(h["healthy"], true, "{h:#}");
    let kinds: Vec<(String, u64)> = h["budget"][0]["policy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kind"].as_str().unwrap().to_string(),
                k["pending"].as_u64().unwrap(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(kinds, vec![("fiat".into(), 3), ("p2p".into(), 5)]);

    // The kind leaves the configuration: its payments stay pending in the database, the
    // scheduler cannot hold them, and health says why the two counts differ.
    let toml = std::fs::read_to_string(d.config_path()).unwrap();
    let cut = toml.find("[kinds.fiat]").unwrap();
    std::fs::write(d.config_path(), &toml[..cut]).unwrap();
    d.restart().await;
    let h = health_until(&d, |h| h["healthy"] == false).await;
    assert_eq!(h["payments"]["pending"], 8, "{h:#}");
    assert_eq!(h["scheduler"]["pending"], 5, "{h:#}");
    assert_eq!(h["scheduler"]["unpolled"], 3, "{h:#}");
    let problems: Vec<&str> = h["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 1, "{h:#}");
    assert!(
        problems[0].starts_with("3 pending payments of kind fiat are not polled"),
        "{h:#}"
    );

    // Cancelling them, as the problem says, makes the counts agree and the daemon healthy.
    for i in 0..3 {
        let (code, p) = d
            .request("DELETE", &format!("/v1/checks/fiat/F{i}"), None)
            .await;
        assert_eq!(
            (code, &p["state"]),
            (200, &Value::from("cancelled")),
            "{p:#}"
        );
    }
    let h = health_until(&d, |h| h["healthy"] == true).await;
    assert_eq!(h["payments"]["pending"], 5, "{h:#}");
    assert_eq!(h["scheduler"]["pending"], 5, "{h:#}");
    assert_eq!(h["scheduler"]["unpolled"], 0, "{h:#}");
}
