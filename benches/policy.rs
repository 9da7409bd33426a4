//! How long after a flip the shop learns of it, against the best any policy could do with
//! the same budget: the real scheduler core on simulated time (see `ninjapoll::sim`).
//!
//! For mixes A–D at 0.1 / 0.2 / 0.5 / 1.0 payments per second on one key (1,000 requests
//! per 10 minutes), after one hour of warm-up traffic from an empty state, over `--hours`
//! measured hours: mean / median / p95 delay, the bound (dynamic program, same run), their
//! ratio, budget used, requests over budget, missed deadline checks. Then two kinds with
//! different mixes on one key (against the bound for both on the one budget), a change of
//! mix (A for an hour, then B), steps of the arrival rate (up and down), a day's rise and
//! fall of the rate, and a burst (2,000 payments on top of a stream), the last four as delay
//! over time.
//!
//! Run: `cargo bench --bench policy -- --help`; e.g.
//! `cargo bench --bench policy -- --part steady --mix A --rate 0.5 --seeds 6`. The current
//! figures and the command of each are in `benches/README.md`.

use clap::{Parser, ValueEnum};
use ninjapoll::sim::{run, BacklogShare, Component, Mix, Phase, Report, Scenario};
use ninjapoll::{Ladder, SchedMs, State};
use std::time::{Duration, Instant};

const HOUR: i64 = 3_600_000;
const MIN: i64 = 60_000;

/// The policy benchmark: the real scheduler core on simulated time, one key at 1,000
/// requests per 10 minutes, against the bound (the best any policy could do with the same
/// budget, knowing the mix).
#[derive(Parser, Debug)]
#[command(name = "policy", bin_name = "cargo bench --bench policy --")]
struct Opts {
    /// Run one part only (default: every part).
    #[arg(long, value_enum)]
    part: Option<Part>,
    /// Repeat each row with this many seeds and print the median (and the ratio's range).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Measured hours of the steady streams and of two kinds on one key, after an hour of
    /// warm-up.
    #[arg(long, default_value_t = 2.0)]
    hours: f64,
    /// Steady table: only these mixes (A–D, and E–G with --edges), comma-separated.
    #[arg(long, value_delimiter = ',')]
    mix: Vec<String>,
    /// Steady table: these arrival rates (payments per second), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0.1, 0.2, 0.5, 1.0])]
    rate: Vec<f64>,
    /// Steady table: add three shapes at the edges, mixes E, F and G.
    #[arg(long)]
    edges: bool,
    /// Steady table: every first check at this age (seconds) instead of the documented
    /// 20–25 s, to show what the ladder's jitter costs where the budget is not scarce.
    #[arg(long, value_name = "SECONDS")]
    first_check: Option<u64>,
    /// Burst: one run per `ninjapay.backlog_share` (0.05–0.9), comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = backlog_share, default_value = "0.2")]
    backlog_share: Vec<BacklogShare>,
    /// Burst: the stream it comes on top of, in payments per second.
    #[arg(long, default_value_t = 0.2)]
    burst_rate: f64,
    /// Burst: the minutes its 2,000 payments are spread over.
    #[arg(long, default_value_t = 1.0)]
    burst_minutes: f64,
    /// Tell the core the true mix instead of letting it learn (steady, rate steps, the day).
    #[arg(long)]
    oracle: bool,
    /// Print figures per seed; in the steady table, also judge the learnt plans: their mean
    /// delay under the true mix at the bound's requests per payment, against the true mix's
    /// own plans (a figure of learning alone, far steadier from seed to seed than the ratio).
    #[arg(long)]
    detail: bool,
    /// Passed by `cargo bench` to every `harness = false` bench; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The parts of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    /// Steady streams of one mix each.
    Steady,
    /// Two kinds with their own mixes on one key.
    Kinds,
    /// A change of mix, A to B.
    Change,
    /// Steps of the arrival rate, up and down.
    Rate,
    /// A shop's day: the rate rising and falling.
    Day,
    /// A burst of 2,000 payments on top of a stream.
    Burst,
}

