//! Validation one section at a time: each takes its raw section (over the defaults) and
//! returns its typed settings, refusing a bad value with its key. A key left unset falls
//! back on the constant `defaults()` shows, never on a second copy of its value.

use super::raw::{
    secs, Raw, RawLog, RawNinjapay, RawWebhooks, BUDGET_REQUESTS, BUDGET_WINDOW, CONNECT_TIMEOUT,
    KEEP_FINISHED, LOG_FORMAT, LOG_LEVEL, MAX_IN_FLIGHT, MAX_PAUSE, RECONCILE_AFTER_SECS,
    REQUEST_TIMEOUT, SOCKET_HEADER_TIMEOUT, SOCKET_MAX_CONNECTIONS, SOCKET_MODE,
    SOCKET_REQUEST_TIMEOUT, WEBHOOK_MAX_IN_FLIGHT, WEBHOOK_RETRY_SECS, WEBHOOK_TIMEOUT,
};
use super::schedule::reconcile_schedule;
use super::secrets::{api_key, webhook_secrets, world_readable};
use super::validate::{keep, key_url, loopback, positive, url};
use super::{invalid, ConfigError, LogConfig, NinjapayConfig, SocketConfig, WebhooksConfig};
use crate::budget::BacklogShare;
use crate::callback::CallbackPrefix;
use crate::kinds::{Kind, KindName, RawKind};
use crate::ladder::Ladder;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The first directory of a systemd-style list in `var` (`STATE_DIRECTORY`, …), else `.`.
fn service_dir(var: &str) -> PathBuf {
    std::env::var_os(var)
        .and_then(|s| std::env::split_paths(&s).next())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `database.path`, by default in the service's state directory.
pub(super) fn database_path(raw: &Raw) -> PathBuf {
    raw.database
        .path
        .clone()
        .unwrap_or_else(|| service_dir("STATE_DIRECTORY").join("ninjapoll.db"))
}

/// `[socket]`; its path by default in the service's runtime directory.
pub(super) fn socket(raw: &Raw) -> Result<SocketConfig, ConfigError> {
    let s = &raw.socket;
    let m = s.mode.as_deref().unwrap_or(SOCKET_MODE);
    let mode = u32::from_str_radix(m.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            invalid(
                "socket.mode",
                format!("{m:?} is not an octal mode like \"0660\""),
            )
        })?;
    Ok(SocketConfig {
        path: s
            .path
            .clone()
            .unwrap_or_else(|| service_dir("RUNTIME_DIRECTORY").join("ninjapoll.sock")),
        mode,
        allowed_uids: s.allowed_uids.clone(),
        allowed_gids: s.allowed_gids.clone(),
        max_connections: match s.max_connections.unwrap_or(SOCKET_MAX_CONNECTIONS) {
            0 => return Err(invalid("socket.max_connections", "must be at least 1")),
            n => n,
        },
        header_timeout: positive(
            "socket.header_timeout",
            s.header_timeout,
            SOCKET_HEADER_TIMEOUT,
        )?,
        request_timeout: positive(
            "socket.request_timeout",
            s.request_timeout,
            SOCKET_REQUEST_TIMEOUT,
        )?,
    })
}

