//! How fast a flip is seen, by how many payments share the budget.
//!
//! For 50 / 500 / 5,000 payments pending at once, each flipping to `approved` at a random
//! moment, the real daemon (in process, real socket, real SQLite file) polls a fake
//! Ninjapay that enforces the budget exactly like the real one. Time is compressed 100x:
//! the documented ladder (20-25 s, 3 s for 30 s, …, 10 min) runs in 6 s, and the budget is
//! 1,000 requests per 6 s window. Printed per size: the delay from flip to the check that
//! saw it (median, p90, max), the ideal for that budget in the same run, their ratio, and
//! the budget accounting (requests, most in any window, violations).
//!
//! The ideal: a poller that spends the whole budget evenly can check each payment every
//! `max(ladder step, N * window / budget)`; a flip at a uniformly random moment waits half
//! that interval on average.
//!
//! Run: `cargo bench --bench flip_delay` (sizes: `NINJAPOLL_BENCH_SIZES=50,500`).

use ninjapoll::cli::request;
use ninjapoll::config::{self, Config, RawStep};
use ninjapoll::fake::{FakeNinjapay, FakeOptions, Script};
use ninjapoll::ladder::Ladder;
use ninjapoll::payment::now_ms;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SCALE: u64 = 100;
const BUDGET: u32 = 1000;

