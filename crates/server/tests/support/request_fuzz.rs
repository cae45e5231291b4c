//! The whole request path in process, for cargo-fuzz (`fuzz/fuzz_targets/request.rs`) and for
//! `tests/request_fuzz.rs`, which replays the seeds and every crash kept.
//!
//! An input is an HTTP/1.1 request as a client writes it (request line, headers, body). `{SID}` and
//! `{CSRF}` in it stand for a victim's session cookie value and CSRF proof, so the seeds can be the hostile
//! suite's requests, readable. Each input gets a fresh victim session in an in-memory store, under a clock
//! that never moves, and runs through the server's routes (body limits, cross-site checks, cookies, core's
//! transitions, the proxy). The checks:
//! - nothing panics;
//! - no 500, and a 5xx only for a provider or upstream that cannot be reached (both point at a closed port);
//! - the victim's record changes only when the request carried its cookie, and for an unsafe method its
//!   CSRF proof too.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bff_session_core::client_ip::TrustedProxies;
use bff_session_core::cookie::Cookies;
use bff_session_core::lifecycle::{Login, NewSession};
use bff_session_core::{Device, OidcIdentity, Policy, Secret, SessionId, Timestamp, TokenGrant, UserId, csrf};
use bff_session_server::clock::Clock;
use bff_session_server::conn::Peer;
use bff_session_server::http::{self, App};
use bff_session_server::oidc::{Oidc, RpConfig};
use bff_session_server::service::Service;
use bff_session_server::store::MemoryStore;
use http_body_util::BodyExt as _;

/// Nothing listens here: calls to the provider or the upstream fail at once.
const CLOSED: &str = "http://127.0.0.1:9";
/// The frozen instant every input runs at.
const NOW_MS: u64 = 1_800_000_000_000;

/// The server's app over an in-memory store, built once per process.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    app: Arc<App>,
    cell: Arc<std::sync::OnceLock<Arc<App>>>,
    victims: AtomicU64,
}

