//! The printed figures, each against its target.

use crate::args::Args;
use crate::measure::spread;
use crate::workload::KIND;
use crate::Run;
use std::time::Duration;

const READY_TARGET: Duration = Duration::from_secs(5);
const P99_TARGET_S: f64 = 0.050;
const CPU_RATIO_TARGET: f64 = 2.0;
const RSS_TARGET_MB: f64 = 300.0;

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn dur(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

pub fn header(a: &Args) {
    println!(
        "scale: {} accounts x {} pending ({} payments), kind {KIND}, the default ladder, budget {} per {} per key; warm-up {}, measured {}",
        a.accounts,
        a.pending,
        a.accounts * a.pending,
        a.budget,
        dur(a.window),
        dur(a.warmup),
        dur(a.measure),
    );
    println!(
        "the daemon is the ninjapoll binary (a child process); the fake Ninjapay and the feeder run in this process on one thread, on the same cores"
    );
}

fn quantile(b: &crate::measure::Buckets, q: f64) -> String {
    match b.quantile(q) {
        Some(s) if s.is_infinite() => "above the largest bucket".into(),
        Some(s) => format!("<= {:.3} s", s),
        None => "no checks".into(),
    }
}

/// Prints every figure; returns whether all met their targets.
pub fn print(a: &Args, r: &Run) -> bool {
    let span = r.end.at.duration_since(r.start.at);
    let per_window = a.window.as_secs_f64() / span.as_secs_f64();
    println!(
        "seeded {} payments in {:.1} s (first run); {} more fed during the run",
        r.seeded,
        r.seed_time.as_secs_f64(),
        r.fed
    );
    let ready_ok = r.ready_after <= READY_TARGET;
    println!(
        "READY after the restart, {} pending: {:.2} s  (target <= {} s)  {}",
        r.pending_at_ready,
        r.ready_after.as_secs_f64(),
        READY_TARGET.as_secs(),
        verdict(ready_ok)
    );
    let (lo, mid, hi) = spread(&r.per_key.max_in_window);
    let over = r
        .per_key
        .max_in_window
        .iter()
        .filter(|n| **n > a.budget as usize)
        .count();
    let budget_ok = over == 0 && r.violations == 0;
    println!(
        "requests per account, most in any {} window (whole run): min {lo} / median {mid} / max {hi} of {}; accounts over: {over}, fake violations: {}  {}",
        dur(a.window),
        a.budget,
        r.violations,
        verdict(budget_ok)
    );
    let (lo, mid, hi) = spread(&r.per_key.measured);
    let scaled = |n: usize| n as f64 * per_window;
    println!(
        "requests per account in the measured {} (per {} window): min {lo} / median {mid} / max {hi} ({:.0} / {:.0} / {:.0}, {:.1}% of the budget at the median)",
        dur(span),
        dur(a.window),
        scaled(lo),
        scaled(mid),
        scaled(hi),
        100.0 * scaled(mid) / f64::from(a.budget),
    );
    let total: usize = r.per_key.measured.iter().sum();
    let rate = total as f64 / span.as_secs_f64();
    let expected = a.accounts as f64 * f64::from(a.budget) / a.window.as_secs_f64();
    println!(
        "checks/s: {rate:.1} of {expected:.1} (accounts x budget / window): {:.1}%",
        100.0 * rate / expected
    );
    let late = r.end.lateness.since(&r.start.lateness);
    let p99_ok = late.quantile(0.99).is_some_and(|s| s <= P99_TARGET_S);
    println!(
        "check lateness ({} checks): p50 {}, p99 {}  (target p99 <= {} ms)  {}",
        late.total(),
        quantile(&late, 0.50),
        quantile(&late, 0.99),
        P99_TARGET_S * 1000.0,
        verdict(p99_ok)
    );
    println!("  per bucket (s): {}", late.describe());
    // Every budget binds: a check due while its key's window is full waits for the room,
    // as the budget means it to. The lateness above counts from that room, this from the
    // check's due time to it.
    let wait = r.end.budget_wait.since(&r.start.budget_wait);
    let waited = wait.total().saturating_sub(wait.at_most(0.001));
    println!(
        "waits for the budget's room: {waited} of {} checks ({:.1}%) waited more than 1 ms past their plan; p50 {}, p99 {}",
        wait.total(),
        100.0 * waited as f64 / wait.total().max(1) as f64,
        quantile(&wait, 0.50),
        quantile(&wait, 0.99),
    );
    println!("  per bucket (s): {}", wait.describe());
    let cpu_ok = print_cpu(r, total);
    let rss_ok = r.memory.0 <= RSS_TARGET_MB;
    println!(
        "daemon memory at the end: VmHWM {:.0} MB, VmRSS {:.0} MB  (target <= {RSS_TARGET_MB} MB)  {}",
        r.memory.0,
        r.memory.1,
        verdict(rss_ok)
    );
    println!(
        "largest notification to the service manager (STATUS=…): {} bytes (systemd ignores one over 4096, PIPE_BUF)",
        r.largest_notify
    );
    println!("daemon stopped by SIGTERM: {}", r.exit);
    ready_ok && budget_ok && p99_ok && cpu_ok && rss_ok && r.exit.success()
}

/// The daemon's CPU per check against the bare client's; whether the ratio met its target.
fn print_cpu(r: &Run, checks: usize) -> bool {
    let cpu = r.end.cpu.saturating_sub(r.start.cpu);
    let daemon_us = cpu.as_secs_f64() * 1e6 / checks.max(1) as f64;
    let bare_us = r.bare.per_check_us();
    let ratio = daemon_us / bare_us;
    let ok = ratio <= CPU_RATIO_TARGET;
    println!(
        "daemon CPU: {:.1} s over the span, {daemon_us:.0} us per check; bare client {bare_us:.0} us per check ({} requests, {} answered 200, fake violations {}); ratio {ratio:.2}  (target <= {CPU_RATIO_TARGET})  {}",
        cpu.as_secs_f64(),
        r.bare.requests,
        r.bare.answered_ok,
        r.bare.fake_violations,
        verdict(ok)
    );
    ok
}
