use super::*;
use crate::config::{self, Config};

/// Ladder timeout 10 s; schedule 20 s, 40 s, 60 s (last gap 20 s).
fn kinds() -> (Arc<Kind>, Arc<Kind>) {
    let cfg = Config::from_raw(config::defaults()).unwrap();
    let with = |name: &str| {
        let mut k = (*cfg.kinds[name]).clone();
        k.reconcile_after = vec![20_000, 40_000, 60_000];
        Arc::new(k)
    };
    (with("p2p"), with("btc"))
}

fn start(w: &mut Watch, kind: &Arc<Kind>, pk: i64, now: SchedMs) -> Option<SchedMs> {
    start_from(w, kind, pk, SchedMs(0), SchedMs(10_000), now)
}

/// Starts watching payment `pk` of `kind`, started at `started` and last seen unmoved at
/// `seen`.
fn start_from(
    w: &mut Watch,
    kind: &Arc<Kind>,
    pk: i64,
    started: SchedMs,
    seen: SchedMs,
    now: SchedMs,
) -> Option<SchedMs> {
    w.start(
        WatchStart {
            pk: PaymentKey(pk),
            kind: kind.clone(),
            id: PaymentId::parse(&format!("T{pk}")).unwrap(),
            pool: 0,
            started,
            state: State::TimedOut,
            ended: State::TimedOut,
            upstream_status: Some("pending".into()),
            seen,
        },
        None,
        now,
    )
}

#[test]
fn a_watch_no_spare_budget_serves_ends_unchecked_after_its_last_gap() {
    let (p2p, _) = kinds();
    let mut w = Watch::new(1, 10_000, 60_000, 600_000, LatePolicy::InTurn);
    assert_eq!(
        start(&mut w, &p2p, 1, SchedMs(10_000)),
        Some(SchedMs(20_000))
    );
    assert!(w.any_due(0, SchedMs(20_000)));
    // Never checked: nothing ends before the last age plus the last gap (80 s).
    assert!(w.tick(SchedMs(79_999)).is_empty());
    let ended = w.tick(SchedMs(80_000));
    assert_eq!(ended.len(), 1);
    let r = &ended[0];
    assert_eq!((r.state, r.next_check_at), (State::TimedOut, None));
    assert_eq!(
        r.watch,
        Some(LateCheck {
            asked: false,
            unchanged: false
        })
    );
    assert!(!w.holds(&PaymentKey(1)));
    let s = w.stats()[&(0, p2p.name.clone())];
    assert_eq!((s.watched, s.checks, s.skipped), (0, 0, 3));
}

#[test]
fn a_check_overtaken_by_later_ages_counts_them_skipped_and_plans_the_next() {
    let (p2p, _) = kinds();
    let mut w = Watch::new(1, 10_000, 60_000, 600_000, LatePolicy::InTurn);
    start(&mut w, &p2p, 1, SchedMs(10_000));
    let pk = w.pick(0, SchedMs(45_000), |_| false).unwrap();
    w.launch(&[pk]);
    let pending = Observation::Status {
        raw: "pending".into(),
        state: Some(State::Pending),
        response: serde_json::json!({"status": "pending"}),
    };
    let (r, _) = w
        .complete(pk, &pending, SchedMs(45_000), SchedMs(45_100), 1_000)
        .unwrap();
    // The 20 s check went at 45 s: the 40 s one is skipped, the next is at 60 s.
    assert_eq!(r.next_check_at, Some(SchedMs(60_000)));
    assert!(r.event.is_none());
    let s = w.stats()[&(0, p2p.name.clone())];
    assert_eq!((s.checks, s.skipped), (1, 1));
}

const MIN: i64 = 60_000;

/// The default schedule (15 m … 72 h) after a 10-minute ladder, 10-minute windows.
fn learnt_watch(pks: i64) -> Watch {
    let cfg = Config::from_raw(config::defaults()).unwrap();
    let p2p = cfg.kinds["p2p"].clone();
    assert_eq!(p2p.reconcile_after.last(), Some(&(72 * 60 * MIN)));
    let mut w = Watch::new(1, 10 * MIN, 72 * 60 * MIN, 10 * MIN, LatePolicy::Learnt);
    for pk in 1..=pks {
        start(&mut w, &p2p, pk, SchedMs(10 * MIN));
    }
    w
}

