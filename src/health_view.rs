//! `ninjapoll health` for a person: the daemon's `/v1/health` answer drawn on one screen,
//! every problem first. Pure: a [`Health`] and a [`Style`] in, text out; the CLI fetches,
//! decides on colour and prints.

use crate::payment::WallMs;
use crate::wire::{AccountHealth, Health, KindPolicyView, PoolHealth};
use std::fmt::Write as _;

/// How the screen is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// ANSI colours (only on a terminal, and not under `NO_COLOR`).
    pub color: bool,
}

impl Style {
    /// Colour only on a terminal, and never when `NO_COLOR` is set to anything but empty
    /// (<https://no-color.org>).
    pub fn for_output(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> Self {
        Style {
            color: is_terminal && no_color.is_none_or(|v| v.is_empty()),
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn red(self, text: &str) -> String {
        self.paint("1;31", text)
    }
    fn green(self, text: &str) -> String {
        self.paint("32", text)
    }
    fn yellow(self, text: &str) -> String {
        self.paint("33", text)
    }
    fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }
    fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }
}

/// The exit status of `ninjapoll health`: 0 healthy, 1 not ([`UNREACHABLE`] when there was
/// no answer to judge).
pub fn exit_status(h: &Health) -> u8 {
    if h.healthy {
        0
    } else {
        1
    }
}

/// The exit status when the daemon could not be asked, or its answer not read.
pub const UNREACHABLE: u8 = 2;

/// Columns of the budget bar and of the flip-age histogram.
const BAR: usize = 20;
const HISTOGRAM: usize = 24;
/// Problem lines are wrapped here: they are sentences, often longer than a terminal.
const WRAP: usize = 100;

/// The whole screen, `now` (unix ms) for how old the scheduler's report is.
pub fn render(h: &Health, style: Style, now: WallMs) -> String {
    let mut out = String::new();
    let verdict = if h.healthy {
        style.green("healthy")
    } else {
        style.red(&format!(
            "UNHEALTHY: {} problem{}",
            h.problems.len(),
            if h.problems.len() == 1 { "" } else { "s" }
        ))
    };
    let _ = writeln!(out, "{} {}  {verdict}", style.bold("ninjapoll"), h.version);
    for p in &h.problems {
        for (i, line) in wrap(p, WRAP - 4).iter().enumerate() {
            let mark = if i == 0 { style.red("!") } else { " ".into() };
            let _ = writeln!(out, "  {mark} {line}");
        }
    }
    if h.accounts.len() > 1 {
        out.push('\n');
        render_accounts(&mut out, &h.accounts, style);
    }
    for pool in &h.budget {
        out.push('\n');
        render_pool(&mut out, pool, style);
    }
    if h.budget.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            style.dim("no key reported by the scheduler yet")
        );
    }
    out.push('\n');
    let payments = counts(
        &h.payments,
        &["pending", "succeeded", "failed", "timed_out", "cancelled"],
    );
    let unpolled = if h.scheduler.unpolled > 0 {
        style.red(&format!(
            " ({} pending not polled)",
            thousands(h.scheduler.unpolled)
        ))
    } else {
        String::new()
    };
    let _ = writeln!(out, "{:<10}{payments}{unpolled}", style.bold("payments"));
    let dead = h.webhooks.get("dead").copied().unwrap_or(0);
    let webhooks = counts(&h.webhooks, &["pending", "dead", "delivered"]);
    let webhooks = if dead > 0 {
        style.red(&webhooks)
    } else {
        webhooks
    };
    let _ = writeln!(out, "{:<10}{webhooks}", style.bold("webhooks"));
    let db = &h.database;
    let size = db.size_bytes.map_or_else(|| "size unknown".into(), bytes);
    let writes = if db.writes_failing {
        style.red(&format!(
            "WRITES FAILING ({} errors)",
            thousands(db.write_errors)
        ))
    } else if db.write_errors > 0 {
        format!(
            "writes ok ({} failed since start)",
            thousands(db.write_errors)
        )
    } else {
        "writes ok".to_string()
    };
    let finished = db
        .keep_finished_ms
        .map_or_else(|| "forever".into(), duration);
    let delivered = db.keep_delivered_ms.map_or_else(
        || "as long as their payment".into(),
        |ms| format!("for {}", duration(ms)),
    );
    let _ = writeln!(
        out,
        "{:<10}{size} · {writes} · finished payments kept {finished}, delivered webhook events {delivered}",
        style.bold("database"),
    );
    let reported = match h.scheduler.reported_at {
        Some(t) => format!("reported {} ago", duration((now - t.0).max(0))),
        None => "not reported yet".into(),
    };
    let _ = writeln!(
        out,
        "{:<10}holds {} pending · {reported}",
        style.bold("scheduler"),
        thousands(h.scheduler.pending)
    );
    out
}

