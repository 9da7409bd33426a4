//! Ninjapay's request budget per API key, as the provider enforces it: at most so many
//! requests in a rolling window; past it the key is locked out.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The accounting of every key's requests.
pub(crate) struct Budget {
    /// `(requests, window)`; `None`: no accounting.
    limit: Option<(u32, Duration)>,
    /// How long a key stays locked out after it exceeded the budget.
    lockout: Duration,
    /// Requests that arrived when their key's window already held the whole budget.
    pub(crate) violations: u32,
    /// Per API key: arrivals inside the current rolling window.
    arrivals: HashMap<String, VecDeque<Instant>>,
    /// Per API key: end of its lockout.
    locked_until: HashMap<String, Instant>,
}

impl Budget {
    pub(crate) fn new(limit: Option<(u32, Duration)>, lockout: Duration) -> Budget {
        Budget {
            limit,
            lockout,
            violations: 0,
            arrivals: HashMap::new(),
            locked_until: HashMap::new(),
        }
    }

    /// Counts an arrival with a valid `key` against the budget. Returns whether the key is
    /// locked out (by this request or an earlier one).
    pub(crate) fn account(&mut self, key: &str, now: Instant) -> bool {
        let Some((limit, window)) = self.limit else {
            return false;
        };
        let arrivals = self.arrivals.entry(key.to_owned()).or_default();
        while arrivals
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            arrivals.pop_front();
        }
        let over = arrivals.len() >= limit as usize;
        arrivals.push_back(now);
        let locked = self.locked_until.get(key).is_some_and(|until| now < *until);
        if over {
            self.violations = self.violations.saturating_add(1);
            if !locked {
                tracing::warn!("fake Ninjapay: request budget exceeded, locking the key out");
                self.locked_until.insert(key.to_owned(), now + self.lockout);
            }
            return true;
        }
        locked
    }
}
