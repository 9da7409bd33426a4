//! The daemon core against the fake Ninjapay (SPEC sections 1–5): outcomes per kind, the
//! ladder's plan, upstream faults, the socket API's validation and idempotency, and a
//! SIGKILL in the middle of a ladder.
//!
//! Every test runs the real binary with the provider's ladder compressed ~200× (see
//! `DaemonConfig::default`), so a whole ladder takes 1.5 s.

use std::time::Duration;

use ninjapoll::State;
use ninjapoll_test_support::*;
use serde_json::{json, Value};

/// A check may arrive this much before its planned slot (clock rounding to milliseconds).
const EARLY_MS: i64 = 3;
/// A check may arrive this much after its planned slot (a loaded 2-core CI machine).
const LATE_MS: i64 = 45;

/// A ladder whose cadence (≥ 50 ms) is well above scheduling noise, for the tests that
/// hold every check to its planned slot: first check at 100–120 ms, every 50 ms for 300 ms,
/// every 100 ms for 400 ms, then every 200 ms until the 1.5 s timeout.
fn steady() -> DaemonConfig {
    DaemonConfig {
        steps: vec![
            ("50ms".into(), Some("300ms".into())),
            ("100ms".into(), Some("400ms".into())),
            ("200ms".into(), None),
        ],
        ..DaemonConfig::default()
    }
}

async fn setup(config: DaemonConfig) -> (FakeNinjapay, Daemon) {
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let daemon = spawn_daemon(&fake.base_url(), config).await;
    (fake, daemon)
}

/// `started_at` for the socket API: unix seconds with millisecond precision.
fn started_at(t0_ms: i64) -> Value {
    json!(t0_ms as f64 / 1000.0)
}

/// Arrival offsets (ms after `t0`) of the fake's requests for `kind`/`id`.
fn offsets(fake: &FakeNinjapay, kind: &str, id: &str, t0: i64) -> Vec<i64> {
    fake.requests_for(kind, id)
        .iter()
        .map(|r| r.unix_ms - t0)
        .collect()
}

/// Matches each arrival offset to a planned check (in order, each slot at most once):
/// the index of the slot in `plan`, or `None` for an arrival off the plan.
fn match_plan(plan: &[i64], offsets: &[i64], late: i64) -> Vec<Option<usize>> {
    let mut next = 0;
    offsets
        .iter()
        .map(|&o| {
            // The latest unused slot that this arrival may belong to.
            let candidate = (next..plan.len())
                .take_while(|&i| plan[i] - EARLY_MS <= o)
                .last()?;
            if o - plan[candidate] <= late {
                next = candidate + 1;
                Some(candidate)
            } else {
                None
            }
        })
        .collect()
}

/// The plans (jitter, checks) of the configured ladder that explain the first arrival.
fn candidate_plans(config: &DaemonConfig, first_offset: i64) -> Vec<(i64, Vec<i64>)> {
    let ladder = config.ladder();
    let (lo, hi) = config.first_check_ms();
    (lo..=hi)
        .filter(|j| first_offset - j >= -EARLY_MS && first_offset - j <= LATE_MS)
        .map(|j| (j, ladder.plan(j)))
        .collect()
}

