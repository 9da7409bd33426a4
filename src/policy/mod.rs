//! Budget-optimal allocation of checks by real age: pure decision code.
//!
//! A pending payment of age `a` is worth checking when the flips it may have made since its
//! last check outweigh the price of a request. For a flip-age distribution `F` (share of
//! payments flipped by age `a`) and a price `μ` (delay, in grid cells, that one request is
//! worth), dynamic programming on a grid of ages gives the schedule of check ages that
//! minimises `E[delay] + μ·E[checks]`, under the ladder's rules: the first check no earlier
//! than the ladder's first, gaps never shorter than the ladder's step at that age, and a
//! check at (or after) the deadline for every payment still pending. The scheduler keeps a
//! table of such schedules for a ladder of prices and picks, per API key, the lowest price
//! whose projected demand fits the budget; [`bound()`] spends a known budget exactly and is
//! the yardstick the benchmark compares against.
//!
//! The distribution is learnt per kind from the daemon's own outcomes ([`Learner`]): a
//! flip happened after the last check that saw the payment pending and no later than the
//! first check that saw it final (interval-censored data); payments still pending, timed
//! out or cancelled are censored on the right. The estimate is the maximum a posteriori
//! one, by EM, with the distribution the ladder implies as a prior.
//!
//! The parts: [`grid`] (the ladder on a grid of ages, flip-age distributions), [`plans`]
//! (the dynamic program and the price levels), [`mod@bound`] (what the best policy that knows
//! the mix achieves), [`rate`] (the stream's arrival rate) and [`learner`] (the flip ages
//! learnt from interval-censored evidence).

mod bound;
mod grid;
mod learner;
mod plans;
mod rate;
#[cfg(test)]
mod test_dists;

pub use bound::{bound, keeps_up, least_requests_per_window};
pub use grid::{FlipDist, Grid};
pub use learner::{Evidence, Learner};
pub use plans::{dearest_alike, delay_at, Plans};
pub use rate::{arrival_rate, burst_cap, RATE_WINDOWS};