/// `[ninjapay]`: the key, the base URLs it is sent to, the budget and the client's limits.
pub(super) fn ninjapay(
    n: &RawNinjapay,
    warnings: &mut Vec<String>,
) -> Result<NinjapayConfig, ConfigError> {
    let api_key = api_key(n, warnings)?;
    let prod = key_url("ninjapay.prod_base_url", n.prod_base_url.as_deref())?;
    let api = key_url("ninjapay.api_base_url", n.api_base_url.as_deref())?;
    let budget_requests = n.budget_requests.unwrap_or(BUDGET_REQUESTS);
    if budget_requests == 0 {
        return Err(invalid("ninjapay.budget_requests", "must be at least 1"));
    }
    let backlog_share = match n.backlog_share {
        None => BacklogShare::DEFAULT,
        Some(share) => BacklogShare::new(share).ok_or_else(|| {
            invalid(
                "ninjapay.backlog_share",
                format!(
                    "must be between {} and {} (a share of the budget), not {share}",
                    BacklogShare::MIN,
                    BacklogShare::MAX
                ),
            )
        })?,
    };
    let max_in_flight = n.max_in_flight.unwrap_or(MAX_IN_FLIGHT);
    if max_in_flight == 0 {
        return Err(invalid("ninjapay.max_in_flight", "must be at least 1"));
    }
    Ok(NinjapayConfig {
        api_key,
        budget_requests,
        budget_window: positive("ninjapay.budget_window", n.budget_window, BUDGET_WINDOW)?,
        backlog_share,
        max_in_flight,
        max_pause: positive("ninjapay.max_pause", n.max_pause, MAX_PAUSE)?,
        connect_timeout: positive(
            "ninjapay.connect_timeout",
            n.connect_timeout,
            CONNECT_TIMEOUT,
        )?,
        request_timeout: positive(
            "ninjapay.request_timeout",
            n.request_timeout,
            REQUEST_TIMEOUT,
        )?,
        prod_base_url: prod,
        api_base_url: api,
    })
}

/// The learner's memory for this ladder and budget window, from the scheduler's own
/// function: a restart relearns flip ages from the payments of that memory, so retention
/// must not delete them sooner.
pub(super) fn learner_memory(ladder: &Ladder, budget_window: Duration) -> Duration {
    let window_ms = i64::try_from(budget_window.as_millis()).unwrap_or(i64::MAX);
    let memory = crate::scheduler::memory_horizon_ms(ladder.timeout_ms(), window_ms);
    Duration::from_millis(u64::try_from(memory).unwrap_or(u64::MAX))
}

/// `database.keep_finished`: `0` (forever) or at least the learner's memory.
pub(super) fn keep_finished(
    raw: &Raw,
    longest_window: Duration,
    ladder: &Ladder,
) -> Result<Option<Duration>, ConfigError> {
    keep(
        "database.keep_finished",
        raw.database.keep_finished.unwrap_or(KEEP_FINISHED),
        Some(learner_memory(ladder, longest_window)),
    )
}