impl Opts {
    fn runs(&self, part: Part) -> bool {
        self.part.is_none_or(|p| p == part)
    }
}

fn backlog_share(s: &str) -> Result<BacklogShare, String> {
    s.trim()
        .parse()
        .ok()
        .and_then(BacklogShare::new)
        .ok_or_else(|| {
            format!(
                "{s:?}: a backlog share is a number from {} to {}",
                BacklogShare::MIN,
                BacklogShare::MAX
            )
        })
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let seeds = opts.seeds.max(1);
    println!(
        "steady streams: 1 h warm-up, {} h measured, 1,000 requests / 10 min, median of {seeds} seed(s)",
        opts.hours
    );
    println!("mix  rate/s | mean s  median s  p95 s | bound s  ratio  (of seeds) | budget used | over budget | missed deadlines | CPU s");
    if opts.runs(Part::Steady) {
        steady_streams(&opts, seeds)?;
    }
    if opts.runs(Part::Change) {
        mix_change(&opts, seeds)?;
    }
    if opts.runs(Part::Kinds) {
        two_kinds(&opts, seeds)?;
    }
    if opts.runs(Part::Rate) {
        rate_steps(&opts, seeds)?;
    }
    if opts.runs(Part::Day) {
        days(&opts, seeds)?;
    }
    if opts.runs(Part::Burst) {
        for &share in &opts.backlog_share {
            burst(&opts, seeds, share)?;
        }
    }
    Ok(())
}

/// The steady table: one row per mix and rate, then the worst ratio.
fn steady_streams(opts: &Opts, seeds: u64) -> anyhow::Result<()> {
    // A and B are the published mixes. C and D are ours, not tuned for: the product
    // owner runs mixes that are not published, so the table shows how the policy does on
    // shapes it was not built around (a fast mix, and a two-humped one).
    let mut mixes = vec![
        ("A", Mix::a()),
        ("B", Mix::b()),
        ("C", mix_c()),
        ("D", mix_d()),
    ];
    if opts.edges {
        mixes.extend(edge_mixes());
    }
    let chosen = |name: &str| {
        opts.mix.is_empty() || opts.mix.iter().any(|m| m.trim().eq_ignore_ascii_case(name))
    };
    let ladder = opts
        .first_check
        .map(|first| {
            let at = Duration::from_secs(first);
            Ladder::documented().with_first_check((at, at))
        })
        .transpose()?;
    let mut worst: f64 = 0.0;
    for (name, mix) in mixes.into_iter().filter(|(name, _)| chosen(name)) {
        for &rate in &opts.rate {
            let started = Instant::now();
            let mut rows = Vec::new();
            for seed in 0..seeds {
                let measure = (opts.hours * HOUR as f64) as i64;
                let mut sc = Scenario::steady(mix.clone(), rate, HOUR, measure, 11 + seed);
                sc.oracle = opts.oracle;
                sc.judge_plans = opts.detail;
                if let Some(ladder) = &ladder {
                    sc.ladder = ladder.clone();
                }
                rows.push(run(&sc)?);
            }
            let cpu = started.elapsed().as_secs_f64() / seeds as f64;
            if opts.detail {
                print_seeds(&rows);
            }
            worst = worst.max(steady_row(name, rate, &rows, cpu));
        }
    }
    if worst > 0.0 {
        println!("worst ratio: {worst:.2}");
    }
    Ok(())
}

/// Prints one row of the steady table (medians over the seeds' `rows`); returns its ratio.
fn steady_row(name: &str, rate: f64, rows: &[Report], cpu: f64) -> f64 {
    let m = |f: &dyn Fn(&Report) -> f64| median(rows.iter().map(f).collect());
    let ratio = m(&|r| r.ratio);
    // One seed's ratio differs from another's, so a difference between two versions
    // smaller than this range is not one.
    let range = spread(rows.iter().map(|r| r.ratio));
    println!(
        "{name}    {rate:>5} | {:>6.1} {:>9.1} {:>6.1} | {:>7.1} {:>6.2} {:>11} | {:>10.1}% | {:>11} | {:>16} | {cpu:>5.1}",
        m(&|r| r.mean_ms) / 1000.0,
        m(&|r| r.median_ms) / 1000.0,
        m(&|r| r.p95_ms) / 1000.0,
        m(&|r| r.bound_ms) / 1000.0,
        ratio,
        range,
        m(&|r| r.budget_use) * 100.0,
        rows.iter().map(|r| r.over_budget).max().unwrap_or(0),
        rows.iter().map(|r| r.missed_deadlines).max().unwrap_or(0),
    );
    ratio
}

