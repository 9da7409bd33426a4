//! `ninjapoll simulate`: the real scheduler on simulated time, at a given rate of payments
//! on one key, with the flip ages learnt from the database (or a published mix).

use crate::config::Config;
use crate::payment::{SchedMs, WallMs};
use crate::policy::{Evidence, Grid, Learner};
use crate::sim::{LateMix, LatePolicy, LateScenario, Mix, Phase, Report, Scenario};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;

/// Parses a rate of payments: `0.5`, `0.5/s`, `30/min`, `1000/h`, into per second.
pub(super) fn parse_rate(s: &str) -> Result<f64> {
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

/// The streams on the key: `kind` at `rate`, then each `--also KIND=RATE`.
pub(super) fn streams(kind: &str, rate: &str, also: &[String]) -> Result<Vec<(String, f64)>> {
    std::iter::once(Ok((kind.to_string(), parse_rate(rate)?)))
        .chain(also.iter().map(|a| {
            let (k, r) = a
                .split_once('=')
                .with_context(|| format!("--also {a:?}: expected KIND=RATE"))?;
            Ok((k.to_string(), parse_rate(r)?))
        }))
        .collect()
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
pub(super) async fn simulate(
    cfg: &Config,
    account: &str,
    streams: &[(String, f64)],
    mix: &str,
    (hours, warmup): (f64, Duration),
    json_out: bool,
) -> Result<ExitCode> {
    if !(hours > 0.0 && hours <= 48.0) {
        bail!("--hours must be in (0, 48]");
    }
    let grid = Grid::new(&cfg.ladder);
    let mixes = stream_mixes(cfg, account, &grid, streams, mix).await?;
    let setup = Setup::new(cfg, streams, hours, warmup);
    let sc = setup.scenario(cfg, streams, &mixes, hours)?;
    let scale = sc.scale();
    let report = tokio::task::spawn_blocking(move || crate::sim::run(&sc)).await??;
    let outcome = Outcome {
        cfg,
        streams,
        kind_delay_s: kind_delays(&report, streams.len(), &setup),
        dist: mixes[0].0.dist(&grid, scale),
        unit_ms: grid.unit_ms(),
        mixes,
        setup,
        report,
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&outcome.json())?);
    } else {
        outcome.print();
    }
    Ok(ExitCode::SUCCESS)
}

/// Each stream's mix, and what it was made of: the published one named, else the flips
/// learnt from the database's finished payments of its kind.
async fn stream_mixes(
    cfg: &Config,
    account: &str,
    grid: &Grid,
    streams: &[(String, f64)],
    mix: &str,
) -> Result<Vec<(Mix, String)>> {
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
        crate::store::Store::read_finished(
            &cfg.database_path,
            WallMs(0),
            crate::store::EVIDENCE_ROWS,
        )
        .await?
    } else {
        Vec::new()
    };
    let mut mixes: Vec<(Mix, String)> = Vec::with_capacity(streams.len());
    for (i, (kind, _)) in streams.iter().enumerate() {
        if !cfg.kinds.contains_key(kind.as_str()) {
            bail!("unknown kind {kind:?}");
        }
        if streams[..i].iter().any(|(k, _)| k == kind) {
            bail!("kind {kind:?} given twice: one rate per kind");
        }
        mixes.push(match &named {
            Some(m) => (
                m.clone(),
                format!("published mix {}", mix.to_ascii_uppercase()),
            ),
            None => {
                let ours = |r: &&crate::store::FinishedRow| {
                    r.kind == kind.as_str() && r.account.as_str() == account
                };
                let evidence = rows.iter().filter(ours).map(|r| {
                    let (pending_seen, final_seen) = r.evidence_times();
                    // The offline learner keeps every row (see `learnt_mix`): its clock
                    // is the rows' own.
                    (
                        SchedMs(r.started_at.as_ms()),
                        Evidence::of(grid, r.started_at, pending_seen, final_seen),
                    )
                });
                learnt_mix(cfg, grid, evidence, kind)
            }
        });
    }
    Ok(mixes)
}

