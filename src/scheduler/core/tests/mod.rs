//! Tests of the core on simulated time: a driver answers its requests.

mod accounts;
mod errors;
mod property;
mod spare;

use super::*;
use crate::config::{self, Config};
use serde_json::json;

fn core(budget: u32) -> (Core, Arc<Kind>) {
    core_sharing(budget, BacklogShare::DEFAULT)
}

fn core_sharing(budget: u32, share: BacklogShare) -> (Core, Arc<Kind>) {
    let mut raw = config::defaults();
    raw.ninjapay.api_key = Some("k".into());
    raw.ninjapay.budget_requests = Some(budget);
    raw.ninjapay.backlog_share = Some(share.get());
    // The live policy alone; reconciliation's own tests turn it on.
    raw.reconcile.after = Some(Vec::new());
    let cfg = Config::from_raw(raw).unwrap();
    let kind = cfg.kinds["p2p"].clone();
    let (cc, _) = crate::scheduler::core_config(&cfg, 1);
    (Core::new(cc, SchedMs(0)), kind)
}

fn row(pk: i64, started_at: i64, jitter_ms: i64) -> Tracked {
    Tracked {
        account: crate::account::AccountName::default(),
        pk: PaymentKey(pk),
        kind: KindName::parse("p2p").unwrap(),
        id: PaymentId::parse(&format!("T{pk}")).unwrap(),
        upstream_status: None,
        started_at: SchedMs(started_at),
        jitter_ms,
        next_check_at: None,
        last_checked_at: None,
    }
}

/// Runs the core alone on simulated time until `end`, answering "pending" after 100 ms;
/// returns each request's `(sent_at, pks)`.
fn drive(core: &mut Core, kind: &Kind, from: i64, end: i64) -> Vec<(i64, Vec<i64>)> {
    Driver::default().run(core, kind, from, end, &mut VecDeque::new())
}

/// What a run of the core keeps between calls: requests in flight, ledger rows.
#[derive(Default)]
struct Driver {
    flying: Vec<Completion>,
    key: i64,
}

impl Driver {
    /// Runs until `end`, tracking each of `arrivals` (`(at, row)`, in order) at its
    /// time; answers "pending" after 100 ms. Returns each request's `(sent_at, pks)`.
    fn run(
        &mut self,
        core: &mut Core,
        kind: &Kind,
        from: i64,
        end: i64,
        arrivals: &mut VecDeque<(i64, Tracked)>,
    ) -> Vec<(i64, Vec<i64>)> {
        let mut now = from;
        let mut sent = Vec::new();
        let mut actions = Vec::new();
        while now < end {
            while arrivals.front().is_some_and(|(at, _)| *at <= now) {
                let (_, row) = arrivals.pop_front().unwrap();
                core.track(row, SchedMs(now), false);
            }
            core.poll(SchedMs(now), &mut actions);
            for a in actions.drain(..) {
                match a {
                    Action::Send(r) => {
                        sent.push((r.sent_at.as_ms(), r.pks.iter().map(|k| k.0).collect()));
                        let observations = r
                            .pks
                            .iter()
                            .map(|_| Observation::Status {
                                raw: "pending".into(),
                                state: kind.map_status("pending"),
                                response: json!({}),
                            })
                            .collect();
                        self.flying.push(Completion {
                            pool: r.pool,
                            pks: r.pks,
                            observations,
                            retry_after_ms: None,
                            sent_at: r.sent_at,
                            done_at: SchedMs(now + 100),
                            ledger: r.ledger,
                        });
                    }
                    Action::Refill { pool, count, .. } => {
                        let key = self.key;
                        core.refilled(
                            pool,
                            Some((key..key + count as i64).map(LedgerKey).collect()),
                        );
                        self.key += count as i64;
                    }
                    Action::Record(_) => {}
                }
            }
            let next_done = self.flying.iter().map(|c| c.done_at).min();
            let wake = core
                .next_wake(SchedMs(now))
                .map(|w| w.max(SchedMs(now + 1)));
            let next_arrival = arrivals.front().map(|(at, _)| *at);
            let next = [
                next_done,
                wake,
                next_arrival.map(SchedMs),
                Some(SchedMs(now + 1000)),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(SchedMs(end));
            now = next.as_ms();
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flying)
                .into_iter()
                .partition(|c| c.done_at <= SchedMs(now));
            self.flying = rest;
            for c in due {
                core.complete(&c);
            }
            core.tick(SchedMs(now));
        }
        sent
    }
}

