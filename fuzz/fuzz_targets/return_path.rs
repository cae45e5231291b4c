//! Return-path validation: never panics, and accepts only same-origin paths.
//! The property lives in core's test support (`support::fuzz`), where `cargo test` replays every kept input.
#![no_main]

mod support;

libfuzzer_sys::fuzz_target!(|data: &[u8]| support::fuzz::return_path(data));
