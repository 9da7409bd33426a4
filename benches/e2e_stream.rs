//! The real daemon against the simulator: one end-to-end run of the whole product (real
//! socket, real SQLite file, the fake Ninjapay on 127.0.0.1 enforcing the budget) on a
//! realistic stream, time compressed 100×, next to a simulator run of the same scenario.
//! The two mean delays should agree within 10%: the simulator's figures
//! (`cargo bench --bench policy`) then speak for the daemon.
//!
//! Mix A at 0.5 payments per second (compressed: 50 per second), 20 minutes of warm-up and
//! an hour measured (compressed: 12 s and 36 s), 1,000 requests per 10 minutes (6 s). The
//! simulator's figure is the median of five seeds.
//!
//! Run: `cargo bench --bench e2e_stream` (`-- --rate 0.2` for another rate).

use anyhow::Context;
use ninjapoll::request;
use ninjapoll::sim::{self, BacklogShare, Mix, Phase, Scenario};
use ninjapoll::{defaults, Config, RawStep};
use ninjapoll::{now_ms, State};
use ninjapoll_fake::{FakeNinjapay, FakeOptions, Script};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SCALE: i64 = 100;
const BUDGET: u32 = 1000;

fn scaled(secs: u64) -> Duration {
    Duration::from_millis(secs * 1000 / SCALE as u64)
}

const USAGE: &str =
    "usage: cargo bench --bench e2e_stream -- [--rate PAYMENTS_PER_S] (default 0.5)";

/// The stream's rate from the command line (`cargo bench` also passes `--bench`).
fn rate_arg() -> anyhow::Result<f64> {
    let mut rate = 0.5;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--rate" => {
                let value = args.next().context(USAGE)?;
                rate = value
                    .parse()
                    .ok()
                    .filter(|r: &f64| *r > 0.0)
                    .with_context(|| format!("--rate {value:?}: not a rate above 0; {USAGE}"))?;
            }
            other => anyhow::bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    Ok(rate)
}

/// The daemon's configuration: the documented ladder compressed, the fake's budget.
fn daemon_config(
    dir: &std::path::Path,
    fake_url: String,
    window: Duration,
) -> anyhow::Result<Config> {
    let mut raw = defaults();
    raw.database.path = Some(dir.join("ninjapoll.db"));
    raw.socket.path = Some(dir.join("ninjapoll.sock"));
    raw.ninjapay.api_key = Some("bench-key".into());
    raw.ninjapay.prod_base_url = Some(fake_url.clone());
    raw.ninjapay.api_base_url = Some(fake_url);
    raw.ninjapay.budget_requests = Some(BUDGET);
    raw.ninjapay.budget_window = Some(window);
    raw.log.level = Some("error".into());
    raw.schedule.first_check = Some(vec![scaled(20), scaled(25)]);
    let step = |every: u64, span: Option<u64>| RawStep {
        every: scaled(every),
        span: span.map(scaled),
    };
    raw.schedule.steps = Some(vec![
        step(3, Some(30)),
        step(6, Some(60)),
        step(10, Some(60)),
        step(30, Some(60)),
        step(60, None),
    ]);
    raw.schedule.timeout = Some(scaled(600));
    Ok(Config::from_raw(raw)?)
}

/// One payment of the stream: when it starts (ms into the run) and its flip, if any.
type Arrival = (i64, Option<(i64, State)>);

/// The stream: Poisson arrivals over `total_ms`, flips drawn from mix A.
fn arrivals(rate: f64, total_ms: i64) -> Vec<Arrival> {
    let scale = 1.0 / SCALE as f64;
    let mix = Mix::a();
    let mut rng = fastrand::Rng::with_seed(21);
    let mut arrivals = Vec::new();
    let mut t = 0.0;
    loop {
        t += -(1000.0 * scale / rate) * rng.f64().max(1e-12).ln();
        if t >= total_ms as f64 {
            break;
        }
        arrivals.push((t as i64, mix.draw(&mut rng, scale)));
    }
    arrivals
}

/// A flip scripted on the fake: the payment's id, its start (ms into the run) and when it
/// flips (unix ms).
type Flip = (String, i64, i64);

