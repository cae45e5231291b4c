//! A server on 127.0.0.1 with its embedded dev provider, and a browser-like client with a cookie jar.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bff_session_core::Policy;
use bff_session_core::client_ip::TrustedProxies;
use bff_session_dev_idp::DevIdp;
use bff_session_server::config::{Provider, Settings, Upstream};
use bff_session_server::{Running, start};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct Server {
    pub running: Option<Running>,
    pub base: String,
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn settings(data: &Path, port: u16, policy: Policy) -> Settings {
    Settings {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        public_url: Some(format!("http://127.0.0.1:{port}")),
        data_dir: data.to_owned(),
        key_file: None,
        previous_key_files: Vec::new(),
        policy,
        trusted_proxies: TrustedProxies::parse("127.0.0.1").unwrap(),
        refresh_timeout: Duration::from_secs(10),
        test_clock: true,
        provider: Provider::Embedded { access_token_ttl: Duration::from_secs(300) },
        scopes: ["openid", "profile", "email", "offline_access"].map(String::from).to_vec(),
        upstream: Upstream::Echo,
        demo: true,
        cache_bytes: 64 << 20,
        audit_log: None,
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
    }
}

impl Server {
    pub async fn start() -> Self {
        Self::with_policy(Policy::hardened()).await
    }

    pub async fn with_policy(policy: Policy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_owned();
        let mut s = Self::start_in(&data, policy).await;
        s._dir = Some(dir);
        s
    }

    /// A server whose settings `adjust` changes first.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut s = settings(dir.path(), port, Policy::hardened());
        adjust(&mut s);
        let running = start(s).await.expect("server starts");
        let data = dir.path().to_owned();
        Self { base: format!("http://127.0.0.1:{port}"), running: Some(running), data, _dir: Some(dir) }
    }

    pub async fn start_in(data: &Path, policy: Policy) -> Self {
        let port = free_port();
        let running = start(settings(data, port, policy)).await.expect("server starts");
        Self { base: format!("http://127.0.0.1:{port}"), running: Some(running), data: data.to_owned(), _dir: None }
    }

    /// `GET /metrics` from the metrics listener.
    pub async fn metrics(&self) -> String {
        let addr = self.running.as_ref().and_then(|r| r.metrics_addr).expect("a metrics listener");
        reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
    }

    pub fn idp(&self) -> &DevIdp {
        self.running.as_ref().unwrap().idp.as_ref().unwrap()
    }

    pub fn browser(&self) -> Browser {
        Browser::new(&self.base)
    }

    /// Moves the server's clock.
    pub async fn advance(&self, by: Duration) {
        let r = reqwest::Client::new()
            .post(format!("{}/__test/clock", self.base))
            .json(&serde_json::json!({ "advance_ms": by.as_millis() as i64 }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// A response, with the cookies it set.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    }
    pub fn location(&self) -> Option<String> {
        self.headers.get("location").map(|v| v.to_str().unwrap().to_owned())
    }
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// A cookie-keeping client that never follows redirects by itself.
#[derive(Clone)]
pub struct Browser {
    pub base: String,
    pub jar: BTreeMap<String, String>,
    http: reqwest::Client,
    pub user_agent: String,
}

impl Browser {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { base: base.to_owned(), jar: BTreeMap::new(), http, user_agent: "test-browser/1".into() }
    }

    pub fn cookie_header(&self) -> Option<String> {
        (!self.jar.is_empty()).then(|| self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
    }

    pub fn csrf(&self) -> String {
        self.jar.iter().find(|(k, _)| k.ends_with("bff-csrf")).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    pub fn session_cookie(&self) -> Option<String> {
        self.jar.iter().find(|(k, _)| k.ends_with("bff-session")).map(|(_, v)| v.clone())
    }

    /// Sends a request with the jar's cookies (and extra headers), and stores the cookies it sets.
    pub async fn send(&mut self, method: Method, url: &str, headers: &[(&str, &str)], body: Option<String>) -> Resp {
        let url = if url.starts_with("http") { url.to_owned() } else { format!("{}{url}", self.base) };
        let mut req = self.http.request(method, &url).header("user-agent", &self.user_agent);
        if url.starts_with(&self.base)
            && let Some(c) = self.cookie_header()
        {
            req = req.header("cookie", c);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let r = req.send().await.unwrap();
        let resp = Resp { status: r.status(), headers: r.headers().clone(), body: r.text().await.unwrap() };
        if url.starts_with(&self.base) {
            for c in resp.set_cookies() {
                let pair = c.split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                if c.contains("Max-Age=0") {
                    self.jar.remove(name);
                } else {
                    self.jar.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        resp
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], None).await
    }

    /// An unsafe request with this browser's CSRF proof.
    pub async fn unsafe_call(&mut self, method: Method, path: &str) -> Resp {
        let csrf = self.csrf();
        self.send(method, path, &[("x-csrf-token", &csrf)], None).await
    }

    /// Signs in through the dev provider with `login_hint`; returns the callback's response.
    pub async fn login(&mut self, user: &str) -> Resp {
        let start = self.get(&format!("/auth/login?return_to=/after&login_hint={user}")).await;
        assert_eq!(start.status, StatusCode::FOUND, "{}", start.body);
        let authorize = self.get(&start.location().unwrap()).await;
        assert_eq!(authorize.status, StatusCode::FOUND, "{}", authorize.body);
        self.get(&authorize.location().unwrap()).await
    }
}
