use super::report::bound_ms;
use super::*;
use crate::ladder::Ladder;
use crate::payment::{SchedMs, State};
use crate::policy::Grid;

#[test]
fn mix_a_draws_the_published_shares() {
    let mut rng = fastrand::Rng::with_seed(1);
    let mix = Mix::a();
    let n = 20_000;
    let draws: Vec<_> = (0..n).map(|_| mix.draw(&mut rng, 1.0)).collect();
    let approved = draws
        .iter()
        .filter(|d| matches!(d, Some((_, State::Succeeded))))
        .count() as f64
        / n as f64;
    let never = draws.iter().filter(|d| d.is_none()).count() as f64 / n as f64;
    assert!((approved - 0.6).abs() < 0.02, "{approved}");
    assert!((never - 0.3).abs() < 0.02, "{never}");
    assert!(draws
        .iter()
        .flatten()
        .all(|(ms, _)| (5_000..=550_000).contains(ms)));
}

/// The documented ladder compressed 100×: the whole ladder in 6 s.
fn compressed_ladder() -> Ladder {
    let s = |secs: u64| std::time::Duration::from_millis(secs * 10);
    Ladder::new(
        (s(20), s(25)),
        &[
            (s(3), Some(s(30))),
            (s(6), Some(s(60))),
            (s(10), Some(s(60))),
            (s(30), Some(s(60))),
            (s(60), None),
        ],
        s(600),
    )
    .unwrap()
}

#[test]
fn a_light_stream_runs_the_ladder_and_a_heavy_one_stays_within_budget() {
    // Compressed 100×, the budget per 6 s.
    let ladder = compressed_ladder();
    let scenario = |rate: f64| Scenario {
        ladder: ladder.clone(),
        budget: 1000,
        window_ms: 6_000,
        phases: vec![Phase {
            duration_ms: 36_000,
            rate,
            mix: Mix::a(),
        }],
        bursts: Vec::new(),
        warmup_ms: 6_000,
        latency_ms: (1, 3),
        seed: 3,
        oracle: false,
        backlog_share: BacklogShare::DEFAULT,
        judge_plans: false,
        others: Vec::new(),
        late: LateScenario::default(),
    };
    let light = run(&scenario(0.02)).unwrap();
    assert_eq!(light.over_budget, 0);
    assert_eq!(light.missed_deadlines, 0);
    assert!(
        light.ratio < 1.25,
        "light: {:?}",
        (light.mean_ms, light.bound_ms)
    );
    let heavy = run(&scenario(0.5)).unwrap();
    // The yardstick of a stretch at one rate is the run's own at that rate.
    assert_eq!(scenario(0.5).bound_ms_at(0.5, &Mix::a()), heavy.bound_ms);
    assert!(scenario(0.5).bound_ms_at(0.02, &Mix::a()) < heavy.bound_ms);
    assert_eq!(heavy.over_budget, 0);
    assert_eq!(heavy.missed_deadlines, 0);
    assert!(
        heavy.budget_use > 0.9,
        "spends the budget: {}",
        heavy.budget_use
    );
    assert!(
        heavy.ratio < 1.5,
        "heavy: {:?}",
        (heavy.mean_ms, heavy.bound_ms)
    );
}

#[test]
fn late_moves_are_all_seen_on_schedule_when_the_spare_budget_affords_it() {
    // Compressed 100×: a light stream whose watched payments' whole schedule fits in
    // what the live payments leave.
    let run_with = |schedule: Option<Vec<i64>>| {
        let mut sc = Scenario::steady(Mix::a(), 0.05, 6_000, 36_000, 11);
        sc.ladder = compressed_ladder();
        sc.window_ms = 6_000;
        sc.latency_ms = (1, 3);
        sc.late = LateScenario {
            mix: Some(LateMix {
                share: 0.5,
                ..LateMix::published()
            }),
            schedule,
            policy: LatePolicy::Learnt,
            measured_until_ms: None,
        };
        run(&sc).unwrap()
    };
    let schedule: Vec<i64> = [900, 1800, 3600, 7200, 21_600, 43_200, 86_400]
        .iter()
        .map(|s| s * 1000)
        .collect();
    let on = run_with(Some(schedule));
    let off = run_with(None);
    let l = on.late;
    assert!(l.moves >= 5, "{l:?}");
    assert_eq!((l.seen, l.seen_on_schedule), (l.moves, l.moves), "{l:?}");
    assert_eq!(l.seen_24h, l.moves, "{l:?}");
    assert_eq!(off.late.seen, 0, "nothing watches without a schedule");
    for r in [&on, &off] {
        assert_eq!(r.over_budget, 0);
        assert_eq!(r.missed_deadlines, 0);
    }
    // The live payments are not delayed by the watch.
    assert!(
        on.mean_ms <= off.mean_ms * 1.03,
        "live {} with reconciliation, {} without",
        on.mean_ms,
        off.mean_ms
    );
    // Every late check spent was a scheduled one: at most the schedule's length each.
    assert!(l.requests_per_timed_out <= 7.0 + 1e-9, "{l:?}");
}