/// `--detail` in the steady table: each seed's figures, and the learnt plans judged alone.
fn print_seeds(rows: &[Report]) {
    for r in rows {
        println!(
            "    seed: ratio {:.3} mean {:.2} s, planned {:.2} s at level {:.2} (p10/50/90 {:.1}/{:.1}/{:.1}, ladder {:.0}%), checks late by mean {:.0} ms (p95 {:.0} ms), budget {:.1}%; learnt {:.2} flip, by {:?} ms (true {:.2}, {:?}); learnt plans {:.3}× the true mix's own",
            r.ratio,
            r.mean_ms / 1000.0,
            r.planned_delay_ms / 1000.0,
            r.level_mean,
            r.level_pct[0],
            r.level_pct[1],
            r.level_pct[2],
            r.level_pct[3] * 100.0,
            r.late_mean_ms,
            r.late_p95_ms,
            r.budget_use * 100.0,
            r.learnt_flip_share,
            r.learnt_flip_age_ms,
            r.true_flip_share,
            r.true_flip_age_ms,
            r.learnt_plans.unwrap_or(f64::NAN)
        );
    }
    let judged: Vec<f64> = rows.iter().filter_map(|r| r.learnt_plans).collect();
    if !judged.is_empty() {
        println!(
            "    learnt plans against the true mix's own, at the bound's requests per payment: median {:.3}× (seeds {})",
            median(judged.clone()),
            spread_to(judged.into_iter(), 3)
        );
    }
}

/// A change of traffic: A for an hour, then B; ratio per 10 minutes of arrivals after the
/// change, against B's bound.
fn mix_change(opts: &Opts, seeds: u64) -> anyhow::Result<()> {
    for rate in [0.2, 0.5] {
        let after = after_the_change(seeds, 5, (rate, Mix::a()), (rate, Mix::b()), opts.oracle)?;
        println!(
            "mix change A→B at {rate}/s: ratio to B's bound ({:.1} s) per 10 min after the change: {}  (over budget {}, missed {})",
            after.bound_ms / 1000.0,
            after.line(),
            after.over,
            after.missed
        );
    }
    Ok(())
}

/// Two kinds on one key, each with its own mix (`s1` beside `p2p`): one price for both,
/// each learnt apart. The bound is the one for both streams on the one budget.
fn two_kinds(opts: &Opts, seeds: u64) -> anyhow::Result<()> {
    let pairs = [
        ("A", Mix::a(), 0.1, "C", mix_c(), 0.3),
        ("A", Mix::a(), 0.25, "B", Mix::b(), 0.25),
        ("B", Mix::b(), 0.1, "C", mix_c(), 0.4),
        ("A", Mix::a(), 0.5, "D", mix_d(), 0.5),
    ];
    let measure = (opts.hours * HOUR as f64) as i64;
    for (na, ma, ra, nb, mb, rb) in pairs {
        let (mut ratios, mut bounds, mut means_a, mut means_b, mut spend) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut over, mut missed) = (0, 0);
        for seed in 0..seeds {
            let mut sc = Scenario::steady(ma.clone(), ra, HOUR, measure, 31 + seed);
            sc.others = vec![(rb, mb.clone())];
            let r = run(&sc)?;
            let mean_of = |stream: usize| {
                r.mean_delay_ms(|f| f.stream == stream && f.arrived >= SchedMs(HOUR))
                    .0
                    / 1000.0
            };
            ratios.push(r.ratio);
            bounds.push(r.bound_ms / 1000.0);
            means_a.push(mean_of(0));
            means_b.push(mean_of(1));
            spend.push(r.budget_use * 100.0);
            over += r.over_budget;
            missed += r.missed_deadlines;
        }
        let range = spread(ratios.iter().copied());
        println!(
            "kinds {na} {ra}/s + {nb} {rb}/s: ratio {:.2} ({range}) to the bound {:.1} s; mean delay {na} {:.1} s, {nb} {:.1} s; budget used {:.1}%, over budget {over}, missed {missed}",
            median(ratios),
            median(bounds),
            median(means_a),
            median(means_b),
            median(spend),
        );
    }
    Ok(())
}

