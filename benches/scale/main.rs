//! Scale: one daemon with many Ninjapay accounts, in real time (nothing compressed). The
//! daemon is the real binary, a child process, so its CPU time and memory are its own; the
//! fake Ninjapay runs in this process with every account's key and budget, every payment
//! pending forever. Each account keeps `P` payments pending on the default ladder, so every
//! budget binds.
//!
//! The run: a first daemon takes the `N × P` payments (ages spread evenly over the
//! lifetime) and stops; a second start with all of them pending is timed to `READY=1`; a
//! feeder then replaces each payment that reaches its timeout with a new one of the same
//! account. After the warm-up (the restart's catch-up), one span is measured: requests per
//! key (the fake's count), check lateness (the daemon's histogram), the daemon's CPU per
//! check against a bare HTTP client making the same requests, its memory, and READY.
//!
//! Run: `cargo bench --bench scale -- --help`.

mod args;
mod bare;
mod daemon;
mod measure;
mod report;
mod workload;

use anyhow::{ensure, Context, Result};
use args::{key, Args, Mode};
use daemon::{cpu_time, Daemon, Layout, KEY_PREFIX};
use measure::{scrape, Buckets, PerKey};
use ninjapoll_fake::{FakeNinjapay, FakeOptions, Unknown};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use workload::Pending;

/// How long a start may take to `READY=1`, and a stop after SIGTERM, before the run fails.
const START_LIMIT: Duration = Duration::from_secs(300);
const STOP_LIMIT: Duration = Duration::from_secs(60);
/// How long the bare client runs.
const BARE_SPAN: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    match args::parse(std::env::args().skip(1)) {
        Ok(Mode::Help) => {
            println!("{}", args::HELP);
            ExitCode::SUCCESS
        }
        Ok(Mode::Bare(b)) => match bare::client_main(b) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("scale --bare: {e:#}");
                ExitCode::FAILURE
            }
        },
        Ok(Mode::Measure(a)) => {
            // One thread for the fake and the feeder: at most one of the two cores.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("scale: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(a)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("scale: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("scale: {e}\n\n{}", args::HELP);
            ExitCode::from(2)
        }
    }
}

/// The daemon's state at one end of the measured span.
pub struct Snapshot {
    pub at: Instant,
    pub cpu: Duration,
    pub lateness: Buckets,
    pub budget_wait: Buckets,
}

async fn snapshot(http: &reqwest::Client, layout: &Layout, pid: i32) -> Result<Snapshot> {
    let text = scrape(http, &layout.metrics).await?;
    Ok(Snapshot {
        at: Instant::now(),
        cpu: cpu_time(&pid.to_string())?,
        lateness: Buckets::parse(&text, measure::LATENESS)?,
        budget_wait: Buckets::parse(&text, measure::BUDGET_WAIT)?,
    })
}

/// What the run measured, for the report.
pub struct Run {
    pub seeded: u64,
    pub seed_time: Duration,
    pub ready_after: Duration,
    pub pending_at_ready: i64,
    pub start: Snapshot,
    pub end: Snapshot,
    /// `(VmHWM, VmRSS)` at the end of the span, MB.
    pub memory: (f64, f64),
    pub fed: u64,
    /// The largest notification datagram the daemon sent, bytes.
    pub largest_notify: usize,
    pub exit: std::process::ExitStatus,
    pub per_key: PerKey,
    pub violations: u32,
    pub bare: bare::BareRun,
}

async fn run(a: Args) -> Result<bool> {
    report::header(&a);
    let dir = tempfile::tempdir()?;
    let keys: Vec<String> = (0..a.accounts).map(|i| key(KEY_PREFIX, i)).collect();
    let fake = FakeNinjapay::start(FakeOptions {
        api_key: keys[0].clone(),
        accounts: keys[1..].to_vec(),
        budget: Some((a.budget, a.window)),
        unknown: Unknown::Pending,
        record: false,
        ..FakeOptions::default()
    })
    .await?;
    let layout = daemon::write_config(dir.path(), &fake.base_url(), &a)?;
    let lifetime = ninjapoll::defaults()
        .schedule
        .timeout
        .context("the default configuration has a timeout")?;
    let mut pending = Pending::new(lifetime);
    let (seeded, seed_time) = seed(&layout, &a, &mut pending).await?;

    let daemon = Daemon::start(&layout, START_LIMIT).await?;
    let ready_after = daemon.ready_after;
    let (_, health) = ninjapoll::request(&layout.socket, "GET", "/v1/health", None).await?;
    let pending_at_ready = health["payments"]["pending"].as_i64().unwrap_or(-1);
    let stop = CancellationToken::new();
    let socket = layout.socket.clone();
    let mut feeder = tokio::spawn(workload::feed(socket, pending, stop.clone()));

    let http = reqwest::Client::new();
    let span = async {
        tokio::time::sleep(a.warmup).await;
        let start = snapshot(&http, &layout, daemon.pid).await?;
        tokio::time::sleep(a.measure).await;
        let end = snapshot(&http, &layout, daemon.pid).await?;
        anyhow::Ok((start, end, daemon::memory_mb(daemon.pid)?))
    };
    let (start, end, memory) = tokio::select! {
        r = span => r?,
        r = &mut feeder => {
            r??;
            anyhow::bail!("the feeder stopped early");
        }
    };
    stop.cancel();
    let fed = feeder.await??;
    let largest_notify = daemon
        .largest_notify
        .load(std::sync::atomic::Ordering::Relaxed);
    let exit = daemon.stop(STOP_LIMIT).await?;
    log_excerpt(&layout)?;

    let per_key = PerKey::of(&fake.arrivals_by_key(), &keys, a.window, (start.at, end.at));
    let violations = fake.violations();
    fake.shutdown().await;
    let in_span: usize = per_key.measured.iter().sum();
    let rate = in_span as f64 / end.at.duration_since(start.at).as_secs_f64();
    println!("bare client: {rate:.1} requests/s for {BARE_SPAN:?} …");
    let bare = bare::measure(a.accounts, rate, BARE_SPAN, (a.budget, a.window)).await?;
    let r = Run {
        seeded,
        seed_time,
        ready_after,
        pending_at_ready,
        start,
        end,
        memory,
        fed,
        largest_notify,
        exit,
        per_key,
        violations,
        bare,
    };
    Ok(report::print(&a, &r))
}

/// The first daemon run: it takes the `N × P` payments, then stops. Returns how many it
/// took and how long the enqueue took.
async fn seed(layout: &Layout, a: &Args, pending: &mut Pending) -> Result<(u64, Duration)> {
    let first = Daemon::start(layout, START_LIMIT).await?;
    let items = pending.seed(a.accounts, a.pending, ninjapoll::now_ms().as_ms());
    let t = Instant::now();
    let taken = workload::enqueue(&layout.socket, items).await?;
    let took = t.elapsed();
    let status = first.stop(STOP_LIMIT).await?;
    ensure!(status.success(), "the first daemon run ended with {status}");
    Ok((taken, took))
}

/// The daemon's log lines (warn and above), if any: a few of them.
fn log_excerpt(layout: &Layout) -> Result<()> {
    let log = std::fs::read_to_string(&layout.log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    println!("daemon log (warn and above): {} lines", lines.len());
    for line in lines.iter().take(5) {
        let cut: String = line.chars().take(200).collect();
        println!("  {cut}");
    }
    if lines.len() > 5 {
        println!("  …");
    }
    Ok(())
}
