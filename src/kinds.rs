//! Check kinds as data: how to ask Ninjapay about one payment and how to read the answer
//! (SPEC section 2). The four presets are defaults in the configuration, so a user can
//! override any field of one, or add a kind, without recompiling.
//!
//! Everything here is pure: building a request's parts and interpreting an answer. The
//! HTTP call itself is `upstream`'s.

use crate::payment::{PaymentId, State};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// A check kind's name (`p2p`, `btc`, a `[kinds.NAME]` of the configuration): 1–32
/// characters of `a-z`, `0-9`, `_` or `-`. Parsed once where a name comes in (a
/// configuration key, the API's input); rows decode into it as stored (only parsed names
/// are ever written). It borrows as `str`, so maps keyed by it are looked up with text.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(try_from = "String", into = "String")]
#[sqlx(transparent)]
pub struct KindName(String);

/// Why a kind name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a kind's name is 1-32 characters of a-z, 0-9, '_' or '-'")]
pub struct BadKindName;

impl KindName {
    /// Parses a name from outside.
    pub fn parse(s: &str) -> Result<Self, BadKindName> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadKindName)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KindName {
    type Error = BadKindName;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<KindName> for String {
    fn from(k: KindName) -> String {
        k.0
    }
}

impl std::borrow::Borrow<str> for KindName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KindName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for KindName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for KindName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for KindName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A kind as written in the configuration; every field optional so that a user's table
/// merges over a preset's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKind {
    /// `GET` or `POST`.
    pub method: Option<String>,
    /// Endpoint; `{prod}` and `{api}` expand to the configured base URLs.
    pub url: Option<String>,
    /// Name of the parameter that carries the payment id.
    pub id_field: Option<String>,
    /// `query` or `json` (a JSON body `{id_field: id}`).
    pub id_in: Option<String>,
    /// Header that carries the API key.
    pub auth_header: Option<String>,
    /// JSON pointer to the raw status (within each list item for list kinds).
    pub status_pointer: Option<String>,
    /// JSON pointer to an envelope flag that must be `true` (else the answer is an error).
    pub ok_pointer: Option<String>,
    /// Raw status (matched case-insensitively) → state.
    #[serde(default)]
    pub status_map: BTreeMap<String, String>,
    /// Fixed query parameters sent with every request.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Makes the kind a list endpoint: one request answers every pending payment it lists.
    pub list: Option<RawList>,
    /// This kind's own API key (else `ninjapay.api_key`); budgets are per key.
    #[serde(default, deserialize_with = "crate::secret::secret_text")]
    pub api_key: Option<String>,
    /// A file holding this kind's own API key.
    pub api_key_file: Option<std::path::PathBuf>,
    /// This kind's reconciliation schedule (ages since the start), instead of
    /// `reconcile.after`; `[]` turns it off for the kind.
    pub reconcile_after: Option<Vec<humantime_serde::Serde<std::time::Duration>>>,
    /// Final states (besides `timed_out`) that the provider documents a later move from
    /// (a quote's `succeeded` may be `refunded`): payments ending in them stay watched.
    pub reconcile_states: Option<Vec<String>>,
}

/// List-endpoint settings of a kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawList {
    /// JSON pointer to the array of items ("" for a top-level array).
    pub items_pointer: Option<String>,
    /// JSON pointer, within an item, to its id.
    pub item_id_pointer: Option<String>,
    /// Query parameter that bounds the page size.
    pub limit_param: Option<String>,
    /// Largest page asked for.
    pub max_limit: Option<u32>,
    /// JSON pointer, within an item, to its creation time (unix seconds or milliseconds):
    /// tells whether a full page reaches back far enough for an absent payment to be
    /// really absent.
    pub created_pointer: Option<String>,
}

