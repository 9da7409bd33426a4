//! The core's error paths on simulated time: 429/503 pauses, an unexpected 429, refused
//! keys, a listing cut short.

use super::*;

/// A core and what its requests need: ledger rows as it asks for them.
pub(super) struct Rig {
    pub(super) core: Core,
    pub(super) kind: Arc<Kind>,
    keys: i64,
}

impl Rig {
    pub(super) fn new(budget: u32) -> Self {
        let (core, kind) = core(budget);
        Rig {
            core,
            kind,
            keys: 0,
        }
    }

    /// A core whose payments are of `kind` (a preset).
    pub(super) fn of_kind(budget: u32, kind: &str) -> Self {
        let mut rig = Self::new(budget);
        rig.kind = rig.core.kinds[kind].clone();
        rig
    }

    /// Polls at `now`, committing the ledger rows the core asks for; the requests sent.
    pub(super) fn poll(&mut self, now: i64) -> Vec<Request> {
        let mut sent = Vec::new();
        // A refill lets a second poll send what the first could not.
        for _ in 0..2 {
            let mut out = Vec::new();
            self.core.poll(SchedMs(now), &mut out);
            for a in out {
                match a {
                    Action::Send(r) => sent.push(r),
                    Action::Refill { pool, count, .. } => {
                        let keys = (self.keys..self.keys + count as i64).map(LedgerKey);
                        self.core.refilled(pool, Some(keys.collect()));
                        self.keys += count as i64;
                    }
                    Action::Record(_) => {}
                }
            }
        }
        sent
    }

    /// Tracks payment `pk` of the rig's kind, started at `at` with the earliest jitter.
    pub(super) fn track(&mut self, pk: i64, at: i64) {
        let mut t = row(pk, at, 20_000);
        t.kind = self.kind.name.clone();
        self.core.track(t, SchedMs(at), false);
    }
}

/// The completion of `req` with one observation for each of its payments.
pub(super) fn answer(
    req: &Request,
    obs: impl Fn(PaymentKey) -> Observation,
    retry_after_ms: Option<i64>,
    done_at: i64,
) -> Completion {
    Completion {
        pool: req.pool,
        pks: req.pks.clone(),
        observations: req.pks.iter().map(|pk| obs(*pk)).collect(),
        retry_after_ms,
        sent_at: req.sent_at,
        done_at: SchedMs(done_at),
        ledger: req.ledger,
    }
}

pub(super) fn status(kind: &Kind, raw: &str) -> Observation {
    Observation::Status {
        raw: raw.into(),
        state: kind.map_status(raw),
        response: json!({ "status": raw }),
    }
}

pub(super) fn error(class: ErrorClass) -> Observation {
    Observation::Error {
        class,
        message: format!("{class:?}"),
        response: None,
    }
}

fn pks(sent: &[Request]) -> Vec<Vec<i64>> {
    let mut pks: Vec<Vec<i64>> = sent
        .iter()
        .map(|r| r.pks.iter().map(|k| k.0).collect())
        .collect();
    pks.sort();
    pks
}

/// A completion for payment 1 alone, sent and answered at `at`.
fn alone(obs: Observation, retry_after_ms: Option<i64>, at: i64) -> Completion {
    Completion {
        pool: PoolId::DEFAULT,
        pks: vec![PaymentKey(1)],
        observations: vec![obs],
        retry_after_ms,
        sent_at: SchedMs(at),
        done_at: SchedMs(at),
        ledger: None,
    }
}

#[test]
fn a_503_pauses_the_key_for_its_retry_after_and_keeps_its_limit() {
    let mut rig = Rig::new(1000);
    rig.track(1, 0);
    let mut second = row(2, 0, 21_000);
    second.kind = rig.kind.name.clone();
    rig.core.track(second, SchedMs(0), false);
    let sent = rig.poll(20_000);
    assert_eq!(pks(&sent), vec![vec![1]]);
    let done = answer(
        &sent[0],
        |_| error(ErrorClass::Unavailable),
        Some(5_000),
        20_100,
    );
    assert!(!Core::rate_limited(&done));
    let out = rig.core.complete(&done);
    assert_eq!(
        out.records[0].state,
        State::Pending,
        "a 503 settles nothing"
    );
    let st = rig.core.status(SchedMs(20_100)).remove(0);
    assert_eq!(st.paused_until, Some(SchedMs(25_100)));
    assert_eq!(
        st.budget_effective, st.budget_limit,
        "a 503 keeps the limit"
    );
    // Payment 2 is due at 21 s, but the key waits out the Retry-After.
    assert!(rig.poll(21_000).is_empty());
    assert!(rig.poll(25_099).is_empty());
    assert!(rig
        .core
        .next_wake(SchedMs(21_000))
        .is_some_and(|w| w >= SchedMs(25_100)));
    // Then both go: payment 1 at its next slot (23 s) or its back-off, both passed.
    assert_eq!(pks(&rig.poll(25_100)), vec![vec![1], vec![2]]);
}

