//! `/v1/checks`: enqueue, read, list, cancel, recheck.

use super::{
    json_error, parse_json, read_body, ApiError, AppState, ErrorCode, JsonBody, PaymentPath,
    MAX_BATCH_BODY,
};
use crate::account::AccountName;
use crate::callback::CallbackRefusal;
use crate::config::Config;
use crate::kinds::KindName;
use crate::payment::{now_ms, PaymentId, PaymentKey, WallMs};
use crate::scheduler::Command;
use crate::store::{Inserted, ListFilter, NewPayment, PaymentRow, PendingRow, WatchedRow};
use crate::wire::{
    BatchAnswer, BatchResult, EnqueueRequest, HistoryEntry, PaymentDetail, PaymentFacts,
    PaymentPage, PaymentView, RecheckAnswer, Timestamp,
};
use axum::extract::{FromRequest, Request};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

/// Most payments in one batch.
pub const MAX_BATCH: usize = 10_000;
/// Largest `metadata`, serialized.
const MAX_METADATA: usize = 16 * 1024;
/// How far ahead of now a `started_at` may be (clock skew between app and daemon).
const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// A payment as the API shows it.
pub fn payment_view(r: &PaymentRow) -> PaymentView {
    PaymentView {
        facts: PaymentFacts::new(
            &r.account,
            &r.kind,
            &r.id,
            r.state,
            r.upstream_status.as_deref(),
            r.started_at,
            r.response.as_deref(),
            r.metadata.as_deref(),
        ),
        next_check_at: r.next_check_at.map(Timestamp),
        settled: r.state.is_final() && r.next_check_at.is_none(),
        checks_done: r.checks_done,
        last_checked_at: r.last_checked_at.map(Timestamp),
        last_error: r.last_error.clone(),
        finished_at: r.finished_at.map(Timestamp),
        callback_url: r.callback_url.clone(),
        created_at: Timestamp(r.created_at),
    }
}

/// Parses `started_at`: unix seconds (a number, or a string of digits as shells and some
/// JSON encoders produce) or RFC 3339.
pub fn parse_started_at(v: &Value, now: WallMs) -> Result<WallMs, ApiError> {
    let from_seconds = |s: f64| {
        Some(s)
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e11)
            .map(|s| (s * 1000.0).round() as i64)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidStartedAt,
                    "started_at: unix seconds must be between 0 and 1e11",
                )
            })
    };
    let ms = match v {
        Value::Number(n) => from_seconds(n.as_f64().unwrap_or(f64::NAN))?,
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            from_seconds(s.parse::<f64>().unwrap_or(f64::NAN))?
        }
        Value::String(s) => humantime::parse_rfc3339_weak(s.trim())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidStartedAt,
                    format!("started_at: {s:?} is neither unix seconds nor RFC 3339 (e.g. 2026-01-31T12:00:00Z)"),
                )
            })?,
        _ => {
            return Err(ApiError::new(ErrorCode::InvalidStartedAt,
                "started_at: give unix seconds or an RFC 3339 string",
            ))
        }
    };
    let ms = WallMs(ms);
    if ms > now + MAX_FUTURE_MS {
        return Err(ApiError::new(
            ErrorCode::InvalidStartedAt,
            "started_at is more than 5 minutes in the future; check the clock",
        ));
    }
    Ok(ms)
}

