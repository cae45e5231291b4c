#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod toy;

use bff_session_conformance::run::{Harness, Options, Report};
use bff_session_core::Policy;

/// Runs `sequences` generated sequences of the harness against a toy with `defect`, under `policy`.
pub fn run_against_toy(policy: &str, defect: toy::Defect, sequences: u32) -> Report {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let target = format!("http://{}", listener.local_addr().unwrap());
    let mut options = Options::new(&target, policy).unwrap();
    options.sequences = sequences;
    options.seed = 42;
    options.out_dir = std::env::temp_dir().join("bff-session-conformance-tests");
    let harness = rt.block_on(Harness::start(options.clone())).unwrap();
    let _toy = rt.block_on(toy::start(listener, &harness.provider.issuer, Policy::preset(policy).unwrap(), defect));
    let report = harness.run(&rt);
    println!("{}", report.render(&options));
    println!("executions {}, steps {}", report.executions, report.steps);
    report
}

/// The verdict on every invariant for a toy with `defect`, under `policy`, on the test clock.
pub fn verdicts_on_toy(
    policy: &str,
    defect: toy::Defect,
    sequences: u32,
) -> Vec<bff_session_conformance::verdict::Verdict> {
    use bff_session_conformance::profile::ClockMode;
    use bff_session_conformance::verdict::{Effort, evaluate};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let target = format!("http://{}", listener.local_addr().unwrap());
    let options = Options::new(&target, policy).unwrap();
    let harness = std::sync::Arc::new(rt.block_on(Harness::start(options)).unwrap());
    let _toy = rt.block_on(toy::start(listener, &harness.provider.issuer, Policy::preset(policy).unwrap(), defect));
    let effort = Effort { sequences, ..Effort::for_clock(ClockMode::Test, 7) };
    rt.block_on(evaluate(harness, effort))
}
