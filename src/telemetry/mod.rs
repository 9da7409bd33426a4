//! Logging set-up and the daemon's metrics (prometheus-client, Prometheus text format
//! 0.0.4). Counters and histograms are updated where things happen; gauges of state (the
//! database's counts, the scheduler's published status) are set when a scrape renders.

mod accounts;

use crate::kinds::{KindName, Observation};
use crate::payment::{State, WallMs, WebhookOutcome, WebhookState};
use crate::status::PoolStatus;
use crate::store::Pruned;
use accounts::AccountMetrics;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::ops::Deref;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

/// The `Content-Type` of [`Telemetry::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upstream round trips, in seconds: from a fast loopback to the request timeout.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
];
/// How late checks start against their plan, in seconds: from the milliseconds a check on
/// time takes to start, up to a whole ladder.
const LATENESS_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 600.0,
];
/// How long a retention batch holds the writer, in seconds.
const BATCH_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// The operations [`Telemetry::database_error`] counts.
pub const DATABASE_OPERATIONS: [&str; 6] = [
    "record_checks",
    "ledger",
    "webhooks",
    "retention",
    "maintenance",
    "api",
];

type FloatGauge = Gauge<f64, AtomicU64>;
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: KindName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    kind: KindName,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolKindLabels {
    pool: String,
    kind: KindName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LateCheckLabels {
    pool: String,
    kind: KindName,
    outcome: &'static str,
}

/// Brings a counter up to a total the scheduler keeps (it only ever grows while the
/// process runs, as the counter does).
fn catch_up(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuantileLabels {
    pool: String,
    kind: KindName,
    quantile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: &'static str,
}

fn histograms<L: Clone + std::hash::Hash + Eq>(buckets: fn() -> Histogram) -> Histograms<L> {
    Family::new_with_constructor(buckets)
}

/// The daemon's metrics, shared by the scheduler, the recorder, webhooks, retention and
/// the API.
pub struct Telemetry {
    /// Held while a scrape sets the gauges of state and encodes, so that two scrapes at
    /// once each see one consistent set.
    registry: Mutex<Registry>,
    requests: Family<KindLabel, Counter>,
    checks: Family<CheckLabels, Counter>,
    latency: Histograms<KindLabel>,
    lateness: Histograms<PoolLabel>,
    budget_wait: Histograms<PoolLabel>,
    commits: Counter,
    committed_checks: Counter,
    unexpected_429: Counter,
    webhook_attempts: Family<OutcomeLabel, Counter>,
    database_errors: Family<OperationLabel, Counter>,
    retention_deleted: Family<TableLabel, Counter>,
    retention_batch: Histogram,
    payments: Family<StateLabel, Gauge>,
    webhook_events: Family<StateLabel, Gauge>,
    webhook_queue: Gauge,
    /// The store's own count of failed writes (any operation), and whether the latest failed.
    write_errors: Counter,
    writes_failing: Gauge,
    pending: Family<PoolKindLabels, Gauge>,
    budget_used: Family<PoolLabel, Gauge>,
    budget_limit: Family<PoolLabel, Gauge>,
    budget_configured: Family<PoolLabel, Gauge>,
    price_level: Family<PoolLabel, FloatGauge>,
    backlog: Family<PoolLabel, Gauge>,
    paused: Family<PoolLabel, FloatGauge>,
    behind: Family<PoolLabel, FloatGauge>,
    budget_window: Family<PoolLabel, FloatGauge>,
    keeps_up: Family<PoolLabel, Gauge>,
    key_refused: Family<PoolKindLabels, Gauge>,
    scheduler_report_age: FloatGauge,
    start_time: FloatGauge,
    flip_age: Family<QuantileLabels, FloatGauge>,
    flip_share: Family<PoolKindLabels, FloatGauge>,
    expected_delay: Family<PoolKindLabels, FloatGauge>,
    watched: Family<PoolKindLabels, Gauge>,
    late_moves: Family<PoolKindLabels, Counter>,
    late_checks: Family<LateCheckLabels, Counter>,
    accounts: AccountMetrics,
    config_reloads: Family<ResultLabel, Counter>,
    /// The last reload, for `/v1/health`.
    last_reload: Mutex<Option<crate::wire::ReloadHealth>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl Default for Telemetry {
    fn default() -> Self {
        let t = Telemetry {
            registry: Mutex::new(Registry::with_prefix("ninjapoll")),
            accounts: AccountMetrics::default(),
            requests: Family::default(),
            checks: Family::default(),
            latency: histograms(|| Histogram::new(LATENCY_BUCKETS)),
            lateness: histograms(|| Histogram::new(LATENESS_BUCKETS)),
            budget_wait: histograms(|| Histogram::new(LATENESS_BUCKETS)),
            commits: Counter::default(),
            committed_checks: Counter::default(),
            unexpected_429: Counter::default(),
            webhook_attempts: Family::default(),
            database_errors: Family::default(),
            retention_deleted: Family::default(),
            retention_batch: Histogram::new(BATCH_BUCKETS),
            payments: Family::default(),
            webhook_events: Family::default(),
            webhook_queue: Gauge::default(),
            write_errors: Counter::default(),
            writes_failing: Gauge::default(),
            pending: Family::default(),
            budget_used: Family::default(),
            budget_limit: Family::default(),
            budget_configured: Family::default(),
            price_level: Family::default(),
            backlog: Family::default(),
            behind: Family::default(),
            budget_window: Family::default(),
            keeps_up: Family::default(),
            key_refused: Family::default(),
            scheduler_report_age: FloatGauge::default(),
            start_time: FloatGauge::default(),
            paused: Family::default(),
            flip_age: Family::default(),
            flip_share: Family::default(),
            expected_delay: Family::default(),
            watched: Family::default(),
            late_moves: Family::default(),
            late_checks: Family::default(),
            config_reloads: Family::default(),
            last_reload: Mutex::new(None),
        };
        // Series that should read 0 rather than be absent before their first event.
        for operation in DATABASE_OPERATIONS {
            let _ = t
                .database_errors
                .get_or_create(&OperationLabel { operation });
        }
        for result in [
            crate::wire::ReloadResult::Applied,
            crate::wire::ReloadResult::Refused,
        ] {
            let _ = t.config_reloads.get_or_create(&ResultLabel {
                result: result.as_str(),
            });
        }
        for outcome in WebhookOutcome::ALL {
            let _ = t.webhook_attempts.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            });
        }
        // A restart shows as a change of this value (the watchdog's kill included).
        t.start_time
            .set(crate::payment::now_ms().as_ms() as f64 / 1000.0);
        {
            let mut r = lock(&t.registry);
            t.register_checks(&mut r);
            t.register_keys(&mut r);
            t.register_learning(&mut r);
            t.register_storage(&mut r);
            t.accounts.register(&mut r);
        }
        t
    }
}

// Registration in families, in the order the exposition lists them.
impl Telemetry {
    /// Payments, checks and the requests behind them.
    fn register_checks(&self, r: &mut Registry) {
        r.register(
            "payments",
            "Payments in the database, by state",
            self.payments.clone(),
        );
        r.register(
            "pending",
            "Pending payments the scheduler holds, by key (pool) and kind",
            self.pending.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to Ninjapay, by kind",
            self.requests.clone(),
        );
        r.register(
            "checks",
            "Payment checks, by kind and outcome (the state seen, error or unknown_status)",
            self.checks.clone(),
        );
        r.register_with_unit(
            "upstream_latency",
            "Round trip of requests to Ninjapay, by kind",
            Unit::Seconds,
            self.latency.clone(),
        );
        r.register_with_unit(
            "check_lateness",
            "How late checks start against their plan, once the key's budget has room for them, by key",
            Unit::Seconds,
            self.lateness.clone(),
        );
        r.register_with_unit(
            "check_budget_wait",
            "How long checks waited past their plan for the key's budget to have room, by key",
            Unit::Seconds,
            self.budget_wait.clone(),
        );
        r.register(
            "commits",
            "Group commits of check outcomes",
            self.commits.clone(),
        );
        r.register(
            "committed_checks",
            "Check outcomes committed",
            self.committed_checks.clone(),
        );
        r.register(
            "unexpected_429",
            "429 answers while the budget counted room",
            self.unexpected_429.clone(),
        );
    }

    /// Each key: its budget, price, backlog and pauses; the scheduler and process.
    fn register_keys(&self, r: &mut Registry) {
        r.register(
            "budget_used",
            "Requests counted in the current window, per key",
            self.budget_used.clone(),
        );
        r.register(
            "budget_limit",
            "The request limit in force per window, per key (lowered after an unexpected 429)",
            self.budget_limit.clone(),
        );
        r.register(
            "budget_configured",
            "The configured request limit per window, per key",
            self.budget_configured.clone(),
        );
        r.register(
            "price_level",
            "The scheduler's price level per key (0 = the documented ladder; higher = fewer checks)",
            self.price_level.clone(),
        );
        r.register(
            "backlog_payments",
            "Payments in the key's backlog (a burst past the budget), per key",
            self.backlog.clone(),
        );
        r.register_with_unit(
            "key_paused",
            "How much longer the key's checks are paused (Retry-After, 503), per key",
            Unit::Seconds,
            self.paused.clone(),
        );
        r.register_with_unit(
            "behind",
            "How late the earliest due check waiting to be sent is, per key",
            Unit::Seconds,
            self.behind.clone(),
        );
        r.register_with_unit(
            "budget_window",
            "The budget window per key",
            Unit::Seconds,
            self.budget_window.clone(),
        );
        r.register(
            "keeps_up",
            "1 while the key can keep up (fewer payments arrive per window than its requests in force), else 0",
            self.keeps_up.clone(),
        );
        r.register(
            "key_refused",
            "1 while Ninjapay refuses the key (401/403) for a kind, else 0",
            self.key_refused.clone(),
        );
        r.register_with_unit(
            "scheduler_report_age",
            "How long ago the scheduler last reported (every tick, at most a second apart): it grows while its loop is stuck",
            Unit::Seconds,
            self.scheduler_report_age.clone(),
        );
        r.register_with_unit(
            "start_time",
            "When this daemon process started, unix time",
            Unit::Seconds,
            self.start_time.clone(),
        );
    }

    /// What the scheduler learnt, and reconciliation.
    fn register_learning(&self, r: &mut Registry) {
        r.register_with_unit(
            "flip_age",
            "Learnt age by which a share (quantile) of the flipping payments of a kind flipped",
            Unit::Seconds,
            self.flip_age.clone(),
        );
        r.register(
            "flip_share",
            "Learnt share of payments of a kind that flip before the deadline",
            self.flip_share.clone(),
        );
        r.register_with_unit(
            "expected_delay",
            "Mean flip-to-detection delay the policy expects for a kind at the current load",
            Unit::Seconds,
            self.expected_delay.clone(),
        );
        r.register(
            "watched_payments",
            "Payments under reconciliation after their ladder (timed out, or in a state that may still move), per kind",
            self.watched.clone(),
        );
        r.register(
            "late_moves",
            "Moves seen after the ladder ended a payment (a late approval, a refund), per kind",
            self.late_moves.clone(),
        );
        r.register(
            "late_checks",
            "Scheduled checks of watched payments, per kind: made (from the spare budget) or skipped (none was spare)",
            self.late_checks.clone(),
        );
    }

    /// The outbox, the database and retention.
    fn register_storage(&self, r: &mut Registry) {
        r.register(
            "webhook_events",
            "Webhook events in the outbox, by state",
            self.webhook_events.clone(),
        );
        r.register(
            "database_write_errors",
            "Database writes that failed (e.g. disk full); each is retried",
            self.write_errors.clone(),
        );
        r.register(
            "database_writes_failing",
            "1 while the latest database write failed, else 0",
            self.writes_failing.clone(),
        );
        r.register(
            "webhook_queue_depth",
            "Webhook events waiting for delivery (pending)",
            self.webhook_queue.clone(),
        );
        r.register(
            "webhook_attempts",
            "Webhook delivery attempts, by outcome (delivered, failed, dead)",
            self.webhook_attempts.clone(),
        );
        r.register(
            "database_errors",
            "Failed database operations, by operation",
            self.database_errors.clone(),
        );
        r.register(
            "retention_deleted_rows",
            "Rows deleted by retention, by table",
            self.retention_deleted.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP), by result: applied, or refused (invalid; the running configuration stayed)",
            self.config_reloads.clone(),
        );
        r.register_with_unit(
            "retention_batch",
            "How long one retention batch held the database writer",
            Unit::Seconds,
            self.retention_batch.clone(),
        );
    }
}

