//! What the handle and the request handlers share: the options in force, the scripts and
//! the recorded requests.

use crate::budget::Budget;
use crate::endpoints::{unix_now, Kind};
use crate::faults::Fault;
use crate::scripts::{Script, ScriptEntry, Unknown};
use crate::server::FakeOptions;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How many requests are kept for [`crate::FakeNinjapay::requests`]: bounds memory in a long demo.
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
    /// The API key the request presented in its kind's auth header, whether or not it was
    /// accepted (`None`: no such header, or not a check endpoint).
    pub key: Option<String>,
}

/// Whose payment a script is: `None` for the main key ([`FakeOptions::api_key`], and the
/// paywall key), `Some(key)` for another account's key. The main key's scripts stay its own
/// when [`crate::FakeNinjapay::set_api_key`] changes it.
pub(crate) type Owner = Option<String>;

pub(crate) struct Inner {
    pub(crate) api_key: String,
    paywall_api_key: Option<String>,
    pub(crate) budget: Budget,
    pub(crate) latency: Option<(Duration, Duration)>,
    pub(crate) unknown: Unknown,
    pub(crate) fault: Option<Fault>,
    /// Faults answered only to requests presenting this key (after the key is accepted).
    pub(crate) key_faults: HashMap<String, Fault>,
    /// The other accounts' keys ([`FakeOptions::accounts`]), accepted for every kind.
    pub(crate) accounts: Vec<String>,
    /// Scripts per owner (`None`: the main key's, see [`Owner`]), kind and id.
    pub(crate) scripts: HashMap<(Owner, Kind, String), ScriptEntry>,
    next_order: u64,
    pub(crate) records: VecDeque<Recorded>,
    /// [`FakeOptions::record`]: whether `records` is kept, or only `arrivals`.
    pub(crate) record: bool,
    /// Per accepted key, every arrival (kept only when `record` is false).
    pub(crate) arrivals: HashMap<String, Vec<Instant>>,
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
            key_faults: HashMap::new(),
            accounts: opts.accounts,
            scripts: HashMap::new(),
            next_order: 0,
            records: VecDeque::new(),
            record: opts.record,
            arrivals: HashMap::new(),
        }
    }

    pub(crate) fn register(
        &mut self,
        owner: Owner,
        kind: Kind,
        id: &str,
        script: Script,
        wallet: &str,
    ) {
        self.next_order += 1;
        self.scripts.insert(
            (owner, kind, id.to_owned()),
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

    /// Whose scripts a request with `key` for `kind` sees; `None` when the key is refused.
    pub(crate) fn owner(&self, kind: Kind, key: &str) -> Option<Owner> {
        if key.is_empty() {
            return None;
        }
        if key == self.expected_key(kind) {
            return Some(None);
        }
        self.accounts
            .iter()
            .any(|k| k == key)
            .then(|| Some(key.to_owned()))
    }

    pub(crate) fn push_record(&mut self, record: Recorded) {
        if !self.record {
            if let (true, Some(key)) = (record.auth_ok, record.key.as_deref()) {
                match self.arrivals.get_mut(key) {
                    Some(times) => times.push(record.at),
                    None => {
                        self.arrivals.insert(key.to_owned(), vec![record.at]);
                    }
                }
            }
            return;
        }
        if self.records.len() >= MAX_RECORDS {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    /// The script entry for a single-id kind, inventing one if the options say so.
    pub(crate) fn entry_for(
        &mut self,
        owner: &Owner,
        kind: Kind,
        id: &str,
    ) -> Option<&mut ScriptEntry> {
        let key = (owner.clone(), kind, id.to_owned());
        if !self.scripts.contains_key(&key) {
            let Unknown::Random { max_pending } = self.unknown else {
                return None;
            };
            self.register(
                owner.clone(),
                kind,
                id,
                Script::random(kind, max_pending),
                "btc",
            );
        }
        self.scripts.get_mut(&key)
    }
}
