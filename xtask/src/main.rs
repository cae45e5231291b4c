//! The project's workflows that take more than one cargo command. Run as `cargo xtask <command>`.
//!
//! It only orchestrates: every check it runs is an ordinary cargo or cargo-fuzz invocation that can be
//! run by hand. Missing tools (cargo-fuzz, cargo-mutants) are installed from crates.io on first use.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const FUZZ_TARGETS: [&str; 5] = ["lifecycle", "cookie_header", "client_ip", "return_path", "record_decode"];
const MUTATED: [&str; 3] = ["crates/core/src/lifecycle.rs", "crates/core/src/registry.rs", "crates/core/src/csrf.rs"];

const USAGE: &str = "usage: cargo xtask <command>

commands:
  ci                 fmt check, clippy -D warnings, then every fuzz target for 60 s (what .ci/run runs after the tests)
  lint               fmt check and clippy -D warnings only
  fuzz [SECS] [T..]  run fuzz targets on nightly for SECS seconds each (default 60, all targets)
  bench              criterion benchmarks; writes the medians to target/bench-medians.md
  mutants            cargo-mutants over core's lifecycle, registry and csrf modules";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => lint().and_then(|()| fuzz(60, &[])),
        Some("lint") => lint(),
        Some("fuzz") => {
            let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
            let skip = usize::from(args.get(1).is_some_and(|s| s.parse::<u64>().is_ok()));
            fuzz(secs, &args[1 + skip..])
        }
        Some("bench") => bench(),
        Some("mutants") => mutants(),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed with {status}")) }
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn has_subcommand(name: &str) -> bool {
    Command::new("cargo").arg(name).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn ensure_installed(subcommand: &str, krate: &str) -> Result<(), String> {
    if has_subcommand(subcommand) {
        return Ok(());
    }
    run(cargo().args(["install", "--locked", krate]))
}

fn lint() -> Result<(), String> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    core_stays_sans_io()
}

/// core's normal dependency tree must not contain an I/O stack.
fn core_stays_sans_io() -> Result<(), String> {
    const FORBIDDEN: [&str; 6] = ["tokio", "warp", "sled", "reqwest", "hyper", "openidconnect"];
    let out = cargo()
        .args(["tree", "-p", "bff-session-core", "-e", "normal", "--prefix", "none"])
        .output()
        .map_err(|e| format!("cannot run cargo tree: {e}"))?;
    let tree = String::from_utf8_lossy(&out.stdout);
    let found: Vec<&str> =
        tree.lines().filter_map(|l| l.split_whitespace().next()).filter(|name| FORBIDDEN.contains(name)).collect();
    if !out.status.success() || !found.is_empty() {
        return Err(format!("bff-session-core depends on I/O crates: {found:?}"));
    }
    eprintln!("xtask: core's dependency tree has none of {FORBIDDEN:?}");
    Ok(())
}

fn fuzz(secs: u64, only: &[String]) -> Result<(), String> {
    ensure_installed("fuzz", "cargo-fuzz")?;
    let targets: Vec<&str> =
        if only.is_empty() { FUZZ_TARGETS.to_vec() } else { only.iter().map(String::as_str).collect() };
    let fuzz_dir = root().join("fuzz");
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        fs::create_dir_all(&corpus).map_err(|e| format!("cannot create {}: {e}", corpus.display()))?;
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&fuzz_dir)
            // A stable toolchain's failure to build cached in this file would outlive switching to nightly.
            .env("CARGO_CACHE_RUSTC_INFO", "0")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={secs}"), "-rss_limit_mb=4096"]);
        run(&mut cmd)?;
    }
    Ok(())
}

fn bench() -> Result<(), String> {
    run(cargo().args(["bench", "-p", "bff-session-benches", "--bench", "core"]))?;
    let criterion = root().join("target").join("criterion");
    let mut rows = Vec::new();
    collect_medians(&criterion, &criterion, &mut rows);
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut table = String::from("| benchmark | median |\n|---|---|\n");
    for (name, ns) in &rows {
        table.push_str(&format!("| {name} | {} |\n", human(*ns)));
    }
    print!("{table}");
    let out = root().join("target").join("bench-medians.md");
    fs::write(&out, table).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

/// Every `new/estimates.json` below `dir`, as (benchmark name, median in ns).
fn collect_medians(base: &Path, dir: &Path, rows: &mut Vec<(String, f64)>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "new") {
            let median = fs::read_to_string(path.join("estimates.json"))
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|v| v["median"]["point_estimate"].as_f64());
            if let (Some(median), Ok(name)) = (median, dir.strip_prefix(base)) {
                rows.push((name.display().to_string(), median));
            }
        } else if path.is_dir() && path.file_name().is_some_and(|n| n != "report") {
            collect_medians(base, &path, rows);
        }
    }
}

fn human(ns: f64) -> String {
    match ns {
        ns if ns < 1e3 => format!("{ns:.1} ns"),
        ns if ns < 1e6 => format!("{:.2} µs", ns / 1e3),
        ns => format!("{:.2} ms", ns / 1e6),
    }
}

fn mutants() -> Result<(), String> {
    ensure_installed("mutants", "cargo-mutants")?;
    let mut cmd = cargo();
    cmd.args(["mutants", "-p", "bff-session-core", "--timeout", "120"]);
    for file in MUTATED {
        cmd.args(["-f", file]);
    }
    run(&mut cmd)
}
