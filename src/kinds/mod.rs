//! Check kinds as data: how to ask Ninjapay about one payment and how to read the answer
//! (SPEC section 2). The four presets are defaults in the configuration, so a user can
//! override any field of one, or add a kind, without recompiling.
//!
//! Everything here is pure: building a request's parts and interpreting an answer. The
//! HTTP call itself is `upstream`'s.//!
//! The parts: `name` (`KindName`), `presets` (a kind as configured, and the four presets),
//! `kind` (a validated kind), `request` (a check's request parts) and `answer` (reading an
//! answer into an [`Observation`]).

mod answer;
mod kind;
mod name;
mod presets;
mod request;
#[cfg(test)]
mod tests;

pub use answer::{ErrorClass, Observation};
pub use kind::{Kind, Method};
pub use name::KindName;
pub use presets::{presets, RawKind};
