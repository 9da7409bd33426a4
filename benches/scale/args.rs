//! The command line: the measured run's sizes and durations, or the bare client's (a
//! hidden mode: the bench re-executes itself with `--bare`).

use std::time::Duration;

pub const HELP: &str = "\
scale: one real daemon (the ninjapoll binary, a child process) with many Ninjapay accounts,
each on its own key and budget, against the fake Ninjapay in this process, in real time.

usage: cargo bench --bench scale -- [OPTIONS]
  --accounts N     accounts (keys) on the daemon, `default` included   (1000)
  --pending P      payments kept pending per account                   (100)
  --warmup DUR     left out after READY: a payment's lifetime, so none (10m)
                   measured is one the restart's catch-up put behind
  --measure DUR    the measured span                                   (10m)
  --budget R       requests per window per key, at the fake and the daemon (1000)
  --window DUR     the budget's window                                 (10m)
  --help           this text";

/// The measured run.
#[derive(Debug, Clone)]
pub struct Args {
    pub accounts: usize,
    pub pending: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub budget: u32,
    pub window: Duration,
}

/// The bare client's run (`--bare`): paced requests to a fake, then its CPU on stdout.
#[derive(Debug, Clone)]
pub struct Bare {
    pub url: String,
    pub key_prefix: String,
    pub keys: usize,
    pub rate: f64,
    pub span: Duration,
}

pub enum Mode {
    Help,
    Measure(Args),
    Bare(Bare),
}

fn duration(flag: &str, value: Option<String>) -> Result<Duration, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a duration"))?;
    humantime::parse_duration(&v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{flag} {v:?}: not a duration above 0 (e.g. 90s, 10m)"))
}

fn count<T: std::str::FromStr + PartialOrd + Default>(
    flag: &str,
    value: Option<String>,
) -> Result<T, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a number"))?;
    v.parse::<T>()
        .ok()
        .filter(|n| *n > T::default())
        .ok_or_else(|| format!("{flag} {v:?}: not a number above 0"))
}

/// Reads the arguments (`cargo bench` adds `--bench`). `Err`: a message for the user.
pub fn parse(argv: impl Iterator<Item = String>) -> Result<Mode, String> {
    let mut a = Args {
        accounts: 1000,
        pending: 100,
        warmup: Duration::from_secs(600),
        measure: Duration::from_secs(600),
        budget: 1000,
        window: Duration::from_secs(600),
    };
    let mut bare: Option<Bare> = None;
    let mut it = argv;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {}
            "-h" | "--help" => return Ok(Mode::Help),
            "--accounts" => a.accounts = count("--accounts", it.next())?,
            "--pending" => a.pending = count("--pending", it.next())?,
            "--warmup" => a.warmup = duration("--warmup", it.next())?,
            "--measure" => a.measure = duration("--measure", it.next())?,
            "--budget" => a.budget = count("--budget", it.next())?,
            "--window" => a.window = duration("--window", it.next())?,
            "--bare" => {
                bare = Some(Bare {
                    url: it.next().ok_or("--bare URL KEY_PREFIX KEYS RATE SPAN")?,
                    key_prefix: it.next().ok_or("--bare: KEY_PREFIX")?,
                    keys: count("--bare KEYS", it.next())?,
                    rate: count("--bare RATE", it.next())?,
                    span: duration("--bare SPAN", it.next())?,
                })
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.accounts > 9999 {
        return Err("--accounts: at most 9999".into());
    }
    Ok(match bare {
        Some(b) => Mode::Bare(b),
        None => Mode::Measure(a),
    })
}

/// The `i`-th key of a fake's accounts, `prefix` telling two fakes' keys apart.
pub fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:04}")
}

/// The daemon's name for the `i`-th account: `default` first (its key is `[ninjapay]`'s).
pub fn account(i: usize) -> String {
    if i == 0 {
        "default".into()
    } else {
        format!("a{i:04}")
    }
}