#[test]
fn with_spare_budget_for_the_whole_schedule_every_age_is_planned() {
    let mut w = learnt_watch(30);
    w.price(0, 10_000.0, SchedMs(20 * MIN));
    assert_eq!(
        w.next_due(0, SchedMs(20 * MIN)),
        Some(SchedMs(15 * MIN)),
        "the first age of the schedule"
    );
}

/// A due scheduled check goes in its turn among the live ones only where the spare
/// budget makes the whole schedule's requests: the earliest due is then offered. Just
/// short of them, the price rises and the live payments stay first; so with a budget not
/// priced yet, or nothing spare.
#[test]
fn only_a_schedule_the_spare_budget_affords_goes_in_turn() {
    let mut w = learnt_watch(30);
    assert!(
        !w.affords_schedule(0),
        "not priced yet: the spare budget unknown"
    );
    assert_eq!(w.due_on_schedule(0, SchedMs(16 * MIN)), None);
    w.price(0, 10_000.0, SchedMs(12 * MIN));
    assert!(w.affords_schedule(0));
    assert_eq!(
        w.due_on_schedule(0, SchedMs(14 * MIN)),
        None,
        "none due yet"
    );
    assert_eq!(
        w.due_on_schedule(0, SchedMs(16 * MIN)),
        Some(SchedMs(15 * MIN))
    );

    // The schedule's requests per window: thirty starts over six windows, each planned
    // every age.
    let p2p = KindName::parse("p2p").unwrap();
    let per_payment = w.models[&(p2p, State::TimedOut)]
        .plans
        .as_ref()
        .unwrap()
        .checks(0);
    let demand = 30.0 / super::pricing::START_WINDOWS as f64 * per_payment;
    let mut just = learnt_watch(30);
    just.price(0, demand, SchedMs(12 * MIN));
    assert!(just.affords_schedule(0), "the schedule's requests, just");
    let mut short = learnt_watch(30);
    short.price(0, demand * 0.95, SchedMs(12 * MIN));
    assert!(short.pricing[0].level > 0.0, "a dearer price");
    assert!(!short.affords_schedule(0), "just short: live first");
    assert_eq!(short.due_on_schedule(0, SchedMs(72 * 60 * MIN)), None);

    // Nothing watched yet prices at the lowest level, but without a spare budget that
    // affords nothing.
    let mut none = learnt_watch(0);
    none.price(0, 0.0, SchedMs(12 * MIN));
    assert_eq!(none.pricing[0].level, 0.0);
    assert!(!none.affords_schedule(0), "no spare budget");
}

#[test]
fn without_spare_budget_no_age_is_planned_and_a_spare_request_takes_the_newest_come() {
    let mut w = learnt_watch(30);
    w.price(0, 0.0, SchedMs(12 * MIN));
    // Nothing planned: only, almost a day after their last check, the payments' turn to
    // catch a move within the day, which even the last spare requests are worth.
    assert_eq!(
        w.next_due(0, SchedMs(12 * MIN)),
        Some(stale_at(SchedMs(10_000))),
        "nothing planned"
    );
    assert!(!w.any_due(0, SchedMs(14 * MIN)));
    // Past an age, a request the spare budget does make goes to a payment whose
    // unplanned age has come.
    assert!(w.any_due(0, SchedMs(16 * MIN)));
    let pk = w.pick(0, SchedMs(16 * MIN), |_| false).unwrap();
    assert!((1..=30).contains(&pk.0));
    // A spare budget that makes some requests prices between the two: fewer planned
    // checks than the schedule's, more than none.
    let mut some = learnt_watch(30);
    some.price(0, 30.0, SchedMs(12 * MIN));
    let planned = some.next_due(0, SchedMs(12 * MIN)).expect("some planned");
    assert!(
        planned > SchedMs(15 * MIN),
        "the first ages are not worth it: {planned}"
    );
}

#[test]
fn one_listing_covers_every_due_watched_payment_of_a_list_kind() {
    let (_, btc) = kinds();
    let mut w = Watch::new(1, 10_000, 60_000, 600_000, LatePolicy::Learnt);
    for pk in 1..=3 {
        start(&mut w, &btc, pk, SchedMs(10_000));
    }
    let first = w.pick(0, SchedMs(20_000), |_| false).unwrap();
    let mut members = w.members(first);
    members.sort();
    assert_eq!(members, [PaymentKey(1), PaymentKey(2), PaymentKey(3)]);
    w.launch(&members);
    assert!(!w.any_due(0, SchedMs(20_000)), "all three are in flight");
}

