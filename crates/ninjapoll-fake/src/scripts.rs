//! Scripted payments: what each check of a payment answers, and the entry that tracks how
//! far a payment's script has been served.

use crate::endpoints::Kind;
use std::time::{Duration, Instant};

/// What the fake answers for an id that has no script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    /// 404 `{"success": false, "message": "Transaction not found"}` (the default).
    NotFound,
    /// Invent a script on first sight: pending for a uniformly random `2..=max_pending`
    /// checks, then a random final status of the kind (for `ninjapoll demo`). The history
    /// endpoint (`btc`) cannot see ids it was never told about: script those with
    /// [`crate::FakeNinjapay::script_random`].
    Random {
        /// Upper bound of the number of pending answers (at least 2 are given).
        max_pending: u32,
    },
    /// The kind's pending status, forever, for every id without a script (nothing is
    /// stored per id: for long runs with many payments that never settle).
    Pending,
}

/// What one check of a payment answers, in a [`Script::Sequence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// 200 with the kind's normal body carrying this raw status, spelled as the provider
    /// would (e.g. `"approved"`, `"SUCCESS"`, or something unexpected).
    Status(String),
    /// An arbitrary HTTP answer: status `code` (an invalid code is answered as 500), `body`
    /// verbatim (as JSON when it parses as JSON), and an optional `Retry-After` header.
    /// For `btc` the whole history answer is this one.
    Http {
        /// HTTP status code.
        code: u16,
        /// Response body, sent verbatim.
        body: String,
        /// `Retry-After` header value (seconds or an HTTP date), if any.
        retry_after: Option<String>,
    },
    /// 200 with an HTML body (a misbehaving proxy). For `btc` the whole answer.
    NotJson,
    /// 200 with the normal body minus the status field (`/status`, `/data/trxStatus`, or
    /// the history entry's `status`).
    MissingStatus,
    /// 200 with a failed envelope: `{"status": false, "message": …}` for paywall,
    /// `{"success": false, "message": …}` for the others. For `btc` the whole answer.
    EnvelopeFalse,
    /// Wait this long, then answer the kind's pending status (a slow upstream; the client
    /// is expected to time out first).
    Hang(Duration),
    /// 404 `{"success": false, …}` (not visible yet); for `btc` the entry is left out of
    /// the history.
    NotFound,
}

/// How a scripted payment evolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// One step per request that asks for this id (for `btc`: per served history call that
    /// lists it); the last step repeats forever. An empty sequence is pending forever.
    Sequence(Vec<Step>),
    /// The kind's pending status before `at`, `status` (raw) from `at` on, whatever the
    /// number of requests.
    FlipAt {
        /// When the payment settles.
        at: Instant,
        /// The raw status from then on.
        status: String,
    },
}

impl Script {
    /// `pending` answers, then `status` forever.
    pub fn pending_then(kind: Kind, pending: usize, status: &str) -> Script {
        let mut steps = vec![Step::Status(kind.pending_status().to_owned()); pending];
        steps.push(Step::Status(status.to_owned()));
        Script::Sequence(steps)
    }

    /// Pending for a uniformly random `2..=max_pending` checks, then a random final status
    /// of the kind (successes twice as likely as each other outcome).
    pub fn random(kind: Kind, max_pending: u32) -> Script {
        let pending = fastrand::u32(2..=max_pending.max(2)) as usize;
        let finals = kind.final_statuses();
        // Index 0 is the kind's success; give it a second ticket.
        let pick = fastrand::usize(0..=finals.len());
        let status = finals
            .get(pick)
            .or_else(|| finals.first())
            .copied()
            .unwrap_or(kind.pending_status());
        Script::pending_then(kind, pending, status)
    }
}

pub(crate) struct ScriptEntry {
    pub(crate) script: Script,
    /// Steps consumed so far.
    pub(crate) served: usize,
    /// Only meaningful for `btc` (the history's `wallet` filter).
    pub(crate) wallet: String,
    /// Registration order: the history lists the newest first.
    pub(crate) order: u64,
    /// Registration time (unix seconds): the history entry's `created_at`.
    pub(crate) created: i64,
}

impl ScriptEntry {
    /// The step for the next request, at `now`; consumes it.
    pub(crate) fn next_step(&mut self, kind: Kind, now: Instant) -> Step {
        let step = match &self.script {
            Script::Sequence(steps) => steps
                .get(self.served)
                .or_else(|| steps.last())
                .cloned()
                .unwrap_or_else(|| Step::Status(kind.pending_status().to_owned())),
            Script::FlipAt { at, status } => {
                if now >= *at {
                    Step::Status(status.clone())
                } else {
                    Step::Status(kind.pending_status().to_owned())
                }
            }
        };
        self.served = self.served.saturating_add(1);
        step
    }
}