fn scaled(secs: u64) -> String {
    format!("{}ms", secs * 1000 / SCALE)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// `n` payments; each starts at a uniformly random moment in the first `spread_ms` (0: all
/// at once, the burst), flips at a random age, and is enqueued with its own `started_at`.
async fn scenario(n: usize, spread_ms: i64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let window = Duration::from_millis(600_000 / SCALE);
    let fake = FakeNinjapay::start(FakeOptions {
        api_key: "bench-key".into(),
        budget: Some((BUDGET, window)),
        latency: Some((Duration::from_millis(1), Duration::from_millis(5))),
        ..FakeOptions::default()
    })
    .await?;
    let mut raw = config::defaults();
    raw.database.path = Some(dir.path().join("ninjapoll.db"));
    raw.socket.path = Some(dir.path().join("ninjapoll.sock"));
    raw.ninjapay.api_key = Some("bench-key".into());
    raw.ninjapay.prod_base_url = Some(fake.base_url());
    raw.ninjapay.api_base_url = Some(fake.base_url());
    raw.ninjapay.budget_requests = Some(BUDGET);
    raw.ninjapay.budget_window = Some(format!("{}ms", window.as_millis()));
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
    let cfg = Config::from_raw(raw)?;
    let ladder: Ladder = cfg.ladder.clone();
    let socket = cfg.socket.path.clone();
    let cancel = CancellationToken::new();
    let daemon = tokio::spawn(ninjapoll::daemon::run_until(cfg, cancel.clone()));
    while request(&socket, "GET", "/v1/health", None).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let t0 = now_ms();
    let start = Instant::now();
    let timeout_ms = ladder.timeout_ms();
    let mut flips = Vec::with_capacity(n);
    let mut checks = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("B{i:06}");
        let start_ms = if spread_ms > 0 {
            fastrand::i64(0..spread_ms)
        } else {
            0
        };
        let age = fastrand::i64(timeout_ms / 30..timeout_ms * 9 / 10);
        fake.script(
            "p2p",
            &id,
            Script::FlipAt {
                at: start + Duration::from_millis((start_ms + age) as u64),
                status: "approved".into(),
            },
        );
        flips.push((id.clone(), start_ms, age));
        checks.push((
            start_ms,
            json!({"kind": "p2p", "id": id, "started_at": (t0 + start_ms) as f64 / 1000.0}),
        ));
    }
    // Each payment is handed over when it starts, as a merchant app would: a burst in one
    // batch, a stream every 50 ms.
    checks.sort_by_key(|(at, _)| *at);
    let mut queue = checks.into_iter().peekable();
    while queue.peek().is_some() {
        let due = (now_ms() - t0).max(0);
        let mut batch = Vec::new();
        while let Some((_, c)) = queue.next_if(|(at, _)| *at <= due) {
            batch.push(c);
        }
        for chunk in batch.chunks(10_000) {
            let (status, _) = request(
                &socket,
                "POST",
                "/v1/checks/batch",
                Some(&json!({ "checks": chunk })),
            )
            .await?;
            anyhow::ensure!(status == 200, "batch enqueue answered {status}");
        }
        if queue.peek().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Wait until every payment is final (bounded).
    let limit = Instant::now() + Duration::from_millis((timeout_ms * 20) as u64 + 10_000);
    let mut stretch_seen: f64 = 1.0;
    loop {
        let (_, h) = request(&socket, "GET", "/v1/health", None).await?;
        stretch_seen = stretch_seen.max(h["budget"][0]["stretch"].as_f64().unwrap_or(1.0));
        if std::env::var_os("BENCH_TRACE").is_some() {
            eprintln!(
                "{} stretch {} used {} pending {}",
                start.elapsed().as_millis(),
                h["budget"][0]["stretch"],
                h["budget"][0]["budget_used"],
                h["payments"]["pending"]
            );
        }
        let pending = h["payments"]["pending"].as_i64().unwrap_or(0);
        if pending == 0 || Instant::now() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=ro",
        dir.path().join("ninjapoll.db").display()
    ))
    .await?;
    let rows: Vec<(String, String, Option<i64>)> =
        sqlx::query_as("SELECT id, state, finished_at FROM payments")
            .fetch_all(&pool)
            .await?;
    pool.close().await;
    let finished: std::collections::HashMap<String, (String, Option<i64>)> =
        rows.into_iter().map(|(id, s, f)| (id, (s, f))).collect();
    let mut delays = Vec::new();
    let mut ideal = Vec::new();
    let mut succeeded = 0;
    // Payments pending at once, on average: all of them in a burst; in a stream, arrivals
    // per ms times the mean time to flip.
    let mean_life = flips.iter().map(|(_, _, a)| *a as f64).sum::<f64>() / n as f64;
    let pending = if spread_ms > 0 {
        n as f64 * mean_life / spread_ms as f64
    } else {
        n as f64
    };
    let fair_interval = (pending * window.as_millis() as f64 / BUDGET as f64) as i64;
    for (id, start_ms, age) in &flips {
        if let Some((state, Some(fin))) = finished.get(id) {
            if state == "succeeded" {
                succeeded += 1;
            }
            delays.push((fin - t0 - start_ms - age).max(0));
        }
        let interval = ladder
            .every_at(22_500 / SCALE as i64, *age)
            .max(fair_interval);
        ideal.push(interval / 2);
    }
    delays.sort_unstable();
    ideal.sort_unstable();
    let med = percentile(&delays, 0.5);
    let ideal_med = percentile(&ideal, 0.5).max(1);
    let requests = fake.requests().len();
    if std::env::var_os("BENCH_TRACE").is_some() {
        let mut hist = std::collections::BTreeMap::new();
        for r in fake.requests() {
            *hist.entry((r.unix_ms - t0) / 250 * 250).or_insert(0) += 1;
        }
        eprintln!("requests by 250 ms since t0: {hist:?}");
    }
    let label = if spread_ms > 0 {
        format!("~{pending:.0}s")
    } else {
        n.to_string()
    };
    println!(
        "{label:>6} | {:>8} {:>8} {:>8} | {:>8} | {:>6.2} | {:>5}/{n:<5} | {:>7} | {:>5}/{BUDGET} | {:>3} | {:>6.1}",
        med,
        percentile(&delays, 0.9),
        delays.last().copied().unwrap_or(0),
        ideal_med,
        med as f64 / ideal_med as f64,
        succeeded,
        requests,
        fake.max_in_window(window),
        fake.violations(),
        stretch_seen,
    );
    cancel.cancel();
    let _ = daemon.await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("NINJAPOLL_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 500, 5000]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("flip -> detection delay, ms (time compressed {SCALE}x: 10 min ladder = 6 s; budget {BUDGET} per 6 s window)");
    println!("     N |   median      p90      max |    ideal |  ratio | succeeded   | requests | max/window  | viol | max stretch");
    for n in sizes {
        rt.block_on(scenario(n, 0))?;
    }
    // A stream: payments start over two windows, about as many pending at once as the
    // middle burst above ("~Ns": N pending on average).
    let streams: Vec<usize> = std::env::var("NINJAPOLL_BENCH_STREAMS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![2000]);
    for n in streams {
        rt.block_on(scenario(n, 12_000))?;
    }
    Ok(())
}
