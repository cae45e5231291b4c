//! Two replicas of the reference server on one PostgreSQL: refresh single flight across them, revocation
//! seen at once by the other, the conformance harness against the pair, and a database outage.
//! Skipped unless `BFF_TEST_POSTGRES` names a PostgreSQL server (`.ci/run` starts one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bff_session_conformance::run::{Harness, Options};
use bff_session_core::Policy;
use bff_session_server::Running;
use reqwest::Method;
use support::cluster::{self, Client, Relay};

struct Pair {
    harness: Harness,
    replicas: Vec<Running>,
    /// The balancer's origin, which is also the replicas' public URL.
    base: String,
    switch: Relay,
    _dir: tempfile::TempDir,
}

impl Pair {
    fn replica(&self, i: usize) -> String {
        format!("http://{}", self.replicas[i].addr)
    }
}

async fn pair(db: &str, policy: &str) -> Option<Pair> {
    let base_url = cluster::postgres_base(&format!("replicas::{db}"))?;
    let db_url = cluster::fresh_database(&base_url, db).await;
    let (switch, relayed) = Relay::for_database(&db_url).await;
    let dir = tempfile::tempdir().unwrap();
    let key = cluster::shared_key(dir.path());
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", lb.local_addr().unwrap());
    let mut options = Options::new(&base, policy).unwrap();
    options.out_dir = dir.path().join("repro");
    let harness = Harness::start(options).await.unwrap();
    let mut replicas = Vec::new();
    for i in 0..2 {
        let data = dir.path().join(format!("replica-{i}"));
        let settings = cluster::replica_settings(
            cluster::free_port(),
            &base,
            &harness.provider.issuer,
            &relayed,
            &key,
            &data,
            Policy::preset(policy).unwrap(),
        );
        replicas.push(bff_session_server::start(settings).await.unwrap());
    }
    let backends = replicas.iter().map(|r| format!("http://{}", r.addr)).collect();
    tokio::spawn(cluster::balancer(lb, backends));
    Some(Pair { harness, replicas, base, switch, _dir: dir })
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Concurrent API calls at access-token expiry, split over both replicas, make one refresh request at the
/// provider, every time; and every call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_per_expiry_across_two_replicas() {
    let Some(p) = pair("bff_t_single_flight", "default").await else { return };
    let idp = &p.harness.provider.idp;
    let mut now = wall_ms();
    cluster::freeze(&p.base, now).await;
    let mut browser = Client::new();
    browser.login(&p.base, "alice").await;
    let ttl = p.harness.options.token_ttl.as_millis() as u64;
    let mut refreshes = Vec::new();
    for burst in 0..100 {
        now += ttl + 1_000;
        cluster::freeze(&p.base, now).await;
        let before = idp.counters().refresh_requests;
        let calls = if burst == 0 { 50 } else { 10 };
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..calls {
            let (http, cookies, url) =
                (browser.http.clone(), browser.cookies(), format!("{}/api/userinfo", p.replica(i % 2)));
            tasks.spawn(async move { http.get(url).header("cookie", cookies).send().await.unwrap().status().as_u16() });
        }
        while let Some(status) = tasks.join_next().await {
            assert_eq!(status.unwrap(), 200, "burst {burst}");
        }
        refreshes.push(idp.counters().refresh_requests - before);
    }
    let total: u64 = refreshes.iter().sum();
    println!("single flight across two replicas: {total} refresh requests for {} expiry bursts", refreshes.len());
    assert!(refreshes.iter().all(|&n| n == 1), "{refreshes:?}");
    assert_eq!(idp.counters().reuse_detected, 0);
}

/// A logout on one replica is refused by the other on its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_replica_is_seen_by_the_other_at_once() {
    let Some(p) = pair("bff_t_logout", "default").await else { return };
    let mut browser = Client::new();
    browser.login(&p.base, "bob").await;
    let (a, b) = (p.replica(0), p.replica(1));
    assert_eq!(browser.send(Method::GET, &format!("{b}/auth/session"), false).await.status, 200);
    let mut stolen = browser.clone();
    assert_eq!(browser.send(Method::POST, &format!("{a}/auth/logout"), true).await.status, 200);
    assert_eq!(stolen.send(Method::GET, &format!("{b}/auth/session"), false).await.status, 401);
    assert_eq!(stolen.send(Method::GET, &format!("{b}/api/userinfo"), false).await.status, 401);
}

/// The harness finds the balanced pair indistinguishable from one conforming BFF.
#[test]
fn the_balanced_pair_conforms() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let Some(p) = rt.block_on(pair("bff_t_conformance", "default")) else { return };
    let report = p.harness.run(&rt);
    println!("{}", report.render(&p.harness.options));
    assert!(report.failure.is_none(), "{}", report.render(&p.harness.options));
    drop(p);
}

/// With the database unreachable the pair fails closed with 503 and ends no session; when it returns the
/// same session works again, without a new sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_closed_and_loses_nothing() {
    let Some(p) = pair("bff_t_outage", "default").await else { return };
    let mut browser = Client::new();
    browser.login(&p.base, "carol").await;
    let session_cookie = browser.jar["bff-session"].clone();
    p.switch.cut();
    // The relay notices within 20 ms and drops every connection it carries.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for url in [format!("{}/auth/session", p.base), format!("{}/api/userinfo", p.base)] {
        let r = browser.send(Method::GET, &url, false).await;
        assert_eq!(r.status, 503, "{url}: {}", r.body);
        assert!(r.body.contains("unavailable"), "{}", r.body);
    }
    let logout = browser.send(Method::POST, &format!("{}/auth/logout", p.base), true).await;
    assert_eq!(logout.status, 503);
    assert_eq!(browser.jar.get("bff-session"), Some(&session_cookie), "no cookie was cleared");
    p.switch.restore();
    let mut back = false;
    for _ in 0..50 {
        if browser.send(Method::GET, &format!("{}/auth/session", p.base), false).await.status == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the session did not come back with the database");
    assert_eq!(browser.send(Method::GET, &format!("{}/api/userinfo", p.base), false).await.status, 200);
}