/// The arrival rate steps (a lunch-hour surge and its end), mix A throughout: the ratio per
/// 10 minutes after the step, to the bound at the new rate, median of seeds.
fn rate_steps(opts: &Opts, seeds: u64) -> anyhow::Result<()> {
    for (from, to) in [(0.2, 1.0), (1.0, 0.2), (0.1, 0.5), (0.5, 0.1)] {
        let after = after_the_change(seeds, 21, (from, Mix::a()), (to, Mix::a()), opts.oracle)?;
        println!(
            "rate step {from}/s → {to}/s (mix A): ratio to the bound at {to}/s ({:.1} s) per 10 min after the step: {}  (budget used after it {:.1}%, over budget {}, missed {})",
            after.bound_ms / 1000.0,
            after.line(),
            after.spend * 100.0,
            after.over,
            after.missed
        );
    }
    Ok(())
}

/// A shop's day ([`through_a_day`]) on mixes A and B.
fn days(opts: &Opts, seeds: u64) -> anyhow::Result<()> {
    for (name, mix) in [("A", Mix::a()), ("B", Mix::b())] {
        let Day {
            per_slice,
            rising,
            falling,
            whole,
        } = through_a_day(seeds, mix, opts.oracle)?;
        let line: Vec<String> = per_slice
            .iter()
            .map(|(rate, ratio)| format!("{rate:.2}/s:{ratio:.2}"))
            .collect();
        println!(
            "a day's rise and fall (mix {name}, 0.1/s → 1.0/s over 2 h and back over 2 h, in 5-minute steps): ratio to the bound at each 10 minutes' rate: {}",
            line.join(" ")
        );
        let side = |ratios: &[f64]| {
            format!(
                "{:.2} ({})",
                median(ratios.to_vec()),
                spread(ratios.iter().copied())
            )
        };
        println!(
            "  of the bounds weighted by each 10 minutes' flips: rising {}, falling {}, the four hours {}",
            side(&rising),
            side(&falling),
            side(&whole)
        );
        if opts.detail {
            for (r, f) in rising.iter().zip(&falling) {
                println!("    seed: rising {r:.3} falling {f:.3}");
            }
        }
    }
    Ok(())
}

/// What a burst's runs measured, summed over the seeds.
#[derive(Default)]
struct BurstRuns {
    /// Per 5 minutes of the stream's arrivals from 10 minutes before the burst: the slice's
    /// start, the sum of its flips' delays (s) and how many.
    slices: Vec<(i64, f64, usize)>,
    /// The sum of the burst's flips' delays (s) and how many.
    burst_sum: f64,
    burst_n: usize,
    /// How late the deadline checks of timed-out payments came (s; the burst's among them).
    late: Vec<f64>,
    over: u32,
    missed: u32,
    /// The bound of the stream (s).
    bound: f64,
}

