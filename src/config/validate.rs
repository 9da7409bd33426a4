//! Validation helpers shared by the sections: URLs, periods, durations, addresses.

use super::{invalid, ConfigError};
use std::time::Duration;

pub(super) fn url(key: &str, value: Option<&str>) -> Result<String, ConfigError> {
    let v = value.ok_or_else(|| invalid(key, "missing"))?;
    let parsed = url::Url::parse(v)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| invalid(key, format!("{v:?} is not an http(s) URL")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            key,
            "a URL here must not carry a user name or password",
        ));
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// A URL the API key is sent to: `https://`, or `http://` to the local machine only (a
/// key sent in clear over a network is a key given away).
pub(super) fn key_url(key: &str, value: Option<&str>) -> Result<String, ConfigError> {
    let v = url(key, value)?;
    match url::Url::parse(&v) {
        Ok(u) if u.scheme() == "http" && !is_loopback(&u) => Err(invalid(
            key,
            format!(
                "{v:?} would send the API key in clear: use https:// (http:// only to localhost / 127.0.0.1 / ::1)"
            ),
        )),
        _ => Ok(v),
    }
}

/// Whether a URL's host is the local machine (`localhost`, 127.0.0.0/8, `::1`): the only
/// place an API key may travel over plain `http://`.
fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A retention period: `0` keeps forever (`None`); otherwise at least `min`.
pub(super) fn keep(
    key: &str,
    d: Duration,
    min: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    if d.is_zero() {
        return Ok(None);
    }
    if let Some(min) = min.filter(|m| d < *m) {
        return Err(invalid(
            key,
            format!(
                "\"{}\" is shorter than the learner's memory ({}), \
                 from which a restart relearns flip ages; use 0 to keep forever or at least that",
                humantime::format_duration(d),
                humantime::format_duration(min)
            ),
        ));
    }
    Ok(Some(d))
}

/// An `IP:PORT` on the loopback interface: metrics are not for the network.
pub(super) fn loopback(key: &str, s: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let addr: std::net::SocketAddr = s.parse().map_err(|_| {
        invalid(
            key,
            format!("{s:?} is not an IP:PORT like \"127.0.0.1:9464\""),
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(invalid(
            key,
            format!(
                "{s:?} is not a loopback address: metrics are served on 127.0.0.1 or [::1] \
                 only (put a proxy with authentication in front to expose them)"
            ),
        ));
    }
    Ok(addr)
}

/// A duration that must not be zero; `default` when not configured.
pub(super) fn positive(
    key: &str,
    d: Option<Duration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = d.unwrap_or(default);
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}
