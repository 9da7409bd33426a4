//! What goes into the core and what comes out: its own types, so that it knows nothing of
//! the database. The driver converts the store's rows into them and the outcomes back (see
//! `scheduler::recorder`), and converts wall times to the core's clock on the way in.

use super::*;

/// One API key (a pool of kinds sharing its budget): an index into the core's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(usize);

impl PoolId {
    /// The default key (`ninjapay.api_key`), which every kind without its own key uses.
    pub const DEFAULT: PoolId = PoolId(0);

    /// The `index`th key of [`CoreConfig::pools`].
    pub const fn new(index: usize) -> Self {
        Self(index)
    }

    /// Its place in [`CoreConfig::pools`] (and in the driver's keys).
    pub const fn index(self) -> usize {
        self.0
    }
}

impl std::fmt::Display for PoolId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A pending payment for the core to track. Times are on the core's clock.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub pk: PaymentKey,
    pub account: AccountName,
    pub kind: KindName,
    pub id: PaymentId,
    /// The raw status last seen, if any.
    pub upstream_status: Option<String>,
    pub started_at: SchedMs,
    /// Its first check's jitter (see [`Ladder::clamp_jitter`]).
    pub jitter_ms: i64,
    /// The next check planned (a manual recheck earlier than the plan survives a restart).
    pub next_check_at: Option<SchedMs>,
    /// When the last answered check was sent.
    pub last_checked_at: Option<SchedMs>,
}

/// A final payment the core keeps checking after its ladder (its state may still move).
/// Times are on the core's clock.
#[derive(Debug, Clone)]
pub struct Watched {
    pub pk: PaymentKey,
    pub account: AccountName,
    pub kind: KindName,
    pub id: PaymentId,
    pub state: State,
    pub upstream_status: Option<String>,
    pub started_at: SchedMs,
    pub next_check_at: SchedMs,
    /// The last check under watch that saw no move (else when the ladder ended it).
    pub seen_at: Option<SchedMs>,
    /// How the ladder ended it.
    pub ended_state: State,
}

/// A payment's id did not parse: it is not polled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payment {pk} has an invalid id")]
pub struct InvalidId {
    pub pk: PaymentKey,
}

/// A check's outcome, for the recorder to commit. Times are on the core's clock.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub pk: PaymentKey,
    pub checked_at: SchedMs,
    /// The raw status seen, if the check got one.
    pub upstream_status: Option<String>,
    /// The payment's state after the check.
    pub state: State,
    /// The body of the answer (JSON text), kept when there is one.
    pub response: Option<String>,
    /// The error, if the check failed; `None` clears the previous one.
    pub error: Option<String>,
    /// When the next check is planned; `None` once final (and not watched).
    pub next_check_at: Option<SchedMs>,
    /// A webhook event this check causes, if any.
    pub event: Option<EventSpec>,
    /// Whether the payment's state or raw status changed (kept in history).
    pub changed: bool,
    /// Whether Ninjapay answered that the payment is still pending (evidence for the
    /// learnt flip ages).
    pub saw_pending: bool,
    /// A check of a payment under reconciliation, or `None` for one of the ladder's.
    pub watch: Option<LateCheck>,
}

/// What a check under reconciliation adds to its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateCheck {
    /// A request was made (`false`: the watch ended without one, nothing was seen).
    pub asked: bool,
    /// Ninjapay answered and the payment had not moved.
    pub unchanged: bool,
}

/// One API key, as the core knows it.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// Shown in health and logs.
    pub name: String,
    /// The account whose key it is.
    pub account: AccountName,
    /// Names the key's rows in the budget ledger (a hash of the key, never the key).
    pub ledger_id: String,
    /// Whether a key is configured at all.
    pub has_key: bool,
    /// Its budget: requests per window (the window is [`CoreConfig::budget_window_ms`]
    /// unless the account has its own).
    pub budget_requests: u32,
    pub budget_window_ms: i64,
}

/// What the core is built from.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub ladder: Ladder,
    pub kinds: BTreeMap<KindName, Arc<Kind>>,
    pub pools: Vec<PoolSpec>,
    /// Pool of each kind of the account `default` (absent: [`PoolId::DEFAULT`]).
    pub kind_pool: HashMap<KindName, PoolId>,
    /// Pool of every other account (absent: the account is not configured, its payments
    /// are not polled).
    pub account_pool: HashMap<AccountName, PoolId>,
    /// The window the schedule plans in (`[ninjapay]`'s).
    pub budget_window_ms: i64,
    /// The share of a key's budget its backlog may take after a burst.
    pub backlog_share: BacklogShare,
    pub max_in_flight: usize,
    /// Seeds the core's randomness (back-off jitter, mixing draws): the simulator repeats.
    pub seed: u64,
    /// Which watched payment's check goes first when the spare budget is short.
    pub late_policy: LatePolicy,
}

/// A request for the driver to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub pool: PoolId,
    pub kind: Arc<Kind>,
    pub pks: Vec<PaymentKey>,
    pub ids: Vec<PaymentId>,
    /// Each payment's start (scheduler time): a listing's coverage is judged by it.
    pub started: Vec<SchedMs>,
    /// A listing's page size (0 for a single-payment kind).
    pub list_limit: u32,
    pub sent_at: SchedMs,
    /// The pre-committed ledger row it uses.
    pub ledger: Option<LedgerKey>,
}

/// A finished request, for [`Core::complete`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub pool: PoolId,
    pub pks: Vec<PaymentKey>,
    pub observations: Vec<Observation>,
    pub retry_after_ms: Option<i64>,
    pub sent_at: SchedMs,
    pub done_at: SchedMs,
    pub ledger: Option<LedgerKey>,
}

/// What a completion produced.
#[derive(Debug, Default)]
pub struct Completed {
    /// Outcomes to commit.
    pub records: Vec<Outcome>,
    /// The ledger row to close (`(row, answered_at)`).
    pub ledger: Option<(LedgerKey, SchedMs)>,
    /// For telemetry: `(index into the observations, kind, state after)`.
    pub checked: Vec<(usize, Arc<Kind>, State)>,
    /// Final outcomes, for whoever watches (the simulator): `(pk, state, sent_at)`.
    pub finished: Vec<(PaymentKey, State, SchedMs)>,
    /// Moves seen under reconciliation, after the ladder: `(pk, new state, sent_at)`.
    pub moved: Vec<(PaymentKey, State, SchedMs)>,
}

/// The core's actions, besides the ones methods return directly.
#[derive(Debug)]
pub enum Action {
    Send(Request),
    /// Outcomes to commit without a request (no API key configured).
    Record(Vec<Outcome>),
    /// Pre-commit `count` ledger rows for a pool.
    Refill {
        pool: PoolId,
        ledger_id: String,
        count: usize,
    },
}
