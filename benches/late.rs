//! Late moves: how much of what happens after the 10-minute timeout reconciliation sees,
//! out of the budget the live payments leave, on the simulator (the real core, simulated
//! time).
//!
//! The published late-flip workload: mix A, where one in six of the payments that never
//! flip in 10 minutes (5% of all) is approved late, at an age drawn log-uniformly between
//! 15 minutes and 24 hours; the default schedule (15m … 72h); one key with the real budget.
//! The measured arrivals come after a warm-up longer than a watch (100 h), so they meet the
//! watches of days of earlier payments as a running daemon does, and arrivals go on after
//! them (48 h), so their late checks compete with a live stream all the while their moves
//! come and the day after each, when they are looked for.
//! Per rate and seed, three runs on the same arrivals and flips: reconciliation off (the
//! live yardstick), on with the learnt choice of checks, and on with the checks in turn on
//! the fixed schedule (the same spare budget spread evenly). It prints, per rate, medians
//! over the seeds and their range:
//!
//! - late moves seen within the schedule, within 24 hours of the move, and (learnt) on
//!   the schedule's next check after the move; their mean detection delay; for learnt and
//!   in turn, and the bound (the dynamic program over the schedule's ages with the late
//!   requests the learnt run made per timed-out payment), and learnt over the bound;
//! - the live payments' mean delay with reconciliation over without (target ≤ 1.03), and
//!   against the live bound; and how long the live checks waited past their due time on
//!   average, on and off (what the late requests did to them, without the noise of which
//!   flips a shifted check happens to see);
//! - requests over budget and deadline checks missed (0).
//!
//! `cargo bench --bench late -- --help`.

use ninjapoll::sim::{self, LateMix, LatePolicy, LateScenario, Mix, Phase, Report, Scenario};
use std::process::ExitCode;

const HOUR: i64 = 3_600_000;
const MIN_MS: f64 = 60_000.0;

/// The default `reconcile.after`, in ms.
const SCHEDULE_S: [i64; 9] = [
    900, 1800, 3600, 7200, 21_600, 43_200, 86_400, 172_800, 259_200,
];

/// A late-flip workload: the live mix and how its unflipped payments move later.
struct Shape {
    name: &'static str,
    live: Mix,
    late: LateMix,
    about: &'static str,
}

/// The workloads `--late-shape` names.
const SHAPES: [&str; 5] = ["published", "early", "days", "heavy", "mix-b"];

/// The published workload and others the policy was not tuned on.
fn shape(name: &str) -> Option<Shape> {
    let name = *SHAPES.iter().find(|s| **s == name)?;
    let a = LateMix::published();
    let (live, late, about) = match name {
        "published" => (
            Mix::a(),
            a,
            "mix A, 1 in 6 of the unflipped approved late, log-uniform 15 min–24 h",
        ),
        "early" => (
            Mix::a(),
            LateMix {
                lo_s: 3600.0,
                hi_s: 10_800.0,
                ..a
            },
            "mix A, 1 in 6 of the unflipped approved late, log-uniform 1–3 h",
        ),
        "days" => (
            Mix::a(),
            LateMix {
                lo_s: 129_600.0,
                hi_s: 259_200.0,
                ..a
            },
            "mix A, 1 in 6 of the unflipped approved late, log-uniform 36–72 h",
        ),
        "heavy" => (
            Mix::a(),
            LateMix { share: 0.5, ..a },
            "mix A, half the unflipped approved late, log-uniform 15 min–24 h",
        ),
        "mix-b" => (
            Mix::b(),
            a,
            "mix B, 1 in 6 of the unflipped approved late, log-uniform 15 min–24 h",
        ),
        _ => return None,
    };
    Some(Shape {
        name,
        live,
        late,
        about,
    })
}

struct Args {
    shape: Shape,
    rates: Vec<f64>,
    seeds: u64,
    warmup_h: i64,
    measure_h: i64,
    tail_h: i64,
    detail: bool,
}