#[tokio::test]
async fn p2p_pending_three_times_then_approved_succeeds_after_four_checks() {
    let (fake, daemon) = setup(DaemonConfig::default()).await;
    fake.script(
        "p2p",
        "A198660213997",
        Script::pending_then(Kind::P2p, 3, "approved"),
    );
    let t0 = now_ms();
    let (code, p) = daemon
        .enqueue("p2p", "A198660213997", Some(started_at(t0)))
        .await;
    assert_eq!(code, 201, "{p}");
    assert_eq!(p["state"], "pending");
    assert_eq!(p["final"], false);
    assert_eq!(p["checks_done"], 0);
    assert_eq!(rfc3339_ms(&p["started_at"]), Some(t0));

    let p = daemon
        .wait_final("p2p", "A198660213997", Duration::from_secs(3))
        .await;
    assert_eq!(p.payment.facts.state, State::Succeeded, "{p:#?}");
    assert_eq!(p.payment.facts.upstream_status.as_deref(), Some("approved"));
    assert_eq!(p.payment.checks_done, 4);
    assert_eq!(p.payment.facts.response["tid"], "A198660213997");
    assert!(p.payment.finished_at.is_some(), "{p:#?}");
    assert_eq!(p.payment.next_check_at, None, "{p:#?}");

    // Exactly four requests, each on a slot of the plan (a late one may push the next
    // to a later slot, never off the plan).
    let seen = offsets(&fake, "p2p", "A198660213997", t0);
    assert_eq!(seen.len(), 4, "{seen:?}");
    let config = DaemonConfig::default();
    let plans = candidate_plans(&config, seen[0]);
    assert!(
        plans
            .iter()
            .any(|(_, plan)| match_plan(plan, &seen, LATE_MS).iter().all(Option::is_some)),
        "arrivals {seen:?} off every plan {plans:?}"
    );
    assert!(fake.requests().iter().all(|r| r.auth_ok && r.status == 200));

    // Final: polling stopped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.requests_for("p2p", "A198660213997").len(), 4);
}

#[tokio::test]
async fn quote_that_stays_pending_times_out_after_the_deadline_check() {
    let config = steady();
    let (fake, daemon) = setup(config.clone()).await;
    fake.script("quote", "21066027789", Script::Sequence(vec![]));
    let t0 = now_ms();
    let (code, p) = daemon
        .enqueue("quote", "21066027789", Some(started_at(t0)))
        .await;
    assert_eq!(code, 201, "{p}");

    let p = daemon
        .wait_final("quote", "21066027789", Duration::from_secs(4))
        .await;
    assert_eq!(p.payment.facts.state, State::TimedOut, "{p:#?}");
    assert_eq!(p.payment.facts.upstream_status.as_deref(), Some("pending"));

    let seen = offsets(&fake, "quote", "21066027789", t0);
    let timeout = config.ladder().timeout_ms();
    // The last check is at or after the deadline, and only one is.
    let last = *seen.last().unwrap();
    assert!(
        last >= timeout - EARLY_MS,
        "last check at {last} ms < {timeout} ms: {seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|&&o| o >= timeout).count(),
        1,
        "{seen:?}"
    );
    let finished = p.payment.finished_at.unwrap().0.as_ms() - t0;
    assert!(
        finished >= last,
        "timed out at {finished} ms before the last check {last} ms"
    );

    // The number of checks is the compressed ladder's plan (crate::ladder::Ladder::plan),
    // each on its slot: nothing skipped, nothing added.
    assert_eq!(p.payment.checks_done as usize, seen.len(), "{p:#?}");
    let plans = candidate_plans(&config, seen[0]);
    let on_plan = plans.iter().find(|(_, plan)| {
        plan.len() == seen.len() && match_plan(plan, &seen, LATE_MS).iter().all(Option::is_some)
    });
    assert!(
        on_plan.is_some(),
        "arrivals {seen:?}\nare not one of the plans {plans:?}"
    );

    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fake.requests_for("quote", "21066027789").len(), seen.len());
}

#[tokio::test]
async fn paywall_failed_ends_failed() {
    let (fake, daemon) = setup(DaemonConfig::default()).await;
    fake.script(
        "paywall",
        "FT_RTPL_SOxhq",
        Script::Sequence(vec![Step::Status("FAILED".into())]),
    );
    let (code, _) = daemon.enqueue("paywall", "FT_RTPL_SOxhq", None).await;
    assert_eq!(code, 201);
    let p = daemon
        .wait_final("paywall", "FT_RTPL_SOxhq", Duration::from_secs(3))
        .await;
    assert_eq!(p.payment.facts.state, State::Failed, "{p:#?}");
    assert_eq!(p.payment.facts.upstream_status.as_deref(), Some("FAILED"));
    assert_eq!(p.payment.checks_done, 1);
    assert_eq!(p.payment.facts.response["data"]["trxStatus"], "FAILED");

    let reqs = fake.requests_for("paywall", "FT_RTPL_SOxhq");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert!(reqs[0].auth_ok, "x-api-key not sent: {reqs:?}");
}

