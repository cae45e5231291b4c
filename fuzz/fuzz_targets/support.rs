//! The property tests' model, driver and invariants, shared with core's tests rather than copied.
#![allow(dead_code)]

#[path = "../../crates/core/tests/support/assertions.rs"]
pub mod assertions;
#[path = "../../crates/core/tests/support/driver.rs"]
pub mod driver;
#[path = "../../crates/core/tests/support/model.rs"]
pub mod model;
