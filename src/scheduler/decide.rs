//! What one check decided for one payment: pure.

use crate::kinds::Observation;
use crate::payment::{SchedMs, State};

/// What a check decided for one payment. Pure; see [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub state: State,
    pub upstream_status: Option<String>,
    pub error: Option<String>,
    pub response: Option<String>,
    pub event: Option<&'static str>,
    pub changed: bool,
    /// Whether this check counts as the one owed at or after the deadline.
    pub answered: bool,
}

/// Largest answer stored with a payment (its `response`, JSON text).
pub const MAX_STORED_RESPONSE: usize = 64 * 1024;

/// The answer as stored: itself, or a note of its size when it is larger than
/// [`MAX_STORED_RESPONSE`] (a payment row is not the place for a huge page).
pub(crate) fn bounded(response: &serde_json::Value) -> String {
    let text = response.to_string();
    if text.len() <= MAX_STORED_RESPONSE {
        text
    } else {
        serde_json::json!({"omitted": format!("an answer of {} bytes, larger than {MAX_STORED_RESPONSE}", text.len())})
            .to_string()
    }
}

/// Decides a pending payment's new state from one observation made at `checked_at`.
/// `give_up_at`: past it, even unanswered checks end the payment (the provider has been
/// unreachable for a whole extra ladder).
pub fn decide(
    previous_raw: Option<&str>,
    obs: &Observation,
    checked_at: SchedMs,
    deadline: SchedMs,
    give_up_at: SchedMs,
) -> Decision {
    let (mut state, raw, error, response, answered) = match obs {
        Observation::Status {
            raw,
            state,
            response,
        } => (
            state.unwrap_or(State::Pending),
            Some(raw.clone()),
            state
                .is_none()
                .then(|| format!("unknown upstream status {raw:?}")),
            Some(bounded(response)),
            true,
        ),
        Observation::Error {
            class,
            message,
            response,
            ..
        } => (
            State::Pending,
            None,
            Some(message.clone()),
            response.as_ref().map(bounded),
            class.is_answer(),
        ),
    };
    if state == State::Pending && ((answered && checked_at >= deadline) || checked_at >= give_up_at)
    {
        state = State::TimedOut;
    }
    let event = crate::event::event_for(previous_raw, raw.as_deref(), State::Pending, state);
    let changed = state != State::Pending
        || raw
            .as_deref()
            .is_some_and(|r| !r.eq_ignore_ascii_case(previous_raw.unwrap_or("pending")));
    Decision {
        state,
        upstream_status: raw,
        error,
        response,
        event,
        changed,
        answered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::ErrorClass;
    use serde_json::json;

    fn status(raw: &str, state: Option<State>) -> Observation {
        Observation::Status {
            raw: raw.into(),
            state,
            response: json!({"status": raw}),
        }
    }

    #[test]
    fn decide_maps_flips_and_timeouts() {
        let d = decide(
            None,
            &status("approved", Some(State::Succeeded)),
            SchedMs(10),
            SchedMs(100),
            SchedMs(200),
        );
        assert_eq!(d.state, State::Succeeded);
        assert_eq!(d.event, Some(crate::event::STATUS_CHANGED));
        let d = decide(
            None,
            &status("pending", Some(State::Pending)),
            SchedMs(10),
            SchedMs(100),
            SchedMs(200),
        );
        assert_eq!((d.state, d.event, d.changed), (State::Pending, None, false));
        let d = decide(
            Some("pending"),
            &status("pending", Some(State::Pending)),
            SchedMs(100),
            SchedMs(100),
            SchedMs(200),
        );
        assert_eq!(d.state, State::TimedOut);
        assert_eq!(d.event, Some(crate::event::TIMED_OUT));
        let d = decide(
            None,
            &status("weird", None),
            SchedMs(10),
            SchedMs(100),
            SchedMs(200),
        );
        assert_eq!(d.state, State::Pending);
        assert!(d.error.unwrap().contains("weird"));
        assert!(d.changed);
    }

    #[test]
    fn unanswered_checks_do_not_settle_the_deadline() {
        let err = |class| Observation::error(class, "x".into(), None);
        assert_eq!(
            decide(
                None,
                &err(ErrorClass::Transport),
                SchedMs(150),
                SchedMs(100),
                SchedMs(200)
            )
            .state,
            State::Pending
        );
        assert_eq!(
            decide(
                None,
                &err(ErrorClass::Transport),
                SchedMs(200),
                SchedMs(100),
                SchedMs(200)
            )
            .state,
            State::TimedOut
        );
        // An answer without a usable status (an HTML page with 200) is an outage.
        assert_eq!(
            decide(
                None,
                &err(ErrorClass::BadBody),
                SchedMs(150),
                SchedMs(100),
                SchedMs(200)
            )
            .state,
            State::Pending
        );
        // 404 at the deadline: the payment never appeared.
        let d = decide(
            None,
            &err(ErrorClass::NotFound),
            SchedMs(100),
            SchedMs(100),
            SchedMs(200),
        );
        assert_eq!(d.state, State::TimedOut);
        assert_eq!(d.error.as_deref(), Some("x"));
    }
}
