//! The callback allow-list, a webhook rule: a payment's own `callback_url` must lie under
//! one of `webhooks.allowed_callback_prefixes`, checked at enqueue and again before every
//! send (the list may have changed since). Config parses the prefixes; the check is here.

use std::fmt;

/// One entry of `webhooks.allowed_callback_prefixes`, parsed once: a callback URL is
/// allowed when its scheme, host and port are exactly these and its path starts with
/// this path on a `/` boundary. Compared as parsed URLs, never as strings, so that
/// `https://hooks.example.com.evil.net/` and `https://hooks.example.com@evil.net/` do not
/// pass for `https://hooks.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackPrefix {
    scheme: String,
    host: String,
    port: u16,
    path: String,
    text: String,
}

impl CallbackPrefix {
    /// Parses a prefix: an http(s) URL without userinfo, query or fragment.
    pub fn parse(s: &str) -> Result<Self, String> {
        let u = url::Url::parse(s.trim()).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!("{s:?} is not an http(s) URL"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!("{s:?} carries a user name or password"));
        }
        if u.query().is_some() || u.fragment().is_some() {
            return Err(format!(
                "{s:?} has a query or fragment; give scheme, host, port and path"
            ));
        }
        let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) else {
            return Err(format!("{s:?} has no host"));
        };
        Ok(Self {
            scheme: u.scheme().to_string(),
            host: host.to_string(),
            port,
            path: u.path().to_string(),
            text: s.trim().to_string(),
        })
    }

    /// Whether `u` is under this prefix (userinfo is refused before this is asked).
    pub fn allows(&self, u: &url::Url) -> bool {
        let path_ok = if self.path.ends_with('/') {
            u.path().starts_with(&self.path)
        } else {
            u.path() == self.path
                || u.path()
                    .strip_prefix(&self.path)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        u.scheme() == self.scheme
            && u.host_str() == Some(self.host.as_str())
            && u.port_or_known_default() == Some(self.port)
            && path_ok
    }
}

impl fmt::Display for CallbackPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackRefusal {
    /// Not an http(s) URL we would send to (malformed, too long, userinfo).
    #[error("{0}")]
    Invalid(String),
    /// A good URL, but under none of the allowed prefixes.
    #[error("{0}")]
    NotAllowed(String),
}

/// Longest callback URL accepted.
pub const MAX_CALLBACK_URL: usize = 2048;

/// Checks a callback URL against the allow-list: at enqueue, and again before every send
/// (the list may have changed since).
pub fn check_callback(prefixes: &[CallbackPrefix], raw: &str) -> Result<(), CallbackRefusal> {
    if raw.len() > MAX_CALLBACK_URL {
        return Err(CallbackRefusal::Invalid(format!(
            "callback_url must be an http(s) URL of at most {MAX_CALLBACK_URL} bytes"
        )));
    }
    let u = url::Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            CallbackRefusal::Invalid(format!(
                "callback_url must be an http(s) URL of at most {MAX_CALLBACK_URL} bytes"
            ))
        })?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(CallbackRefusal::Invalid(
            "callback_url must not carry a user name or password".into(),
        ));
    }
    if prefixes.iter().any(|p| p.allows(&u)) {
        return Ok(());
    }
    Err(CallbackRefusal::NotAllowed(if prefixes.is_empty() {
        "callback_url is not accepted: webhooks.allowed_callback_prefixes is empty".into()
    } else {
        let list: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
        format!(
            "callback_url must be under one of webhooks.allowed_callback_prefixes \
             (same scheme, host and port; path below the prefix's): {}",
            list.join(", ")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(list: &[&str]) -> Vec<CallbackPrefix> {
        list.iter()
            .map(|p| CallbackPrefix::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn callbacks_are_compared_as_parsed_urls() {
        let p = prefixes(&["https://hooks.example.com", "http://127.0.0.1:80/app/hooks"]);
        let ok = |u: &str| check_callback(&p, u).is_ok();
        assert!(ok("https://hooks.example.com/x"));
        assert!(ok("https://hooks.example.com"));
        assert!(
            ok("https://HOOKS.example.com:443/x"),
            "default port, host case"
        );
        assert!(ok("http://127.0.0.1/app/hooks"));
        assert!(ok("http://127.0.0.1/app/hooks/a/b?q=1"));
        // What a string prefix let through.
        assert!(!ok("https://hooks.example.com.evil.net/x"));
        assert_eq!(
            check_callback(&p, "https://hooks.example.com@evil.net/x"),
            Err(CallbackRefusal::Invalid(
                "callback_url must not carry a user name or password".into()
            ))
        );
        assert!(!ok("https://user@hooks.example.com/x"), "userinfo");
        assert!(!ok("http://127.0.0.1:8099/app/hooks"), "another port");
        assert!(
            !ok("http://127.0.0.1:80/app/hooksevil"),
            "not on a / boundary"
        );
        assert!(
            !ok("http://127.0.0.1/app/hooks/../../admin"),
            "dot segments resolved"
        );
        assert!(!ok("http://hooks.example.com/x"), "another scheme");
        assert!(!ok("ftp://hooks.example.com/x"));
        assert!(!ok(&format!(
            "https://hooks.example.com/{}",
            "a".repeat(2048)
        )));
        assert!(matches!(
            check_callback(&[], "https://hooks.example.com/x"),
            Err(CallbackRefusal::NotAllowed(_))
        ));
        // A prefix ending in '/' is a directory already.
        let p = prefixes(&["http://127.0.0.1:8080/"]);
        assert!(check_callback(&p, "http://127.0.0.1:8080/anything").is_ok());
        assert!(check_callback(&p, "http://127.0.0.1:8081/anything").is_err());
    }
}