#[test]
fn a_merchant_s_recheck_past_the_schedule_is_one_check_then_settled() {
    let (p2p, _) = kinds();
    let mut w = Watch::new(1, 10_000, 60_000, 600_000, LatePolicy::InTurn);
    // Resumed from the database with its next check asked for at 100 s: past the
    // schedule's last age (a recheck after the watch had ended).
    let start = WatchStart {
        pk: PaymentKey(7),
        kind: p2p.clone(),
        id: PaymentId::parse("T7").unwrap(),
        pool: 0,
        started: SchedMs(0),
        state: State::TimedOut,
        ended: State::TimedOut,
        upstream_status: None,
        seen: SchedMs(60_000),
    };
    assert_eq!(
        w.start(start, Some(SchedMs(100_000)), SchedMs(100_000)),
        Some(SchedMs(100_000))
    );
    assert_eq!(w.due_recheck(0, SchedMs(100_000)), Some(PaymentKey(7)));
    w.launch(&[PaymentKey(7)]);
    let approved = Observation::Status {
        raw: "approved".into(),
        state: Some(State::Succeeded),
        response: serde_json::json!({"status": "approved"}),
    };
    let (r, _) = w
        .complete(
            PaymentKey(7),
            &approved,
            SchedMs(100_000),
            SchedMs(100_050),
            1_000,
        )
        .unwrap();
    assert_eq!((r.state, r.next_check_at), (State::Succeeded, None));
    let ev = r.event.unwrap();
    assert!(ev.late);
    assert_eq!(ev.previous_state, State::TimedOut);
    assert!(!w.holds(&PaymentKey(7)));
}

#[test]
fn the_first_late_price_jumps_and_later_ones_move_a_level_a_window() {
    let mut w = learnt_watch(30);
    // No spare budget: the first price goes straight to where the plans fit (none).
    w.price(0, 0.0, SchedMs(12 * MIN));
    let first = w.pricing[0].level;
    assert!(first > 1.0, "the first price jumps: {first}");
    // A spare budget for every check: the price falls a level a window, no faster.
    let mut old = first;
    for i in 1..=5 {
        w.price(0, 10_000.0, SchedMs((12 + 10 * i) * MIN));
        let level = w.pricing[0].level;
        assert!(
            (old - level - 1.0).abs() < 1e-9,
            "window {i}: {old} → {level}"
        );
        old = level;
    }
}

#[test]
fn a_new_late_price_replans_only_the_checks_not_yet_due() {
    let cfg = Config::from_raw(config::defaults()).unwrap();
    let p2p = cfg.kinds["p2p"].clone();
    let mut w = Watch::new(1, 10 * MIN, 72 * 60 * MIN, 10 * MIN, LatePolicy::Learnt);
    let start_at = |w: &mut Watch, pk: i64, t0: SchedMs| {
        start_from(w, &p2p, pk, t0, t0 + 10 * MIN, t0 + 10 * MIN)
    };
    // Spare budget for the whole schedule: every age planned, the first at 15 minutes.
    for pk in 1..=10 {
        start_at(&mut w, pk, SchedMs(0));
    }
    w.price(0, 10_000.0, SchedMs(10 * MIN));
    for pk in 11..=20 {
        start_at(&mut w, pk, SchedMs(5 * MIN));
    }
    // At 16 minutes the first ten are due (at 15), the others not yet (at 20).
    assert!(w.any_due(0, SchedMs(16 * MIN)));
    let due_of = |w: &Watch, pk: i64| w.entries[&PaymentKey(pk)].due;
    assert_eq!(due_of(&w, 11), SchedMs(20 * MIN));
    // The spare budget is gone: the price climbs window after window.
    let mut old = w.pricing[0].level;
    for _ in 0..60 {
        w.price(0, 0.0, SchedMs(16 * MIN));
        let level = w.pricing[0].level;
        assert!(level - old <= 1.0 + 1e-9, "{old} → {level}");
        old = level;
    }
    assert!(old > 10.0, "the price rose: {old}");
    // The due checks keep their place; the ones to come follow the new plans.
    for pk in 1..=10 {
        assert_eq!(due_of(&w, pk), SchedMs(15 * MIN), "payment {pk} was due");
        assert!(matches!(w.entries[&PaymentKey(pk)].slot, Slot::Due(..)));
    }
    for pk in 11..=20 {
        let e = &w.entries[&PaymentKey(pk)];
        assert!(
            e.parked || e.due > SchedMs(20 * MIN),
            "payment {pk} is planned again: due {} parked {}",
            e.due,
            e.parked
        );
    }
}

