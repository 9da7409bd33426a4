//! ninjapoll: a daemon that learns, reliably and within Ninjapay's request budget, how each
//! Ninjapay payment ended. See ARCHITECTURE.md for the map.

pub mod api;
pub mod backoff;
pub mod budget;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod kinds;
pub mod ladder;
pub mod logging;
pub mod payment;
pub mod policy;
pub mod retention;
pub mod scheduler;
pub mod secret;
pub mod server;
pub mod sim;
pub mod status;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod upstream;
pub mod webhooks;