/// Validates one enqueue request into a payment to insert.
fn validate(st: &AppState, req: EnqueueRequest, now: WallMs) -> Result<NewPayment, ApiError> {
    // One configuration for the whole request, whatever a reload does meanwhile.
    let config = st.config.get();
    let account = configured_account(&config, req.account.as_deref())?;
    let kind = configured_kind(&config, &req.kind).ok_or_else(|| {
        let known: Vec<&str> = config.kinds.keys().map(|k| k.as_str()).collect();
        ApiError::new(
            ErrorCode::UnknownKind,
            format!(
                "unknown kind {:?}; known kinds: {}",
                req.kind,
                known.join(", ")
            ),
        )
    })?;
    let id = PaymentId::parse(&req.id)
        .map_err(|e| ApiError::new(ErrorCode::InvalidId, format!("id: {e}")))?;
    let started_at = match &req.started_at {
        None | Some(Value::Null) => now,
        Some(v) => parse_started_at(v, now)?,
    };
    if let Some(url) = &req.callback_url {
        crate::callback::check_callback(&config.webhooks.allowed_callback_prefixes, url).map_err(
            |e| match e {
                CallbackRefusal::Invalid(m) => ApiError::new(ErrorCode::InvalidCallbackUrl, m),
                CallbackRefusal::NotAllowed(m) => {
                    ApiError::new(ErrorCode::CallbackUrlNotAllowed, m)
                }
            },
        )?;
    }
    let metadata = match req.metadata {
        None | Some(Value::Null) => None,
        Some(m) => {
            if m.to_string().len() > MAX_METADATA {
                return Err(ApiError::new(
                    ErrorCode::MetadataTooLarge,
                    format!("metadata is larger than {MAX_METADATA} bytes"),
                ));
            }
            Some(m)
        }
    };
    let (jitter_ms, next_check_at) = config.ladder.first_check(started_at);
    Ok(NewPayment {
        account,
        kind,
        id,
        started_at,
        jitter_ms,
        next_check_at,
        callback_url: req.callback_url,
        metadata,
    })
}

/// A second enqueue of a kind+id may repeat the first, not change it: a field the second
/// request gives must match the stored one (`started_at` to the second), a field it leaves
/// out is not compared. The changed field's name, if any.
fn conflict(existing: &PaymentRow, new: &NewPayment, explicit_start: bool) -> Option<String> {
    if explicit_start && (existing.started_at - new.started_at).abs() >= 1000 {
        return Some("started_at".into());
    }
    if let Some(m) = &new.metadata {
        let stored: Option<Value> = existing
            .metadata
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        if stored.as_ref() != Some(m) {
            return Some("metadata".into());
        }
    }
    if new.callback_url.is_some() && new.callback_url != existing.callback_url {
        return Some("callback_url".into());
    }
    None
}

fn pending_row(r: &PaymentRow) -> PendingRow {
    PendingRow {
        pk: r.pk,
        account: r.account.clone(),
        kind: r.kind.clone(),
        id: r.id.clone(),
        upstream_status: r.upstream_status.clone(),
        started_at: r.started_at,
        jitter_ms: r.jitter_ms,
        next_check_at: r.next_check_at,
        last_checked_at: r.last_checked_at,
    }
}

/// A final payment to check again, as the scheduler holds a watched one. Its evidence of
/// late moves is the database's; this only places the check.
fn watched_row(r: &PaymentRow) -> WatchedRow {
    WatchedRow {
        pk: r.pk,
        account: r.account.clone(),
        kind: r.kind.clone(),
        id: r.id.clone(),
        state: r.state,
        upstream_status: r.upstream_status.clone(),
        started_at: r.started_at,
        next_check_at: r.next_check_at.unwrap_or(r.updated_at),
        seen_at: r.last_checked_at.or(r.finished_at),
        ended_state: r.state,
    }
}

fn outcome(
    row: &PaymentRow,
    inserted: Inserted,
    new: &NewPayment,
    explicit: bool,
) -> (StatusCode, PaymentView, Option<ApiError>) {
    match inserted {
        Inserted::New => (StatusCode::CREATED, payment_view(row), None),
        Inserted::Existing => match conflict(row, new, explicit) {
            None => (StatusCode::OK, payment_view(row), None),
            Some(field) => {
                let e = ApiError::new(ErrorCode::Conflict,
                    format!("{} {} is already tracked with a different {field}; enqueue is idempotent and does not rewrite it", row.kind, row.id),
                );
                let view = payment_view(row);
                let e = e.with_payment(view.clone());
                (StatusCode::CONFLICT, view, Some(e))
            }
        },
    }
}

/// `POST /v1/checks`.
pub async fn enqueue(
    State(st): State<AppState>,
    JsonBody(raw): JsonBody<RawEnqueue>,
) -> Result<Response, ApiError> {
    let req = raw.parse()?;
    let explicit = req.started_at.as_ref().is_some_and(|v| !v.is_null());
    let new = validate(&st, req, now_ms())?;
    let mut rows = st.store.insert_payments(std::slice::from_ref(&new)).await?;
    let (row, inserted) = rows
        .pop()
        .ok_or_else(|| anyhow::anyhow!("insert returned no row"))?;
    // Committed first: if the scheduler is shutting down, a restart resumes it. A stored
    // payment still pending is handed over again (a duplicate is ignored), so a re-enqueue
    // makes sure the scheduler holds it.
    if row.state == crate::payment::State::Pending {
        let _ = st.scheduler.send(Command::Track(pending_row(&row)));
    }
    let (status, body, err) = outcome(&row, inserted, &new, explicit);
    match err {
        Some(e) => Err(e),
        None => Ok((status, Json(body)).into_response()),
    }
}

