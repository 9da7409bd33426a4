//! The router driven in-process (no socket): every request of SPEC section 4, the refusals
//! of bad input, and a property test that random requests never panic, never get a 5xx and
//! never change what a rejected request must not change.

use super::{router, AppState};
use crate::config::{self, Config};
use crate::scheduler;
use crate::store::{ListFilter, PaymentRow, Store};
use crate::telemetry::Telemetry;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A router on a real temp-file store and a live scheduler that never reaches Ninjapay
/// (port 9 refuses; nothing enqueued "now" is due for 20 seconds).
struct Harness {
    app: Router,
    store: Store,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

const CALLBACK: &str = "http://127.0.0.1:8080/hooks";

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = config::defaults();
    raw.database.path = Some(dir.path().join("ninjapoll.db"));
    raw.socket.path = Some(dir.path().join("ninjapoll.sock"));
    raw.ninjapay.prod_base_url = Some("http://127.0.0.1:9".into());
    raw.ninjapay.api_base_url = Some("http://127.0.0.1:9".into());
    raw.webhooks.allowed_callback_prefixes = vec!["http://127.0.0.1:8080/".into()];
    // Callbacks are signed like every event.
    raw.webhooks.secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
    let config = Arc::new(Config::from_raw(raw).expect("config"));
    let store = Store::open(&config.database_path, None)
        .await
        .expect("store");
    let telemetry = Arc::new(Telemetry::default());
    let cancel = CancellationToken::new();
    let (handle, _task) = scheduler::spawn(
        &config,
        store.clone(),
        telemetry.clone(),
        Arc::new(Notify::new()),
        cancel.clone(),
        crate::systemd::Notifier::default(),
    )
    .await
    .expect("scheduler");
    let app = router(AppState {
        store: store.clone(),
        scheduler: crate::live::SchedulerSlot::new(handle),
        config: crate::live::Shared::new(config),
        telemetry,
        webhook_wake: Arc::new(Notify::new()),
        bodies: Default::default(),
    });
    Harness {
        app,
        store,
        cancel,
        _dir: dir,
    }
}

