//! The yardstick for the daemon's CPU per check: a bare HTTP client making the same
//! requests (the same endpoint, headers and client settings, each answer's body read and
//! parsed) at the same rate, as a process of its own, against a second fake with fresh
//! keys (no budget shared with the daemon's).

use crate::args::{key, Bare};
use crate::daemon::{cpu_time, die_with_parent};
use anyhow::{bail, Context, Result};
use ninjapoll_fake::{FakeNinjapay, FakeOptions, Unknown};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The p2p check endpoint (`ninjapoll_fake` serves the provider's paths).
const P2P_PATH: &str = "/uapi/v1/p2p/paymentLink/checkPayment";
/// The bare client's keys at its fake.
const KEY_PREFIX: &str = "bare-key";

/// What the bare client measured.
pub struct BareRun {
    pub requests: u64,
    pub answered_ok: u64,
    pub cpu: Duration,
    pub fake_violations: u32,
}

impl BareRun {
    pub fn per_check_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

/// Starts a fresh fake, runs the bare client (this bench's binary with `--bare`) against
/// it for `span` at `rate` requests per second over `keys` keys, and reads its figures.
pub async fn measure(
    keys: usize,
    rate: f64,
    span: Duration,
    budget: (u32, Duration),
) -> Result<BareRun> {
    let fake = FakeNinjapay::start(FakeOptions {
        api_key: key(KEY_PREFIX, 0),
        accounts: (1..keys).map(|i| key(KEY_PREFIX, i)).collect(),
        budget: Some(budget),
        unknown: Unknown::Pending,
        record: false,
        ..FakeOptions::default()
    })
    .await?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--bare")
        .arg(fake.base_url())
        .arg(KEY_PREFIX)
        .arg(keys.to_string())
        .arg(format!("{rate:.3}"))
        .arg(format!("{}ms", span.as_millis()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(&mut cmd);
    let child = cmd.spawn().context("starting the bare client")?;
    // The fake serves on this runtime while a blocking thread waits for the child.
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    if !out.status.success() {
        bail!("the bare client failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Result<u64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .with_context(|| format!("the bare client's output has no {name}: {text:?}"))
    };
    let run = BareRun {
        requests: field("requests")?,
        answered_ok: field("ok")?,
        cpu: Duration::from_micros(field("cpu_us")?),
        fake_violations: fake.violations(),
    };
    fake.shutdown().await;
    Ok(run)
}

/// The client side (`--bare`), in its own process: the daemon's client settings
/// (`upstream::Upstream`: timeouts, pool, no redirects, its user agent, no proxy for
/// http), on a multi-threaded runtime as the daemon's. Prints its figures on stdout.
pub fn client_main(b: Bare) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let d = ninjapoll::defaults().ninjapay;
        let client = reqwest::Client::builder()
            .connect_timeout(d.connect_timeout.unwrap_or(Duration::from_secs(5)))
            .timeout(d.request_timeout.unwrap_or(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ninjapoll/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()?;
        let url = format!("{}{P2P_PATH}", b.url);
        let total = (b.rate * b.span.as_secs_f64()).round() as u64;
        let ok = Arc::new(AtomicU64::new(0));
        let cpu0 = cpu_time("self")?;
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut sent = 0u64;
        while sent < total {
            let due = ((t0.elapsed().as_secs_f64() * b.rate) as u64).min(total);
            while sent < due {
                let req = client
                    .get(&url)
                    .query(&[("tid", format!("b{sent:09}"))])
                    .header("Authorization", key(&b.key_prefix, sent as usize % b.keys))
                    .header("accept", "application/json");
                let ok = ok.clone();
                tasks.spawn(async move {
                    let Ok(resp) = req.send().await else { return };
                    let good = resp.status().is_success();
                    let Ok(body) = resp.bytes().await else { return };
                    let parsed = serde_json::from_slice::<serde_json::Value>(&body);
                    if good && parsed.is_ok_and(|v| v.get("status").is_some()) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                });
                sent += 1;
            }
            while tasks.try_join_next().is_some() {}
            // Wake for the next request only, so idle polling costs nothing at low rates.
            let next = Duration::from_secs_f64((sent + 1) as f64 / b.rate);
            tokio::time::sleep_until((t0 + next).into()).await;
        }
        while tasks.join_next().await.is_some() {}
        let cpu = cpu_time("self")?.saturating_sub(cpu0);
        println!(
            "requests={sent} ok={} cpu_us={}",
            ok.load(Ordering::Relaxed),
            cpu.as_micros()
        );
        anyhow::Ok(())
    })
}
