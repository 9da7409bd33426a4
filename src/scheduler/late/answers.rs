//! What a check of a watched payment decided: a late move and its event, the next planned
//! check, or the end of the watch.

use super::*;

impl Watch {
    /// A check's answer for a watched payment, sent at `sent_at`: what to record (`None`
    /// when it is not watched any more). `retry_ms`: when an unanswered check is tried
    /// again, doubling per failure.
    pub fn complete(
        &mut self,
        pk: PaymentKey,
        obs: &Observation,
        sent_at: SchedMs,
        now: SchedMs,
        retry_ms: i64,
    ) -> Option<(Outcome, Arc<Kind>)> {
        self.dequeue(pk);
        let mut e = self.entries.remove(&pk)?;
        e.in_flight = false;
        let was_recheck = e.recheck && e.due <= sent_at;
        let Read {
            state: seen_state,
            raw,
            error,
            response,
            answered,
        } = read(obs);
        // A move is a final state other than the one the ladder (or an earlier move) left;
        // `pending` from the provider after a timeout is no move.
        let moved_to = seen_state.filter(|s| s.is_final() && *s != e.state);
        let unchanged = answered && moved_to.is_none();
        let (before, before_raw) = (e.state, e.upstream_status.as_deref().map(String::from));
        let new_raw = raw.clone().filter(|_| answered);
        let event = moved_to
            .and_then(|to| event_for(before_raw.as_deref(), new_raw.as_deref(), before, to))
            .map(|t| EventSpec {
                event_type: t,
                previous_state: before,
                previous_upstream_status: before_raw.clone(),
                late: true,
            });
        let raw_changed = new_raw
            .as_deref()
            .is_some_and(|r| !r.eq_ignore_ascii_case(before_raw.as_deref().unwrap_or("pending")));
        if let Some(to) = moved_to {
            self.moved(&mut e, to, sent_at);
        }
        if unchanged {
            e.seen = e.seen.max(sent_at);
        }
        if new_raw.is_some() {
            e.upstream_status = self.status(new_raw.as_deref());
        }
        let planned = self.next_after(&mut e, answered, sent_at, now, retry_ms);
        e.recheck = e.recheck && !was_recheck;
        let (keep, due) = (planned.map(|(i, _)| i), planned.map(|(_, at)| at));
        let record = Outcome {
            pk,
            checked_at: now,
            upstream_status: new_raw,
            state: e.state,
            response,
            error,
            next_check_at: due,
            event,
            changed: moved_to.is_some() || raw_changed,
            saw_pending: false,
            watch: Some(LateCheck {
                asked: true,
                unchanged,
            }),
        };
        let kind = e.kind.clone();
        match (keep, due) {
            (Some(i), Some(d)) => {
                e.next = i;
                e.due = if e.recheck { e.due.min(d) } else { d };
                e.parked = e.parked && answered && !e.recheck;
                self.entries.insert(pk, e);
                self.enqueue(pk, now);
            }
            _ => self.ended(*e),
        }
        Some((record, kind))
    }

    /// Moves `e` to `to`, seen by a check sent at `sent_at` (its first move is evidence
    /// for its late-move model).
    fn moved(&mut self, e: &mut Watched, to: State, sent_at: SchedMs) {
        if !e.moved {
            let ev = self.grid.evidence(e.seen - e.t0, Some(sent_at - e.t0));
            self.model(&e.kind.name, e.ended).learner.observe(e.t0, ev);
        }
        tracing::info!(
            kind = %e.kind.name, id = %e.id, from = e.state.as_str(), to = to.as_str(),
            "a payment moved after its ladder ended"
        );
        e.moved = true;
        e.state = to;
        self.stats
            .entry((e.pool, e.kind.name.clone()))
            .or_default()
            .late_moves += 1;
    }

    /// The check after one sent at `sent_at` (its schedule index and time), `None` when the
    /// watch is over.
    fn next_after(
        &mut self,
        e: &mut Watched,
        answered: bool,
        sent_at: SchedMs,
        now: SchedMs,
        retry_ms: i64,
    ) -> Option<(usize, SchedMs)> {
        // The next check: the planned one after this one; a failure tries the same
        // scheduled check again later (a later age, once come, stands for it).
        let schedule = &e.kind.reconcile_after;
        let asked_past_schedule = e.recheck && e.next >= schedule.len();
        if answered {
            e.failures = 0;
            let pos = next_age(schedule, sent_at - e.t0).unwrap_or(schedule.len());
            let passed = pos.saturating_sub(e.pos + 1);
            let key = (e.pool, e.kind.name.clone());
            self.stats.entry(key).or_default().skipped += passed as u64;
            e.pos = e.pos.max(pos);
            if e.kind.watches(e.state) {
                self.plan(e, now);
                Some((e.next, e.due))
            } else {
                None
            }
        } else {
            e.failures = e.failures.saturating_add(1);
            let age = now - e.t0;
            let mut i = e.next.min(schedule.len().saturating_sub(1));
            while i + 1 < schedule.len() && schedule[i + 1] <= age {
                i += 1;
            }
            let backoff = retry_ms.saturating_mul(1 << e.failures.min(6));
            let at = schedule
                .get(i)
                .map_or(now, |a| e.t0 + *a)
                .max(now.saturating_add(backoff));
            // A merchant's recheck past the schedule is tried again until it is answered.
            (e.kind.watches(e.state) || asked_past_schedule).then_some((i, at))
        }
    }

    /// The watch of `e` is over: its evidence, if it never moved, is that it did not by
    /// its last check.
    pub(super) fn ended(&mut self, e: Watched) {
        if !e.moved {
            let ev = self.grid.evidence(e.seen - e.t0, None);
            self.model(&e.kind.name, e.ended).learner.observe(e.t0, ev);
        }
        let schedule = &e.kind.reconcile_after;
        let end =
            e.t0.saturating_add(schedule.last().copied().unwrap_or(0))
                .saturating_add(grace(schedule));
        self.ends.remove(&(end, e.pk));
        let stats = self.stats.entry((e.pool, e.kind.name.clone())).or_default();
        stats.watched = stats.watched.saturating_sub(1);
    }
}

/// What one observation of a watched payment says.
struct Read {
    state: Option<State>,
    raw: Option<String>,
    error: Option<String>,
    response: Option<String>,
    /// The provider answered for the payment (a status, or e.g. a 404).
    answered: bool,
}

fn read(obs: &Observation) -> Read {
    match obs {
        Observation::Status {
            raw,
            state,
            response,
        } => Read {
            state: *state,
            raw: Some(raw.clone()),
            error: state
                .is_none()
                .then(|| format!("unknown upstream status {raw:?}")),
            response: Some(bounded(response)),
            answered: state.is_some(),
        },
        // An answer that is no status (a 404: the provider does not know the payment any
        // more) is no move either.
        Observation::Error {
            class,
            message,
            response,
        } => Read {
            state: None,
            raw: None,
            error: Some(message.clone()),
            response: response.as_ref().map(bounded),
            answered: class.is_answer(),
        },
    }
}