#[tokio::test]
async fn btc_history_answers_several_payments_at_once() {
    let (fake, daemon) = setup(DaemonConfig::default()).await;
    fake.script(
        "btc",
        "210660277897",
        Script::pending_then(Kind::Btc, 2, "paid"),
    );
    fake.script(
        "btc",
        "198660213997",
        Script::pending_then(Kind::Btc, 1, "declined"),
    );
    let t0 = now_ms();
    for id in ["210660277897", "198660213997"] {
        let (code, p) = daemon.enqueue("btc", id, Some(started_at(t0))).await;
        assert_eq!(code, 201, "{p}");
    }
    let paid = daemon
        .wait_final("btc", "210660277897", Duration::from_secs(3))
        .await;
    let declined = daemon
        .wait_final("btc", "198660213997", Duration::from_secs(3))
        .await;
    assert_eq!(paid.payment.facts.state, State::Succeeded, "{paid:#?}");
    assert_eq!(paid.payment.facts.upstream_status.as_deref(), Some("paid"));
    assert_eq!(declined.payment.facts.state, State::Failed, "{declined:#?}");
    assert_eq!(
        declined.payment.facts.upstream_status.as_deref(),
        Some("declined")
    );
    // Same ladder start: each listing served both payments while both were pending.
    let listings = fake.requests_for("btc", "198660213997");
    assert!(listings
        .iter()
        .all(|r| r.path == "/sapi/v1/history" && r.auth_ok));
    assert!(
        listings
            .iter()
            .all(|r| r.ids.contains(&"210660277897".to_owned())),
        "{listings:?}"
    );
    assert_eq!(
        fake.requests().len(),
        fake.requests_for("btc", "210660277897").len()
    );
}

/// The history lists the merchant's transactions newest first, tracked or not.
#[tokio::test]
async fn btc_payment_behind_newer_transactions_is_still_found() {
    let (fake, daemon) = setup(DaemonConfig::default()).await;
    fake.script(
        "btc",
        "210660277897",
        Script::pending_then(Kind::Btc, 1, "paid"),
    );
    // Newer transactions of the merchant that ninjapoll does not track.
    for id in ["300000000001", "300000000002", "300000000003"] {
        fake.script("btc", id, Script::Sequence(vec![]));
    }
    daemon.enqueue("btc", "210660277897", None).await;
    let p = daemon
        .wait_final("btc", "210660277897", Duration::from_secs(3))
        .await;
    let queries: Vec<String> = fake.requests().iter().map(|r| r.query.clone()).collect();
    assert_eq!(
        p.payment.facts.state,
        State::Succeeded,
        "{p:#?}\nhistory queries: {queries:?}"
    );
}

