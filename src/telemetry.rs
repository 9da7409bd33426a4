//! Logging set-up and the daemon's counters, rendered in the Prometheus text format.

use crate::config::LogConfig;
use crate::kinds::Observation;
use crate::payment::{State, UnixMs};
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if cfg.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A key's budget and scheduling state, as last published by the scheduler.
#[derive(Debug, Clone, Default)]
pub struct PoolSnapshot {
    pub name: String,
    pub budget_limit: u32,
    pub budget_effective: u32,
    pub budget_used: u32,
    pub window_ms: i64,
    pub stretch: f64,
    pub pending: usize,
    pub paused_until: Option<UnixMs>,
    pub auth_failing: Vec<String>,
    /// Lateness of the checks started since the previous snapshot.
    pub lateness_ms: Vec<i64>,
}

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

    /// Prometheus text exposition. `states` are the payment counts per state.
    pub fn render(&self, states: &[(String, i64)], webhook_states: &[(String, i64)]) -> String {
        let mut o = String::new();
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(&mut o, "ninjapoll_payments", "gauge", "Payments by state.");
        for (s, n) in states {
            let _ = writeln!(o, "ninjapoll_payments{{state=\"{s}\"}} {n}");
        }
        family(
            &mut o,
            "ninjapoll_upstream_requests_total",
            "counter",
            "Requests sent to Ninjapay, by kind.",
        );
        for (k, n) in lock(&self.requests).iter() {
            let _ = writeln!(o, "ninjapoll_upstream_requests_total{{kind=\"{k}\"}} {n}");
        }
        family(
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
        family(
            &mut o,
            "ninjapoll_upstream_latency_ms_sum",
            "counter",
            "Sum of request round trips.",
        );
        let _ = writeln!(
            o,
            "ninjapoll_upstream_latency_ms_sum {}",
            self.latency_sum_ms.load(Ordering::Relaxed)
        );
        family(
            &mut o,
            "ninjapoll_upstream_latency_ms_count",
            "counter",
            "Requests timed.",
        );
        let _ = writeln!(
            o,
            "ninjapoll_upstream_latency_ms_count {}",
            self.latency_count.load(Ordering::Relaxed)
        );
        family(
            &mut o,
            "ninjapoll_commits_total",
            "counter",
            "Group commits of check outcomes.",
        );
        let _ = writeln!(
            o,
            "ninjapoll_commits_total {}",
            self.commits.load(Ordering::Relaxed)
        );
        family(
            &mut o,
            "ninjapoll_committed_checks_total",
            "counter",
            "Check outcomes committed.",
        );
        let _ = writeln!(
            o,
            "ninjapoll_committed_checks_total {}",
            self.committed_checks.load(Ordering::Relaxed)
        );
        family(
            &mut o,
            "ninjapoll_unexpected_429_total",
            "counter",
            "429 answers while the budget counted room.",
        );
        let _ = writeln!(
            o,
            "ninjapoll_unexpected_429_total {}",
            self.unexpected_429.load(Ordering::Relaxed)
        );
        let pools = self.pools();
        family(
            &mut o,
            "ninjapoll_budget_used",
            "gauge",
            "Requests counted in the current window, per key.",
        );
        for p in &pools {
            let _ = writeln!(
                o,
                "ninjapoll_budget_used{{pool=\"{}\"}} {}",
                p.name, p.budget_used
            );
        }
        family(
            &mut o,
            "ninjapoll_budget_limit",
            "gauge",
            "The limit in force per window, per key.",
        );
        for p in &pools {
            let _ = writeln!(
                o,
                "ninjapoll_budget_limit{{pool=\"{}\"}} {}",
                p.name, p.budget_effective
            );
        }
        family(
            &mut o,
            "ninjapoll_stretch_factor",
            "gauge",
            "Common stretch of every plan (1 = the documented ladder).",
        );
        for p in &pools {
            let _ = writeln!(
                o,
                "ninjapoll_stretch_factor{{pool=\"{}\"}} {}",
                p.name, p.stretch
            );
        }
        family(
            &mut o,
            "ninjapoll_pending",
            "gauge",
            "Payments being polled, per key.",
        );
        for p in &pools {
            let _ = writeln!(o, "ninjapoll_pending{{pool=\"{}\"}} {}", p.name, p.pending);
        }
        family(
            &mut o,
            "ninjapoll_check_lateness_ms",
            "histogram",
            "How late checks start against the (stretched) plan.",
        );
        for (name, h) in lock(&self.lateness).iter() {
            for (i, b) in LATE_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "ninjapoll_check_lateness_ms_bucket{{pool=\"{name}\",le=\"{b}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                o,
                "ninjapoll_check_lateness_ms_bucket{{pool=\"{name}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "ninjapoll_check_lateness_ms_sum{{pool=\"{name}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "ninjapoll_check_lateness_ms_count{{pool=\"{name}\"}} {}",
                h.count
            );
        }
        family(
            &mut o,
            "ninjapoll_webhook_events",
            "gauge",
            "Webhook events by state.",
        );
        for (s, n) in webhook_states {
            let _ = writeln!(o, "ninjapoll_webhook_events{{state=\"{s}\"}} {n}");
        }
        family(
            &mut o,
            "ninjapoll_webhook_attempts_total",
            "counter",
            "Webhook delivery attempts by outcome.",
        );
        for (out, n) in lock(&self.webhooks).iter() {
            let _ = writeln!(
                o,
                "ninjapoll_webhook_attempts_total{{outcome=\"{out}\"}} {n}"
            );
        }
        o
    }
}
