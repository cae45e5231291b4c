//! Shared by the property tests: the reference model, the generators, the driver and the invariants.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod assertions;
pub mod driver;
pub mod model;
pub mod strategies;
