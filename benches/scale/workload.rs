//! The steady workload: `P` payments pending per account, their ages spread evenly over
//! the lifetime; each one that reaches its timeout is replaced by a new one just started,
//! for the same account.

use crate::args::account;
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The kind checked: one payment per request, as the budget counts it.
pub const KIND: &str = "p2p";
/// Most checks in one batch enqueue (the API's limit).
const BATCH: usize = 10_000;
/// How often the feeder looks for timed-out payments to replace.
const FEED_EVERY: Duration = Duration::from_millis(100);

/// Every pending payment's timeout (unix ms) and account, the soonest first.
pub struct Pending {
    due: BinaryHeap<Reverse<(i64, usize)>>,
    next_id: u64,
    lifetime_ms: i64,
}

impl Pending {
    pub fn new(lifetime: Duration) -> Pending {
        Pending {
            due: BinaryHeap::new(),
            next_id: 0,
            lifetime_ms: i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// A new payment of account `a` started at `started_ms`: its enqueue item.
    fn add(&mut self, a: usize, started_ms: i64) -> Value {
        self.next_id += 1;
        self.due.push(Reverse((started_ms + self.lifetime_ms, a)));
        json!({
            "account": account(a),
            "kind": KIND,
            "id": format!("s{:09}", self.next_id),
            "started_at": started_ms as f64 / 1000.0,
        })
    }

    /// `pending` payments for each of `accounts`, started a uniformly spread age ago: the
    /// `j`-th of an account at `(j + u) / pending` of the lifetime, `u` uniform in [0, 1).
    pub fn seed(&mut self, accounts: usize, pending: usize, now_ms: i64) -> Vec<Value> {
        let mut rng = fastrand::Rng::with_seed(26);
        let mut items = Vec::with_capacity(accounts * pending);
        for a in 0..accounts {
            for j in 0..pending {
                let share = (j as f64 + rng.f64()) / pending as f64;
                let age = (share * self.lifetime_ms as f64) as i64;
                items.push(self.add(a, now_ms - age));
            }
        }
        // Interleave the accounts so that each batch holds every account's share.
        rng.shuffle(&mut items);
        items
    }

    /// One new payment for each that reached its timeout by `now_ms`.
    fn replace_due(&mut self, now_ms: i64) -> Vec<Value> {
        let mut items = Vec::new();
        while let Some(Reverse((due, a))) = self.due.peek().copied() {
            if due > now_ms {
                break;
            }
            self.due.pop();
            items.push(self.add(a, now_ms));
        }
        items
    }
}

/// Enqueues `items` in batches; every item must be taken (201, or 200 if already there).
pub async fn enqueue(socket: &Path, items: Vec<Value>) -> Result<u64> {
    let mut taken = 0u64;
    for chunk in items.chunks(BATCH) {
        let body = json!({ "checks": chunk });
        let (status, answer) = ninjapoll::request(socket, "POST", "/v1/checks/batch", Some(&body))
            .await
            .context("batch enqueue")?;
        ensure!(status == 200, "batch enqueue answered {status}: {answer}");
        let results = answer["results"]
            .as_array()
            .with_context(|| format!("batch answer without results: {answer}"))?;
        for r in results {
            let s = r["status"].as_u64().unwrap_or(0);
            ensure!(s == 200 || s == 201, "a batch item was refused: {r}");
        }
        taken += results.len() as u64;
    }
    Ok(taken)
}

/// Keeps the pending count per account until `stop`: every [`FEED_EVERY`], the payments
/// that timed out are replaced. Returns how many were enqueued.
pub async fn feed(socket: PathBuf, mut pending: Pending, stop: CancellationToken) -> Result<u64> {
    let mut tick = tokio::time::interval(FEED_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fed = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(fed),
            _ = tick.tick() => {}
        }
        let items = pending.replace_due(ninjapoll::now_ms().as_ms());
        if !items.is_empty() {
            fed += enqueue(&socket, items).await?;
        }
    }
}