#[test]
fn below_the_budget_the_documented_ladder_runs_exactly() {
    let (mut core, kind) = core(1000);
    let ladder = Ladder::documented();
    core.track(row(1, 0, 21_000), SchedMs(0), false);
    let sent = drive(&mut core, &kind, 0, 700_000);
    let times: Vec<i64> = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, ladder.plan(21_000));
}

#[test]
fn once_scarce_the_ladders_table_keeps_its_steps_but_not_the_jitter() {
    let (mut core, _) = core(1000);
    core.track(row(1, 0, 24_000), SchedMs(0), false);
    let pk = PaymentKey(1);
    // Not scarce: the documented ladder, first check where its jitter put it.
    assert_eq!(core.entries[&pk].due, SchedMs(24_000));
    // Scarce, with this payment mixed onto the ladder's table (level 0.5, draw 0.9):
    // the first check at the earliest the ladder allows.
    core.pools[PoolId::DEFAULT].level = 0.5;
    let mut e = core.entries.remove(&pk).unwrap();
    e.phi = 0.9;
    core.plan(&mut e);
    assert_eq!(e.due, SchedMs(20_000));
    // And its steps after it: 3 s.
    e.last = Some(SchedMs(20_000));
    core.plan(&mut e);
    assert_eq!(e.due, SchedMs(23_000));
}

/// A replan to a cheaper level can move a payment's next check to an age already past:
/// the check is due from the replan on, and its lateness counts from there, not from a
/// time at which no plan had it due.
#[test]
fn a_check_a_replan_moved_into_the_past_is_late_only_since_the_replan() {
    let (mut core, kind) = core(1000);
    let p = PoolId::DEFAULT;
    core.track(row(1, 0, 24_000), SchedMs(0), false);
    let pk = PaymentKey(1);
    // Scarce: the first check goes later than the ladder's.
    core.pools[p].level = 50.0;
    core.replan_pool(p, SchedMs(0));
    assert!(
        core.entries[&pk].due > SchedMs(30_000),
        "{:?}",
        core.entries[&pk].due
    );
    // Back on the ladder at 30 s: the first check's age (24 s) has passed.
    core.pools[p].level = 0.0;
    core.replan_pool(p, SchedMs(30_000));
    assert_eq!(core.entries[&pk].due, SchedMs(24_000));
    let sent = drive(&mut core, &kind, 30_500, 31_000);
    let at = sent.first().expect("the check goes").0;
    assert_eq!(core.pools[p].lateness_ms.first(), Some(&(at - 30_000)));
    assert_eq!(
        core.pools[p].budget_wait_ms.first(),
        Some(&0),
        "the budget had room"
    );
}

/// A check held for the budget's room is late only from when the room came: the wait
/// before it is the budget's, counted on its own, and each check's two add up to the time
/// from its due time to its send.
#[test]
fn a_check_held_for_the_budget_is_late_only_from_when_room_came() {
    let (mut core, kind) = core(3);
    let p = PoolId::DEFAULT;
    for pk in 1..=6 {
        core.track(row(pk, 0, 24_000), SchedMs(0), false);
    }
    let mut driver = Driver::default();
    let sent = driver.run(&mut core, &kind, 0, 1_500_000, &mut VecDeque::new());
    let pool = &core.pools[p];
    assert_eq!(pool.lateness_ms.len(), sent.len());
    assert_eq!(pool.budget_wait_ms.len(), sent.len());
    assert!(
        pool.budget_wait_ms.iter().any(|w| *w > 60_000),
        "three requests a window for six payments: some wait minutes {:?}",
        pool.budget_wait_ms
    );
    // The driver wakes the core when it asks: once room comes, no check waits longer.
    assert!(
        pool.lateness_ms.iter().all(|l| *l <= 1_000),
        "{:?}",
        pool.lateness_ms
    );
}