#[tokio::test]
async fn upstream_faults_keep_the_payment_pending_with_last_error() {
    let (fake, daemon) = setup(DaemonConfig::default()).await;
    let cases: Vec<(&str, &str, Step)> = vec![
        (
            "p2p",
            "f500",
            Step::Http {
                code: 500,
                body: r#"{"success": false, "message": "Internal error"}"#.into(),
                retry_after: None,
            },
        ),
        ("p2p", "fnotjson", Step::NotJson),
        ("quote", "fmissing", Step::MissingStatus),
        ("paywall", "fenvelope", Step::EnvelopeFalse),
        ("p2p", "f404", Step::NotFound),
    ];
    let t0 = now_ms();
    for (kind, id, step) in &cases {
        fake.script(kind, id, Script::Sequence(vec![step.clone()]));
        let (code, p) = daemon.enqueue(kind, id, Some(started_at(t0))).await;
        assert_eq!(code, 201, "{p}");
    }
    for (kind, id, step) in &cases {
        let p = daemon
            .wait_for(
                kind,
                id,
                |p| !p["last_error"].is_null(),
                Duration::from_secs(3),
            )
            .await;
        assert_eq!(p["state"], "pending", "{step:?}: {p:#}");
        assert_eq!(p["final"], false, "{step:?}: {p:#}");
        let err = p["last_error"].as_str().unwrap_or_default();
        assert!(!err.trim().is_empty(), "{step:?}: {p:#}");
        eprintln!("{step:?} -> last_error {err:?}");
    }
    // Each was asked about again after its fault: still on the ladder.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for (kind, id, step) in &cases {
        while fake.requests_for(kind, id).len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "{step:?}: {kind}/{id} not checked again"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Once the provider answers properly, the payments settle.
    for (kind, id, _) in &cases {
        let done = Kind::parse(kind).unwrap().final_statuses()[0];
        fake.script(kind, id, Script::Sequence(vec![Step::Status(done.into())]));
    }
    for (kind, id, step) in &cases {
        let p = daemon.wait_final(kind, id, Duration::from_secs(3)).await;
        assert_eq!(p.payment.facts.state, State::Succeeded, "{step:?}: {p:#?}");
    }
}

#[tokio::test]
async fn unknown_raw_status_stays_pending_and_is_recorded() {
    let (fake, daemon) = setup(DaemonConfig::default()).await;
    fake.script(
        "p2p",
        "odd",
        Script::Sequence(vec![
            Step::Status("on_hold".into()),
            Step::Status("Approved".into()),
        ]),
    );
    daemon.enqueue("p2p", "odd", None).await;
    let p = daemon
        .wait_final("p2p", "odd", Duration::from_secs(3))
        .await;
    // Raw statuses match case-insensitively.
    assert_eq!(p.payment.facts.state, State::Succeeded, "{p:#?}");
    assert_eq!(p.payment.checks_done, 2, "{p:#?}");
    assert!(
        p.history
            .iter()
            .any(|h| h.upstream_status.as_deref() == Some("on_hold")),
        "the unknown status is not recorded: {p:#?}"
    );
}

#[tokio::test]
async fn socket_api_refuses_unknown_kind_and_bad_ids() {
    let (_fake, daemon) = setup(DaemonConfig::default()).await;
    let bad = [
        json!({"kind": "nope", "id": "1"}),
        json!({"kind": "p2p", "id": ""}),
        json!({"kind": "p2p", "id": " padded "}),
        json!({"kind": "p2p"}),
        json!({"kind": "p2p", "id": "1", "started_at": "yesterday"}),
        json!({"kind": "p2p", "id": "1", "bogus": true}),
        json!("not an object"),
    ];
    for body in bad {
        let (code, answer) = daemon
            .request("POST", "/v1/checks", Some(body.clone()))
            .await;
        assert_eq!(code, 400, "{body} -> {answer}");
        assert!(answer["error"]["code"].is_string(), "{body} -> {answer}");
        assert!(answer["error"]["message"].is_string(), "{body} -> {answer}");
    }
    let (code, answer) = daemon.request("GET", "/v1/checks/nope/1", None).await;
    assert_eq!(code, 400, "{answer}");
    assert!(answer["error"]["code"].is_string(), "{answer}");
    let (code, answer) = daemon.payment("p2p", "untracked").await;
    assert_eq!(code, 404, "{answer}");
    assert!(answer["error"]["code"].is_string(), "{answer}");
    // Nothing was enqueued.
    let (code, list) = daemon.request("GET", "/v1/checks", None).await;
    assert_eq!(code, 200);
    assert_eq!(list["payments"], json!([]), "{list}");
}