/// One request; the answer's status and body (JSON, or a JSON string of the text).
async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(uri);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = app
        .clone()
        .oneshot(req.body(body.into()).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn post(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    call(app, "POST", uri, Some("application/json"), body.to_string()).await
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    call(app, "GET", uri, None, Body::empty()).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

async fn all_rows(store: &Store) -> Vec<PaymentRow> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(&ListFilter {
                after_pk: after,
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("list");
        let Some(last) = page.last() else {
            return out;
        };
        after = Some(last.pk);
        out.extend(page);
    }
}

#[tokio::test]
async fn enqueue_answers_201_then_200_with_the_same_payment() {
    let h = harness().await;
    let (s, first) = post(&h.app, "/v1/checks", json!({"kind": "p2p", "id": "A1"})).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    for field in [
        "kind",
        "id",
        "state",
        "upstream_status",
        "final",
        "started_at",
        "next_check_at",
        "checks_done",
        "last_checked_at",
        "last_error",
        "finished_at",
        "response",
        "metadata",
    ] {
        assert!(first.get(field).is_some(), "payment lacks {field}: {first}");
    }
    assert_eq!(first["state"], "pending");
    assert_eq!(first["final"], false);
    assert!(first["started_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let (s, again) = post(&h.app, "/v1/checks", json!({"kind": "p2p", "id": "A1"})).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["started_at"], first["started_at"]);
    assert_eq!(again["next_check_at"], first["next_check_at"]);
    assert_eq!(all_rows(&h.store).await.len(), 1);
}

#[tokio::test]
async fn a_second_enqueue_never_rewrites_the_first() {
    let h = harness().await;
    let t0 = crate::payment::now_ms().as_ms() / 1000 - 5;
    let first = json!({"kind": "quote", "id": "Q1", "started_at": t0,
        "metadata": {"order": 7}, "callback_url": format!("{CALLBACK}/a")});
    let (s, stored) = post(&h.app, "/v1/checks", first.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{stored}");

    // The same request, or one leaving fields out, or started_at spelled as RFC 3339: 200.
    for same in [
        first.clone(),
        json!({"kind": "quote", "id": "Q1"}),
        json!({"kind": "quote", "id": "Q1", "started_at": crate::payment::rfc3339(crate::payment::WallMs(t0 * 1000))}),
        json!({"kind": "quote", "id": "Q1", "started_at": t0.to_string(), "metadata": null}),
    ] {
        let (s, v) = post(&h.app, "/v1/checks", same.clone()).await;
        assert_eq!(s, StatusCode::OK, "{same} -> {v}");
    }
    // A different value of a field given: 409, with the payment as it stands.
    for (field, value) in [
        ("started_at", json!(t0 - 60)),
        ("metadata", json!({"order": 8})),
        ("callback_url", json!(format!("{CALLBACK}/b"))),
    ] {
        let mut body = json!({"kind": "quote", "id": "Q1"});
        body[field] = value;
        let (s, v) = post(&h.app, "/v1/checks", body).await;
        assert_eq!(s, StatusCode::CONFLICT, "{field}: {v}");
        assert_eq!(code(&v), "conflict");
        assert!(v["error"]["message"].as_str().unwrap_or("").contains(field));
        assert_eq!(v["payment"]["metadata"], json!({"order": 7}));
        assert_eq!(v["payment"]["started_at"], stored["started_at"]);
    }
    let rows = all_rows(&h.store).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].metadata.as_deref(), Some(r#"{"order":7}"#));
}

#[tokio::test]
async fn concurrent_enqueues_of_one_payment_make_one_payment() {
    let h = harness().await;
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let app = h.app.clone();
            tokio::spawn(async move {
                post(&app, "/v1/checks", json!({"kind": "btc", "id": "same"})).await
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        let (s, v) = t.await.expect("task");
        match s {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => {}
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(all_rows(&h.store).await.len(), 1);
}

#[tokio::test]
async fn batch_reports_each_item_in_order_and_a_bad_one_sinks_nothing() {
    let h = harness().await;
    post(
        &h.app,
        "/v1/checks",
        json!({"kind": "p2p", "id": "old", "metadata": {"a": 1}}),
    )
    .await;
    let (s, v) = post(
        &h.app,
        "/v1/checks/batch",
        json!({"checks": [
            {"kind": "p2p", "id": "b1"},
            {"kind": "nope", "id": "b2"},
            {"kind": "p2p", "id": "old"},
            {"kind": "p2p", "id": "old", "metadata": {"a": 2}},
            {"kind": "p2p", "id": ""},
            {"kind": "p2p", "id": "b3", "colour": "red"},
            {"kind": "p2p"},
            "not an object",
            {"kind": "quote", "id": "b1"},
            {"kind": "p2p", "id": "b1"},
        ]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let results = v["results"].as_array().expect("results");
    let got: Vec<(u64, &str)> = results
        .iter()
        .map(|r| (r["status"].as_u64().unwrap_or(0), code(r)))
        .collect();
    assert_eq!(
        got,
        vec![
            (201, "<no code>"),
            (400, "unknown_kind"),
            (200, "<no code>"),
            (409, "conflict"),
            (400, "invalid_id"),
            (400, "unknown_field"),
            (400, "missing_field"),
            (400, "invalid_field"),
            (201, "<no code>"),
            (200, "<no code>"),
        ]
    );
    assert_eq!(results[0]["payment"]["id"], "b1");
    assert_eq!(results[8]["payment"]["kind"], "quote");
    assert_eq!(results[3]["payment"]["metadata"], json!({"a": 1}));
    assert!(results[5]["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("checks[5]") && m.contains("colour")));
    assert_eq!(all_rows(&h.store).await.len(), 3);
}

#[tokio::test]
async fn batch_takes_ten_thousand_and_refuses_more() {
    let h = harness().await;
    let checks: Vec<Value> = (0..super::checks::MAX_BATCH)
        .map(|i| json!({"kind": "p2p", "id": format!("T{i:05}")}))
        .collect();
    let (s, v) = post(&h.app, "/v1/checks/batch", json!({ "checks": checks })).await;
    assert_eq!(s, StatusCode::OK);
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 10_000);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["status"], 201);
        assert_eq!(r["payment"]["id"], format!("T{i:05}"));
    }
    assert_eq!(all_rows(&h.store).await.len(), 10_000);

    let checks: Vec<Value> = (0..=super::checks::MAX_BATCH)
        .map(|i| json!({"kind": "p2p", "id": format!("U{i}")}))
        .collect();
    let (s, v) = post(&h.app, "/v1/checks/batch", json!({ "checks": checks })).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&v), "batch_too_large");
    assert_eq!(all_rows(&h.store).await.len(), 10_000);
}

#[tokio::test]
async fn read_cancel_and_recheck() {
    let h = harness().await;
    // An id that needs percent-encoding: slash, space, percent, non-ASCII.
    let id = "a/b c%d–é";
    let enc = "a%2Fb%20c%25d%E2%80%93%C3%A9";
    post(&h.app, "/v1/checks", json!({"kind": "paywall", "id": id})).await;
    let (s, v) = get(&h.app, &format!("/v1/checks/paywall/{enc}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["id"], id);
    assert_eq!(v["history"], json!([]));

    let (s, v) = call(
        &h.app,
        "POST",
        &format!("/v1/checks/paywall/{enc}/recheck"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "pending");

    let (s, v) = call(
        &h.app,
        "DELETE",
        &format!("/v1/checks/paywall/{enc}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "cancelled");
    assert_eq!(v["final"], true);
    assert!(v["finished_at"].is_string());

    let uri = format!("/v1/checks/paywall/{enc}");
    let (s, v) = call(&h.app, "DELETE", &uri, None, Body::empty()).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "already_final"));
    assert_eq!(v["payment"]["state"], "cancelled");
    let (s, v) = call(
        &h.app,
        "POST",
        &format!("{uri}/recheck"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "already_final"));

    let (s, v) = get(&h.app, &uri).await;
    assert_eq!(v["history"][0]["state"], "cancelled", "{s} {v}");

    for (method, uri) in [
        ("GET", "/v1/checks/p2p/missing"),
        ("DELETE", "/v1/checks/p2p/missing"),
        ("POST", "/v1/checks/p2p/missing/recheck"),
    ] {
        let (s, v) = call(&h.app, method, uri, None, Body::empty()).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{method} {uri}"
        );
    }
}

#[tokio::test]
async fn list_filters_and_pages() {
    let h = harness().await;
    for i in 0..5 {
        post(
            &h.app,
            "/v1/checks",
            json!({"kind": "p2p", "id": format!("p{i}")}),
        )
        .await;
        post(
            &h.app,
            "/v1/checks",
            json!({"kind": "btc", "id": format!("b{i}")}),
        )
        .await;
    }
    call(&h.app, "DELETE", "/v1/checks/btc/b2", None, Body::empty()).await;

    let (s, v) = get(&h.app, "/v1/checks?kind=btc").await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> = v["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, ["b0", "b1", "b2", "b3", "b4"]);
    assert_eq!(v["has_more"], false);

    let (_, v) = get(&h.app, "/v1/checks?state=cancelled").await;
    assert_eq!(v["payments"].as_array().map(Vec::len), Some(1));
    let (_, v) = get(&h.app, "/v1/checks?state=pending&kind=p2p&limit=100").await;
    assert_eq!(v["payments"].as_array().map(Vec::len), Some(5));

    let (_, page1) = get(&h.app, "/v1/checks?limit=4").await;
    assert_eq!(page1["has_more"], true);
    let cursor = page1["next_cursor"].as_str().expect("cursor").to_string();
    let (_, page2) = get(&h.app, &format!("/v1/checks?limit=4&cursor={cursor}")).await;
    assert_eq!(page2["payments"][0]["id"], "p2");
    let cursor = page2["next_cursor"].as_str().expect("cursor").to_string();
    let (_, page3) = get(&h.app, &format!("/v1/checks?limit=4&cursor={cursor}")).await;
    assert_eq!(page3["payments"].as_array().map(Vec::len), Some(2));
    assert_eq!(page3["has_more"], false);
    let cursor = page3["next_cursor"].as_str().expect("cursor").to_string();
    let (_, page4) = get(&h.app, &format!("/v1/checks?limit=4&cursor={cursor}")).await;
    assert_eq!(page4["payments"], json!([]));
    assert_eq!(page4["next_cursor"], Value::Null);
}

#[tokio::test]
async fn the_cursor_neither_skips_nor_repeats_under_concurrent_enqueues() {
    let h = harness().await;
    let batch = |prefix: &str, n: usize| json!({"checks": (0..n).map(|i| json!({"kind": "p2p", "id": format!("{prefix}{i}")})).collect::<Vec<_>>()});
    post(&h.app, "/v1/checks/batch", batch("before", 200)).await;
    let app = h.app.clone();
    let writer = tokio::spawn(async move {
        for i in 0..200 {
            let (s, _) = post(
                &app,
                "/v1/checks",
                json!({"kind": "p2p", "id": format!("during{i}")}),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED);
            tokio::task::yield_now().await;
        }
    });
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut writer = Some(writer);
    loop {
        let (s, v) = get(&h.app, &format!("/v1/checks?limit=7&cursor={cursor}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let page = v["payments"].as_array().expect("payments");
        seen.extend(
            page.iter()
                .filter_map(|p| p["id"].as_str().map(String::from)),
        );
        if let Some(c) = v["next_cursor"].as_str() {
            cursor = c.to_string();
        }
        if v["has_more"] == false {
            // The end of what is committed so far: once the writer is done, page on from
            // the same cursor to the true end.
            match writer.take() {
                Some(w) => w.await.expect("writer"),
                None => break,
            }
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "a payment was repeated");
    assert_eq!(seen.len(), 400, "a payment was skipped");
    let expected: Vec<String> = (0..200)
        .map(|i| format!("before{i}"))
        .chain((0..200).map(|i| format!("during{i}")))
        .collect();
    assert_eq!(seen, expected, "pages are in enqueue order");
}

#[tokio::test]
async fn health_and_metrics() {
    let h = harness().await;
    post(&h.app, "/v1/checks", json!({"kind": "p2p", "id": "m1"})).await;
    let (s, v) = get(&h.app, "/v1/health").await;
    assert_eq!(s, StatusCode::OK);
    // The harness has no API key: unhealthy, and both fields say so, with the reason.
    assert_eq!(v["status"], "degraded", "{v:#}");
    assert_eq!(v["healthy"], false);
    assert_eq!(v["problems"][0], "no API key configured (ninjapay.api_key)");
    assert_eq!(v["payments"]["pending"], 1);
    let (s, v) = get(&h.app, "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().expect("text");
    assert!(text.contains("# TYPE"), "{text}");
}

/// Method, URI, content type, body, expected status and error code.
type BadCase<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    String,
    StatusCode,
    &'a str,
);

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_stable_code() {
    let h = harness().await;
    post(&h.app, "/v1/checks", json!({"kind": "p2p", "id": "keep"})).await;
    let now = crate::payment::now_ms().as_ms() / 1000;
    let big = "x".repeat(super::MAX_BODY + 1);
    let long_id_uri = format!("/v1/checks/p2p/{}", "y".repeat(129));
    let json = Some("application/json");
    let cases: Vec<BadCase> = vec![
        (
            "POST",
            "/v1/checks",
            json,
            r#"{"kind":"nope","id":"1"}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown_kind",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            r#"{"kind":"p2p","id":""}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            json!({"kind":"p2p","id":"x".repeat(129)}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            r#"{"kind":"p2p","id":"a\u0007b"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            r#"{"kind":"p2p","id":" a"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            r#"{"kind":"p2p","id":42}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            r#"{"kind":"p2p","id":"1""#.into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            "kind=p2p&id=1".into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            String::new(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            "[]".into(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            r#"{"kind":"p2p"}"#.into(),
            StatusCode::BAD_REQUEST,
            "missing_field",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            r#"{"kind":"p2p","id":"1","tid":"1"}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown_field",
        ),
        (
            "POST",
            "/v1/checks",
            Some("text/plain"),
            r#"{"kind":"p2p","id":"1"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/checks",
            None,
            r#"{"kind":"p2p","id":"1"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/checks",
            Some("application/x-www-form-urlencoded"),
            "kind=p2p&id=1".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            format!(r#"{{"kind":"p2p","id":"1","metadata":"{big}"}}"#),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            json!({"kind":"p2p","id":"1","started_at": now + 3600}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_started_at",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            json!({"kind":"p2p","id":"1","started_at": "2099-01-01T00:00:00Z"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_started_at",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            json!({"kind":"p2p","id":"1","started_at": "yesterday"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_started_at",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            json!({"kind":"p2p","id":"1","started_at": -5}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_started_at",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            json!({"kind":"p2p","id":"1","started_at": true}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_started_at",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            json!({"kind":"p2p","id":"1","callback_url": "ftp://x"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_callback_url",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            json!({"kind":"p2p","id":"1","callback_url": "http://evil.example/"}).to_string(),
            StatusCode::BAD_REQUEST,
            "callback_url_not_allowed",
        ),
        (
            "POST",
            "/v1/checks",
            json,
            json!({"kind":"p2p","id":"1","metadata": "m".repeat(17 * 1024)}).to_string(),
            StatusCode::BAD_REQUEST,
            "metadata_too_large",
        ),
        (
            "POST",
            "/v1/checks/batch",
            json,
            r#"{"checks":{}}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "POST",
            "/v1/checks/batch",
            json,
            r#"{"check":[]}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown_field",
        ),
        (
            "POST",
            "/v1/checks/batch",
            None,
            r#"{"checks":[]}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "GET",
            "/v1/checks?state=lost",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_state",
        ),
        (
            "GET",
            "/v1/checks?kind=nope",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "unknown_kind",
        ),
        (
            "GET",
            "/v1/checks?limit=0",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            "GET",
            "/v1/checks?limit=5000",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            "GET",
            "/v1/checks?limit=ten",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/checks?cursor=abc",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        (
            "GET",
            "/v1/checks?cursor=-1",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        (
            "GET",
            "/v1/checks?colour=red",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/checks/nope/1",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "unknown_kind",
        ),
        (
            "GET",
            "/v1/checks/p2p/a%00b",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "GET",
            "/v1/checks/p2p/%FF%FE",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "GET",
            &long_id_uri,
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "DELETE",
            "/v1/checks/p2p/%0A",
            None,
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            "GET",
            "/v1/nothing",
            None,
            String::new(),
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
        ),
        (
            "GET",
            "/v1/checks/p2p",
            None,
            String::new(),
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
        ),
        (
            "GET",
            "/v1/checks/p2p/keep/recheck/x",
            None,
            String::new(),
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
        ),
        (
            "PUT",
            "/v1/checks",
            json,
            "{}".into(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "GET",
            "/v1/checks/p2p/keep/recheck",
            None,
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "DELETE",
            "/v1/health",
            None,
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    let before = all_rows(&h.store).await;
    for (method, uri, ct, body, status, expected) in cases {
        let (s, v) = call(&h.app, method, uri, ct, body).await;
        assert_eq!((s, code(&v)), (status, expected), "{method} {uri}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(message.len() > 10, "{method} {uri}: unhelpful message {v}");
    }
    assert_eq!(
        all_rows(&h.store).await,
        before,
        "a refused request changed the store"
    );
}

/// What a refused request must never change: which payments exist, their identity and
/// what was given at enqueue, and the state of those the scheduler cannot touch during
/// the test (enqueued "now", so none is due for 20 seconds; those a random request
/// enqueued with an old `started_at` may legitimately be checked meanwhile).
fn fingerprint(rows: &[PaymentRow], since: i64) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            json!([
                r.pk.0,
                r.kind,
                r.id,
                r.started_at.as_ms(),
                r.jitter_ms,
                r.created_at.as_ms(),
                r.metadata,
                r.callback_url,
                if r.started_at >= crate::payment::WallMs(since) {
                    r.state.as_str()
                } else {
                    ""
                }
            ])
        })
        .collect()
}

mod property {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};

    fn segment() -> impl Strategy<Value = String> {
        let enc =
            |bytes: Vec<u8>| -> String { bytes.iter().map(|b| format!("%{b:02X}")).collect() };
        prop_oneof![
            Just("p2p".to_string()),
            Just("quote".to_string()),
            Just("btc".to_string()),
            Just("paywall".to_string()),
            Just("seed0".to_string()),
            Just("batch".to_string()),
            Just("..".to_string()),
            Just(".".to_string()),
            Just("%2F".to_string()),
            Just("%00".to_string()),
            Just("%".to_string()),
            Just("%zz".to_string()),
            "[a-zA-Z0-9_.~-]{0,20}",
            "[a-z]{129,140}",
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(enc),
            "\\PC{0,6}".prop_map(|s| s.bytes().map(|b| format!("%{b:02X}")).collect()),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        let query = prop_oneof![
            Just(String::new()),
            "(state|kind|limit|cursor|x)=[a-z0-9%_-]{0,8}(&(state|kind|limit|cursor)=[a-z0-9%]{0,6}){0,2}"
                .prop_map(|q| format!("?{q}")),
            "[ -~]{0,12}".prop_map(|q| format!("?{}", q.replace(['#', ' '], "%20"))),
        ];
        let base = prop_oneof![
            Just("/v1/checks".to_string()),
            Just("/v1/checks/batch".to_string()),
            Just("/v1/health".to_string()),
            Just("/metrics".to_string()),
            (segment(), segment()).prop_map(|(k, i)| format!("/v1/checks/{k}/{i}")),
            (segment(), segment()).prop_map(|(k, i)| format!("/v1/checks/{k}/{i}/recheck")),
            proptest::collection::vec(segment(), 0..5).prop_map(|s| format!("/{}", s.join("/"))),
        ];
        (base, query).prop_map(|(b, q)| format!("{b}{q}"))
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::from),
            Just(Value::from("2020-01-01T00:00:00Z")),
            Just(Value::from("p2p")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// An enqueue-shaped object: right field names, random values, sometimes a stray one.
    fn enqueue_like() -> impl Strategy<Value = Value> {
        let kind = prop_oneof![
            3 => Just(json!("p2p")),
            3 => Just(json!("btc")),
            1 => Just(json!("nope")),
            1 => json_value()
        ];
        let id = prop_oneof![
            4 => "[A-Za-z0-9]{1,10}".prop_map(Value::from),
            1 => "\\PC{0,140}".prop_map(Value::from),
            1 => Just(json!("seed0")),
            1 => json_value()
        ];
        let started = prop_oneof![
            4 => Just(None),
            1 => Just(Some(json!(0))),
            1 => Just(Some(json!(9_999_999_999u64))),
            1 => json_value().prop_map(Some)
        ];
        let metadata = prop_oneof![3 => Just(None), 1 => json_value().prop_map(Some)];
        let extra = prop_oneof![
            4 => Just(None),
            1 => ("[a-z_]{1,8}", json_value()).prop_map(Some)
        ];
        (kind, id, started, metadata, extra).prop_map(|(k, i, s, m, x)| {
            let mut o = json!({"kind": k, "id": i});
            if let Some(s) = s {
                o["started_at"] = s;
            }
            if let Some(m) = m {
                o["metadata"] = m;
            }
            if let Some((f, v)) = x {
                o[f] = v;
            }
            o
        })
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            proptest::collection::vec(any::<u8>(), 0..64),
            json_value().prop_map(|v| v.to_string().into_bytes()),
            enqueue_like().prop_map(|v| v.to_string().into_bytes()),
            proptest::collection::vec(enqueue_like(), 0..5)
                .prop_map(|c| json!({ "checks": c }).to_string().into_bytes()),
            enqueue_like().prop_map(|v| {
                // Truncated JSON.
                let s = v.to_string();
                s.as_bytes()[..s.len() / 2].to_vec()
            }),
        ]
    }

    fn method() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("GET".to_string()),
            Just("POST".to_string()),
            Just("DELETE".to_string()),
            Just("PUT".to_string()),
            Just("PATCH".to_string()),
            Just("HEAD".to_string()),
            Just("OPTIONS".to_string()),
            "[A-Z]{1,8}",
        ]
    }

    fn content_type() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(Some("application/json".to_string())),
            Just(Some("application/json; charset=utf-8".to_string())),
            Just(Some("APPLICATION/JSON".to_string())),
            Just(Some("text/plain".to_string())),
            Just(None),
            "[ -~]{0,20}".prop_map(Some),
        ]
    }

    #[test]
    fn random_requests_never_panic_never_5xx_never_corrupt() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let since = crate::payment::now_ms();
        let h = rt.block_on(async {
            let h = harness().await;
            post(&h.app, "/v1/checks", json!({"kind": "p2p", "id": "seed0"})).await;
            post(
                &h.app,
                "/v1/checks",
                json!({"kind": "btc", "id": "seed0", "metadata": {"k": 1}}),
            )
            .await;
            post(&h.app, "/v1/checks", json!({"kind": "quote", "id": "gone"})).await;
            call(
                &h.app,
                "DELETE",
                "/v1/checks/quote/gone",
                None,
                Body::empty(),
            )
            .await;
            h
        });
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(400);
        let mut runner = TestRunner::new(PtConfig {
            cases,
            failure_persistence: None,
            ..PtConfig::default()
        });
        let json_ct = || Just(Some("application/json".to_string()));
        // Mostly well-aimed requests with random details, so the handlers are reached;
        // the rest entirely random.
        let strategy = prop_oneof![
            2 => (Just("POST".to_string()), Just("/v1/checks".to_string()), json_ct(), enqueue_like().prop_map(|v| v.to_string().into_bytes())),
            1 => (Just("POST".to_string()), Just("/v1/checks/batch".to_string()), json_ct(), body()),
            1 => (prop_oneof![Just("GET".to_string()), Just("DELETE".to_string())], (segment(), segment()).prop_map(|(k, i)| format!("/v1/checks/{k}/{i}")), Just(None), Just(Vec::new())),
            1 => (Just("GET".to_string()), path(), Just(None), Just(Vec::new())),
            3 => (method(), path(), content_type(), body()),
        ];
        let seen = std::cell::RefCell::new(std::collections::BTreeMap::<u16, u32>::new());
        let result = runner.run(&strategy, |(method, uri, ct, body)| {
            let Ok(method) = Method::from_bytes(method.as_bytes()) else {
                return Ok(());
            };
            let Ok(uri) = uri.parse::<axum::http::Uri>() else {
                return Ok(());
            };
            rt.block_on(async {
                let before = fingerprint(&all_rows(&h.store).await, since.as_ms());
                let mut req = Request::builder().method(method.clone()).uri(uri.clone());
                if let Some(ct) = &ct {
                    if let Ok(v) = axum::http::HeaderValue::from_str(ct) {
                        req = req.header("content-type", v);
                    }
                }
                let req = req
                    .body(Body::from(body.clone()))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let resp = h
                    .app
                    .clone()
                    .oneshot(req)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                let status = resp.status();
                *seen.borrow_mut().entry(status.as_u16()).or_default() += 1;
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .to_bytes();
                let shown = String::from_utf8_lossy(&bytes);
                prop_assert!(
                    !status.is_server_error(),
                    "{method} {uri} ({ct:?}) {:?} -> {status} {shown}",
                    String::from_utf8_lossy(&body)
                );
                if status.is_client_error() && method != Method::HEAD {
                    let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
                        TestCaseError::fail(format!(
                            "{method} {uri} -> {status}: not JSON: {shown}"
                        ))
                    })?;
                    prop_assert!(v["error"]["code"].is_string(), "{v}");
                    prop_assert!(v["error"]["message"].is_string(), "{v}");
                    let after = fingerprint(&all_rows(&h.store).await, since.as_ms());
                    prop_assert_eq!(
                        &after,
                        &before,
                        "{} {} -> {} changed the store",
                        method,
                        uri,
                        status
                    );
                }
                Ok(())
            })
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        // Not vacuous: the generator reaches the handlers, not only the fallbacks.
        let seen = seen.into_inner();
        eprintln!("statuses answered: {seen:?}");
        if cases >= 200 {
            for s in [200, 201, 400, 404, 405] {
                assert!(seen.contains_key(&s), "no {s} in {seen:?}");
            }
        }
    }
}
