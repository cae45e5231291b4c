//! The server's whole request path in process: never a panic, never a 500, never a 5xx but an unreachable
//! provider's or upstream's, never a change to a session without its cookie (and CSRF proof, when unsafe).
//! The harness lives in the server's tests (`tests/support/request_fuzz.rs`), where `cargo test` replays
//! the seeds and every kept crash.
#![no_main]

use std::sync::OnceLock;

#[path = "../../crates/server/tests/support/request_fuzz.rs"]
mod request_fuzz;

static HARNESS: OnceLock<request_fuzz::Harness> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(finding) = HARNESS.get_or_init(request_fuzz::Harness::new).run(data) {
        panic!("{finding:?}");
    }
});
