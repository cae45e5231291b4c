//! Faults around the server: the provider stopped under load, and a store that cannot be written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bff_session_conformance::provider::{CLIENT_ID, CLIENT_SECRET};
use bff_session_core::Policy;
use bff_session_dev_idp::{Config, DevIdp};
use reqwest::Method;
use support::cluster::{self, Client, Relay};
use warp::Filter as _;

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The dev provider behind a relay that can be cut: its issuer is the relay's address.
async fn provider_behind_switch(target: &str) -> (DevIdp, Relay) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let direct = listener.local_addr().unwrap();
    // The relay comes first, so the issuer can name its port.
    let switch = Relay::start(&direct.to_string()).await;
    let issuer = format!("http://127.0.0.1:{}", switch.port);
    let idp = DevIdp::new(Config {
        issuer,
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uris: vec![format!("{target}/auth/callback")],
        post_logout_redirect_uris: vec![format!("{target}/")],
        backchannel_logout_uri: Some(format!("{target}/auth/backchannel-logout")),
        access_token_ttl: Duration::from_secs(600),
    })
    .unwrap();
    tokio::spawn(warp::serve(idp.routes()).incoming(listener).run());
    (idp, switch)
}

fn transient_refreshes(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("bff_refreshes_total{outcome=\"transient\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Sessions whose access token is still valid keep working through a provider outage; expired ones get
/// 503 and are not lost; refresh attempts stay within the back-off schedule; when the provider returns,
/// every session recovers without a new sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_loses_no_session() {
    let port = cluster::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (idp, switch) = provider_behind_switch(&base).await;
    let dir = tempfile::tempdir().unwrap();
    let key = cluster::shared_key(dir.path());
    let issuer = idp.config().issuer.clone();
    let policy = Policy::hardened();
    let mut settings = cluster::replica_settings(port, &base, &issuer, "", &key, dir.path(), policy.clone());
    settings.store = None;
    settings.refresh_timeout = Duration::from_secs(2);
    // An API upstream apart from the provider, so the outage is the provider's alone.
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}/", api.local_addr().unwrap());
    tokio::spawn(warp::serve(warp::any().map(|| "ok")).incoming(api).run());
    settings.upstream = bff_session_server::config::Upstream::Url(api_url.parse().unwrap());
    let server = bff_session_server::start(settings).await.unwrap();
    let t0 = wall_ms();
    cluster::freeze(&base, t0).await;
    // Five sessions whose tokens will have expired when the outage starts, five whose tokens will not.
    let mut expired = Vec::new();
    for i in 0..5 {
        let mut c = Client::new();
        c.login(&base, &format!("early{i}")).await;
        expired.push(c);
    }
    cluster::freeze(&base, t0 + 8 * 60_000).await;
    let mut valid = Vec::new();
    for i in 0..5 {
        let mut c = Client::new();
        c.login(&base, &format!("late{i}")).await;
        valid.push(c);
    }
    let outage_start = t0 + 10 * 60_000 + 30_000;
    cluster::freeze(&base, outage_start).await;
    switch.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let before = transient_refreshes(&reqwest::get(&metrics).await.unwrap().text().await.unwrap());
    // Two simulated minutes of load, one API call per session per simulated second.
    let window_s = 120u64;
    for s in 0..window_s {
        cluster::freeze(&base, outage_start + s * 1_000).await;
        for c in &mut valid {
            assert_eq!(
                c.send(Method::GET, &format!("{base}/api/userinfo"), false).await.status,
                200,
                "valid token, second {s}"
            );
        }
        for c in &mut expired {
            let r = c.send(Method::GET, &format!("{base}/api/userinfo"), false).await;
            assert_eq!(r.status, 503, "expired token during the outage, second {s}: {}", r.body);
        }
    }
    let attempts = transient_refreshes(&reqwest::get(&metrics).await.unwrap().text().await.unwrap()) - before;
    // The schedule: an attempt, then waits of backoff(1), backoff(2), … within the window.
    let mut bound = 0u64;
    let mut at = Duration::ZERO;
    while at < Duration::from_secs(window_s) {
        bound += 1;
        at += policy.backoff(u32::try_from(bound).unwrap());
    }
    println!(
        "provider outage: {attempts} refresh attempts for 5 expired sessions over {window_s} s; bound {}",
        5 * bound
    );
    assert!(attempts <= 5 * bound, "{attempts} attempts, more than the back-off allows ({})", 5 * bound);
    assert!(attempts >= 5, "every expired session tried at least once");
    for c in expired.iter_mut().chain(valid.iter_mut()) {
        assert_eq!(c.send(Method::GET, &format!("{base}/auth/session"), false).await.status, 200, "no session lost");
    }
    // The provider returns: after the current back-off, every session works again.
    switch.restore();
    cluster::freeze(&base, outage_start + (window_s + 300) * 1_000).await;
    for c in expired.iter_mut().chain(valid.iter_mut()) {
        assert_eq!(c.send(Method::GET, &format!("{base}/api/userinfo"), false).await.status, 200, "recovered");
    }
    assert_eq!(idp.counters().code_exchanges, 10, "no one signed in again");
    server.stop().await;
}

