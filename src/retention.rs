//! Retention: finished payments older than `database.keep_finished` go, with their history,
//! webhook events and attempts; delivered events older than `webhooks.keep_delivered` go
//! sooner. Deleted in small batches, each its own short transaction, with a pause between
//! them so that check outcomes waiting for the one writer never wait long.

use crate::config::Config;
use crate::payment::{now_ms, WallMs};
use crate::store::{Pruned, Store};
use crate::telemetry::Telemetry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Rows of the driving table per transaction: a batch of finished payments with their
/// children takes a few milliseconds (see the README's figures).
pub const BATCH: u32 = 500;
/// Between two batches the writer is free for the recorder and the API.
const PAUSE: Duration = Duration::from_millis(10);

/// The retention periods in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished payments are kept this long after they finished (`None`: forever).
    pub keep_finished: Option<Duration>,
    /// Delivered events are kept this long after delivery (`None`: as long as their
    /// payment).
    pub keep_delivered: Option<Duration>,
}

/// Which rows a pass deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Finished payments and everything that hangs off them.
    Finished,
    /// Delivered webhook events and their attempts.
    Delivered,
}

impl Target {
    /// The label of the deletions in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Finished => "finished_payments",
            Target::Delivered => "delivered_events",
        }
    }
}

impl Retention {
    /// The periods of a configuration.
    pub fn of(config: &Config) -> Self {
        Self {
            keep_finished: config.keep_finished,
            // Longer than the payment's own period it would change nothing.
            keep_delivered: config
                .webhooks
                .keep_delivered
                .filter(|d| config.keep_finished.is_none_or(|f| *d < f)),
        }
    }

    /// How often to look for rows to delete: a tenth of the shortest period (so a row
    /// outlives its period by at most a tenth), between 100 ms and a minute. `None`: keep
    /// everything.
    pub fn every(&self) -> Option<Duration> {
        [self.keep_finished, self.keep_delivered]
            .into_iter()
            .flatten()
            .min()
            .map(|d| (d / 10).clamp(Duration::from_millis(100), Duration::from_secs(60)))
    }

    /// What to delete at `now`: each target with the time before which its rows go.
    pub fn cutoffs(&self, now: WallMs) -> Vec<(Target, WallMs)> {
        // Checked: a period longer than the clock's range keeps everything.
        let before = |d: Duration| {
            i64::try_from(d.as_millis())
                .ok()
                .and_then(|ms| now.as_ms().checked_sub(ms))
                .map_or(WallMs::MIN, WallMs)
        };
        let mut out = Vec::new();
        if let Some(d) = self.keep_delivered {
            out.push((Target::Delivered, before(d)));
        }
        if let Some(d) = self.keep_finished {
            out.push((Target::Finished, before(d)));
        }
        out
    }
}

/// Deletes what has outlived its period, now and then, until `cancel` fires.
pub async fn run(
    store: Store,
    retention: Retention,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) {
    let Some(every) = retention.every() else {
        return;
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for (target, before) in retention.cutoffs(now_ms()) {
            let mut total = Pruned::default();
            loop {
                let started = Instant::now();
                let done = match target {
                    Target::Finished => store.prune_finished(before, BATCH).await,
                    Target::Delivered => store.prune_delivered(before, BATCH).await,
                };
                let batch = match done {
                    Ok(p) => p,
                    Err(e) => {
                        telemetry.database_error("retention");
                        tracing::warn!(error = format!("{e:#}"), "retention batch failed");
                        break;
                    }
                };
                telemetry.pruned(&batch, started.elapsed());
                total.add(&batch);
                let driving = match target {
                    Target::Finished => batch.payments,
                    Target::Delivered => batch.events,
                };
                if driving < u64::from(BATCH) {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(PAUSE) => {}
                }
            }
            if total != Pruned::default() {
                tracing::debug!(
                    what = target.as_str(),
                    payments = total.payments,
                    events = total.events,
                    attempts = total.attempts,
                    history = total.history,
                    "retention deleted old rows"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(finished: Option<u64>, delivered: Option<u64>) -> Retention {
        Retention {
            keep_finished: finished.map(Duration::from_secs),
            keep_delivered: delivered.map(Duration::from_secs),
        }
    }

    #[test]
    fn nothing_to_keep_short_means_no_task() {
        assert_eq!(r(None, None).every(), None);
        assert!(r(None, None).cutoffs(WallMs(1_000_000)).is_empty());
    }

    #[test]
    fn looks_ten_times_per_shortest_period_within_bounds() {
        assert_eq!(
            r(Some(90 * 86_400), None).every(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            r(Some(90 * 86_400), Some(100)).every(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(r(Some(0), None).every(), Some(Duration::from_millis(100)));
    }

    /// A period beyond milliseconds' range deletes nothing (an `as i64` cast wrapped it
    /// negative, a cutoff in the future: everything went).
    #[test]
    fn an_enormous_period_deletes_nothing() {
        let now = 1_700_000_000_000;
        for (_, before) in r(Some(u64::MAX / 2), Some(u64::MAX / 2)).cutoffs(WallMs(now)) {
            assert!(before <= WallMs(0), "{before}");
        }
    }

    #[test]
    fn cutoffs_are_now_minus_each_period() {
        let now = 10_000_000;
        assert_eq!(
            r(Some(3_000), Some(60)).cutoffs(WallMs(now)),
            vec![
                (Target::Delivered, WallMs(now - 60_000)),
                (Target::Finished, WallMs(now - 3_000_000))
            ]
        );
    }
}