const HELP: &str = "late: reconciliation on the published late-flip workload

  cargo bench --bench late -- [--rate R]... [--seeds N] [--warmup H] [--measure H] [--tail H] [--late-shape S] [--detail]

  --rate R     payments per second on one key (repeatable; default 0.05 0.1 0.2 0.5 1.0)
  --seeds N    seeds per rate (default 3)
  --warmup H   hours of arrivals before the measured ones (default 100: longer than a watch, the steady state)
  --measure H  hours of measured arrivals (default 12: over two hundred late moves and thousands of
               live flips a seed at 0.1/s, so the live figures' seeds agree within a few percent)
  --tail H     hours of arrivals after the measured ones, not measured (default 48: until the day after the
               last measured move is over, so arrivals compete with every measured late check)
  --late-shape S  the workload (default published: mix A, 1 in 6 of the unflipped approved
               late at 15 min–24 h); others: early (late approvals at 1–3 h), days (at
               36–72 h), heavy (half the unflipped approved late), mix-b (mix B's live flips)
  --detail     a line per seed as well";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        shape: shape("published").ok_or("no published shape")?,
        rates: Vec::new(),
        seeds: 3,
        warmup_h: 100,
        measure_h: 12,
        tail_h: 48,
        detail: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--help" | "-h" => return Err(String::new()),
            "--rate" => a.rates.push(
                value("--rate")?
                    .parse()
                    .map_err(|e| format!("--rate: {e}"))?,
            ),
            "--seeds" => {
                a.seeds = value("--seeds")?
                    .parse()
                    .map_err(|e| format!("--seeds: {e}"))?
            }
            "--warmup" => {
                a.warmup_h = value("--warmup")?
                    .parse()
                    .map_err(|e| format!("--warmup: {e}"))?
            }
            "--measure" => {
                a.measure_h = value("--measure")?
                    .parse()
                    .map_err(|e| format!("--measure: {e}"))?
            }
            "--tail" => {
                a.tail_h = value("--tail")?
                    .parse()
                    .map_err(|e| format!("--tail: {e}"))?
            }
            "--late-shape" => {
                let name = value("--late-shape")?;
                a.shape = shape(&name).ok_or(format!("--late-shape: no shape {name:?}"))?
            }
            "--detail" => a.detail = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.rates.is_empty() {
        a.rates = vec![0.05, 0.1, 0.2, 0.5, 1.0];
    }
    if a.seeds == 0 || a.measure_h <= 0 || a.warmup_h < 0 || a.tail_h < 0 {
        return Err(
            "--seeds and --measure must be positive, --warmup and --tail not negative".into(),
        );
    }
    if a.rates
        .iter()
        .any(|r| !(0.0..=5.0).contains(r) || *r == 0.0)
    {
        return Err("--rate must be in (0, 5]".into());
    }
    Ok(a)
}

fn scenario(
    rate: f64,
    seed: u64,
    args: &Args,
    schedule: Option<Vec<i64>>,
    policy: LatePolicy,
) -> Scenario {
    let mut sc = Scenario::steady(
        args.shape.live.clone(),
        rate,
        args.warmup_h * HOUR,
        args.measure_h * HOUR,
        seed,
    );
    // Arrivals go on after the measured ones (two days by default), so that their late
    // moves (within 24 h of the start) and the day after each compete with a live stream
    // for the spare budget, as they would: a tail that ended sooner would measure the
    // watch draining with the whole budget spare.
    let measured_until = (args.warmup_h + args.measure_h) * HOUR;
    sc.phases.push(Phase {
        duration_ms: args.tail_h * HOUR,
        rate,
        mix: args.shape.live.clone(),
    });
    sc.late = LateScenario {
        mix: Some(args.shape.late),
        schedule,
        policy,
        measured_until_ms: Some(measured_until),
    };
    sc
}

/// One seed's three runs.
struct Seed {
    off: Report,
    learnt: Report,
    in_turn: Report,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `median (min–max)` of a figure over the seeds.
fn spread(seeds: &[Seed], decimals: usize, f: impl Fn(&Seed) -> f64) -> String {
    let v: Vec<f64> = seeds.iter().map(&f).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.*} ({:.*}–{:.*})",
        decimals,
        median(v),
        decimals,
        lo,
        decimals,
        hi
    )
}

fn share(seen: usize, of: usize) -> f64 {
    if of == 0 {
        1.0
    } else {
        seen as f64 / of as f64
    }
}

/// The three runs (reconciliation off, learnt, in turn) of every seed at `rate`.
fn run_seeds(rate: f64, args: &Args, schedule: &[i64]) -> anyhow::Result<Vec<Seed>> {
    let mut seeds = Vec::new();
    for seed in 1..=args.seeds {
        let run = |schedule: Option<Vec<i64>>, policy| {
            sim::run(&scenario(rate, seed, args, schedule, policy))
        };
        let r = (|| -> anyhow::Result<Seed> {
            Ok(Seed {
                off: run(None, LatePolicy::Learnt)?,
                learnt: run(Some(schedule.to_vec()), LatePolicy::Learnt)?,
                in_turn: run(Some(schedule.to_vec()), LatePolicy::InTurn)?,
            })
        })();
        match r {
            Ok(s) => {
                if args.detail {
                    let (l, t) = (&s.learnt.late, &s.in_turn.late);
                    println!(
                        "  seed {seed}: moves {} seen {}/{} 24h {}/{} on schedule {} mean {:.1}/{:.1} min; late requests while arriving {}/{} of {}/{}; req/timed-out {:.2}/{:.2}; live {:.3}x off; live wait past due {:.2}/{:.2} s, off {:.2}; budget use off {:.3} on {:.3}",
                        l.moves, l.seen, t.seen, l.seen_24h, t.seen_24h, l.seen_on_schedule,
                        l.mean_ms / MIN_MS, t.mean_ms / MIN_MS, l.requests_while_arriving,
                        t.requests_while_arriving, l.requests, t.requests,
                        l.requests_per_timed_out,
                        t.requests_per_timed_out, s.learnt.mean_ms / s.off.mean_ms,
                        s.learnt.late_mean_ms / 1000.0, s.in_turn.late_mean_ms / 1000.0,
                        s.off.late_mean_ms / 1000.0,
                        s.off.budget_use, s.learnt.budget_use
                    );
                }
                seeds.push(s)
            }
            Err(e) => return Err(e.context(format!("rate {rate} seed {seed}"))),
        }
    }
    Ok(seeds)
}

