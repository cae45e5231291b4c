//! Return-path validation: never panics, and accepts only same-origin paths.
//! The property lives in core's test support (`support/fuzz.rs`), where `cargo test` replays every kept input.
#![no_main]

#[path = "../../crates/core/tests/support/fuzz.rs"]
mod fuzz;
mod support;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::return_path(data));
