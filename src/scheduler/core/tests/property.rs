//! A property test: the core driven by random arrivals, answers, 429/503 (with or without
//! Retry-After), 401/403, transport faults and listings cut short never exceeds the budget,
//! never leaves a payment without its deadline check, never panics, and never checks a
//! payment more often than the ladder allows.

use super::errors::{answer, error, status, Rig};
use super::*;
use proptest::prelude::*;

/// What Ninjapay answers to one request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Pending,
    /// The payment flipped (each payment of a listing).
    Paid,
    RateLimited(Option<i64>),
    Unavailable(Option<i64>),
    Refused,
    Transport,
    /// A listing's page ended before the payments started (a single check: pending).
    CutShort,
}

fn reply() -> impl Strategy<Value = Reply> {
    let retry_after = proptest::option::of(100i64..30_000);
    prop_oneof![
        8 => Just(Reply::Pending),
        2 => Just(Reply::Paid),
        1 => retry_after.clone().prop_map(Reply::RateLimited),
        1 => retry_after.prop_map(Reply::Unavailable),
        1 => Just(Reply::Refused),
        1 => Just(Reply::Transport),
        1 => Just(Reply::CutShort),
    ]
}

/// One payment's arrival: when, its first check's jitter, and whether it is of the list
/// kind.
type Arrival = (i64, i64, bool);

fn arrivals() -> impl Strategy<Value = Vec<Arrival>> {
    prop::collection::vec(
        (0i64..300_000, 20_000i64..=25_000, prop::bool::weighted(0.2)),
        1..25,
    )
}

/// Each answer's reply and latency, used in turn (and then again).
fn replies() -> impl Strategy<Value = Vec<(Reply, i64)>> {
    prop::collection::vec((reply(), 20i64..3_000), 1..60)
}

const WINDOW: i64 = 600_000;
/// After this, Ninjapay answers every check "pending": the payments run to their ends.
const CALM_AT: i64 = 400_000;
const END: i64 = 4_000_000;

/// What a run saw.
#[derive(Default)]
struct Run {
    /// Every request's send time.
    sent: Vec<i64>,
    /// Each payment's checks' send times.
    checks: HashMap<i64, Vec<i64>>,
    /// Each payment's end: `(state, sent_at of the check that ended it)`.
    ended: HashMap<i64, (State, i64)>,
}

fn observe(rig: &Rig, list: &Kind, reply: Reply, pk: PaymentKey, in_listing: bool) -> Observation {
    let kind = if in_listing { list } else { &rig.kind };
    match reply {
        Reply::Pending => status(kind, "pending"),
        Reply::Paid => status(kind, if in_listing { "paid" } else { "approved" }),
        Reply::RateLimited(_) => error(ErrorClass::RateLimited),
        Reply::Unavailable(_) => error(ErrorClass::Unavailable),
        Reply::Refused => error(ErrorClass::Auth),
        Reply::Transport => error(ErrorClass::Transport),
        Reply::CutShort if in_listing && pk.0 % 2 == 0 => error(ErrorClass::Truncated),
        Reply::CutShort => status(kind, "pending"),
    }
}

