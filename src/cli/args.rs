//! The command line's definitions (clap): the global options and every command.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// ninjapoll: polls Ninjapay payment statuses on the provider's back-off ladder, within its
/// request budget, and fires signed webhooks when they change.
#[derive(Debug, Parser)]
#[command(name = "ninjapoll", version)]
pub struct Cli {
    /// Configuration file (else $NINJAPOLL_CONFIG, else /etc/ninjapoll/ninjapoll.toml).
    #[arg(long, global = true)]
    pub(super) config: Option<PathBuf>,
    /// Socket of the daemon (client commands); default: the configuration's.
    #[arg(long, global = true)]
    pub(super) socket: Option<PathBuf>,
    /// The Ninjapay account of the payments a client command names, and whose learnt
    /// ages and budget `simulate` uses (default: `default`, the account of `[ninjapay]`).
    #[arg(long, global = true)]
    pub(super) account: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub(super) json: bool,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
    /// List the accounts the daemon checks payments for: pending, budget, keeps up, delay.
    Accounts,
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
pub(super) enum WebhooksCommand {
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