/// Hands each payment to the daemon as it starts, its answers scripted on the fake; the
/// flips scripted.
async fn feed(
    fake: &FakeNinjapay,
    socket: &std::path::Path,
    ladder: &ninjapoll::Ladder,
    arrivals: &[Arrival],
) -> anyhow::Result<Vec<Flip>> {
    // Unix ms: what the fake's request log and the enqueue's `started_at` speak.
    let t0 = now_ms().as_ms();
    let start = Instant::now();
    let mut flips = Vec::new();
    let mut queue = arrivals.iter().enumerate().peekable();
    while queue.peek().is_some() {
        let due = (now_ms().as_ms() - t0).max(0);
        let mut batch = Vec::new();
        while let Some((i, (at, flip))) = queue.next_if(|(_, (at, _))| *at <= due) {
            let id = format!("E{i:06}");
            let deadline = at + ladder.timeout_ms();
            match flip.filter(|(age, _)| at + age < deadline) {
                Some((age, state)) => {
                    let status = if state == State::Succeeded {
                        "approved"
                    } else {
                        "declined"
                    };
                    fake.script(
                        "p2p",
                        &id,
                        Script::FlipAt {
                            at: start + Duration::from_millis((at + age) as u64),
                            status: status.into(),
                        },
                    );
                    flips.push((id.clone(), *at, t0 + at + age));
                }
                None => fake.script("p2p", &id, Script::Sequence(vec![])),
            }
            batch.push(json!({"kind": "p2p", "id": id, "started_at": (t0 + at) as f64 / 1000.0}));
        }
        if !batch.is_empty() {
            let (status, _) = request(
                socket,
                "POST",
                "/v1/checks/batch",
                Some(&json!({ "checks": batch })),
            )
            .await?;
            anyhow::ensure!(status == 200, "batch enqueue answered {status}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(flips)
}

/// Waits until no payment is pending: every payment ends within one lifetime (plus the
/// budget's catch-up).
async fn drain(socket: &std::path::Path, ladder: &ninjapoll::Ladder) -> anyhow::Result<()> {
    let limit = Instant::now() + Duration::from_millis(ladder.timeout_ms() as u64 * 4);
    loop {
        let (_, h) = request(socket, "GET", "/v1/health", None).await?;
        if h["payments"]["pending"].as_i64().unwrap_or(0) == 0 || Instant::now() > limit {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Delay as the provider saw it: from the flip to the first request after it, for the
/// flips of payments started after the warm-up.
fn measured_delays(fake: &FakeNinjapay, flips: &[Flip], warmup_ms: i64) -> Vec<f64> {
    let mut delays = Vec::new();
    for (id, at, flip_ms) in flips {
        if *at < warmup_ms {
            continue;
        }
        let seen = fake
            .requests_for("p2p", id)
            .iter()
            .map(|r| r.unix_ms)
            .filter(|t| t >= flip_ms)
            .min();
        if let Some(seen) = seen {
            delays.push((seen - flip_ms) as f64);
        }
    }
    delays
}

/// The simulator on the same scenario: the median of five seeds' mean delay, and the bound.
fn simulated(
    ladder: &ninjapoll::Ladder,
    rate: f64,
    window: Duration,
    latency: (Duration, Duration),
    warmup_ms: i64,
    total_ms: i64,
) -> anyhow::Result<(f64, f64)> {
    let mut means = Vec::new();
    let mut bound = 0.0;
    for seed in 0..5 {
        let sc = Scenario {
            ladder: ladder.clone(),
            budget: BUDGET,
            window_ms: window.as_millis() as i64,
            phases: vec![Phase {
                duration_ms: total_ms,
                rate,
                mix: Mix::a(),
            }],
            bursts: Vec::new(),
            warmup_ms,
            latency_ms: (latency.0.as_millis() as i64, latency.1.as_millis() as i64),
            seed: 21 + seed,
            oracle: false,
            backlog_share: BacklogShare::DEFAULT,
            judge_plans: false,
            others: Vec::new(),
            late: Default::default(),
        };
        let r = sim::run(&sc)?;
        means.push(r.mean_ms);
        bound = r.bound_ms;
    }
    means.sort_by(f64::total_cmp);
    Ok((means[means.len() / 2], bound))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rate = rate_arg()?;
    let warmup_ms = 1_200_000 / SCALE;
    let measure_ms = 3_600_000 / SCALE;
    let window = Duration::from_millis(600_000 / SCALE as u64);
    let latency = (Duration::from_millis(1), Duration::from_millis(4));

    let dir = tempfile::tempdir()?;
    let fake = FakeNinjapay::start(FakeOptions {
        api_key: "bench-key".into(),
        budget: Some((BUDGET, window)),
        latency: Some(latency),
        ..FakeOptions::default()
    })
    .await?;
    let cfg = daemon_config(dir.path(), fake.base_url(), window)?;
    let ladder = cfg.ladder.clone();
    let socket = cfg.socket.path.clone();
    let cancel = CancellationToken::new();
    let daemon = tokio::spawn(ninjapoll::run_until(cfg, cancel.clone()));
    while request(&socket, "GET", "/v1/health", None).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let total_ms = warmup_ms + measure_ms;
    let arrivals = arrivals(rate, total_ms);
    let flips = feed(&fake, &socket, &ladder, &arrivals).await?;
    drain(&socket, &ladder).await?;
    cancel.cancel();
    let _ = daemon.await;

    let delays = measured_delays(&fake, &flips, warmup_ms);
    let e2e = delays.iter().sum::<f64>() / delays.len().max(1) as f64;
    let (simulated, bound) = simulated(&ladder, rate, window, latency, warmup_ms, total_ms)?;
    println!(
        "mix A at {rate}/s, 100x compressed ({} measured flips): daemon mean {:.1} s, simulator mean {:.1} s ({:+.1}%), bound {:.1} s; fake counted {} requests over budget",
        delays.len(),
        e2e * SCALE as f64 / 1000.0,
        simulated * SCALE as f64 / 1000.0,
        (e2e / simulated - 1.0) * 100.0,
        bound * SCALE as f64 / 1000.0,
        fake.violations(),
    );
    Ok(())
}
