//! The HTTP API: route a request, ask the service, turn the outcome into a response.
//!
//! Owns paths, status codes, the JSON error shape `{"error": "...", "message": "..."}` and cookies on the
//! wire; `auth` holds the `/auth/*` handlers, `api` the proxy route's, and `guard` the refusals made
//! before any session is read. It holds no lifecycle rule and never touches the store: a
//! request is refused or served because core said so, and cookies change because an effect says so. No
//! session ID, token, code or CSRF proof is ever written to a log line or an error message.

mod api;
mod auth;
mod guard;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bff_session_core::cookie::{CookieError, Cookies, Kind};
use bff_session_core::lifecycle::{AuthRequest, Method};
use bff_session_core::{Effect, Refusal, SessionId, Timestamp, client_ip, csrf};
use serde_json::json;
use tracing::warn;
use warp::Filter as _;
use warp::Reply as _;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use self::guard::{rate_limited, read_body};
use crate::oidc::Oidc;
use crate::request::{CSRF_HEADER, Req};
use crate::service::{Admitted, Service, ServiceError};

/// Largest body of a route other than the proxy: a back-channel logout token, a test-clock command.
const MAX_AUTH_BODY: usize = 64 << 10;

/// Everything the handlers need that is not per request.
pub struct App {
    pub service: Arc<Service>,
    pub oidc: Arc<Oidc>,
    pub cookies: Cookies,
    /// The public origin, e.g. `https://app.example.com` (no trailing slash).
    pub public_url: String,
    pub trusted_proxies: client_ip::TrustedProxies,
    pub upstream: Option<url::Url>,
    pub http: reqwest::Client,
    /// Serve the demo page and the echo upstream.
    pub demo: bool,
    /// Largest body the proxy forwards (`--max-body`).
    pub max_body: usize,
    /// Largest upstream answer the proxy passes back (`--max-upstream-answer`).
    pub max_upstream_answer: usize,
    /// Sign-ins per client address (`--login-rate`); `None`: unlimited.
    pub login_limiter: Option<crate::limit::LoginLimiter>,
    /// Origins besides the public one whose pages may make unsafe requests (`--allowed-origins`).
    pub allowed_origins: Vec<String>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("public_url", &self.public_url).finish_non_exhaustive()
    }
}

/// A refusal with its status and the cookies to clear with it.
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

    /// Core's refusal; whether the cookies die with it is core's call too ([`Refusal::clears_cookies`]).
    fn refusal(r: Refusal) -> Self {
        let status = match r {
            Refusal::Csrf(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        Self { status, code: r.code(), message: r.to_string(), clear_cookies: r.clears_cookies(), clear_login: false }
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        warn!(error = %e, "failing closed");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the session store is unavailable; try again")
    }
}

impl From<CookieError> for ApiError {
    fn from(e: CookieError) -> Self {
        let code = match e {
            CookieError::TooLarge { .. } => "cookies_too_large",
            _ => "duplicate_cookie",
        };
        Self::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

/// Answers one request; `cell` holds the app once it is ready, and until then every request gets 503.
///
/// Called by the connection loop for every request to the BFF, straight from hyper: the request's parts are
/// moved into a [`Req`], nothing is cloned, and no filter chain runs before the routing.
pub async fn handle<B>(cell: &OnceLock<Arc<App>>, request: warp::http::Request<B>) -> Response
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let Some(app) = cell.get().cloned() else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "starting", "message": "the server is starting"}),
        );
    };
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let limit = if path.starts_with("/api/") { app.max_body } else { MAX_AUTH_BODY };
    let body = match read_body(&parts.headers, body, limit).await {
        Ok(body) => body,
        Err(e) => return app.error_response(e),
    };
    let req = Req {
        path: path.to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        method: parts.method,
        peer: parts.extensions.get::<crate::conn::Peer>().map(|p| p.0),
        headers: parts.headers,
        body,
    };
    dispatch(app, req).await
}

