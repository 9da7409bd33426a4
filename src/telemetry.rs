//! Logging set-up and the daemon's counters, rendered in the Prometheus text format.

use crate::config::LogConfig;
use crate::kinds::Observation;
use crate::payment::State;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Installs the global tracing subscriber (stderr; journald captures it under systemd).
pub fn init_logging(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // A log line that cannot be written (stderr on a full disk) is dropped: reporting
        // it would `eprintln!` to the same stderr, which panics the task that logged.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if cfg.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A key's budget and scheduling state, as last published by the scheduler (paused time
/// on the wall clock).
pub type PoolSnapshot = crate::scheduler::PoolStatus;

/// One figure of a key's snapshot, as a metric value.
type PoolField = dyn Fn(&PoolSnapshot) -> String;

/// Lateness buckets, in milliseconds.
const LATE_BUCKETS: [i64; 9] = [10, 100, 500, 1_000, 5_000, 15_000, 60_000, 300_000, 600_000];

#[derive(Default)]
struct Lateness {
    buckets: [u64; LATE_BUCKETS.len()],
    count: u64,
    sum: i64,
}

/// Counters shared by the scheduler, the recorder, webhooks and the API.
#[derive(Default)]
pub struct Telemetry {
    requests: Mutex<BTreeMap<String, u64>>,
    checks: Mutex<BTreeMap<(String, &'static str), u64>>,
    commits: AtomicU64,
    committed_checks: AtomicU64,
    latency_sum_ms: AtomicU64,
    latency_count: AtomicU64,
    unexpected_429: AtomicU64,
    pools: Mutex<BTreeMap<String, PoolSnapshot>>,
    lateness: Mutex<BTreeMap<String, Lateness>>,
    webhooks: Mutex<BTreeMap<&'static str, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take the metrics down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Telemetry {
    /// A request sent for `kind`.
    pub fn request(&self, kind: &str) {
        *lock(&self.requests).entry(kind.to_string()).or_default() += 1;
    }

    /// A check's outcome for one payment.
    pub fn check(&self, kind: &str, obs: &Observation, state: State) {
        let outcome = match obs {
            Observation::Error { .. } => "error",
            Observation::Status { state: None, .. } => "unknown_status",
            _ => state.as_str(),
        };
        *lock(&self.checks)
            .entry((kind.to_string(), outcome))
            .or_default() += 1;
    }

    /// A request's round trip.
    pub fn latency(&self, ms: i64) {
        self.latency_sum_ms
            .fetch_add(ms.max(0) as u64, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// A group commit of `n` check outcomes.
    pub fn commit(&self, n: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.committed_checks.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A 429 the budget did not expect.
    pub fn unexpected_429(&self) {
        self.unexpected_429.fetch_add(1, Ordering::Relaxed);
    }

    /// A webhook delivery attempt's result (`delivered`, `failed`, `dead`).
    pub fn webhook(&self, outcome: &'static str) {
        *lock(&self.webhooks).entry(outcome).or_default() += 1;
    }

    /// The scheduler's periodic snapshot of a key.
    pub fn pool(&self, mut snap: PoolSnapshot) {
        let late = std::mem::take(&mut snap.lateness_ms);
        {
            let mut all = lock(&self.lateness);
            let h = all.entry(snap.name.clone()).or_default();
            for l in late {
                h.count += 1;
                h.sum += l;
                for (i, b) in LATE_BUCKETS.iter().enumerate() {
                    if l <= *b {
                        h.buckets[i] += 1;
                    }
                }
            }
        }
        lock(&self.pools).insert(snap.name.clone(), snap);
    }

    /// The latest snapshots of every key.
    pub fn pools(&self) -> Vec<PoolSnapshot> {
        lock(&self.pools).values().cloned().collect()
    }

    /// Prometheus text exposition. `states` are the payment counts per state, `db` the
    /// store's record of failed writes.
    pub fn render(
        &self,
        states: &[(String, i64)],
        webhook_states: &[(String, i64)],
        db: &crate::store::WriteStatus,
    ) -> String {
        let mut o = String::new();
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        // A family with one series per label value.
        let labelled = |o: &mut String,
                        (name, kind, help): (&str, &str, &str),
                        label: &str,
                        series: Vec<(String, String)>| {
            head(o, name, kind, help);
            for (value, n) in series {
                let _ = writeln!(o, "{name}{{{label}=\"{value}\"}} {n}");
            }
        };
        let counts = |v: &[(String, i64)]| -> Vec<(String, String)> {
            v.iter().map(|(k, n)| (k.clone(), n.to_string())).collect()
        };
        labelled(
            &mut o,
            ("ninjapoll_payments", "gauge", "Payments by state."),
            "state",
            counts(states),
        );
        let requests = lock(&self.requests)
            .iter()
            .map(|(k, n)| (k.clone(), n.to_string()))
            .collect();
        labelled(
            &mut o,
            (
                "ninjapoll_upstream_requests_total",
                "counter",
                "Requests sent to Ninjapay, by kind.",
            ),
            "kind",
            requests,
        );
        head(
            &mut o,
            "ninjapoll_checks_total",
            "counter",
            "Payment checks, by kind and outcome.",
        );
        for ((k, out), n) in lock(&self.checks).iter() {
            let _ = writeln!(
                o,
                "ninjapoll_checks_total{{kind=\"{k}\",outcome=\"{out}\"}} {n}"
            );
        }
        let scalars = [
            (
                "ninjapoll_upstream_latency_ms_sum",
                "Sum of request round trips.",
                &self.latency_sum_ms,
            ),
            (
                "ninjapoll_upstream_latency_ms_count",
                "Requests timed.",
                &self.latency_count,
            ),
            (
                "ninjapoll_commits_total",
                "Group commits of check outcomes.",
                &self.commits,
            ),
            (
                "ninjapoll_committed_checks_total",
                "Check outcomes committed.",
                &self.committed_checks,
            ),
            (
                "ninjapoll_unexpected_429_total",
                "429 answers while the budget counted room.",
                &self.unexpected_429,
            ),
        ];
        for (name, help, v) in scalars {
            head(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {}", v.load(Ordering::Relaxed));
        }
        head(
            &mut o,
            "ninjapoll_database_write_errors_total",
            "counter",
            "Database write operations that failed (e.g. disk full); each is retried.",
        );
        let _ = writeln!(
            o,
            "ninjapoll_database_write_errors_total {}",
            db.failures_total
        );
        head(
            &mut o,
            "ninjapoll_database_writes_failing",
            "gauge",
            "1 while the latest database write failed, else 0.",
        );
        let _ = writeln!(
            o,
            "ninjapoll_database_writes_failing {}",
            u8::from(db.failing_since.is_some())
        );
        let pools = self.pools();
        let per_pool = |f: &dyn Fn(&PoolSnapshot) -> String| -> Vec<(String, String)> {
            pools.iter().map(|p| (p.name.clone(), f(p))).collect()
        };
        let gauges: [(&str, &str, &PoolField); 4] = [
            (
                "ninjapoll_budget_used",
                "Requests counted in the current window, per key.",
                &|p| p.budget_used.to_string(),
            ),
            (
                "ninjapoll_budget_limit",
                "The limit in force per window, per key.",
                &|p| p.budget_effective.to_string(),
            ),
            (
                "ninjapoll_price_level",
                "The scheduler's price level per key (0 = the documented ladder; higher = fewer checks).",
                &|p| p.price_level.to_string(),
            ),
            (
                "ninjapoll_pending",
                "Payments being polled, per key.",
                &|p| p.pending.to_string(),
            ),
        ];
        for (name, help, f) in gauges {
            labelled(&mut o, (name, "gauge", help), "pool", per_pool(f));
        }
        // The policy, per kind: what it learnt of flip ages and the delay it expects.
        head(
            &mut o,
            "ninjapoll_flip_age_seconds",
            "gauge",
            "Learnt age by which a share (quantile) of the flipping payments of a kind flipped.",
        );
        for p in &pools {
            for k in &p.kinds {
                for (q, ms) in ["0.5", "0.9", "0.99"].iter().zip(k.flip_age_ms) {
                    let _ = writeln!(
                        o,
                        "ninjapoll_flip_age_seconds{{pool=\"{}\",kind=\"{}\",quantile=\"{q}\"}} {}",
                        p.name,
                        k.kind,
                        ms as f64 / 1000.0
                    );
                }
            }
        }
        for (name, help, f) in [
            (
                "ninjapoll_flip_share",
                "Learnt share of payments of a kind that flip before the deadline.",
                (&|k: &crate::scheduler::KindPolicy| k.flip_share)
                    as &dyn Fn(&crate::scheduler::KindPolicy) -> f64,
            ),
            (
                "ninjapoll_expected_delay_seconds",
                "Mean flip-to-detection delay the policy expects for a kind at the current load.",
                &|k| k.expected_delay_ms as f64 / 1000.0,
            ),
        ] {
            head(&mut o, name, "gauge", help);
            for p in &pools {
                for k in &p.kinds {
                    let _ = writeln!(
                        o,
                        "{name}{{pool=\"{}\",kind=\"{}\"}} {}",
                        p.name,
                        k.kind,
                        f(k)
                    );
                }
            }
        }
        head(
            &mut o,
            "ninjapoll_check_lateness_ms",
            "histogram",
            "How late checks start against the plan.",
        );
        for (name, h) in lock(&self.lateness).iter() {
            let metric = "ninjapoll_check_lateness_ms";
            for (i, b) in LATE_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "{metric}_bucket{{pool=\"{name}\",le=\"{b}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                o,
                "{metric}_bucket{{pool=\"{name}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(o, "{metric}_sum{{pool=\"{name}\"}} {}", h.sum);
            let _ = writeln!(o, "{metric}_count{{pool=\"{name}\"}} {}", h.count);
        }
        labelled(
            &mut o,
            (
                "ninjapoll_webhook_events",
                "gauge",
                "Webhook events by state.",
            ),
            "state",
            counts(webhook_states),
        );
        let attempts = lock(&self.webhooks)
            .iter()
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .collect();
        labelled(
            &mut o,
            (
                "ninjapoll_webhook_attempts_total",
                "counter",
                "Webhook delivery attempts by outcome.",
            ),
            "outcome",
            attempts,
        );
        o
    }
}
