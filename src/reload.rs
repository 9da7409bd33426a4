//! Reloading the configuration (SIGHUP; `systemctl reload`): read it again from the sources
//! the daemon started with, validate it as `check-config` does, and either refuse it (the
//! running configuration stays) or apply it without a restart.
//!
//! Applying swaps the API's configuration, then stops the workers (scheduler, webhook
//! worker, maintenance, retention) and starts them on the new configuration from the
//! database, through the path a process start takes: nothing the database holds is lost
//! or checked again early, and no budget is counted twice. Meanwhile the API's commands
//! wait for the new scheduler. Settings only read at start keep their running values.

use crate::config::{Config, ConfigError, Raw, Source};
use crate::daemon::{Base, ReloadOn, Workers};
use crate::live::{SchedulerSlot, Shared};
use crate::wire::{ReloadHealth, ReloadResult, Timestamp};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Settings (dotted keys, or a whole table) read once at start: the socket and the
/// database the daemon holds open, the metrics listener it bound, the logger it set up.
/// A reload keeps their running values and warns about each that changed.
pub const RESTART_ONLY: &[&str] = &["database.path", "socket", "metrics.listen", "log"];

/// Whether `key` is one of [`RESTART_ONLY`] or inside one of its tables.
pub fn is_restart_only(key: &str) -> bool {
    RESTART_ONLY.iter().any(|p| {
        key == *p
            || key
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// The settings that differ between two configurations as written (file, environment and
/// defaults, secrets redacted), as dotted keys in order. A list is one setting.
pub fn changed_keys(old: &Raw, new: &Raw) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten(
        "",
        &serde_json::to_value(old).unwrap_or(Value::Null),
        &mut a,
    );
    flatten(
        "",
        &serde_json::to_value(new).unwrap_or(Value::Null),
        &mut b,
    );
    let mut keys: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    keys.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    keys.sort();
    keys
}

/// Every leaf of `v` under its dotted key; an absent value (`null`) is no entry, as a key
/// left out is.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Null => {}
        leaf => {
            out.insert(prefix.to_string(), leaf.clone());
        }
    }
}

/// Puts the running values of the [`RESTART_ONLY`] settings into `new` (the typed ones and
/// their written form); returns the keys that had changed.
pub fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<String> {
    let kept: Vec<String> = changed_keys(&old.effective, &new.effective)
        .into_iter()
        .filter(|k| is_restart_only(k))
        .collect();
    new.database_path = old.database_path.clone();
    new.effective.database.path = old.effective.database.path.clone();
    new.socket = old.socket.clone();
    new.effective.socket = old.effective.socket.clone();
    new.metrics_listen = old.metrics_listen;
    new.effective.metrics.listen = old.effective.metrics.listen.clone();
    new.log = old.log.clone();
    new.effective.log = old.effective.log.clone();
    kept
}

/// Owns the running workers; reloads on each SIGHUP until the daemon stops, then stops
/// them.
pub(crate) struct Reloader {
    base: Base,
    workers: Option<Workers>,
    config: Shared<Config>,
    scheduler: SchedulerSlot,
}

impl Reloader {
    /// The reloader of the workers started for the API `state` holds.
    pub fn new(base: Base, workers: Workers, state: &crate::api::AppState) -> Self {
        Self {
            base,
            workers: Some(workers),
            config: state.config.clone(),
            scheduler: state.scheduler.clone(),
        }
    }