async fn dispatch(app: Arc<App>, req: Req) -> Response {
    if !crate::telemetry::request_spans() {
        return answer(app, req).await;
    }
    let span = tracing::info_span!(
        "request",
        http.request.method = %req.method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    tracing::Instrument::instrument(answer(app, req), span).await
}

/// The answer to a request, with its route's latency observed (and, in a span, its route and status).
async fn answer(app: Arc<App>, req: Req) -> Response {
    let started = Instant::now();
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let m = req.method.as_str();
    if let (Some(limiter), ("GET", ["auth", "login" | "callback"])) = (&app.login_limiter, (m, segments.as_slice()))
        && let Err(wait) = limiter.check(req.client_ip(&app.trusted_proxies))
    {
        app.service.metrics.observe("rate_limited", started.elapsed());
        return rate_limited(&app, wait);
    }
    if let Some(refused) = app.cross_site_refusal(&req, &segments) {
        app.service.metrics.observe("cross_site", started.elapsed());
        return app.error_response(refused);
    }
    let (route, result) = match (m, segments.as_slice()) {
        ("GET", ["healthz"]) => ("healthz", Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))),
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
        #[cfg(feature = "demo")]
        ("GET", [""]) if app.demo => ("demo", Ok(crate::demo::page())),
        #[cfg(feature = "demo")]
        (_, ["__echo", ..]) if app.demo => ("echo", Ok(crate::demo::echo(&req))),
        #[cfg(feature = "demo")]
        ("GET", ["__demo", "timeline"]) if app.demo => ("demo", app.timeline(&req)),
        (_, ["auth" | "healthz" | "openapi.json", ..]) => (
            "other",
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{m} is not allowed here"),
            )),
        ),
        _ => ("other", Err(ApiError::not_found())),
    };
    let response = result.unwrap_or_else(|e| app.error_response(e));
    app.service.metrics.observe(route, started.elapsed());
    let span = tracing::Span::current();
    span.record("http.route", route);
    span.record("http.response.status_code", u64::from(response.status().as_u16()));
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

/// `GET /metrics`, served on its own listener (`--metrics-listen`), never on the public one: the
/// counters describe every user's traffic.
pub fn metrics_routes(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .map(move || {
            let body = service.render_metrics();
            warp::reply::with_header(body, "content-type", crate::metrics::CONTENT_TYPE).into_response()
        })
        .boxed()
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

    /// Carries out the cookie effects of a transition on a response. `id` is the ID a new session was made
    /// with: only its creator knows it, so only its creator can set its cookies.
    fn apply_cookie_effects(&self, r: &mut Response, effects: &[Effect], id: Option<&SessionId>) {
        for effect in effects {
            match (effect, id) {
                (Effect::ClearCookies, _) => self.clear_cookies(r),
                (Effect::SetCookies { key, max_age }, Some(id)) if *key == id.key() => {
                    add_cookie(r, &self.cookies.set(Kind::Session, &id.encode(), *max_age));
                    add_cookie(r, &self.cookies.set(Kind::Csrf, &csrf::proof_for(id), *max_age));
                }
                _ => {}
            }
        }
    }

    /// The request's live session, or core's refusal. The method decides whether a CSRF proof is required.
    async fn authenticated(&self, req: &Req) -> Result<Admitted, ApiError> {
        let request = AuthRequest {
            cookie: req.cookie(&self.cookies, Kind::Session)?,
            method: Method::classify(req.method.as_str()),
            csrf_proof: req.header(CSRF_HEADER),
        };
        self.service.authenticate_and_touch(&request).await?.outcome.map_err(ApiError::refusal)
    }

    /// `GET /__demo/timeline`: the transitions of the session the cookie names, whether or not it is still
    /// active (the demo shows how it ended). Reading it neither authenticates nor touches the session.
    #[cfg(feature = "demo")]
    fn timeline(&self, req: &Req) -> Result<Response, ApiError> {
        let cookie = req.cookie(&self.cookies, Kind::Session)?;
        let id = match cookie.map(bff_session_core::SessionId::decode) {
            None => return Err(ApiError::refusal(bff_session_core::Refusal::NoCookie)),
            Some(Err(e)) => return Err(ApiError::refusal(bff_session_core::Refusal::Malformed(e))),
            Some(Ok(id)) => id,
        };
        let events = self.service.timeline.as_ref().map(|t| t.of(&id.key())).unwrap_or_default();
        Ok(no_store(json_response(StatusCode::OK, &json!({ "events": events }))))
    }

    /// `{"advance_ms": N}` moves the clock by N ms (negative goes back); `{"set_ms": T}` sets it to T and lets
    /// it run; `{"freeze_ms": T}` stops it at T.
    fn test_clock(&self, req: &Req) -> Result<Response, ApiError> {
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
        let now = now.ok_or_else(ApiError::not_found)?;
        Ok(json_response(StatusCode::OK, &json!({ "now_ms": now.as_millis(), "frozen": clock.is_frozen() })))
    }

    /// Runs one background pass (refresher and sweeper) now and answers when it is done.
    async fn test_tick(&self) -> Result<Response, ApiError> {
        let acted = self.service.tick(8).await?;
        Ok(json_response(StatusCode::OK, &json!({ "acted": acted })))
    }
}
