//! Failures injected for every request, and the answers the fake can give (a decided
//! answer, turned into an HTTP response after any delay).

use crate::endpoints::Kind;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// A failure injected for every request, whatever its path or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer `code` with `{"success": false, …}` and an optional `Retry-After` header.
    Status {
        /// HTTP status code (an invalid code is answered as 500).
        code: u16,
        /// `Retry-After` header value, if any.
        retry_after: Option<String>,
    },
}

impl Fault {
    /// The answer to every request while this fault is set.
    pub(crate) fn reply(&self) -> Reply {
        match self {
            Fault::Status { code, retry_after } => {
                let mut reply = Reply::error(
                    StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "Service temporarily unavailable",
                );
                reply.retry_after = retry_after.clone();
                reply
            }
        }
    }
}

/// A decided answer, turned into an HTTP response after any delay.
pub(crate) struct Reply {
    pub(crate) code: StatusCode,
    body: String,
    content_type: &'static str,
    pub(crate) retry_after: Option<String>,
    pub(crate) allow: Option<&'static str>,
}

impl Reply {
    pub(crate) fn json(code: StatusCode, body: &Value) -> Reply {
        Reply {
            code,
            body: body.to_string(),
            content_type: "application/json",
            retry_after: None,
            allow: None,
        }
    }

    /// The provider's error shape.
    pub(crate) fn error(code: StatusCode, message: &str) -> Reply {
        Reply::json(code, &json!({"success": false, "message": message}))
    }

    pub(crate) fn raw(code: u16, body: String, retry_after: Option<String>) -> Reply {
        let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        Reply {
            code: StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
            content_type,
            retry_after,
            allow: None,
        }
    }

    pub(crate) fn not_json() -> Reply {
        Reply {
            code: StatusCode::OK,
            body: "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
                .to_owned(),
            content_type: "text/html",
            retry_after: None,
            allow: None,
        }
    }

    pub(crate) fn envelope_false(kind: Kind) -> Reply {
        let body = match kind {
            Kind::Paywall => json!({"status": false, "message": "Unable to fetch transaction"}),
            Kind::P2p | Kind::Quote | Kind::Btc => {
                json!({"success": false, "message": "Unable to fetch transaction"})
            }
        };
        Reply::json(StatusCode::OK, &body)
    }

    pub(crate) fn into_response(self) -> Response {
        let mut response = (self.code, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(value) = self
            .retry_after
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        response
    }
}
