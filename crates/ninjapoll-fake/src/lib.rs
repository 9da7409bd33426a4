//! A simulated Ninjapay API, served over HTTP on `127.0.0.1`.
//!
//! Used by the integration tests (scripted payments, fault injection, budget accounting)
//! and by `ninjapoll demo` (random payments that settle after a few checks). It serves the
//! four check endpoints of the provider with the response shapes of its documentation:
//!
//! | kind | request | id | auth header |
//! |---|---|---|---|
//! | `p2p` | `GET /uapi/v1/p2p/paymentLink/checkPayment?tid=ID` | query `tid` | `Authorization` |
//! | `quote` | `GET /sapi/v1/checkQuote?tid=ID` | query `tid` | `Authorization` |
//! | `paywall` | `POST /webextension/api/v1/fiat/paywall/trx-status` | body `order_id` | `x-api-key` |
//! | `btc` | `GET /sapi/v1/history?limit=N&wallet=W` | entries' `tid` | `Authorization` |
//!
//! One base URL serves both the `prod.` and the `api.` paths. Errors use the provider's
//! shape, `{"success": false, "message": "…"}`.
//!
//! Every request is recorded (see [`Recorded`]), including rejected ones, so that tests can
//! assert on what the daemon sent and when. The optional request budget mimics Ninjapay's
//! "1,000 requests per 10 minutes per API key; past it the key is locked out for 1 hour".
//!
//! Besides the main key, other accounts' keys can be accepted (`FakeOptions::accounts`):
//! each key sees only its own scripts and history, has its own budget ledger, and can be
//! given a fault of its own (a lockout or a refusal for one account only).
//!
//! The parts: `endpoints` (the four endpoints, their paths and answer bodies), `scripts`
//! (how a payment's answers evolve), `faults` (failures injected for every request), `budget`
//! (the request budget and the lockout), `answer` (one request's answer, decided under the
//! state's lock), `state` (what the handle and the handler share) and `server` (the handle
//! and the HTTP server).

mod answer;
mod budget;
mod endpoints;
mod faults;
mod scripts;
mod server;
mod state;

pub use endpoints::Kind;
pub use faults::Fault;
pub use scripts::{Script, Step, Unknown};
pub use server::{FakeNinjapay, FakeOptions};
pub use state::Recorded;

#[cfg(test)]
mod tests;
