//! The command line (SPEC section 7): `run` starts the daemon; the client commands speak
//! to its socket.

use crate::client::{self, request};
use crate::config::{self, Config};
use crate::daemon;
use crate::wire::{
    EnqueueRequest, ErrorAnswer, PaymentDetail, PaymentPage, PaymentView, RecheckAnswer,
    WebhookPage, WebhookView,
};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What a path segment escapes: all but RFC 3986's unreserved characters.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// ninjapoll: polls Ninjapay payment statuses on the provider's back-off ladder, within its
/// request budget, and fires signed webhooks when they change.
#[derive(Debug, Parser)]
#[command(name = "ninjapoll", version)]
pub struct Cli {
    /// Configuration file (else $NINJAPOLL_CONFIG, else /etc/ninjapoll/ninjapoll.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Socket of the daemon (client commands); default: the configuration's.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Run,
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
    /// Start tracking a payment.
    Enqueue {
        kind: String,
        id: String,
        /// Transaction start: unix seconds or RFC 3339 (default: now).
        #[arg(long)]
        started_at: Option<String>,
        /// JSON metadata to keep with the payment.
        #[arg(long)]
        metadata: Option<String>,
        /// Webhook URL for this payment (must be under webhooks.allowed_callback_prefixes).
        #[arg(long)]
        callback_url: Option<String>,
    },
    /// Show a payment.
    Status { kind: String, id: String },
    /// List payments.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Stop tracking a pending payment.
    Cancel { kind: String, id: String },
    /// Check a payment as soon as possible.
    Recheck { kind: String, id: String },
    /// The daemon's health for a person, every problem first; exit status 0 when healthy,
    /// 1 when not, 2 when the daemon cannot be asked.
    Health {
        /// Redraw every --interval until interrupted.
        #[arg(long)]
        watch: bool,
        /// How often --watch redraws (e.g. `2s`, `500ms`).
        #[arg(long, default_value = "2s")]
        interval: String,
    },
    /// List or replay webhook events.
    Webhooks {
        #[command(subcommand)]
        action: WebhooksCommand,
    },
    /// What delay to expect at a given rate of payments on one key: the real scheduler on
    /// simulated time, with the flip ages learnt from the database (or mix A or B).
    Simulate {
        /// Payments per second (`0.5`, `0.5/s`, `30/min`, `1000/h`).
        #[arg(long)]
        rate: String,
        /// `learned` (from the database), `A` or `B` (the published mixes).
        #[arg(long, default_value = "learned")]
        mix: String,
        /// The kind whose learnt flips to use.
        #[arg(long, default_value = "p2p")]
        kind: String,
        /// Another kind on the same key, at its own rate (`upi=0.2/s`; repeatable): its
        /// learnt flips (or the same published mix), one budget for all.
        #[arg(long, value_name = "KIND=RATE")]
        also: Vec<String>,
        /// Simulated hours to measure, after the warm-up.
        #[arg(long, default_value_t = 2.0)]
        hours: f64,
        /// Simulated warm-up before measuring, from an empty daemon (e.g. `1h`, `10m`).
        #[arg(long, default_value = "1h")]
        warmup: String,
    },
    /// The whole loop against a built-in simulated Ninjapay, for a first look.
    #[cfg(feature = "demo")]
    Demo {
        /// How many payments to follow.
        #[arg(long, default_value_t = 8)]
        payments: usize,
    },
}

