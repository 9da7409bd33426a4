use super::answer::MAX_STATUS_BYTES;
use super::name::BadKindName;
use super::*;
use crate::payment::{PaymentId, State, WallMs};

fn kind(name: &str) -> Kind {
    Kind::from_raw(name, &presets()[name], "https://prod.x", "https://api.x").unwrap()
}

#[test]
fn kind_names_are_parsed_once_and_refused_by_rule() {
    for ok in ["p2p", "btc", "my_kind-2", &"a".repeat(32)] {
        assert_eq!(KindName::parse(ok).unwrap().as_str(), ok);
    }
    for bad in ["", "P2P", "p2p ", "a/b", "ü", &"a".repeat(33)] {
        assert_eq!(KindName::parse(bad), Err(BadKindName), "{bad:?}");
    }
    // Read from JSON (an answer of the API) through the same rule.
    let k: KindName = serde_json::from_str(r#""p2p""#).unwrap();
    assert_eq!(serde_json::to_string(&k).unwrap(), r#""p2p""#);
    assert!(serde_json::from_str::<KindName>(r#""No Kind""#).is_err());
    // A configured kind with a bad name is refused with the key named.
    let e = Kind::from_raw("Bad", &presets()["p2p"], "https://p", "https://a").unwrap_err();
    assert_eq!(
        e.to_string(),
        "kinds.Bad.name: a kind's name is 1-32 characters of a-z, 0-9, '_' or '-'"
    );
}

fn id(s: &str) -> PaymentId {
    PaymentId::parse(s).unwrap()
}

#[test]
fn presets_map_statuses_case_insensitively() {
    let p2p = kind("p2p");
    assert_eq!(p2p.map_status("APPROVED"), Some(State::Succeeded));
    assert_eq!(p2p.map_status("declined"), Some(State::Failed));
    assert_eq!(p2p.map_status("weird"), None);
    let quote = kind("quote");
    assert_eq!(quote.map_status("Completed"), Some(State::Succeeded));
    assert_eq!(quote.map_status("refunded"), Some(State::Refunded));
    let pw = kind("paywall");
    assert_eq!(pw.map_status("FAILURE"), Some(State::Failed));
    let btc = kind("btc");
    assert_eq!(btc.map_status("undefined"), Some(State::Pending));
    assert_eq!(btc.map_status("paid"), Some(State::Succeeded));
}

#[test]
fn request_shapes_follow_the_spec() {
    let p2p = kind("p2p");
    assert_eq!(
        p2p.url,
        "https://prod.x/uapi/v1/p2p/paymentLink/checkPayment"
    );
    assert_eq!(
        p2p.query_params(&[&id("A1")], None),
        vec![("tid".into(), "A1".into())]
    );
    assert!(p2p.json_body(&id("A1")).is_none());
    let pw = kind("paywall");
    assert_eq!(pw.method, Method::Post);
    assert_eq!(pw.auth_header, "x-api-key");
    assert_eq!(
        pw.json_body(&id("FT_1")),
        Some(serde_json::json!({"order_id": "FT_1"}))
    );
    assert!(pw.query_params(&[&id("FT_1")], None).is_empty());
    let btc = kind("btc");
    assert_eq!(
        btc.query_params(&[&id("1"), &id("2")], None),
        vec![("limit".into(), "50".into())]
    );
}

/// An over-long status is no status: nothing of it beyond a short excerpt is kept, and
/// an answer without a usable status is an outage, not an answer.
#[test]
fn an_answer_without_a_usable_status_is_an_outage() {
    let p2p = kind("p2p");
    let body = serde_json::json!({"tid": "A1", "status": "x".repeat(2_000_000)}).to_string();
    match p2p.interpret(200, body.as_bytes()) {
        Observation::Error {
            class,
            message,
            response,
        } => {
            assert_eq!(class, ErrorClass::BadBody);
            assert!(message.len() < 200, "{}", message.len());
            assert!(response.is_none());
        }
        other => panic!("{:?}", other),
    }
    assert!(!ErrorClass::BadBody.is_answer());
    assert!(ErrorClass::BadBody.is_outage() && ErrorClass::Http.is_outage());
    assert!(!ErrorClass::NotFound.is_outage() && !ErrorClass::Auth.is_outage());
    let status = "y".repeat(MAX_STATUS_BYTES);
    let body = serde_json::json!({"tid": "A1", "status": status}).to_string();
    assert!(matches!(
        p2p.interpret(200, body.as_bytes()),
        Observation::Status { state: None, .. }
    ));
}

#[test]
fn answers_are_interpreted() {
    let p2p = kind("p2p");
    match p2p.interpret(200, br#"{"tid":"A1","status":"approved"}"#) {
        Observation::Status { raw, state, .. } => {
            assert_eq!(raw, "approved");
            assert_eq!(state, Some(State::Succeeded));
        }
        other => panic!("{other:?}"),
    }
    let err = |o: Observation| match o {
        Observation::Error { class, .. } => class,
        other => panic!("{other:?}"),
    };
    assert_eq!(err(p2p.interpret(200, b"<html>")), ErrorClass::BadBody);
    assert_eq!(
        err(p2p.interpret(200, br#"{"tid":1}"#)),
        ErrorClass::BadBody
    );
    assert_eq!(
        err(p2p.interpret(200, br#"{"status":7}"#)),
        ErrorClass::BadBody
    );
    assert_eq!(
        err(p2p.interpret(404, br#"{"success":false,"message":"no such tid"}"#)),
        ErrorClass::NotFound
    );
    assert_eq!(err(p2p.interpret(500, b"")), ErrorClass::Http);
    assert_eq!(err(p2p.interpret(429, b"")), ErrorClass::RateLimited);
    assert_eq!(err(p2p.interpret(401, b"")), ErrorClass::Auth);
    let pw = kind("paywall");
    assert_eq!(
        err(pw.interpret(200, br#"{"status":false,"message":"bad order"}"#)),
        ErrorClass::Rejected
    );
    match pw.interpret(200, br#"{"status":true,"data":{"trxStatus":"SUCCESS"}}"#) {
        Observation::Status { state, .. } => assert_eq!(state, Some(State::Succeeded)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn listings_match_numeric_and_string_ids() {
    let btc = kind("btc");
    let body = br#"[{"tid":210660277897,"status":"paid"},{"tid":"x9","status":"undefined"}]"#;
    let (a, b, c) = (id("210660277897"), id("x9"), id("gone"));
    let obs = btc
        .interpret_list(200, body, &[&a, &b, &c], &[WallMs(0); 3], 50)
        .unwrap();
    assert!(matches!(
        &obs[0],
        Observation::Status {
            state: Some(State::Succeeded),
            ..
        }
    ));
    assert!(matches!(
        &obs[1],
        Observation::Status {
            state: Some(State::Pending),
            ..
        }
    ));
    assert!(matches!(
        &obs[2],
        Observation::Error {
            class: ErrorClass::NotFound,
            ..
        }
    ));
    assert!(btc
        .interpret_list(200, br#"{"a":1}"#, &[&a], &[WallMs(0)], 50)
        .is_err());
}

#[test]
fn bad_kinds_are_refused_with_the_key() {
    let mut raw = presets()["p2p"].clone();
    raw.status_map.insert("odd".into(), "cancelled".into());
    let e = Kind::from_raw("p2p", &raw, "https://p", "https://a").unwrap_err();
    assert!(e.to_string().starts_with("kinds.p2p.status_map"), "{e}");
    let mut raw = presets()["p2p"].clone();
    raw.method = Some("PUT".into());
    assert!(Kind::from_raw("p2p", &raw, "https://p", "https://a").is_err());
    assert!(Kind::from_raw("Bad Name", &presets()["p2p"], "https://p", "https://a").is_err());
}
