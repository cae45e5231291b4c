//! The reference server, in process, against the harness under every preset; and its audit trail against
//! the trace checker. (`cargo xtask conformance` runs the full 200 sequences per preset on the binary.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

mod support;

use bff_session_conformance::provider::{CLIENT_ID, CLIENT_SECRET};
use bff_session_conformance::run::{Harness, Options};
use bff_session_core::Policy;
use bff_session_core::client_ip::TrustedProxies;
use bff_session_server::config::{Provider, Settings, Upstream};

struct Setup {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    harness: Harness,
    server: bff_session_server::Running,
    audit: std::path::PathBuf,
}

fn setup(preset: &str, refresh_timeout: Duration) -> Setup {
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
        previous_key_files: Vec::new(),
        policy: Policy::preset(preset).unwrap(),
        trusted_proxies: TrustedProxies::parse("").unwrap(),
        refresh_timeout,
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
        postgres_cache: false,
        max_body: 1 << 20,
        login_limit: None,
        allowed_origins: Vec::new(),
        metrics_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        upstream_timeout: Duration::from_secs(30),
        conn_limits: bff_session_server::conn::ConnLimits::default(),
        max_pending_logins: 100_000,
        max_sessions_per_user: None,
        max_upstream_answer: 16 << 20,
        revocation_queue: 10_000,
    };
    let server = rt.block_on(bff_session_server::start(settings)).unwrap();
    Setup { rt, dir, harness, server, audit }
}

fn conforms(preset: &str) {
    let Setup { rt, dir: _dir, harness, server, audit } = setup(preset, Duration::from_secs(10));
    let options = harness.options.clone();
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

/// A provider slower than half the refresh time limit: the lease is renewed while the call runs, the call
/// succeeds, and the trail (renewal included) conforms.
#[test]
fn a_slow_refresh_keeps_its_lease() {
    let s = setup("default", Duration::from_secs(2));
    let base = format!("http://{}", s.server.addr);
    let mut browser = support::cluster::Client::new();
    s.rt.block_on(browser.login(&base, "slow"));
    // A running clock (renewal needs time to pass), now past the access token's expiry.
    let ttl = s.harness.options.token_ttl.as_millis() as u64;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let set = serde_json::json!({ "set_ms": now + ttl + 1_000 });
    s.rt.block_on(reqwest::Client::new().post(format!("{base}/__test/clock")).json(&set).send()).unwrap();
    s.harness.provider.idp.fail_next_refresh(bff_session_dev_idp::Fault::Delay(Duration::from_millis(1_600)));
    let r = s.rt.block_on(browser.send(reqwest::Method::GET, &format!("{base}/api/userinfo"), false));
    assert_eq!(r.status, 200, "{}", r.body);
    s.rt.block_on(s.server.stop());
    let trail = std::fs::read_to_string(&s.audit).unwrap();
    assert!(trail.contains(r#""event":"lease_renewed""#), "{trail}");
    assert!(bff_session_core::trace::check(&trail, None).unwrap().is_ok(), "{trail}");
}