/// The flip ages learnt from the `evidence` of `kind`'s finished payments (each with its
/// start; the ladder's prior when there is none), and what they were learnt from.
fn learnt_mix(
    cfg: &Config,
    grid: &Grid,
    evidence: impl Iterator<Item = (SchedMs, Evidence)>,
    kind: &str,
) -> (Mix, String) {
    let mut learner = Learner::new(grid.ladder_prior(), i64::MAX / 4);
    let mut n = 0;
    for (started, e) in evidence {
        learner.observe(started, e);
        n += 1;
    }
    for _ in 0..10 {
        learner.fit(SchedMs(0), std::iter::empty());
    }
    let about = if n == 0 {
        format!(
            "no finished {kind} payments in {}: the prior the ladder implies",
            cfg.database_path.display()
        )
    } else {
        format!("learnt from {n} finished {kind} payments")
    };
    let mix = Mix::Empirical {
        dist: learner.current().clone(),
        unit_ms: grid.unit_ms(),
    };
    (mix, about)
}

/// The run's times and the key's standing, from the configuration and the streams.
struct Setup {
    warmup_ms: i64,
    /// The end of the measured span (warm-up included).
    measured_ms: i64,
    window_ms: i64,
    /// The configured ladder's length against the documented one's.
    ladder_scale: f64,
    /// The least requests per window the streams need ([`crate::policy::keeps_up`]).
    least: f64,
    keeps_up: bool,
    /// Late moves after the ladder, when the main kind has a schedule and spare budget.
    late: Option<LateScenario>,
}

impl Setup {
    fn new(cfg: &Config, streams: &[(String, f64)], hours: f64, warmup: Duration) -> Self {
        let warmup_ms = i64::try_from(warmup.as_millis())
            .unwrap_or(HOUR_MS)
            .min(48 * HOUR_MS);
        let window_ms = i64::try_from(cfg.ninjapay.budget_window.as_millis()).unwrap_or(i64::MAX);
        let measured_ms = warmup_ms + (hours * HOUR_MS as f64) as i64;
        // Late moves: the published late-flip workload on the kind's reconciliation
        // schedule, with a day more of arrivals so the moves of the measured payments
        // compete with a live stream for the spare budget, as they would.
        let schedule = cfg
            .kinds
            .get(streams[0].0.as_str())
            .map(|k| k.reconcile_after.clone())
            .unwrap_or_default();
        let ladder_scale = cfg.ladder.timeout_ms() as f64 / 600_000.0;
        // A key that cannot keep up has no spare budget: nothing to simulate after the
        // timeout.
        let total_rate: f64 = streams.iter().map(|(_, r)| r).sum();
        let least = crate::policy::least_requests_per_window(total_rate / ladder_scale, window_ms);
        let keeps_up = crate::policy::keeps_up(least, cfg.ninjapay.budget_requests);
        let late = (!schedule.is_empty() && keeps_up).then(|| LateScenario {
            mix: Some(LateMix::published()),
            schedule: Some(
                schedule
                    .iter()
                    .map(|a| (*a as f64 / ladder_scale) as i64)
                    .collect(),
            ),
            policy: LatePolicy::default(),
            measured_until_ms: Some(measured_ms),
        });
        Setup {
            warmup_ms,
            measured_ms,
            window_ms,
            ladder_scale,
            least,
            keeps_up,
            late,
        }
    }

    /// The simulator's scenario: the main stream over the measured span (a day more when
    /// late moves are simulated), the other streams beside it, one key's budget.
    fn scenario(
        &self,
        cfg: &Config,
        streams: &[(String, f64)],
        mixes: &[(Mix, String)],
        hours: f64,
    ) -> Result<Scenario> {
        let (rate, mix) = (streams[0].1, &mixes[0].0);
        let day = (24.0 * HOUR_MS as f64 * self.ladder_scale) as i64;
        let mut phases = vec![Phase {
            duration_ms: self.measured_ms,
            rate,
            mix: mix.clone(),
        }];
        if self.late.is_some() {
            phases.push(Phase {
                duration_ms: day,
                rate,
                mix: mix.clone(),
            });
        }
        let tail_s = if self.late.is_some() {
            day as f64 / 1000.0
        } else {
            0.0
        };
        let total_rate: f64 = streams.iter().map(|(_, r)| r).sum();
        simulated_payments(
            total_rate,
            self.warmup_ms as f64 / 1000.0 + hours * 3600.0 + tail_s,
        )?;
        Ok(Scenario {
            ladder: cfg.ladder.clone(),
            budget: cfg.ninjapay.budget_requests,
            window_ms: self.window_ms,
            phases,
            bursts: Vec::new(),
            warmup_ms: self.warmup_ms,
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
            late: self.late.clone().unwrap_or_default(),
        })
    }
}

