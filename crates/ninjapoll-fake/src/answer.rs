//! One request's answer: decided and recorded under the state's lock, so it never awaits.

use crate::endpoints::{body_for, btc_entry, Kind};
use crate::faults::{Fault, Reply};
use crate::scripts::{ScriptEntry, Step, Unknown};
use crate::state::{Inner, Owner, Recorded};
use axum::http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Size of a history page when the request has no `limit`.
const DEFAULT_HISTORY_LIMIT: usize = 10;

pub(crate) struct Incoming {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) headers: HeaderMap,
    /// `None` when the body could not be read.
    pub(crate) body: Option<axum::body::Bytes>,
}

impl Incoming {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The id the request asks about, for the single-id kinds.
    fn id(&self, kind: Kind) -> Option<String> {
        let id = match kind {
            Kind::P2p | Kind::Quote => self.param("tid").map(str::to_owned),
            Kind::Paywall => {
                let body = self.body.as_ref()?;
                let value: Value = serde_json::from_slice(body).ok()?;
                match value.get("order_id")? {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }
            }
            Kind::Btc => None,
        }?;
        let id = id.trim().to_owned();
        (!id.is_empty()).then_some(id)
    }
}

/// Decides the answer to one request and records it; runs under the state lock, so it
/// never awaits. Returns the reply and how long to wait before sending it.
pub(crate) fn decide(inner: &mut Inner, req: &Incoming) -> (Reply, Duration) {
    let now = Instant::now();
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let kind = Kind::from_path(&req.path);

    let presented = kind.and_then(|k| {
        req.headers
            .get(k.auth_header())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let owner = match (kind, &presented) {
        (Some(k), Some(key)) => inner.owner(k, key),
        _ => None,
    };
    let auth_ok = owner.is_some();
    // Ninjapay counts every request made with a valid key, whatever it gets back.
    let locked = match (&presented, auth_ok) {
        (Some(key), true) => inner.budget.account(key, now),
        _ => false,
    };
    let mut ids: Vec<String> = kind
        .and_then(|k| req.id(k))
        .map(|id| vec![id])
        .unwrap_or_default();

    let mut delay = inner
        .latency
        .map(|(a, b)| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            lo + (hi - lo).mul_f64(fastrand::f64())
        })
        .unwrap_or_default();

    // A fault set for one key answers only that key's accepted requests.
    let key_fault = presented
        .as_ref()
        .filter(|_| auth_ok)
        .and_then(|key| inner.key_faults.get(key))
        .map(Fault::reply);
    let reply = match inner.fault.as_ref().map(Fault::reply).or(key_fault) {
        Some(reply) => reply,
        None => {
            let (reply, hang, listed) = route(inner, req, kind, &owner, locked, now);
            delay += hang;
            if let Some(listed) = listed {
                ids = listed;
            }
            reply
        }
    };

    inner.push_record(Recorded {
        at: now,
        unix_ms,
        method: req.method.to_string(),
        path: req.path.clone(),
        kind: kind.map(|k| k.as_str().to_owned()),
        ids,
        auth_ok,
        status: reply.code.as_u16(),
        query: req.query.clone(),
        key: presented,
    });
    (reply, delay)
}

/// The answer to a request no fault preempts: the route, the method, the key and the
/// lockout first, then the payment's script (of the key's `owner`; `None` for a refused
/// key). Returns the reply, any extra wait and, for the history, the ids its page listed.
fn route(
    inner: &mut Inner,
    req: &Incoming,
    kind: Option<Kind>,
    owner: &Option<Owner>,
    locked: bool,
    now: Instant,
) -> (Reply, Duration, Option<Vec<String>>) {
    let pending_unknown = inner.unknown == Unknown::Pending;
    let reply = match kind {
        None => Reply::error(StatusCode::NOT_FOUND, "Route not found"),
        Some(k) if req.method != k.method() => {
            let mut reply = Reply::error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
            reply.allow = Some(k.method_name());
            reply
        }
        Some(_) if owner.is_none() => Reply::error(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Some(_) if locked => Reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests: API key locked out, try again later",
        ),
        Some(Kind::Btc) => {
            let owner = owner.clone().unwrap_or_default();
            let (reply, hang, listed) = history(inner, req, &owner, now);
            return (reply, hang, Some(listed));
        }
        Some(k) => match req.id(k) {
            None => Reply::error(
                StatusCode::BAD_REQUEST,
                match k {
                    Kind::Paywall => "order_id is required",
                    _ => "tid is required",
                },
            ),
            Some(id) => match inner.entry_for(&owner.clone().unwrap_or_default(), k, &id) {
                None if pending_unknown => {
                    let (reply, hang) = single(k, &id, Step::Status(k.pending_status().into()));
                    return (reply, hang, None);
                }
                None => Reply::error(StatusCode::NOT_FOUND, "Transaction not found"),
                Some(entry) => {
                    let (reply, hang) = single(k, &id, entry.next_step(k, now));
                    return (reply, hang, None);
                }
            },
        },
    };
    (reply, Duration::ZERO, None)
}

/// The answer of a single-id kind for one step, and any extra wait.
fn single(kind: Kind, id: &str, step: Step) -> (Reply, Duration) {
    let ok = |status: Option<&str>| Reply::json(StatusCode::OK, &body_for(kind, id, status));
    match step {
        Step::Status(status) => (ok(Some(&status)), Duration::ZERO),
        Step::MissingStatus => (ok(None), Duration::ZERO),
        Step::Hang(d) => (ok(Some(kind.pending_status())), d),
        Step::Http {
            code,
            body,
            retry_after,
        } => (Reply::raw(code, body, retry_after), Duration::ZERO),
        Step::NotJson => (Reply::not_json(), Duration::ZERO),
        Step::EnvelopeFalse => (Reply::envelope_false(kind), Duration::ZERO),
        Step::NotFound => (
            Reply::error(StatusCode::NOT_FOUND, "Transaction not found"),
            Duration::ZERO,
        ),
    }
}

/// `GET /sapi/v1/history`: the registered btc ids (wallet-filtered, newest first, cut to
/// `limit`) each consume one step. As documented (seed 004) there is no offset or cursor:
/// a client reaches older entries only by asking for a larger `limit`; each entry's
/// `created_at` is when its id was registered. Only the presenting key's (`owner`'s) entries
/// are listed. Returns the reply, the extra wait and the listed ids.
fn history(
    inner: &mut Inner,
    req: &Incoming,
    owner: &Owner,
    now: Instant,
) -> (Reply, Duration, Vec<String>) {
    let limit = match req.param("limit") {
        None => DEFAULT_HISTORY_LIMIT,
        Some(raw) => match raw.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return (
                    Reply::error(StatusCode::BAD_REQUEST, "limit must be a positive integer"),
                    Duration::ZERO,
                    Vec::new(),
                )
            }
        },
    };
    let wallet = req.param("wallet").filter(|w| !w.is_empty());

    let mut page: Vec<(&String, &mut ScriptEntry)> = inner
        .scripts
        .iter_mut()
        .filter(|((o, k, _), e)| {
            o == owner && *k == Kind::Btc && wallet.is_none_or(|w| w == e.wallet)
        })
        .map(|((_, _, id), e)| (id, e))
        .collect();
    page.sort_by_key(|(_, e)| std::cmp::Reverse(e.order));
    page.truncate(limit);

    let mut entries = Vec::with_capacity(page.len());
    let mut listed = Vec::with_capacity(page.len());
    let mut hang = Duration::ZERO;
    let mut whole: Option<Reply> = None;
    for (id, entry) in page {
        listed.push(id.clone());
        let wallet = entry.wallet.clone();
        let created = entry.created;
        let status = match entry.next_step(Kind::Btc, now) {
            Step::Status(s) => Some(s),
            Step::MissingStatus => None,
            Step::NotFound => continue,
            Step::Hang(d) => {
                hang = hang.max(d);
                Some(Kind::Btc.pending_status().to_owned())
            }
            // A broken answer breaks the whole page; the first one (newest) wins.
            Step::Http {
                code,
                body,
                retry_after,
            } => {
                whole.get_or_insert_with(|| Reply::raw(code, body, retry_after));
                continue;
            }
            Step::NotJson => {
                whole.get_or_insert_with(Reply::not_json);
                continue;
            }
            Step::EnvelopeFalse => {
                whole.get_or_insert_with(|| Reply::envelope_false(Kind::Btc));
                continue;
            }
        };
        entries.push(btc_entry(id, &wallet, status.as_deref(), created));
    }
    let reply = whole.unwrap_or_else(|| Reply::json(StatusCode::OK, &Value::Array(entries)));
    (reply, hang, listed)
}
