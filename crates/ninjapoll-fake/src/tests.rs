use super::endpoints::{BTC_PATH, P2P_PATH, PAYWALL_PATH, QUOTE_PATH};
use super::*;
use axum::http::HeaderMap;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const KEY: &str = "fake-api-key";

async fn fake(opts: FakeOptions) -> (FakeNinjapay, reqwest::Client) {
    let fake = FakeNinjapay::start(opts).await.unwrap();
    (fake, reqwest::Client::new())
}

async fn get(
    client: &reqwest::Client,
    url: String,
    auth: Option<&str>,
) -> (u16, String, HeaderMap) {
    let mut req = client.get(url);
    if let Some(key) = auth {
        req = req.header("Authorization", key);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.text().await.unwrap(), headers)
}

async fn get_json(client: &reqwest::Client, url: String) -> (u16, Value) {
    let (status, body, _) = get(client, url, Some(KEY)).await;
    (status, serde_json::from_str(&body).unwrap())
}

async fn paywall(client: &reqwest::Client, base: &str, body: Value, key: &str) -> (u16, Value) {
    let resp = client
        .post(format!("{base}{PAYWALL_PATH}"))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn p2p_shape_and_sequence_advances() {
    let (f, c) = fake(FakeOptions::default()).await;
    f.script(
        "p2p",
        "A19866",
        Script::pending_then(Kind::P2p, 2, "approved"),
    );
    let url = format!("{}{P2P_PATH}?tid=A19866", f.base_url());
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, body) = get_json(&c, url.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(body["tid"], "A19866");
        assert_eq!(body["amount_currency"], "INR");
        seen.push(body["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["pending", "pending", "approved", "approved"]);
    let recs = f.requests_for("p2p", "A19866");
    assert_eq!(recs.len(), 4);
    assert!(recs
        .iter()
        .all(|r| r.auth_ok && r.status == 200 && r.method == "GET"));
    assert_eq!(recs[0].query, "tid=A19866");
    assert!(recs.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test]
async fn quote_shape_numeric_tid() {
    let (f, c) = fake(FakeOptions::default()).await;
    f.script(
        "quote",
        "21066027789",
        Script::Sequence(vec![Step::Status("completed".into())]),
    );
    let (status, body) =
        get_json(&c, format!("{}{QUOTE_PATH}?tid=21066027789", f.base_url())).await;
    assert_eq!(status, 200);
    assert_eq!(body["tid"], 21066027789u64);
    assert_eq!(body["status"], "completed");
    assert!(body["fiat_amount"].is_number());
}

#[tokio::test]
async fn paywall_shape_and_errors() {
    let (f, c) = fake(FakeOptions::default()).await;
    let base = f.base_url();
    f.script(
        "paywall",
        "FT_RTPL_1",
        Script::Sequence(vec![
            Step::Status("PENDING".into()),
            Step::EnvelopeFalse,
            Step::MissingStatus,
            Step::Status("SUCCESS".into()),
        ]),
    );
    let body = json!({"order_id": "FT_RTPL_1"});
    let (s, v) = paywall(&c, &base, body.clone(), KEY).await;
    assert_eq!(
        (s, &v["status"], &v["data"]["trxStatus"]),
        (200, &json!(true), &json!("PENDING"))
    );
    let (s, v) = paywall(&c, &base, body.clone(), KEY).await;
    assert_eq!((s, &v["status"]), (200, &json!(false)));
    assert!(v["message"].is_string());
    let (s, v) = paywall(&c, &base, body.clone(), KEY).await;
    assert_eq!(s, 200);
    assert!(v["data"].get("trxStatus").is_none());
    assert!(v["data"]["payload"].is_object());
    let (s, v) = paywall(&c, &base, body.clone(), KEY).await;
    assert_eq!((s, &v["data"]["trxStatus"]), (200, &json!("SUCCESS")));
    assert_eq!(v["message"], "Received payment");

    // Missing field, not JSON, wrong method.
    let (s, v) = paywall(&c, &base, json!({"tid": "x"}), KEY).await;
    assert_eq!((s, &v["success"]), (400, &json!(false)));
    let resp = c
        .post(format!("{base}{PAYWALL_PATH}"))
        .header("x-api-key", KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let (s, _, h) = get(&c, format!("{base}{PAYWALL_PATH}"), Some(KEY)).await;
    assert_eq!(s, 405);
    assert_eq!(h.get("allow").unwrap(), "POST");
    assert_eq!(f.requests_for("paywall", "FT_RTPL_1").len(), 4);
}

#[tokio::test]
async fn auth_failures_per_kind() {
    let opts = FakeOptions {
        paywall_api_key: Some("invoice-key".into()),
        ..FakeOptions::default()
    };
    let (f, c) = fake(opts).await;
    let base = f.base_url();
    for kind in ["p2p", "quote"] {
        f.script(kind, "1", Script::Sequence(vec![]));
    }
    for path in [P2P_PATH, QUOTE_PATH, BTC_PATH] {
        let url = format!("{base}{path}?tid=1");
        for auth in [None, Some("wrong"), Some("invoice-key")] {
            let (s, body, _) = get(&c, url.clone(), auth).await;
            assert_eq!(s, 401, "{path} {auth:?}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["success"], false);
        }
        // The paywall header is not accepted on the GET kinds.
        let resp = c.get(&url).header("x-api-key", KEY).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(get(&c, url, Some(KEY)).await.0, 200);
    }
    f.script("paywall", "o1", Script::Sequence(vec![]));
    let body = json!({"order_id": "o1"});
    assert_eq!(paywall(&c, &base, body.clone(), KEY).await.0, 401);
    let resp = c
        .post(format!("{base}{PAYWALL_PATH}"))
        .header("Authorization", "invoice-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(paywall(&c, &base, body, "invoice-key").await.0, 200);

    let recs = f.requests();
    assert_eq!(recs.iter().filter(|r| !r.auth_ok).count(), 3 * 4 + 2);
    assert!(recs.iter().filter(|r| !r.auth_ok).all(|r| r.status == 401));
    // Rejected single-id requests still name their id.
    assert_eq!(f.requests_for("p2p", "1").len(), 5);

    // A rotated key: the old one is refused.
    f.set_api_key("new-key");
    assert_eq!(
        get(&c, format!("{base}{P2P_PATH}?tid=1"), Some(KEY))
            .await
            .0,
        401
    );
    assert_eq!(
        get(&c, format!("{base}{P2P_PATH}?tid=1"), Some("new-key"))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn unknown_ids_missing_params_and_paths() {
    let (f, c) = fake(FakeOptions::default()).await;
    let base = f.base_url();
    let (s, v) = get_json(&c, format!("{base}{P2P_PATH}?tid=nope")).await;
    assert_eq!((s, &v["success"]), (404, &json!(false)));
    assert_eq!(get(&c, format!("{base}{P2P_PATH}"), Some(KEY)).await.0, 400);
    assert_eq!(
        get(&c, format!("{base}{QUOTE_PATH}?tid="), Some(KEY))
            .await
            .0,
        400
    );
    assert_eq!(get(&c, format!("{base}/nope"), Some(KEY)).await.0, 404);
    let resp = c
        .delete(format!("{base}{QUOTE_PATH}?tid=1"))
        .header("Authorization", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    // Odd query strings are not fatal.
    assert_eq!(
        get(&c, format!("{base}{P2P_PATH}?tid=%ZZ&&="), Some(KEY))
            .await
            .0,
        404
    );
    assert_eq!(f.requests().len(), 6);
    assert_eq!(f.requests()[3].kind, None);
}

#[tokio::test]
async fn random_unknown_ids_settle() {
    let opts = FakeOptions {
        unknown: Unknown::Random { max_pending: 3 },
        ..FakeOptions::default()
    };
    let (f, c) = fake(opts).await;
    let url = format!("{}{QUOTE_PATH}?tid=q1", f.base_url());
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (s, v) = get_json(&c, url.clone()).await;
        assert_eq!(s, 200);
        statuses.push(v["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(&statuses[..2], ["pending", "pending"]);
    let last = statuses.last().unwrap();
    assert!(
        Kind::Quote.final_statuses().contains(&last.as_str()),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn pending_unknown_ids_and_arrivals_without_records() {
    let opts = FakeOptions {
        unknown: Unknown::Pending,
        accounts: vec!["other-key".into()],
        budget: Some((2, Duration::from_secs(60))),
        record: false,
        ..FakeOptions::default()
    };
    let (f, c) = fake(opts).await;
    let url = |tid: &str| format!("{}{P2P_PATH}?tid={tid}", f.base_url());
    for tid in ["never-scripted", "another"] {
        let (s, v) = get_json(&c, url(tid)).await;
        assert_eq!(s, 200);
        assert_eq!(v["status"], Kind::P2p.pending_status(), "{v}");
    }
    let (s, _, _) = get(&c, url("x"), Some("other-key")).await;
    assert_eq!(s, 200);
    // Refused keys are not arrivals; the third request of KEY is over its budget of 2.
    let (s, _, _) = get(&c, url("x"), Some("wrong-key")).await;
    assert_eq!(s, 401);
    let (s, _, _) = get(&c, url("x"), Some(KEY)).await;
    assert_eq!(s, 429);
    assert!(f.requests().is_empty(), "no records kept");
    let arrivals = f.arrivals_by_key();
    assert_eq!(arrivals.len(), 2, "{arrivals:?}");
    assert_eq!(arrivals[KEY].len(), 3);
    assert!(arrivals[KEY].windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(arrivals["other-key"].len(), 1);
    assert_eq!(f.violations(), 1);
}

#[tokio::test]
async fn arrivals_by_key_from_the_records() {
    let (f, c) = fake(FakeOptions::default()).await;
    f.script("p2p", "p1", Script::Sequence(vec![]));
    let url = format!("{}{P2P_PATH}?tid=p1", f.base_url());
    get(&c, url.clone(), Some(KEY)).await;
    get(&c, url.clone(), Some(KEY)).await;
    get(&c, url, Some("wrong-key")).await;
    let arrivals = f.arrivals_by_key();
    assert_eq!(arrivals.len(), 1, "{arrivals:?}");
    assert_eq!(arrivals[KEY].len(), 2);
    assert_eq!(f.requests().len(), 3);
}

#[tokio::test]
async fn http_steps_fault_and_flip() {
    let (f, c) = fake(FakeOptions::default()).await;
    let base = f.base_url();
    f.script(
        "p2p",
        "7",
        Script::Sequence(vec![
            Step::Http {
                code: 500,
                body: r#"{"success": false, "message": "boom"}"#.into(),
                retry_after: Some("3".into()),
            },
            Step::NotJson,
            Step::NotFound,
            Step::Hang(Duration::from_millis(150)),
        ]),
    );
    let url = format!("{base}{P2P_PATH}?tid=7");
    let (s, body, h) = get(&c, url.clone(), Some(KEY)).await;
    assert_eq!(
        (s, h.get("retry-after").unwrap().to_str().unwrap()),
        (500, "3")
    );
    assert!(body.contains("boom"));
    let (s, body, _) = get(&c, url.clone(), Some(KEY)).await;
    assert_eq!(s, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err());
    assert_eq!(get(&c, url.clone(), Some(KEY)).await.0, 404);
    let t = Instant::now();
    let (s, v) = get_json(&c, url.clone()).await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!((s, &v["status"]), (200, &json!("pending")));

    f.set_fault(Some(Fault::Status {
        code: 503,
        retry_after: Some("1".into()),
    }));
    let (s, _, h) = get(&c, url.clone(), Some("whatever")).await;
    assert_eq!(
        (s, h.get("retry-after").unwrap().to_str().unwrap()),
        (503, "1")
    );
    f.set_fault(None);

    f.script(
        "p2p",
        "8",
        Script::FlipAt {
            at: Instant::now() + Duration::from_millis(100),
            status: "declined".into(),
        },
    );
    let url = format!("{base}{P2P_PATH}?tid=8");
    assert_eq!(get_json(&c, url.clone()).await.1["status"], "pending");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(get_json(&c, url).await.1["status"], "declined");
}

#[tokio::test]
async fn btc_history_limit_order_and_wallet() {
    let (f, c) = fake(FakeOptions::default()).await;
    let base = f.base_url();
    for i in 1..=12 {
        f.script(
            "btc",
            &format!("{}", 1000 + i),
            Script::pending_then(Kind::Btc, 1, "paid"),
        );
    }
    f.script_btc(
        "ln-abc",
        "lbtc",
        Script::Sequence(vec![Step::MissingStatus]),
    );

    // Default limit 10, newest first; ids as numbers when numeric, else strings.
    let (s, v) = get_json(&c, format!("{base}{BTC_PATH}")).await;
    assert_eq!(s, 200);
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 10);
    assert_eq!(list[0]["tid"], "ln-abc");
    assert!(list[0].get("status").is_none());
    assert_eq!(list[1]["tid"], 1012);
    assert_eq!(
        list[1]["status"],
        "undefined".replace("undefined", "pending")
    );
    assert_eq!(list[9]["tid"], 1004);

    let (_, v) = get_json(&c, format!("{base}{BTC_PATH}?limit=3&wallet=btc")).await;
    let tids: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tid"].clone())
        .collect();
    assert_eq!(tids, [json!(1012), json!(1011), json!(1010)]);
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["status"] == "paid" && e["wallet"] == "btc"));

    // 1012 was in both pages, 1003 in none.
    assert_eq!(f.requests_for("btc", "1012").len(), 2);
    assert!(f.requests_for("btc", "1003").is_empty());

    for bad in ["0", "-1", "ten", ""] {
        let (s, body, _) = get(&c, format!("{base}{BTC_PATH}?limit={bad}"), Some(KEY)).await;
        assert_eq!(s, 400, "limit={bad}: {body}");
    }
    let (s, v) = get_json(&c, format!("{base}{BTC_PATH}?limit=100&wallet=usdt")).await;
    assert_eq!((s, v), (200, json!([])));
}

#[tokio::test]
async fn btc_broken_entry_breaks_the_page() {
    let (f, c) = fake(FakeOptions::default()).await;
    f.script(
        "btc",
        "1",
        Script::Sequence(vec![Step::Status("paid".into())]),
    );
    f.script(
        "btc",
        "2",
        Script::Sequence(vec![
            Step::NotJson,
            Step::NotFound,
            Step::Status("declined".into()),
        ]),
    );
    let url = format!("{}{BTC_PATH}?limit=5", f.base_url());
    let (s, body, _) = get(&c, url.clone(), Some(KEY)).await;
    assert_eq!(s, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err());
    let (_, v) = get_json(&c, url.clone()).await;
    assert_eq!(v, json!([v[0].clone()]));
    assert_eq!(v[0]["tid"], 1);
    let (_, v) = get_json(&c, url).await;
    assert_eq!(v[0]["status"], "declined");
    assert_eq!(f.requests_for("btc", "2").len(), 3);
}

#[tokio::test]
async fn budget_violation_and_lockout() {
    let opts = FakeOptions {
        budget: Some((3, Duration::from_millis(400))),
        lockout: Duration::from_millis(600),
        ..FakeOptions::default()
    };
    let (f, c) = fake(opts).await;
    f.script("p2p", "1", Script::Sequence(vec![]));
    let url = format!("{}{P2P_PATH}?tid=1", f.base_url());
    let start = Instant::now();
    for _ in 0..3 {
        assert_eq!(get(&c, url.clone(), Some(KEY)).await.0, 200);
    }
    // Wrong keys do not count against the budget.
    assert_eq!(get(&c, url.clone(), Some("nope")).await.0, 401);
    assert_eq!(f.violations(), 0);
    let (s, body, _) = get(&c, url.clone(), Some(KEY)).await;
    assert_eq!(s, 429);
    assert!(body.contains("locked out"));
    assert_eq!(f.violations(), 1);
    assert_eq!(f.max_in_window(Duration::from_millis(400)), 5);

    // Once the window has drained the key is still locked out, without new violations.
    tokio::time::sleep(Duration::from_millis(450).saturating_sub(start.elapsed())).await;
    assert_eq!(get(&c, url.clone(), Some(KEY)).await.0, 429);
    assert_eq!(f.violations(), 1);
    tokio::time::sleep(Duration::from_millis(700).saturating_sub(start.elapsed())).await;
    assert_eq!(get(&c, url.clone(), Some(KEY)).await.0, 200);
    assert_eq!(f.violations(), 1);
    assert_eq!(f.max_in_window(Duration::from_secs(10)), 7);
    assert_eq!(f.max_in_window(Duration::ZERO), 0);
}

#[tokio::test]
async fn latency_delays_but_arrival_is_recorded_first() {
    let opts = FakeOptions {
        latency: Some((Duration::from_millis(80), Duration::from_millis(100))),
        ..FakeOptions::default()
    };
    let (f, c) = fake(opts).await;
    let sent = Instant::now();
    let (s, _, _) = get(&c, format!("{}{P2P_PATH}?tid=x", f.base_url()), Some(KEY)).await;
    assert_eq!(s, 404);
    assert!(sent.elapsed() >= Duration::from_millis(80));
    let rec = &f.requests()[0];
    assert!(rec.at.duration_since(sent) < Duration::from_millis(80));
    assert!(rec.unix_ms > 1_600_000_000_000);
}

#[tokio::test]
async fn shutdown_cuts_hangs_and_closes_the_port() {
    let (f, c) = fake(FakeOptions::default()).await;
    f.script(
        "p2p",
        "h",
        Script::Sequence(vec![Step::Hang(Duration::from_secs(30))]),
    );
    let url = format!("{}{P2P_PATH}?tid=h", f.base_url());
    let pending = tokio::spawn({
        let c = c.clone();
        let url = url.clone();
        async move { c.get(url).header("Authorization", KEY).send().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    f.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(2));
    let _ = pending.await.unwrap();
    assert!(reqwest::Client::new().get(url).send().await.is_err());
}

#[tokio::test]
async fn accounts_have_their_own_scripts_history_budget_and_faults() {
    const SHOP2: &str = "shop2-key";
    let (f, c) = fake(FakeOptions {
        accounts: vec![SHOP2.into()],
        budget: Some((2, Duration::from_secs(60))),
        ..FakeOptions::default()
    })
    .await;
    let base = f.base_url();
    // The same id, two accounts, two outcomes.
    f.script("p2p", "X", Script::pending_then(Kind::P2p, 0, "approved"));
    f.script_for_key(
        SHOP2,
        "p2p",
        "X",
        Script::pending_then(Kind::P2p, 0, "declined"),
    );
    let url = format!("{base}{P2P_PATH}?tid=X");
    let status = |body: &str| serde_json::from_str::<Value>(body).unwrap()["status"].clone();
    let (s, b, _) = get(&c, url.clone(), Some(KEY)).await;
    assert_eq!((s, status(&b)), (200, json!("approved")));
    let (s, b, _) = get(&c, url.clone(), Some(SHOP2)).await;
    assert_eq!((s, status(&b)), (200, json!("declined")));
    // A script of one account is unknown to the other.
    f.script_for_key(
        SHOP2,
        "p2p",
        "ONLY2",
        Script::pending_then(Kind::P2p, 0, "approved"),
    );
    let only2 = format!("{base}{P2P_PATH}?tid=ONLY2");
    assert_eq!(get(&c, only2.clone(), Some(KEY)).await.0, 404);
    // Each key's budget is its own: both used their 2; the main key goes over it first,
    // shop2 is still answered, then goes over too.
    assert_eq!(get(&c, url.clone(), Some(KEY)).await.0, 429);
    assert_eq!(get(&c, only2.clone(), Some(SHOP2)).await.0, 200);
    assert_eq!(get(&c, only2.clone(), Some(SHOP2)).await.0, 429);
    assert_eq!(f.violations(), 2);
    assert_eq!(f.violations(), 2);

    // The records carry the key presented.
    let recs = f.requests_with_key(SHOP2);
    assert_eq!(recs.len(), 3);
    assert!(recs
        .iter()
        .all(|r| r.key.as_deref() == Some(SHOP2) && r.auth_ok));
    assert_eq!(f.requests_with_key(KEY).len(), 3);
    assert_eq!(get(&c, url.clone(), Some("nobody")).await.0, 401);
    assert!(!f.requests_with_key("nobody")[0].auth_ok);
}

#[tokio::test]
async fn a_key_fault_answers_only_that_key_and_histories_are_per_key() {
    const SHOP2: &str = "shop2-key";
    let (f, c) = fake(FakeOptions::default()).await;
    let base = f.base_url();
    let hist = format!("{base}{BTC_PATH}?limit=10");
    // Not accepted until added.
    assert_eq!(get(&c, hist.clone(), Some(SHOP2)).await.0, 401);
    f.add_key(SHOP2);
    f.script("btc", "B1", Script::Sequence(vec![]));
    f.script_for_key(SHOP2, "btc", "B2", Script::Sequence(vec![]));
    let tids = |body: &str| -> Vec<Value> {
        serde_json::from_str::<Value>(body)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["tid"].clone())
            .collect()
    };
    let (s, b, _) = get(&c, hist.clone(), Some(KEY)).await;
    assert_eq!((s, tids(&b)), (200, vec![json!("B1")]));
    let (s, b, _) = get(&c, hist.clone(), Some(SHOP2)).await;
    assert_eq!((s, tids(&b)), (200, vec![json!("B2")]));

    f.set_key_fault(
        SHOP2,
        Some(Fault::Status {
            code: 429,
            retry_after: Some("3600".into()),
        }),
    );
    let (s, _, h) = get(&c, hist.clone(), Some(SHOP2)).await;
    assert_eq!(
        (s, h.get("retry-after").unwrap().to_str().unwrap()),
        (429, "3600")
    );
    assert_eq!(get(&c, hist.clone(), Some(KEY)).await.0, 200);
    // A wrong key is still refused as such, not answered with the fault.
    assert_eq!(get(&c, hist.clone(), Some("nobody")).await.0, 401);
    f.set_key_fault(SHOP2, None);
    assert_eq!(get(&c, hist.clone(), Some(SHOP2)).await.0, 200);
    f.revoke_key(SHOP2);
    assert_eq!(get(&c, hist.clone(), Some(SHOP2)).await.0, 401);
}
