//! The HTTP API: parse a request, ask the service, turn the outcome into a response.
//!
//! Owns paths, status codes, the JSON error shape `{"error": "...", "message": "..."}`, cookies on the wire
//! and the API proxy. It holds no lifecycle rule: a request is refused or served because core said so.
//! No session ID, token, code or CSRF proof is ever written to a log line or an error message.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bff_session_core::cookie::{self, CookieError, Cookies, Kind};
use bff_session_core::lifecycle::{AuthRequest, Login, Method, NewSession, Refusal};
use bff_session_core::{
    Device, Effect, Handle, RevocationReason, Session, SessionId, Trigger, UserId, client_ip, csrf, return_path,
};
use bytes::Bytes;
use serde_json::json;
use tracing::{info, warn};
use warp::Filter;
use warp::Reply as _;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::login::{self, PendingLogin};
use crate::service::{Service, ServiceError, new_session_id};

pub const CSRF_HEADER: &str = "x-csrf-token";
const MAX_BODY: usize = 1 << 20;

/// Constant-time equality for the login `state`. Hashing first gives equal lengths, so the comparison's time
/// says nothing about either input.
fn ct_eq(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    bool::from(Sha256::digest(a.as_bytes()).as_slice().ct_eq(Sha256::digest(b.as_bytes()).as_slice()))
}

/// The body of `GET /auth/session`. Times are milliseconds since the Unix epoch.
#[derive(serde::Serialize)]
struct SessionBody<'a> {
    user: UserBody<'a>,
    session: SessionTimes,
    csrf_token: String,
}

#[derive(serde::Serialize)]
struct UserBody<'a> {
    sub: &'a str,
    name: Option<&'a str>,
    email: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct SessionTimes {
    handle: String,
    created_at: u64,
    last_used_at: u64,
    absolute_deadline: u64,
    idle_deadline: Option<u64>,
    access_token_expires_at: Option<u64>,
}

/// Everything the handlers need that is not per request.
pub struct App {
    pub service: Arc<Service>,
    pub cookies: Cookies,
    /// The public origin, e.g. `https://app.example.com` (no trailing slash).
    pub public_url: String,
    pub trusted_proxies: client_ip::TrustedProxies,
    pub upstream: Option<url::Url>,
    pub http: reqwest::Client,
    pub demo: bool,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("public_url", &self.public_url).finish_non_exhaustive()
    }
}

/// One request, as the handlers see it.
pub struct Req {
    pub method: warp::http::Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub peer: Option<SocketAddr>,
    pub body: Bytes,
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers and body may carry cookies and tokens: never print them.
        f.debug_struct("Req").field("method", &self.method).field("path", &self.path).finish_non_exhaustive()
    }
}

/// A refusal with its status and, when the cookies are dead, the cookies to clear.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    clear_cookies: bool,
    clear_login: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), clear_cookies: false, clear_login: false }
    }

    fn refusal(r: Refusal, effects: &[Effect]) -> Self {
        let status = match r {
            Refusal::Csrf(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        Self {
            status,
            code: r.code(),
            message: r.to_string(),
            clear_cookies: effects.contains(&Effect::ClearCookies),
            clear_login: false,
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        warn!(error = %e, "failing closed");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the session store is unavailable; try again")
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ServiceError::Store(e).into()
    }
}

/// The BFF's routes. `cell` holds the app once it is ready; until then every request gets 503.
pub fn routes(cell: Arc<std::sync::OnceLock<Arc<App>>>) -> BoxedFilter<(Response,)> {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::addr::remote())
        .and(warp::body::bytes())
        .and(warp::any().map(move || cell.clone()))
        .then(
            |method,
             path: warp::path::FullPath,
             query,
             headers,
             peer,
             body,
             cell: Arc<std::sync::OnceLock<Arc<App>>>| async move {
                let Some(app) = cell.get().cloned() else {
                    return json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"error": "starting", "message": "the server is starting"}),
                    );
                };
                let req = Req { method, path: path.as_str().to_owned(), query, headers, peer, body };
                dispatch(app, req).await
            },
        )
        .boxed()
}

