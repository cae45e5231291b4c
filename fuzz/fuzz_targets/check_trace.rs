//! Checking an arbitrary audit trail: a verdict or an error, never a panic.
//! The property lives in core's test support (`support/fuzz.rs`), where `cargo test` replays every kept input.
#![no_main]

#[path = "../../crates/core/tests/support/fuzz.rs"]
mod fuzz;
mod support;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::check_trace(data));