/// One line per account: its pending payments, budget, whether it keeps up, the delay.
pub fn render_accounts(out: &mut String, accounts: &[AccountHealth], style: Style) {
    let _ = writeln!(out, "{}", style.bold("accounts"));
    for a in accounts {
        let keeps = if a.keeps_up {
            style.green("keeps up")
        } else {
            style.red("cannot keep up")
        };
        let backlog = if a.backlog > 0 {
            format!(", backlog {}", thousands(a.backlog))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:<16} {:>7} pending  budget {}/{}  {keeps}  delay ~{}{backlog}",
            a.account.as_str(),
            thousands(a.pending),
            thousands(a.budget_used),
            thousands(a.budget_limit),
            duration(a.expected_delay_ms),
        );
    }
}

fn render_pool(out: &mut String, p: &PoolHealth, style: Style) {
    let window = duration(p.budget_window_ms);
    let share = if p.budget_limit == 0 {
        1.0
    } else {
        f64::from(p.budget_used) / f64::from(p.budget_limit)
    };
    let lowered = if p.budget_limit < p.budget_configured {
        style.yellow(&format!(
            " (lowered from {} after a 429)",
            thousands(p.budget_configured)
        ))
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{} {:<10} budget {} {}/{} per {window}{lowered}",
        style.bold("key"),
        p.name,
        bar(share, BAR),
        thousands(p.budget_used),
        thousands(p.budget_limit),
    );
    let keeps_up = match (p.keeps_up, p.arrivals_per_window) {
        (true, Some(a)) => style.green(&format!("keeps up ({} arrive per {window})", a)),
        (true, None) => style.green("keeps up"),
        (false, a) => style.red(&format!(
            "CANNOT KEEP UP ({} arrive per {window})",
            a.unwrap_or(0.0)
        )),
    };
    let price = if p.scarce {
        style.yellow(&format!(
            "price {:.2} (scarce: checks by age)",
            p.price_level
        ))
    } else {
        format!("price {:.2} (the documented ladder)", p.price_level)
    };
    let _ = writeln!(out, "    {keeps_up} · {price}");
    let mut backlog = format!(
        "pending {} · backlog {}",
        thousands(p.pending),
        thousands(p.backlog)
    );
    if let Some(ms) = p.backlog_drains_in_ms {
        let _ = write!(backlog, " (drains in {} or more)", duration(ms));
    }
    let behind = format!("behind {}", duration(p.behind_ms));
    let behind = if p.behind_ms > p.budget_window_ms {
        style.red(&behind)
    } else {
        behind
    };
    let _ = write!(out, "    {backlog} · {behind}");
    if let Some(ms) = p.paused_for_ms.filter(|ms| *ms > 0) {
        let _ = write!(
            out,
            " · {}",
            style.yellow(&format!("paused {}", duration(ms)))
        );
    }
    if !p.unhealthy_kinds.is_empty() {
        let kinds: Vec<&str> = p.unhealthy_kinds.iter().map(|k| k.as_str()).collect();
        let _ = write!(
            out,
            " · {}",
            style.red(&format!("REFUSED for {}", kinds.join(", ")))
        );
    }
    out.push('\n');
    if p.policy.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "    {}",
        style.dim(&format!(
            "{:<10} {:>8} {:>7} {:>6} {:>7} {:>7} {:>7}  {:<HISTOGRAM$}  learnt from",
            "kind", "pending", "expect", "flips", "p50", "p90", "p99", "flip ages, 0 to p99"
        ))
    );
    for k in &p.policy {
        render_kind(out, k);
    }
}