#[derive(Debug, Subcommand)]
enum WebhooksCommand {
    /// List webhook events.
    List {
        /// pending, delivered or dead.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Send an event again (a dead or delivered one goes back to pending, due now).
    Replay { event_id: String },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(explicit: Option<&Path>) -> Result<Config> {
    let file = config::locate(explicit)?;
    Ok(Config::load(file.as_deref())?)
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Run => {
            let cfg = load_config(cli.config.as_deref())?;
            crate::logging::init(&cfg.log);
            daemon::run(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            let file = config::locate(cli.config.as_deref())?;
            let cfg = Config::load(file.as_deref())?;
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "configuration OK ({})",
                file.map(|f| f.display().to_string())
                    .unwrap_or_else(|| "built-in defaults and environment".into())
            );
            let shown = cfg
                .to_redacted_toml()
                .context("cannot write the configuration as TOML")?;
            println!("{shown}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            rate,
            mix,
            kind,
            also,
            hours,
            warmup,
        } => {
            let cfg = load_config(cli.config.as_deref())?;
            let warmup = humantime::parse_duration(warmup)
                .with_context(|| format!("--warmup {warmup:?}: expected a duration like 1h"))?;
            let streams = std::iter::once(Ok((kind.clone(), parse_rate(rate)?)))
                .chain(also.iter().map(|a| {
                    let (k, r) = a
                        .split_once('=')
                        .with_context(|| format!("--also {a:?}: expected KIND=RATE"))?;
                    Ok((k.to_string(), parse_rate(r)?))
                }))
                .collect::<Result<Vec<_>>>()?;
            simulate(&cfg, &streams, mix, (*hours, warmup), cli.json).await
        }
        #[cfg(feature = "demo")]
        Command::Demo { payments } => {
            crate::demo::run(*payments).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { watch, interval } => {
            // Anything but a verdict (a wrong --interval, no daemon) is status 2, so that
            // 1 always means "not healthy".
            let code = match health(&cli, *watch, interval).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    crate::health_view::UNREACHABLE
                }
            };
            Ok(ExitCode::from(code))
        }
        _ => client(&cli).await,
    }
}

/// Parses a rate of payments: `0.5`, `0.5/s`, `30/min`, `1000/h`, into per second.
fn parse_rate(s: &str) -> Result<f64> {
    let (n, per) = s.trim().split_once('/').unwrap_or((s.trim(), "s"));
    let n: f64 = n
        .trim()
        .parse()
        .with_context(|| format!("--rate {s:?}: expected a number of payments, e.g. 0.5/s"))?;
    let secs = match per.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => bail!("--rate {s:?}: unknown unit {other:?} (use /s, /min or /h)"),
    };
    if !(n.is_finite() && n > 0.0) {
        bail!("--rate {s:?}: must be more than zero");
    }
    Ok(n / secs)
}

/// Most payments one simulation may hold: each is kept to the end of the run.
const MAX_SIMULATED_PAYMENTS: f64 = 2_000_000.0;

/// Refuses a simulation of more payments than memory sensibly holds (`--rate 1e7` asked
/// for gigabytes), before anything is allocated.
fn simulated_payments(rate_per_s: f64, secs: f64) -> Result<f64> {
    let n = rate_per_s * secs;
    if !(n.is_finite() && n <= MAX_SIMULATED_PAYMENTS) {
        bail!(
            "--rate and --hours ask for about {n:.0} payments; at most {MAX_SIMULATED_PAYMENTS} \
             are simulated: lower the rate or the hours"
        );
    }
    Ok(n)
}