#[tokio::test]
async fn enqueue_is_idempotent_on_kind_and_id() {
    let (fake, daemon) = setup(DaemonConfig::default()).await;
    fake.script(
        "p2p",
        "idem",
        Script::pending_then(Kind::P2p, 1, "approved"),
    );
    let t0 = now_ms();
    let (first, a) = daemon.enqueue("p2p", "idem", Some(started_at(t0))).await;
    // A client retrying the same request, or not giving started_at at all.
    let (second, b) = daemon.enqueue("p2p", "idem", Some(started_at(t0))).await;
    let (third, c) = daemon.enqueue("p2p", "idem", None).await;
    assert_eq!((first, second, third), (201, 200, 200), "{a}\n{b}\n{c}");
    assert_eq!(a["started_at"], b["started_at"]);
    assert_eq!(a["started_at"], c["started_at"]);
    assert_eq!((&b["kind"], &b["id"]), (&json!("p2p"), &json!("idem")));
    // Another started_at does not rewrite the payment. (ninjapoll answers 409 `conflict`
    // with the payment here rather than the SPEC's plain 200; both keep it unchanged.)
    let (code, d) = daemon
        .enqueue("p2p", "idem", Some(started_at(t0 + 5000)))
        .await;
    assert!(code == 200 || code == 409, "{code} {d}");
    let (_, now) = daemon.payment("p2p", "idem").await;
    assert_eq!(now["started_at"], a["started_at"], "{now}");
    // The same id of another kind is another payment.
    fake.script(
        "quote",
        "idem",
        Script::Sequence(vec![Step::Status("success".into())]),
    );
    assert_eq!(daemon.enqueue("quote", "idem", None).await.0, 201);

    let p = daemon
        .wait_final("p2p", "idem", Duration::from_secs(3))
        .await;
    assert_eq!(p.payment.facts.state, State::Succeeded);
    assert_eq!(p.payment.checks_done, 2, "checked twice as often? {p:#?}");
    assert_eq!(fake.requests_for("p2p", "idem").len(), 2);
    let (code, _) = daemon.enqueue("p2p", "idem", None).await;
    assert_eq!(code, 200, "a final payment is still tracked");
}

#[tokio::test]
async fn sigkill_mid_ladder_then_restart_keeps_the_plan() {
    // A slower ladder so that a kill lands between checks and the down time spans slots:
    // first check at 100–120 ms, every 50 ms for 400 ms, then every 100 ms until 2.5 s.
    let config = DaemonConfig {
        steps: vec![
            ("50ms".into(), Some("400ms".into())),
            ("100ms".into(), None),
        ],
        timeout: "2500ms".into(),
        ..DaemonConfig::default()
    };
    let (fake, mut daemon) = setup(config.clone()).await;
    let t0 = now_ms();
    let flip = std::time::Instant::now() + Duration::from_millis(1800);
    fake.script(
        "p2p",
        "crash",
        Script::FlipAt {
            at: flip,
            status: "approved".into(),
        },
    );
    let (code, _) = daemon.enqueue("p2p", "crash", Some(started_at(t0))).await;
    assert_eq!(code, 201);

    // Kill at 750 ms: after the check at j+600 (700–720 ms), before j+700 (800–820 ms).
    tokio::time::sleep(Duration::from_millis((t0 + 750 - now_ms()).max(0) as u64)).await;
    daemon.kill9();
    let killed_at = now_ms() - t0;
    let before = offsets(&fake, "p2p", "crash", t0);
    // Down across the slots at j+800 and j+900.
    tokio::time::sleep(Duration::from_millis((t0 + 1050 - now_ms()).max(0) as u64)).await;
    let restarted_at = now_ms() - t0;
    daemon.restart().await;

    let p = daemon
        .wait_final("p2p", "crash", Duration::from_secs(5))
        .await;
    let all = offsets(&fake, "p2p", "crash", t0);
    let after = &all[before.len()..];
    let context = format!(
        "killed at {killed_at} ms, restarted at {restarted_at} ms\nbefore {before:?}\nafter {after:?}\npayment {p:#?}"
    );
    assert_eq!(p.payment.facts.state, State::Succeeded, "{context}");
    assert_eq!(p.payment.facts.started_at.0.as_ms(), t0, "{context}");
    // Nothing lost: every check the fake answered is counted (one in flight at the kill
    // may have been answered but not recorded).
    let done = p.payment.checks_done as usize;
    assert!(
        done == all.len() || done + 1 == all.len(),
        "checks_done {done}: {context}"
    );
    assert!(
        !after.iter().any(|&o| o < restarted_at),
        "a check while the daemon was down: {context}"
    );

    let plans = candidate_plans(&config, before[0]);
    let explained = plans.iter().any(|(_, plan)| {
        // Before the kill: every slot in turn.
        let pre = match_plan(plan, &before, LATE_MS);
        let pre_ok = pre.iter().enumerate().all(|(i, m)| *m == Some(i));
        // After: at most one catch-up check (the missed slots are not replayed), then the
        // plan again, from the first slot after the catch-up, every slot in turn.
        let post = match_plan(plan, after, LATE_MS);
        let consecutive_from = |k: usize| match post[k] {
            Some(start) => post[k..]
                .iter()
                .enumerate()
                .all(|(i, m)| *m == Some(start + i)),
            None => false,
        };
        let post_ok = match post.iter().position(Option::is_some) {
            Some(0) => consecutive_from(0),
            Some(1) => {
                // The catch-up check, then the first slot after it: none skipped.
                let start = post[1].unwrap_or(0);
                consecutive_from(1) && (start == 0 || plan[start - 1] <= after[0] + EARLY_MS)
            }
            _ => false,
        };
        pre_ok && post_ok
    });
    assert!(explained, "checks off the plan: {context}\nplans {plans:?}");
    // Settled by the first check at or after the flip (1.8 s).
    let last = *all.last().unwrap();
    assert!(
        (1800 - EARLY_MS..=1920 + LATE_MS).contains(&last),
        "{context}"
    );
}