    /// Reloads on each SIGHUP `reload` brings (none without it) until the daemon's token
    /// fires; then stops the workers, letting what is in flight finish.
    pub async fn run(mut self, reload: Option<ReloadOn>) {
        let cancel = self.base.cancel.clone();
        if let Some(mut on) = reload {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    got = on.hangup.recv() => match got {
                        Some(()) => self.reload(&on.source).await,
                        None => break,
                    },
                }
            }
        }
        cancel.cancelled().await;
        if let Some(workers) = self.workers.take() {
            workers.stop().await;
        }
    }

    /// One reload, told to systemd from `RELOADING=1` to `READY=1`, counted and kept for
    /// health.
    async fn reload(&mut self, source: &Source) {
        let notifier = self.base.notifier.clone();
        notifier.reloading();
        tracing::info!(
            file = %source.file().map(|f| f.display().to_string()).unwrap_or_default(),
            "SIGHUP: reloading the configuration"
        );
        let report = match source.load() {
            Ok(new) => self.apply(new).await,
            Err(e) => refused(&e),
        };
        self.base.telemetry.config_reload(report);
        notifier.ready();
    }

    /// Applies a valid configuration: restart-only settings kept, the API's view swapped,
    /// the workers restarted on it (on the old one again if they cannot start on it).
    async fn apply(&mut self, mut new: Config) -> ReloadHealth {
        let old = self.config.get();
        let restart_required = keep_restart_only(&old, &mut new);
        for key in &restart_required {
            tracing::warn!(
                key = %key,
                "{key} changed, but only takes effect at the next start; it keeps its running value"
            );
        }
        crate::daemon::log_config_warnings(&new);
        let changed = changed_keys(&old.effective, &new.effective);
        let new = Arc::new(new);
        self.scheduler.hold();
        self.stop_workers().await;
        self.config.set(new.clone());
        let error = match Workers::start(&new, &self.base).await {
            Ok(started) => {
                self.resume(started);
                tracing::info!(changed = ?changed, "configuration reloaded");
                None
            }
            Err(e) => {
                let e = format!("{e:#}");
                tracing::error!(error = %e, "cannot run on the new configuration; back to the running one");
                self.config.set(old.clone());
                self.restart_on(&old).await;
                Some(e)
            }
        };
        ReloadHealth {
            result: match error {
                None => ReloadResult::Applied,
                Some(_) => ReloadResult::Refused,
            },
            at: Timestamp(crate::payment::now_ms()),
            error,
            restart_required,
        }
    }

    /// Stops the running workers, feeding systemd's watchdog while they drain (the
    /// scheduler's loop, which feeds it otherwise, is stopping).
    async fn stop_workers(&mut self) {
        let Some(workers) = self.workers.take() else {
            return;
        };
        let stop = workers.stop();
        let Some(interval) = self.base.notifier.watchdog() else {
            return stop.await;
        };
        tokio::pin!(stop);
        let mut tick = tokio::time::interval((interval / 2).max(Duration::from_millis(1)));
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => self.base.notifier.ping(),
            }
        }
    }

    fn resume(&mut self, (workers, handle): (Workers, crate::scheduler::SchedulerHandle)) {
        self.workers = Some(workers);
        self.scheduler.resume(handle);
    }

    /// Starts the workers on the configuration that ran before; if even that fails (the
    /// database went away), the daemon stops: systemd restarts it.
    async fn restart_on(&mut self, config: &Config) {
        match Workers::start(config, &self.base).await {
            Ok(started) => self.resume(started),
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "cannot restart the workers; stopping"
                );
                self.base.cancel.cancel();
            }
        }
    }
}

