//! Sane ranges: durations beyond them are refused naming the key, before any becomes an
//! integer; legal values that are likely a typo are warnings.

use super::raw::Raw;
use super::{invalid, ConfigError};
use std::time::Duration;

/// Longest retention period: a century, far inside what milliseconds since 1970 hold.
const MAX_PERIOD: Duration = Duration::from_secs(100 * 365 * 86_400);
/// Longest timeout, budget window or pause.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);
/// Longest interval of the schedule or of the webhook retries.
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 86_400);

/// Refuses durations beyond a sane range, naming the key, before any of them becomes an
/// integer; warns about values that are legal but likely a typo.
pub(super) fn sane(raw: &Raw, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let (n, w, s) = (&raw.ninjapay, &raw.webhooks, &raw.schedule);
    let mut checks: Vec<(String, Option<Duration>, Duration)> = vec![
        (
            "database.keep_finished".into(),
            raw.database.keep_finished,
            MAX_PERIOD,
        ),
        (
            "webhooks.keep_delivered".into(),
            w.keep_delivered,
            MAX_PERIOD,
        ),
        (
            "socket.header_timeout".into(),
            raw.socket.header_timeout,
            MAX_TIMEOUT,
        ),
        (
            "socket.request_timeout".into(),
            raw.socket.request_timeout,
            MAX_TIMEOUT,
        ),
        (
            "ninjapay.budget_window".into(),
            n.budget_window,
            MAX_TIMEOUT,
        ),
        (
            "ninjapay.connect_timeout".into(),
            n.connect_timeout,
            MAX_TIMEOUT,
        ),
        ("ninjapay.max_pause".into(), n.max_pause, MAX_TIMEOUT),
        (
            "ninjapay.request_timeout".into(),
            n.request_timeout,
            MAX_TIMEOUT,
        ),
        ("webhooks.timeout".into(), w.timeout, MAX_TIMEOUT),
        ("schedule.timeout".into(), s.timeout, MAX_INTERVAL),
    ];
    for (name, a) in &raw.accounts {
        checks.push((
            format!("accounts.{name}.budget_window"),
            a.budget_window,
            MAX_TIMEOUT,
        ));
    }
    for (i, d) in s.first_check.iter().flatten().enumerate() {
        checks.push((format!("schedule.first_check[{i}]"), Some(*d), MAX_INTERVAL));
    }
    for (i, st) in s.steps.iter().flatten().enumerate() {
        checks.push((
            format!("schedule.steps[{i}].every"),
            Some(st.every),
            MAX_INTERVAL,
        ));
        checks.push((format!("schedule.steps[{i}].for"), st.span, MAX_INTERVAL));
    }
    for (i, d) in w.retry.iter().flatten().enumerate() {
        checks.push((format!("webhooks.retry[{i}]"), Some(*d), MAX_INTERVAL));
    }
    for (key, d, max) in checks {
        if let Some(d) = d.filter(|d| *d > max) {
            return Err(invalid(
                key,
                format!(
                    "\"{}\" is longer than the most allowed here ({})",
                    humantime::format_duration(d),
                    humantime::format_duration(max)
                ),
            ));
        }
    }
    if let Some(d) = n.budget_window.filter(|d| *d < Duration::from_secs(60)) {
        warnings.push(format!(
            "ninjapay.budget_window: \"{}\" is unusually short (Ninjapay's window is 10m); \
             the budget counts requests over this window",
            humantime::format_duration(d)
        ));
    }
    Ok(())
}
