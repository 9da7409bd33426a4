//! The integration tests: each starts the real `ninjapoll` binary on a temp dir against the
//! fake Ninjapay on 127.0.0.1 and a real webhook receiver, through
//! `ninjapoll_test_support::spawn_daemon`. One binary, so the suite links once.

mod accounts;
mod api;
mod budget;
mod core;
mod dashboards;
mod deploy;
mod hardening;
mod health;
mod health_cli;
mod metrics;
mod operations;
mod provider;
mod reconcile;
mod reload;
mod retention;
mod systemd;
mod upgrades;
mod webhooks;
