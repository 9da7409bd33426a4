//! ninjapoll: a daemon that learns, reliably and within Ninjapay's request budget, how each
//! Ninjapay payment ended. See ARCHITECTURE.md for the map.
//!
//! The modules are private; this facade is what the binary, the benches, the test-support
//! crate and the integration tests use. Everything else may change without notice.

// Domain: pure types and decisions, nothing async.
mod account;
mod allocator;
mod backoff;
mod boot;
mod budget;
mod callback;
mod event;
mod kinds;
mod ladder;
mod name;
mod payment;
mod policy;
mod reconcile;
mod secret;
mod status;
/// The socket API's request and answer bodies and the webhook body, for clients and tests.
pub mod wire;
// Configuration and the I/O edges.
mod config;
mod store;
mod systemd;
mod telemetry;
mod upstream;
mod webhooks;
// The tasks and what drives them.
mod api;
mod cli;
mod client;
mod daemon;
#[cfg(feature = "demo")]
mod demo;
mod health_view;
mod live;
mod logging;
mod reload;
mod retention;
mod scheduler;
mod server;
pub mod sim;

pub use account::AccountName;
pub use cli::main;
pub use client::request;
pub use config::{defaults, Config, ConfigError, Raw, RawStep};
pub use daemon::run_until;
pub use kinds::KindName;
pub use ladder::Ladder;
pub use payment::{now_ms, PaymentId, SchedMs, State, WallMs};
