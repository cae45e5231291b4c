//! Client-IP resolution: never panics, and never reports an address from nowhere.
//! The property lives in core's test support (`support::fuzz`), where `cargo test` replays every kept input.
#![no_main]

mod support;

libfuzzer_sys::fuzz_target!(|data: &[u8]| support::fuzz::client_ip(data));