fn preset(
    method: &str,
    url: &str,
    id_field: &str,
    id_in: &str,
    auth: &str,
    status: &str,
    map: &[(&str, &str)],
) -> RawKind {
    RawKind {
        method: Some(method.into()),
        url: Some(url.into()),
        id_field: Some(id_field.into()),
        id_in: Some(id_in.into()),
        auth_header: Some(auth.into()),
        status_pointer: Some(status.into()),
        status_map: map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..RawKind::default()
    }
}

/// The presets of SPEC section 2, as configuration defaults.
pub fn presets() -> BTreeMap<String, RawKind> {
    let mut m = BTreeMap::new();
    m.insert(
        "p2p".into(),
        preset(
            "GET",
            "{prod}/uapi/v1/p2p/paymentLink/checkPayment",
            "tid",
            "query",
            "Authorization",
            "/status",
            &[
                ("pending", "pending"),
                ("approved", "succeeded"),
                ("declined", "failed"),
            ],
        ),
    );
    m.insert(
        "quote".into(),
        preset(
            "GET",
            "{prod}/sapi/v1/checkQuote",
            "tid",
            "query",
            "Authorization",
            "/status",
            &[
                ("pending", "pending"),
                ("success", "succeeded"),
                ("completed", "succeeded"),
                ("failed", "failed"),
                ("expired", "expired"),
                ("refunded", "refunded"),
            ],
        ),
    );
    // Ninjapay documents a quote's `success` turning `refunded`.
    if let Some(quote) = m.get_mut("quote") {
        quote.reconcile_states = Some(vec!["succeeded".into()]);
    }
    let mut paywall = preset(
        "POST",
        "{api}/webextension/api/v1/fiat/paywall/trx-status",
        "order_id",
        "json",
        "x-api-key",
        "/data/trxStatus",
        &[
            ("pending", "pending"),
            ("success", "succeeded"),
            ("failed", "failed"),
            ("failure", "failed"),
        ],
    );
    paywall.ok_pointer = Some("/status".into());
    m.insert("paywall".into(), paywall);
    let mut btc = preset(
        "GET",
        "{prod}/sapi/v1/history",
        "tid",
        "query",
        "Authorization",
        "/status",
        &[
            ("undefined", "pending"),
            ("pending", "pending"),
            ("paid", "succeeded"),
            ("declined", "failed"),
        ],
    );
    btc.list = Some(RawList {
        items_pointer: Some(String::new()),
        item_id_pointer: Some("/tid".into()),
        limit_param: Some("limit".into()),
        max_limit: Some(1000),
        created_pointer: Some("/created_at".into()),
    });
    m.insert("btc".into(), btc);
    m
}

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
        let method = match raw
            .method
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("GET") => Method::Get,
            Some("POST") => Method::Post,
            Some(other) => return Err(err("method", format!("{other:?} is not GET or POST"))),
            None => return Err(err("method", "missing".into())),
        };
        let url = raw
            .url
            .as_deref()
            .ok_or_else(|| err("url", "missing".into()))?
            .replace("{prod}", prod.trim_end_matches('/'))
            .replace("{api}", api.trim_end_matches('/'));
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(err("url", format!("{url:?} is not an http(s) URL")));
        }
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
        let auth_header = raw
            .auth_header
            .clone()
            .ok_or_else(|| err("auth_header", "missing".into()))?;
        if auth_header.is_empty()
            || !auth_header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err(
                "auth_header",
                format!("{auth_header:?} is not a header name"),
            ));
        }
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
        let mut status_map = HashMap::new();
        for (k, v) in &raw.status_map {
            let state = State::parse(v)
                .filter(|s| *s != State::TimedOut && *s != State::Cancelled)
                .ok_or_else(|| {
                    err(
                        "status_map",
                        format!(
                            "{k:?} maps to {v:?}, which is not one of pending, succeeded, failed, expired, refunded"
                        ),
                    )
                })?;
            status_map.insert(k.to_lowercase(), state);
        }
        if status_map.is_empty() {
            return Err(err("status_map", "maps no status".into()));
        }
        let list = match &raw.list {
            None => None,
            Some(l) => {
                let items_pointer = l.items_pointer.clone().unwrap_or_default();
                let item_id_pointer = l
                    .item_id_pointer
                    .clone()
                    .unwrap_or_else(|| format!("/{id_field}"));
                if !valid_pointer(&items_pointer) || !valid_pointer(&item_id_pointer) {
                    return Err(err("list", "JSON pointers start with '/'".into()));
                }
                let max_limit = l.max_limit.unwrap_or(1000);
                if max_limit == 0 {
                    return Err(err("list", "max_limit must be at least 1".into()));
                }
                if l.created_pointer
                    .as_deref()
                    .is_some_and(|p| !valid_pointer(p))
                {
                    return Err(err("list", "JSON pointers start with '/'".into()));
                }
                Some(ListSpec {
                    items_pointer,
                    item_id_pointer,
                    limit_param: l.limit_param.clone().unwrap_or_else(|| "limit".into()),
                    max_limit,
                    created_pointer: l.created_pointer.clone(),
                })
            }
        };
        let mut reconcile_states = Vec::new();
        for v in raw.reconcile_states.iter().flatten() {
            let state = State::parse(v)
                .filter(|s| s.is_final() && *s != State::TimedOut && *s != State::Cancelled)
                .ok_or_else(|| {
                    err(
                        "reconcile_states",
                        format!(
                            "{v:?} is not one of succeeded, failed, expired, refunded (timed_out is always watched)"
                        ),
                    )
                })?;
            if !reconcile_states.contains(&state) {
                reconcile_states.push(state);
            }
        }
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

    /// Query parameters of the request checking `ids` (one id, or the listed ones); a list
    /// kind asks for `list_limit` entries (else [`Kind::list_limit`] of `ids`).
    pub fn query_params(
        &self,
        ids: &[&PaymentId],
        list_limit: Option<u32>,
    ) -> Vec<(String, String)> {
        let mut q = self.query.clone();
        match &self.list {
            Some(list) => {
                let limit = list_limit
                    .unwrap_or_else(|| self.list_limit(ids.len()))
                    .clamp(1, list.max_limit);
                q.push((list.limit_param.clone(), limit.to_string()));
            }
            None => {
                if let (IdIn::Query, Some(id)) = (self.id_in, ids.first()) {
                    q.push((self.id_field.clone(), id.as_str().to_string()));
                }
            }
        }
        q
    }

    /// JSON body of the request checking `id`, for kinds that send one.
    pub fn json_body(&self, id: &PaymentId) -> Option<Value> {
        (self.id_in == IdIn::Json && self.list.is_none()).then(|| {
            let mut m = serde_json::Map::new();
            m.insert(self.id_field.clone(), Value::String(id.as_str().into()));
            Value::Object(m)
        })
    }

    /// Reads one payment's answer (HTTP status and body) into an observation.
    pub fn interpret(&self, code: u16, body: &[u8]) -> Observation {
        let json = match classify(code, body) {
            Ok(json) => json,
            Err(obs) => return obs,
        };
        if let Some(p) = &self.ok_pointer {
            if json.pointer(p) != Some(&Value::Bool(true)) {
                let message = provider_message(&json).unwrap_or("envelope status is not true");
                return Observation::error(
                    ErrorClass::Rejected,
                    format!("Ninjapay answered {p} != true: {message}"),
                    kept(&json, body.len()),
                );
            }
        }
        self.read_status(&json, json.clone())
    }

    fn read_status(&self, item: &Value, response: Value) -> Observation {
        match item.pointer(&self.status_pointer) {
            // No status is that long: what is kept of an answer stays bounded (history,
            // logs, webhooks, the set of unknown statuses remembered).
            Some(Value::String(raw)) if raw.len() > MAX_STATUS_BYTES => Observation::error(
                ErrorClass::BadBody,
                format!(
                    "status at {} is longer than {MAX_STATUS_BYTES} bytes: {}",
                    self.status_pointer,
                    truncate(raw, 40)
                ),
                None,
            ),
            Some(Value::String(raw)) => Observation::Status {
                state: self.map_status(raw),
                raw: raw.clone(),
                response,
            },
            Some(other) => Observation::error(
                ErrorClass::BadBody,
                format!(
                    "status at {} is not a string: {}",
                    self.status_pointer,
                    truncate(&other.to_string(), 80)
                ),
                Some(response),
            ),
            None => Observation::error(
                ErrorClass::BadBody,
                format!("answer has no status at {}", self.status_pointer),
                Some(response),
            ),
        }
    }

    /// Reads a list endpoint's answer to a request for `limit` entries: an observation for
    /// each of `ids` (started at `started_ms`, wall clock), or one error for them all. A
    /// payment absent from the listing is "not found" (an answer) only when the listing
    /// surely covers it: it held fewer entries than asked (the whole history), or its
    /// oldest entry is older than the payment's start (with a margin for clocks). Absent
    /// from a full page that does not reach back that far, it is [`ErrorClass::Truncated`]:
    /// not an answer, and the next listing asks for more.
    pub fn interpret_list(
        &self,
        code: u16,
        body: &[u8],
        ids: &[&PaymentId],
        started_ms: &[i64],
        limit: u32,
    ) -> Result<Vec<Observation>, Observation> {
        let Some(list) = &self.list else {
            return Err(Observation::error(
                ErrorClass::BadBody,
                "kind has no list endpoint".into(),
                None,
            ));
        };
        let json = classify(code, body)?;
        let items = match json.pointer(&list.items_pointer) {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(Observation::error(
                    ErrorClass::BadBody,
                    format!("answer has no array at {:?}", list.items_pointer),
                    kept(&json, body.len()),
                ))
            }
        };
        let mut by_id: HashMap<String, &Value> = HashMap::with_capacity(items.len());
        for item in items {
            let id = match item.pointer(&list.item_id_pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => continue,
            };
            by_id.entry(id).or_insert(item);
        }
        let full = items.len() >= limit as usize;
        // The oldest entry listed, in unix ms; `None` when entries carry no time.
        let oldest = list.created_pointer.as_deref().and_then(|p| {
            items
                .iter()
                .map(|item| match item.pointer(p) {
                    // Seconds, or milliseconds when the number is that large.
                    Some(Value::Number(n)) => n.as_f64().map(|t| {
                        if t < 1e11 {
                            (t * 1000.0) as i64
                        } else {
                            t as i64
                        }
                    }),
                    _ => None,
                })
                .collect::<Option<Vec<i64>>>()?
                .into_iter()
                .min()
        });
        Ok(ids
            .iter()
            .enumerate()
            .map(|(i, id)| match by_id.get(id.as_str()) {
                Some(item) => self.read_status(item, (*item).clone()),
                None => {
                    let started = started_ms.get(i).copied().unwrap_or(i64::MIN);
                    let covered = !full
                        || oldest.is_some_and(|o| o < started.saturating_sub(LISTING_MARGIN_MS));
                    if covered {
                        Observation::error(
                            ErrorClass::NotFound,
                            format!("not in the listing of {} items", items.len()),
                            None,
                        )
                    } else {
                        Observation::error(
                            ErrorClass::Truncated,
                            format!(
                                "not among the newest {} entries of the listing, which do not reach back to its start; the next listing asks for more",
                                items.len()
                            ),
                            None,
                        )
                    }
                }
            })
            .collect())
    }
}