async fn dispatch(app: Arc<App>, req: Req) -> Response {
    let started = Instant::now();
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let m = req.method.as_str();
    let (route, result) = match (m, segments.as_slice()) {
        ("GET", ["healthz"]) => ("healthz", Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))),
        ("GET", ["metrics"]) => ("metrics", Ok(text(app.service.metrics.render()))),
        ("GET", ["openapi.json"]) => ("openapi", Ok(openapi())),
        ("GET", ["auth", "login"]) => ("login", app.login(&req).await),
        ("GET", ["auth", "callback"]) => ("callback", app.callback(&req).await),
        ("GET", ["auth", "session"]) => ("session", app.session(&req).await),
        ("POST", ["auth", "logout"]) => ("logout", app.logout(&req).await),
        ("POST", ["auth", "logout-all"]) => ("logout_all", app.logout_all(&req).await),
        ("GET", ["auth", "sessions"]) => ("sessions", app.list_sessions(&req).await),
        ("DELETE", ["auth", "sessions", handle]) => ("end_session", app.end_session(&req, handle).await),
        ("POST", ["auth", "backchannel-logout"]) => ("backchannel", app.backchannel(&req).await),
        (_, ["api", ..]) => ("api", app.proxy(&req).await),
        ("POST", ["__test", "clock"]) if app.service.clock.is_test() => ("test_clock", app.test_clock(&req)),
        ("POST", ["__test", "tick"]) if app.service.clock.is_test() => ("test_tick", app.test_tick().await),
        ("GET", [""]) if app.demo => ("demo", Ok(crate::demo::page())),
        (_, ["__echo", ..]) if app.demo => ("echo", Ok(crate::demo::echo(&req))),
        (_, ["auth" | "healthz" | "metrics" | "openapi.json", ..]) => (
            "other",
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{m} is not allowed here"),
            )),
        ),
        _ => ("other", Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint"))),
    };
    let response = result.unwrap_or_else(|e| app.error_response(e));
    app.service.metrics.observe(route, started.elapsed());
    response
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// The OpenAPI document of this API (`crates/server/api/openapi.json`, checked by schemathesis in CI).
fn openapi() -> Response {
    warp::reply::with_header(OPENAPI, "content-type", "application/json").into_response()
}

const OPENAPI: &str = include_str!("../api/openapi.json");