/// A learnt watch (the default schedule) whose evidence, up to `now`, says a fifth of the
/// watched payments move at 20–30 minutes and the rest never; and the kind `p2p`.
fn learnt_early_moves(now: SchedMs) -> (Watch, Arc<Kind>) {
    let cfg = Config::from_raw(config::defaults()).unwrap();
    let p2p = cfg.kinds["p2p"].clone();
    let mut w = Watch::new(1, 10 * MIN, 72 * 60 * MIN, 10 * MIN, LatePolicy::Learnt);
    for i in 0..1_000 {
        let started = SchedMs(now.0 - 80 * 60 * MIN + i * MIN);
        let moved = (i % 5 == 0).then(|| SchedMs(started.0 + 20 * MIN + (i % 10) * MIN));
        let seen = started.0 + if moved.is_some() { 20 } else { 72 * 60 } * MIN;
        let seen = Some(SchedMs(seen));
        w.learn(&p2p.name, State::TimedOut, started, seen, moved);
    }
    w.refit(now);
    (w, p2p)
}

/// With no planned check due, a spare request goes where the learnt late moves make an
/// unseen move of the last day likeliest: not to a payment younger than the ages where
/// moves come (its move is mostly still ahead), not to one whose moves would be more than a
/// day past, and, of the payments about as likely to hold one, to the youngest, whose move
/// is the most recent.
#[test]
fn a_spare_request_without_a_planned_check_goes_to_the_youngest_payment_likeliest_moved() {
    let now = SchedMs(100 * 60 * MIN);
    let (mut w, p2p) = learnt_early_moves(now);
    // Watched, never checked since the ladder: ages 16 min, 3 h, 10 h, 40 h.
    for (pk, age) in [(1, 16), (2, 180), (3, 600), (4, 2_400)] {
        let started = SchedMs(now.0 - age * MIN);
        start_from(
            &mut w,
            &p2p,
            pk,
            started,
            SchedMs(started.0 + 10 * MIN),
            now,
        );
    }
    // No spare budget to plan with: every check is unplanned.
    w.price(0, 0.0, now);
    assert!(w.any_due(0, now));
    assert_eq!(w.pick(0, now, |_| false), Some(PaymentKey(2)));
    // Once it is checked, the next youngest past the moves' ages.
    let (_, _, _) = w.launch(&[PaymentKey(2)]);
    assert_eq!(w.pick(0, now, |_| false), Some(PaymentKey(3)));
}

#[test]
fn watched_payments_in_one_upstream_status_hold_it_once_and_a_bounded_set_of_them() {
    let (p2p, _) = kinds();
    let mut w = Watch::new(1, 10_000, 60_000, 600_000, LatePolicy::InTurn);
    start(&mut w, &p2p, 1, SchedMs(10_000));
    start(&mut w, &p2p, 2, SchedMs(10_000));
    let status = |w: &Watch, pk: i64| w.entries[&PaymentKey(pk)].upstream_status.clone();
    let (a, b) = (status(&w, 1).unwrap(), status(&w, 2).unwrap());
    assert_eq!(&*a, "pending");
    assert!(Arc::ptr_eq(&a, &b));
    // A provider inventing statuses grows the set no further than its bound.
    for i in 0..2 * MAX_STATUSES {
        assert_eq!(
            w.status(Some(&format!("s{i}"))).as_deref(),
            Some(&*format!("s{i}"))
        );
    }
    assert_eq!(w.statuses.len(), MAX_STATUSES);
}

