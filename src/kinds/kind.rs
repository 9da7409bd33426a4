//! A validated check kind: what the configuration's table becomes once every field is
//! checked, and the questions the scheduler asks of it.

use super::name::KindName;
use super::presets::{RawKind, RawList};
use crate::payment::State;
use crate::secret::Secret;
use std::collections::HashMap;

/// HTTP method of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// Where the id goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdIn {
    Query,
    Json,
}

/// A validated list endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSpec {
    pub items_pointer: String,
    pub item_id_pointer: String,
    pub limit_param: String,
    pub max_limit: u32,
    pub created_pointer: Option<String>,
}

/// A validated check kind.
#[derive(Debug, Clone)]
pub struct Kind {
    pub name: KindName,
    pub method: Method,
    pub url: String,
    pub id_field: String,
    pub id_in: IdIn,
    pub auth_header: String,
    pub status_pointer: String,
    pub ok_pointer: Option<String>,
    pub status_map: HashMap<String, State>,
    pub query: Vec<(String, String)>,
    pub list: Option<ListSpec>,
    /// The kind's own key, when it does not use `ninjapay.api_key`.
    pub api_key: Option<Secret>,
    /// Ages (ms since the start, ascending) at which a payment that the ladder ended in a
    /// watched state is checked again; empty: no reconciliation. Set by the configuration
    /// (the kind's `reconcile_after`, else `reconcile.after`).
    pub reconcile_after: Vec<i64>,
    /// Final states a payment may still move from, besides `timed_out`.
    pub reconcile_states: Vec<State>,
}

/// A kind the configuration got wrong; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("kinds.{kind}.{field}: {message}")]
pub struct KindError {
    pub kind: String,
    pub field: &'static str,
    pub message: String,
}

fn valid_pointer(p: &str) -> bool {
    p.is_empty() || p.starts_with('/')
}

impl Kind {
    /// Validates a configured kind. `prod` and `api` are the base URLs `{prod}`/`{api}`
    /// expand to.
    pub fn from_raw(name: &str, raw: &RawKind, prod: &str, api: &str) -> Result<Self, KindError> {
        let err = |field: &'static str, message: String| KindError {
            kind: name.to_string(),
            field,
            message,
        };
        let name = KindName::parse(name).map_err(|e| err("name", e.to_string()))?;
        let method = method_of(raw).map_err(|m| err("method", m))?;
        let url = url_of(raw, prod, api).map_err(|m| err("url", m))?;
        let id_field = raw
            .id_field
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| err("id_field", "missing".into()))?;
        let id_in = match raw.id_in.as_deref() {
            Some("query") | None => IdIn::Query,
            Some("json") => IdIn::Json,
            Some(other) => return Err(err("id_in", format!("{other:?} is not query or json"))),
        };
        if id_in == IdIn::Json && method == Method::Get {
            return Err(err("id_in", "a JSON body needs method POST".into()));
        }
        let auth_header = auth_header_of(raw).map_err(|m| err("auth_header", m))?;
        let status_pointer = raw
            .status_pointer
            .clone()
            .ok_or_else(|| err("status_pointer", "missing".into()))?;
        if !valid_pointer(&status_pointer) {
            return Err(err(
                "status_pointer",
                "a JSON pointer starts with '/'".into(),
            ));
        }
        if let Some(p) = &raw.ok_pointer {
            if !valid_pointer(p) {
                return Err(err("ok_pointer", "a JSON pointer starts with '/'".into()));
            }
        }
        let status_map = status_map_of(raw).map_err(|m| err("status_map", m))?;
        let list = raw
            .list
            .as_ref()
            .map(|l| list_of(l, &id_field))
            .transpose()
            .map_err(|m| err("list", m))?;
        let reconcile_states = reconcile_states_of(raw).map_err(|m| err("reconcile_states", m))?;
        let api_key = match (&raw.api_key, &raw.api_key_file) {
            (Some(k), _) => Some(Secret::new(k.clone())),
            (None, Some(path)) => {
                Some(Secret::from_file(path).map_err(|e| err("api_key_file", e))?)
            }
            (None, None) => None,
        };
        Ok(Self {
            name,
            method,
            url,
            id_field,
            id_in,
            auth_header,
            status_pointer,
            ok_pointer: raw.ok_pointer.clone(),
            status_map,
            reconcile_after: Vec::new(),
            reconcile_states,
            query: raw
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            list,
            api_key,
        })
    }

    /// Whether one request answers many payments.
    pub fn is_list(&self) -> bool {
        self.list.is_some()
    }

    /// Whether a payment of this kind in `state` is still watched after its ladder:
    /// `timed_out` always (when the kind has a schedule), else the kind's own states.
    pub fn watches(&self, state: State) -> bool {
        !self.reconcile_after.is_empty()
            && (state == State::TimedOut || self.reconcile_states.contains(&state))
    }

    /// Whether a payment of this kind in `state` may still move, so a merchant's recheck
    /// is taken: pending, timed out, or a state the kind documents a move from.
    pub fn may_move(&self, state: State) -> bool {
        matches!(state, State::Pending | State::TimedOut) || self.reconcile_states.contains(&state)
    }

    /// Maps a raw status, case-insensitively; `None` for a status the map doesn't know.
    pub fn map_status(&self, raw: &str) -> Option<State> {
        self.status_map.get(&raw.to_lowercase()).copied()
    }

    /// The page size a listing for `tracked` payments starts from: the listing also holds
    /// payments nobody asked us about (other wallets, older ones), so comfortably more
    /// than what we track, within `max_limit`.
    pub fn list_limit(&self, tracked: usize) -> u32 {
        let max = self.list.as_ref().map_or(1, |l| l.max_limit);
        (tracked as u32).saturating_mul(4).max(50).min(max)
    }
}