#[test]
fn requests_that_would_see_no_flip_are_not_spent_to_fill_the_budget() {
    // Every flip comes before the first check allowed (90% at 5–15 s), the rest never
    // flip: after the first check nothing is left to see but the deadline. At 0.5/s the
    // ladder would want 6,000 requests a window, so the budget is scarce, but filling it
    // would buy nothing.
    let (mut core, kind) = core(1000);
    let early = crate::sim::Mix::Parametric(vec![crate::sim::Component::Uniform {
        share: 0.9,
        lo_s: 5.0,
        hi_s: 15.0,
        state: crate::payment::State::Succeeded,
    }]);
    let dist = early.dist(&core.grid, 1.0);
    core.assume("p2p", dist);
    let mut arrivals: VecDeque<(i64, Tracked)> = (0..1200)
        .map(|i| (i * 2_000, row(i, i * 2_000, 20_000 + i % 6 * 1000)))
        .collect();
    let sent = Driver::default().run(&mut core, &kind, 0, 40 * MIN, &mut arrivals);
    assert!(
        core.pools[PoolId::DEFAULT].level > 1.0,
        "scarce, above the ladder's table"
    );
    // The first check of each payment at 20 s, then (answered pending) its deadline.
    let mut first: HashMap<i64, i64> = HashMap::new();
    for (t, pks) in &sent {
        for pk in pks {
            first.entry(*pk).or_insert(*t - pk * 2_000);
        }
    }
    assert!(
        first.values().all(|&age| (20_000..21_000).contains(&age)),
        "{first:?}"
    );
    // The last 10 minutes: about 300 first checks and 300 deadline checks, not 980.
    let last_window = sent.iter().filter(|(t, _)| *t >= 30 * MIN).count();
    assert!(last_window < 700, "{last_window} requests in a window");
}

#[test]
fn a_scarce_budget_is_never_exceeded_and_every_deadline_is_checked() {
    let (mut core, kind) = core(100);
    // 200 payments at once: the ladder would want 7,200 requests.
    for pk in 0..200 {
        core.track(row(pk, 0, 20_000), SchedMs(0), false);
    }
    // 200 deadline checks on 100 a window take two windows; worthier checks may go
    // first, but none is later than its deadline plus the patience (two windows).
    let sent = drive(&mut core, &kind, 0, 600_000 + 2 * 600_000);
    let mut times: Vec<i64> = sent.iter().map(|(t, _)| *t).collect();
    times.sort_unstable();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[..=i].iter().filter(|&&s| s > t - 600_000).count();
        assert!(
            in_window <= 100,
            "{in_window} requests in the window ending {t}"
        );
    }
    // Every payment got its check at or after its deadline.
    for pk in 0..200 {
        let last = sent
            .iter()
            .filter(|(_, pks)| pks.contains(&pk))
            .map(|(t, _)| *t)
            .max();
        assert!(last.is_some_and(|t| t >= 600_000), "payment {pk}: {last:?}");
    }
    assert_eq!(core.pending(), 0);
}