/// `[kinds.*]` with their reconciliation schedules (`[reconcile]` unless a kind has its
/// own); retention must outlast every schedule.
pub(super) fn kinds(
    raw: &Raw,
    ninjapay: &NinjapayConfig,
    ladder: &Ladder,
    keep_finished: Option<Duration>,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<KindName, Arc<Kind>>, ConfigError> {
    let default_after: Vec<Duration> = match &raw.reconcile.after {
        Some(after) => after.clone(),
        None => RECONCILE_AFTER_SECS.iter().copied().map(secs).collect(),
    };
    let reconcile_after = reconcile_schedule("reconcile.after", &default_after, ladder)?;
    let mut kinds = BTreeMap::new();
    for (name, rk) in &raw.kinds {
        if let (None, Some(path)) = (&rk.api_key, &rk.api_key_file) {
            warnings.extend(world_readable(&format!("kinds.{name}.api_key_file"), path));
        }
        let kind = kind(name, rk, ninjapay, ladder, &reconcile_after)?;
        outlasts_watch(keep_finished, name, &kind)?;
        kinds.insert(kind.name.clone(), Arc::new(kind));
    }
    Ok(kinds)
}

/// One kind: its check, its reconciliation schedule, and its endpoint (which gets the key).
fn kind(
    name: &str,
    rk: &RawKind,
    ninjapay: &NinjapayConfig,
    ladder: &Ladder,
    reconcile_after: &[i64],
) -> Result<Kind, ConfigError> {
    let mut kind = Kind::from_raw(name, rk, &ninjapay.prod_base_url, &ninjapay.api_base_url)
        .map_err(|e| invalid(format!("kinds.{}.{}", e.kind, e.field), e.message))?;
    kind.reconcile_after = match &rk.reconcile_after {
        None => reconcile_after.to_vec(),
        Some(ages) => {
            let ages: Vec<Duration> = ages.iter().map(|a| a.into_inner()).collect();
            reconcile_schedule(&format!("kinds.{name}.reconcile_after"), &ages, ladder)?
        }
    };
    key_url(&format!("kinds.{name}.url"), Some(&kind.url))?;
    Ok(kind)
}

/// Refuses a `keep_finished` shorter than a kind's reconciliation schedule: a payment
/// would be deleted while still watched.
fn outlasts_watch(keep: Option<Duration>, name: &str, kind: &Kind) -> Result<(), ConfigError> {
    let (Some(keep), Some(&last)) = (keep, kind.reconcile_after.last()) else {
        return Ok(());
    };
    if u128::try_from(last).is_ok_and(|last| keep.as_millis() < last) {
        return Err(invalid(
            "database.keep_finished",
            format!(
                "\"{}\" is shorter than kind {name}'s reconciliation schedule ({}): a \
                 payment would be deleted while still watched",
                humantime::format_duration(keep),
                humantime::format_duration(Duration::from_millis(last.unsigned_abs()))
            ),
        ));
    }
    Ok(())
}

/// `[webhooks]`: where events go, the signing keys, retries, and the callback prefixes
/// (parsed here; the allow-list check is `crate::callback`'s).
pub(super) fn webhooks(
    w: &RawWebhooks,
    warnings: &mut Vec<String>,
) -> Result<WebhooksConfig, ConfigError> {
    let secrets = webhook_secrets(w, warnings)?;
    let url_ = match w.url.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => Some(url("webhooks.url", Some(u))?),
        None => None,
    };
    if url_.is_some() && secrets.is_empty() {
        return Err(invalid(
            "webhooks.secret",
            "webhooks.url is set, so a signing secret (whsec_…) is required",
        ));
    }
    if !w.allowed_callback_prefixes.is_empty() && secrets.is_empty() {
        return Err(invalid(
            "webhooks.secret",
            "webhooks.allowed_callback_prefixes is set, so a signing secret (whsec_…) is required",
        ));
    }
    let retry = match &w.retry {
        Some(retry) => retry.clone(),
        None => WEBHOOK_RETRY_SECS.iter().copied().map(secs).collect(),
    };
    Ok(WebhooksConfig {
        url: url_,
        secrets,
        retry,
        timeout: positive("webhooks.timeout", w.timeout, WEBHOOK_TIMEOUT)?,
        max_in_flight: w.max_in_flight.unwrap_or(WEBHOOK_MAX_IN_FLIGHT).max(1),
        allowed_callback_prefixes: w
            .allowed_callback_prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                CallbackPrefix::parse(p)
                    .map_err(|e| invalid(format!("webhooks.allowed_callback_prefixes[{i}]"), e))
            })
            .collect::<Result<_, _>>()?,
        keep_delivered: match w.keep_delivered {
            None => None,
            Some(d) => keep("webhooks.keep_delivered", d, None)?,
        },
    })
}

/// `metrics.listen`: off, or an address on the loopback interface.
pub(super) fn metrics_listen(raw: &Raw) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    match raw.metrics.listen.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => Ok(Some(loopback("metrics.listen", s)?)),
    }
}

/// `[log]`.
pub(super) fn log(l: &RawLog) -> Result<LogConfig, ConfigError> {
    let json = match l.format.as_deref().unwrap_or(LOG_FORMAT) {
        "text" => false,
        "json" => true,
        other => {
            return Err(invalid(
                "log.format",
                format!("{other:?} is not text or json"),
            ))
        }
    };
    Ok(LogConfig {
        json,
        level: l.level.clone().unwrap_or_else(|| LOG_LEVEL.into()),
    })
}
