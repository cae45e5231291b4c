//! A small BFF that speaks the harness's target protocol, built on core's `Registry`, with one switchable
//! defect at a time: each is a bug the reference Go session manager (or a peer) has. Without a defect it
//! must conform; with one, the harness must find it.
//!
//! It is a test double: it keeps everything in memory, does not verify ID or logout tokens (it only reads
//! their claims), binds no login to a browser, and mints predictable session IDs. None of that is what the
//! harness checks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bff_session_core::lifecycle::{AuthRequest, Login, Method, NewSession};
use bff_session_core::{
    Device, Effect, Handle, OidcIdentity, Policy, RefreshRefusal, RefreshResult, Registry, RevocationReason, Secret,
    Session, SessionId, SessionKey, Timestamp, TokenGrant, Trigger, UserId, cookie, csrf,
};
use bytes::Bytes;
use serde_json::{Value, json};
use warp::Filter as _;
use warp::http::{Response, StatusCode};

/// The bug the toy has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    None,
    /// Every request that finds the token due refreshes it, lease or not.
    RefreshWithoutSingleFlight,
    /// A request writes back the copy of the session it cached earlier (last writer wins), so a session
    /// ended in between comes back.
    WriteAfterLogoutRevives,
    /// `invalid_grant` is treated as a passing failure: the session lives on.
    InvalidGrantIgnored,
    /// The CSRF check accepts any cookie and header that are equal, bound to nothing.
    CsrfAcceptsEqualPair,
    /// Each touch moves the absolute deadline as well as the idle one.
    TouchExtendsAbsolute,
}

const SESSION: &str = "bff-session";
const CSRF: &str = "bff-csrf";

struct Inner {
    registry: Registry,
    now: Timestamp,
    minted: u64,
    /// state → (PKCE verifier, login hint)
    logins: HashMap<String, String>,
    /// For `WriteAfterLogoutRevives`: the copy each session had when last seen.
    cache: HashMap<SessionKey, Session>,
    /// For `TouchExtendsAbsolute`: the sliding "absolute" deadline.
    sliding: HashMap<SessionKey, Timestamp>,
}

struct Toy {
    defect: Defect,
    policy: Policy,
    issuer: String,
    base: String,
    http: reqwest::Client,
    inner: Mutex<Inner>,
}

pub struct Running {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts the toy on `listener` for the provider at `issuer`.
pub async fn start(listener: tokio::net::TcpListener, issuer: &str, policy: Policy, defect: Defect) -> Running {
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut registry_policy = policy.clone();
    if defect == Defect::TouchExtendsAbsolute {
        // The toy keeps its own sliding deadline; core's must not end the session first.
        registry_policy.absolute_lifetime = bff_session_core::policy::MAX_COOKIE_AGE;
    }
    let toy = Arc::new(Toy {
        defect,
        policy,
        issuer: issuer.to_owned(),
        base: base.clone(),
        http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        inner: Mutex::new(Inner {
            registry: Registry::new(registry_policy).unwrap(),
            now: Timestamp::from_millis(0),
            minted: 0,
            logins: HashMap::new(),
            cache: HashMap::new(),
            sliding: HashMap::new(),
        }),
    });
    let routes = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(move |method: warp::http::Method, path: warp::path::FullPath, query: String, headers, body: Bytes| {
            let toy = toy.clone();
            async move { toy.handle(method.as_str(), path.as_str(), &query, &headers, &body).await }
        });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        warp::serve(routes)
            .incoming(listener)
            .graceful(async move {
                let _ = rx.await;
            })
            .run(),
    );
    Running { base, stop: Some(tx) }
}

type Reply = Response<String>;

fn reply(status: StatusCode, body: Value) -> Reply {
    Response::builder().status(status).header("content-type", "application/json").body(body.to_string()).unwrap()
}

