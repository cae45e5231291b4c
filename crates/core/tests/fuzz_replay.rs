//! Every input the fuzzers keep, replayed through the property its fuzz target checks, on stable and in
//! every `cargo test`: the minimized corpora (`fuzz/corpus/TARGET/`) and every crash ever found
//! (`fuzz/regressions/TARGET/`, where `cargo xtask fuzz` files the fuzzer's crash artifacts). A crash stays a
//! failing test until the bug is fixed, and a passing one for good afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/fuzz.rs"]
mod fuzz;
mod support;

use std::path::{Path, PathBuf};

use fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let property = TARGETS.iter().find(|(name, _)| *name == target).map(|(_, p)| *p).expect("a known target");
    let corpus = inputs(&fuzz_dir().join("corpus").join(target));
    assert!(!corpus.is_empty(), "fuzz/corpus/{target} is empty: the committed corpus is missing");
    for file in corpus.iter().chain(&inputs(&fuzz_dir().join("regressions").join(target))) {
        // Captured, and shown only when the property fails on this input.
        println!("replaying {}", file.display());
        property(&std::fs::read(file).unwrap());
    }
}

/// Fuzz targets over the server's request path, replayed by the server's tests (core's cannot build the
/// server), with the test that does it.
const REPLAYED_BY_THE_SERVER: [(&str, &str); 1] = [("request", "crates/server/tests/request_fuzz.rs")];

#[test]
fn every_fuzz_target_is_replayed() {
    let declared = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        assert!(declared.contains(&format!("name = \"{name}\"")), "{name} is not a fuzz target");
    }
    for (name, test) in REPLAYED_BY_THE_SERVER {
        assert!(declared.contains(&format!("name = \"{name}\"")), "{name} is not a fuzz target");
        let test = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(test);
        let replays = std::fs::read_to_string(&test).unwrap_or_default();
        assert!(replays.contains("regressions"), "{} does not replay {name}'s kept crashes", test.display());
    }
    assert_eq!(
        declared.matches("[[bin]]").count(),
        TARGETS.len() + REPLAYED_BY_THE_SERVER.len(),
        "a fuzz target is replayed nowhere"
    );
}

#[test]
fn check_trace() {
    replay("check_trace");
}

#[test]
fn client_ip() {
    replay("client_ip");
}

#[test]
fn cookie_header() {
    replay("cookie_header");
}

#[test]
fn lifecycle() {
    replay("lifecycle");
}

#[test]
fn record_decode() {
    replay("record_decode");
}

#[test]
fn return_path() {
    replay("return_path");
}