#[tokio::test]
async fn down_over_the_deadline_checks_once_before_timing_out() {
    let config = DaemonConfig::default();
    let (fake, mut daemon) = setup(config.clone()).await;
    fake.script("quote", "late", Script::Sequence(vec![]));
    let t0 = now_ms();
    daemon.enqueue("quote", "late", Some(started_at(t0))).await;
    daemon
        .wait_for(
            "quote",
            "late",
            |p| p["checks_done"].as_u64() >= Some(3),
            Duration::from_secs(2),
        )
        .await;
    daemon.kill9();
    let before = fake.requests_for("quote", "late").len();
    // Stay down past the 1.5 s deadline.
    tokio::time::sleep(Duration::from_millis((t0 + 1700 - now_ms()).max(0) as u64)).await;
    let restarted_at = now_ms() - t0;
    daemon.restart().await;
    let p = daemon
        .wait_final("quote", "late", Duration::from_secs(3))
        .await;
    let all = offsets(&fake, "quote", "late", t0);
    assert_eq!(p.payment.facts.state, State::TimedOut, "{p:#?}");
    assert_eq!(
        all.len(),
        before + 1,
        "one check after the restart, no burst: {all:?}"
    );
    assert!(*all.last().unwrap() >= restarted_at, "{all:?}");
    let last_checked = p.payment.last_checked_at.unwrap().0.as_ms() - t0;
    assert!(last_checked >= restarted_at, "{p:#?}");
    let done = p.payment.checks_done as usize;
    assert!(
        done == all.len() || done + 1 == all.len(),
        "checks_done {done}, {all:?}"
    );
}

