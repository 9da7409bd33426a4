//! Domain types shared by every module: payment identity, states, and time.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest payment id accepted, in bytes. Ninjapay's ids are short; a bound keeps a
/// hostile client from filling the database through one field.
pub const MAX_ID_LEN: usize = 128;

/// Defines an instant in milliseconds on one clock: instants compare; an instant plus or
/// minus a duration in milliseconds is an instant; two instants differ by a duration.
macro_rules! instant_ms {
    ($(#[$doc:meta])* $name:ident $(, $derive:path)* $(; #[$after:meta])*) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default $(, $derive)*)]
        $(#[$after])*
        pub struct $name(pub i64);

        impl $name {
            /// Before every instant (a sentinel: nothing is that early).
            pub const MIN: $name = $name(i64::MIN);
            /// After every instant (a sentinel: nothing is due that late).
            pub const MAX: $name = $name(i64::MAX);

            /// The instant's milliseconds, where a number is needed (arithmetic in
            /// floating point, a row, the wire).
            pub const fn as_ms(self) -> i64 {
                self.0
            }

            /// `ms` later, or the last instant there is.
            pub fn saturating_add(self, ms: i64) -> Self {
                Self(self.0.saturating_add(ms))
            }

            /// `ms` earlier, or the first instant there is.
            pub fn saturating_sub(self, ms: i64) -> Self {
                Self(self.0.saturating_sub(ms))
            }

            /// `ms` later, if that is an instant there is.
            pub fn checked_add(self, ms: i64) -> Option<Self> {
                self.0.checked_add(ms).map(Self)
            }

            /// How long after `earlier` this is (negative if before), saturating.
            pub fn saturating_since(self, earlier: Self) -> i64 {
                self.0.saturating_sub(earlier.0)
            }
        }

        impl std::ops::Add<i64> for $name {
            type Output = $name;
            fn add(self, ms: i64) -> $name {
                $name(self.0 + ms)
            }
        }

        impl std::ops::Sub<i64> for $name {
            type Output = $name;
            fn sub(self, ms: i64) -> $name {
                $name(self.0 - ms)
            }
        }

        impl std::ops::AddAssign<i64> for $name {
            fn add_assign(&mut self, ms: i64) {
                self.0 += ms;
            }
        }

        impl std::ops::SubAssign<i64> for $name {
            fn sub_assign(&mut self, ms: i64) {
                self.0 -= ms;
            }
        }

        impl std::ops::Sub for $name {
            type Output = i64;
            fn sub(self, earlier: $name) -> i64 {
                self.0 - earlier.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} ms", self.0)
            }
        }
    };
}

instant_ms!(
    /// Wall-clock time: unix milliseconds, UTC. What the database stores, the API and the
    /// webhooks show (as RFC 3339, converted only at the API edge) and retention cuts by.
    WallMs,
    sqlx::Type;
    #[sqlx(transparent)]
);

instant_ms!(
    /// The scheduler's own time: milliseconds on its monotonic clock (unix milliseconds at
    /// its start; the simulator's from 0). What the pure core, the simulator and
    /// reconciliation compute in; the driver's `Clock` converts from and to [`WallMs`], the
    /// one place the two meet.
    SchedMs
);

impl WallMs {
    /// The current wall-clock time.
    pub fn now() -> WallMs {
        WallMs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        )
    }
}

/// The current wall-clock time.
pub fn now_ms() -> WallMs {
    WallMs::now()
}

/// RFC 3339 (UTC, millisecond precision) for a wall-clock time.
pub fn rfc3339(ms: WallMs) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.0.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A payment id as Ninjapay issued it: non-empty, at most [`MAX_ID_LEN`] bytes, no
/// control characters or surrounding whitespace. Never grows, so no spare capacity: the
/// scheduler holds one per payment, pending or watched, hundreds of thousands of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PaymentId(Box<str>);

/// Why a payment id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("id must not be empty")]
    Empty,
    #[error("id is {0} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong(usize),
    #[error("id must not contain control characters or surrounding whitespace")]
    BadCharacters,
}

