//! The core's keys (pools) from the configuration: the account `default`'s key, each of its
//! kinds' own keys, every other account's; and the name a key's rows carry in the ledger.

use super::{CoreConfig, LatePolicy, PoolId, PoolSpec};
use crate::account::AccountName;
use crate::config::Config;
use crate::secret::Secret;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Names a key's rows in the budget ledger: a short hash of the key, so that moving a key
/// between pools (or renaming one) keeps counting what it spent, and the key itself is
/// never written down.
pub fn ledger_id(key: Option<&Secret>) -> String {
    match key {
        None => "no-key".into(),
        Some(k) => {
            let digest = Sha256::digest(k.expose().as_bytes());
            let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!("key:{hex}")
        }
    }
}

/// The core's configuration and each pool's key, from the daemon's configuration: the
/// account `default`'s key (and each kind's own key, if any) and every other account's.
pub fn core_config(config: &Config, seed: u64) -> (CoreConfig, Vec<Option<Secret>>) {
    let window_ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let default = &config.ninjapay;
    let spec =
        |account: &AccountName, name: String, key: Option<&Secret>, requests, window| PoolSpec {
            account: account.clone(),
            name,
            ledger_id: ledger_id(key),
            has_key: key.is_some(),
            budget_requests: requests,
            budget_window_ms: window,
        };
    let (requests, window) = (default.budget_requests, window_ms(default.budget_window));
    let mut keys: Vec<Option<Secret>> = vec![default.api_key.clone()];
    let ours = AccountName::default();
    let mut pools = vec![spec(
        &ours,
        "default".into(),
        default.api_key.as_ref(),
        requests,
        window,
    )];
    let mut kind_pool = HashMap::new();
    for (name, kind) in &config.kinds {
        let idx = match &kind.api_key {
            None => 0,
            Some(key) => match keys.iter().position(|k| k.as_ref() == Some(key)) {
                Some(i) => i,
                None => {
                    keys.push(Some(key.clone()));
                    pools.push(spec(
                        &ours,
                        format!("kind:{name}"),
                        Some(key),
                        requests,
                        window,
                    ));
                    pools.len() - 1
                }
            },
        };
        kind_pool.insert(name.clone(), PoolId::new(idx));
    }
    // Config refuses one key in two accounts, so each account is a key of its own.
    let mut account_pool = HashMap::new();
    for (name, account) in config.accounts.iter().filter(|(n, _)| !n.is_default()) {
        keys.push(account.api_key.clone());
        pools.push(spec(
            name,
            format!("account:{name}"),
            account.api_key.as_ref(),
            account.budget_requests,
            window_ms(account.budget_window),
        ));
        account_pool.insert(name.clone(), PoolId::new(pools.len() - 1));
    }
    let cfg = CoreConfig {
        ladder: config.ladder.clone(),
        kinds: config.kinds.clone(),
        pools,
        kind_pool,
        account_pool,
        backlog_share: config.ninjapay.backlog_share,
        budget_window_ms: window,
        max_in_flight: config.ninjapay.max_in_flight,
        seed,
        late_policy: LatePolicy::default(),
    };
    (cfg, keys)
}
