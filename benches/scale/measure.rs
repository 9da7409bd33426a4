//! The figures: check lateness and the budget's waits from the daemon's histograms (summed
//! over its pools), and each key's requests as the fake saw them.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How late checks went once their key's budget had room for them.
pub const LATENESS: &str = "ninjapoll_check_lateness_seconds";
/// How long checks waited past their plan for the budget's room.
pub const BUDGET_WAIT: &str = "ninjapoll_check_budget_wait_seconds";

/// A cumulative histogram: per upper bound (`le`), how many observations were at most it.
#[derive(Debug, Clone, Default)]
pub struct Buckets(BTreeMap<Bound, u64>);

/// A bucket's upper bound, ordered as a number (`+Inf` last).
#[derive(Debug, Clone, Copy)]
pub struct Bound(pub f64);
impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Bound {}

impl Buckets {
    /// The buckets of histogram `name` in a `/metrics` text, summed across pools.
    pub fn parse(text: &str, name: &str) -> Result<Buckets> {
        let prefix = format!("{name}_bucket{{");
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with(&prefix)) {
            let le = line
                .split_once("le=\"")
                .and_then(|(_, r)| r.split_once('"'))
                .map(|(le, _)| le)
                .with_context(|| format!("a bucket without le: {line:?}"))?;
            let bound = match le {
                "+Inf" => f64::INFINITY,
                v => v.parse().with_context(|| format!("le {v:?}"))?,
            };
            let count: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("a bucket without a count: {line:?}"))?;
            *out.entry(Bound(bound)).or_insert(0) += count as u64;
        }
        Ok(Buckets(out))
    }

    /// What was observed after `before` (a pool absent then counts from 0).
    pub fn since(&self, before: &Buckets) -> Buckets {
        let diff = self
            .0
            .iter()
            .map(|(b, n)| (*b, n.saturating_sub(before.0.get(b).copied().unwrap_or(0))))
            .collect();
        Buckets(diff)
    }

    pub fn total(&self) -> u64 {
        self.0.get(&Bound(f64::INFINITY)).copied().unwrap_or(0)
    }

    /// Each bucket's own count (not cumulative), the empty ones left out: `le=BOUND: N`.
    pub fn describe(&self) -> String {
        let mut below = 0;
        let mut parts = Vec::new();
        for (b, n) in &self.0 {
            if *n > below {
                parts.push(format!("<={}: {}", b.0, n - below));
            }
            below = *n;
        }
        parts.join(", ")
    }

    /// How many observations were at most `bound` (a bucket's own bound).
    pub fn at_most(&self, bound: f64) -> u64 {
        self.0.get(&Bound(bound)).copied().unwrap_or(0)
    }

    /// The smallest bound at or under which at least the share `q` of observations lies.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let want = ((q * total as f64).ceil() as u64).max(1);
        self.0.iter().find(|(_, n)| **n >= want).map(|(b, _)| b.0)
    }
}

/// Fetches the daemon's metrics text.
pub async fn scrape(client: &reqwest::Client, url: &str) -> Result<String> {
    let resp = client.get(url).send().await.context("GET /metrics")?;
    anyhow::ensure!(resp.status().is_success(), "/metrics: {}", resp.status());
    Ok(resp.text().await?)
}

/// The most arrivals (in order) lying less than `window` apart.
pub fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while t.saturating_duration_since(times[start]) >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Each key's requests over the run and in the measured span.
pub struct PerKey {
    /// The most in any rolling window, per key (the whole run, warm-up included).
    pub max_in_window: Vec<usize>,
    /// In the measured span, per key.
    pub measured: Vec<usize>,
}

impl PerKey {
    /// From the fake's arrivals, for `keys` in order (a key never seen counts 0).
    pub fn of(
        arrivals: &std::collections::HashMap<String, Vec<Instant>>,
        keys: &[String],
        window: Duration,
        span: (Instant, Instant),
    ) -> PerKey {
        let none = Vec::new();
        let times = |k: &String| arrivals.get(k).unwrap_or(&none);
        PerKey {
            max_in_window: keys
                .iter()
                .map(|k| max_in_window(times(k), window))
                .collect(),
            measured: keys
                .iter()
                .map(|k| {
                    times(k)
                        .iter()
                        .filter(|t| **t >= span.0 && **t < span.1)
                        .count()
                })
                .collect(),
        }
    }
}

/// `(min, median, max)`.
pub fn spread(values: &[usize]) -> (usize, usize, usize) {
    let mut v = values.to_vec();
    v.sort_unstable();
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(a), Some(m), Some(b)) => (*a, *m, *b),
        _ => (0, 0, 0),
    }
}