/// A burst: 2,000 payments over `--burst-minutes` on top of `--burst-rate`, an hour in, at
/// one backlog share. Seeds 9.. are averaged (slices of 5 minutes hold ~40 flips of the
/// stream each, so one seed's slices are noisy).
fn burst(opts: &Opts, seeds: u64, share: BacklogShare) -> anyhow::Result<()> {
    let spread = (opts.burst_minutes * MIN as f64) as i64;
    let mut runs = BurstRuns::default();
    for seed in 0..seeds {
        // The stream goes on for three hours after the burst, so the backlog drains
        // while it runs (a stream that stops would leave it the whole budget).
        let mut sc = Scenario::steady(Mix::a(), opts.burst_rate, HOUR, 3 * HOUR, 9 + seed);
        sc.bursts = vec![(HOUR, 2000, spread, Mix::a())];
        sc.backlog_share = share;
        let r = run(&sc)?;
        runs.add(&r, sc.ladder.timeout_ms());
    }
    let BurstRuns {
        slices,
        burst_sum,
        burst_n,
        mut late,
        over,
        missed,
        bound,
    } = runs;
    let line: Vec<String> = slices
        .iter()
        .map(|(t, sum, n)| format!("{:+}m:{:.0}s", (t - HOUR) / MIN, sum / (*n).max(1) as f64))
        .collect();
    println!(
        "burst of 2,000 over {} min at {}/s, backlog share {} ({seeds} seed(s)): stream's mean delay per 5 min of arrivals (bound {bound:.1} s): {}",
        spread / MIN,
        opts.burst_rate,
        share.get(),
        line.join(" ")
    );
    late.sort_by(f64::total_cmp);
    println!(
        "  burst payments' mean delay {:.0} s; deadline checks late by median {:.0} s, max {:.0} s; over budget {over}, missed deadlines {missed}",
        burst_sum / burst_n.max(1) as f64,
        late.get(late.len() / 2).copied().unwrap_or(0.0),
        late.last().copied().unwrap_or(0.0),
    );
    Ok(())
}

impl BurstRuns {
    /// Adds one seed's run (`timeout_ms`: the ladder's).
    fn add(&mut self, r: &Report, timeout_ms: i64) {
        for (i, (t, d, n)) in timeline(r, HOUR - 10 * MIN, 2 * HOUR, 5 * MIN)
            .into_iter()
            .enumerate()
        {
            if self.slices.len() <= i {
                self.slices.push((t, 0.0, 0));
            }
            self.slices[i].1 += d * n as f64;
            self.slices[i].2 += n;
        }
        for f in r.fates.iter().filter(|f| f.burst) {
            if let (Some(seen), Some(flip)) = (f.seen, f.flip) {
                self.burst_sum += (seen - flip) as f64 / 1000.0;
                self.burst_n += 1;
            }
        }
        self.late.extend(
            r.fates
                .iter()
                .filter(|f| f.state == State::TimedOut)
                .filter_map(|f| Some((f.ended? - f.arrived - timeout_ms) as f64 / 1000.0)),
        );
        self.over += r.over_budget;
        self.missed += r.missed_deadlines;
        self.bound = r.bound_ms / 1000.0;
    }
}

/// Mix C (fast): 85% approved at log-normal(20 s, 0.5), 5% declined at uniform 20–60 s,
/// 10% never flip.
fn mix_c() -> Mix {
    Mix::Parametric(vec![
        Component::LogNormal {
            share: 0.85,
            median_s: 20.0,
            sigma: 0.5,
            clip: None,
            state: State::Succeeded,
        },
        Component::Uniform {
            share: 0.05,
            lo_s: 20.0,
            hi_s: 60.0,
            state: State::Failed,
        },
    ])
}

/// Mix D (two humps): 35% approved at log-normal(30 s, 0.4), 35% at log-normal(300 s,
/// 0.3), 30% never flip.
fn mix_d() -> Mix {
    let hump = |median_s: f64, sigma: f64| Component::LogNormal {
        share: 0.35,
        median_s,
        sigma,
        clip: None,
        state: State::Succeeded,
    };
    Mix::Parametric(vec![hump(30.0, 0.4), hump(300.0, 0.3)])
}

/// Shapes at the edges, with `--edges`: E, nearly all flips before the
/// first check allowed (90% at uniform 5–15 s); F, late flips (50% at log-normal(400 s,
/// 0.2)); G, one very wide hump (95% at log-normal(60 s, 1.5), clipped to 1–599 s).
fn edge_mixes() -> Vec<(&'static str, Mix)> {
    let lognormal = |share: f64, median_s: f64, sigma: f64, clip| Component::LogNormal {
        share,
        median_s,
        sigma,
        clip,
        state: State::Succeeded,
    };
    vec![
        (
            "E",
            Mix::Parametric(vec![Component::Uniform {
                share: 0.9,
                lo_s: 5.0,
                hi_s: 15.0,
                state: State::Succeeded,
            }]),
        ),
        ("F", Mix::Parametric(vec![lognormal(0.5, 400.0, 0.2, None)])),
        (
            "G",
            Mix::Parametric(vec![lognormal(0.95, 60.0, 1.5, Some((1.0, 599.0)))]),
        ),
    ]
}

