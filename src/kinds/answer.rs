//! Reading an answer (HTTP status and body) into an [`Observation`] per payment.

use super::kind::Kind;
use crate::payment::{PaymentId, State, WallMs};
use serde_json::Value;
use std::collections::HashMap;

impl Kind {
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
        self.read_status(json)
    }

    /// Reads the status of `item`, which is kept as the answer.
    fn read_status(&self, item: Value) -> Observation {
        let raw = match item.pointer(&self.status_pointer) {
            // No status is that long: what is kept of an answer stays bounded (history,
            // logs, webhooks, the set of unknown statuses remembered).
            Some(Value::String(raw)) if raw.len() > MAX_STATUS_BYTES => {
                return Observation::error(
                    ErrorClass::BadBody,
                    format!(
                        "status at {} is longer than {MAX_STATUS_BYTES} bytes: {}",
                        self.status_pointer,
                        truncate(raw, 40)
                    ),
                    None,
                )
            }
            Some(Value::String(raw)) => raw.clone(),
            Some(other) => {
                let message = format!(
                    "status at {} is not a string: {}",
                    self.status_pointer,
                    truncate(&other.to_string(), 80)
                );
                return Observation::error(ErrorClass::BadBody, message, Some(item));
            }
            None => {
                let message = format!("answer has no status at {}", self.status_pointer);
                return Observation::error(ErrorClass::BadBody, message, Some(item));
            }
        };
        Observation::Status {
            state: self.map_status(&raw),
            raw,
            response: item,
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
        started_ms: &[WallMs],
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
                Some(item) => self.read_status((*item).clone()),
                None => {
                    let started = started_ms.get(i).copied().unwrap_or(WallMs::MIN);
                    let covered = !full
                        || oldest.is_some_and(|o| o < started.saturating_sub(LISTING_MARGIN_MS).as_ms());
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