/// Prints the figures at `rate` over its seeds; whether no run went over budget or missed
/// a deadline check.
fn print_rate(rate: f64, seeds: &[Seed], schedule: &[i64], mix: &LateMix) -> bool {
    let bound =
        |s: &Seed| sim::late_bound(schedule, 600_000, mix, s.learnt.late.requests_per_timed_out);
    println!("\nrate {rate}/s");
    println!(
        "  late requests per timed-out payment  learnt {}  in turn {}  (the full schedule: 9)",
        spread(seeds, 2, |s| s.learnt.late.requests_per_timed_out),
        spread(seeds, 2, |s| s.in_turn.late.requests_per_timed_out),
    );
    println!(
        "  late moves seen        learnt {}  in turn {}  bound {}",
        spread(seeds, 3, |s| share(s.learnt.late.seen, s.learnt.late.moves)),
        spread(seeds, 3, |s| share(
            s.in_turn.late.seen,
            s.in_turn.late.moves
        )),
        spread(seeds, 3, |s| bound(s).seen),
    );
    println!(
        "  seen within 24 h       learnt {}  in turn {}",
        spread(seeds, 3, |s| share(
            s.learnt.late.seen_24h,
            s.learnt.late.moves
        )),
        spread(seeds, 3, |s| share(
            s.in_turn.late.seen_24h,
            s.in_turn.late.moves
        )),
    );
    println!(
        "  mean delay (min)       learnt {}  in turn {}  bound {}",
        spread(seeds, 1, |s| s.learnt.late.mean_ms / MIN_MS),
        spread(seeds, 1, |s| s.in_turn.late.mean_ms / MIN_MS),
        spread(seeds, 1, |s| bound(s).delay_ms / MIN_MS),
    );
    println!(
        "  learnt ÷ bound         {}",
        spread(seeds, 2, |s| s.learnt.late.mean_ms / bound(s).delay_ms),
    );
    println!(
        "  on the schedule's next check after the move  learnt {}  in turn {}",
        spread(seeds, 3, |s| share(
            s.learnt.late.seen_on_schedule,
            s.learnt.late.moves
        )),
        spread(seeds, 3, |s| share(
            s.in_turn.late.seen_on_schedule,
            s.in_turn.late.moves
        )),
    );
    println!(
        "  live mean delay, reconciliation on / off  learnt {}  in turn {}   live ratio to its bound: off {}  learnt {}",
        spread(seeds, 3, |s| s.learnt.mean_ms / s.off.mean_ms),
        spread(seeds, 3, |s| s.in_turn.mean_ms / s.off.mean_ms),
        spread(seeds, 3, |s| s.off.ratio),
        spread(seeds, 3, |s| s.learnt.ratio),
    );
    println!(
        "  live checks' mean wait past due (s)  off {}  learnt {}  in turn {}",
        spread(seeds, 2, |s| s.off.late_mean_ms / 1000.0),
        spread(seeds, 2, |s| s.learnt.late_mean_ms / 1000.0),
        spread(seeds, 2, |s| s.in_turn.late_mean_ms / 1000.0),
    );
    let over: u32 = seeds
        .iter()
        .map(|s| s.off.over_budget + s.learnt.over_budget + s.in_turn.over_budget)
        .sum();
    let missed: u32 = seeds
        .iter()
        .map(|s| s.off.missed_deadlines + s.learnt.missed_deadlines + s.in_turn.missed_deadlines)
        .sum();
    println!("  requests over budget {over}, deadline checks missed {missed} (all runs)");
    over == 0 && missed == 0
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("late: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let schedule: Vec<i64> = SCHEDULE_S.iter().map(|s| s * 1000).collect();
    let mix = args.shape.late;
    println!(
        "late moves ({}): {}; schedule 15m…72h, budget 1000/10 min, {} seeds, {} h warm-up + {} h measured + {} h more arrivals",
        args.shape.name,
        args.shape.about,
        args.seeds,
        args.warmup_h,
        args.measure_h,
        args.tail_h
    );
    println!("figures: median over the seeds (min–max); delays in minutes; 'seen' = within the schedule, '24h' = within 24 h of the move");
    let mut failed = false;
    for &rate in &args.rates {
        let seeds = match run_seeds(rate, &args, &schedule) {
            Ok(seeds) => seeds,
            Err(e) => {
                eprintln!("late: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        failed |= !print_rate(rate, &seeds, &schedule, &mix);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