/// A planned check left waiting more than a window has lost the age the plan chose it
/// for: the spare budget then chooses among every waiting payment by the chance of an
/// unseen move, as when none is planned, and not by how long the check has waited.
#[test]
fn once_the_plans_are_behind_a_spare_request_goes_by_chance_not_by_the_longest_wait() {
    let t0 = SchedMs(100 * 60 * MIN);
    let (mut w, p2p) = learnt_early_moves(t0);
    // Spare budget for every age: payment 1's first check is planned at its 15 minutes.
    let started = SchedMs(t0.0 - 11 * MIN);
    start_from(&mut w, &p2p, 1, started, SchedMs(started.0 + 10 * MIN), t0);
    w.price(0, 1e9, t0);
    let due = SchedMs(started.0 + 15 * MIN);
    assert_eq!(w.pick(0, due, |_| false), Some(PaymentKey(1)));
    // Three hours on, unchecked, beside a payment of 45 minutes (its first check planned
    // at an hour): both likely moved, the younger one's move the more recent.
    let now = SchedMs(t0.0 + 3 * 60 * MIN);
    let started = SchedMs(now.0 - 45 * MIN);
    start_from(&mut w, &p2p, 2, started, SchedMs(started.0 + 10 * MIN), now);
    assert_eq!(w.pick(0, now, |_| false), Some(PaymentKey(2)));
    // Then the one left.
    let (_, _, _) = w.launch(&[PaymentKey(2)]);
    assert_eq!(w.pick(0, now, |_| false), Some(PaymentKey(1)));
}

/// A payment that may still hold a move and was last seen almost a day ago is checked
/// ahead of the plans, the earliest seen first, so that a move since its last check is
/// seen within a day; not once the day has passed (a move then is late whenever it is
/// seen), nor where the learnt moves leave it no chance.
#[test]
fn a_payment_last_seen_almost_a_day_ago_goes_first_while_its_move_can_still_be_seen_within_it() {
    let cfg = Config::from_raw(config::defaults()).unwrap();
    let p2p = cfg.kinds["p2p"].clone();
    let mut w = Watch::new(1, 10 * MIN, 72 * 60 * MIN, 10 * MIN, LatePolicy::Learnt);
    let now = SchedMs(100 * 60 * MIN);
    let ago = |m: i64| SchedMs(now.0 - m * MIN);
    // (payment, started, last seen): 1 and 2 seen 22 h and 21.5 h ago; 3 seen 25 h ago;
    // 4 an hour old, seen at 20 minutes.
    for (pk, started, seen) in [
        (1, 25 * 60, 22 * 60),
        (2, 24 * 60, 21 * 60 + 30),
        (3, 40 * 60, 25 * 60),
        (4, 60, 40),
    ] {
        start_from(&mut w, &p2p, pk, ago(started), ago(seen), now);
    }
    // Spare budget for every age.
    w.price(0, 1e9, now);
    assert!(w.any_due(0, now));
    assert_eq!(w.catch_up(0, now, |_| false), Some(PaymentKey(1)));
    assert_eq!(w.catch_up(0, now, |k| k.as_str() == "p2p"), None);
    let (_, _, _) = w.launch(&[PaymentKey(1)]);
    assert_eq!(w.catch_up(0, now, |_| false), Some(PaymentKey(2)));
    let (_, _, _) = w.launch(&[PaymentKey(2)]);
    // Payment 3's day has passed: the plans decide, and the young payment's hour has come.
    assert_eq!(w.catch_up(0, now, |_| false), None);
    assert_eq!(w.pick(0, now, |_| false), Some(PaymentKey(4)));
    // Where a request must save more delay than a missed day costs on that chance (a
    // price of 10^10 ms), it waits for the plans.
    for (level, caught) in [(10.0, Some(PaymentKey(1))), (40.0, None)] {
        let mut w = Watch::new(1, 10 * MIN, 72 * 60 * MIN, 10 * MIN, LatePolicy::Learnt);
        w.pricing[0].level = level;
        start_from(&mut w, &p2p, 1, ago(25 * 60), ago(22 * 60), now);
        assert_eq!(w.catch_up(0, now, |_| false), caught, "level {level}");
    }

    // Where the learnt moves all come in the first half hour, a payment seen at three
    // hours has no move left to catch: nothing is due for it before its schedule's ages.
    let (mut w, p2p) = learnt_early_moves(now);
    start_from(&mut w, &p2p, 5, ago(25 * 60), ago(22 * 60), now);
    w.price(0, 1e9, now);
    assert_eq!(w.catch_up(0, now, |_| false), None);
    let mut prior = Watch::new(1, 10 * MIN, 72 * 60 * MIN, 10 * MIN, LatePolicy::Learnt);
    start_from(&mut prior, &p2p, 5, ago(25 * 60), ago(22 * 60), now);
    prior.price(0, 1e9, now);
    assert_eq!(prior.catch_up(0, now, |_| false), Some(PaymentKey(5)));
}

