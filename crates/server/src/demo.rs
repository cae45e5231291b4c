//! The demo: the embedded dev provider, a page that exercises every endpoint, and an echo API to stand in
//! for the upstream. Built only with the `demo` feature.
//!
//! Owns the dev provider's configuration and presentation. The page never sees a token: it reads the CSRF cookie, calls `/auth/*` and
//! `/api/*`, and shows what the echo API reports about the access token the BFF attached.

use std::net::SocketAddr;
use std::time::Duration;

use bff_session_dev_idp::DevIdp;
use warp::Reply as _;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::StartError;
use crate::oidc::jwt_payload;
use crate::request::Req;

/// The dev provider for a server at `public_url` listening on `addr`, with a fresh client secret.
pub(crate) fn provider(public_url: &str, addr: SocketAddr, access_token_ttl: Duration) -> Result<DevIdp, StartError> {
    let mut secret = [0u8; 24];
    getrandom::fill(&mut secret).map_err(StartError::Random)?;
    let config = bff_session_dev_idp::Config {
        issuer: format!("{public_url}/idp"),
        client_id: "bff-session-demo".into(),
        client_secret: secret.iter().map(|b| format!("{b:02x}")).collect(),
        redirect_uris: vec![format!("{public_url}/auth/callback")],
        post_logout_redirect_uris: vec![format!("{public_url}/")],
        backchannel_logout_uri: Some(format!("http://{addr}/auth/backchannel-logout")),
        access_token_ttl,
    };
    DevIdp::new(config).map_err(|e| StartError::DevProvider(e.to_string()))
}

const PAGE: &str = include_str!("../static/index.html");

pub fn page() -> Response {
    let mut r = warp::reply::html(PAGE).into_response();
    // Going back after sign-out must ask the server again, not show a kept copy of the signed-in page.
    r.headers_mut().insert("cache-control", warp::http::HeaderValue::from_static("no-store"));
    r.headers_mut().insert("content-security-policy", warp::http::HeaderValue::from_static("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"));
    r
}

/// Reports the request the upstream received: method, path, and the claims of the bearer token (never the
/// token itself).
pub fn echo(req: &Req) -> Response {
    let bearer = req.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(claims) = bearer.and_then(jwt_payload) else {
        return warp::reply::with_status(
            warp::reply::json(&serde_json::json!({"error": "no_token", "message": "no bearer token"})),
            StatusCode::UNAUTHORIZED,
        )
        .into_response();
    };
    let body = serde_json::json!({
        "method": req.method.as_str(),
        "path": req.path.trim_start_matches("/__echo"),
        "token": {
            "sub": claims["sub"], "iat": claims["iat"], "exp": claims["exp"], "scope": claims["scope"],
        },
        "cookies_forwarded": req.headers.contains_key("cookie"),
    });
    warp::reply::json(&body).into_response()
}