/// Each kind's own mean delay (s), over the measured flips.
fn kind_delays(report: &Report, streams: usize, setup: &Setup) -> Vec<f64> {
    (0..streams)
        .map(|i| {
            report
                .mean_delay_ms(|f| {
                    f.stream == i
                        && f.arrived >= SchedMs(setup.warmup_ms)
                        && f.arrived < SchedMs(setup.measured_ms)
                })
                .0
                / 1000.0
        })
        .collect()
}

/// What a run found, to show.
struct Outcome<'a> {
    cfg: &'a Config,
    streams: &'a [(String, f64)],
    mixes: Vec<(Mix, String)>,
    setup: Setup,
    report: Report,
    kind_delay_s: Vec<f64>,
    /// The main stream's flip-age distribution.
    dist: crate::policy::FlipDist,
    unit_ms: i64,
}

impl Outcome<'_> {
    /// The age (s) by which a share `p` of the flips have happened.
    fn flip_age_s(&self, p: f64) -> i64 {
        self.dist.quantile(p) as i64 * self.unit_ms / 1000
    }

    fn json(&self) -> Value {
        let (r, cfg) = (&self.report, self.cfg);
        let by_kind: Vec<Value> = self
            .streams
            .iter()
            .zip(&self.mixes)
            .zip(&self.kind_delay_s)
            .map(|(((kind, rate), (_, about)), delay_s)| {
                json!({
                    "kind": kind,
                    "rate_per_s": rate,
                    "mix": about,
                    "mean_delay_s": delay_s,
                })
            })
            .collect();
        json!({
            "rate_per_s": self.streams[0].1,
            "mix": self.mixes[0].1,
            "flip_share": self.dist.flips(),
            "flip_age_s": {"p50": self.flip_age_s(0.5), "p90": self.flip_age_s(0.9)},
            "mean_delay_s": r.mean_ms / 1000.0,
            "median_delay_s": r.median_ms / 1000.0,
            "p95_delay_s": r.p95_ms / 1000.0,
            "bound_s": r.bound_ms / 1000.0,
            "budget_use": r.budget_use,
            "over_budget": r.over_budget,
            "missed_deadlines": r.missed_deadlines,
            "budget_requests": cfg.ninjapay.budget_requests,
            "budget_window_s": self.setup.window_ms as f64 / 1000.0,
            "least_requests_per_window": self.setup.least,
            "keeps_up": self.setup.keeps_up,
            "by_kind": by_kind,
            "late": self.setup.late.as_ref().map(|_| {
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
        })
    }

    fn print(&self) {
        let (r, cfg, streams) = (&self.report, self.cfg, self.streams);
        let (rate, about) = (streams[0].1, &self.mixes[0].1);
        let (keeps_up, least) = (self.setup.keeps_up, self.setup.least);
        println!("{about}: {:.0}% of payments flip before the deadline, half of them by {} s, 90% by {} s", self.dist.flips() * 100.0, self.flip_age_s(0.5), self.flip_age_s(0.9));
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
            for (((kind, _), (_, about)), delay_s) in
                streams.iter().zip(&self.mixes).zip(&self.kind_delay_s)
            {
                println!("  {kind}: a flip is seen after {delay_s:.1} s on average ({about})");
            }
        }
        self.print_late();
    }

    /// The late moves after the timeout, when the run simulated them.
    fn print_late(&self) {
        let l = &self.report.late;
        if self.setup.late.is_some() && l.moves == 0 {
            println!(
                "  after the timeout: no late flip in this run's measured payments (1 in 6 of the unflipped approved 15 min–24 h later); measure longer (--hours) to see what the spare budget buys"
            );
        } else if self.setup.late.is_some() {
            let pct = |n: usize| 100.0 * n as f64 / l.moves.max(1) as f64;
            println!(
                "  after the timeout (1 in 6 of the unflipped approved 15 min–24 h later): {:.0}% of the late flips seen within 24 h, {:.0}% within the schedule, {:.0} min after the flip on average; {:.1} late checks per timed-out payment from the spare budget",
                pct(l.seen_24h),
                pct(l.seen),
                l.mean_ms / 60_000.0 / self.setup.ladder_scale,
                l.requests_per_timed_out
            );
        }
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