/// The late price is set by what the spare budget leaves the plans: the requests that
/// caught up with a payment last seen almost a day ago came out of it, so they are taken
/// off the supply; the plans' own requests are not (they are what the supply bought).
#[test]
fn requests_that_caught_up_are_not_the_plans_to_count_on() {
    let now = SchedMs(12 * MIN);
    // Fifty spare requests a window cover the schedule of thirty payments watched over six
    // windows (nine ages each: 45); thirty do not.
    let priced = |caught: usize, planned: usize| {
        let mut w = learnt_watch(30);
        for _ in 0..caught {
            w.spent(0, SchedMs(now.0 - MIN), true);
        }
        for _ in 0..planned {
            w.spent(0, SchedMs(now.0 - MIN), false);
        }
        w.price(0, 50.0, now);
        (w.pricing[0].capacity, w.pricing[0].level)
    };
    let (none, level) = priced(0, 0);
    assert_eq!(none, Some(50.0));
    let (caught, dearer) = priced(20, 0);
    assert_eq!(caught, Some(30.0), "the supply less what caught up");
    assert!(
        dearer > level,
        "fewer requests for the plans: a dearer price"
    );
    assert_eq!(priced(0, 20).0, Some(50.0), "the plans' own requests");
    // Those of more than a window ago no longer count.
    let mut w = learnt_watch(30);
    w.spent(0, SchedMs(now.0 - 11 * MIN), true);
    w.price(0, 50.0, now);
    assert_eq!(w.pricing[0].capacity, Some(50.0));
}

/// A payment last seen almost a day ago goes ahead only where its chance of an unseen move
/// is about that of the likeliest other: where a young payment is far likelier to have
/// moved, that one goes first, and the older waits until its day is nearly over.
#[test]
fn catching_up_a_payment_waits_for_a_far_likelier_one_until_its_day_is_nearly_over() {
    let now = SchedMs(100 * 60 * MIN);
    let cfg = Config::from_raw(config::defaults()).unwrap();
    let p2p = cfg.kinds["p2p"].clone();
    let mut w = Watch::new(1, 10 * MIN, 72 * 60 * MIN, 10 * MIN, LatePolicy::Learnt);
    // A fifth of the watched payments move at 3 hours, one in a hundred at 20 hours.
    for i in 0..1_000 {
        let started = now.0 - 80 * 60 * MIN + i * MIN;
        let (seen, moved) = match (i % 5, i % 100) {
            (0, _) => (2 * 60, Some(3 * 60)),
            (_, 1) => (12 * 60, Some(20 * 60)),
            _ => (72 * 60, None),
        };
        let at = |m: i64| SchedMs(started + m * MIN);
        w.learn(
            &p2p.name,
            State::TimedOut,
            SchedMs(started),
            Some(at(seen)),
            moved.map(at),
        );
    }
    w.refit(now);
    let ago = |m: i64| SchedMs(now.0 - m * MIN);
    // Seen at 6 hours, 21.5 hours ago: only the moves at 20 hours may be behind it.
    start_from(&mut w, &p2p, 1, ago(27 * 60 + 30), ago(21 * 60 + 30), now);
    w.price(0, 1e9, now);
    assert_eq!(w.catch_up(0, now, |_| false), Some(PaymentKey(1)), "alone");
    // Four hours old, unchecked since the ladder: the moves at 3 hours may be behind it.
    start_from(&mut w, &p2p, 2, ago(4 * 60), ago(3 * 60 + 50), now);
    let young = w.chance_now(&w.entries[&PaymentKey(2)], now);
    let old = w.chance_now(&w.entries[&PaymentKey(1)], now);
    assert!(young > 4.0 * old, "{young} {old}");
    assert_eq!(w.catch_up(0, now, |_| false), None);
    assert_eq!(w.pick(0, now, |_| false), Some(PaymentKey(2)));
    // Minutes before its day is over, it goes.
    let late = SchedMs(now.0 + 2 * 60 * MIN + 25 * MIN);
    assert_eq!(w.catch_up(0, late, |_| false), Some(PaymentKey(1)));
}