impl PaymentId {
    /// Parses an id from outside.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(s.len()));
        }
        if s.chars().any(char::is_control) || s.trim() != s {
            return Err(IdError::BadCharacters);
        }
        Ok(Self(s.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A payment's row key (`payments.pk`): the database's handle, never shown to clients
/// as an id, so it gets a type of its own rather than travelling as a bare `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
#[sqlx(transparent)]
pub struct PaymentKey(pub i64);

/// Hashes a [`PaymentKey`] with one multiplication. The keys are the database's own row
/// ids, never chosen from outside, so the scheduler's maps of them need no defence against
/// chosen collisions, and they are looked up for every due check a busy key weighs.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // An odd multiplier: distinct low bits stay distinct (the table's index), and the
        // high bits (its tags) depend on every bit.
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by [`PaymentKey`], hashed by [`KeyHasher`].
pub type KeyMap<V> =
    std::collections::HashMap<PaymentKey, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// A set of [`PaymentKey`]s, hashed by [`KeyHasher`].
pub type KeySet = std::collections::HashSet<PaymentKey, std::hash::BuildHasherDefault<KeyHasher>>;

impl fmt::Display for PaymentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A webhook event's row key (`webhook_events.pk`): typed apart from [`PaymentKey`] so the
/// two cannot be swapped where both travel (the delivery worker holds one of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
#[sqlx(transparent)]
pub struct EventKey(pub i64);

/// A budget ledger row's key (`upstream_requests.pk`): a pre-committed request slot, handed
/// from the ledger writer through the scheduler to the request and back to the recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
#[sqlx(transparent)]
pub struct LedgerKey(pub i64);

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a payment stands. Every state but `Pending` is final: polling stops.
///
/// Stored as its snake_case name (the `CHECK` constraint in `0001_payments.sql` lists the
/// same names), so rows decode straight into the enum.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum State {
    Pending,
    Succeeded,
    Failed,
    Expired,
    Refunded,
    TimedOut,
    Cancelled,
}

impl State {
    /// All states, for parsing and listing.
    pub const ALL: [State; 7] = [
        State::Pending,
        State::Succeeded,
        State::Failed,
        State::Expired,
        State::Refunded,
        State::TimedOut,
        State::Cancelled,
    ];

    /// The name used in the database, the API and the config.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Expired => "expired",
            State::Refunded => "refunded",
            State::TimedOut => "timed_out",
            State::Cancelled => "cancelled",
        }
    }

    /// Parses a state name.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether polling has stopped for good.
    pub fn is_final(self) -> bool {
        self != State::Pending
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one webhook delivery attempt came to, as metrics count it (the
/// `ninjapoll_webhook_attempts_total` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookOutcome {
    Delivered,
    /// Failed; the event is retried.
    Failed,
    /// Failed, and it was the last try (or the callback is no longer allowed).
    Dead,
}

impl WebhookOutcome {
    /// All outcomes, for series that read 0 before their first attempt.
    pub const ALL: [WebhookOutcome; 3] = [
        WebhookOutcome::Delivered,
        WebhookOutcome::Failed,
        WebhookOutcome::Dead,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::Failed => "failed",
            WebhookOutcome::Dead => "dead",
        }
    }
}

/// Where a webhook event stands in the outbox. Stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum WebhookState {
    /// Waiting for its (next) delivery attempt.
    Pending,
    Delivered,
    /// Its retry schedule ran out; only a replay sends it again.
    Dead,
}

impl WebhookState {
    /// All states, for parsing.
    pub const ALL: [WebhookState; 3] = [
        WebhookState::Pending,
        WebhookState::Delivered,
        WebhookState::Dead,
    ];

    /// The name used in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookState::Pending => "pending",
            WebhookState::Delivered => "delivered",
            WebhookState::Dead => "dead",
        }
    }

    /// Parses a state name.
    pub fn parse(s: &str) -> Option<WebhookState> {
        WebhookState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for WebhookState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_at_the_edge() {
        assert!(PaymentId::parse("A198660213997").is_ok());
        assert_eq!(PaymentId::parse(""), Err(IdError::Empty));
        assert_eq!(
            PaymentId::parse(&"x".repeat(129)),
            Err(IdError::TooLong(129))
        );
        assert_eq!(PaymentId::parse("a\nb"), Err(IdError::BadCharacters));
        assert_eq!(PaymentId::parse(" a"), Err(IdError::BadCharacters));
    }

    #[test]
    fn states_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert!(!State::Pending.is_final());
        assert!(State::TimedOut.is_final());
    }

    #[test]
    fn rfc3339_is_utc_millis() {
        assert_eq!(
            rfc3339(WallMs(1_649_367_553_000)),
            "2022-04-07T21:39:13.000Z"
        );
    }
}
