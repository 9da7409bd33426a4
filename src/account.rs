//! Accounts: one Ninjapay account per API key, each with its own budget and webhooks.
//! `[ninjapay]` and `[webhooks]` are the account named `default`; `[accounts.NAME]` adds
//! others. A payment belongs to one account and is only ever checked with its key.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An account's name (`default`, a `[accounts.NAME]` of the configuration): 1–32
/// characters of `a-z`, `0-9`, `_` or `-` (the environment's variable names are read
/// lower-cased, so a name is too). Parsed once where it comes in (a configuration key, the
/// API's input); rows decode into it as stored (only parsed names are ever written).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(try_from = "String", into = "String")]
#[sqlx(transparent)]
pub struct AccountName(String);

/// Why an account name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an account's name is 1-32 characters of a-z, 0-9, '_' or '-'")]
pub struct BadAccountName;

crate::name::short_name!(AccountName, BadAccountName);

impl AccountName {
    /// The account `[ninjapay]` configures, and the one a request names by saying nothing.
    pub const DEFAULT: &'static str = "default";

    /// The account named `default`.
    pub fn default_account() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// Whether this is the account `[ninjapay]` configures.
    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl Default for AccountName {
    fn default() -> Self {
        Self::default_account()
    }
}

/// One account, validated: its key, its budget, and where its events go.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: AccountName,
    /// `None` only for `default` without `ninjapay.api_key`: its payments wait unpolled.
    pub api_key: Option<Secret>,
    pub budget_requests: u32,
    pub budget_window: Duration,
    pub webhooks: AccountWebhooks,
}

/// Where an account's events go and what signs them (the rest of the delivery settings are
/// `[webhooks]`'s, shared).
#[derive(Debug, Clone, Default)]
pub struct AccountWebhooks {
    pub url: Option<String>,
    pub secrets: Vec<Secret>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_words_and_default_is_one() {
        assert!(AccountName::parse("shop2").is_ok());
        assert!(AccountName::parse("shop_2-eu").is_ok());
        assert!(AccountName::parse("").is_err());
        assert!(AccountName::parse("Shop2").is_err());
        assert!(AccountName::parse("a b").is_err());
        assert!(AccountName::parse(&"a".repeat(33)).is_err());
        assert!(AccountName::default().is_default());
        let j: Result<AccountName, _> = serde_json::from_str("\"../x\"");
        assert!(j.is_err());
    }
}