/// How much older than a payment's start a listing's oldest entry must be for its
/// absence to count: the provider's clock and the merchant's may differ.
const LISTING_MARGIN_MS: i64 = 5 * 60 * 1000;

/// Longest raw status taken as one (the provider's are a few characters).
pub const MAX_STATUS_BYTES: usize = 64;

/// Largest answer kept with an error (stored in the payment's `response`): an 8 MiB error
/// page is not copied into every payment a listing covers.
pub const MAX_KEPT_ERROR_BODY: usize = 16 * 1024;

/// The answer to keep with an error, when it is small enough.
fn kept(json: &Value, body_len: usize) -> Option<Value> {
    (body_len <= MAX_KEPT_ERROR_BODY).then(|| json.clone())
}

/// What one check learned about one payment.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// Ninjapay answered with a status; `state` is `None` for a raw status the kind's map
    /// doesn't know (the payment stays pending).
    Status {
        raw: String,
        state: Option<State>,
        response: Value,
    },
    /// The check failed; the payment stays on the ladder with the error recorded.
    Error {
        class: ErrorClass,
        message: String,
        response: Option<Value>,
    },
}

impl Observation {
    /// An error without `Retry-After`.
    pub fn error(class: ErrorClass, message: String, response: Option<Value>) -> Self {
        Observation::Error {
            class,
            message,
            response,
        }
    }
}