/// A store that refuses every write fails closed: 503 with a clear error for whatever needs a write, no one
/// logged out, and a revoked session still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_written_fails_closed() {
    let Some(pg) = cluster::postgres_base("faults::a_store_that_cannot_be_written_fails_closed") else { return };
    let db = cluster::fresh_database(&pg, "bff_t_write_fault").await;
    let port = cluster::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (idp, _switch) = provider_behind_switch(&base).await;
    let dir = tempfile::tempdir().unwrap();
    let key = cluster::shared_key(dir.path());
    let settings =
        cluster::replica_settings(port, &base, &idp.config().issuer, &db, &key, dir.path(), Policy::hardened());
    let server = bff_session_server::start(settings).await.unwrap();
    let mut alice = Client::new();
    alice.login(&base, "alice").await;
    let mut bob = Client::new();
    bob.login(&base, "bob").await;
    let bob_stolen = bob.clone();
    assert_eq!(bob.send(Method::POST, &format!("{base}/auth/logout"), true).await.status, 200);

    let (admin, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(
            "CREATE FUNCTION bff_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'simulated: the disk is full'; END $$;
             CREATE TRIGGER bff_test_disk_full BEFORE INSERT OR UPDATE OR DELETE ON bff_sessions
                 FOR EACH ROW EXECUTE FUNCTION bff_test_disk_full();
             CREATE TRIGGER bff_test_disk_full BEFORE INSERT OR UPDATE OR DELETE ON bff_logins
                 FOR EACH ROW EXECUTE FUNCTION bff_test_disk_full();",
        )
        .await
        .unwrap();
    let logout = alice.send(Method::POST, &format!("{base}/auth/logout"), true).await;
    assert_eq!(logout.status, 503, "{}", logout.body);
    assert!(logout.body.contains("\"error\":\"unavailable\""), "{}", logout.body);
    assert!(alice.jar.contains_key("bff-session"), "the failed logout cleared no cookie");
    let login = Client::new().send(Method::GET, &format!("{base}/auth/login?login_hint=carol"), false).await;
    assert_eq!(login.status, 503, "{}", login.body);
    let mut stolen = bob_stolen;
    assert_eq!(
        stolen.send(Method::GET, &format!("{base}/auth/session"), false).await.status,
        401,
        "revoked stays revoked"
    );
    assert_eq!(alice.send(Method::GET, &format!("{base}/auth/session"), false).await.status, 200, "reads still work");
    admin
        .batch_execute(
            "DROP TRIGGER bff_test_disk_full ON bff_sessions; DROP TRIGGER bff_test_disk_full ON bff_logins;",
        )
        .await
        .unwrap();
    assert_eq!(alice.send(Method::GET, &format!("{base}/auth/session"), false).await.status, 200, "not logged out");
    assert_eq!(alice.send(Method::POST, &format!("{base}/auth/logout"), true).await.status, 200);
    server.stop().await;
}
