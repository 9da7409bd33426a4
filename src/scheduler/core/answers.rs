//! Answers and errors: a finished request decides each payment and plans its next check;
//! 429/503 pause the key, an unexpected 429 lowers its limit, 401/403 turn its checks into
//! probes, and a listing cut short asks for more.

use super::*;

/// What one request's answers said about its key and kinds, gathered payment by payment
/// and acted on once they are all decided.
#[derive(Default)]
pub(super) struct Answers {
    /// A 429 or 503: the key pauses.
    throttled: bool,
    /// A kind answered 401/403.
    auth_failed: Option<KindName>,
    /// Any payment got a status.
    any_answer: bool,
    /// The list kind the request listed, if it was a listing.
    pub(super) list_kind: Option<Arc<Kind>>,
    /// The densest ladder step among the listed payments (a listing's cadence).
    pub(super) min_every: Option<i64>,
    /// Kinds that got a real answer.
    answered_kinds: HashSet<KindName>,
    /// A listing came back without reaching every payment's start.
    pub(super) truncated: bool,
    /// Kinds whose check got no usable answer, with its error.
    outage: HashMap<KindName, String>,
}

impl Answers {
    /// Notes what an error or a status says about the key.
    fn note(&mut self, kind: &KindName, obs: &Observation) {
        match obs {
            Observation::Error { class, .. } => match class {
                ErrorClass::RateLimited | ErrorClass::Unavailable => self.throttled = true,
                ErrorClass::Auth => self.auth_failed = Some(kind.clone()),
                _ => {}
            },
            Observation::Status { .. } => self.any_answer = true,
        }
    }
}

