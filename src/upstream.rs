//! The HTTP calls to Ninjapay. Building the request's parts and reading the answer are
//! `kinds`' pure functions; this module only sends, bounds and classifies transport faults.

use crate::config::NinjapayConfig;
use crate::kinds::{ErrorClass, Kind, Method, Observation};
use crate::payment::PaymentId;
use crate::secret::Secret;
use anyhow::{Context, Result};
use std::time::{Duration, SystemTime};

/// Largest answer read; Ninjapay's answers are a few KiB, a listing a few hundred.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// A pooled HTTP client for Ninjapay.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    /// For plain-http URLs (allowed to the local machine only): never through a proxy,
    /// which would see the key in clear. https goes through a proxy only by a CONNECT
    /// tunnel (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`), which sees nothing of it.
    direct: reqwest::Client,
    /// Longest pause a `Retry-After` may impose, ms.
    max_pause_ms: i64,
}

/// What one request answered.
#[derive(Debug)]
pub struct Answer {
    /// One observation per id asked about, in order.
    pub observations: Vec<Observation>,
    /// `Retry-After`, in milliseconds from now, when the provider sent one.
    pub retry_after_ms: Option<i64>,
}

impl Upstream {
    /// Builds the client: keep-alive pooling, connect and request timeouts, no redirects
    /// (the API key must never follow one to another host).
    pub fn new(cfg: &NinjapayConfig) -> Result<Self> {
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(cfg.connect_timeout)
                .timeout(cfg.request_timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("ninjapoll/", env!("CARGO_PKG_VERSION")))
        };
        let client = builder()
            .build()
            .context("building the Ninjapay HTTP client")?;
        let direct = builder()
            .no_proxy()
            .build()
            .context("building the Ninjapay HTTP client")?;
        Ok(Self {
            client,
            direct,
            max_pause_ms: i64::try_from(cfg.max_pause.as_millis()).unwrap_or(i64::MAX),
        })
    }

    /// Asks about `ids` (one, unless the kind is a list endpoint). For a list kind,
    /// `listing` is the page size to ask for and each id's start (unix ms).
    pub async fn check(
        &self,
        kind: &Kind,
        key: &Secret,
        ids: &[&PaymentId],
        listing: Option<(u32, &[crate::payment::WallMs])>,
    ) -> Answer {
        let fail = |class: ErrorClass, message: String, retry_after_ms: Option<i64>| Answer {
            observations: ids
                .iter()
                .map(|_| Observation::Error {
                    class,
                    message: message.clone(),
                    response: None,
                })
                .collect(),
            retry_after_ms,
        };
        let Some(first) = ids.first() else {
            return fail(ErrorClass::BadBody, "nothing to check".into(), None);
        };
        let client = if kind.url.starts_with("https://") {
            &self.client
        } else {
            &self.direct
        };
        let mut req = match kind.method {
            Method::Get => client.get(&kind.url),
            Method::Post => client.post(&kind.url),
        };
        req = req
            .query(&kind.query_params(ids, listing.map(|(limit, _)| limit)))
            .header(kind.auth_header.as_str(), key.expose())
            .header("accept", "application/json");
        if let Some(body) = kind.json_body(first) {
            req = req.json(&body);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return fail(ErrorClass::Transport, describe(&e), None),
        };
        let code = resp.status().as_u16();
        let retry_after_ms = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .map(|ms| ms.min(self.max_pause_ms));
        let body = match read_bounded(resp).await {
            Ok(b) => b,
            Err(e) => return fail(ErrorClass::Transport, e, retry_after_ms),
        };
        let observations = if kind.is_list() {
            let (limit, started) = listing.unwrap_or((kind.list_limit(ids.len()), &[]));
            match kind.interpret_list(code, &body, ids, started, limit) {
                Ok(obs) => obs,
                Err(one) => ids.iter().map(|_| one.clone()).collect(),
            }
        } else {
            vec![kind.interpret(code, &body)]
        };
        Answer {
            observations,
            retry_after_ms,
        }
    }
}

async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(format!("answer larger than {MAX_BODY} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(describe(&e)),
        }
    }
}

/// A transport error in words, without the URL's query (ids are fine, but keep lines
/// short) and never with headers (the key is in one). Shared with `webhooks`.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "answer cut short"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {detail}")
    }
}

/// `Retry-After` as milliseconds from `now`: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<i64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some((secs.min(86_400) * 1000) as i64);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .map(|d| d.as_millis().min(86_400_000) as i64)
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after("7", now), Some(7000));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&later, now), Some(30_000));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(0));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
