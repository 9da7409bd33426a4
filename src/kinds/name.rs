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

crate::name::short_name!(KindName, BadKindName);

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
