//! Accounts in the core: each payment goes out on its own account's key, an unknown
//! account's payment is not polled, and flip ages are learnt per account, from the kind's
//! estimate across accounts while an account's own evidence is scarce.

use super::*;
use crate::config::RawAccount;

fn two_accounts() -> (Core, Arc<Kind>) {
    let mut raw = config::defaults();
    raw.ninjapay.api_key = Some("k-default".into());
    raw.reconcile.after = Some(Vec::new());
    raw.accounts.insert(
        "shop2".into(),
        RawAccount {
            api_key: Some("k-shop2".into()),
            budget_requests: Some(500),
            ..RawAccount::default()
        },
    );
    let cfg = Config::from_raw(raw).unwrap();
    let kind = cfg.kinds["p2p"].clone();
    let (cc, _) = crate::scheduler::core_config(&cfg, 1);
    (Core::new(cc, SchedMs(0)), kind)
}

/// A core over `raw` whose account `default` has its own key, as has each of `accounts`
/// (name, budget; `None`: `[ninjapay]`'s).
fn core_of(
    mut raw: config::Raw,
    accounts: impl IntoIterator<Item = (String, Option<u32>)>,
) -> Core {
    raw.ninjapay.api_key = Some("k-default".into());
    for (name, budget_requests) in accounts {
        raw.accounts.insert(
            name.clone(),
            RawAccount {
                api_key: Some(format!("k-{name}")),
                budget_requests,
                ..RawAccount::default()
            },
        );
    }
    let cfg = Config::from_raw(raw).unwrap();
    let (cc, _) = crate::scheduler::core_config(&cfg, 1);
    Core::new(cc, SchedMs(0))
}

fn of(account: &str, pk: i64) -> Tracked {
    Tracked {
        account: AccountName::parse(account).unwrap(),
        ..row(pk, 0, 20_000)
    }
}

fn shop2() -> AccountName {
    AccountName::parse("shop2").unwrap()
}

fn p2p() -> KindName {
    KindName::parse("p2p").unwrap()
}

#[test]
fn each_payment_goes_out_on_its_own_account_s_key_with_its_own_budget() {
    let (mut core, _) = two_accounts();
    let shop2_pool = core.account_pool[&shop2()];
    assert_ne!(shop2_pool, PoolId::DEFAULT);
    assert_eq!(core.pools[shop2_pool].budget.limit(), 500);
    assert_eq!(core.pools[PoolId::DEFAULT].budget.limit(), 1000);
    core.track(of("default", 1), SchedMs(0), false);
    core.track(of("shop2", 2), SchedMs(0), false);
    let mut pools_of: HashMap<i64, HashSet<PoolId>> = HashMap::new();
    let mut actions = Vec::new();
    for now in (0..120_000).step_by(500) {
        core.poll(SchedMs(now), &mut actions);
        for a in actions.drain(..) {
            match a {
                Action::Send(r) => {
                    for pk in &r.pks {
                        pools_of.entry(pk.0).or_default().insert(r.pool);
                    }
                    core.complete(&pending_answer(r, SchedMs(now + 100)));
                }
                Action::Refill { pool, count, .. } => {
                    core.refilled(pool, Some((0..count as i64).map(LedgerKey).collect()))
                }
                Action::Record(_) => {}
            }
        }
    }
    assert_eq!(pools_of[&1], HashSet::from([PoolId::DEFAULT]));
    assert_eq!(pools_of[&2], HashSet::from([shop2_pool]));
}

/// The answer "pending" to every payment of a request, at `at`.
fn pending_answer(r: Request, at: SchedMs) -> Completion {
    Completion {
        pool: r.pool,
        observations: r
            .pks
            .iter()
            .map(|_| Observation::Status {
                raw: "pending".into(),
                state: Some(State::Pending),
                response: json!({}),
            })
            .collect(),
        pks: r.pks,
        retry_after_ms: None,
        sent_at: r.sent_at,
        done_at: at,
        ledger: r.ledger,
    }
}

#[test]
fn an_account_with_every_request_in_flight_holds_none_of_another_s() {
    let (mut core, _) = two_accounts();
    // Enough due payments in each account to fill its in-flight bound many times over.
    for pk in 0..100 {
        core.track(of("default", pk), SchedMs(0), false);
        core.track(of("shop2", 1_000 + pk), SchedMs(0), false);
    }
    let mut actions = Vec::new();
    let mut in_flight: HashMap<PoolId, usize> = HashMap::new();
    // The default account's provider never answers; shop2's answers come at once. Only
    // shop2's answers are given back, so if the bound were shared, shop2 would starve.
    for now in (25_000..60_000).step_by(1_000) {
        core.poll(SchedMs(now), &mut actions);
        for a in actions.drain(..) {
            match a {
                Action::Send(r) => {
                    *in_flight.entry(r.pool).or_default() += 1;
                    if r.pool != PoolId::DEFAULT {
                        core.complete(&pending_answer(r, SchedMs(now)));
                    }
                }
                Action::Refill { pool, count, .. } => {
                    core.refilled(pool, Some((0..count as i64).map(LedgerKey).collect()))
                }
                Action::Record(_) => {}
            }
        }
    }
    let shop2_pool = core.account_pool[&shop2()];
    assert_eq!(in_flight[&PoolId::DEFAULT], core.max_in_flight);
    assert!(in_flight[&shop2_pool] >= 100, "{in_flight:?}");
}