fn with_cookies(mut r: Reply, cookies: &[String]) -> Reply {
    for c in cookies {
        r.headers_mut().append("set-cookie", c.parse().unwrap());
    }
    r
}

fn set(id: &SessionId) -> Vec<String> {
    vec![
        format!("{SESSION}={}; Path=/; HttpOnly; SameSite=Lax", id.encode()),
        format!("{CSRF}={}; Path=/; SameSite=Lax", csrf::proof_for(id)),
    ]
}

fn clear() -> Vec<String> {
    vec![format!("{SESSION}=; Path=/; Max-Age=0"), format!("{CSRF}=; Path=/; Max-Age=0")]
}

fn claims(jwt: &str) -> Value {
    jwt.split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn query(q: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

fn pkce_challenge(verifier: &str) -> String {
    use sha2::Digest as _;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// The outcome of checking a request's session.
enum Checked {
    Live(SessionKey),
    Refused(Reply),
}

impl Toy {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    async fn handle(
        self: &Arc<Self>,
        method: &str,
        path: &str,
        q: &str,
        headers: &warp::http::HeaderMap,
        body: &[u8],
    ) -> Reply {
        let cookies: Vec<&str> = headers.get_all("cookie").iter().filter_map(|v| v.to_str().ok()).collect();
        let session_cookie = cookie::find(cookies.iter().copied(), SESSION).ok().flatten().map(str::to_owned);
        let csrf_cookie = cookie::find(cookies.iter().copied(), CSRF).ok().flatten().map(str::to_owned);
        let csrf_header = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let request = Request { method, session: session_cookie, csrf_cookie, csrf_header };
        match (method, path) {
            ("POST", "/__test/clock") => {
                let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                self.lock().now = Timestamp::from_millis(v["freeze_ms"].as_u64().unwrap_or(0));
                reply(StatusCode::OK, json!({}))
            }
            ("POST", "/__test/tick") => {
                self.tick().await;
                reply(StatusCode::OK, json!({}))
            }
            ("GET", "/auth/login") => self.login(&query(q)),
            ("GET", "/auth/callback") => self.callback(&query(q), &request).await,
            ("GET", "/auth/session") => match self.check(&request) {
                Checked::Live(key) => {
                    let handle = self.lock().registry.get(&key).map(|s| s.handle().to_string());
                    reply(StatusCode::OK, json!({ "session": { "handle": handle } }))
                }
                Checked::Refused(r) => r,
            },
            ("GET", "/auth/sessions") => match self.check(&request) {
                Checked::Live(key) => {
                    let inner = self.lock();
                    let user = inner.registry.get(&key).map(|s| s.user().clone()).unwrap();
                    let list: Vec<Value> = inner
                        .registry
                        .sessions_of(&user)
                        .iter()
                        .map(|s| json!({ "handle": s.handle().to_string() }))
                        .collect();
                    reply(StatusCode::OK, json!({ "sessions": list }))
                }
                Checked::Refused(r) => r,
            },
            ("POST", "/auth/logout") => match self.check(&request) {
                Checked::Live(key) => {
                    let effects = {
                        let mut inner = self.lock();
                        let now = inner.now;
                        inner.registry.revoke(key, RevocationReason::Logout, now).effects
                    };
                    self.revoke_at_provider(&effects).await;
                    with_cookies(reply(StatusCode::OK, json!({})), &clear())
                }
                Checked::Refused(r) => r,
            },
            ("POST", "/auth/logout-all") => match self.check(&request) {
                Checked::Live(key) => {
                    let effects = {
                        let mut inner = self.lock();
                        let now = inner.now;
                        let user = inner.registry.get(&key).map(|s| s.user().clone()).unwrap();
                        inner.registry.revoke_user(&user, RevocationReason::LogoutEverywhere, now).effects
                    };
                    self.revoke_at_provider(&effects).await;
                    with_cookies(reply(StatusCode::OK, json!({})), &clear())
                }
                Checked::Refused(r) => r,
            },
            ("DELETE", p) if p.starts_with("/auth/sessions/") => match self.check(&request) {
                Checked::Live(key) => {
                    let handle = Handle::parse(&p["/auth/sessions/".len()..]);
                    let mut inner = self.lock();
                    let now = inner.now;
                    let user = inner.registry.get(&key).map(|s| s.user().clone()).unwrap();
                    let own = inner.registry.get(&key).map(|s| s.handle());
                    match handle.map(|h| inner.registry.revoke_handle(&user, h, key, now).outcome) {
                        Some(Ok(())) if handle == own => {
                            with_cookies(reply(StatusCode::NO_CONTENT, Value::Null), &clear())
                        }
                        Some(Ok(())) => reply(StatusCode::NO_CONTENT, Value::Null),
                        _ => reply(StatusCode::NOT_FOUND, json!({ "error": "unknown_session" })),
                    }
                }
                Checked::Refused(r) => r,
            },
            ("POST", "/auth/backchannel-logout") => {
                let form = query(std::str::from_utf8(body).unwrap_or_default());
                let c = claims(form.get("logout_token").map_or("", String::as_str));
                let mut inner = self.lock();
                let now = inner.now;
                match (c["sid"].as_str(), c["sub"].as_str()) {
                    (Some(sid), _) => drop(inner.registry.revoke_by_sid(&self.issuer, sid, now)),
                    (None, Some(sub)) => drop(inner.registry.revoke_by_sub(&self.issuer, sub, now)),
                    _ => return reply(StatusCode::BAD_REQUEST, json!({ "error": "invalid_logout_token" })),
                }
                reply(StatusCode::OK, json!({}))
            }
            (_, "/api/userinfo") => self.api(&request).await,
            _ => reply(StatusCode::NOT_FOUND, json!({ "error": "not_found" })),
        }
    }

    fn login(&self, q: &HashMap<String, String>) -> Reply {
        let mut inner = self.lock();
        inner.minted += 1;
        let state = format!("state{}", inner.minted);
        let verifier = format!("verifier-{}-{}", inner.minted, "x".repeat(43));
        inner.logins.insert(state.clone(), verifier.clone());
        let mut authorize = url::Url::parse(&format!("{}/authorize", self.issuer)).unwrap();
        authorize
            .query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", "conformance")
            .append_pair("redirect_uri", &format!("{}/auth/callback", self.base))
            .append_pair("scope", "openid offline_access")
            .append_pair("state", &state)
            .append_pair("nonce", &state)
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256")
            .append_pair("login_hint", q.get("login_hint").map_or("", String::as_str));
        Response::builder()
            .status(StatusCode::FOUND)
            .header("location", authorize.as_str())
            .body(String::new())
            .unwrap()
    }

    /// RFC 7009 for every refresh token the transition says to revoke.
    async fn revoke_at_provider(&self, effects: &[Effect]) {
        for effect in effects {
            if let Effect::RevokeAtProvider { token } = effect {
                let form = [
                    ("token", token.expose()),
                    ("token_type_hint", "refresh_token"),
                    ("client_id", "conformance"),
                    ("client_secret", "conformance-secret"),
                ];
                let _ = self.http.post(format!("{}/revoke", self.issuer)).form(&form).send().await;
            }
        }
    }

    async fn callback(&self, q: &HashMap<String, String>, request: &Request<'_>) -> Reply {
        let verifier = q.get("state").and_then(|s| self.lock().logins.remove(s));
        let (Some(verifier), Some(code)) = (verifier, q.get("code")) else {
            return reply(StatusCode::BAD_REQUEST, json!({ "error": "login_expired" }));
        };
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", &format!("{}/auth/callback", self.base)),
            ("code_verifier", verifier.as_str()),
            ("client_id", "conformance"),
            ("client_secret", "conformance-secret"),
        ];
        let Ok(r) = self.http.post(format!("{}/token", self.issuer)).form(&form).send().await else {
            return reply(StatusCode::BAD_GATEWAY, json!({}));
        };
        let tokens: Value = r.json().await.unwrap_or(Value::Null);
        let id_claims = claims(tokens["id_token"].as_str().unwrap_or_default());
        let sub = id_claims["sub"].as_str().unwrap_or_default().to_owned();
        let mut inner = self.lock();
        inner.minted += 1;
        let mut bytes = [7u8; 32];
        bytes[..8].copy_from_slice(&inner.minted.to_be_bytes());
        let id = SessionId::from_random_bytes(bytes);
        let new = NewSession {
            id: id.clone(),
            user: UserId::new(sub.clone()),
            login: Login::Oidc {
                identity: OidcIdentity {
                    iss: self.issuer.clone(),
                    sub,
                    sid: id_claims["sid"].as_str().map(str::to_owned),
                    name: None,
                    email: None,
                },
                grant: grant(&tokens),
            },
            device: Device::default(),
        };
        let supersedes = request.session.as_deref().and_then(|c| SessionId::decode(c).ok()).map(|id| id.key());
        let now = inner.now;
        let _ = inner.registry.create(&new, supersedes, now);
        inner.sliding.insert(id.key(), now.saturating_add(self.policy.absolute_lifetime));
        let r = Response::builder().status(StatusCode::FOUND).header("location", "/").body(String::new()).unwrap();
        with_cookies(r, &set(&id))
    }

    /// The session's checks, with this toy's defect where it has one.
    fn check(&self, request: &Request<'_>) -> Checked {
        let mut inner = self.lock();
        let now = inner.now;
        let id = request.session.as_deref().and_then(|c| SessionId::decode(c).ok());
        if let Some(id) = &id {
            let key = id.key();
            if self.defect == Defect::WriteAfterLogoutRevives
                && let Some(copy) = inner.cache.get(&key).cloned()
                && copy.touch_due(now, &self.policy)
            {
                inner.registry.restore(copy);
            }
            if self.defect == Defect::TouchExtendsAbsolute
                && inner.sliding.get(&key).is_some_and(|&deadline| now >= deadline)
            {
                let _ = inner.registry.revoke(key, RevocationReason::Admin, now);
            }
        }
        let mut method = if Method::classify(request.method) == Method::Safe { Method::Safe } else { Method::Unsafe };
        if self.defect == Defect::CsrfAcceptsEqualPair
            && method == Method::Unsafe
            && request.csrf_header.is_some()
            && request.csrf_header == request.csrf_cookie
        {
            method = Method::Safe;
        }
        let auth =
            AuthRequest { cookie: request.session.as_deref(), method, csrf_proof: request.csrf_header.as_deref() };
        let t = inner.registry.authenticate(&auth, now);
        match t.outcome {
            Ok(a) => {
                if a.touch_due && inner.registry.touch(a.key, now).outcome == Ok(true) {
                    let lifetime = self.policy.absolute_lifetime;
                    inner.sliding.insert(a.key, now.saturating_add(lifetime));
                }
                if let Some(s) = inner.registry.get(&a.key).cloned() {
                    inner.cache.insert(a.key, s);
                }
                Checked::Live(a.key)
            }
            Err(bff_session_core::Refusal::Csrf(_)) => {
                Checked::Refused(reply(StatusCode::FORBIDDEN, json!({ "error": "csrf" })))
            }
            _ => {
                let r = reply(StatusCode::UNAUTHORIZED, json!({ "error": "session" }));
                Checked::Refused(if t.effects.contains(&Effect::ClearCookies) { with_cookies(r, &clear()) } else { r })
            }
        }
    }

    async fn api(self: &Arc<Self>, request: &Request<'_>) -> Reply {
        let key = match self.check(request) {
            Checked::Live(key) => key,
            Checked::Refused(r) => return r,
        };
        let due = {
            let inner = self.lock();
            inner.registry.get(&key).is_some_and(|s| s.refresh_due(inner.now, inner.registry.policy()))
        };
        if due {
            self.refresh(key, Trigger::Request).await;
        }
        let token = {
            let inner = self.lock();
            match inner.registry.get(&key) {
                Some(s) if s.is_active() => s.live_access_token(inner.now).map(|t| t.expose().to_owned()),
                _ => return with_cookies(reply(StatusCode::UNAUTHORIZED, json!({})), &clear()),
            }
        };
        let Some(token) = token else {
            return reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": "provider_unavailable" }));
        };
        let upstream = self.http.get(format!("{}/userinfo", self.issuer)).bearer_auth(token).send().await;
        match upstream {
            Ok(r) => reply(r.status(), r.json().await.unwrap_or(Value::Null)),
            Err(_) => reply(StatusCode::BAD_GATEWAY, json!({})),
        }
    }

    /// Refreshes at most once across concurrent callers (unless the defect says otherwise).
    async fn refresh(self: &Arc<Self>, key: SessionKey, trigger: Trigger) {
        loop {
            let begun = {
                let mut inner = self.lock();
                let now = inner.now;
                inner.registry.begin_refresh(key, trigger, now).outcome
            };
            match begun {
                Ok(ticket) => {
                    let result = self.call_provider(ticket.refresh_token.expose()).await;
                    let mut inner = self.lock();
                    let now = inner.now;
                    let _ = inner.registry.complete_refresh(&ticket, result, now);
                    return;
                }
                Err(RefreshRefusal::InFlight { .. }) if self.defect == Defect::RefreshWithoutSingleFlight => {
                    let token = {
                        let inner = self.lock();
                        inner.registry.get(&key).and_then(|s| s.tokens()).and_then(|t| t.refresh_token.clone())
                    };
                    if let Some(token) = token {
                        let _ = self.call_provider(token.expose()).await;
                    }
                    return;
                }
                Err(RefreshRefusal::InFlight { .. }) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(_) => return,
            }
        }
    }

    async fn call_provider(&self, refresh_token: &str) -> RefreshResult {
        // A provider a few milliseconds away, as a real one is; it is what lets concurrent refreshes overlap.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", "conformance"),
            ("client_secret", "conformance-secret"),
        ];
        let Ok(r) = self.http.post(format!("{}/token", self.issuer)).form(&form).send().await else {
            return RefreshResult::Transient;
        };
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return RefreshResult::Success(grant(&body));
        }
        if body["error"] == "invalid_grant" && self.defect != Defect::InvalidGrantIgnored {
            return RefreshResult::InvalidGrant;
        }
        RefreshResult::Transient
    }

    async fn tick(self: &Arc<Self>) {
        let due = {
            let mut inner = self.lock();
            let now = inner.now;
            // The sweeper honours the same (sliding) deadline as requests do.
            let passed: Vec<SessionKey> =
                inner.sliding.iter().filter(|&(_, &deadline)| now >= deadline).map(|(&k, _)| k).collect();
            for key in passed {
                inner.sliding.remove(&key);
                let _ = inner.registry.revoke(key, RevocationReason::Admin, now);
            }
            inner.registry.tick(now).outcome.refresh_due
        };
        for key in due {
            self.refresh(key, Trigger::Background).await;
        }
    }
}

struct Request<'a> {
    method: &'a str,
    session: Option<String>,
    csrf_cookie: Option<String>,
    csrf_header: Option<String>,
}

fn grant(tokens: &Value) -> TokenGrant {
    TokenGrant {
        access_token: Secret::new(tokens["access_token"].as_str().unwrap_or_default()),
        expires_in: tokens["expires_in"].as_u64().map(Duration::from_secs),
        refresh_token: tokens["refresh_token"].as_str().map(Secret::new),
        refresh_expires_in: None,
        id_token: tokens["id_token"].as_str().map(Secret::new),
    }
}
