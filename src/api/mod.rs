//! The local socket API (SPEC section 4): HTTP/1.1 + JSON over a Unix socket. The only
//! module that speaks HTTP status codes.

mod checks;
mod error;
#[cfg(test)]
mod tests;
mod webhooks;

pub use self::error::{ApiError, ErrorCode};

use crate::config::Config;
use crate::live::{SchedulerSlot, Shared};
use crate::payment::WallMs;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::wire::{
    AccountHealth, DatabaseHealth, Health, HealthStatus, KindPolicyView, PoolHealth,
    SchedulerHealth, Timestamp,
};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::sync::Arc;

/// Largest request body, except a batch.
pub const MAX_BODY: usize = 1024 * 1024;
/// Largest batch body: 10,000 checks with modest metadata need more than [`MAX_BODY`].
pub const MAX_BATCH_BODY: usize = 16 * 1024 * 1024;
/// Memory all request bodies being read may hold together: a few large batches at once,
/// not one per connection (30 clients stalling near the end of 16 MiB bodies held 545 MB).
pub const BODY_MEMORY: usize = 4 * MAX_BATCH_BODY;

/// What the bodies being read hold, against [`BODY_MEMORY`] (in KiB permits).
#[derive(Clone)]
pub struct BodyBudget(Arc<tokio::sync::Semaphore>);

impl Default for BodyBudget {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(BODY_MEMORY / 1024)))
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Where new, cancelled and rechecked payments are announced (the running scheduler,
    /// replaced by a reload).
    pub scheduler: SchedulerSlot,
    /// The validated configuration (kinds, callback prefixes), replaced whole by a reload:
    /// a handler takes it once and keeps that one.
    pub config: Shared<Config>,
    /// Counters for `/v1/health` and `/metrics`.
    pub telemetry: Arc<Telemetry>,
    /// Wakes the webhook worker (a replayed event is due now).
    pub webhook_wake: Arc<tokio::sync::Notify>,
    /// Bounds the memory of request bodies being read, all connections together.
    pub bodies: BodyBudget,
}

/// A JSON body: `application/json`, bounded, unknown fields refused, every failure an
/// [`ApiError`] in our format. The bound holds before the body is buffered: a declared
/// `Content-Length` over it is refused unread, and what is read counts against the shared
/// [`BodyBudget`] as it arrives.
pub struct JsonBody<T, const LIMIT: usize = MAX_BODY>(pub T);

impl<T, const LIMIT: usize> FromRequest<AppState> for JsonBody<T, LIMIT>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, Self::Rejection> {
        // The body's permits are held until it is parsed: parsing is where memory grows.
        let (bytes, _held) = read_body(req, st, LIMIT, None).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!("the body is larger than this endpoint's limit of {limit} bytes"),
    )
}

/// Counts the items of the array values of a JSON object's members as the body streams
/// in (`{"checks": [item, item, …]}`), so a batch over its limit is refused before the rest
/// arrives. It only counts; the parser judges the JSON.
#[derive(Debug, Default)]
pub struct ItemCounter {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Inside an array at depth 2, a value has started since the last comma.
    in_item: bool,
    /// Items seen.
    pub items: usize,
}

impl ItemCounter {
    /// Scans more of the body.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            if self.depth == 2
                && !self.in_item
                && !matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b',' | b']')
            {
                self.in_item = true;
                self.items += 1;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                b',' if self.depth == 2 => self.in_item = false,
                _ => {}
            }
            if self.depth < 2 {
                self.in_item = false;
            }
        }
    }
}

/// Reads a JSON request body of at most `limit` bytes (and, for a batch, `max_items`
/// items) against the shared body budget; the permits returned hold that budget until the
/// caller drops them (after parsing).
pub(crate) async fn read_body(
    req: Request,
    st: &AppState,
    limit: usize,
    max_items: Option<usize>,
) -> Result<(Bytes, Vec<tokio::sync::OwnedSemaphorePermit>), ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        let got = if ct.is_empty() {
            "no Content-Type".to_string()
        } else {
            format!("Content-Type {ct:?}")
        };
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("send the body as JSON with Content-Type: application/json (got {got})"),
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let mut body = req.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut permits = Vec::new();
    let mut held_kib = 0usize;
    let mut counter = ItemCounter::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                ErrorCode::BodyUnreadable,
                format!("the request body could not be read: {e}"),
            )
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if buf.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        let want_kib = (buf.len() + chunk.len()).div_ceil(1024);
        if want_kib > held_kib {
            let more = (want_kib - held_kib) as u32;
            let permit = st
                .bodies
                .0
                .clone()
                .try_acquire_many_owned(more)
                .map_err(|_| {
                    ApiError::new(
                        ErrorCode::Busy,
                        "too many large request bodies are being read at once; retry shortly",
                    )
                })?;
            permits.push(permit);
            held_kib = want_kib;
        }
        if let Some(max) = max_items {
            counter.feed(&chunk);
            if counter.items > max {
                return Err(ApiError::new(
                    ErrorCode::BatchTooLarge,
                    format!("a batch holds at most {max} checks; this one has more"),
                ));
            }
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(buf), permits))
}

pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| json_error(&e, "request body"))
}

/// Turns a JSON decoding failure into an error a program can branch on: the body is not
/// JSON at all (`malformed_json`), names a field we do not know (`unknown_field`, most
/// often a typo), lacks one we need (`missing_field`), or has one of the wrong type
/// (`invalid_field`). serde only tells these apart in its message, so we read that.
pub(crate) fn json_error(e: &serde_json::Error, context: &str) -> ApiError {
    let text = e.to_string();
    let code = if e.is_syntax() || e.is_eof() {
        ErrorCode::MalformedJson
    } else if text.starts_with("unknown field") {
        ErrorCode::UnknownField
    } else if text.starts_with("missing field") {
        ErrorCode::MissingField
    } else {
        ErrorCode::InvalidField
    };
    ApiError::new(code, format!("{context}: {text}"))
}

/// The `{kind}/{id}` of a payment's URL, percent-decoded, and its `?account=` (the
/// account `default` when absent). A segment that does not decode to UTF-8 is refused in
/// our error format rather than axum's plain-text one.
pub struct PaymentPath(pub String, pub String, pub String);

/// The `?account=` of a payment's URL; other parameters are ignored, as before accounts.
#[derive(Deserialize)]
struct AccountQuery {
    account: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for PaymentPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let account = match Query::<AccountQuery>::from_request_parts(parts, state).await {
            Ok(Query(q)) => q
                .account
                .unwrap_or_else(|| crate::account::AccountName::DEFAULT.into()),
            Err(e) => return Err(ApiError::new(ErrorCode::InvalidQuery, e.body_text())),
        };
        match Path::<(String, String)>::from_request_parts(parts, state).await {
            Ok(Path((kind, id))) => Ok(Self(account, kind, id)),
            Err(e) => Err(ApiError::new(
                ErrorCode::InvalidPath,
                format!(
                    "the URL's kind and id must be percent-encoded UTF-8: {}",
                    e.body_text()
                ),
            )),
        }
    }
}

/// A list request's page: `limit` (1 to 1000, default 100) and the row key after which it
/// starts (`cursor`, as a previous page handed it out).
pub fn page(limit: Option<u32>, cursor: Option<&str>) -> Result<(u32, Option<i64>), ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidLimit,
            "limit must be between 1 and 1000",
        ));
    }
    let after = match cursor {
        None | Some("") => None,
        Some(c) => Some(c.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidCursor, "cursor is not one this API gave")
        })?),
    };
    Ok((limit, after))
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let telemetry = state.telemetry.clone();
    Router::new()
        .route("/v1/checks", post(checks::enqueue).get(checks::list))
        .route("/v1/checks/batch", post(checks::enqueue_batch))
        .route(
            "/v1/checks/{kind}/{id}",
            get(checks::get_one).delete(checks::cancel),
        )
        .route("/v1/checks/{kind}/{id}/recheck", post(checks::recheck))
        .route("/v1/webhooks", get(webhooks::list))
        .route("/v1/webhooks/{event_id}", get(webhooks::get_one))
        .route("/v1/webhooks/{event_id}/replay", post(webhooks::replay))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::map_response_with_state(
            telemetry,
            count_internal,
        ))
}

/// Only `/metrics`, for the optional TCP listener (`metrics.listen`): nothing there can
/// read or change a payment.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// A 500 (`internal`) is a failed database operation: every other failure of ours is
/// answered with a 4xx.
async fn count_internal(State(t): State<Arc<Telemetry>>, response: Response) -> Response {
    if response.status() == ErrorCode::Internal.status() {
        t.database_error("api");
    }
    response
}

/// The answer to a request that took longer than `socket.request_timeout`.
pub fn request_timed_out(timeout: std::time::Duration) -> Response {
    ApiError::new(
        ErrorCode::RequestTimeout,
        format!(
            "the request took longer than socket.request_timeout ({})",
            humantime::format_duration(timeout)
        ),
    )
    .into_response()
}

/// The answer to a peer that `socket.allowed_uids` / `allowed_gids` leave out.
pub fn peer_refused(uid: Option<u32>, gid: Option<u32>) -> Response {
    ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "uid {} / gid {} is not in socket.allowed_uids or socket.allowed_gids",
            uid.map_or("?".into(), |u| u.to_string()),
            gid.map_or("?".into(), |g| g.to_string()),
        ),
    )
    .into_response()
}