/// What went wrong with one input.
#[derive(Debug)]
pub enum Finding {
    ServerError { status: u16, body: String },
    UnauthorisedChange { before: u64, after: Option<u64> },
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let policy = Policy::hardened();
        let store = Arc::new(MemoryStore::new(policy.clone()));
        let clock = Clock::fixed(Timestamp::from_millis(NOW_MS));
        let rp = RpConfig {
            issuer: CLOSED.to_owned(),
            client_id: "bff".to_owned(),
            client_secret: "secret".to_owned(),
            redirect_uri: "http://127.0.0.1:8080/auth/callback".to_owned(),
            scopes: vec!["openid".to_owned(), "offline_access".to_owned()],
            skew: Duration::from_secs(30),
            timeout: Duration::from_secs(1),
        };
        let discovery = serde_json::json!({
            "issuer": CLOSED,
            "authorization_endpoint": format!("{CLOSED}/authorize"),
            "token_endpoint": format!("{CLOSED}/token"),
            "jwks_uri": format!("{CLOSED}/jwks"),
            "end_session_endpoint": format!("{CLOSED}/logout"),
            "revocation_endpoint": format!("{CLOSED}/revoke"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "authorization_response_iss_parameter_supported": true,
        });
        let oidc = Arc::new(Oidc::from_documents(&rp, &discovery.to_string(), r#"{"keys":[]}"#).unwrap());
        let mut service = Service::new(policy, clock, store, oidc.clone(), Duration::from_secs(1));
        service.login_policy.capacity = 64;
        service.max_sessions_per_user = std::num::NonZeroUsize::new(4);
        let http_client = rt.block_on(async {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap()
        });
        let app = Arc::new(App {
            service: Arc::new(service),
            oidc,
            cookies: Cookies::new(false),
            public_url: "http://127.0.0.1:8080".to_owned(),
            trusted_proxies: TrustedProxies::parse("127.0.0.1").unwrap(),
            upstream: Some(url::Url::parse(&format!("{CLOSED}/")).unwrap()),
            http: http_client,
            demo: false,
            max_body: 4096,
            max_upstream_answer: 1 << 20,
            login_limiter: None,
            allowed_origins: vec!["http://allowed.example".to_owned()],
        });
        let cell = Arc::new(std::sync::OnceLock::new());
        let _ = cell.set(app.clone());
        Self { rt, app, cell, victims: AtomicU64::new(0) }
    }

    /// Runs one input; `Ok` with the answer's status when every check holds, `Ok(None)` when the bytes are
    /// not a request hyper would pass on.
    pub fn run(&self, data: &[u8]) -> Result<Option<u16>, Finding> {
        self.check(data, false)
    }

    /// [`Harness::run`], judging the request as if it had carried no credentials: the control that shows the
    /// record check can fail.
    pub fn run_as_if_anonymous(&self, data: &[u8]) -> Result<Option<u16>, Finding> {
        self.check(data, true)
    }

    fn check(&self, data: &[u8], anonymous: bool) -> Result<Option<u16>, Finding> {
        let n = self.victims.fetch_add(1, Ordering::Relaxed);
        let mut id_bytes = [0x5a; 32];
        id_bytes[..8].copy_from_slice(&n.to_be_bytes());
        let id = SessionId::from_random_bytes(id_bytes);
        let (sid, proof) = (id.encode(), csrf::proof_for(&id));
        let text = String::from_utf8_lossy(data);
        let carries_cookie = text.contains("{SID}");
        let carries_proof = text.contains("{CSRF}");
        let data = text.replace("{SID}", &sid).replace("{CSRF}", &proof).into_bytes();
        let Some(request) = parse(&data) else { return Ok(None) };
        let unsafe_method = !matches!(request.method().as_str(), "GET" | "HEAD" | "OPTIONS");
        let authorised = !anonymous && carries_cookie && (carries_proof || !unsafe_method);

        let service = self.app.service.clone();
        self.rt.block_on(async {
            let new = NewSession {
                id: id.clone(),
                user: UserId::new(format!("victim-{}", n % 8)),
                login: Login::Oidc {
                    identity: OidcIdentity {
                        iss: CLOSED.to_owned(),
                        sub: format!("victim-{}", n % 8),
                        sid: Some(format!("idp-session-{n}")),
                        name: None,
                        email: None,
                    },
                    grant: TokenGrant {
                        access_token: Secret::new("access"),
                        expires_in: Some(Duration::from_secs(600)),
                        refresh_token: Some(Secret::new("refresh")),
                        refresh_expires_in: None,
                        id_token: None,
                    },
                },
                device: Device::default(),
            };
            service.create(&new, None).await.unwrap().outcome.unwrap();
            let key = id.key();
            let before = service.store.get(&key).await.unwrap().map(|s| s.version()).unwrap();

            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(Peer(SocketAddr::from(([127, 0, 0, 1], 40_000))));
            let request = warp::http::Request::from_parts(parts, http_body_util::Full::new(bytes::Bytes::from(body)));
            let response = http::handle(&self.cell, request).await;
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let reachable_failure = {
                let body = String::from_utf8_lossy(&body);
                ["provider_unavailable", "upstream_unavailable", "upstream_timeout"]
                    .iter()
                    .any(|code| body.contains(&format!("\"error\":\"{code}\"")))
            };
            let after = service.store.get(&key).await.unwrap().map(|s| s.version());
            service.store.purge(&key, Timestamp::from_millis(u64::MAX)).await.unwrap();
            if status.is_server_error() && (status.as_u16() == 500 || !reachable_failure) {
                let body = String::from_utf8_lossy(&body).into_owned();
                return Err(Finding::ServerError { status: status.as_u16(), body });
            }
            if !authorised && after != Some(before) {
                return Err(Finding::UnauthorisedChange { before, after });
            }
            Ok(Some(status.as_u16()))
        })
    }
}

/// The request hyper would hand the routes, if it would: a request line and headers it parses, a method,
/// target and header values `http` accepts, and whatever follows the head as the body.
fn parse(data: &[u8]) -> Option<warp::http::Request<Vec<u8>>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = req.parse(data).ok()? else { return None };
    let method = warp::http::Method::from_bytes(req.method?.as_bytes()).ok()?;
    let path = req.path?;
    // hyper hands the routes origin-form targets.
    if !path.starts_with('/') {
        return None;
    }
    let uri: warp::http::Uri = path.parse().ok()?;
    let mut builder = warp::http::Request::builder().method(method).uri(uri);
    for h in req.headers.iter() {
        let name = warp::http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = warp::http::HeaderValue::from_bytes(h.value).ok()?;
        builder = builder.header(name, value);
    }
    builder.body(data[head_len..].to_vec()).ok()
}
