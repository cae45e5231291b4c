//! The reference server, in process, against the harness under every preset; and its audit trail against
//! the trace checker. (`cargo xtask conformance` runs the full 200 sequences per preset on the binary.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bff_session_conformance::provider::{CLIENT_ID, CLIENT_SECRET};
use bff_session_conformance::run::{Harness, Options};
use bff_session_core::Policy;
use bff_session_core::client_ip::TrustedProxies;
use bff_session_server::config::{Provider, Settings, Upstream};

fn conforms(preset: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let mut options = Options::new(&base, preset).unwrap();
    options.sequences = 40;
    options.seed = 7;
    options.out_dir = dir.path().join("repro");
    let harness = rt.block_on(Harness::start(options.clone())).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let settings = Settings {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        public_url: Some(base.clone()),
        data_dir: dir.path().join("data"),
        key_file: None,
        policy: Policy::preset(preset).unwrap(),
        trusted_proxies: TrustedProxies::parse("").unwrap(),
        refresh_timeout: Duration::from_secs(10),
        test_clock: true,
        provider: Provider::External {
            issuer: harness.provider.issuer.clone(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        },
        scopes: ["openid", "profile", "email", "offline_access"].map(String::from).to_vec(),
        upstream: Upstream::Url(harness.provider.issuer.parse().unwrap()),
        demo: false,
        cache_bytes: 16 << 20,
        audit_log: Some(audit.clone()),
        store: None,
    };
    let server = rt.block_on(bff_session_server::start(settings)).unwrap();
    let report = harness.run(&rt);
    println!("{}", report.render(&options));
    assert!(report.failure.is_none(), "{}", report.render(&options));
    rt.block_on(server.stop());
    let trail = std::fs::read_to_string(&audit).unwrap();
    let summary = bff_session_core::trace::check(&trail, None).unwrap().unwrap();
    assert!(summary.sessions > 40, "{summary:?}");
}

#[test]
fn the_reference_server_conforms_under_default() {
    conforms("default");
}

#[test]
fn the_reference_server_conforms_under_helix() {
    conforms("helix");
}

#[test]
fn the_reference_server_conforms_under_asvs_l2() {
    conforms("asvs-l2");
}