impl Telemetry {
    /// Counts a configuration reload and keeps it for `/v1/health`.
    pub fn config_reload(&self, reload: crate::wire::ReloadHealth) {
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: reload.result.as_str(),
            })
            .inc();
        *lock(&self.last_reload) = Some(reload);
    }

    /// The last configuration reload, if any.
    pub fn last_reload(&self) -> Option<crate::wire::ReloadHealth> {
        lock(&self.last_reload).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take the metrics down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn kind(kind: &KindName) -> KindLabel {
    KindLabel { kind: kind.clone() }
}

/// A kind's name is a label value as it is: the name's alphabet needs no escaping.
impl EncodeLabelValue for KindName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

fn pool(pool: &str) -> PoolLabel {
    PoolLabel {
        pool: pool.to_string(),
    }
}

impl Telemetry {
    /// A request sent for `kind`.
    pub fn request(&self, kind_name: &KindName) {
        self.requests.get_or_create(&kind(kind_name)).inc();
    }

    /// A check's outcome for one payment.
    pub fn check(&self, kind: &KindName, obs: &Observation, state: State) {
        let outcome = match obs {
            Observation::Error { .. } => "error",
            Observation::Status { state: None, .. } => "unknown_status",
            _ => state.as_str(),
        };
        self.checks
            .get_or_create(&CheckLabels {
                kind: kind.clone(),
                outcome,
            })
            .inc();
    }

    /// A request's round trip.
    pub fn latency(&self, kind_name: &KindName, ms: i64) {
        self.latency
            .get_or_create(&kind(kind_name))
            .observe(ms.max(0) as f64 / 1000.0);
    }

    /// How late the checks of a key started against their plan once its budget had room
    /// for them, and how long before that they waited for the room, in ms.
    pub fn lateness(&self, pool_name: &str, late_ms: &[i64], budget_wait_ms: &[i64]) {
        let label = pool(pool_name);
        for (family, ms) in [
            (&self.lateness, late_ms),
            (&self.budget_wait, budget_wait_ms),
        ] {
            if ms.is_empty() {
                continue;
            }
            let h = family.get_or_create(&label);
            for l in ms {
                h.observe(*l as f64 / 1000.0);
            }
        }
    }

    /// A group commit of `n` check outcomes.
    pub fn commit(&self, n: usize) {
        self.commits.inc();
        self.committed_checks.inc_by(n as u64);
    }

    /// A 429 the budget did not expect.
    pub fn unexpected_429(&self) {
        self.unexpected_429.inc();
    }

    /// A webhook delivery attempt's result.
    pub fn webhook(&self, outcome: WebhookOutcome) {
        self.webhook_attempts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// A database operation that failed (`record_checks`, `ledger`, `webhooks`, `api`,
    /// `retention`, `maintenance`).
    pub fn database_error(&self, operation: &'static str) {
        debug_assert!(DATABASE_OPERATIONS.contains(&operation), "{operation}");
        self.database_errors
            .get_or_create(&OperationLabel { operation })
            .inc();
    }

    /// A retention batch: what it deleted and how long it held the writer.
    pub fn pruned(&self, p: &Pruned, took: Duration) {
        self.retention_batch.observe(took.as_secs_f64());
        for (table, n) in [
            ("payments", p.payments),
            ("status_history", p.history),
            ("webhook_events", p.events),
            ("webhook_attempts", p.attempts),
        ] {
            if n > 0 {
                self.retention_deleted
                    .get_or_create(&TableLabel { table })
                    .inc_by(n);
            }
        }
    }

    /// When the scheduler last published its status (`at`, 0: not yet), seen at `now`.
    pub fn scheduler_reported(&self, at: crate::payment::WallMs, now: crate::payment::WallMs) {
        let age_ms = if at > WallMs(0) { (now - at).max(0) } else { 0 };
        self.scheduler_report_age.set(age_ms as f64 / 1000.0);
    }

    /// The Prometheus text: `states` and `webhook_states` are the database's counts, `pools`
    /// the scheduler's latest status.
    pub fn render(
        &self,
        states: &[(String, i64)],
        webhook_states: &[(String, i64)],
        pools: &[PoolStatus],
        db: &crate::store::WriteStatus,
    ) -> String {
        let registry = lock(&self.registry);
        let now = crate::payment::now_ms();
        self.set_database(states, webhook_states, db);
        self.accounts.set(&crate::status::accounts(pools));
        for p in pools {
            self.set_pool(p, now);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// The gauges of the database's own counts and write status.
    fn set_database(
        &self,
        states: &[(String, i64)],
        webhook_states: &[(String, i64)],
        db: &crate::store::WriteStatus,
    ) {
        // The store counts since start; the counter follows it (never backwards).
        let seen = self.write_errors.get();
        self.write_errors
            .inc_by(db.failures_total.saturating_sub(seen));
        self.writes_failing
            .set(i64::from(db.failing_since.is_some()));
        set_states(
            &self.payments,
            states,
            State::ALL.map(State::as_str).as_slice(),
        );
        set_states(
            &self.webhook_events,
            webhook_states,
            WebhookState::ALL.map(WebhookState::as_str).as_slice(),
        );
        self.webhook_queue.set(
            webhook_states
                .iter()
                .find(|(s, _)| s == WebhookState::Pending.as_str())
                .map_or(0, |(_, n)| *n),
        );
    }

    /// One key's gauges from the scheduler's status, and its kinds'.
    fn set_pool(&self, p: &PoolStatus, now: crate::payment::WallMs) {
        let name = pool(&p.name);
        // Every key and kind has its series from the start, zero until something
        // happens, so that rates and alerts need no "absent" special case.
        let _ = self.lateness.get_or_create(&name);
        let _ = self.budget_wait.get_or_create(&name);
        for k in &p.kinds {
            let _ = self.requests.get_or_create(&kind(&k.kind));
            let _ = self.latency.get_or_create(&kind(&k.kind));
        }
        self.budget_used
            .get_or_create(&name)
            .set(i64::from(p.budget_used));
        self.budget_limit
            .get_or_create(&name)
            .set(i64::from(p.budget_effective));
        self.budget_configured
            .get_or_create(&name)
            .set(i64::from(p.budget_limit));
        self.price_level.get_or_create(&name).set(p.price_level);
        self.backlog.get_or_create(&name).set(p.backlog as i64);
        let paused_ms = p.paused_until.map_or(0, |t| (t - now).max(0));
        self.paused
            .get_or_create(&name)
            .set(paused_ms as f64 / 1000.0);
        self.behind
            .get_or_create(&name)
            .set(p.behind_ms as f64 / 1000.0);
        self.budget_window
            .get_or_create(&name)
            .set(p.window_ms as f64 / 1000.0);
        self.keeps_up
            .get_or_create(&name)
            .set(i64::from(p.keeps_up()));
        for k in p.kinds.iter().map(|k| &k.kind).chain(&p.auth_failing) {
            self.key_refused
                .get_or_create(&PoolKindLabels {
                    pool: p.name.clone(),
                    kind: k.clone(),
                })
                .set(i64::from(p.auth_failing.contains(k)));
        }
        for k in &p.kinds {
            self.set_kind(p, k);
        }
    }

    /// One kind's gauges on one key.
    fn set_kind(&self, p: &PoolStatus, k: &crate::status::KindPolicy) {
        let labels = PoolKindLabels {
            pool: p.name.clone(),
            kind: k.kind.clone(),
        };
        self.pending.get_or_create(&labels).set(k.pending as i64);
        self.watched
            .get_or_create(&labels)
            .set(i64::try_from(k.late.watched).unwrap_or(i64::MAX));
        catch_up(self.late_moves.get_or_create(&labels).deref(), k.late.moves);
        for (outcome, n) in [("made", k.late.checks), ("skipped", k.late.skipped)] {
            let labels = LateCheckLabels {
                pool: p.name.clone(),
                kind: k.kind.clone(),
                outcome,
            };
            catch_up(self.late_checks.get_or_create(&labels).deref(), n);
        }
        self.flip_share.get_or_create(&labels).set(k.flip_share);
        self.expected_delay
            .get_or_create(&labels)
            .set(k.expected_delay_ms as f64 / 1000.0);
        for (quantile, ms) in ["0.5", "0.9", "0.99"].into_iter().zip(k.flip_age_ms) {
            self.flip_age
                .get_or_create(&QuantileLabels {
                    pool: p.name.clone(),
                    kind: k.kind.clone(),
                    quantile,
                })
                .set(ms as f64 / 1000.0);
        }
    }
}

/// Sets one gauge per state: every `known` one (0 when absent, so a series does not vanish
/// when its last row goes), and any other the database holds.
fn set_states(family: &Family<StateLabel, Gauge>, counts: &[(String, i64)], known: &[&str]) {
    for s in known {
        let n = counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
        family
            .get_or_create(&StateLabel {
                state: s.to_string(),
            })
            .set(n);
    }
    for (s, n) in counts.iter().filter(|(s, _)| !known.contains(&s.as_str())) {
        family
            .get_or_create(&StateLabel { state: s.clone() })
            .set(*n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines of `metric` (with labels) in `text`.
    fn samples<'a>(text: &'a str, metric: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(metric))
            .collect()
    }

    #[test]
    fn label_values_are_escaped() {
        let t = Telemetry::default();
        let text = t.render(&[("a\"b\\c\nd".into(), 1)], &[], &[], &Default::default());
        assert_eq!(
            samples(&text, "ninjapoll_payments{state=\"a"),
            vec![r#"ninjapoll_payments{state="a\"b\\c\nd"} 1"#],
            "{text}"
        );
    }

    #[test]
    fn counters_end_in_total_and_histograms_are_in_seconds() {
        let t = Telemetry::default();
        t.latency(&KindName::parse("p2p").unwrap(), 1_500);
        t.lateness("default", &[20], &[0]);
        t.webhook(WebhookOutcome::Delivered);
        t.database_error("record_checks");
        let text = t.render(&[("pending".into(), 3)], &[], &[], &Default::default());
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (name, kind) = (parts[2], parts[3]);
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            if kind == "histogram" {
                assert!(name.ends_with("_seconds"), "{line}");
            }
        }
        // 1.5 s falls in the 2.5 s bucket, not the 1 s one.
        assert!(
            text.contains("ninjapoll_upstream_latency_seconds_bucket{kind=\"p2p\",le=\"1\"} 0")
                && text.contains(
                    "ninjapoll_upstream_latency_seconds_bucket{kind=\"p2p\",le=\"2.5\"} 1"
                ),
            "{text}"
        );
        assert!(
            !text.contains(".."),
            "the library ends each HELP with a period: {text}"
        );
        assert!(
            text.contains("ninjapoll_upstream_latency_seconds_sum{kind=\"p2p\"} 1.5"),
            "{text}"
        );
        assert!(
            text.contains("ninjapoll_check_lateness_seconds_count{pool=\"default\"} 1")
                && text.contains("ninjapoll_check_budget_wait_seconds_count{pool=\"default\"} 1"),
            "{text}"
        );
        assert!(text.contains("ninjapoll_webhook_attempts_total{outcome=\"delivered\"} 1"));
        assert!(text.contains("ninjapoll_database_errors_total{operation=\"record_checks\"} 1"));
        // Every state has a series, 0 when there are none.
        assert!(
            text.contains("ninjapoll_payments{state=\"pending\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("ninjapoll_payments{state=\"timed_out\"} 0"),
            "{text}"
        );
    }
}
