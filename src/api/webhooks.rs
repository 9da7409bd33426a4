//! `/v1/webhooks`: list the outbox, show one event with its attempts, replay one.

use super::{ApiError, AppState, ErrorCode};
use crate::payment::{now_ms, EventKey, WebhookState};
use crate::store::{WebhookEvent, WebhookFilter};
use crate::wire::{AttemptView, PaymentRef, Timestamp, WebhookDetail, WebhookPage, WebhookView};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

/// Longest event id looked up; ours are 28 bytes.
const MAX_EVENT_ID: usize = 128;

/// An event as the API shows it (without its body; `GET /v1/webhooks/{id}` has that).
fn event_view(e: &WebhookEvent) -> WebhookView {
    WebhookView {
        event_id: e.event_id.clone(),
        event_type: e.event_type.clone(),
        state: e.state,
        payment: PaymentRef {
            account: e.account.clone(),
            kind: e.kind.clone(),
            id: e.id.clone(),
        },
        sequence: e.sequence,
        url: e.url.clone(),
        attempts: e.attempts,
        last_error: e.last_error.clone(),
        last_status_code: e.last_status_code,
        last_attempt_at: e.last_attempt_at.map(Timestamp),
        next_attempt_at: (e.state == WebhookState::Pending).then_some(Timestamp(e.next_attempt_at)),
        delivered_at: e.delivered_at.map(Timestamp),
        created_at: Timestamp(e.created_at),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    account: Option<String>,
    kind: Option<String>,
    id: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /v1/webhooks?state=pending|delivered|dead&kind=&id=&limit=&cursor=`: pages in
/// insertion order, the cursor being the position after the page's last event.
pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<WebhookPage>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => match WebhookState::parse(s) {
            Some(st) => Some(st),
            None => {
                return Err(ApiError::new(
                    ErrorCode::InvalidState,
                    format!("unknown webhook state {s:?}; use pending, delivered or dead"),
                ))
            }
        },
    };
    let (limit, after_pk) = super::page(q.limit, q.cursor.as_deref())?;
    // Same paging as `/v1/checks`: one more row than asked tells whether another page
    // exists, and the cursor is set whenever the page is not empty.
    let mut rows = st
        .store
        .list_webhooks(&WebhookFilter {
            state,
            account: q.account.filter(|a| !a.is_empty()),
            kind: q.kind.filter(|k| !k.is_empty()),
            id: q.id.filter(|i| !i.is_empty()),
            after_pk: after_pk.map(EventKey),
            limit: limit + 1,
        })
        .await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok(Json(WebhookPage {
        webhooks: rows.iter().map(event_view).collect(),
        next_cursor: rows.last().map(|r| r.pk.to_string()),
        has_more,
    }))
}

/// The `{event_id}` of an event's URL, percent-decoded; refused in our error format.
pub struct EventPath(String);

impl<S: Send + Sync> FromRequestParts<S> for EventPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(e) => Err(ApiError::new(
                ErrorCode::InvalidPath,
                format!(
                    "the URL's event id must be percent-encoded UTF-8: {}",
                    e.body_text()
                ),
            )),
        }
    }
}

fn check_event_id(event_id: &str) -> Result<(), ApiError> {
    if event_id.is_empty() || event_id.len() > MAX_EVENT_ID {
        return Err(ApiError::new(
            ErrorCode::InvalidEventId,
            format!("an event id is 1 to {MAX_EVENT_ID} bytes, like msg_…"),
        ));
    }
    Ok(())
}

fn unknown(event_id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no webhook event {event_id}"))
}

/// `GET /v1/webhooks/{event_id}`: the event, its body and every attempt.
pub async fn get_one(
    State(st): State<AppState>,
    EventPath(event_id): EventPath,
) -> Result<Json<WebhookDetail>, ApiError> {
    check_event_id(&event_id)?;
    let ev = st
        .store
        .webhook(&event_id)
        .await?
        .ok_or_else(|| unknown(&event_id))?;
    let attempt_log = st
        .store
        .webhook_attempts(ev.pk)
        .await?
        .into_iter()
        .map(|a| AttemptView {
            at: Timestamp(a.at),
            status_code: a.status_code,
            error: a.error,
            latency_ms: a.latency_ms,
        })
        .collect();
    Ok(Json(WebhookDetail {
        event: event_view(&ev),
        body: serde_json::from_str(&ev.body).unwrap_or(Value::String(ev.body.clone())),
        attempt_log,
    }))
}

/// `POST /v1/webhooks/{event_id}/replay`: due now, with a fresh retry schedule. 202: the
/// worker sends it as soon as the payment's earlier pending events (if any) are through.
pub async fn replay(
    State(st): State<AppState>,
    EventPath(event_id): EventPath,
) -> Result<Response, ApiError> {
    check_event_id(&event_id)?;
    let ev = st
        .store
        .replay_webhook(&event_id, now_ms())
        .await?
        .ok_or_else(|| unknown(&event_id))?;
    st.webhook_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(event_view(&ev))).into_response())
}