#[test]
fn a_payment_of_an_account_no_longer_configured_is_not_polled() {
    let (mut core, _) = two_accounts();
    core.track(of("shop9", 1), SchedMs(0), false);
    assert_eq!(core.pending(), 0);
    core.track(of("shop2", 2), SchedMs(0), false);
    assert_eq!(core.pending(), 1);
}

/// Feeds `n` finished payments of `account` flipping at `flip_ms` of age.
fn teach(core: &mut Core, account: &AccountName, flip_ms: i64, n: i64) {
    for i in 0..n {
        let started = -3_000_000 + i * 1_000;
        core.learn(
            account,
            &p2p(),
            SchedMs(started),
            Some(SchedMs(started + flip_ms - 3_000)),
            Some(SchedMs(started + flip_ms)),
        );
    }
}

/// The median learnt flip age of an account's model, in ms.
fn median_ms(core: &Core, account: &AccountName) -> i64 {
    let m = core.model_of[&(account.clone(), p2p())];
    core.models[m].plans.dist.quantile(0.5) as i64 * core.grid.unit_ms()
}

#[test]
fn a_new_account_starts_from_the_kind_s_estimate_across_accounts() {
    let (mut core, _) = two_accounts();
    teach(&mut core, &AccountName::default(), 45_000, 2_000);
    for i in 0..4 {
        core.tick(SchedMs(i * 60_000));
    }
    let learnt = median_ms(&core, &AccountName::default());
    assert!((40_000..=50_000).contains(&learnt), "{learnt}");
    // shop2 has seen nothing yet: its first payment's model starts where the kind is.
    core.track(of("shop2", 1), SchedMs(240_000), false);
    let fresh = median_ms(&core, &shop2());
    assert!((fresh - learnt).abs() <= 3_000, "{fresh} vs {learnt}");
}

#[test]
fn accounts_made_from_the_same_estimate_share_its_plans_until_their_own_moves_them() {
    let mut raw = config::defaults();
    raw.reconcile.after = Some(Vec::new());
    let mut core = core_of(raw, ["shop2", "shop3"].map(|a| (a.to_string(), None)));
    teach(&mut core, &AccountName::default(), 45_000, 2_000);
    for i in 0..4 {
        core.tick(SchedMs(i * 60_000));
    }
    // As at a restart: both accounts' models are made from the evidence read back, from
    // the kind's estimate as it stands.
    let shop3 = AccountName::parse("shop3").unwrap();
    teach(&mut core, &shop2(), 180_000, 1);
    teach(&mut core, &shop3, 180_000, 1);
    let plans = |core: &Core, a: &AccountName| {
        core.models[core.model_of[&(a.clone(), p2p())]]
            .plans
            .clone()
    };
    let (two, three) = (plans(&core, &shop2()), plans(&core, &shop3));
    assert!(Arc::ptr_eq(&two, &three), "one set of plans, solved once");
    assert!(two.dist == *core.pooled[&p2p()].current());
    // shop2's own evidence moves its estimate: it solves plans of its own.
    teach(&mut core, &shop2(), 180_000, 2_000);
    core.tick(SchedMs(300_000));
    assert!(!Arc::ptr_eq(&plans(&core, &shop2()), &three));
    assert!((170_000..=190_000).contains(&median_ms(&core, &shop2())));
}

#[test]
fn two_accounts_with_different_flip_ages_each_learn_their_own() {
    let (mut core, _) = two_accounts();
    teach(&mut core, &AccountName::default(), 45_000, 2_000);
    teach(&mut core, &shop2(), 180_000, 2_000);
    for i in 0..4 {
        core.tick(SchedMs(i * 60_000));
    }
    let ours = median_ms(&core, &AccountName::default());
    let theirs = median_ms(&core, &shop2());
    assert!((40_000..=50_000).contains(&ours), "default {ours}");
    assert!((170_000..=190_000).contains(&theirs), "shop2 {theirs}");
}