impl Core {
    /// Takes a finished request's answers: decides each payment, plans its next check,
    /// learns from final ones, and reacts to throttling and refused keys.
    pub fn complete(&mut self, done: &Completion) -> Completed {
        let now = done.done_at;
        let p = done.pool;
        if self.in_flight >= MAX_TOTAL_IN_FLIGHT {
            // Keys held by the total bound, not their own, may go on now.
            self.wakes.release_held();
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.pools[p].in_flight = self.pools[p].in_flight.saturating_sub(1);
        self.touch(p);
        let used_before = self.pools[p].budget.used(now);
        self.pools[p].budget.release(now);
        let mut out = Completed {
            ledger: done.ledger.map(|l| (l, now)),
            ..Completed::default()
        };
        let mut seen = Answers::default();
        for (i, (pk, obs)) in done.pks.iter().zip(&done.observations).enumerate() {
            match self.entries.remove(pk) {
                Some(e) => self.answered(i, e, obs, done, &mut seen, &mut out),
                // Watched after its ladder, or cancelled meanwhile.
                None => self.answered_watched(i, *pk, obs, done, &mut seen, &mut out),
            }
        }
        if let Some(kind) = seen.list_kind.take() {
            self.listing_answered(p, &kind, done, &seen);
        }
        let pool = &mut self.pools[p];
        for name in &seen.answered_kinds {
            pool.outage.remove(name);
        }
        pool.outage.extend(std::mem::take(&mut seen.outage));
        self.pause_if_throttled(p, done, &seen, used_before);
        self.note_refused(p, now, seen);
        out
    }

    /// The answer for a payment under reconciliation (or one no longer held: dropped).
    fn answered_watched(
        &mut self,
        i: usize,
        pk: PaymentKey,
        obs: &Observation,
        done: &Completion,
        seen: &mut Answers,
        out: &mut Completed,
    ) {
        let retry = (self.window / 10).max(1);
        let Some((rec, kind)) = self
            .watch
            .complete(pk, obs, done.sent_at, done.done_at, retry)
        else {
            return;
        };
        seen.note(&kind.name, obs);
        if matches!(obs, Observation::Status { .. }) {
            seen.answered_kinds.insert(kind.name.clone());
        }
        if rec.event.is_some() {
            out.moved.push((pk, rec.state, done.sent_at));
        }
        out.checked.push((i, kind, rec.state));
        out.records.push(rec);
    }

    /// The answer for a payment on its ladder: decides it, plans its next check (or starts
    /// its watch, or learns from its end), and records the outcome.
    fn answered(
        &mut self,
        i: usize,
        mut e: Entry,
        obs: &Observation,
        done: &Completion,
        seen: &mut Answers,
        out: &mut Completed,
    ) {
        let now = done.done_at;
        e.in_flight = false;
        if e.kind.is_list() {
            seen.list_kind = Some(e.kind.clone());
        }
        let cut_short = matches!(
            obs,
            Observation::Error {
                class: ErrorClass::Truncated,
                ..
            }
        );
        seen.truncated |= cut_short;
        self.note_answer(&e, obs, seen);
        let give_up = e.deadline + self.ladder.timeout_ms();
        // The check happened when it was sent: the provider answers for some moment
        // after that. Planning from the send keeps a slow answer from skipping a slot,
        // and a request sent before the deadline never settles it.
        let d = decide(
            e.upstream_status.as_deref(),
            obs,
            done.sent_at,
            e.deadline,
            give_up,
        );
        out.checked.push((i, e.kind.clone(), d.state));
        tracing::debug!(
            kind = %e.kind.name, id = %e.id, state = d.state.as_str(),
            upstream_status = d.upstream_status.as_deref().unwrap_or(""),
            error = d.error.as_deref().unwrap_or(""),
            "checked"
        );
        let previous_last = e.last;
        self.plan_after(&mut e, &d, done, cut_short);
        let previous_raw = e.upstream_status.clone();
        if d.upstream_status.is_some() {
            e.upstream_status = d.upstream_status.clone();
        }
        if d.answered {
            seen.answered_kinds.insert(e.kind.name.clone());
        }
        let every = self.ladder.every_at(e.jitter, now - e.t0);
        seen.min_every = Some(seen.min_every.map_or(every, |m| m.min(every)));
        let next_check_at = self.next_check_at(&e, &d, done);
        out.records.push(Outcome {
            pk: e.pk,
            checked_at: now,
            upstream_status: d.upstream_status.clone(),
            state: d.state,
            response: d.response.clone(),
            error: d.error.clone(),
            next_check_at,
            event: d.event.map(|t| EventSpec {
                event_type: t,
                previous_state: State::Pending,
                previous_upstream_status: previous_raw,
                late: false,
            }),
            changed: d.changed,
            saw_pending: d.answered && !d.state.is_final(),
            watch: None,
        });
        if d.state.is_final() {
            self.finished(&e, &d, previous_last, done, out);
        } else {
            e.gen = self.next_gen();
            self.queue(&e);
            self.entries.insert(e);
        }
    }

    /// Notes what a ladder check's answer says about its key and kind; an unknown status is
    /// logged once.
    fn note_answer(&mut self, e: &Entry, obs: &Observation, seen: &mut Answers) {
        seen.note(&e.kind.name, obs);
        match obs {
            Observation::Error { class, message, .. } => {
                if class.is_outage() {
                    seen.outage.insert(e.kind.name.clone(), message.clone());
                }
            }
            Observation::Status { raw, state, .. } => {
                // Bounded: past that many distinct unknown statuses, no more are logged.
                if state.is_none()
                    && self.unknown_logged.len() < MAX_UNKNOWN_LOGGED
                    && self
                        .unknown_logged
                        .insert((e.kind.name.clone(), raw.to_lowercase()))
                {
                    tracing::warn!(kind = %e.kind.name, id = %e.id, status = %raw, "unknown upstream status; payment stays pending (logged once per status)");
                }
            }
        }
    }

    /// Plans a payment's next check after one: from this check when it was answered; else
    /// the plan's next slot after it, later as failures pile up.
    fn plan_after(&mut self, e: &mut Entry, d: &Decision, done: &Completion, cut_short: bool) {
        let now = done.done_at;
        let was_recheck = e.recheck && e.due <= done.sent_at;
        if was_recheck {
            e.recheck = false;
        }
        let previous_last = e.last;
        if d.answered {
            e.last = Some(done.sent_at);
            e.failures = 0;
            self.plan(e);
        } else {
            // No real answer: exponential back-off, so a provider that is down is not
            // hammered, and past the deadline not retried in a loop. The last answered
            // check stays what it was: this one settles nothing. A listing cut short is no
            // fault of the provider's: the next one, larger, follows at once.
            let step = self.grid.step_ms(now - e.t0);
            let backoff = if cut_short {
                0
            } else {
                e.failures += 1;
                backoff_ms(&mut self.rng, e.failures, step)
            };
            e.last = Some(done.sent_at);
            self.plan(e);
            e.last = previous_last;
            e.due = e.due.max(now + backoff);
        }
        if e.recheck {
            // A recheck asked for while this check was in flight still stands.
            let earliest = done.sent_at + self.grid.step_ms(done.sent_at - e.t0);
            e.due = e.due.min(earliest.max(now));
        }
        e.due_from = e.due.max(now);
    }

    /// The next check to record: the plan's while pending; a watch's first when it ended in
    /// a state that may still move; none when it is settled.
    fn next_check_at(&mut self, e: &Entry, d: &Decision, done: &Completion) -> Option<SchedMs> {
        if !d.state.is_final() {
            return Some(e.due);
        }
        if !e.kind.watches(d.state) {
            return None;
        }
        let start = WatchStart {
            pk: e.pk,
            kind: e.kind.clone(),
            id: e.id.clone(),
            pool: e.pool.index(),
            started: e.t0,
            state: d.state,
            ended: d.state,
            upstream_status: d
                .upstream_status
                .clone()
                .or_else(|| e.upstream_status.clone()),
            seen: done.sent_at,
        };
        self.watch.start(start, None, done.done_at)
    }

    /// Learns from a payment its ladder ended: when it flipped, or that it never did.
    fn finished(
        &mut self,
        e: &Entry,
        d: &Decision,
        previous_last: Option<SchedMs>,
        done: &Completion,
        out: &mut Completed,
    ) {
        // A timeout's own check saw the payment still pending at the deadline.
        let evidence = if d.state == State::TimedOut {
            Evidence::of(&self.grid, e.t0, Some(done.sent_at), None)
        } else {
            Evidence::of(&self.grid, e.t0, previous_last, Some(done.sent_at))
        };
        self.observe(e.model, e.t0, evidence);
        self.models[e.model].fresh += 1;
        out.finished.push((e.pk, d.state, done.sent_at));
        if d.state == State::TimedOut {
            tracing::info!(kind = %e.kind.name, id = %e.id, "payment timed out");
        } else {
            tracing::info!(
                kind = %e.kind.name, id = %e.id, state = d.state.as_str(),
                upstream_status = d.upstream_status.as_deref().unwrap_or(""),
                "payment is final"
            );
        }
    }

    /// A 429 or 503 pauses the key (for its Retry-After, else an exponential back-off); a
    /// 429 although the budget had room also lowers the limit in force.
    fn pause_if_throttled(
        &mut self,
        p: PoolId,
        done: &Completion,
        seen: &Answers,
        used_before: u32,
    ) {
        let now = done.done_at;
        let pool = &mut self.pools[p];
        if !seen.throttled {
            if seen.any_answer {
                pool.throttled = 0;
            }
            return;
        }
        pool.throttled += 1;
        let pause = done
            .retry_after_ms
            .unwrap_or_else(|| backoff_ms(&mut self.rng, pool.throttled, 1000));
        pool.budget.pause(now + pause);
        if Self::rate_limited(done) {
            let limit = pool.budget.shrink(now);
            tracing::error!(
                pool = %pool.spec.name, used_before, new_limit = limit, pause_ms = pause,
                "Ninjapay answered 429 although the budget had room: another client may share the key, or the limit is lower than configured; lowering the limit in force"
            );
        } else {
            tracing::warn!(pool = %pool.spec.name, pause_ms = pause, "Ninjapay unavailable; pausing this key");
        }
    }

    /// A kind answering 401/403 is probed one request at a time until it works again.
    fn note_refused(&mut self, p: PoolId, now: SchedMs, seen: Answers) {
        let window = self.window;
        let pool = &mut self.pools[p];
        match seen.auth_failed {
            Some(kind) => {
                let entry = pool
                    .auth_failing
                    .entry(kind.clone())
                    .or_insert((now, SchedMs(0)));
                let report_every = 60_000.min(window);
                if now - entry.1 >= report_every {
                    entry.1 = now;
                    tracing::error!(kind = %kind, pool = %pool.spec.name, "Ninjapay refuses the API key (401/403); checks of this kind are paused to probes until it works again");
                }
            }
            None => {
                for name in seen.answered_kinds {
                    if pool.auth_failing.remove(&name).is_some() {
                        tracing::info!(kind = %name, "Ninjapay accepts the API key again");
                    }
                }
            }
        }
    }

    /// Whether the last completion was a 429 the budget did not expect (for telemetry).
    pub fn rate_limited(done: &Completion) -> bool {
        done.observations.iter().any(|o| {
            matches!(
                o,
                Observation::Error {
                    class: ErrorClass::RateLimited,
                    ..
                }
            )
        })
    }
}