/// A batch's body: bounded in bytes and, while it streams in, in items.
pub struct BatchBody(RawBatch);

/// A batch as read: each item kept as its JSON text (about its size in memory, where a
/// parsed `Value` of small numbers takes tens of times more), parsed one at a time.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    checks: Vec<Box<serde_json::value::RawValue>>,
}

/// An enqueue as read: `started_at` and `metadata` kept as JSON text until their size is
/// checked, so that a huge one is refused before it is parsed into a `Value`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnqueue {
    #[serde(default)]
    account: Option<String>,
    kind: String,
    id: String,
    #[serde(default)]
    started_at: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    callback_url: Option<String>,
    #[serde(default)]
    metadata: Option<Box<serde_json::value::RawValue>>,
}

/// Longest `started_at` as JSON text (a number, or an RFC 3339 string, with room to spare).
const MAX_STARTED_AT_TEXT: usize = 256;

impl RawEnqueue {
    /// The request, its parts parsed once their size is known to be bounded. Metadata is
    /// limited as compact JSON; text with over 4 times that (whitespace) is not parsed.
    fn parse(self) -> Result<EnqueueRequest, ApiError> {
        let started_at = match self.started_at {
            None => None,
            Some(raw) if raw.get().len() > MAX_STARTED_AT_TEXT => {
                return Err(ApiError::new(
                    ErrorCode::InvalidStartedAt,
                    "started_at must be unix seconds or an RFC 3339 time",
                ))
            }
            Some(raw) => {
                Some(serde_json::from_str(raw.get()).map_err(|e| json_error(&e, "started_at"))?)
            }
        };
        let metadata = match self.metadata {
            None => None,
            Some(raw) if raw.get().len() > 4 * MAX_METADATA => {
                return Err(ApiError::new(
                    ErrorCode::MetadataTooLarge,
                    format!("metadata is larger than {MAX_METADATA} bytes"),
                ))
            }
            Some(raw) => {
                Some(serde_json::from_str(raw.get()).map_err(|e| json_error(&e, "metadata"))?)
            }
        };
        Ok(EnqueueRequest {
            account: self.account,
            kind: self.kind,
            id: self.id,
            started_at,
            callback_url: self.callback_url,
            metadata,
        })
    }
}

impl FromRequest<AppState> for BatchBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, Self::Rejection> {
        let (bytes, _held) = read_body(req, st, MAX_BATCH_BODY, Some(MAX_BATCH)).await?;
        parse_json(&bytes).map(BatchBody)
    }
}

/// `POST /v1/checks/batch`: one transaction; a result per item, in order.
pub async fn enqueue_batch(
    State(st): State<AppState>,
    BatchBody(req): BatchBody,
) -> Result<Response, ApiError> {
    if req.checks.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::BatchTooLarge,
            format!(
                "a batch holds at most {MAX_BATCH} checks; this one has {}",
                req.checks.len()
            ),
        ));
    }
    let now = now_ms();
    let mut slots: Vec<Result<(NewPayment, bool), ApiError>> = Vec::with_capacity(req.checks.len());
    for (i, item) in req.checks.into_iter().enumerate() {
        let parsed = serde_json::from_str::<RawEnqueue>(item.get())
            .map_err(|e| json_error(&e, &format!("checks[{i}]")))
            .and_then(RawEnqueue::parse)
            .and_then(|r| {
                let explicit = r.started_at.as_ref().is_some_and(|v| !v.is_null());
                validate(&st, r, now).map(|n| (n, explicit))
            });
        slots.push(parsed);
    }
    let valid: Vec<NewPayment> = slots
        .iter()
        .filter_map(|s| s.as_ref().ok().map(|(n, _)| n.clone()))
        .collect();
    let mut stored = st.store.insert_payments(&valid).await?.into_iter();
    let mut results = Vec::with_capacity(slots.len());
    for slot in slots {
        match slot {
            Err(e) => results.push(BatchResult {
                status: e.status().as_u16(),
                payment: None,
                error: Some(e.body()),
            }),
            Ok((new, explicit)) => {
                let Some((row, inserted)) = stored.next() else {
                    return Err(anyhow::anyhow!("batch insert returned too few rows").into());
                };
                if row.state == crate::payment::State::Pending {
                    let _ = st.scheduler.send(Command::Track(pending_row(&row)));
                }
                let (status, body, err) = outcome(&row, inserted, &new, explicit);
                results.push(BatchResult {
                    status: status.as_u16(),
                    payment: Some(body),
                    error: err.map(|e| e.body()),
                });
            }
        }
    }
    Ok(Json(BatchAnswer { results }).into_response())
}