#[test]
fn the_wake_index_is_never_later_than_every_key_looked_at_afresh() {
    let mut raw = config::defaults();
    raw.ninjapay.budget_requests = Some(200);
    let mut core = core_of(raw, (1..4).map(|a| (format!("a{a}"), Some(100 * a))));
    let mut rng = fastrand::Rng::with_seed(11);
    let accounts = ["default", "a1", "a2", "a3"];
    let mut flying: Vec<Completion> = Vec::new();
    let mut actions = Vec::new();
    let (mut now, mut pk, mut key) = (0i64, 0i64, 0i64);
    while now < 900_000 {
        if rng.f64() < 0.05 {
            pk += 1;
            let account = accounts[rng.usize(0..accounts.len())];
            core.track(of(account, pk), SchedMs(now), false);
        }
        if rng.f64() < 0.002 && pk > 0 {
            core.recheck(PaymentKey(rng.i64(1..=pk)), SchedMs(now));
        }
        if now % 1_000 == 0 {
            core.tick(SchedMs(now));
        }
        let (done, rest): (Vec<_>, Vec<_>) =
            flying.drain(..).partition(|c| c.done_at <= SchedMs(now));
        flying = rest;
        for c in done {
            core.complete(&c);
        }
        // Until nothing more goes: refills come back at once, as the driver's do after
        // its next event.
        loop {
            core.poll(SchedMs(now), &mut actions);
            if actions.is_empty() {
                break;
            }
            for a in actions.drain(..) {
                match a {
                    Action::Send(r) => {
                        let at = SchedMs(now + rng.i64(5..3_000));
                        flying.push(pending_answer(r, at));
                    }
                    Action::Refill { pool, count, .. } => {
                        let keys = (key..key + count as i64).map(LedgerKey).collect();
                        core.refilled(pool, Some(keys));
                        key += count as i64;
                    }
                    Action::Record(_) => {}
                }
            }
        }
        let indexed = core.next_wake(SchedMs(now));
        let afresh = core
            .pools
            .ids()
            .filter_map(|p| core.pool_wake(p, SchedMs(now)))
            .min();
        if let Some(fresh) = afresh {
            assert!(
                indexed.is_some_and(|w| w <= fresh.max(SchedMs(now))),
                "at {now}: the index wakes at {indexed:?}, a fresh look at {fresh:?}"
            );
        }
        now += rng.i64(1..400);
    }
    assert!(pk > 100);
}

#[test]
fn each_account_reports_its_own_payments_under_reconciliation() {
    let mut core = core_of(config::defaults(), [("shop2".to_string(), None)]);
    let now = SchedMs(3_600_000);
    for (pk, account) in [(1, "default"), (2, "shop2"), (3, "shop2")] {
        let watched = Watched {
            pk: PaymentKey(pk),
            account: AccountName::parse(account).unwrap(),
            kind: p2p(),
            id: PaymentId::parse(&format!("T{pk}")).unwrap(),
            state: State::TimedOut,
            upstream_status: Some("pending".into()),
            started_at: SchedMs(3_000_000),
            next_check_at: SchedMs(3_900_000),
            seen_at: None,
            ended_state: State::TimedOut,
        };
        core.watch(watched, now);
    }
    let watched_of = |core: &mut Core, pool: PoolId| {
        let status = core.status(now);
        let s = status
            .iter()
            .find(|s| s.name == core.pools[pool].spec.name)
            .unwrap();
        s.kinds
            .iter()
            .find(|k| k.kind == p2p())
            .unwrap()
            .late
            .watched
    };
    let shop2_pool = core.account_pool[&shop2()];
    assert_eq!(watched_of(&mut core, PoolId::DEFAULT), 1);
    assert_eq!(watched_of(&mut core, shop2_pool), 2);
}

/// With many keys a tick prices a share of them in turn, and every key within a round: a
/// key whose payments come at any point of the turn is priced for them within
/// `PRICE_ROUND_TICKS` ticks.
#[test]
fn with_many_keys_each_is_priced_within_a_round_of_ticks() {
    let keys = 3 * PRICED_PER_TICK.max(PRICE_ROUND_TICKS);
    let mut raw = config::defaults();
    raw.ninjapay.budget_requests = Some(10);
    raw.reconcile.after = Some(Vec::new());
    let mut core = core_of(raw, (1..keys).map(|a| (format!("a{a}"), Some(10))));
    let name = |a: usize| {
        if a == 0 {
            "default".to_string()
        } else {
            format!("a{a}")
        }
    };
    // Part of a turn first, so the payments come mid-round.
    let mut now = 0;
    for _ in 0..2 {
        core.tick(SchedMs(now));
        now += 1_000;
    }
    let mut pk = 0;
    for a in 0..keys {
        for _ in 0..30 {
            pk += 1;
            core.track(
                Tracked {
                    started_at: SchedMs(now),
                    ..of(&name(a), pk)
                },
                SchedMs(now),
                false,
            );
        }
    }
    core.tick(SchedMs(now));
    let scarce = core
        .pools
        .ids()
        .filter(|&p| core.pools[p].level > 0.0)
        .count();
    assert!(
        scarce < keys,
        "one tick priced every key: {scarce} of {keys}"
    );
    for _ in 1..PRICE_ROUND_TICKS {
        now += 1_000;
        core.tick(SchedMs(now));
    }
    for p in core.pools.ids() {
        assert!(
            core.pools[p].level > 0.0,
            "key {} not priced within {PRICE_ROUND_TICKS} ticks",
            p.index()
        );
    }
}

