//! Checking an arbitrary audit trail: a verdict or an error, never a panic.
//! The property lives in core's test support (`support::fuzz`), where `cargo test` replays every kept input.
#![no_main]

mod support;

libfuzzer_sys::fuzz_target!(|data: &[u8]| support::fuzz::check_trace(data));