/// The seeds' range of a figure, `lo–hi`.
fn spread(v: impl Iterator<Item = f64> + Clone) -> String {
    spread_to(v, 2)
}

/// [`spread`] to `digits` decimals.
fn spread_to(v: impl Iterator<Item = f64> + Clone, digits: usize) -> String {
    let lo = v.clone().fold(f64::INFINITY, f64::min);
    let hi = v.fold(0.0, f64::max);
    format!("{lo:.digits$}–{hi:.digits$}")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A run of `(duration_ms, rate, mix)` phases after one another, from an empty state, with
/// an hour's warm-up; `oracle`: the core is told the true mix.
fn phased(phases: impl IntoIterator<Item = (i64, f64, Mix)>, seed: u64, oracle: bool) -> Scenario {
    let phases: Vec<Phase> = phases
        .into_iter()
        .map(|(duration_ms, rate, mix)| Phase {
            duration_ms,
            rate,
            mix,
        })
        .collect();
    let total: i64 = phases.iter().map(|p| p.duration_ms).sum();
    let mut sc = Scenario::steady(Mix::a(), 0.0, HOUR, total - HOUR, seed);
    sc.phases = phases;
    sc.oracle = oracle;
    sc
}

/// Per `slice` of the stream's arrivals in `[from, to)`: the mean delay of its flips over
/// `bound_ms(i)`, the bound for the `i`-th slice, and how many flips it holds.
fn slice_ratios(
    r: &Report,
    from: i64,
    to: i64,
    slice: i64,
    bound_ms: impl Fn(usize) -> f64,
) -> Vec<(f64, usize)> {
    timeline(r, from, to, slice)
        .into_iter()
        .enumerate()
        .map(|(i, (_, d, n))| (d * 1000.0 / bound_ms(i), n))
        .collect()
}

/// Per position, the median over the rows (one row per seed).
fn medians(rows: Vec<Vec<f64>>) -> Vec<f64> {
    let len = rows.iter().map(Vec::len).min().unwrap_or(0);
    (0..len)
        .map(|i| median(rows.iter().map(|row| row[i]).collect()))
        .collect()
}

/// Mean delay (s) of the stream's flips, by the slice of time they arrived in.
fn timeline(r: &Report, from: i64, to: i64, slice: i64) -> Vec<(i64, f64, usize)> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        let (mean_ms, n) = r.mean_delay_ms(|f| {
            !f.burst && f.arrived >= SchedMs(t) && f.arrived < SchedMs(t + slice)
        });
        out.push((t, mean_ms / 1000.0, n));
        t += slice;
    }
    out
}