/// A refused reload: logged with the line `check-config` prints for the same file.
fn refused(e: &ConfigError) -> ReloadHealth {
    let message = crate::config::refusal_message(e);
    tracing::error!(
        error = %message,
        "configuration reload refused; the running configuration stays: {message}"
    );
    ReloadHealth {
        result: ReloadResult::Refused,
        at: Timestamp(crate::payment::now_ms()),
        error: Some(message),
        restart_required: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::defaults;

    fn config(edit: impl FnOnce(&mut Raw)) -> Config {
        let mut raw = defaults();
        raw.database.path = Some("/tmp/np-reload-test.db".into());
        raw.socket.path = Some("/tmp/np-reload-test.sock".into());
        edit(&mut raw);
        Config::from_raw(raw).expect("valid configuration")
    }

    #[test]
    fn restart_only_keys_and_their_tables() {
        for key in [
            "database.path",
            "socket.path",
            "socket.mode",
            "socket.allowed_uids",
            "metrics.listen",
            "log.level",
            "log.format",
        ] {
            assert!(is_restart_only(key), "{key}");
        }
        for key in [
            "database.keep_finished",
            "webhooks.url",
            "ninjapay.budget_requests",
            "kinds.p2p.api_key",
            "socketx.path",
            "logs",
        ] {
            assert!(!is_restart_only(key), "{key}");
        }
    }

    #[test]
    fn the_diff_names_each_changed_setting() {
        let old = config(|_| {});
        let new = config(|r| {
            r.webhooks.url = Some("http://127.0.0.1:9/a".into());
            r.webhooks.secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
            r.ninjapay.budget_requests = Some(500);
            r.socket.max_connections = Some(7);
        });
        assert_eq!(
            changed_keys(&old.effective, &new.effective),
            vec![
                "ninjapay.budget_requests",
                "socket.max_connections",
                "webhooks.secret",
                "webhooks.url"
            ]
        );
        assert!(changed_keys(&old.effective, &old.effective).is_empty());
        // A key set on one side only is a change either way.
        assert_eq!(
            changed_keys(&new.effective, &old.effective),
            changed_keys(&old.effective, &new.effective)
        );
    }

    #[test]
    fn a_reload_keeps_the_restart_only_settings_and_names_them() {
        let old = config(|_| {});
        let mut new = config(|r| {
            r.database.path = Some("/tmp/elsewhere.db".into());
            r.socket.path = Some("/tmp/elsewhere.sock".into());
            r.socket.mode = Some("0666".into());
            r.metrics.listen = Some("127.0.0.1:9464".into());
            r.log.level = Some("debug".into());
            r.ninjapay.budget_requests = Some(500);
        });
        let kept = keep_restart_only(&old, &mut new);
        assert_eq!(
            kept,
            vec![
                "database.path",
                "log.level",
                "metrics.listen",
                "socket.mode",
                "socket.path"
            ]
        );
        // What remains different is what the reload applies.
        assert_eq!(
            changed_keys(&old.effective, &new.effective),
            vec!["ninjapay.budget_requests"]
        );
        assert_eq!(new.database_path, old.database_path);
        assert_eq!(format!("{:?}", new.socket), format!("{:?}", old.socket));
        assert_eq!(new.metrics_listen, old.metrics_listen);
        assert_eq!(format!("{:?}", new.log), format!("{:?}", old.log));
        assert_eq!(new.ninjapay.budget_requests, 500);
    }

    #[test]
    fn added_changed_and_removed_accounts_are_applied_not_kept() {
        // Accounts as a file writes them.
        let accounts = |toml: &str| toml::from_str::<Raw>(toml).expect("accounts").accounts;
        let account = |name: &str, budget: u32, url: &str| {
            format!(
                "[accounts.{name}]\napi_key = \"key-{url}\"\nbudget_requests = {budget}\n\
                 [accounts.{name}.webhooks]\nurl = \"http://127.0.0.1:9/{url}\"\n\
                 secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
            )
        };
        let before = account("shop2", 1000, "a") + &account("shop3", 1000, "c");
        let after = account("shop2", 500, "b") + &account("shop4", 1000, "d");
        let old = config(|r| r.accounts = accounts(&before));
        let mut new = config(|r| r.accounts = accounts(&after));
        assert!(keep_restart_only(&old, &mut new).is_empty());
        let changed = changed_keys(&old.effective, &new.effective);
        for key in [
            "accounts.shop2.budget_requests",
            "accounts.shop2.webhooks.url",
            "accounts.shop3.budget_requests",
            "accounts.shop4.budget_requests",
        ] {
            assert!(changed.iter().any(|k| k == key), "{key}: {changed:?}");
        }
        // Secrets are compared redacted: a key's name may show, never its value.
        assert!(changed.iter().all(|k| !k.contains("key-")), "{changed:?}");
    }

    #[test]
    fn every_restart_only_setting_is_kept() {
        // Whatever a restart-only table holds, a reload leaves none of it changed: the
        // typed copy and the list agree.
        let old = config(|_| {});
        let mut new = config(|r| {
            r.socket.allowed_uids = vec![1000];
            r.socket.allowed_gids = vec![1000];
            r.socket.max_connections = Some(3);
            r.socket.header_timeout = Some(Duration::from_secs(3));
            r.socket.request_timeout = Some(Duration::from_secs(4));
            r.log.format = Some("json".into());
        });
        let kept = keep_restart_only(&old, &mut new);
        assert_eq!(kept.len(), 6, "{kept:?}");
        assert!(changed_keys(&old.effective, &new.effective)
            .iter()
            .all(|k| !is_restart_only(k)));
    }
}
