//! Late checks out of the spare budget: the room they take is what the live payments are
//! taken to want over the next window, not what they happened to send over the last;
//! where the spare budget affords the whole schedule, its due checks go in their turn.

use super::*;

const WINDOW: i64 = 600_000;

/// A core with a budget of `budget` per 10 minutes, reconciliation on its default
/// schedule, and one timed-out payment started at 0, last seen unmoved at half of `next`
/// (its age before on the schedule) and its late check due at `next` (on the schedule, so
/// not a merchant's recheck, and where a replan at the lowest price puts it again).
fn watching(budget: u32, next: i64) -> Core {
    let mut raw = config::defaults();
    raw.ninjapay.api_key = Some("k".into());
    raw.ninjapay.budget_requests = Some(budget);
    let cfg = Config::from_raw(raw).unwrap();
    let (cc, _) = crate::scheduler::core_config(&cfg, 1);
    let mut core = Core::new(cc, SchedMs(0));
    assert_eq!(core.window, WINDOW);
    let row = Watched {
        pk: PaymentKey(1),
        account: crate::account::AccountName::default(),
        kind: KindName::parse("p2p").unwrap(),
        id: PaymentId::parse("T1").unwrap(),
        state: State::TimedOut,
        upstream_status: Some("pending".into()),
        started_at: SchedMs(0),
        next_check_at: SchedMs(next),
        seen_at: Some(SchedMs(next / 2)),
        ended_state: State::TimedOut,
    };
    core.watch(row, SchedMs(0));
    assert_eq!(core.watched(), 1);
    core
}

/// The live payments sent `usual` requests a window for hours, then `last` in the last
/// window, all of them a minute before `now`, answered at once.
fn live_history(core: &mut Core, usual: f64, last: u32, now: i64) {
    let p = PoolId::new(0);
    let pool = &mut core.pools[p];
    let mut t = 0;
    while t < now - WINDOW {
        pool.live_pace.observe(usual, SchedMs(t), WINDOW);
        t += 1000;
    }
    let sent = SchedMs(now - 60_000);
    for _ in 0..last {
        assert!(pool.budget.try_acquire(sent));
        pool.budget.release(sent);
        pool.live_sent.push_back(sent);
    }
}

/// Polls at `now` (granting ledger rows as asked); whether a late check went out.
fn late_check_sent(core: &mut Core, now: i64) -> bool {
    let mut actions = Vec::new();
    let mut sent = false;
    for _ in 0..2 {
        core.poll(SchedMs(now), &mut actions);
        for a in actions.drain(..) {
            match a {
                Action::Send(r) => sent |= r.pks == [PaymentKey(1)],
                Action::Refill { pool, count, .. } => {
                    core.refilled(pool, Some((0..count as i64).map(LedgerKey).collect()))
                }
                Action::Record(_) => {}
            }
        }
    }
    sent
}

/// A window in which the live payments sent half their usual pace leaves that half for
/// late checks only if that pace is what they usually send: the next window's live
/// requests owe nothing to the last one's dip, and a late request holds its room for a
/// whole window, so it would take room the live checks want back within minutes.
#[test]
fn a_dip_in_the_live_pace_is_not_room_for_late_checks() {
    let now = 12 * WINDOW;
    let next = 2 * 3_600_000;
    let mut core = watching(100, next);
    live_history(&mut core, 90.0, 45, now);
    assert!(!late_check_sent(&mut core, now), "a dip taken as room");

    // The same last window where the live payments always send that little: room.
    let mut core = watching(100, next);
    live_history(&mut core, 45.0, 45, now);
    assert!(late_check_sent(&mut core, now), "room left unused");
}

/// Where the spare budget affords the whole schedule, a spurt of live requests does not
/// hold a due scheduled check past its age: it goes in its turn, within the limiter.
/// Before the watch is priced (the spare budget unknown), the same spurt holds it.
#[test]
fn a_spurt_does_not_hold_a_scheduled_check_the_spare_budget_affords() {
    let now = 12 * WINDOW;
    let next = 2 * 3_600_000;
    let mut core = watching(100, next);
    live_history(&mut core, 45.0, 95, now);
    assert!(
        !late_check_sent(&mut core, now),
        "live first while unpriced"
    );

    let mut core = watching(100, next);
    live_history(&mut core, 45.0, 95, now);
    core.tick(SchedMs(now));
    assert!(core.watch.affords_schedule(0));
    // A burst the budget holds a pile of is the live payments' first.
    core.pools[PoolId::new(0)].piled = true;
    assert!(
        !late_check_sent(&mut core, now),
        "taken from a burst's pile"
    );
    core.pools[PoolId::new(0)].piled = false;
    core.wakes.touch_all();
    assert!(late_check_sent(&mut core, now), "held behind the spurt");
}

/// Where the spare budget affords the schedule, a scheduled check and a live one are
/// chosen earliest due first: the late check never goes ahead of a live check due before
/// it (the order of the sends is the order they take the budget's room in).
#[test]
fn a_scheduled_check_goes_ahead_only_of_live_checks_due_after_it() {
    // The watched payment's next age on the schedule is 2 h; a live payment's first
    // check comes 20 s after its start.
    let late_due = 2 * 3_600_000;
    let now = late_due + 10_000;
    let live = |due: i64| Tracked {
        account: crate::account::AccountName::default(),
        pk: PaymentKey(2),
        kind: KindName::parse("p2p").unwrap(),
        id: PaymentId::parse("T2").unwrap(),
        upstream_status: None,
        started_at: SchedMs(due - 20_000),
        jitter_ms: 0,
        next_check_at: None,
        last_checked_at: None,
    };
    for (live_due, first) in [(late_due - 1, PaymentKey(2)), (late_due + 1, PaymentKey(1))] {
        let mut core = watching(100, late_due);
        live_history(&mut core, 45.0, 95, now);
        core.tick(SchedMs(now));
        assert!(core.watch.affords_schedule(0));
        assert_eq!(
            core.watch.due_on_schedule(0, SchedMs(now)),
            Some(SchedMs(late_due))
        );
        core.track(live(live_due), SchedMs(now), false);
        assert_eq!(core.entries[&PaymentKey(2)].due.as_ms(), live_due);
        let mut sent = Vec::new();
        let mut actions = Vec::new();
        for _ in 0..2 {
            core.poll(SchedMs(now), &mut actions);
            for a in actions.drain(..) {
                match a {
                    Action::Send(r) => sent.extend(r.pks),
                    Action::Refill { pool, count, .. } => {
                        core.refilled(pool, Some((0..count as i64).map(LedgerKey).collect()))
                    }
                    Action::Record(_) => {}
                }
            }
        }
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[0], first, "live due at {live_due}, late at {late_due}");
    }
}