async fn not_found() -> ApiError {
    // Not `not_found`: a client must be able to tell "no such payment" from "wrong URL".
    ApiError::new(
        ErrorCode::UnknownEndpoint,
        "no such endpoint; see SPEC section 4 (e.g. POST /v1/checks, GET /v1/health)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method",
    )
}

async fn health(State(st): State<AppState>) -> Result<Json<Health>, ApiError> {
    let counts = st.store.state_counts().await?;
    let pending_kinds = st.store.pending_by_kind().await?;
    let webhooks = st.store.webhook_state_counts().await?;
    let published = st.scheduler.status();
    let now = crate::payment::now_ms();
    let db = st.store.write_status();
    let config = st.config.get();
    let (problems, unpolled) =
        health_problems(&config, &published, &pending_kinds, &webhooks, &db, now);
    let budget = published
        .pools
        .iter()
        .map(|p| PoolHealth {
            name: p.name.clone(),
            budget_used: p.budget_used,
            budget_limit: p.budget_effective,
            budget_configured: p.budget_limit,
            budget_window_ms: p.window_ms,
            price_level: p.price_level,
            scarce: p.price_level > 0.0,
            projected_requests: p.projected.round(),
            planned_requests: p.target.round(),
            pending: p.pending,
            arrivals_per_window: p.arrivals_per_window.map(f64::round),
            keeps_up: p.keeps_up(),
            backlog: p.backlog,
            behind_ms: p.behind_ms,
            backlog_drains_in_ms: p.backlog_drains_in_ms,
            policy: p
                .kinds
                .iter()
                .map(|k| KindPolicyView {
                    kind: k.kind.clone(),
                    pending: k.pending,
                    evidence: k.evidence,
                    flip_share: (k.flip_share * 1000.0).round() / 1000.0,
                    flip_age_p50_ms: k.flip_age_ms[0],
                    flip_age_p90_ms: k.flip_age_ms[1],
                    flip_age_p99_ms: k.flip_age_ms[2],
                    expected_delay_ms: k.expected_delay_ms,
                    watched: k.late.watched,
                    late_moves: k.late.moves,
                    late_checks: k.late.checks,
                    late_skipped: k.late.skipped,
                    late_move_share: (k.late.move_share * 1000.0).round() / 1000.0,
                    late_move_p50_ms: k.late.move_age_p50_ms,
                })
                .collect(),
            paused_for_ms: p.paused_until.map(|t| t - now),
            unhealthy_kinds: p.auth_failing.clone(),
        })
        .collect();
    let healthy = problems.is_empty();
    let retention = crate::retention::Retention::of(&config);
    Ok(Json(Health {
        status: if healthy {
            HealthStatus::Ok
        } else {
            HealthStatus::Degraded
        },
        version: env!("CARGO_PKG_VERSION").to_owned(),
        healthy,
        problems,
        payments: counts.into_iter().collect(),
        scheduler: SchedulerHealth {
            pending: published.pools.iter().map(|p| p.pending).sum(),
            unpolled,
            reported_at: (published.at > WallMs(0)).then_some(Timestamp(published.at)),
        },
        budget,
        accounts: crate::status::accounts(&published.pools)
            .into_iter()
            .map(|a| AccountHealth {
                account: a.account,
                pending: a.pending,
                budget_used: a.budget_used,
                budget_limit: a.budget_limit,
                keeps_up: a.keeps_up,
                expected_delay_ms: a.expected_delay_ms,
                backlog: a.backlog,
            })
            .collect(),
        webhooks: webhooks.into_iter().collect(),
        database: DatabaseHealth {
            writes_failing: db.failing_since.is_some(),
            write_errors: db.failures_total,
            size_bytes: database_size(&config.database_path).await,
            keep_finished_ms: retention.keep_finished.map(duration_ms),
            keep_delivered_ms: retention.keep_delivered.map(duration_ms),
        },
        reload: st.telemetry.last_reload(),
    }))
}

/// The database file and its write-ahead log, in bytes; `None` when the file cannot be
/// read (a log missing between checkpoints counts as empty).
async fn database_size(path: &std::path::Path) -> Option<u64> {
    let main = tokio::fs::metadata(path).await.ok()?.len();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = tokio::fs::metadata(&wal).await.map_or(0, |m| m.len());
    Some(main.saturating_add(wal))
}

fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How old the scheduler's last report may be before health calls it stuck: it reports
/// every tick (at most a second apart), so this is many missed ticks.
const SCHEDULER_STALE_MS: i64 = 10_000;

/// A key paused longer than this is a health problem at once.
const PAUSE_PROBLEM_MS: i64 = 5_000;

