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

/// A kind of the configuration's own, on the fake's list endpoint (`wallet=lbtc`).
pub const LBTC_KIND: &str = r#"
[kinds.lbtc]
method = "GET"
url = "{prod}/sapi/v1/history"
id_field = "tid"
auth_header = "Authorization"
status_pointer = "/status"
query = { wallet = "lbtc" }
status_map = { undefined = "pending", pending = "pending", paid = "succeeded", declined = "failed" }
[kinds.lbtc.list]
items_pointer = ""
item_id_pointer = "/tid"
limit_param = "limit"
max_limit = 100
"#;