#[test]
fn when_the_key_is_short_the_check_likeliest_to_see_a_flip_goes_first() {
    let (mut core, _) = core(1);
    let now = 2_000_000;
    // Due first, its deadline check 400 s late (the key is behind): a payment last seen
    // pending at 400 s of age, where flips are rare.
    let mut old = row(1, now - 1_000_000, 20_000);
    old.last_checked_at = Some(SchedMs(now - 600_000));
    core.track(old, SchedMs(now), true);
    // Due later: a young one never checked, where most flips happen.
    core.track(row(2, now - 30_000, 20_000), SchedMs(now), false);
    let mut out = Vec::new();
    core.poll(SchedMs(now), &mut out);
    core.refilled(PoolId::DEFAULT, Some((0..8).map(LedgerKey).collect()));
    out.clear();
    core.poll(SchedMs(now), &mut out);
    let sent: Vec<Vec<i64>> = out
        .iter()
        .filter_map(|a| match a {
            Action::Send(r) => Some(r.pks.iter().map(|k| k.0).collect()),
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        vec![vec![2]],
        "one request in budget, to the young payment"
    );
}

/// A stream of one payment every 20 s for an hour on a key of 100 requests a window,
/// and at 20 min a burst of 300 (three windows of budget); the flip ages are the
/// ladder's prior, fixed. Returns the core, the requests, and the core's state at 35 min
/// (`(pk, in the backlog)` of the payments held then).
/// A stream of `stream` payments, one every `every` ms, and [`BURST`] more at once at
/// [`BURST_AT`] (keys from [`BURST_PK`]); first checks jittered over 20–29 s.
fn burst_arrivals(every: i64, stream: i64) -> VecDeque<(i64, Tracked)> {
    let mut arrivals = VecDeque::new();
    for i in 0..stream {
        let at = i * every;
        if at == BURST_AT {
            for b in 0..BURST {
                arrivals.push_back((at, row(BURST_PK + b, at, 20_000 + b % 10 * 1000)));
            }
        }
        arrivals.push_back((at, row(i, at, 20_000 + i % 10 * 1000)));
    }
    arrivals
}

fn burst_run() -> (Core, Sent, Vec<(i64, bool)>) {
    // The stream takes 30% of this small budget for its deadline checks alone: at the
    // default share its deadline checks would queue behind its other checks and go
    // late (the bench measures the default on the real budget).
    let (mut core, kind) = core_sharing(100, BURST_SHARE);
    let prior = core.grid.ladder_prior();
    core.assume("p2p", prior);
    let mut arrivals = burst_arrivals(EVERY, STREAM);
    let mut driver = Driver::default();
    let mut sent = driver.run(&mut core, &kind, 0, 35 * MIN, &mut arrivals);
    let held = core.entries.values().map(|e| (e.pk.0, e.backlog)).collect();
    sent.extend(driver.run(&mut core, &kind, 35 * MIN, 120 * MIN, &mut arrivals));
    (core, sent, held)
}

/// Requests as `(sent_at, pks)`.
type Sent = Vec<(i64, Vec<i64>)>;

const MIN: i64 = 60_000;
const BURST_SHARE: BacklogShare = match BacklogShare::new(0.5) {
    Some(s) => s,
    None => BacklogShare::DEFAULT,
};
const BURST_AT: i64 = 20 * MIN;
const BURST_PK: i64 = 1_000_000;
const BURST: i64 = 300;
const STREAM: i64 = 180;
const EVERY: i64 = 20_000;

#[test]
fn a_burst_leaves_the_plans_of_later_payments_running() {
    let (core, sent, held) = burst_run();
    let checks_before_deadline = |pk: i64| {
        let start = pk * EVERY;
        sent.iter()
            .filter(|(t, pks)| pks.contains(&pk) && *t < start + 600_000)
            .count()
    };
    // The stream's payments from two minutes after the burst on stay on plan, out of
    // the backlog, and get checked before their deadline.
    let later: Vec<i64> = (0..STREAM)
        .filter(|pk| pk * EVERY >= BURST_AT + 2 * MIN)
        .collect();
    for (pk, backlog) in &held {
        if later.contains(pk) {
            assert!(!backlog, "payment {pk} of the stream in the backlog");
        }
    }
    let early: Vec<usize> = later
        .iter()
        .filter(|pk| **pk * EVERY < BURST_AT + 15 * MIN)
        .map(|pk| checks_before_deadline(*pk))
        .collect();
    let mean = early.iter().sum::<usize>() as f64 / early.len() as f64;
    assert!(
        mean >= 1.0,
        "stream payments get {mean:.2} checks before their deadline"
    );
    // The budget holds, and every payment, the burst's too, had its deadline check.
    let mut times: Vec<i64> = sent.iter().map(|(t, _)| *t).collect();
    times.sort_unstable();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[..=i].iter().filter(|&&s| s > t - 600_000).count();
        assert!(
            in_window <= 100,
            "{in_window} requests in the window ending {t}"
        );
    }
    let burst = (BURST_PK..BURST_PK + BURST).map(|pk| (pk, BURST_AT));
    for (pk, start) in (0..STREAM).map(|pk| (pk, pk * EVERY)).chain(burst) {
        let last = sent
            .iter()
            .filter(|(_, pks)| pks.contains(&pk))
            .map(|(t, _)| *t)
            .max();
        assert!(
            last.is_some_and(|t| t >= start + 600_000),
            "payment {pk}: {last:?}"
        );
    }
    assert_eq!(core.pending(), 0);
}