fn text(body: String) -> Response {
    warp::reply::with_header(body, "content-type", "text/plain; version=0.0.4").into_response()
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn add_cookie(r: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn redirect(location: &str) -> Response {
    let mut r = warp::reply::with_status(warp::reply(), StatusCode::FOUND).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn query_map(q: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

fn header_str<'a>(req: &'a Req, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn iso(t: bff_session_core::Timestamp) -> serde_json::Value {
    json!(t.as_millis())
}

impl App {
    fn error_response(&self, e: ApiError) -> Response {
        let mut r = no_store(json_response(e.status, &json!({ "error": e.code, "message": e.message })));
        if e.clear_cookies {
            self.clear_cookies(&mut r);
        }
        if e.clear_login {
            add_cookie(&mut r, &self.cookies.clear(Kind::Login));
        }
        r
    }

    fn clear_cookies(&self, r: &mut Response) {
        add_cookie(r, &self.cookies.clear(Kind::Session));
        add_cookie(r, &self.cookies.clear(Kind::Csrf));
    }

    fn set_cookies(&self, r: &mut Response, id: &SessionId, max_age: std::time::Duration) {
        add_cookie(r, &self.cookies.set(Kind::Session, &id.encode(), max_age));
        add_cookie(r, &self.cookies.set(Kind::Csrf, &csrf::proof_for(id), max_age));
    }

    /// Applies the cookie effects of a transition to a response.
    fn apply_cookie_effects(&self, r: &mut Response, effects: &[Effect], id: Option<&SessionId>) {
        for effect in effects {
            match effect {
                Effect::ClearCookies => self.clear_cookies(r),
                Effect::SetCookies { max_age, .. } => {
                    if let Some(id) = id {
                        self.set_cookies(r, id, *max_age);
                    }
                }
                _ => {}
            }
        }
    }

    fn cookie(&self, req: &Req, kind: Kind) -> Result<Option<String>, ApiError> {
        let values: Vec<&str> = req.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
        cookie::find(values.iter().copied(), &self.cookies.name(kind)).map(|v| v.map(str::to_owned)).map_err(
            |e| match e {
                CookieError::TooLarge { .. } => {
                    ApiError::new(StatusCode::BAD_REQUEST, "cookies_too_large", e.to_string())
                }
                _ => ApiError::new(StatusCode::BAD_REQUEST, "duplicate_cookie", e.to_string()),
            },
        )
    }

    /// The request's live session, or the refusal. `method` decides whether a CSRF proof is required.
    async fn authenticated(&self, req: &Req) -> Result<(Arc<Session>, SessionId), ApiError> {
        let cookie = self.cookie(req, Kind::Session)?;
        let request = AuthRequest {
            cookie: cookie.as_deref(),
            method: Method::classify(req.method.as_str()),
            csrf_proof: header_str(req, CSRF_HEADER),
        };
        let applied = self.service.authenticate(&request).await?;
        match (applied.outcome, applied.session) {
            (Ok(_), Some(session)) => {
                // admit() succeeded, so the cookie decodes.
                let id = cookie
                    .as_deref()
                    .and_then(|c| SessionId::decode(c).ok())
                    .ok_or_else(|| ApiError::refusal(Refusal::Unknown, &[]))?;
                Ok((session, id))
            }
            (Ok(_), None) => Err(ApiError::refusal(Refusal::Unknown, &[Effect::ClearCookies])),
            (Err(refusal), _) => Err(ApiError::refusal(refusal, &applied.effects)),
        }
    }

    async fn login(&self, req: &Req) -> Result<Response, ApiError> {
        let q = query_map(&req.query);
        let return_to = match q.get("return_to") {
            Some(p) => return_path::validate(p)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_return_to", e.to_string()))?,
            None => return_path::ReturnPath::root(),
        };
        let hint = q.get("login_hint").map(String::as_str).filter(|h| !h.is_empty() && h.len() <= 256);
        let start = self.service.oidc.start(hint);
        let now = self.service.clock.now();
        let pending = PendingLogin {
            state: start.state,
            nonce: start.nonce,
            verifier: start.verifier,
            return_to: return_to.as_str().to_owned(),
            expires_ms: now.saturating_add(login::LIFETIME).as_millis(),
        };
        let cookie_value = login::save(&self.service.store, &pending).await?;
        let mut r = no_store(redirect(&start.url));
        add_cookie(&mut r, &self.cookies.set(Kind::Login, &cookie_value, login::LIFETIME));
        Ok(r)
    }

    async fn callback(&self, req: &Req) -> Result<Response, ApiError> {
        let q = query_map(&req.query);
        let login_cookie = self.cookie(req, Kind::Login)?;
        let fail = |code: &'static str, message: &str| {
            warn!(reason = code, "login failed");
            // Whatever went wrong, this login attempt is over.
            let mut e = ApiError::new(StatusCode::BAD_REQUEST, code, message);
            e.clear_login = true;
            e
        };
        let Some(login_cookie) = login_cookie else {
            return Err(fail("login_not_started", "no login in progress in this browser"));
        };
        let now = self.service.clock.now();
        let pending = login::take(&self.service.store, &login_cookie, now.as_millis())
            .await?
            .ok_or_else(|| fail("login_expired", "this login is unknown, used or expired; start again"))?;
        if let Some(error) = q.get("error") {
            warn!(provider_error = %error.chars().take(64).collect::<String>(), "provider refused the login");
            return Err(fail("provider_error", "the provider did not sign you in"));
        }
        let state = q.get("state").map(String::as_str).unwrap_or_default();
        if !ct_eq(state, &pending.state) {
            return Err(fail("state_mismatch", "the login response does not belong to this login"));
        }
        let code =
            q.get("code").filter(|c| !c.is_empty()).ok_or_else(|| fail("missing_code", "no authorization code"))?;
        let result = self.service.oidc.exchange(code, &pending.verifier, &pending.nonce).await.map_err(|e| {
            warn!(error = %e, "code exchange failed");
            match e {
                crate::oidc::OidcError::Unavailable(_) => {
                    let mut e = ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "provider_unavailable",
                        "the provider could not be reached",
                    );
                    e.clear_login = true;
                    e
                }
                _ => fail("login_rejected", "the provider's response was not valid"),
            }
        })?;
        let presented =
            self.cookie(req, Kind::Session).ok().flatten().and_then(|c| SessionId::decode(&c).ok()).map(|id| id.key());
        let id = new_session_id()?;
        let new = NewSession {
            id: id.clone(),
            user: UserId::new(result.identity.sub.clone()),
            login: Login::Oidc { identity: result.identity, grant: result.grant },
            device: self.device(req),
        };
        let applied = self.service.create(&new, presented).await?;
        info!(session = %applied.outcome, "signed in");
        let mut r = no_store(redirect(&format!("{}{}", self.public_url, pending.return_to)));
        self.apply_cookie_effects(&mut r, &applied.effects, Some(&id));
        add_cookie(&mut r, &self.cookies.clear(Kind::Login));
        Ok(r)
    }

    fn device(&self, req: &Req) -> Device {
        let peer = req.peer.map_or(IpAddr::from([127, 0, 0, 1]), |p| p.ip());
        let all = |name: &str| req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
        let ip = client_ip::resolve(peer, &all("forwarded"), &all("x-forwarded-for"), &self.trusted_proxies);
        let user_agent = header_str(req, "user-agent").unwrap_or_default().chars().take(256).collect();
        Device { user_agent, client_ip: Some(ip) }
    }

    async fn session(&self, req: &Req) -> Result<Response, ApiError> {
        let (s, id) = self.authenticated(req).await?;
        let oidc = s.oidc();
        let body = SessionBody {
            user: UserBody {
                sub: s.user().as_str(),
                name: oidc.and_then(|o| o.name.as_deref()),
                email: oidc.and_then(|o| o.email.as_deref()),
            },
            session: SessionTimes {
                handle: s.handle().to_string(),
                created_at: s.created_at().as_millis(),
                last_used_at: s.last_used_at().as_millis(),
                absolute_deadline: s.absolute_deadline().as_millis(),
                idle_deadline: s.idle_deadline(&self.service.policy).map(|t| t.as_millis()),
                access_token_expires_at: s.tokens().map(|t| t.access_expires_at.as_millis()),
            },
            csrf_token: csrf::proof_for(&id),
        };
        Ok(no_store(warp::reply::json(&body).into_response()))
    }

    async fn logout(&self, req: &Req) -> Result<Response, ApiError> {
        let (s, _) = self.authenticated(req).await?;
        let id_token = s.tokens().and_then(|t| t.id_token.clone());
        let applied = self.service.revoke(s.key(), RevocationReason::Logout).await?;
        if let Err(refusal) = applied.outcome {
            return Err(ApiError::refusal(refusal, &[Effect::ClearCookies]));
        }
        let state = random_state();
        let end_session_url =
            self.service.oidc.end_session_url(id_token.as_ref(), &format!("{}/", self.public_url), &state);
        let mut r = no_store(json_response(StatusCode::OK, &json!({ "end_session_url": end_session_url })));
        self.apply_cookie_effects(&mut r, &applied.effects, None);
        Ok(r)
    }

    async fn logout_all(&self, req: &Req) -> Result<Response, ApiError> {
        let (s, _) = self.authenticated(req).await?;
        let keys = self.service.store.keys_of_user(s.user().as_str()).await?;
        let ended = self.service.revoke_all(keys, RevocationReason::LogoutEverywhere).await?;
        let mut r = no_store(json_response(StatusCode::OK, &json!({ "ended": ended })));
        self.clear_cookies(&mut r);
        Ok(r)
    }

    async fn list_sessions(&self, req: &Req) -> Result<Response, ApiError> {
        let (current, _) = self.authenticated(req).await?;
        let list: Vec<serde_json::Value> = self
            .service
            .sessions_of(current.user().as_str())
            .await?
            .iter()
            .map(|s| {
                json!({
                    "handle": s.handle().to_string(),
                    "created_at": iso(s.created_at()),
                    "last_used_at": iso(s.last_used_at()),
                    "user_agent": s.device().user_agent,
                    "client_ip": s.device().client_ip.map(|ip| ip.to_string()),
                    "current": s.key() == current.key(),
                })
            })
            .collect();
        Ok(no_store(json_response(StatusCode::OK, &json!({ "sessions": list }))))
    }

    async fn end_session(&self, req: &Req, handle: &str) -> Result<Response, ApiError> {
        let (current, _) = self.authenticated(req).await?;
        let not_found = || ApiError::new(StatusCode::NOT_FOUND, "unknown_session", "no such session of yours");
        let handle = Handle::parse(handle).ok_or_else(not_found)?;
        let target = self
            .service
            .sessions_of(current.user().as_str())
            .await?
            .into_iter()
            .find(|s| s.handle() == handle)
            .ok_or_else(not_found)?;
        let applied = self.service.revoke(target.key(), RevocationReason::RevokedFromDevice).await?;
        applied.outcome.map_err(|_| not_found())?;
        let mut r = no_store(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response());
        if target.key() == current.key() {
            self.clear_cookies(&mut r);
        }
        Ok(r)
    }

    async fn backchannel(&self, req: &Req) -> Result<Response, ApiError> {
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_logout_token", message);
        let form: HashMap<String, String> = url::form_urlencoded::parse(&req.body).into_owned().collect();
        let token = form.get("logout_token").ok_or_else(|| bad("no logout_token".into()))?;
        let claims = self.service.oidc.validate_logout_token(token).await.map_err(|e| {
            warn!(error = %e, "back-channel logout token refused");
            bad(e.to_string())
        })?;
        let fresh = self.service.store.remember_jti(&claims.jti, claims.exp).await?;
        if !fresh {
            return Err(bad("logout token replayed (jti already seen)".into()));
        }
        let keys = match (&claims.sid, &claims.sub) {
            (Some(sid), _) => self.service.store.keys_of_sid(&claims.iss, sid).await?,
            (None, Some(sub)) => self.service.store.keys_of_sub(&claims.iss, sub).await?,
            (None, None) => Vec::new(),
        };
        let ended = self.service.revoke_all(keys, RevocationReason::BackchannelLogout).await?;
        info!(ended, "back-channel logout");
        Ok(no_store(json_response(StatusCode::OK, &json!({ "ended": ended }))))
    }

    /// `{"advance_ms": N}` moves the clock by N ms (negative goes back); `{"set_ms": T}` sets it to T and lets
    /// it run; `{"freeze_ms": T}` stops it at T.
    fn test_clock(&self, req: &Req) -> Result<Response, ApiError> {
        use bff_session_core::Timestamp;
        let invalid = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", m.to_owned());
        let body: serde_json::Value =
            serde_json::from_slice(&req.body).map_err(|e| invalid(&format!("expected JSON: {e}")))?;
        let clock = &self.service.clock;
        let now = match (body["advance_ms"].as_i64(), body["set_ms"].as_u64(), body["freeze_ms"].as_u64()) {
            (Some(ms), None, None) => clock.advance(ms),
            (None, Some(at), None) => clock.set(Timestamp::from_millis(at)),
            (None, None, Some(at)) => clock.freeze(Timestamp::from_millis(at)),
            _ => {
                return Err(invalid(
                    "give exactly one of advance_ms (integer), set_ms or freeze_ms (non-negative integers)",
                ));
            }
        };
        let now = now.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint"))?;
        Ok(json_response(StatusCode::OK, &json!({ "now_ms": now.as_millis(), "frozen": clock.is_frozen() })))
    }

    /// Runs one background pass (refresher and sweeper) now and answers when it is done.
    async fn test_tick(&self) -> Result<Response, ApiError> {
        let acted = self.service.tick(8).await?;
        Ok(json_response(StatusCode::OK, &json!({ "acted": acted })))
    }

    async fn proxy(&self, req: &Req) -> Result<Response, ApiError> {
        let upstream = self
            .upstream
            .as_ref()
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no_upstream", "no API upstream is configured"))?;
        if req.body.len() > MAX_BODY {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request bodies are limited to 1 MiB",
            ));
        }
        let (mut session, _) = self.authenticated(req).await?;
        if session.refresh_due(self.service.clock.now(), &self.service.policy) {
            session = self
                .service
                .ensure_fresh(session.key(), Trigger::Request)
                .await?
                .map_err(|r| ApiError::refusal(r, &[Effect::ClearCookies]))?;
        }
        if session.tokens().is_none() {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "no_access_token", "this session has no access token"));
        }
        // The refresh failed transiently and the old token has run out: the session stays, the call waits.
        let token = session.live_access_token(self.service.clock.now()).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                "the access token could not be refreshed; try again shortly",
            )
        })?;
        let target = crate::proxy::target(upstream, &req.path, &req.query)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_api_path", e))?;
        crate::proxy::forward(&self.http, req, target, &token).await.map(no_store).map_err(|e| {
            warn!(error = %e, "upstream call failed");
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", "the API upstream could not be reached")
        })
    }
}

fn random_state() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
