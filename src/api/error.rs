//! The API's errors: every code it can answer with, its HTTP status and what it means.
//! docs/SPEC.md's error-code table is checked against `ErrorCode::ALL` by a test, so the
//! contract and the code cannot drift apart.

use crate::wire::{ErrorAnswer, ErrorBody, PaymentView};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Declares the codes once: the variant, its wire name, its status and its meaning, and
/// the list of all of them (so a new variant cannot be left out of `ErrorCode::ALL`).
macro_rules! error_codes {
    ($($variant:ident = ($code:literal, $status:ident, $meaning:literal),)*) => {
        /// A code a program can branch on: stable, snake_case, part of the contract.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(
                #[doc = $meaning]
                $variant,
            )*
        }

        impl ErrorCode {
            /// Every code, in the order of the SPEC's table (checked against it by a test).
            #[cfg(test)]
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The code as it appears in `{"error": {"code": …}}`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status it is answered with.
            pub fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }

            /// What it means, for a person (the SPEC table's third column).
            #[cfg(test)]
            pub fn meaning(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $meaning,)*
                }
            }
        }
    };
}

error_codes! {
    MalformedJson = ("malformed_json", BAD_REQUEST, "The body is not JSON."),
    UnknownField = ("unknown_field", BAD_REQUEST, "The body has a field the endpoint does not take (often a typo)."),
    MissingField = ("missing_field", BAD_REQUEST, "The body lacks a required field."),
    InvalidField = ("invalid_field", BAD_REQUEST, "A field of the body has the wrong type."),
    InvalidPath = ("invalid_path", BAD_REQUEST, "The URL's kind, id or event id is not percent-encoded UTF-8."),
    InvalidQuery = ("invalid_query", BAD_REQUEST, "The query string has an unknown parameter or a value of the wrong type."),
    InvalidLimit = ("invalid_limit", BAD_REQUEST, "`limit` is not between 1 and 1000."),
    InvalidCursor = ("invalid_cursor", BAD_REQUEST, "`cursor` is not one this API handed out."),
    InvalidState = ("invalid_state", BAD_REQUEST, "`state` is not a payment state (or, for webhooks, pending, delivered or dead)."),
    UnknownKind = ("unknown_kind", BAD_REQUEST, "The kind is not configured (a preset or `[kinds.NAME]`)."),
    UnknownAccount = ("unknown_account", BAD_REQUEST, "The account is not configured (`default`, or an `[accounts.NAME]`)."),
    InvalidId = ("invalid_id", BAD_REQUEST, "The payment id is empty, too long or has a character that is not allowed."),
    InvalidStartedAt = ("invalid_started_at", BAD_REQUEST, "`started_at` is neither unix seconds nor RFC 3339, or is more than 5 minutes ahead."),
    InvalidCallbackUrl = ("invalid_callback_url", BAD_REQUEST, "`callback_url` is not an http(s) URL of at most 2048 bytes."),
    CallbackUrlNotAllowed = ("callback_url_not_allowed", BAD_REQUEST, "`callback_url` is under none of `webhooks.allowed_callback_prefixes` (same scheme, host and port; path below the prefix's on a `/` boundary)."),
    BodyUnreadable = ("body_unreadable", BAD_REQUEST, "The request body could not be read (the client broke off or sent bad chunking)."),
    MetadataTooLarge = ("metadata_too_large", BAD_REQUEST, "`metadata` is larger than 16 KiB as JSON."),
    InvalidEventId = ("invalid_event_id", BAD_REQUEST, "The webhook event id is empty or longer than 128 bytes."),
    Forbidden = ("forbidden", FORBIDDEN, "The peer's uid and gid are in neither `socket.allowed_uids` nor `socket.allowed_gids`."),
    NotFound = ("not_found", NOT_FOUND, "No such payment or webhook event."),
    UnknownEndpoint = ("unknown_endpoint", NOT_FOUND, "No such endpoint."),
    MethodNotAllowed = ("method_not_allowed", METHOD_NOT_ALLOWED, "The endpoint does not take that method."),
    Conflict = ("conflict", CONFLICT, "The payment is already tracked with a different `started_at`, `metadata` or `callback_url`; `payment` is the stored one."),
    AlreadyFinal = ("already_final", CONFLICT, "The payment is already final, so it cannot be cancelled, or rechecked because its state can no longer move (section 2, \"After the ladder\"); `payment` shows it."),
    BodyTooLarge = ("body_too_large", PAYLOAD_TOO_LARGE, "The body is larger than the endpoint's limit (1 MiB; 16 MiB for a batch)."),
    BatchTooLarge = ("batch_too_large", PAYLOAD_TOO_LARGE, "A batch holds more than 10,000 checks."),
    RequestTimeout = ("request_timeout", REQUEST_TIMEOUT, "The request took longer than `socket.request_timeout`."),
    UnsupportedMediaType = ("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, "The body is not sent with `Content-Type: application/json`."),
    Internal = ("internal", INTERNAL_SERVER_ERROR, "A failure of the daemon's own (e.g. its database); the details are in its log."),
    Busy = ("busy", SERVICE_UNAVAILABLE, "Too many large request bodies are being read at once; retry shortly."),
}

/// An API error: a code a program can branch on (which fixes the status), a message a
/// person can act on.
#[derive(Debug)]
pub struct ApiError {
    /// Stable; listed in docs/SPEC.md's error-code table.
    pub code: ErrorCode,
    /// For a person: what was wrong and how to fix it.
    pub message: String,
    /// The payment concerned (e.g. the existing one on a conflict).
    pub payment: Option<Box<PaymentView>>,
}

impl ApiError {
    /// An error with its code's status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            payment: None,
        }
    }

    /// The same, showing the payment concerned.
    pub fn with_payment(mut self, payment: PaymentView) -> Self {
        self.payment = Some(Box::new(payment));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// A 500 for a failure of ours; the detail goes to the log, not to the client.
    pub fn internal(e: anyhow::Error) -> Self {
        tracing::error!(error = format!("{e:#}"), "request failed");
        Self::new(ErrorCode::Internal, "internal error; see the daemon's log")
    }

    /// The `{"code", "message"}` object of the answer (also each failed batch item's).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.as_str().to_owned(),
            message: self.message.clone(),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorAnswer {
            error: self.body(),
            payment: self.payment.map(|p| *p),
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;
    use std::collections::BTreeMap;

    /// The rows `| `code` | status | meaning |` of SPEC's table under "Error codes".
    fn spec_table() -> BTreeMap<String, (u16, String)> {
        let spec = include_str!("../../docs/SPEC.md");
        let start = spec
            .find("### Error codes")
            .expect("docs/SPEC.md has a section \"### Error codes\"");
        let mut rows = BTreeMap::new();
        for line in spec[start..]
            .lines()
            .skip(1)
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
        {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let [code, status, meaning] = cells[..] else {
                panic!("a row of three cells: {line}");
            };
            let Some(code) = code.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
                continue; // the header and its rule
            };
            let status = status.parse().expect("a numeric status");
            let dup = rows.insert(code.to_string(), (status, meaning.to_string()));
            assert!(dup.is_none(), "{code} is listed twice");
        }
        rows
    }

    #[test]
    fn the_spec_table_lists_exactly_the_codes_the_api_can_return() {
        let spec = spec_table();
        let ours: BTreeMap<String, (u16, String)> = ErrorCode::ALL
            .iter()
            .map(|c| {
                (
                    c.as_str().to_string(),
                    (c.status().as_u16(), c.meaning().to_string()),
                )
            })
            .collect();
        for (code, row) in &ours {
            assert_eq!(
                spec.get(code),
                Some(row),
                "docs/SPEC.md's error table must have the row:\n| `{code}` | {} | {} |",
                row.0,
                row.1
            );
        }
        for code in spec.keys() {
            assert!(
                ours.contains_key(code),
                "docs/SPEC.md lists {code}, which the API never returns"
            );
        }
    }

    #[test]
    fn codes_are_unique_snake_case_and_errors() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{} twice", c.as_str());
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(c.status().is_client_error() || c.status().is_server_error());
            assert!(!c.meaning().contains('|'), "a table cell cannot hold |");
        }
    }
}
