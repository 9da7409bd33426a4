//! Secrets (API keys, webhook secrets): held redacted, read from the configuration or a
//! file, and decoded into signing keys. A domain module: config, upstream and webhooks all
//! use it, and it uses none of them.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A secret (API key, webhook secret): never printed, logged or serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: String) -> Self {
        Self(s.trim().into())
    }

    /// Reads a secret from a file (e.g. a systemd credential), trimming whitespace.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        std::fs::read_to_string(path)
            .map(Self::new)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A secret as text, whatever type the source gave it: an all-digit key from the
/// environment or a bare TOML number is still a key. A value of another type is refused
/// without being echoed (serde's own message would quote it).
pub(crate) fn secret_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum AnyText {
        Text(String),
        Unsigned(u64),
        Signed(i64),
    }
    match Option::<AnyText>::deserialize(d) {
        Ok(t) => Ok(t.map(|t| match t {
            AnyText::Text(s) => s,
            AnyText::Unsigned(n) => n.to_string(),
            AnyText::Signed(n) => n.to_string(),
        })),
        Err(_) => Err(serde::de::Error::custom(
            "a secret must be a string (the value is not shown)",
        )),
    }
}

/// A webhook secret that is not of the `whsec_<base64>` form.
#[derive(Debug, thiserror::Error)]
#[error("a webhook secret is \"whsec_\" followed by base64 (the key is not shown)")]
pub struct BadSecret;

/// The signing key: the base64-decoded part of `whsec_…`.
pub fn decode_secret(secret: &Secret) -> Result<Vec<u8>, BadSecret> {
    let s = secret.expose();
    let b64 = s.strip_prefix("whsec_").unwrap_or(s);
    B64.decode(b64)
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or(BadSecret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_secrets_are_refused() {
        assert!(decode_secret(&Secret::new("whsec_!!!".into())).is_err());
        assert!(decode_secret(&Secret::new("whsec_".into())).is_err());
    }
}