#[test]
fn a_backlog_leaves_room_for_the_payments_on_plan_and_none_without_them() {
    // 100 a window: the backlog leaves 2 free. Three payments long past their deadline,
    // in the backlog; one on plan, its first check not yet due.
    let (mut core, _) = core(100);
    let now = 3_000_000;
    for pk in 1..=3 {
        core.track(row(pk, now - 1_000_000, 20_000), SchedMs(now), false);
        core.entries.get_mut(&PaymentKey(pk)).unwrap().backlog = true;
    }
    core.track(row(9, now - 1_000, 20_000), SchedMs(now), false);
    for _ in 0..97 {
        assert!(core.pools[PoolId::DEFAULT].budget.try_acquire(SchedMs(now)));
        core.pools[PoolId::DEFAULT].budget.release(SchedMs(now));
    }
    core.tick(SchedMs(now));
    // 97 used: one more leaves 2.
    assert_eq!(
        core.peek_due(PoolId::DEFAULT, SchedMs(now)).map(|(q, _)| q),
        Some(Queue::Backlog)
    );
    assert!(core.pools[PoolId::DEFAULT].budget.try_acquire(SchedMs(now)));
    core.pools[PoolId::DEFAULT].budget.release(SchedMs(now));
    // 98 used: the last 2 wait for the payment on plan.
    assert_eq!(core.peek_due(PoolId::DEFAULT, SchedMs(now)), None);
    let mut actions = Vec::new();
    core.poll(SchedMs(now), &mut actions);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Send(_))),
        "nothing goes"
    );
    assert_eq!(
        core.next_wake(SchedMs(now)).map(|w| w > SchedMs(now)),
        Some(true),
        "no busy wake"
    );
    // Without a payment on plan, the backlog takes them.
    core.untrack(PaymentKey(9));
    core.tick(SchedMs(now));
    assert_eq!(
        core.peek_due(PoolId::DEFAULT, SchedMs(now)).map(|(q, _)| q),
        Some(Queue::Backlog)
    );
}

#[test]
fn status_tells_when_the_backlog_will_have_drained() {
    let (mut core, kind) = core_sharing(100, BURST_SHARE);
    core.assume("p2p", core.grid.ladder_prior());
    // A lighter stream than `burst_run`'s (a tenth of the budget), for as long as the
    // backlog drains, so its pace holds.
    let mut arrivals = burst_arrivals(3 * EVERY, 180 * MIN / (3 * EVERY));
    let mut driver = Driver::default();
    let mut now = 0;
    let mut estimates = Vec::new();
    let mut drained = None;
    while now < 180 * MIN && drained.is_none() {
        driver.run(&mut core, &kind, now, now + MIN, &mut arrivals);
        now += MIN;
        let st = core.status(SchedMs(now)).remove(0);
        if st.backlog == 0 && now > BURST_AT + 5 * MIN {
            drained = Some(now);
            assert_eq!(st.backlog_drains_in_ms, None);
        } else if let Some(eta) = st.backlog_drains_in_ms {
            estimates.push((now, now + eta));
        }
    }
    let drained = drained.expect("the backlog drains");
    assert!(!estimates.is_empty(), "no estimate while it drained");
    // From a window and a half after the burst on, each estimate is within a third of
    // the time the backlog really took to drain (plus two minutes of rounding).
    for (at, eta) in estimates.iter().filter(|(t, _)| *t >= BURST_AT + 15 * MIN) {
        let (left, said) = ((drained - at) as f64, (eta - at) as f64);
        assert!(
            (said - left).abs() <= left / 3.0 + 2.0 * MIN as f64,
            "at {} min: said {} min left, took {}",
            at / MIN,
            said / MIN as f64,
            left / MIN as f64
        );
    }
}