/// The configured method, `GET` or `POST` (any case).
fn method_of(raw: &RawKind) -> Result<Method, String> {
    match raw
        .method
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("GET") => Ok(Method::Get),
        Some("POST") => Ok(Method::Post),
        Some(other) => Err(format!("{other:?} is not GET or POST")),
        None => Err("missing".into()),
    }
}

/// The endpoint, `{prod}` and `{api}` expanded; an http(s) URL.
fn url_of(raw: &RawKind, prod: &str, api: &str) -> Result<String, String> {
    let url = raw
        .url
        .as_deref()
        .ok_or_else(|| "missing".to_string())?
        .replace("{prod}", prod.trim_end_matches('/'))
        .replace("{api}", api.trim_end_matches('/'));
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url:?} is not an http(s) URL"));
    }
    Ok(url)
}

/// The header carrying the API key: a header name.
fn auth_header_of(raw: &RawKind) -> Result<String, String> {
    let auth_header = raw
        .auth_header
        .clone()
        .ok_or_else(|| "missing".to_string())?;
    if auth_header.is_empty()
        || !auth_header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("{auth_header:?} is not a header name"));
    }
    Ok(auth_header)
}

/// Raw statuses, lower-cased, to the states a check may report (not `timed_out` or
/// `cancelled`, which only the daemon decides); at least one.
fn status_map_of(raw: &RawKind) -> Result<HashMap<String, State>, String> {
    let mut status_map = HashMap::new();
    for (k, v) in &raw.status_map {
        let state = State::parse(v)
            .filter(|s| *s != State::TimedOut && *s != State::Cancelled)
            .ok_or_else(|| {
                format!(
                    "{k:?} maps to {v:?}, which is not one of pending, succeeded, failed, expired, refunded"
                )
            })?;
        status_map.insert(k.to_lowercase(), state);
    }
    if status_map.is_empty() {
        return Err("maps no status".into());
    }
    Ok(status_map)
}

/// A list endpoint's settings, with their defaults (`id_field`: the kind's id parameter).
fn list_of(l: &RawList, id_field: &str) -> Result<ListSpec, String> {
    let items_pointer = l.items_pointer.clone().unwrap_or_default();
    let item_id_pointer = l
        .item_id_pointer
        .clone()
        .unwrap_or_else(|| format!("/{id_field}"));
    if !valid_pointer(&items_pointer) || !valid_pointer(&item_id_pointer) {
        return Err("JSON pointers start with '/'".into());
    }
    let max_limit = l.max_limit.unwrap_or(1000);
    if max_limit == 0 {
        return Err("max_limit must be at least 1".into());
    }
    if l.created_pointer
        .as_deref()
        .is_some_and(|p| !valid_pointer(p))
    {
        return Err("JSON pointers start with '/'".into());
    }
    Ok(ListSpec {
        items_pointer,
        item_id_pointer,
        limit_param: l.limit_param.clone().unwrap_or_else(|| "limit".into()),
        max_limit,
        created_pointer: l.created_pointer.clone(),
    })
}

/// The final states a payment may still move from, each once (`timed_out` is always
/// watched, `cancelled` never moves).
fn reconcile_states_of(raw: &RawKind) -> Result<Vec<State>, String> {
    let mut reconcile_states = Vec::new();
    for v in raw.reconcile_states.iter().flatten() {
        let state = State::parse(v)
            .filter(|s| s.is_final() && *s != State::TimedOut && *s != State::Cancelled)
            .ok_or_else(|| {
                format!(
                    "{v:?} is not one of succeeded, failed, expired, refunded (timed_out is always watched)"
                )
            })?;
        if !reconcile_states.contains(&state) {
            reconcile_states.push(state);
        }
    }
    Ok(reconcile_states)
}
