//! The `[schedule]` ladder and the reconciliation schedules of `[reconcile]` and each kind.

use super::raw::RawSchedule;
use super::{invalid, ConfigError};
use crate::ladder::Ladder;
use std::time::Duration;

/// `[schedule]`: the ladder, the documented one for any key left unset.
pub(super) fn ladder(s: &RawSchedule) -> Result<Ladder, ConfigError> {
    let documented = Ladder::documented();
    let first = s.first_check.clone().unwrap_or_else(|| {
        let (lo, hi) = documented.first_window();
        [lo, hi]
            .map(|ms| Duration::from_millis(ms.unsigned_abs()))
            .to_vec()
    });
    let (lo, hi) = match first.as_slice() {
        [one] => (*one, *one),
        [lo, hi] => (*lo, *hi),
        _ => {
            return Err(invalid(
                "schedule.first_check",
                "give a window of two durations, e.g. [\"20s\", \"25s\"]",
            ))
        }
    };
    let steps: Vec<(Duration, Option<Duration>)> = match &s.steps {
        Some(steps) => steps.iter().map(|st| (st.every, st.span)).collect(),
        None => crate::ladder::DOCUMENTED_STEPS_SECS
            .iter()
            .map(|&(every, span)| (Duration::from_secs(every), span.map(Duration::from_secs)))
            .collect(),
    };
    let timeout = s.timeout.unwrap_or(Duration::from_millis(
        documented.timeout_ms().unsigned_abs(),
    ));
    Ok(Ladder::new((lo, hi), &steps, timeout)?)
}

/// Longest reconciliation schedule accepted: a year of watching.
const MAX_RECONCILE: Duration = Duration::from_secs(366 * 86_400);
/// Most ages in one schedule.
const MAX_RECONCILE_AGES: usize = 64;

/// A reconciliation schedule as ages in milliseconds since the start: strictly rising,
/// each past the ladder's timeout (before it the ladder checks), at most a year.
pub(super) fn reconcile_schedule(
    key: &str,
    ages: &[Duration],
    ladder: &Ladder,
) -> Result<Vec<i64>, ConfigError> {
    if ages.len() > MAX_RECONCILE_AGES {
        return Err(invalid(
            key,
            format!("{} ages; at most {MAX_RECONCILE_AGES}", ages.len()),
        ));
    }
    let mut out: Vec<i64> = Vec::with_capacity(ages.len());
    for (i, age) in ages.iter().enumerate() {
        let shown = humantime::format_duration(*age);
        if *age > MAX_RECONCILE {
            return Err(invalid(
                format!("{key}[{i}]"),
                format!("\"{shown}\" is longer than a year"),
            ));
        }
        // At most a year: fits an i64 of milliseconds.
        let ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        if ms <= ladder.timeout_ms() {
            return Err(invalid(
                format!("{key}[{i}]"),
                format!(
                    "\"{shown}\" is not after the ladder's timeout ({}): the ladder checks until then",
                    humantime::format_duration(Duration::from_millis(ladder.timeout_ms().max(0) as u64))
                ),
            ));
        }
        if out.last().is_some_and(|prev| *prev >= ms) {
            return Err(invalid(
                format!("{key}[{i}]"),
                format!("\"{shown}\" is not after the age before it: ages rise"),
            ));
        }
        out.push(ms);
    }
    Ok(out)
}