#[test]
fn the_live_payments_draw_the_same_latencies_with_reconciliation_on_and_off() {
    // Compressed 100×, late checks made while payments arrive. Each live payment's n-th
    // check meets the same provider with them or without, so on and off compare alike.
    let run_with = |schedule: Option<Vec<i64>>| {
        let mut sc = Scenario::steady(Mix::a(), 0.05, 6_000, 36_000, 5);
        sc.ladder = compressed_ladder();
        sc.window_ms = 6_000;
        sc.budget = 400;
        sc.latency_ms = (1, 30);
        sc.late = LateScenario {
            mix: Some(LateMix {
                share: 0.5,
                ..LateMix::published()
            }),
            schedule,
            policy: LatePolicy::Learnt,
            measured_until_ms: None,
        };
        super::run::run_logging_latencies(&sc).unwrap()
    };
    // Ages that come while payments still arrive.
    let schedule: Vec<i64> = [900, 1200, 1800, 2400, 3600]
        .iter()
        .map(|s| s * 1000)
        .collect();
    let (on, on_log) = run_with(Some(schedule));
    let (_, off_log) = run_with(None);
    // Late requests went out among the live ones: drawn from the live payments' stream,
    // they would shift every live draw after them.
    assert!(on.late.requests_while_arriving > 0, "{:?}", on.late);
    let off_lat: std::collections::HashMap<(i64, u32), i64> =
        off_log.iter().map(|&(pk, n, lat)| ((pk, n), lat)).collect();
    let mut same = 0;
    for (pk, n, lat) in on_log {
        if let Some(&o) = off_lat.get(&(pk, n)) {
            assert_eq!(lat, o, "payment {pk}'s check {n}");
            same += 1;
        }
    }
    assert!(same > 1_000, "{same} live checks in both runs");
}

#[test]
fn judging_the_learnt_plans_changes_no_decision_and_the_true_mix_loses_nothing() {
    // Mix A at 0.5/s, compressed 100×.
    let stream = |judge: bool, oracle: bool| {
        let mut sc = Scenario::steady(Mix::a(), 0.5, 6_000, 30_000, 5);
        sc.ladder = compressed_ladder();
        sc.window_ms = 6_000;
        sc.latency_ms = (1, 3);
        sc.judge_plans = judge;
        sc.oracle = oracle;
        run(&sc).unwrap()
    };
    let plain = stream(false, false);
    let judged = stream(true, false);
    assert_eq!(plain.learnt_plans, None);
    // The judge reads the core's plans and decides nothing: every payment alike.
    let fates = |r: &Report| -> Vec<_> {
        r.fates
            .iter()
            .map(|f| (f.arrived, f.seen, f.ended, f.checks))
            .collect()
    };
    assert_eq!(fates(&plain), fates(&judged));
    let learnt = judged.learnt_plans.expect("judged");
    assert!((1.0..1.5).contains(&learnt), "{learnt}");
    // Told the true mix, the plans are the true mix's own.
    let told = stream(true, true).learnt_plans.expect("judged");
    assert!((told - 1.0).abs() < 1e-9, "{told}");
}

#[test]
fn kinds_on_one_key_share_its_budget_and_are_each_checked() {
    // Mix A as `p2p` and mix B as `s1`, 0.25/s each, compressed 100×.
    let mut sc = Scenario::steady(Mix::a(), 0.25, 6_000, 30_000, 4);
    sc.ladder = compressed_ladder();
    sc.window_ms = 6_000;
    sc.latency_ms = (1, 3);
    sc.others = vec![(0.25, Mix::b())];
    let r = run(&sc).unwrap();
    assert_eq!(r.over_budget, 0);
    assert_eq!(r.missed_deadlines, 0);
    assert!(r.budget_use > 0.9, "spends the budget: {}", r.budget_use);
    for stream in [0, 1] {
        let seen = r
            .fates
            .iter()
            .filter(|f| f.stream == stream && f.seen.is_some())
            .count();
        assert!(seen > 100, "stream {stream}: {seen} flips seen");
    }
    // Against the bound of both streams on the one budget, which is above mix A's
    // alone at the same total rate (B flips later).
    let grid = Grid::new(&sc.ladder);
    let a_alone = bound_ms(&grid, &[(0.5, &Mix::a().dist(&grid, 0.01))], &sc);
    assert!(r.bound_ms > a_alone, "{} vs {a_alone}", r.bound_ms);
    assert!(r.ratio < 1.5, "{:?}", (r.mean_ms, r.bound_ms));
}

#[test]
fn the_stream_recovers_after_a_burst_spread_over_minutes() {
    // 2,000 payments over five minutes on top of mix A at 0.2/s, compressed 100×.
    let min = 600; // a minute, compressed
    let mut sc = Scenario::steady(Mix::a(), 0.2, 60 * min, 35 * min, 9);
    sc.ladder = compressed_ladder();
    sc.window_ms = 6_000;
    sc.latency_ms = (1, 3);
    sc.bursts = vec![(60 * min, 2000, 5 * min, Mix::a())];
    let r = run(&sc).unwrap();
    assert_eq!(r.over_budget, 0);
    assert_eq!(r.missed_deadlines, 0);
    let mean = |from: i64, to: i64| {
        r.mean_delay_ms(|f| !f.burst && f.arrived >= SchedMs(from) && f.arrived < SchedMs(to))
            .0
    };
    let before = mean(45 * min, 60 * min);
    // The payments that arrive in the ten minutes after the burst are seen about as
    // soon as before it. A burst priced in would leave the room it saved unused, that
    // room would be missing a window later, and their checks would go late into the
    // backlog.
    let after = mean(65 * min, 75 * min);
    assert!(
        after < 6.0 * before,
        "{after:.0} ms after, {before:.0} ms before"
    );
}
