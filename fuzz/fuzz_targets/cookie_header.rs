//! `Cookie` header parsing: never panics, and never picks one of two same-named cookies.
//! The property lives in core's test support (`support::fuzz`), where `cargo test` replays every kept input.
#![no_main]

mod support;

libfuzzer_sys::fuzz_target!(|data: &[u8]| support::fuzz::cookie_header(data));
