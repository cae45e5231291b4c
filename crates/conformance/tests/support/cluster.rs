//! Two reference-server replicas on one PostgreSQL, behind a tiny round-robin balancer, with a switch
//! that cuts the replicas off from the database.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bff_session_conformance::provider::{CLIENT_ID, CLIENT_SECRET};
use bff_session_core::Policy;
use bff_session_core::client_ip::TrustedProxies;
use bff_session_server::config::{Provider, Settings, Upstream};
use bff_session_server::store::Location;
use bytes::Bytes;
use warp::Filter as _;

#[path = "../../../server/tests/postgres/mod.rs"]
mod postgres;

/// The PostgreSQL server the tests may use (see `crates/server/tests/postgres/mod.rs`): `BFF_TEST_POSTGRES`, or
/// a throwaway cluster of this process's own; `None`, visibly, when neither is possible.
pub fn postgres_base(test: &str) -> Option<String> {
    postgres::base(test)
}

/// A fresh database named `name` on that server; its URL.
pub async fn fresh_database(base: &str, name: &str) -> String {
    let (client, conn) = tokio_postgres::connect(base, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let mut url = url::Url::parse(base).unwrap();
    url.set_path(name);
    url.to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A TCP relay on 127.0.0.1 that can be cut (every connection dropped, new ones refused) and restored: an
/// outage of whatever is behind it (the database, the provider).
pub struct Relay {
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
}

impl Relay {
    /// Relays to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicUsize::new(0));
        let (u, g) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !u.load(Ordering::SeqCst) {
                    continue;
                }
                let upstream = upstream.clone();
                let (u, g) = (u.clone(), g.clone());
                let born = g.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while u.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, () = cut => {} }
                });
            }
        });
        Self { port, up, generation }
    }

    /// A relay in front of the database at `db_url`, and the URL that reaches the database through it.
    pub async fn for_database(db_url: &str) -> (Self, String) {
        let mut url = url::Url::parse(db_url).unwrap();
        let relay = Self::start(&format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))).await;
        url.set_port(Some(relay.port)).unwrap();
        (relay, url.to_string())
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// One replica's settings: the shared store, the shared token key, the harness's provider.
pub fn replica_settings(
    port: u16,
    public_url: &str,
    issuer: &str,
    store: &str,
    key_file: &std::path::Path,
    data: &std::path::Path,
    policy: Policy,
) -> Settings {
    Settings {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        public_url: Some(public_url.to_owned()),
        data_dir: data.to_owned(),
        key_file: Some(key_file.to_owned()),
        previous_key_files: Vec::new(),
        policy,
        trusted_proxies: TrustedProxies::parse("127.0.0.1").unwrap(),
        refresh_timeout: Duration::from_secs(10),
        test_clock: true,
        provider: Provider::External {
            issuer: issuer.to_owned(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        },
        scopes: ["openid", "profile", "email", "offline_access"].map(String::from).to_vec(),
        upstream: Upstream::Url(issuer.parse().unwrap()),
        demo: false,
        cache_bytes: 16 << 20,
        audit_log: None,
        store: Some(Location::Postgres(store.to_owned())),
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
    }
}

/// Writes a shared 32-byte token key (hex, as the server's key file format expects) for the replicas.
pub fn shared_key(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("token.key");
    let sealer = bff_session_server::seal::TokenSealer::from_file(&path, true).unwrap();
    drop(sealer);
    path
}

/// Round-robin over `backends`, one request at a time. `/__test/*` goes to every backend (the pair shares
/// one clock), answering with the first backend's response.
pub async fn balancer(listener: tokio::net::TcpListener, backends: Vec<String>) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let routes = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: warp::http::HeaderMap,
                  body: Bytes| {
                let (http, backends, next) = (http.clone(), backends.clone(), next.clone());
                async move {
                    let path = path.as_str().to_owned();
                    let targets: Vec<String> = if path.starts_with("/__test/") {
                        backends.clone()
                    } else {
                        vec![backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()].clone()]
                    };
                    let mut first = None;
                    for base in targets {
                        let url =
                            if query.is_empty() { format!("{base}{path}") } else { format!("{base}{path}?{query}") };
                        let mut req = http.request(method.clone(), url).body(body.clone());
                        for (name, value) in &headers {
                            if name != "host" && name != "content-length" {
                                req = req.header(name, value);
                            }
                        }
                        let r = req.send().await;
                        if first.is_none() {
                            first = Some(r);
                        }
                    }
                    match first {
                        Some(Ok(r)) => {
                            let mut out = warp::http::Response::builder().status(r.status());
                            for (name, value) in r.headers() {
                                if name != "content-length" && name != "transfer-encoding" {
                                    out = out.header(name, value);
                                }
                            }
                            out.body(r.bytes().await.unwrap_or_default().to_vec()).unwrap()
                        }
                        _ => warp::http::Response::builder().status(502).body(Vec::new()).unwrap(),
                    }
                }
            },
        );
    warp::serve(routes).incoming(listener).run().await;
}

/// A browser with a cookie jar, talking to one origin.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub jar: BTreeMap<String, String>,
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Client {
    pub fn new() -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { http, jar: BTreeMap::new() }
    }

    pub fn cookies(&self) -> String {
        self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub async fn send(&mut self, method: reqwest::Method, url: &str, csrf: bool) -> Answer {
        let mut req = self.http.request(method, url).header("cookie", self.cookies());
        if csrf && let Some(p) = self.jar.get("bff-csrf") {
            req = req.header("x-csrf-token", p);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        for c in headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()) {
            let (name, value) = c.split(';').next().unwrap().split_once('=').unwrap();
            if c.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_owned(), value.to_owned());
            }
        }
        Answer { status, headers, body: r.text().await.unwrap_or_default() }
    }

    /// Signs in at `base` through the provider's `login_hint` shortcut.
    pub async fn login(&mut self, base: &str, user: &str) {
        let start = self.send(reqwest::Method::GET, &format!("{base}/auth/login?login_hint={user}"), false).await;
        let authorize = start.headers["location"].to_str().unwrap().to_owned();
        let approved = self.http.get(&authorize).send().await.unwrap();
        let callback = approved.headers()["location"].to_str().unwrap().to_owned();
        let done = self.send(reqwest::Method::GET, &callback, false).await;
        assert_eq!(done.status, 302, "{}", done.body);
        assert!(self.jar.contains_key("bff-session"));
    }
}

pub async fn freeze(base: &str, at_ms: u64) {
    let r = reqwest::Client::new()
        .post(format!("{base}/__test/clock"))
        .json(&serde_json::json!({ "freeze_ms": at_ms }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}
