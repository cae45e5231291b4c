//! Command sequences from raw bytes: the registry against the property tests' reference model.
//! The property lives in core's test support (`support::fuzz`), where `cargo test` replays every kept input.
#![no_main]

mod support;

libfuzzer_sys::fuzz_target!(|data: &[u8]| support::fuzz::lifecycle(data));
