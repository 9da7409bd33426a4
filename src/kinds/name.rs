//! A check kind's name, parsed once where it comes in.

use serde::{Deserialize, Serialize};

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