#[test]
fn an_unexpected_429_pauses_the_key_and_lowers_the_limit_in_force() {
    let mut rig = Rig::new(1000);
    rig.track(1, 0);
    let mut second = row(2, 0, 21_000);
    second.kind = rig.kind.name.clone();
    rig.core.track(second, SchedMs(0), false);
    let sent = rig.poll(20_000);
    let done = answer(
        &sent[0],
        |_| error(ErrorClass::RateLimited),
        Some(2_000),
        20_100,
    );
    assert!(Core::rate_limited(&done), "counted as a budget surprise");
    rig.core.complete(&done);
    let st = rig.core.status(SchedMs(20_100)).remove(0);
    assert_eq!(st.paused_until, Some(SchedMs(22_100)));
    // No request while paused, though payment 2 is due at 21 s.
    assert!(rig.poll(21_000).is_empty());
    assert!(rig.poll(22_099).is_empty());
    assert_eq!(pks(&rig.poll(22_100)), vec![vec![2]]);
    assert_eq!(st.budget_limit, 1000);
    assert_eq!(st.budget_effective, 750, "a quarter lower");
    // Each further surprise lowers it again.
    rig.core
        .complete(&alone(error(ErrorClass::RateLimited), None, 30_000));
    assert_eq!(rig.core.status(SchedMs(30_000))[0].budget_effective, 562);
}

#[test]
fn throttling_without_retry_after_backs_off_exponentially_until_an_answer() {
    let mut rig = Rig::new(1000);
    rig.track(1, 0);
    let pause = |rig: &mut Rig, at: i64| {
        rig.core
            .complete(&alone(error(ErrorClass::Unavailable), None, at));
        rig.core.status(SchedMs(at))[0]
            .paused_until
            .map(|u| u - SchedMs(at))
    };
    // Half to all of 1 s, 2 s, 4 s.
    for (i, at) in [20_000, 30_000, 40_000].into_iter().enumerate() {
        let base = 1000 << i;
        let p = pause(&mut rig, at).expect("paused");
        assert!((base / 2..=base).contains(&p), "pause {i}: {p} ms");
    }
    // An answer resets it.
    rig.core
        .complete(&alone(status(&rig.kind, "pending"), None, 50_000));
    let p = pause(&mut rig, 60_000).expect("paused");
    assert!((500..=1000).contains(&p), "after an answer: {p} ms");
}

#[test]
fn a_refused_key_is_probed_one_request_at_a_time_until_it_works_again() {
    let mut rig = Rig::new(1000);
    for pk in 1..=20 {
        rig.track(pk, 0);
    }
    let first = rig.poll(20_000);
    assert_eq!(first.len(), 16, "up to the in-flight bound");
    for req in &first {
        let done = answer(req, |_| error(ErrorClass::Auth), None, 20_100);
        rig.core.complete(&done);
    }
    let st = rig.core.status(SchedMs(20_100)).remove(0);
    assert_eq!(st.auth_failing, vec![rig.kind.name.clone()]);
    // A minute of refusals: one probe at a time, one every 6 s (a hundredth of the window).
    let mut probes = Vec::new();
    let mut now = 20_100;
    while now < 80_100 {
        let sent = rig.poll(now);
        assert!(sent.len() <= 1, "{} requests at {now}", sent.len());
        for req in &sent {
            probes.push(req.sent_at);
            let done = answer(req, |_| error(ErrorClass::Auth), None, now + 100);
            rig.core.complete(&done);
        }
        now += 100;
    }
    assert!((9..=11).contains(&probes.len()), "probes at {probes:?}");
    assert!(
        probes.windows(2).all(|w| w[1] - w[0] >= 6_000),
        "{probes:?}"
    );
    // The key works again: the next probe's answer clears it, and the checks resume.
    let next = loop {
        let sent = rig.poll(now);
        if let Some(req) = sent.into_iter().next() {
            break req;
        }
        now += 100;
    };
    let kind = rig.kind.clone();
    rig.core.complete(&answer(
        &next,
        |_| status(&kind, "pending"),
        None,
        now + 100,
    ));
    assert!(rig.core.status(SchedMs(now + 100))[0]
        .auth_failing
        .is_empty());
    // The checks resume at their pace: more in the next probe interval than probing sends.
    let mut resumed = 0;
    for t in (now + 100..now + 6_100).step_by(100) {
        for req in rig.poll(t) {
            resumed += 1;
            rig.core
                .complete(&answer(&req, |_| status(&kind, "pending"), None, t));
        }
    }
    assert!(
        resumed > 2,
        "{resumed} checks in 6 s after the key works again"
    );
}

#[test]
fn a_listing_cut_short_asks_for_twice_as_many_at_once() {
    let mut rig = Rig::of_kind(1000, "btc");
    for pk in 1..=3 {
        rig.track(pk, 0);
    }
    let sent = rig.poll(20_000);
    assert_eq!(pks(&sent), vec![vec![1, 2, 3]], "one listing for the kind");
    let asked = sent[0].list_limit;
    assert_eq!(asked, rig.kind.list_limit(3));
    // Payment 1 is in the page; the page ended before 2 and 3 started.
    let kind = rig.kind.clone();
    let cut = |pk: PaymentKey| {
        if pk.0 == 1 {
            status(&kind, "pending")
        } else {
            error(ErrorClass::Truncated)
        }
    };
    let out = rig.core.complete(&answer(&sent[0], cut, None, 20_100));
    assert!(out.records.iter().all(|r| r.state == State::Pending));
    // The next listing, twice as large, goes at the next slot (23 s): no back-off.
    assert!(rig.poll(22_999).is_empty());
    let again = rig.poll(23_000);
    assert_eq!(pks(&again), vec![vec![1, 2, 3]]);
    assert_eq!(again[0].list_limit, 2 * asked);
    // Answered in full, the listing after it waits for the kind's cadence (3 s) too.
    let kind = rig.kind.clone();
    let done = answer(&again[0], |_| status(&kind, "pending"), None, 23_100);
    rig.core.complete(&done);
    assert!(rig.poll(26_099).is_empty());
    let later = rig.poll(26_100);
    assert_eq!(pks(&later), vec![vec![1, 2, 3]]);
    assert_eq!(later[0].list_limit, 2 * asked, "the grown page size stays");
}