fn simulate(budget: u32, mut arrivals: Vec<Arrival>, replies: &[(Reply, i64)]) -> (Rig, Run) {
    let mut rig = Rig::new(budget);
    let list = rig.core.kinds["btc"].clone();
    arrivals.sort_by_key(|a| a.0);
    let mut arrivals: VecDeque<(i64, Arrival)> = arrivals
        .into_iter()
        .enumerate()
        .map(|(i, a)| (i as i64, a))
        .collect();
    let mut flying: Vec<Completion> = Vec::new();
    let mut run = Run::default();
    let mut turn = 0;
    let mut now = 0;
    while now < END {
        while arrivals.front().is_some_and(|(_, (at, ..))| *at <= now) {
            let Some((pk, (at, jitter, listed))) = arrivals.pop_front() else {
                break;
            };
            let mut t = row(pk, at, jitter);
            if listed {
                t.kind = list.name.clone();
            }
            rig.core.track(t, SchedMs(now), false);
        }
        for req in rig.poll(now) {
            run.sent.push(req.sent_at.as_ms());
            for pk in &req.pks {
                run.checks
                    .entry(pk.0)
                    .or_default()
                    .push(req.sent_at.as_ms());
            }
            let (reply, latency) = if now < CALM_AT {
                turn += 1;
                replies[turn % replies.len()]
            } else {
                (Reply::Pending, 100)
            };
            let retry_after = match reply {
                Reply::RateLimited(r) | Reply::Unavailable(r) => r,
                _ => None,
            };
            let listing = req.kind.is_list();
            let obs = |pk: PaymentKey| observe(&rig, &list, reply, pk, listing);
            flying.push(answer(&req, obs, retry_after, now + latency));
        }
        let next_done = flying.iter().map(|c| c.done_at).min();
        let wake = rig
            .core
            .next_wake(SchedMs(now))
            .map(|w| w.max(SchedMs(now + 1)));
        let next_arrival = arrivals.front().map(|(_, (at, ..))| *at);
        now = ([
            next_done,
            wake,
            next_arrival.map(SchedMs),
            Some(SchedMs(now + 1000)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(SchedMs(END)))
        .as_ms();
        let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut flying)
            .into_iter()
            .partition(|c| c.done_at <= SchedMs(now));
        flying = rest;
        for c in done {
            for (pk, state, sent_at) in rig.core.complete(&c).finished {
                run.ended.insert(pk.0, (state, sent_at.as_ms()));
            }
        }
        rig.core.tick(SchedMs(now));
        if now > CALM_AT && arrivals.is_empty() && flying.is_empty() && rig.core.pending() == 0 {
            break;
        }
    }
    (rig, run)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_core_keeps_the_budget_the_deadlines_and_the_ladder_whatever_the_provider_does(
        budget in 20u32..200,
        arrivals in arrivals(),
        replies in replies(),
    ) {
        let payments = arrivals.len();
        let mut sorted = arrivals.clone();
        sorted.sort_by_key(|a| a.0);
        let (rig, run) = simulate(budget, arrivals, &replies);
        // Never over budget: no window holds more requests than the budget.
        let mut from = 0;
        for (i, t) in run.sent.iter().enumerate() {
            while run.sent[from] <= t - WINDOW {
                from += 1;
            }
            prop_assert!(i + 1 - from <= budget as usize, "{} requests in the window ending {t}", i + 1 - from);
        }
        // Every payment ended, and one that timed out had a check at or after its deadline.
        prop_assert_eq!(rig.core.pending(), 0);
        prop_assert_eq!(run.ended.len(), payments);
        let ladder = Ladder::documented();
        for (pk, &(at, _, listed)) in sorted.iter().enumerate() {
            let deadline = at + ladder.timeout_ms();
            let (state, ended_by) = run.ended[&(pk as i64)];
            if state == State::TimedOut {
                prop_assert!(ended_by >= deadline, "payment {pk} timed out by a check at {ended_by}, deadline {deadline}");
            }
            // Never more often than the ladder: the first check no earlier than the
            // documented ladder's earliest, and by any age no more checks than it plans by
            // then, give or take one: when the price falls back to the ladder, the
            // payment's next slot (by its own jitter) may follow a priced check by less
            // than a step. A listing answers for every member at the kind's cadence,
            // whatever each one's plan.
            if listed {
                continue;
            }
            let plan = ladder.plan(ladder.first_window().0);
            let before: Vec<i64> = run.checks[&(pk as i64)]
                .iter()
                .map(|t| t - at)
                .filter(|age| *age < ladder.timeout_ms())
                .collect();
            prop_assert!(before.len() <= plan.len(), "payment {pk}: {} checks before its deadline", before.len());
            for (k, age) in before.iter().enumerate() {
                let allowed = if k == 0 { plan[0] } else { plan[k - 1] };
                prop_assert!(*age >= allowed, "payment {pk}: check {k} at {age} ms; checks {before:?}, plan {plan:?}");
            }
        }
    }
}