#[test]
fn the_backlog_gets_its_share_of_the_budget_and_drains() {
    let (_, sent, _) = burst_run();
    let is_burst = |pks: &Vec<i64>| pks.iter().any(|pk| *pk >= BURST_PK);
    // In each window from the burst on while it lasts, the backlog gets at least its
    // share ahead of the plans, and the stream keeps the rest.
    for w in 0..3 {
        let from = BURST_AT + 2 * MIN + w * 10 * MIN;
        let span: Vec<&(i64, Vec<i64>)> = sent
            .iter()
            .filter(|(t, _)| *t >= from && *t < from + 10 * MIN)
            .collect();
        let of_burst = span.iter().filter(|(_, pks)| is_burst(pks)).count() as f64;
        let total = span.len() as f64;
        eprintln!("window {w}: {of_burst} of {total} for the burst");
        assert!(
            of_burst >= BURST_SHARE.get() / 2.0 * total,
            "window {w}: the burst got {of_burst} of {total}"
        );
        assert!(
            total - of_burst >= 0.3 * total,
            "window {w}: the stream got {} of {total}",
            total - of_burst
        );
    }
}

#[test]
fn rechecks_are_coalesced_to_one_per_ladder_step() {
    let (mut core, kind) = core(1000);
    core.track(row(1, 0, 20_000), SchedMs(0), false);
    let mut sent = drive(&mut core, &kind, 0, 30_000);
    let before = sent.len();
    // 1,200 rechecks in 3 s (a merchant forwarding every callback, or a loop).
    let mut answers = Vec::new();
    for i in 0..1200 {
        answers.push(core.recheck(PaymentKey(1), SchedMs(30_000 + i * 2)));
    }
    assert!(answers.iter().all(|a| a.is_some()));
    sent.extend(drive(&mut core, &kind, 33_000, 40_000));
    let during = sent[before..].iter().filter(|(t, _)| *t < 40_000).count();
    // The ladder checks every 3 s here: a recheck adds at most one per step.
    assert!(
        during <= 6,
        "{during} checks in 10 s: {:?}",
        &sent[before..]
    );
    assert_eq!(
        core.recheck(PaymentKey(99), SchedMs(40_000)),
        None,
        "not held"
    );
}

/// A restart during a lull: the evidence rebuilt from the long memory outlives the
/// first refits although nothing arrives (a rate of 0 must not shrink it to two lifetimes).
#[test]
fn a_lull_does_not_shorten_the_learners_memory() {
    let (mut core, _) = core(1000);
    let life = core.life_ms();
    let memory = core.memory_ms();
    let mut n = 0;
    let mut started = -memory + 1000;
    while started < -1000 {
        core.learn(
            &AccountName::default(),
            &KindName::parse("p2p").unwrap(),
            SchedMs(started),
            Some(SchedMs(started + 5_000)),
            Some(SchedMs(started + 40_000)),
        );
        started += 997;
        n += 1;
    }
    assert!(n > 1000, "{n}");
    let m = core.model_of[&(AccountName::default(), KindName::parse("p2p").unwrap())];
    for now in (1..20).map(|i| i * (life / 4)) {
        core.tick(SchedMs(now));
    }
    // Some of it aged past the horizon during the lull (almost five lifetimes): not more.
    let kept = core.models[m].learner.len();
    let aged = (n as i64 * (5 * life) / memory) as usize + 2;
    assert!(kept + aged >= n, "kept {kept} of {n}");
}

/// The set of unknown statuses remembered (each logged once) is bounded.
#[test]
fn unknown_statuses_remembered_are_bounded() {
    let (mut core, _) = core(1000);
    core.track(row(1, 0, 20_000), SchedMs(0), false);
    for i in 0..(MAX_UNKNOWN_LOGGED as i64 + 50) {
        core.complete(&Completion {
            pool: PoolId::DEFAULT,
            pks: vec![PaymentKey(1)],
            observations: vec![Observation::Status {
                raw: format!("odd{i}"),
                state: None,
                response: json!({}),
            }],
            retry_after_ms: None,
            sent_at: SchedMs(1_000 + i),
            done_at: SchedMs(1_000 + i),
            ledger: None,
        });
    }
    assert_eq!(core.unknown_logged.len(), MAX_UNKNOWN_LOGGED);
}