/// With many accounts a refit fits a share of their models each tick, and every one within
/// `FIT_ROUND_TICKS` ticks of the round's start.
#[test]
fn with_many_accounts_every_model_is_refit_within_a_round_of_ticks() {
    let accounts = 3 * FITTED_PER_TICK.max(FIT_ROUND_TICKS);
    let mut raw = config::defaults();
    raw.reconcile.after = Some(Vec::new());
    let mut core = core_of(raw, (1..accounts).map(|a| (format!("a{a}"), None)));
    let names: Vec<AccountName> = (0..accounts)
        .map(|a| match a {
            0 => AccountName::default(),
            a => AccountName::parse(&format!("a{a}")).unwrap(),
        })
        .collect();
    for name in &names {
        teach(&mut core, name, 45_000, 200);
    }
    let learnt = |core: &Core| {
        names
            .iter()
            .filter(|n| (40_000..=50_000).contains(&median_ms(core, n)))
            .count()
    };
    assert_eq!(learnt(&core), 0, "nothing fitted yet");
    let refit_every = (core.window / 20).max(1);
    let mut now = refit_every;
    core.tick(SchedMs(now));
    let first = learnt(&core);
    assert!(
        first > 0 && first < accounts,
        "{first} of {accounts} at once"
    );
    for _ in 1..FIT_ROUND_TICKS {
        now += 1_000;
        core.tick(SchedMs(now));
    }
    assert_eq!(learnt(&core), accounts, "every model within the round");
}

/// Under the bound on requests in flight across all keys, an answer lets the keys that
/// bound held go on, and only those: visiting every key on every answer would cost a
/// thousand accounts more than their checks.
#[test]
fn an_answer_at_the_total_bound_wakes_the_keys_it_held_and_no_other() {
    let mut raw = config::defaults();
    raw.reconcile.after = Some(Vec::new());
    raw.ninjapay.max_in_flight = Some(64);
    // 20 busy keys of 64 in flight each would make 1,280: the total bound holds some.
    let busy: Vec<String> = (1..20).map(|i| format!("busy{i}")).collect();
    let mut core = core_of(
        raw,
        busy.iter()
            .map(|n| (n.clone(), None))
            .chain([("idle".to_string(), None)]),
    );
    for (a, account) in std::iter::once("default")
        .chain(busy.iter().map(String::as_str))
        .enumerate()
    {
        for j in 0..100 {
            core.track(of(account, (a * 1_000 + j) as i64), SchedMs(0), false);
        }
    }
    let mut actions = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..4 {
        core.poll(SchedMs(25_000), &mut actions);
        for a in actions.drain(..) {
            match a {
                Action::Send(r) => sent.push(r),
                Action::Refill { pool, count, .. } => {
                    core.refilled(pool, Some((0..count as i64).map(LedgerKey).collect()))
                }
                Action::Record(_) => {}
            }
        }
    }
    assert_eq!(sent.len(), MAX_TOTAL_IN_FLIGHT);
    let held: Vec<usize> = core.wakes.held.clone();
    let idle = core.account_pool[&AccountName::parse("idle").unwrap()].index();
    assert!(!held.is_empty() && !held.contains(&idle), "{held:?}");
    // One answer: the keys held are visited, and the idle one is not.
    let r = sent.pop().unwrap();
    let answered = r.pool.index();
    core.complete(&pending_answer(r, SchedMs(25_100)));
    assert!(!core.wakes.all);
    let mut touched = core.wakes.touched.clone();
    touched.sort_unstable();
    let mut expected: Vec<usize> = held.iter().copied().chain([answered]).collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(touched, expected);
    // The slot goes to a held key (or the answered one), and the bound holds.
    core.poll(SchedMs(25_100), &mut actions);
    let again: Vec<PoolId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(r) => Some(r.pool),
            _ => None,
        })
        .collect();
    assert_eq!(again.len(), 1);
    assert!(expected.contains(&again[0].index()));
}