fn render_kind(out: &mut String, k: &KindPolicyView) {
    let learnt = if k.evidence == 0 {
        "the ladder (no payments yet)".to_string()
    } else {
        let s = if k.evidence == 1 { "" } else { "s" };
        format!("{} payment{s}", thousands(k.evidence))
    };
    let _ = writeln!(
        out,
        "    {:<10} {:>8} {:>7} {:>5.0}% {:>7} {:>7} {:>7}  {}  {learnt}",
        k.kind.as_str(),
        thousands(k.pending),
        duration(k.expected_delay_ms),
        k.flip_share * 100.0,
        duration(k.flip_age_p50_ms),
        duration(k.flip_age_p90_ms),
        duration(k.flip_age_p99_ms),
        flip_histogram(
            [k.flip_age_p50_ms, k.flip_age_p90_ms, k.flip_age_p99_ms],
            HISTOGRAM
        ),
    );
    if k.watched > 0 || k.late_checks > 0 || k.late_skipped > 0 {
        let _ = writeln!(
            out,
            "    {:<10} after the ladder: {} watched · {} late moves · checks {} made, {} skipped",
            "",
            thousands(k.watched),
            thousands(k.late_moves),
            thousands(k.late_checks),
            thousands(k.late_skipped),
        );
    }
}

/// `used` of a budget as a bar of `width` cells.
fn bar(used: f64, width: usize) -> String {
    let full = (used.clamp(0.0, 1.0) * width as f64).round() as usize;
    format!("{}{}", "█".repeat(full), "░".repeat(width - full))
}

/// The learnt flip ages as a histogram of `width` columns from age 0 to the 99th
/// percentile: half the flips fall before p50, 40% between p50 and p90, 9% between p90
/// and p99, each spread evenly over its span, so a column's height is the density there.
fn flip_histogram(q: [i64; 3], width: usize) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let [p50, p90, p99] = q;
    let end = p99.max(1) as f64;
    let spans = [(0, p50, 0.5), (p50, p90, 0.4), (p90, p99, 0.09)];
    let col = |age: f64| ((age / end * width as f64) as usize).min(width - 1);
    let mut mass = vec![0.0_f64; width];
    for (from, to, share) in spans {
        let (from, to) = (from.max(0) as f64, to.max(from) as f64);
        if to - from < end / width as f64 {
            // Narrower than a column: all of it where it is.
            mass[col((from + to) / 2.0)] += share;
            continue;
        }
        for (c, m) in mass.iter_mut().enumerate() {
            let (a, b) = (
                c as f64 * end / width as f64,
                (c + 1) as f64 * end / width as f64,
            );
            let overlap = (b.min(to) - a.max(from)).max(0.0);
            *m += share * overlap / (to - from);
        }
    }
    let top = mass.iter().copied().fold(0.0, f64::max);
    mass.iter()
        .map(|m| {
            if *m <= 0.0 || top <= 0.0 {
                ' '
            } else {
                let level = (m / top * LEVELS.len() as f64).ceil() as usize;
                LEVELS[level.clamp(1, LEVELS.len()) - 1]
            }
        })
        .collect()
}

/// `pending 3 · dead 0 · …`: the `known` states in that order, then any other.
fn counts(map: &std::collections::BTreeMap<String, i64>, known: &[&str]) -> String {
    let mut parts: Vec<String> = known
        .iter()
        .map(|s| format!("{s} {}", thousands(map.get(*s).copied().unwrap_or(0))))
        .collect();
    parts.extend(
        map.iter()
            .filter(|(s, _)| !known.contains(&s.as_str()))
            .map(|(s, n)| format!("{s} {}", thousands(*n))),
    );
    parts.join(" · ")
}

