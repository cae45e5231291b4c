//! Client-IP resolution: never panics, and never reports an address from nowhere.
//! The property lives in core's test support (`support/fuzz.rs`), where `cargo test` replays every kept input.
#![no_main]

#[path = "../../crates/core/tests/support/fuzz.rs"]
mod fuzz;
mod support;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::client_ip(data));
