//! `[accounts.NAME]`: each account's key, budget and webhooks; `default` is `[ninjapay]`
//! and `[webhooks]`. One key belongs to one account: two accounts on one key would count
//! one budget twice.

use super::raw::{Raw, RawAccount};
use super::secrets::{key_of, signing_keys};
use super::validate::{positive, url};
use super::{invalid, ConfigError, NinjapayConfig, WebhooksConfig};
use crate::account::{Account, AccountName, AccountWebhooks};
use crate::kinds::{Kind, KindName};
use crate::secret::Secret;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every account, `default` included, by name.
pub(super) fn accounts(
    raw: &Raw,
    ninjapay: &NinjapayConfig,
    webhooks: &WebhooksConfig,
    kinds: &BTreeMap<KindName, Arc<Kind>>,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<AccountName, Arc<Account>>, ConfigError> {
    let default = Account {
        name: AccountName::default_account(),
        api_key: ninjapay.api_key.clone(),
        budget_requests: ninjapay.budget_requests,
        budget_window: ninjapay.budget_window,
        webhooks: AccountWebhooks {
            url: webhooks.url.clone(),
            secrets: webhooks.secrets.clone(),
        },
    };
    // Whose each key already is, to refuse one key in two accounts.
    let mut owners: Vec<(Secret, String)> = Vec::new();
    if let Some(k) = &default.api_key {
        owners.push((k.clone(), "ninjapay.api_key (the account default)".into()));
    }
    for (name, kind) in kinds {
        if let Some(k) = &kind.api_key {
            owners.push((
                k.clone(),
                format!("kinds.{name}.api_key (the account default)"),
            ));
        }
    }
    let mut out = BTreeMap::new();
    out.insert(default.name.clone(), Arc::new(default));
    for (name, ra) in &raw.accounts {
        let account = account(name, ra, ninjapay, webhooks, warnings)?;
        if let Some(key) = &account.api_key {
            if let Some((_, owner)) = owners.iter().find(|(k, _)| k == key) {
                return Err(invalid(
                    format!("accounts.{name}.api_key"),
                    format!(
                        "the same key as {owner}: a key has one budget, which two accounts \
                         would count twice; give each account its own key"
                    ),
                ));
            }
            owners.push((key.clone(), format!("accounts.{name}.api_key")));
        }
        out.insert(account.name.clone(), Arc::new(account));
    }
    Ok(out)
}

/// One `[accounts.NAME]`, over `[ninjapay]`'s budget and `[webhooks]`' receiver.
fn account(
    name: &str,
    ra: &RawAccount,
    ninjapay: &NinjapayConfig,
    webhooks: &WebhooksConfig,
    warnings: &mut Vec<String>,
) -> Result<Account, ConfigError> {
    let section = format!("accounts.{name}");
    let parsed = AccountName::parse(name).map_err(|e| invalid(&section, e.to_string()))?;
    if parsed.is_default() {
        return Err(invalid(
            &section,
            "the account named default is [ninjapay] and [webhooks]; name this one otherwise",
        ));
    }
    let api_key = key_of(
        &section,
        ra.api_key.as_ref(),
        ra.api_key_file.as_deref(),
        warnings,
    )?
    .ok_or_else(|| {
        invalid(
            format!("{section}.api_key"),
            "an account needs its own key (api_key, or api_key_file)",
        )
    })?;
    let budget_requests = ra.budget_requests.unwrap_or(ninjapay.budget_requests);
    if budget_requests == 0 {
        return Err(invalid(
            format!("{section}.budget_requests"),
            "must be at least 1",
        ));
    }
    let budget_window = positive(
        &format!("{section}.budget_window"),
        ra.budget_window,
        ninjapay.budget_window,
    )?;
    let w = &ra.webhooks;
    let hooks = format!("{section}.webhooks");
    let url_ = match w.url.as_deref() {
        None => webhooks.url.clone(),
        Some("") => None,
        Some(u) => Some(url(&format!("{hooks}.url"), Some(u))?),
    };
    let secrets = if w.secret.is_some() || w.secret_file.is_some() {
        signing_keys(
            &hooks,
            w.secret.as_ref(),
            w.secret_file.as_deref(),
            warnings,
        )?
    } else {
        webhooks.secrets.clone()
    };
    if url_.is_some() && secrets.is_empty() {
        return Err(invalid(
            format!("{hooks}.secret"),
            "a webhook URL is set for this account, so a signing secret (whsec_…) is required",
        ));
    }
    Ok(Account {
        name: parsed,
        api_key: Some(api_key),
        budget_requests,
        budget_window,
        webhooks: AccountWebhooks { url: url_, secrets },
    })
}