/// A kind name from outside, parsed, if it is configured: a name that does not parse is
/// no configured kind either, and is answered the same way.
fn configured_kind(config: &Config, kind: &str) -> Option<KindName> {
    KindName::parse(kind)
        .ok()
        .filter(|k| config.kinds.contains_key(k))
}

/// The account a request names (`default` when it names none), if it is configured.
fn configured_account(config: &Config, account: Option<&str>) -> Result<AccountName, ApiError> {
    let name = account.unwrap_or(AccountName::DEFAULT);
    AccountName::parse(name)
        .ok()
        .filter(|a| config.accounts.contains_key(a))
        .ok_or_else(|| {
            let known: Vec<&str> = config.accounts.keys().map(|a| a.as_str()).collect();
            ApiError::new(
                ErrorCode::UnknownAccount,
                format!(
                    "unknown account {name:?}; configured accounts: {}",
                    known.join(", ")
                ),
            )
        })
}

fn unknown_kind(kind: &str) -> ApiError {
    ApiError::new(ErrorCode::UnknownKind, format!("unknown kind {kind:?}"))
}

fn check_path(st: &AppState, account: &str, kind: &str, id: &str) -> Result<(), ApiError> {
    let config = st.config.get();
    configured_account(&config, Some(account))?;
    configured_kind(&config, kind).ok_or_else(|| unknown_kind(kind))?;
    PaymentId::parse(id).map_err(|e| ApiError::new(ErrorCode::InvalidId, format!("id: {e}")))?;
    Ok(())
}

fn not_tracked(account: &str, kind: &str, id: &str) -> ApiError {
    let whose = if account == AccountName::DEFAULT {
        String::new()
    } else {
        format!(" in account {account}")
    };
    ApiError::new(
        ErrorCode::NotFound,
        format!("no payment {kind} {id} is tracked{whose}"),
    )
}