/// `ninjapoll simulate`: `streams` are `(kind, payments per second)` on the one key, the
/// first the main one.
async fn simulate(
    cfg: &Config,
    streams: &[(String, f64)],
    mix: &str,
    (hours, warmup): (f64, std::time::Duration),
    json_out: bool,
) -> Result<ExitCode> {
    use crate::policy::{Evidence, Grid, Learner};
    use crate::sim::{Mix, Phase, Scenario};
    if !(hours > 0.0 && hours <= 48.0) {
        bail!("--hours must be in (0, 48]");
    }
    let grid = Grid::new(&cfg.ladder);
    let learned = matches!(mix, "learned" | "learnt");
    let named = if learned {
        None
    } else {
        match Mix::named(mix) {
            Some(m) => Some(m),
            None => bail!("--mix {mix:?}: use learned, A or B"),
        }
    };
    let rows = if learned && cfg.database_path.exists() {
        crate::store::Store::read_finished(&cfg.database_path, 0, crate::store::EVIDENCE_ROWS)
            .await?
    } else {
        Vec::new()
    };
    // Each stream's mix, and what it was made of.
    let mut mixes: Vec<(Mix, String)> = Vec::with_capacity(streams.len());
    for (i, (kind, _)) in streams.iter().enumerate() {
        if !cfg.kinds.contains_key(kind.as_str()) {
            bail!("unknown kind {kind:?}");
        }
        if streams[..i].iter().any(|(k, _)| k == kind) {
            bail!("kind {kind:?} given twice: one rate per kind");
        }
        if let Some(m) = &named {
            mixes.push((
                m.clone(),
                format!("published mix {}", mix.to_ascii_uppercase()),
            ));
            continue;
        }
        let mut learner = Learner::new(grid.ladder_prior(), i64::MAX / 4);
        let mut n = 0;
        for r in rows.iter().filter(|r| r.kind == kind.as_str()) {
            let (pending_seen, final_seen) = r.evidence_times();
            learner.observe(
                r.started_at,
                Evidence::of(&grid, r.started_at, pending_seen, final_seen),
            );
            n += 1;
        }
        for _ in 0..10 {
            learner.fit(0, std::iter::empty());
        }
        let about = if n == 0 {
            format!(
                "no finished {kind} payments in {}: the prior the ladder implies",
                cfg.database_path.display()
            )
        } else {
            format!("learnt from {n} finished {kind} payments")
        };
        mixes.push((
            Mix::Empirical {
                dist: learner.current().clone(),
                unit_ms: grid.unit_ms(),
            },
            about,
        ));
    }
    let rate = streams[0].1;
    let (mix, about) = mixes[0].clone();
    let hour = 3_600_000;
    let warmup_ms = i64::try_from(warmup.as_millis())
        .unwrap_or(hour)
        .min(48 * hour);
    let window_ms = i64::try_from(cfg.ninjapay.budget_window.as_millis()).unwrap_or(i64::MAX);
    let measured_ms = warmup_ms + (hours * hour as f64) as i64;
    // Late moves: the published late-flip workload on the kind's reconciliation schedule,
    // with a day more of arrivals so the moves of the measured payments compete with a live
    // stream for the spare budget, as they would.
    let schedule = cfg
        .kinds
        .get(streams[0].0.as_str())
        .map(|k| k.reconcile_after.clone())
        .unwrap_or_default();
    let ladder_scale = cfg.ladder.timeout_ms() as f64 / 600_000.0;
    // A key that cannot keep up has no spare budget: nothing to simulate after the timeout.
    let total_rate: f64 = streams.iter().map(|(_, r)| r).sum();
    let least = crate::policy::least_requests_per_window(total_rate / ladder_scale, window_ms);
    let keeps_up = crate::policy::keeps_up(least, cfg.ninjapay.budget_requests);
    let late = (!schedule.is_empty() && keeps_up).then(|| crate::sim::LateScenario {
        mix: Some(crate::sim::LateMix::published()),
        schedule: Some(
            schedule
                .iter()
                .map(|a| (*a as f64 / ladder_scale) as i64)
                .collect(),
        ),
        policy: crate::sim::LatePolicy::default(),
        measured_until_ms: Some(measured_ms),
    });
    let day = (24.0 * hour as f64 * ladder_scale) as i64;
    let mut phases = vec![Phase {
        duration_ms: measured_ms,
        rate,
        mix: mix.clone(),
    }];
    if late.is_some() {
        phases.push(Phase {
            duration_ms: day,
            rate,
            mix: mix.clone(),
        });
    }
    let tail_s = if late.is_some() {
        day as f64 / 1000.0
    } else {
        0.0
    };
    simulated_payments(
        total_rate,
        warmup_ms as f64 / 1000.0 + hours * 3600.0 + tail_s,
    )?;
    let sc = Scenario {
        ladder: cfg.ladder.clone(),
        budget: cfg.ninjapay.budget_requests,
        window_ms,
        phases,
        bursts: Vec::new(),
        warmup_ms,
        latency_ms: (50, 300),
        seed: 1,
        oracle: false,
        backlog_share: cfg.ninjapay.backlog_share,
        judge_plans: false,
        others: streams[1..]
            .iter()
            .zip(&mixes[1..])
            .map(|((_, r), (m, _))| (*r, m.clone()))
            .collect(),
        late: late.clone().unwrap_or_default(),
    };
    let scale = sc.scale();
    let r = tokio::task::spawn_blocking(move || crate::sim::run(&sc)).await??;
    // Each kind's own mean delay (s), over the measured flips.
    let kind_delay_s: Vec<f64> = (0..streams.len())
        .map(|i| {
            r.mean_delay_ms(|f| f.stream == i && f.arrived >= warmup_ms && f.arrived < measured_ms)
                .0
                / 1000.0
        })
        .collect();
    let by_kind: Vec<Value> = streams
        .iter()
        .zip(&mixes)
        .zip(&kind_delay_s)
        .map(|(((kind, rate), (_, about)), delay_s)| {
            json!({
                "kind": kind,
                "rate_per_s": rate,
                "mix": about,
                "mean_delay_s": delay_s,
            })
        })
        .collect();
    let dist = mix.dist(&grid, scale);
    let q = |p: f64| dist.quantile(p) as i64 * grid.unit_ms() / 1000;
    let out = json!({
        "rate_per_s": rate,
        "mix": about,
        "flip_share": dist.flips(),
        "flip_age_s": {"p50": q(0.5), "p90": q(0.9)},
        "mean_delay_s": r.mean_ms / 1000.0,
        "median_delay_s": r.median_ms / 1000.0,
        "p95_delay_s": r.p95_ms / 1000.0,
        "bound_s": r.bound_ms / 1000.0,
        "budget_use": r.budget_use,
        "over_budget": r.over_budget,
        "missed_deadlines": r.missed_deadlines,
        "budget_requests": cfg.ninjapay.budget_requests,
        "budget_window_s": window_ms as f64 / 1000.0,
        "least_requests_per_window": least,
        "keeps_up": keeps_up,
        "by_kind": by_kind,
        "late": late.as_ref().map(|_| {
            let l = &r.late;
            let of = |n: usize| n as f64 / l.moves.max(1) as f64;
            json!({
                "workload": "1 in 6 of the payments that never flip before the deadline approved late, log-uniformly 15 min to 24 h",
                "moves": l.moves,
                "seen_share": of(l.seen),
                "seen_within_24h_share": of(l.seen_24h),
                "mean_delay_s": l.mean_ms / 1000.0,
                "requests_per_timed_out": l.requests_per_timed_out,
            })
        }),
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{about}: {:.0}% of payments flip before the deadline, half of them by {} s, 90% by {} s", dist.flips() * 100.0, q(0.5), q(0.9));
        if streams.len() > 1 {
            let kinds: Vec<String> = streams
                .iter()
                .map(|(kind, rate)| format!("{kind} at {rate}/s"))
                .collect();
            println!(
                "{} on one key ({} requests per {}), one budget for all:",
                kinds.join(", "),
                cfg.ninjapay.budget_requests,
                humantime::format_duration(cfg.ninjapay.budget_window)
            );
        } else {
            println!(
                "at {rate} payments/s on one key ({} requests per {}):",
                cfg.ninjapay.budget_requests,
                humantime::format_duration(cfg.ninjapay.budget_window)
            );
        }
        println!(
            "  a flip is seen after {:.1} s on average (median {:.1} s, p95 {:.1} s); {}",
            r.mean_ms / 1000.0,
            r.median_ms / 1000.0,
            r.p95_ms / 1000.0,
            if keeps_up {
                format!("the best any policy could do: {:.1} s", r.bound_ms / 1000.0)
            } else {
                "no policy keeps up".to_string()
            }
        );
        if !keeps_up {
            println!(
                "  one key cannot keep up: every payment needs at least one request, {least:.0} per {} against a budget of {}; the backlog and the delay grow for as long as this rate lasts (the figures above are for this run's length only). Spread the payments over more API keys",
                humantime::format_duration(cfg.ninjapay.budget_window),
                cfg.ninjapay.budget_requests
            );
        }
        println!(
            "  budget used: {:.0}%{}",
            r.budget_use * 100.0,
            if r.budget_use > 0.9 {
                " (scarce: checks are allocated by age; another API key would shorten the delay)"
            } else {
                " (the documented ladder runs in full)"
            }
        );
        if streams.len() > 1 {
            for (((kind, _), (_, about)), delay_s) in streams.iter().zip(&mixes).zip(&kind_delay_s)
            {
                println!("  {kind}: a flip is seen after {delay_s:.1} s on average ({about})");
            }
        }
        let l = &r.late;
        if late.is_some() && l.moves == 0 {
            println!(
                "  after the timeout: no late flip in this run's measured payments (1 in 6 of the unflipped approved 15 min–24 h later); measure longer (--hours) to see what the spare budget buys"
            );
        } else if late.is_some() {
            let pct = |n: usize| 100.0 * n as f64 / l.moves.max(1) as f64;
            println!(
                "  after the timeout (1 in 6 of the unflipped approved 15 min–24 h later): {:.0}% of the late flips seen within 24 h, {:.0}% within the schedule, {:.0} min after the flip on average; {:.1} late checks per timed-out payment from the spare budget",
                pct(l.seen_24h),
                pct(l.seen),
                l.mean_ms / 60_000.0 / ladder_scale,
                l.requests_per_timed_out
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The socket a client command speaks to: `--socket`, else the configuration's.
fn client_socket(cli: &Cli) -> PathBuf {
    // A client needs only the socket path; a broken config must not stop `status`.
    let cfg = if cli.socket.is_none() {
        match load_config(cli.config.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => {
                // Say so: otherwise a wrong default path reads as "no daemon".
                eprintln!("warning: configuration not loaded ({e:#}); trying ./ninjapoll.sock (pass --socket)");
                None
            }
        }
    } else {
        None
    };
    client::client_socket(cli.socket.as_deref(), cfg.as_ref())
}

/// `ninjapoll health`: one screen (or the API's JSON), redrawn every `--interval` with
/// `--watch` until interrupted; the exit status says whether the last answer was healthy.
async fn health(cli: &Cli, watch: bool, interval: &str) -> Result<u8> {
    use crate::health_view::{self, Style, UNREACHABLE};
    use std::io::{IsTerminal, Write};
    let every = humantime::parse_duration(interval)
        .ok()
        .filter(|d| *d >= std::time::Duration::from_millis(100))
        .with_context(|| {
            format!("--interval {interval:?}: expected a duration of 100ms or more, like 2s")
        })?;
    let socket = client_socket(cli);
    let terminal = std::io::stdout().is_terminal();
    let style = Style::for_output(terminal, std::env::var_os("NO_COLOR").as_deref());
    // Listening before the first request, so that a Ctrl-C while one waits is not lost.
    let mut interrupt = if watch {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("listening for Ctrl-C")?,
        )
    } else {
        None
    };
    let mut code = UNREACHABLE;
    loop {
        let fetched = match &mut interrupt {
            Some(ctrl_c) => tokio::select! {
                fetched = fetch_health(&socket) => fetched,
                _ = ctrl_c.recv() => return Ok(code),
            },
            None => fetch_health(&socket).await,
        };
        // What to show, on stdout (`Ok`) or as an error.
        let shown = match fetched {
            Err(e) => {
                code = UNREACHABLE;
                Err(format!("error: {e:#}"))
            }
            Ok((value, health)) => {
                code = health
                    .as_ref()
                    .map_or(UNREACHABLE, health_view::exit_status);
                match (cli.json, health) {
                    (true, _) => {
                        Ok(serde_json::to_string_pretty(&value)
                            .unwrap_or_else(|_| value.to_string()))
                    }
                    (false, Ok(h)) => Ok(health_view::render(&h, style, crate::payment::now_ms())),
                    (false, Err(e)) => Err(format!("error: {e:#}")),
                }
            }
        };
        let Some(ctrl_c) = &mut interrupt else {
            match shown {
                Ok(text) => println!("{}", text.trim_end()),
                Err(text) => eprintln!("{text}"),
            }
            return Ok(code);
        };
        if terminal {
            // Home and clear, then the screen: a redraw in place.
            print!("\x1b[H\x1b[2J");
        }
        match (cli.json, shown) {
            // One document per answer, for a program to read as they come.
            (true, Ok(json)) => println!("{}", json.trim_end()),
            (true, Err(e)) => eprintln!("{e}"),
            // While watching, an unreachable daemon is part of the picture, not the end
            // of it.
            (false, text) => println!(
                "{}\n\n(every {}; Ctrl-C to stop)",
                text.unwrap_or_else(|e| e).trim_end(),
                humantime::format_duration(every)
            ),
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = ctrl_c.recv() => return Ok(code),
        }
    }
}

/// `GET /v1/health`: the answer as sent, and as read (an error when it is no health
/// answer of this version).
async fn fetch_health(socket: &Path) -> Result<(Value, Result<crate::wire::Health>)> {
    let (status, value) = request(socket, "GET", "/v1/health", None).await?;
    if status != 200 {
        match serde_json::from_value::<ErrorAnswer>(value.clone()) {
            Ok(ErrorAnswer { error, .. }) => {
                bail!("{} ({}, HTTP {status})", error.message, error.code)
            }
            Err(_) => bail!("request failed (HTTP {status}): {value}"),
        }
    }
    let health = serde_json::from_value(value.clone())
        .context("the daemon's answer is not what this ninjapoll expects (pass --json to see it)");
    Ok((value, health))
}

async fn client(cli: &Cli) -> Result<ExitCode> {
    let socket = client_socket(cli);
    // Ids may hold any printable character (see `PaymentId`): everything but RFC 3986's
    // unreserved characters is escaped so that a `/` or `?` stays inside its segment.
    let enc = |s: &str| utf8_percent_encode(s, PATH_SEGMENT).to_string();
    let (method, path, body, answer) = match &cli.command {
        Command::Enqueue {
            kind,
            id,
            started_at,
            metadata,
            callback_url,
        } => {
            let b = EnqueueRequest {
                kind: kind.clone(),
                id: id.clone(),
                // A number stays a number: the API takes unix seconds either way, and
                // RFC 3339 as a string.
                started_at: started_at.as_ref().map(|s| match s.parse::<f64>() {
                    Ok(n) => json!(n),
                    Err(_) => json!(s),
                }),
                callback_url: callback_url.clone(),
                metadata: metadata
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()
                    .context("--metadata is not JSON")?,
            };
            let b = serde_json::to_value(b).context("writing the request")?;
            ("POST", "/v1/checks".to_string(), Some(b), Answer::Payment)
        }
        Command::Status { kind, id } => (
            "GET",
            format!("/v1/checks/{}/{}", enc(kind), enc(id)),
            None,
            Answer::PaymentDetail,
        ),
        Command::Cancel { kind, id } => (
            "DELETE",
            format!("/v1/checks/{}/{}", enc(kind), enc(id)),
            None,
            Answer::Payment,
        ),
        Command::Recheck { kind, id } => (
            "POST",
            format!("/v1/checks/{}/{}/recheck", enc(kind), enc(id)),
            None,
            Answer::Recheck,
        ),
        Command::List {
            state,
            kind,
            limit,
            cursor,
        } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &limit.to_string());
            q.extend_pairs(state.iter().map(|s| ("state", s)));
            q.extend_pairs(kind.iter().map(|k| ("kind", k)));
            q.extend_pairs(cursor.iter().map(|c| ("cursor", c)));
            (
                "GET",
                format!("/v1/checks?{}", q.finish()),
                None,
                Answer::PaymentPage,
            )
        }
        Command::Webhooks { action } => match action {
            WebhooksCommand::List {
                state,
                limit,
                cursor,
            } => {
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("limit", &limit.to_string());
                q.extend_pairs(state.iter().map(|s| ("state", s)));
                q.extend_pairs(cursor.iter().map(|c| ("cursor", c)));
                (
                    "GET",
                    format!("/v1/webhooks?{}", q.finish()),
                    None,
                    Answer::WebhookPage,
                )
            }
            WebhooksCommand::Replay { event_id } => (
                "POST",
                format!("/v1/webhooks/{}/replay", enc(event_id)),
                None,
                Answer::Webhook,
            ),
        },
        #[cfg(feature = "demo")]
        Command::Demo { .. } => unreachable!("handled by dispatch"),
        Command::Run | Command::CheckConfig | Command::Simulate { .. } | Command::Health { .. } => {
            unreachable!("handled by dispatch")
        }
    };
    let (status, value) = request(&socket, method, &path, body.as_ref()).await?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    if status >= 400 {
        // Anything but our error format (a proxy's page, a daemon far older or newer)
        // is still reported, as what it is.
        match serde_json::from_value::<ErrorAnswer>(value.clone()) {
            Ok(ErrorAnswer { error, .. }) => {
                eprintln!("error: {} ({}, HTTP {status})", error.message, error.code)
            }
            Err(_) => eprintln!("error: request failed (HTTP {status}): {value}"),
        }
        return Ok(ExitCode::FAILURE);
    }
    if !cli.json {
        print_human(answer, value)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What a client command's successful answer is, so that it is read as that type rather
/// than guessed from its keys.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Payment,
    PaymentDetail,
    Recheck,
    PaymentPage,
    WebhookPage,
    Webhook,
}

fn print_human(answer: Answer, v: Value) -> Result<()> {
    let read = "the daemon's answer is not what this ninjapoll expects (pass --json to see it)";
    match answer {
        Answer::Payment => {
            let p: PaymentView = serde_json::from_value(v).context(read)?;
            print_payments(std::slice::from_ref(&p), None);
            print_next_check(&p);
        }
        Answer::PaymentDetail => {
            let d: PaymentDetail = serde_json::from_value(v).context(read)?;
            print_payments(std::slice::from_ref(&d.payment), None);
            print_next_check(&d.payment);
        }
        Answer::Recheck => {
            let r: RecheckAnswer = serde_json::from_value(v).context(read)?;
            print_payments(std::slice::from_ref(&r.payment), None);
            print_next_check(&r.payment);
        }
        Answer::PaymentPage => {
            let page: PaymentPage = serde_json::from_value(v).context(read)?;
            let more = page.next_cursor.filter(|_| page.has_more);
            print_payments(&page.payments, more.as_deref());
        }
        Answer::WebhookPage => {
            let page: WebhookPage = serde_json::from_value(v).context(read)?;
            let more = page.next_cursor.filter(|_| page.has_more);
            print_webhooks(&page.webhooks, more.as_deref());
        }
        Answer::Webhook => {
            print_webhooks(&[serde_json::from_value(v).context(read)?], None);
        }
    }
    Ok(())
}

fn print_payments(payments: &[PaymentView], more: Option<&str>) {
    println!(
        "{:<8} {:<24} {:<10} {:<12} {:>6}  LAST ERROR",
        "KIND", "ID", "STATE", "UPSTREAM", "CHECKS"
    );
    for p in payments {
        println!(
            "{:<8} {:<24} {:<10} {:<12} {:>6}  {}",
            p.facts.kind,
            p.facts.id,
            p.facts.state.as_str(),
            p.facts.upstream_status.as_deref().unwrap_or("-"),
            p.checks_done,
            p.last_error.as_deref().unwrap_or(""),
        );
    }
    if let Some(c) = more {
        println!("(more: --cursor {c})");
    }
}

fn print_next_check(p: &PaymentView) {
    if let Some(next) = p.next_check_at {
        println!("next check at {}", crate::payment::rfc3339(next.0));
    }
}

fn print_webhooks(events: &[WebhookView], more: Option<&str>) {
    println!(
        "{:<30} {:<9} {:<8} {:<24} {:>4} {:<22} {:>8}  LAST ERROR",
        "EVENT", "STATE", "KIND", "ID", "SEQ", "TYPE", "ATTEMPTS"
    );
    for e in events {
        println!(
            "{:<30} {:<9} {:<8} {:<24} {:>4} {:<22} {:>8}  {}",
            e.event_id,
            e.state.as_str(),
            e.payment.kind,
            e.payment.id,
            e.sequence,
            e.event_type,
            e.attempts,
            e.last_error.as_deref().unwrap_or(""),
        );
    }
    if let Some(c) = more {
        println!("(more: --cursor {c})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enormous_simulation_is_refused_before_it_allocates() {
        let rate = parse_rate("1e7").unwrap();
        let e = simulated_payments(rate, 2.0 * 3600.0).unwrap_err();
        assert!(e.to_string().contains("--rate"), "{e}");
        assert!(simulated_payments(parse_rate("inf").unwrap_or(1e300), 1.0).is_err());
        assert!(simulated_payments(0.5, 48.0 * 3600.0).is_ok());
    }
}