/// `12,345`.
fn thousands(n: impl std::fmt::Display) -> String {
    let text = n.to_string();
    let (sign, digits) = match text.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", text.as_str()),
    };
    let mut out = String::from(sign);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// A duration in ms, short: `850ms`, `12s`, `2m30s`, `1h05m`, `90d`.
fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match ms {
        0 => "0s".into(),
        1..=999 => format!("{ms}ms"),
        1000..=9_999 if ms % 1000 != 0 => format!("{:.1}s", ms as f64 / 1000.0),
        _ if s < 60 => format!("{s}s"),
        _ if s < 3600 => match s % 60 {
            0 => format!("{}m", s / 60),
            r => format!("{}m{r:02}s", s / 60),
        },
        _ if s < 86_400 => match (s % 3600) / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h{m:02}m", s / 3600),
        },
        _ => match (s % 86_400) / 3600 {
            0 => format!("{}d", s / 86_400),
            h => format!("{}d{h}h", s / 86_400),
        },
    }
}

/// `12.3 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `text` in lines of at most `width` characters, broken between words.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::KindName;
    use crate::wire::{DatabaseHealth, HealthStatus, SchedulerHealth, Timestamp};

    const NOW: i64 = 1_780_000_000_000;

    fn kind(name: &str, evidence: usize) -> KindPolicyView {
        KindPolicyView {
            kind: KindName::parse(name).unwrap(),
            pending: 100,
            evidence,
            flip_share: 0.72,
            flip_age_p50_ms: 40_000,
            flip_age_p90_ms: 150_000,
            flip_age_p99_ms: 480_000,
            expected_delay_ms: 12_400,
            watched: 0,
            late_moves: 0,
            late_checks: 0,
            late_skipped: 0,
            late_move_share: 0.0,
            late_move_p50_ms: 0,
        }
    }

    fn pool() -> PoolHealth {
        PoolHealth {
            name: "default".into(),
            budget_used: 612,
            budget_limit: 1000,
            budget_configured: 1000,
            budget_window_ms: 600_000,
            price_level: 0.0,
            scarce: false,
            projected_requests: 600.0,
            planned_requests: 600.0,
            pending: 103,
            arrivals_per_window: Some(240.0),
            keeps_up: true,
            backlog: 0,
            behind_ms: 0,
            backlog_drains_in_ms: None,
            policy: vec![kind("p2p", 6000), kind("upi", 0)],
            paused_for_ms: None,
            unhealthy_kinds: vec![],
        }
    }

    fn health() -> Health {
        Health {
            accounts: Vec::new(),
            status: HealthStatus::Ok,
            version: "1.2.3".into(),
            healthy: true,
            problems: vec![],
            payments: [("pending".to_string(), 103), ("succeeded".into(), 4001)]
                .into_iter()
                .collect(),
            scheduler: SchedulerHealth {
                pending: 103,
                unpolled: 0,
                reported_at: Some(Timestamp(WallMs(NOW - 400))),
            },
            budget: vec![pool()],
            webhooks: [("delivered".to_string(), 4500)].into_iter().collect(),
            database: DatabaseHealth {
                writes_failing: false,
                write_errors: 0,
                size_bytes: Some(12_900_000),
                keep_finished_ms: Some(90 * 86_400_000),
                keep_delivered_ms: None,
            },
            reload: None,
        }
    }

    fn plain() -> Style {
        Style { color: false }
    }

    #[test]
    fn a_healthy_daemon_on_one_screen() {
        let text = render(&health(), plain(), WallMs(NOW));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ninjapoll 1.2.3  healthy", "{text}");
        assert!(
            text.contains("key default    budget ████████████░░░░░░░░ 612/1,000 per 10m\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "    keeps up (240 arrive per 10m) · price 0.00 (the documented ladder)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("    pending 103 · backlog 0 · behind 0s\n"),
            "{text}"
        );
        let p2p = lines
            .iter()
            .find(|l| l.trim_start().starts_with("p2p"))
            .expect("a line for p2p");
        assert!(
            p2p.starts_with("    p2p             100     12s    72%     40s   2m30s      8m  "),
            "{p2p:?}"
        );
        assert!(p2p.ends_with("  6,000 payments"), "{p2p:?}");
        let upi = lines.iter().find(|l| l.contains("upi")).unwrap();
        assert!(upi.ends_with("the ladder (no payments yet)"), "{upi:?}");
        assert!(
            text.contains(
                "payments  pending 103 · succeeded 4,001 · failed 0 · timed_out 0 · cancelled 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("webhooks  pending 0 · dead 0 · delivered 4,500\n"),
            "{text}"
        );
        assert!(
            text.contains("database  12.3 MiB · writes ok · finished payments kept 90d, delivered webhook events as long as their payment\n"),
            "{text}"
        );
        assert!(
            text.contains("scheduler holds 103 pending · reported 400ms ago\n"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "no colour asked: {text:?}");
        assert_eq!(exit_status(&health()), 0);
        // One screen: a key with two kinds fits in 24 lines.
        assert!(lines.len() <= 24, "{} lines:\n{text}", lines.len());
    }

    #[test]
    fn problems_come_first_and_what_is_wrong_stands_out() {
        let mut h = health();
        h.healthy = false;
        h.status = HealthStatus::Degraded;
        h.problems = vec![
            "no API key configured (ninjapay.api_key)".into(),
            format!(
                "3 webhook events are dead {}",
                "and this sentence goes on ".repeat(5)
            ),
        ];
        h.webhooks.insert("dead".into(), 3);
        h.database.writes_failing = true;
        h.database.write_errors = 7;
        h.database.keep_delivered_ms = Some(7 * 86_400_000);
        let p = &mut h.budget[0];
        p.keeps_up = false;
        p.arrivals_per_window = Some(1500.0);
        p.scarce = true;
        p.price_level = 1.25;
        p.budget_limit = 900;
        p.backlog = 1800;
        p.backlog_drains_in_ms = Some(5_400_000);
        p.behind_ms = 700_000;
        p.paused_for_ms = Some(12_000);
        p.unhealthy_kinds = vec![KindName::parse("upi").unwrap()];
        let text = render(&h, plain(), WallMs(NOW));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ninjapoll 1.2.3  UNHEALTHY: 2 problems");
        assert_eq!(lines[1], "  ! no API key configured (ninjapay.api_key)");
        assert!(
            lines[2].starts_with("  ! 3 webhook events are dead"),
            "{text}"
        );
        assert!(lines[2].chars().count() <= WRAP, "wrapped: {text}");
        assert!(
            lines[3].starts_with("    ") && lines[3].ends_with("goes on"),
            "the rest of the sentence, under it: {text}"
        );
        assert!(
            text.contains("612/900 per 10m (lowered from 1,000 after a 429)"),
            "{text}"
        );
        assert!(
            text.contains(
                "CANNOT KEEP UP (1500 arrive per 10m) · price 1.25 (scarce: checks by age)"
            ),
            "{text}"
        );
        assert!(
            text.contains("pending 103 · backlog 1,800 (drains in 1h30m or more) · behind 11m40s · paused 12s · REFUSED for upi\n"),
            "{text}"
        );
        assert!(text.contains("WRITES FAILING (7 errors)"), "{text}");
        assert!(text.contains("delivered webhook events for 7d"), "{text}");
        assert_eq!(exit_status(&h), 1);

        let coloured = render(&h, Style { color: true }, WallMs(NOW));
        assert!(
            coloured.contains("\x1b[1;31mUNHEALTHY: 2 problems\x1b[0m"),
            "{coloured:?}"
        );
        assert!(
            coloured.contains("\x1b[1;31mCANNOT KEEP UP"),
            "{coloured:?}"
        );
        assert!(coloured.contains("\x1b[1;31mbehind 11m40s"), "{coloured:?}");
        assert!(
            coloured.contains("\x1b[1;31mpending 0 · dead 3 · delivered 4,500\x1b[0m"),
            "{coloured:?}"
        );
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_under_no_color() {
        use std::ffi::OsStr;
        assert!(Style::for_output(true, None).color);
        assert!(!Style::for_output(false, None).color);
        assert!(!Style::for_output(true, Some(OsStr::new("1"))).color);
        assert!(
            Style::for_output(true, Some(OsStr::new(""))).color,
            "an empty NO_COLOR is unset"
        );
    }

    #[test]
    fn the_flip_histogram_is_the_density_between_the_quantiles() {
        // p50 at 40 s, p90 at 2m30s, p99 at 8 m over 24 columns of 20 s: the first two
        // columns hold half the flips, the next five and a half 40%, the rest 9%.
        let h: Vec<char> = flip_histogram([40_000, 150_000, 480_000], 24)
            .chars()
            .collect();
        assert_eq!(h.len(), 24);
        assert_eq!(&h[..2], &['█', '█'], "{h:?}");
        assert!(h[3] < h[0] && h[3] > h[10], "{h:?}");
        assert_eq!(h[23], '▁', "the tail is drawn, low: {h:?}");
        // Heights never rise past the median: the densities only fall.
        assert!(h.windows(2).all(|w| w[1] <= w[0]), "{h:?}");
        // Half the flips spread up to 60 s, the other half all at 60 s: a spike there.
        let spike = flip_histogram([60_000, 60_000, 60_000], 10);
        assert_eq!(spike, "▁▁▁▁▁▁▁▁▁█", "{spike:?}");
        // Nothing learnt (all zero): still a row of the given width.
        assert_eq!(flip_histogram([0, 0, 0], 8).chars().count(), 8);
    }

    #[test]
    fn figures_read_short() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(2_500), "2.5s");
        assert_eq!(duration(12_400), "12s");
        assert_eq!(duration(12_000), "12s");
        assert_eq!(duration(150_000), "2m30s");
        assert_eq!(duration(600_000), "10m");
        assert_eq!(duration(3_900_000), "1h05m");
        assert_eq!(duration(90 * 86_400_000), "90d");
        assert_eq!(duration(-5), "0s");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-1_234_567), "-1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(12_900_000), "12.3 MiB");
        assert_eq!(bar(0.0, 4), "░░░░");
        assert_eq!(bar(0.5, 4), "██░░");
        assert_eq!(bar(1.7, 4), "████", "never past the end");
        assert_eq!(wrap("a bb ccc", 4), vec!["a bb", "ccc"]);
    }
}

#[cfg(test)]
mod account_tests {
    use super::*;
    use crate::account::AccountName;

    fn account(name: &str, keeps_up: bool, backlog: usize) -> AccountHealth {
        AccountHealth {
            account: AccountName::parse(name).unwrap(),
            pending: 1200,
            budget_used: 640,
            budget_limit: 1000,
            keeps_up,
            expected_delay_ms: 12_000,
            backlog,
        }
    }

    #[test]
    fn each_account_has_a_line_saying_whether_it_keeps_up() {
        let mut out = String::new();
        let accounts = [account("default", true, 0), account("shop2", false, 40)];
        render_accounts(&mut out, &accounts, Style { color: false });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "accounts");
        assert!(
            lines[1].contains("default") && lines[1].contains("keeps up"),
            "{out}"
        );
        assert!(
            lines[1].contains("1,200 pending") && lines[1].contains("640/1,000"),
            "{out}"
        );
        assert!(
            lines[2].contains("shop2") && lines[2].contains("cannot keep up"),
            "{out}"
        );
        assert!(
            lines[2].contains("backlog 40") && !lines[1].contains("backlog"),
            "{out}"
        );
    }
}