/// Families of failure; the scheduler reacts to some (rate limits, auth) as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connect failure, timeout, reset.
    Transport,
    /// 429.
    RateLimited,
    /// 503.
    Unavailable,
    /// 401/403: the key is wrong or revoked.
    Auth,
    /// 404, or missing from a listing: maybe not visible yet.
    NotFound,
    /// Missing from a listing cut short before it reached the payment's start: the
    /// provider said nothing about it.
    Truncated,
    /// Other 4xx/5xx.
    Http,
    /// Not JSON, no status, wrong shape: an answer carrying no usable status, an outage
    /// like a 5xx (it settles nothing).
    BadBody,
    /// The provider said no (`status: false` envelope).
    Rejected,
}

impl ErrorClass {
    /// Whether the provider really answered about the payment: only such a check settles
    /// the deadline. Transport faults, 429/503, refused keys and other HTTP failures are
    /// retried instead.
    pub fn is_answer(self) -> bool {
        !matches!(
            self,
            ErrorClass::Transport
                | ErrorClass::RateLimited
                | ErrorClass::Unavailable
                | ErrorClass::Auth
                | ErrorClass::Http
                | ErrorClass::BadBody
                | ErrorClass::Truncated
        )
    }

    /// Whether this failure means the provider gives no usable answer (down, 5xx, an
    /// answer without a status): shown by health until the kind is answered again.
    pub fn is_outage(self) -> bool {
        matches!(
            self,
            ErrorClass::Transport
                | ErrorClass::Unavailable
                | ErrorClass::Http
                | ErrorClass::BadBody
        )
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn provider_message(json: &Value) -> Option<&str> {
    json.get("message").and_then(Value::as_str)
}

/// Splits an answer into a JSON body to read, or an error observation.
fn classify(code: u16, body: &[u8]) -> Result<Value, Observation> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&code) {
        let class = match code {
            401 | 403 => ErrorClass::Auth,
            404 => ErrorClass::NotFound,
            429 => ErrorClass::RateLimited,
            503 => ErrorClass::Unavailable,
            _ => ErrorClass::Http,
        };
        let detail = json
            .as_ref()
            .and_then(provider_message)
            .map(|m| truncate(m, 200))
            .unwrap_or_else(|| truncate(&String::from_utf8_lossy(body), 200));
        let response = json.filter(|_| body.len() <= MAX_KEPT_ERROR_BODY);
        return Err(Observation::error(
            class,
            format!("HTTP {code}: {detail}"),
            response,
        ));
    }
    json.ok_or_else(|| {
        Observation::error(
            ErrorClass::BadBody,
            format!(
                "answer is not JSON: {}",
                truncate(&String::from_utf8_lossy(body), 80)
            ),
            None,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            .interpret_list(200, body, &[&a, &b, &c], &[0, 0, 0], 50)
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
            .interpret_list(200, br#"{"a":1}"#, &[&a], &[0], 50)
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
}