/// Every reason the daemon is not healthy, each a line a person can act on, and the
/// pending payments nobody polls. `healthy` is exactly "no problems", so a reason can
/// The pending payments nobody polls (their account or kind is no longer configured), each
/// group a problem line; how many.
fn unpolled(
    config: &Config,
    pending_by_kind: &[(String, String, i64)],
    problems: &mut Vec<String>,
) -> i64 {
    let mut unpolled = 0;
    for (account, kind, n) in pending_by_kind {
        if !config.accounts.contains_key(account.as_str()) {
            unpolled += n;
            problems.push(format!(
                "{n} pending payments of account {account} (kind {kind}) are not polled: the account is no longer configured (add [accounts.{account}] back, or cancel them)"
            ));
        } else if !config.kinds.contains_key(kind.as_str()) {
            unpolled += n;
            problems.push(format!(
                "{n} pending payments of kind {kind} are not polled: the kind is no longer configured (add [kinds.{kind}] back, or cancel them)"
            ));
        }
    }
    unpolled
}

/// never hide.
pub fn health_problems(
    config: &Config,
    published: &crate::scheduler::Published,
    pending_by_kind: &[(String, String, i64)],
    webhook_states: &[(String, i64)],
    db: &crate::store::WriteStatus,
    now: WallMs,
) -> (Vec<String>, i64) {
    let mut problems = Vec::new();
    if let (Some(since), Some(error)) = (db.failing_since, &db.last_error) {
        problems.push(format!(
            "database writes are failing since {} ({error}); check the free space of the database's file system: outcomes are retried and nothing acknowledged is lost",
            crate::payment::rfc3339(since)
        ));
    }
    if config.ninjapay.api_key.is_none() {
        problems.push("no API key configured (ninjapay.api_key)".to_string());
    }
    for p in &published.pools {
        for k in &p.auth_failing {
            problems.push(format!("Ninjapay refuses the API key for kind {k}"));
        }
        for (k, error) in &p.outage {
            problems.push(format!(
                "Ninjapay gives no usable answer for kind {k} ({error}); its payments stay pending and back off until it does"
            ));
        }
        if let Some(ms) = p
            .paused_until
            .map(|t| t - now)
            .filter(|ms| *ms > PAUSE_PROBLEM_MS)
        {
            problems.push(format!(
                "key {}: Ninjapay asked to pause its checks for {} more (Retry-After or 503; at most ninjapay.max_pause)",
                p.name,
                humantime::format_duration(std::time::Duration::from_secs(
                    u64::try_from(ms).unwrap_or(0).div_ceil(1000)
                ))
            ));
        }
        if !p.keeps_up() {
            problems.push(format!(
                "key {}: about {:.0} payments arrive per {} and each needs a request at least, more than its budget of {}: no schedule keeps up and delays grow while this lasts; spread the payments over more API keys",
                p.name,
                p.arrivals_per_window.unwrap_or(0.0),
                humantime::format_duration(p.window()),
                p.budget_effective
            ));
        }
        if p.far_behind() {
            let behind = humantime::format_duration(p.behind());
            problems.push(if p.backlog > 0 {
                format!(
                    "key {}: checks are {behind} behind; {} payments are in its backlog (more came than its budget of {} per {} can check on time) and are checked within a share of the budget until it drains{} (ninjapay.backlog_share: more drains it sooner, at the cost of the payments still coming); if this recurs, spread the payments over more API keys",
                    p.name,
                    p.backlog,
                    p.budget_effective,
                    humantime::format_duration(p.window()),
                    p.backlog_drains_in()
                        .map(|d| format!(", in {} or more at its pace so far", humantime::format_duration(d)))
                        .unwrap_or_default()
                )
            } else {
                format!(
                    "key {}: checks are {behind} behind (the key is paused or refused, or its budget is short)",
                    p.name
                )
            });
        }
    }
    let age = now - published.at;
    if published.at > WallMs(0) && age > SCHEDULER_STALE_MS {
        problems.push(format!(
            "the scheduler has not reported for {} s: its loop is stuck or overloaded",
            age / 1000
        ));
    }
    let unpolled = unpolled(config, pending_by_kind, &mut problems);
    if let Some((_, dead)) = webhook_states
        .iter()
        .find(|(s, _)| s == crate::payment::WebhookState::Dead.as_str())
    {
        if *dead > 0 {
            problems.push(format!(
                "{dead} webhook events are dead (the merchant app missed them): see `ninjapoll webhooks list --state dead`, then replay"
            ));
        }
    }
    (problems, unpolled)
}

async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    let counts = st.store.state_counts().await?;
    let hooks = st.store.webhook_state_counts().await?;
    let published = st.scheduler.status();
    st.telemetry
        .scheduler_reported(published.at, crate::payment::now_ms());
    let text = st
        .telemetry
        .render(&counts, &hooks, &published.pools, &st.store.write_status());
    Ok((
        [(header::CONTENT_TYPE, crate::telemetry::CONTENT_TYPE)],
        text,
    )
        .into_response())
}