/// Smoke test of webhooks through the harness (SPEC section 6 has its own tests).
#[tokio::test]
async fn status_change_fires_a_verified_webhook() {
    let receiver = WebhookReceiver::start(WEBHOOK_SECRET).await;
    receiver.fail_next(503, 1);
    let fake = FakeNinjapay::start(FakeOptions::default()).await.unwrap();
    let config = DaemonConfig {
        webhooks: Some((receiver.url().to_owned(), WEBHOOK_SECRET.to_owned())),
        env: vec![("NINJAPOLL_WEBHOOKS__RETRY".into(), "[\"50ms\"]".into())],
        ..DaemonConfig::default()
    };
    let daemon = spawn_daemon(&fake.base_url(), config).await;
    fake.script(
        "p2p",
        "hook",
        Script::pending_then(Kind::P2p, 1, "approved"),
    );
    daemon.enqueue("p2p", "hook", None).await;
    daemon
        .wait_final("p2p", "hook", Duration::from_secs(3))
        .await;
    let got = receiver.wait_deliveries(2, Duration::from_secs(5)).await;
    assert!(got.iter().all(|d| d.verified), "{got:#?}");
    assert_eq!(got[0].answered, 503);
    assert_eq!(
        got[0].webhook_id, got[1].webhook_id,
        "a retry keeps its webhook-id"
    );
    let data = &got[1].body["data"];
    assert_eq!(got[1].body["type"], "payment.status_changed", "{got:#?}");
    assert_eq!(
        (&data["state"], &data["upstream_status"]),
        (&json!("succeeded"), &json!("approved"))
    );
}

/// The harness's receiver itself: verifies good signatures, rejects bad ones, fails and
/// hangs on demand.
#[tokio::test]
async fn harness_webhook_receiver_verifies_and_misbehaves_on_demand() {
    let receiver = WebhookReceiver::start(WEBHOOK_SECRET).await;
    let signer = standardwebhooks::Webhook::new(WEBHOOK_SECRET).unwrap();
    let client = reqwest::Client::new();
    let send = |id: &str, body: &str, good: bool| {
        let ts = now_ms() / 1000;
        let sig = if good {
            signer.sign(id, ts, body.as_bytes()).unwrap()
        } else {
            "v1,AAAA".to_owned()
        };
        client
            .post(receiver.url())
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body.to_owned())
            .send()
    };
    receiver.fail_next(500, 1);
    assert_eq!(
        send("msg_1", r#"{"a":1}"#, true).await.unwrap().status(),
        500
    );
    assert_eq!(
        send("msg_1", r#"{"a":1}"#, true).await.unwrap().status(),
        200
    );
    assert_eq!(
        send("msg_2", r#"{"a":2}"#, false).await.unwrap().status(),
        200
    );
    receiver.hang_next(Duration::from_millis(100), 1);
    let t = std::time::Instant::now();
    send("msg_3", "{}", true).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(100));
    let got = receiver.deliveries();
    let summary: Vec<_> = got
        .iter()
        .map(|d| (d.webhook_id.as_str(), d.verified, d.answered))
        .collect();
    assert_eq!(
        summary,
        [
            ("msg_1", true, 500),
            ("msg_1", true, 200),
            ("msg_2", false, 200),
            ("msg_3", true, 200)
        ]
    );
    assert_eq!(got[0].body, json!({"a": 1}));
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_a_restart_resumes() {
    let (fake, mut daemon) = setup(DaemonConfig::default()).await;
    fake.script("quote", "term", Script::Sequence(vec![]));
    daemon.enqueue("quote", "term", None).await;
    daemon
        .wait_for(
            "quote",
            "term",
            |p| p["checks_done"].as_u64() >= Some(2),
            Duration::from_secs(2),
        )
        .await;
    let status = daemon.stop().await.expect("was running");
    assert!(status.success(), "exit status {status}");
    let checked = fake.requests_for("quote", "term").len();
    daemon.restart().await;
    let p = daemon
        .wait_final("quote", "term", Duration::from_secs(3))
        .await;
    assert_eq!(p.payment.facts.state, State::TimedOut, "{p:#?}");
    assert!(fake.requests_for("quote", "term").len() > checked);
    assert_eq!(
        p.payment.checks_done as usize,
        fake.requests_for("quote", "term").len(),
        "{p:#?}"
    );
}
