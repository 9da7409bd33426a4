//! A simulator that runs the real scheduler core ([`crate::scheduler::Core`]) on simulated
//! time: Poisson arrivals, a flip mix, a provider that answers after a latency, and the
//! budget. Hours of traffic take seconds of CPU. It backs the policy benchmark
//! (`cargo bench --bench policy`) and `ninjapoll simulate`.
//!
//! Delay is measured as the provider sees it: from the flip to the send of the first check
//! that sees it. The yardstick is [`crate::policy::bound`] for the flips actually drawn.
//!
//! The parts: `mix` (flip mixes and their draws), `scenario` (what to simulate), `run` (one
//! run, event by event) and `report` (its figures, and the bounds they are judged by).

mod mix;
mod report;
mod run;
mod scenario;
#[cfg(test)]
mod tests;

pub use crate::budget::BacklogShare;
pub use crate::reconcile::LateBound;
pub use crate::scheduler::LatePolicy;
pub use mix::{Component, Mix};
pub use report::{late_bound, Fate, LateReport, Report};
pub use run::run;
pub use scenario::{LateMix, LateScenario, Phase, Scenario};
