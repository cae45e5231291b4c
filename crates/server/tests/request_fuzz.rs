//! Replays the request fuzzer's seeds and every crash it filed (`fuzz/corpus/request/`,
//! `fuzz/regressions/request/`) through the same checks as `cargo xtask fuzz 60 request`, on stable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/request_fuzz.rs"]
mod request_fuzz;

use std::path::Path;

fn inputs(folder: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz").join(folder).join("request");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut inputs: Vec<_> = entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn every_seed_and_kept_crash_passes_the_request_checks() {
    let harness = request_fuzz::Harness::new();
    // The hand-written seeds (named for the hostile case they carry) must reach the routes; what the fuzzer
    // added to the corpus (named by hash) may be anything.
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut seeds = 0;
    for (name, data) in &inputs("corpus") {
        let written_by_hand = name.contains('-') || !name.chars().all(|c| c.is_ascii_hexdigit());
        match harness.run(data) {
            Ok(Some(status)) => *statuses.entry(status).or_default() += 1,
            Ok(None) if written_by_hand => panic!("seed {name} is not a request the routes would see"),
            Ok(None) => {}
            Err(finding) => panic!("corpus entry {name}: {finding:?}"),
        }
        seeds += usize::from(written_by_hand);
    }
    assert!(seeds >= 50, "the hostile suite's requests are the seeds; found {seeds}");
    println!("request fuzz corpus by status: {statuses:?}");
    for (name, data) in &inputs("regressions") {
        if let Err(finding) = harness.run(data) {
            panic!("kept crash {name}: {finding:?}");
        }
    }
}

/// The record check can fail: a logout that carries the cookie and the proof passes, and the same request
/// judged as if it carried neither is reported as an unauthorised change.
#[test]
fn the_record_check_catches_a_change_without_credentials() {
    let harness = request_fuzz::Harness::new();
    let logout =
        b"POST /auth/logout HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: bff-session={SID}\r\nX-CSRF-Token: {CSRF}\r\n\r\n";
    assert!(harness.run(logout).is_ok(), "an authorised logout is fine");
    assert!(matches!(harness.run_as_if_anonymous(logout), Err(request_fuzz::Finding::UnauthorisedChange { .. })));
    let unparsable = b"\x00\x01 not http";
    assert!(matches!(harness.run(unparsable), Ok(None)), "what hyper would refuse never reaches the routes");
}
