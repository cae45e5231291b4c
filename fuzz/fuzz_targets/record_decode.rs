//! Decoding a stored record from arbitrary bytes: an error or a value that round-trips.
//! The property lives in core's test support (`support/fuzz.rs`), where `cargo test` replays every kept input.
#![no_main]

#[path = "../../crates/core/tests/support/fuzz.rs"]
mod fuzz;
mod support;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::record_decode(data));
