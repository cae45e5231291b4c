//! The `/auth/*` handlers: login and its callback, the session, logout, logout everywhere, the device list
//! and back-channel logout.
//!
//! Owns turning each of those requests into service calls and responses. The session rules are core's and
//! the storage is the service's: nothing here compares a time, looks up a record or decides whose cookies
//! die.

use bff_session_core::cookie::Kind;
use bff_session_core::lifecycle::{Login, NewSession};
use bff_session_core::{Handle, RevocationReason, RevokeAll, UserId, csrf, return_path};
use serde_json::json;
use tracing::{info, warn};
use warp::Reply as _;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::{ApiError, App, add_cookie, json_response, no_store};
use crate::oidc::OidcError;
use crate::request::Req;
use crate::service::{Replayed, new_session_id};

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
    access_token_issued_at: Option<u64>,
    access_token_expires_at: Option<u64>,
}

/// Constant-time equality for the login `state`. Hashing first gives equal lengths, so the comparison's time
/// says nothing about either input.
fn ct_eq(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    bool::from(Sha256::digest(a.as_bytes()).as_slice().ct_eq(Sha256::digest(b.as_bytes()).as_slice()))
}

fn redirect(location: &str) -> Response {
    let mut r = warp::reply::with_status(warp::reply(), StatusCode::FOUND).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A failed callback: whatever went wrong, this login attempt is over, and so is its cookie.
fn login_failed(status: StatusCode, code: &'static str, message: &str) -> ApiError {
    warn!(reason = code, "login failed");
    let mut e = ApiError::new(status, code, message);
    e.clear_login = true;
    e
}

impl App {
    pub(super) async fn login(&self, req: &Req) -> Result<Response, ApiError> {
        let q = req.query_map();
        let return_to = match q.get("return_to") {
            Some(p) => return_path::validate(p)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_return_to", e.to_string()))?,
            None => return_path::ReturnPath::root(),
        };
        let hint = q.get("login_hint").map(String::as_str).filter(|h| !h.is_empty() && h.len() <= 256);
        let start = self.oidc.start(hint);
        let cookie = self.service.begin_login(start.secrets, return_to.as_str().to_owned()).await?;
        let mut r = no_store(redirect(&start.url));
        add_cookie(&mut r, &self.cookies.set(Kind::Login, &cookie, self.service.login_policy.lifetime));
        Ok(r)
    }

    pub(super) async fn callback(&self, req: &Req) -> Result<Response, ApiError> {
        let bad = |code, message: &str| login_failed(StatusCode::BAD_REQUEST, code, message);
        let q = req.query_map();
        let login_cookie = req
            .cookie(&self.cookies, Kind::Login)?
            .ok_or_else(|| bad("login_not_started", "no login in progress in this browser"))?;
        // Unknown, used and expired logins share one code on the wire: a prober learns nothing from it.
        let pending = self
            .service
            .finish_login(login_cookie)
            .await?
            .map_err(|_| bad("login_expired", "this login is unknown, used or expired; start again"))?;
        if let Some(error) = q.get("error") {
            warn!(provider_error = %error.chars().take(64).collect::<String>(), "provider refused the login");
            return Err(bad("provider_error", "the provider did not sign you in"));
        }
        let state = q.get("state").map(String::as_str).unwrap_or_default();
        if !ct_eq(state, pending.secrets.state.expose()) {
            return Err(bad("state_mismatch", "the login response does not belong to this login"));
        }
        if !self.oidc.accepts_response_issuer(q.get("iss").map(String::as_str)) {
            return Err(bad("iss_mismatch", "the login response does not name this server's provider (RFC 9207)"));
        }
        let code =
            q.get("code").filter(|c| !c.is_empty()).ok_or_else(|| bad("missing_code", "no authorization code"))?;
        let result = self.oidc.exchange(code, &pending.secrets).await.map_err(|e| {
            warn!(error = %e, "code exchange failed");
            match e {
                OidcError::Unavailable(_) => {
                    login_failed(StatusCode::BAD_GATEWAY, "provider_unavailable", "the provider could not be reached")
                }
                _ => bad("login_rejected", "the provider's response was not valid"),
            }
        })?;
        // A session cookie this browser still presents names the session the new one supersedes.
        let presented = req
            .cookie(&self.cookies, Kind::Session)
            .ok()
            .flatten()
            .and_then(|c| bff_session_core::SessionId::decode(c).ok())
            .map(|id| id.key());
        let new = NewSession {
            id: new_session_id()?,
            user: UserId::new(result.identity.sub.clone()),
            login: Login::Oidc { identity: result.identity, grant: result.grant },
            device: req.device(&self.trusted_proxies),
        };
        let applied = self.service.create(&new, presented).await?;
        let key = applied.outcome.map_err(|e| {
            warn!(error = %e, "a fresh session ID was already stored");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the session could not be created; try again")
        })?;
        info!(session = %key, "signed in");
        let mut r = no_store(redirect(&format!("{}{}", self.public_url, pending.return_to)));
        self.apply_cookie_effects(&mut r, &applied.effects, Some(&new.id));
        add_cookie(&mut r, &self.cookies.clear(Kind::Login));
        Ok(r)
    }

    pub(super) async fn session(&self, req: &Req) -> Result<Response, ApiError> {
        let admitted = self.authenticated(req).await?;
        let s = &admitted.session;
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
                access_token_issued_at: s.tokens().map(|t| t.access_issued_at.as_millis()),
                access_token_expires_at: s.tokens().map(|t| t.access_expires_at.as_millis()),
            },
            csrf_token: csrf::proof_for(&admitted.id),
        };
        Ok(no_store(warp::reply::json(&body).into_response()))
    }

    pub(super) async fn logout(&self, req: &Req) -> Result<Response, ApiError> {
        let admitted = self.authenticated(req).await?;
        let id_token = admitted.session.tokens().and_then(|t| t.id_token.clone());
        let applied = self.service.revoke(admitted.auth.key, RevocationReason::Logout).await?;
        applied.outcome.map_err(ApiError::refusal)?;
        let state = random_state()?;
        let end_session_url = self.oidc.end_session_url(id_token.as_ref(), &format!("{}/", self.public_url), &state);
        let mut r = no_store(json_response(StatusCode::OK, &json!({ "end_session_url": end_session_url })));
        self.apply_cookie_effects(&mut r, &applied.effects, None);
        Ok(clear_site_cookies(r))
    }

    pub(super) async fn logout_all(&self, req: &Req) -> Result<Response, ApiError> {
        let admitted = self.authenticated(req).await?;
        let plan = RevokeAll::everywhere(admitted.session.user().clone());
        let applied = self.service.revoke_all(&plan).await?;
        let mut r = no_store(json_response(StatusCode::OK, &json!({ "ended": applied.outcome.len() })));
        self.apply_cookie_effects(&mut r, &applied.effects, None);
        Ok(clear_site_cookies(r))
    }

    pub(super) async fn list_sessions(&self, req: &Req) -> Result<Response, ApiError> {
        let admitted = self.authenticated(req).await?;
        let list: Vec<serde_json::Value> = self
            .service
            .sessions_of(admitted.session.user())
            .await?
            .iter()
            .map(|s| {
                json!({
                    "handle": s.handle().to_string(),
                    "created_at": s.created_at().as_millis(),
                    "last_used_at": s.last_used_at().as_millis(),
                    "user_agent": s.device().user_agent,
                    "client_ip": s.device().client_ip.map(|ip| ip.to_string()),
                    "current": s.key() == admitted.auth.key,
                })
            })
            .collect();
        Ok(no_store(json_response(StatusCode::OK, &json!({ "sessions": list }))))
    }

    pub(super) async fn end_session(&self, req: &Req, handle: &str) -> Result<Response, ApiError> {
        let admitted = self.authenticated(req).await?;
        let not_found = || ApiError::new(StatusCode::NOT_FOUND, "unknown_session", "no such session of yours");
        let handle = Handle::parse(handle).ok_or_else(not_found)?;
        let applied = self.service.end_device(admitted.session.user(), handle, admitted.auth.key).await?;
        applied.outcome.map_err(|_| not_found())?;
        let mut r = no_store(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response());
        self.apply_cookie_effects(&mut r, &applied.effects, None);
        Ok(r)
    }

    pub(super) async fn backchannel(&self, req: &Req) -> Result<Response, ApiError> {
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_logout_token", message);
        let form = req.form();
        let token = form.get("logout_token").ok_or_else(|| bad("no logout_token".into()))?;
        let claims = self.oidc.validate_logout_token(token).await.map_err(|e| {
            warn!(error = %e, "back-channel logout token refused");
            bad(e.to_string())
        })?;
        let ended = self
            .service
            .backchannel(&claims)
            .await?
            .map_err(|Replayed| bad("logout token replayed (jti already seen)".into()))?;
        info!(ended, "back-channel logout");
        Ok(no_store(json_response(StatusCode::OK, &json!({ "ended": ended }))))
    }
}

/// The `state` of an RP-initiated logout: nothing depends on it, but providers require one.
fn random_state() -> Result<String, ApiError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(crate::service::ServiceError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A signed-out browser also drops every other cookie of this origin (a copy of the session cookie set by a
/// sibling path or an old deployment included), besides the two cleared by name.
fn clear_site_cookies(mut r: Response) -> Response {
    r.headers_mut().insert("clear-site-data", HeaderValue::from_static("\"cookies\""));
    r
}