/// Traffic that rises and falls like a shop's day, compressed: an hour at 0.1/s, then up to
/// 1.0/s over two hours and back over two, the rate stepping every 5 minutes, so the
/// estimate of the rate always trails it. Over `seeds` runs (seeds 41..): per 10 minutes
/// of arrivals after the first hour, the mean rate and the median ratio of the mean delay
/// to the bound at that rate; and per seed, for the rise, the fall and the four hours, the
/// mean delay over the bounds' mean weighted alike. A stretch's bound is the steady stream's at its rate: on the
/// falling side the payments of the busier minutes before still share the budget, on the
/// rising side fewer do, so the first reads high and the second low.
fn through_a_day(seeds: u64, mix: Mix, oracle: bool) -> anyhow::Result<Day> {
    const STEP: i64 = 5 * MIN;
    let steps = (2 * HOUR / STEP) as usize;
    let mut rates = vec![0.1; (HOUR / STEP) as usize];
    rates.extend((1..=steps).map(|i| 0.1 + 0.9 * i as f64 / steps as f64));
    rates.extend(
        (0..steps)
            .rev()
            .map(|i| 0.1 + 0.9 * i as f64 / steps as f64),
    );
    let mut sc = phased(
        rates.iter().map(|&rate| (STEP, rate, mix.clone())),
        41,
        oracle,
    );
    let end = STEP * rates.len() as i64;
    // Each 10 minutes: two steps, their mean rate, its bound.
    let slices: Vec<(f64, f64)> = rates[(HOUR / STEP) as usize..]
        .chunks(2)
        .map(|c| {
            let rate = c.iter().sum::<f64>() / c.len() as f64;
            (rate, sc.bound_ms_at(rate, &mix))
        })
        .collect();
    let (mut per_seed, mut rising, mut falling, mut whole) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for seed in 0..seeds {
        sc.seed = 41 + seed;
        let r = run(&sc)?;
        let ratios = slice_ratios(&r, HOUR, end, 2 * STEP, |i| slices[i].1);
        // Every flip's delay over the bound of its stretch: the rise, the fall, the four
        // hours.
        let weighted = |from: usize, to: usize| {
            let (delay, bound) = ratios[from..to]
                .iter()
                .zip(&slices[from..to])
                .map(|(&(ratio, n), &(_, b))| (ratio * b * n as f64, b * n as f64))
                .fold((0.0, 0.0), |(d, b), (x, y)| (d + x, b + y));
            delay / bound
        };
        let half = ratios.len() / 2;
        rising.push(weighted(0, half));
        falling.push(weighted(half, ratios.len()));
        whole.push(weighted(0, ratios.len()));
        per_seed.push(ratios.into_iter().map(|(ratio, _)| ratio).collect());
    }
    let per_slice = slices
        .iter()
        .zip(medians(per_seed))
        .map(|(&(rate, _), ratio)| (rate, ratio))
        .collect();
    Ok(Day {
        per_slice,
        rising,
        falling,
        whole,
    })
}

/// What [`through_a_day`] measured.
struct Day {
    /// Per 10 minutes: the mean rate, the median ratio to the bound at it.
    per_slice: Vec<(f64, f64)>,
    /// Per seed: the two hours' rise's ratio, the fall's, the four hours'.
    rising: Vec<f64>,
    falling: Vec<f64>,
    whole: Vec<f64>,
}

/// What [`after_the_change`] measured.
struct AfterChange {
    per_slice: Vec<f64>,
    bound_ms: f64,
    spend: f64,
    over: u32,
    missed: u32,
}

impl AfterChange {
    fn line(&self) -> String {
        let slices: Vec<String> = self.per_slice.iter().map(|r| format!("{r:.2}")).collect();
        slices.join(" ")
    }
}

/// A change of traffic an hour in, from `before` to `after` (`(rate, mix)`), over `seeds`
/// runs (seeds `first`..; `oracle`: told the true mix): the median ratio to the bound of the traffic after it, per 10
/// minutes of arrivals after the change.
fn after_the_change(
    seeds: u64,
    first: u64,
    before: (f64, Mix),
    after: (f64, Mix),
    oracle: bool,
) -> anyhow::Result<AfterChange> {
    let mut per_seed = Vec::new();
    let (mut over, mut missed, mut bound_ms, mut spend) = (0, 0, 0.0, Vec::new());
    for seed in 0..seeds {
        let phases = [&before, &after].map(|(rate, mix)| (HOUR, *rate, mix.clone()));
        let r = run(&phased(phases, first + seed, oracle))?;
        let ratios = slice_ratios(&r, HOUR, 2 * HOUR, 10 * MIN, |_| r.bound_ms);
        per_seed.push(ratios.into_iter().map(|(ratio, _)| ratio).collect());
        over += r.over_budget;
        missed += r.missed_deadlines;
        bound_ms = r.bound_ms;
        spend.push(r.budget_use);
    }
    Ok(AfterChange {
        per_slice: medians(per_seed),
        bound_ms,
        spend: median(spend),
        over,
        missed,
    })
}
