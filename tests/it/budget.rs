//! Issue 5: living within Ninjapay's request budget. The fake Ninjapay enforces a scaled-down
//! budget and lockout exactly like the real one, and counts every request over it.

use ninjapoll::wire::PaymentDetail;
use ninjapoll::State;
use ninjapoll_test_support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn pending_forever() -> Script {
    Script::Sequence(vec![])
}

fn started(ms: i64) -> Value {
    json!(ms as f64 / 1000.0)
}

/// A fake Ninjapay enforcing `budget` requests per `window` (on top of `fake`'s options)
/// and a daemon configuration told the same budget, for the test to adjust and spawn.
async fn budgeted(
    budget: u32,
    window: Duration,
    fake: FakeOptions,
) -> (FakeNinjapay, DaemonConfig) {
    let fake = FakeNinjapay::start(FakeOptions {
        budget: Some((budget, window)),
        ..fake
    })
    .await
    .unwrap();
    let cfg = DaemonConfig {
        budget_requests: budget,
        budget_window: format!("{}ms", window.as_millis()),
        ..DaemonConfig::default()
    };
    (fake, cfg)
}

/// Polls health until `pred` holds or `timeout` passes; returns every answer seen.
async fn watch_health(d: &Daemon, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let end = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let (_, h) = d.request("GET", "/v1/health", None).await;
        let done = pred(&h);
        seen.push(h);
        if done || Instant::now() > end {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_final(
    d: &Daemon,
    kind: &str,
    ids: &[String],
    timeout: Duration,
) -> Vec<PaymentDetail> {
    let mut out = Vec::new();
    for id in ids {
        out.push(d.wait_final(kind, id, timeout).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_over_budget_fair_and_allocated_by_age_when_scarce() {
    let window = Duration::from_secs(1);
    let budget = 60;
    // Variable latency: the provider counts a request anywhere between send and answer.
    let (fake, cfg) = budgeted(
        budget,
        window,
        FakeOptions {
            latency: Some((Duration::from_millis(0), Duration::from_millis(120))),
            ..FakeOptions::default()
        },
    )
    .await;
    let cfg = DaemonConfig {
        timeout: "3s".into(),
        ..cfg
    };
    let ladder = cfg.ladder();
    let d = spawn_daemon(&fake.base_url(), cfg).await;
    // Two cohorts pending at once: young payments (dense part of the ladder) and old ones
    // (started 750 ms ago: the sparse 100 ms rung). Together they want several times the
    // budget.
    let now = now_ms();
    let old_t0 = now - 750;
    let young: Vec<String> = (0..8).map(|i| format!("Y{i}")).collect();
    let old: Vec<String> = (0..8).map(|i| format!("O{i}")).collect();
    let mut batch = Vec::new();
    for id in &young {
        fake.script("p2p", id, pending_forever());
        batch.push(json!({"kind": "p2p", "id": id, "started_at": started(now)}));
    }
    for id in &old {
        fake.script("p2p", id, pending_forever());
        batch.push(json!({"kind": "p2p", "id": id, "started_at": started(old_t0)}));
    }
    let (code, _) = d
        .request("POST", "/v1/checks/batch", Some(json!({ "checks": batch })))
        .await;
    assert_eq!(code, 200);
    let health = watch_health(&d, Duration::from_secs(3), |h| {
        h["budget"][0]["price_level"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;
    let last = health.last().unwrap();
    assert!(
        last["budget"][0]["price_level"].as_f64().unwrap() > 0.0,
        "scarcity shows in /v1/health: {last:#}"
    );
    assert_eq!(last["budget"][0]["scarce"], true, "{last:#}");
    assert!(
        last["budget"][0]["policy"][0]["expected_delay_ms"]
            .as_i64()
            .is_some(),
        "{last:#}"
    );

    let mut ids = young.clone();
    ids.extend(old.iter().cloned());
    let finals = all_final(&d, "p2p", &ids, Duration::from_secs(30)).await;
    assert_eq!(fake.violations(), 0, "over budget");
    assert!(fake.max_in_window(window) <= budget);

    let mut counts = Vec::new();
    let mut in_common = std::collections::HashMap::new();
    for (id, p) in ids.iter().zip(&finals) {
        assert_eq!(p.payment.facts.state, State::TimedOut, "{p:#?}");
        let t0 = if id.starts_with('Y') { now } else { old_t0 };
        let deadline = t0 + ladder.timeout_ms();
        let times: Vec<i64> = fake
            .requests_for("p2p", id)
            .iter()
            .map(|r| r.unix_ms)
            .collect();
        // The check that settled the timeout was sent at or after the deadline.
        let last = *times.last().unwrap();
        assert!(
            last >= deadline - 5,
            "{id}: last check {last} before deadline {deadline}"
        );
        counts.push(times.len());
        // Checks in a span where both cohorts are pending under one price.
        let n = times
            .iter()
            .filter(|&&t| t > now + 900 && t < now + 2100)
            .count();
        in_common.insert(id.clone(), n);
    }
    assert!(
        counts.iter().all(|&c| c >= 2),
        "no payment starved: {counts:?}"
    );
    // Demand gone: the price falls back and, once the window has drained, a new payment
    // gets the plain ladder.
    let seen = watch_health(&d, Duration::from_secs(5), |h| {
        h["budget"][0]["price_level"].as_f64() == Some(0.0)
            && h["budget"][0]["budget_used"].as_u64() == Some(0)
    })
    .await;
    assert_eq!(seen.last().unwrap()["budget"][0]["price_level"], 0.0);
    let t1 = now_ms();
    fake.script("p2p", "after", pending_forever());
    d.enqueue("p2p", "after", Some(started(t1))).await;
    d.wait_final("p2p", "after", Duration::from_secs(10)).await;
    let n = fake.requests_for("p2p", "after").len();
    let planned = ladder.plan(110).len();
    // Up to 120 ms of latency against 20 ms slots costs some slots (one check in flight
    // per payment); priced like the young cohort above, it would get far fewer.
    assert!(
        n * 10 >= planned * 7,
        "after the crowd left, {n} checks of the {planned} planned"
    );
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.auth_ok && r.method == "GET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_remembers_what_was_spent() {
    let window = Duration::from_secs(2);
    let budget = 15;
    let (fake, cfg) = budgeted(budget, window, FakeOptions::default()).await;
    let mut d = spawn_daemon(&fake.base_url(), cfg).await;
    let t0 = now_ms();
    let ids: Vec<String> = (0..10).map(|i| format!("R{i}")).collect();
    for id in &ids {
        fake.script("p2p", id, pending_forever());
        d.enqueue("p2p", id, Some(started(t0))).await;
    }
    // Let it spend most of the window, then crash and come straight back.
    let spent_by = Instant::now() + Duration::from_secs(2);
    while fake.requests().len() < 12 && Instant::now() < spent_by {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = fake.requests().len();
    assert!(before >= 10, "spent {before} before the crash");
    d.kill9();
    d.restart().await;
    all_final(&d, "p2p", &ids, Duration::from_secs(30)).await;
    assert_eq!(fake.violations(), 0);
    assert!(
        fake.max_in_window(window) <= budget,
        "max {} in a window across the restart",
        fake.max_in_window(window)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_history_call_answers_every_btc_payment() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    // A config-defined kind backed by the same list endpoint coalesces too.
    let cfg = DaemonConfig {
        extra_toml: crate::LBTC_KIND.into(),
        ..DaemonConfig::default()
    };
    let ladder = cfg.ladder();
    let d = spawn_daemon(&fake.base_url(), cfg).await;
    let t0 = now_ms();
    let mut ids = Vec::new();
    for i in 0..30 {
        let id = format!("{}", 900_000 + i);
        let script = if i % 3 == 0 {
            Script::pending_then(Kind::Btc, 4, "paid")
        } else {
            pending_forever()
        };
        fake.script_btc(&id, "btc", script);
        assert_eq!(d.enqueue("btc", &id, Some(started(t0))).await.0, 201);
        ids.push(id);
    }
    let finals = all_final(&d, "btc", &ids, Duration::from_secs(20)).await;
    for (i, p) in finals.iter().enumerate() {
        let want = if i % 3 == 0 {
            State::Succeeded
        } else {
            State::TimedOut
        };
        assert_eq!(p.payment.facts.state, want, "{p:#?}");
    }
    let calls = fake.requests().len();
    let one_ladder = ladder.plan(120).len();
    assert!(
        calls <= one_ladder + 5,
        "{calls} history calls for 30 payments; one payment's ladder is {one_ladder}"
    );
    // Each call listed many payments at once.
    let max_listed = fake.requests().iter().map(|r| r.ids.len()).max().unwrap();
    assert!(max_listed >= 20, "a call listed {max_listed} payments");

    // The config-defined list kind: several payments, one call per round.
    let before = fake.requests().len();
    let t1 = now_ms();
    for i in 0..5 {
        let id = format!("{}", 800_000 + i);
        fake.script_btc(&id, "lbtc", Script::pending_then(Kind::Btc, 2, "declined"));
        assert_eq!(d.enqueue("lbtc", &id, Some(started(t1))).await.0, 201);
    }
    for i in 0..5 {
        let p = d
            .wait_final("lbtc", &format!("{}", 800_000 + i), Duration::from_secs(10))
            .await;
        assert_eq!(p.payment.facts.state, State::Failed, "{p:#?}");
    }
    let lbtc_calls: Vec<_> = fake.requests()[before..].to_vec();
    assert!(
        lbtc_calls.len() <= 6,
        "{} calls for 5 lbtc payments",
        lbtc_calls.len()
    );
    assert!(lbtc_calls.iter().all(|r| r.query.contains("wallet=lbtc")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_429_shows_in_health_metrics_and_the_log() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let d = spawn_daemon(
        &fake.base_url(),
        DaemonConfig {
            budget_requests: 1000,
            budget_window: "10s".into(),
            ..DaemonConfig::default()
        },
    )
    .await;
    fake.set_fault(Some(Fault::Status {
        code: 429,
        retry_after: Some("1".into()),
    }));
    let t0 = now_ms();
    let ids: Vec<String> = (0..5).map(|i| format!("L{i}")).collect();
    for id in &ids {
        // Approved at the first real answer: five arrivals in one burst can make the policy
        // keep only the deadline check after the pause, and that check must settle it.
        fake.script("p2p", id, Script::pending_then(Kind::P2p, 0, "approved"));
        d.enqueue("p2p", id, Some(started(t0))).await;
    }
    // The pause itself and the lowered limit are the core's (its unit tests, on simulated
    // time); here, that a real 429 reaches health, metrics and the log.
    let seen = watch_health(&d, Duration::from_secs(5), |h| {
        h["budget"][0]["budget_limit"]
            .as_u64()
            .is_some_and(|l| l < 1000)
    })
    .await;
    let h = seen.last().unwrap();
    assert!(
        h["budget"][0]["budget_limit"].as_u64().unwrap() < 1000,
        "an unexpected 429 lowers the limit in force: {h:#}"
    );
    let (_, metrics) = d.request("GET", "/metrics", None).await;
    let surprises: u64 = metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("ninjapoll_unexpected_429_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(
        (1..=5).contains(&surprises),
        "{surprises} unexpected 429s counted"
    );
    assert!(d.log().contains("429"), "logged loudly");
    fake.set_fault(None);
    for p in all_final(&d, "p2p", &ids, Duration::from_secs(20)).await {
        assert_eq!(p.payment.facts.state, State::Succeeded, "{p:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_mark_the_kind_unhealthy_and_recover() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let d = spawn_daemon(
        &fake.base_url(),
        DaemonConfig {
            budget_window: "2s".into(),
            timeout: "6s".into(),
            ..DaemonConfig::default()
        },
    )
    .await;
    fake.set_api_key("rotated-by-the-merchant");
    let t0 = now_ms();
    let ids: Vec<String> = (0..10).map(|i| format!("K{i}")).collect();
    for id in &ids {
        fake.script("p2p", id, Script::pending_then(Kind::P2p, 1, "approved"));
        d.enqueue("p2p", id, Some(started(t0))).await;
    }
    let seen = watch_health(&d, Duration::from_secs(3), |h| {
        h["budget"][0]["unhealthy_kinds"]
            .as_array()
            .is_some_and(|a| a.iter().any(|k| k == "p2p"))
    })
    .await;
    let h = seen.last().unwrap();
    assert_eq!(h["budget"][0]["unhealthy_kinds"], json!(["p2p"]), "{h:#}");
    assert_eq!(h["healthy"], false);
    // The alert rule NinjapayRefusesKey reads the same from /metrics.
    let refused_metric = |text: &str, v: &str| {
        text.lines()
            .any(|l| l == format!("ninjapoll_key_refused{{pool=\"default\",kind=\"p2p\"}} {v}"))
    };
    let (_, text) = d.request("GET", "/metrics", None).await;
    assert!(refused_metric(text.as_str().unwrap(), "1"), "{text}");
    d.wait_for(
        "p2p",
        "K0",
        |p| p["last_error"].as_str().unwrap_or("").contains("401"),
        Duration::from_secs(3),
    )
    .await;
    // While the key is refused, probes, not a check per payment per step.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = fake.requests().iter().filter(|r| !r.auth_ok).count();
    // The first wave (one per payment, in flight before the first 401 came back), then
    // one probe per 50 ms.
    assert!(refused <= 25, "{refused} refused requests in ~0.6 s");
    let reports = d.log().matches("refuses the API key").count();
    assert!(
        reports <= 2,
        "reported {reports} times, not once per interval"
    );
    // The merchant fixes the key: it recovers by itself.
    fake.set_api_key(&FakeOptions::default().api_key);
    for p in all_final(&d, "p2p", &ids, Duration::from_secs(20)).await {
        assert_eq!(p.payment.facts.state, State::Succeeded, "{p:#?}");
    }
    let (_, h) = d.request("GET", "/v1/health", None).await;
    assert_eq!(h["budget"][0]["unhealthy_kinds"], json!([]), "{h:#}");
    let (_, text) = d.request("GET", "/metrics", None).await;
    assert!(refused_metric(text.as_str().unwrap(), "0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_preset_sends_the_documented_request() {
    let fake = FakeNinjapay::start(FakeOptions {
        paywall_api_key: Some("invoice-key".into()),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let d = spawn_daemon(
        &fake.base_url(),
        DaemonConfig {
            extra_toml: "[kinds.paywall]\napi_key = \"invoice-key\"\n".into(),
            ..DaemonConfig::default()
        },
    )
    .await;
    fake.script("p2p", "P1", Script::pending_then(Kind::P2p, 1, "approved"));
    fake.script(
        "quote",
        "Q1",
        Script::pending_then(Kind::Quote, 1, "Completed"),
    );
    fake.script(
        "paywall",
        "FT_1",
        Script::pending_then(Kind::Paywall, 1, "FAILURE"),
    );
    fake.script_btc("4242", "btc", Script::pending_then(Kind::Btc, 1, "paid"));
    for (k, id) in [
        ("p2p", "P1"),
        ("quote", "Q1"),
        ("paywall", "FT_1"),
        ("btc", "4242"),
    ] {
        assert_eq!(d.enqueue(k, id, None).await.0, 201);
    }
    let want = [
        ("p2p", "P1", State::Succeeded),
        ("quote", "Q1", State::Succeeded),
        ("paywall", "FT_1", State::Failed),
        ("btc", "4242", State::Succeeded),
    ];
    for (k, id, state) in want {
        let p = d.wait_final(k, id, Duration::from_secs(10)).await;
        assert_eq!(p.payment.facts.state, state, "{p:#?}");
    }
    for r in fake.requests() {
        assert!(r.auth_ok, "{r:?}");
        match r.kind.as_deref() {
            Some("p2p") => {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str()),
                    ("GET", "/uapi/v1/p2p/paymentLink/checkPayment")
                );
                assert_eq!(r.query, "tid=P1");
            }
            Some("quote") => {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str()),
                    ("GET", "/sapi/v1/checkQuote")
                );
                assert_eq!(r.query, "tid=Q1");
            }
            Some("paywall") => {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str()),
                    ("POST", "/webextension/api/v1/fiat/paywall/trx-status")
                );
                assert_eq!(r.ids, vec!["FT_1".to_string()]);
            }
            Some("btc") => {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str()),
                    ("GET", "/sapi/v1/history")
                );
                assert!(r.query.contains("limit="), "{}", r.query);
            }
            other => panic!("unexpected request {other:?}: {r:?}"),
        }
    }
}

/// Waits until the learner holds at least `n` finished p2p payments, restarts the daemon
/// and waits for them again; returns the last health seen.
async fn learnt_again_after_a_restart(d: &mut Daemon, n: u64) -> Value {
    let evidence = |h: &Value| {
        h["budget"][0]["policy"]
            .as_array()
            .and_then(|ks| ks.iter().find(|k| k["kind"] == "p2p"))
            .and_then(|k| k["evidence"].as_u64())
            .unwrap_or(0)
    };
    let seen = watch_health(d, Duration::from_secs(5), |h| evidence(h) >= n).await;
    let last = seen.last().unwrap();
    assert!(evidence(last) >= n, "before a restart: {last:#}");
    d.restart().await;
    let seen = watch_health(d, Duration::from_secs(5), |h| evidence(h) >= n).await;
    let last = seen.last().unwrap().clone();
    assert!(evidence(&last) >= n, "after a restart: {last:#}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_rebuilds_the_learners_whole_long_memory() {
    // A lifetime of 2 s (the budget's window): the recent memory spans two to three of
    // them, the long memory up to twelve (24 s). Payments started 10 s ago are in the long
    // memory only, and a restart must read them back too.
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let cfg = DaemonConfig {
        budget_window: "2s".into(),
        ..DaemonConfig::default()
    };
    let mut d = spawn_daemon(&fake.base_url(), cfg).await;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 10;
    let ids: Vec<String> = (0..8).map(|i| format!("M{i}")).collect();
    for id in &ids {
        fake.script("p2p", id, Script::pending_then(Kind::P2p, 1, "approved"));
        assert_eq!(d.enqueue("p2p", id, Some(json!(started))).await.0, 201);
    }
    all_final(&d, "p2p", &ids, Duration::from_secs(5)).await;
    learnt_again_after_a_restart(&mut d, 8).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_ages_are_learnt_survive_a_restart_and_feed_simulate() {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let mut d = spawn_daemon(&fake.base_url(), DaemonConfig::default()).await;
    let ids: Vec<String> = (0..12).map(|i| format!("L{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        fake.script(
            "p2p",
            id,
            Script::pending_then(Kind::P2p, 1 + i % 4, "approved"),
        );
        assert_eq!(d.enqueue("p2p", id, None).await.0, 201);
    }
    all_final(&d, "p2p", &ids, Duration::from_secs(10)).await;
    // What was learnt is rebuilt from the database, not kept in memory only.
    let last = learnt_again_after_a_restart(&mut d, 12).await;
    let p50 = last["budget"][0]["policy"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["kind"] == "p2p"))
        .map(|k| k["flip_age_p50_ms"].as_i64().unwrap_or(0))
        .unwrap_or(0);
    // The flips came after one to four 20 ms steps past the 100–120 ms first check.
    assert!(
        (100..=400).contains(&p50),
        "learnt median flip age {p50} ms: {last:#}"
    );
    d.stop().await;

    // `ninjapoll simulate` reads the same evidence from the database.
    let (ok, text, err) = simulate(
        d.config_path(),
        &[
            "--rate", "20/s", "--warmup", "3s", "--hours", "0.002", "--json",
        ],
    );
    assert!(ok, "{text}{err}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["mix"]
            .as_str()
            .unwrap_or("")
            .contains("learnt from 12 finished p2p payments"),
        "{v:#}"
    );
    assert!(v["mean_delay_s"].as_f64().is_some_and(|s| s > 0.0), "{v:#}");
    assert_eq!(v["over_budget"], 0);
    assert_eq!(v["missed_deadlines"], 0);
    // With another kind on the key, each kind's flips are its own: p2p's learnt, quote's
    // (none finished) the prior the ladder implies.
    let (ok, text, err) = simulate(
        d.config_path(),
        &[
            "--rate",
            "20/s",
            "--also",
            "quote=1/s",
            "--warmup",
            "3s",
            "--hours",
            "0.002",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let mix_of = |i: usize| v["by_kind"][i]["mix"].as_str().unwrap_or("").to_string();
    assert!(
        mix_of(0).contains("learnt from 12 finished p2p payments"),
        "{v:#}"
    );
    assert!(mix_of(1).contains("no finished quote payments"), "{v:#}");

    // On the documented ladder with 100 requests per 10 minutes: 0.1 payments per second
    // (60 per window) fit; at 0.2 (120 per window, each needing a request at least) no
    // policy keeps up, and `simulate` says so.
    let real = d.config_path().with_extension("real.toml");
    std::fs::write(&real, "[ninjapay]\nbudget_requests = 100\n").unwrap();
    let on_a = |rate: &str, json: bool| {
        let mut args = vec![
            "--mix", "A", "--rate", rate, "--warmup", "10m", "--hours", "0.2",
        ];
        if json {
            args.push("--json");
        }
        let (ok, out, err) = simulate(&real, &args);
        assert!(ok, "{err}");
        out
    };
    let v: Value = serde_json::from_str(&on_a("0.1/s", true)).unwrap();
    assert_eq!(v["keeps_up"], true, "{v:#}");
    assert_eq!(v["least_requests_per_window"], 60.0, "{v:#}");
    assert_eq!(
        (v["budget_requests"].clone(), v["budget_window_s"].clone()),
        (100.into(), 600.0.into())
    );
    let v: Value = serde_json::from_str(&on_a("0.2/s", true)).unwrap();
    assert_eq!(v["keeps_up"], false, "{v:#}");
    let text = on_a("0.2/s", false);
    assert!(text.contains("one key cannot keep up"), "{text}");
    assert!(
        text.contains("120 per 10m against a budget of 100"),
        "{text}"
    );
    assert!(text.contains("no policy keeps up"), "{text}");

    // Two kinds on the key: one budget for both, each kind's delay apart.
    let both_as = |also: &str, json: bool| {
        let mut args = vec![
            "--mix", "A", "--rate", "0.05/s", "--also", also, "--warmup", "10m", "--hours", "0.2",
        ];
        if json {
            args.push("--json");
        }
        simulate(&real, &args)
    };
    let both = |also: &str| both_as(also, true);
    let (ok, out, err) = both("quote=0.05/s");
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["least_requests_per_window"], 60.0, "{v:#}");
    assert_eq!(v["keeps_up"], true, "{v:#}");
    let kinds: Vec<&str> = v["by_kind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["p2p", "quote"]);
    for k in v["by_kind"].as_array().unwrap() {
        assert!(k["mean_delay_s"].as_f64().is_some_and(|s| s > 0.0), "{v:#}");
    }
    let (_, text, _) = both_as("quote=0.05/s", false);
    assert!(
        text.contains("p2p at 0.05/s, quote at 0.05/s on one key"),
        "{text}"
    );
    for kind in ["p2p", "quote"] {
        assert!(
            text.contains(&format!("  {kind}: a flip is seen after")),
            "{text}"
        );
    }
    let (_, out, _) = both("quote=0.15/s");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["keeps_up"], false, "{v:#}");
    for (bad, says) in [
        ("nope=0.1/s", "unknown kind"),
        ("quote", "expected KIND=RATE"),
        ("p2p=0.1/s", "given twice"),
    ] {
        let (ok, _, err) = both(bad);
        assert!(!ok && err.contains(says), "{bad}: {err}");
    }
}

/// `ninjapoll --config <config> simulate <args>`: whether it succeeded, what it printed,
/// what it logged.
fn simulate(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ninjapoll"))
        .arg("--config")
        .arg(config)
        .arg("simulate")
        .args(args)
        .env_remove("NINJAPOLL_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_when_one_key_cannot_keep_up_and_when_it_can_again() {
    let (fake, cfg) = budgeted(10, Duration::from_millis(500), FakeOptions::default()).await;
    let d = spawn_daemon(&fake.base_url(), cfg).await;
    let keeps_up = |h: &Value| h["budget"][0]["keeps_up"].as_bool();
    // About 40 payments a second, 20 a window, against 10 requests a window: each needs a
    // request at least, so no schedule keeps up.
    let mut seen = Vec::new();
    let mut scrapes = Vec::new();
    for i in 0..100 {
        let id = format!("K{i}");
        fake.script("p2p", &id, pending_forever());
        assert_eq!(d.enqueue("p2p", &id, None).await.0, 201);
        if i % 10 == 0 {
            seen.push(d.request("GET", "/v1/health", None).await.1);
            scrapes.push(d.request("GET", "/metrics", None).await.1);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The alert rule NinjapollKeyCannotKeepUp reads the same from /metrics.
    let keeps_up_metric = |text: &Value, v: &str| {
        text.as_str()
            .unwrap()
            .lines()
            .any(|l| l == format!("ninjapoll_keeps_up{{pool=\"default\"}} {v}"))
    };
    assert!(
        scrapes.iter().any(|t| keeps_up_metric(t, "0")),
        "{}",
        scrapes.last().unwrap()
    );
    let down = seen
        .iter()
        .find(|h| keeps_up(h) == Some(false))
        .unwrap_or_else(|| panic!("never said so: {:#}", seen.last().unwrap()));
    assert_eq!(down["healthy"], false, "{down:#}");
    let arrivals = down["budget"][0]["arrivals_per_window"].as_f64().unwrap();
    assert!((10.0..40.0).contains(&arrivals), "{down:#}");
    let problems = down["problems"].to_string();
    assert!(problems.contains("no schedule keeps up"), "{down:#}");
    assert!(problems.contains("more API keys"), "{down:#}");
    // Arrivals stop: within a couple of windows the key keeps up again, and the problem goes.
    let seen = watch_health(&d, Duration::from_secs(10), |h| keeps_up(h) == Some(true)).await;
    let last = seen.last().unwrap();
    assert_eq!(keeps_up(last), Some(true), "{last:#}");
    assert!(
        !last["problems"].to_string().contains("keeps up"),
        "{last:#}"
    );
    let text = d.request("GET", "/metrics", None).await.1;
    assert!(keeps_up_metric(&text, "1"), "{text}");
    assert_eq!(fake.violations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_forms_a_backlog_that_health_shows_while_later_payments_keep_their_schedule() {
    // 300 payments at once against 60 requests a window (1 s), on the ladder compressed to
    // a 1.5 s life: at least 300 requests, five windows of budget. They go into a backlog,
    // which health shows and which drains within the budget; payments that start after
    // the burst are checked on their own schedule meanwhile, not after it.
    let window = Duration::from_secs(1);
    let budget = 60;
    let (fake, cfg) = budgeted(budget, window, FakeOptions::default()).await;
    let ladder = cfg.ladder();
    let d = spawn_daemon(&fake.base_url(), cfg).await;
    let t0 = now_ms();
    let at = Instant::now();
    let mut burst = Vec::new();
    let mut batch = Vec::new();
    for i in 0..300 {
        let id = format!("B{i}");
        // Two in three approve at some age within the life, the rest never flip.
        let script = if i % 3 == 2 {
            pending_forever()
        } else {
            Script::FlipAt {
                at: at + Duration::from_millis(150 + (i as u64 * 37) % 1200),
                status: "approved".into(),
            }
        };
        fake.script("p2p", &id, script);
        batch.push(json!({"kind": "p2p", "id": id, "started_at": started(t0)}));
        burst.push(id);
    }
    let (code, _) = d
        .request("POST", "/v1/checks/batch", Some(json!({ "checks": batch })))
        .await;
    assert_eq!(code, 200);

    // The backlog shows in health (and in the metrics) while the burst waits.
    let seen = watch_health(&d, Duration::from_secs(10), |h| {
        h["budget"][0]["backlog"].as_u64().unwrap_or(0) > 100
    })
    .await;
    let piled = seen.last().unwrap();
    assert!(
        piled["budget"][0]["backlog"].as_u64().unwrap() > 100,
        "{piled:#}"
    );
    assert!(
        piled["budget"][0]["behind_ms"].as_i64().unwrap() > 0,
        "{piled:#}"
    );
    let (_, metrics) = d.request("GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("ninjapoll_backlog_payments{pool=\"default\"}"),
        "{metrics}"
    );

    // Payments started after the burst, each approving 300 ms into its life.
    let mut later = Vec::new();
    for i in 0..5 {
        let id = format!("L{i}");
        fake.script(
            "p2p",
            &id,
            Script::FlipAt {
                at: Instant::now() + Duration::from_millis(300),
                status: "approved".into(),
            },
        );
        assert_eq!(d.enqueue("p2p", &id, None).await.0, 201);
        later.push(id);
    }

    // Once a check has waited a whole window, health says so, naming the backlog.
    let seen = watch_health(&d, Duration::from_secs(10), |h| {
        h["problems"].to_string().contains("in its backlog")
    })
    .await;
    let behind = seen.last().unwrap();
    assert_eq!(behind["healthy"], false, "{behind:#}");
    // Once the backlog has a pace, health says how long it takes to drain at that pace,
    // in the field and in the problem line.
    let seen = watch_health(&d, Duration::from_secs(10), |h| {
        h["budget"][0]["backlog_drains_in_ms"].as_i64().is_some()
            && h["problems"].to_string().contains("at its pace so far")
    })
    .await;
    let paced = seen.last().unwrap();
    assert!(
        paced["problems"].to_string().contains("at its pace so far"),
        "{paced:#}"
    );
    assert!(
        paced["budget"][0]["backlog_drains_in_ms"]
            .as_i64()
            .unwrap_or(0)
            > 0,
        "{paced:#}"
    );
    assert!(
        paced["budget"][0]["backlog"].as_u64().unwrap_or(0) > 0,
        "{paced:#}"
    );
    assert!(
        behind["problems"].to_string().contains("behind"),
        "{behind:#}"
    );

    let burst_finals = all_final(&d, "p2p", &burst, Duration::from_secs(60)).await;
    let later_finals = all_final(&d, "p2p", &later, Duration::from_secs(10)).await;
    assert_eq!(fake.violations(), 0, "over budget");
    assert!(fake.max_in_window(window) <= budget);
    let last_of = |kind: &str, id: &str| {
        fake.requests_for(kind, id)
            .last()
            .map(|r| r.unix_ms)
            .unwrap()
    };
    let burst_done = burst.iter().map(|id| last_of("p2p", id)).max().unwrap();
    for (id, p) in burst.iter().zip(&burst_finals) {
        let state = p.payment.facts.state;
        if id[1..].parse::<u32>().unwrap() % 3 == 2 {
            // Never flipped: its last check was its deadline check.
            assert_eq!(state, State::TimedOut, "{p:#?}");
            assert!(last_of("p2p", id) >= t0 + ladder.timeout_ms() - 5, "{id}");
        } else {
            assert_eq!(state, State::Succeeded, "{p:#?}");
        }
    }
    for (id, p) in later.iter().zip(&later_finals) {
        assert_eq!(p.payment.facts.state, State::Succeeded, "{p:#?}");
        assert!(
            last_of("p2p", id) < burst_done,
            "{id} was seen after the whole burst had drained: it waited behind it"
        );
    }
    // Drained: health says the key caught up, and no problem is left about it.
    let seen = watch_health(&d, Duration::from_secs(5), |h| {
        h["budget"][0]["backlog"].as_u64() == Some(0)
    })
    .await;
    let caught_up = seen.last().unwrap();
    assert_eq!(caught_up["budget"][0]["backlog"], 0, "{caught_up:#}");
    assert!(
        !caught_up["problems"].to_string().contains("behind"),
        "{caught_up:#}"
    );
}

/// The wall clock moved between two runs (run 1's an hour behind, then an hour ahead, as
/// an NTP step after boot or a restored VM snapshot would leave it): a restart straight
/// after spending most of the budget still never exceeds it. The ledger rows' stored times
/// are moved by the hour, as run 1's wrong clock would have written them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_the_wall_clock_moved_never_overspends() {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::ConnectOptions;
    for shift_ms in [-3_600_000i64, 3_600_000] {
        let window = Duration::from_secs(2);
        let budget = 15;
        let (fake, cfg) = budgeted(budget, window, FakeOptions::default()).await;
        let mut d = spawn_daemon(&fake.base_url(), cfg).await;
        let t0 = now_ms();
        let ids: Vec<String> = (0..10).map(|i| format!("W{i}")).collect();
        for id in &ids {
            fake.script("p2p", id, pending_forever());
            d.enqueue("p2p", id, Some(started(t0))).await;
        }
        let spent_by = Instant::now() + Duration::from_secs(2);
        while fake.requests().len() < 12 && Instant::now() < spent_by {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            fake.requests().len() >= 10,
            "spent {}",
            fake.requests().len()
        );
        // A clean stop: it releases the ledger rows reserved but unused, which a restart
        // would otherwise count as spent just now whatever their times.
        d.stop().await;
        let mut db = SqliteConnectOptions::new()
            .filename(d.db_path())
            .connect()
            .await
            .unwrap();
        sqlx::query("UPDATE upstream_requests SET sent_at = sent_at + ?1, done_at = done_at + ?1")
            .bind(shift_ms)
            .execute(&mut db)
            .await
            .unwrap();
        drop(db);
        d.restart().await;
        all_final(&d, "p2p", &ids, Duration::from_secs(30)).await;
        assert!(
            fake.max_in_window(window) <= budget,
            "clock moved {shift_ms} ms: max {} in a window across the restart",
            fake.max_in_window(window)
        );
    }
}
