//! What the handle and the request handlers share: the options in force, the scripts and
//! the recorded requests.

use crate::budget::Budget;
use crate::endpoints::{unix_now, Kind};
use crate::faults::Fault;
use crate::scripts::{Script, ScriptEntry, Unknown};
use crate::server::FakeOptions;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How many requests are kept for [`FakeNinjapay::requests`]: bounds memory in a long demo.
const MAX_RECORDS: usize = 100_000;

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Arrival (before any latency or hang).
    pub at: Instant,
    /// Arrival as unix milliseconds (for comparing with the daemon's RFC 3339 timestamps).
    pub unix_ms: i64,
    /// HTTP method.
    pub method: String,
    /// URL path, without the query.
    pub path: String,
    /// The check endpoint's kind (`p2p`, …), `None` for any other path.
    pub kind: Option<String>,
    /// The ids asked about: the `tid` / `order_id` (even when the request was rejected), or
    /// for `btc` the registered ids inside the served history page (empty when rejected).
    pub ids: Vec<String>,
    /// Whether the right header carried the right key.
    pub auth_ok: bool,
    /// The HTTP status answered.
    pub status: u16,
    /// The raw query string (empty if none).
    pub query: String,
}

pub(crate) struct Inner {
    pub(crate) api_key: String,
    paywall_api_key: Option<String>,
    pub(crate) budget: Budget,
    pub(crate) latency: Option<(Duration, Duration)>,
    pub(crate) unknown: Unknown,
    pub(crate) fault: Option<Fault>,
    pub(crate) scripts: HashMap<(Kind, String), ScriptEntry>,
    next_order: u64,
    pub(crate) records: VecDeque<Recorded>,
}

impl Inner {
    pub(crate) fn new(opts: FakeOptions) -> Inner {
        Inner {
            api_key: opts.api_key,
            paywall_api_key: opts.paywall_api_key,
            budget: Budget::new(opts.budget, opts.lockout),
            latency: opts.latency,
            unknown: opts.unknown,
            fault: None,
            scripts: HashMap::new(),
            next_order: 0,
            records: VecDeque::new(),
        }
    }

    pub(crate) fn register(&mut self, kind: Kind, id: &str, script: Script, wallet: &str) {
        self.next_order += 1;
        self.scripts.insert(
            (kind, id.to_owned()),
            ScriptEntry {
                script,
                served: 0,
                wallet: wallet.to_owned(),
                order: self.next_order,
                created: unix_now(),
            },
        );
    }

    pub(crate) fn expected_key(&self, kind: Kind) -> &str {
        match kind {
            Kind::Paywall => self.paywall_api_key.as_deref().unwrap_or(&self.api_key),
            Kind::P2p | Kind::Quote | Kind::Btc => &self.api_key,
        }
    }

    pub(crate) fn push_record(&mut self, record: Recorded) {
        if self.records.len() >= MAX_RECORDS {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    /// The script entry for a single-id kind, inventing one if the options say so.
    pub(crate) fn entry_for(&mut self, kind: Kind, id: &str) -> Option<&mut ScriptEntry> {
        let key = (kind, id.to_owned());
        if !self.scripts.contains_key(&key) {
            let Unknown::Random { max_pending } = self.unknown else {
                return None;
            };
            self.register(kind, id, Script::random(kind, max_pending), "btc");
        }
        self.scripts.get_mut(&key)
    }
}