/// `GET /v1/checks/{kind}/{id}`.
pub async fn get_one(
    State(st): State<AppState>,
    PaymentPath(account, kind, id): PaymentPath,
) -> Result<Json<PaymentDetail>, ApiError> {
    check_path(&st, &account, &kind, &id)?;
    match st.store.get(&account, &kind, &id).await? {
        Some(row) => {
            let state = |s: &str| {
                crate::payment::State::parse(s)
                    .ok_or_else(|| anyhow::anyhow!("status_history holds an unknown state {s:?}"))
            };
            let history = st
                .store
                .history(row.pk)
                .await?
                .into_iter()
                .map(|(at, prev, now, raw)| {
                    Ok(HistoryEntry {
                        at: Timestamp(at),
                        previous_state: state(&prev)?,
                        state: state(&now)?,
                        upstream_status: raw,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Json(PaymentDetail {
                payment: payment_view(&row),
                history,
            }))
        }
        None => Err(not_tracked(&account, &kind, &id)),
    }
}

/// The query of `GET /v1/checks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    account: Option<String>,
    kind: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /v1/checks?state=&kind=&limit=&cursor=`: pages in enqueue order. The cursor is
/// the position after the page's last payment (its row key, which only grows, and enqueues
/// commit one at a time), so concurrent enqueues land after every cursor handed out and
/// neither shift nor repeat a page. With a `state` filter a payment that changes state
/// while a client pages may be missed or shown once in each state, as in any filtered
/// listing of live data.
pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PaymentPage>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(crate::payment::State::parse(s).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidState, format!("unknown state {s:?}"))
        })?),
    };
    let kind = match q.kind.as_deref() {
        None => None,
        Some(k) => Some(configured_kind(&st.config.get(), k).ok_or_else(|| unknown_kind(k))?),
    };
    let account = match q.account.as_deref() {
        None => None,
        Some(a) => Some(configured_account(&st.config.get(), Some(a))?),
    };
    let (limit, after_pk) = super::page(q.limit, q.cursor.as_deref())?;
    // One more than asked tells whether another page exists without a second query.
    let mut rows = st
        .store
        .list(&ListFilter {
            state,
            account,
            kind,
            after_pk: after_pk.map(PaymentKey),
            limit: limit + 1,
        })
        .await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    // Set whenever the page is not empty, so that a client tailing new payments can
    // resume after the last one it saw even when there was no next page yet.
    let next = rows.last().map(|r| r.pk.to_string());
    Ok(Json(PaymentPage {
        payments: rows.iter().map(payment_view).collect(),
        next_cursor: next,
        has_more,
    }))
}

/// `DELETE /v1/checks/{kind}/{id}`.
pub async fn cancel(
    State(st): State<AppState>,
    PaymentPath(account, kind, id): PaymentPath,
) -> Result<Json<PaymentView>, ApiError> {
    // A payment of a kind no longer configured can still be cancelled: health lists it as
    // unpolled and says to, and nothing but the database is needed.
    let unconfigured = check_path(&st, &account, &kind, &id).err();
    match st.store.cancel(&account, &kind, &id).await? {
        None => Err(unconfigured.unwrap_or_else(|| not_tracked(&account, &kind, &id))),
        Some(Err(row)) => {
            let e = ApiError::new(
                ErrorCode::AlreadyFinal,
                format!(
                    "{kind} {id} is already {}; only a pending payment can be cancelled",
                    row.state
                ),
            );
            Err(e.with_payment(payment_view(&row)))
        }
        Some(Ok(row)) => {
            let _ = st.scheduler.send(Command::Untrack(row.pk));
            Ok(Json(payment_view(&row)))
        }
    }
}

/// `POST /v1/checks/{kind}/{id}/recheck`.
pub async fn recheck(
    State(st): State<AppState>,
    PaymentPath(account, kind, id): PaymentPath,
) -> Result<Response, ApiError> {
    check_path(&st, &account, &kind, &id)?;
    let now = now_ms();
    let (row, cmd_at) = match st.store.reschedule(&account, &kind, &id, now).await? {
        Some(row) => {
            // Tracking first makes sure the scheduler holds the payment (a duplicate is
            // ignored); the recheck is a hint it coalesces, and it says when it will run.
            let _ = st.scheduler.send(Command::Track(pending_row(&row)));
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = st.scheduler.send(Command::Recheck(row.pk, Some(tx)));
            (row, rx)
        }
        None => {
            let Some(row) = st.store.get(&account, &kind, &id).await? else {
                return Err(not_tracked(&account, &kind, &id));
            };
            // After its ladder a payment that may still move (timed out, or a state its
            // kind documents a move from) is checked again on the merchant's word.
            let config = st.config.get();
            let movable = configured_kind(&config, &kind)
                .and_then(|k| config.kinds.get(&k).cloned())
                .is_some_and(|k| k.may_move(row.state));
            let rewatched = if movable {
                st.store
                    .rewatch(&account, &kind, &id, row.state, now)
                    .await?
            } else {
                None
            };
            let Some(row) = rewatched else {
                let e = ApiError::new(
                    ErrorCode::AlreadyFinal,
                    format!(
                        "{kind} {id} is already {}, which does not move any more; it is no longer checked",
                        row.state
                    ),
                );
                return Err(e.with_payment(payment_view(&row)));
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = st
                .scheduler
                .send(Command::Rewatch(watched_row(&row), Some(tx)));
            (row, rx)
        }
    };
    let at = tokio::time::timeout(std::time::Duration::from_secs(5), cmd_at)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    let mut payment = payment_view(&row);
    let check_at = at.map(Timestamp);
    if check_at.is_some() {
        payment.next_check_at = check_at;
    }
    let body = RecheckAnswer { payment, check_at };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
