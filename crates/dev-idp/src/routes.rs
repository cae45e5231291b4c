//! The provider's HTTP endpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;
use warp::Filter;
use warp::Reply as _;
use warp::filters::BoxedFilter;
use warp::http::{StatusCode, header};
use warp::reply::Response as Reply;

use crate::state::{Fault, Inner, OAuthError, bump};

type Params = HashMap<String, String>;

pub(crate) fn routes(idp: Arc<Inner>) -> BoxedFilter<(Reply,)> {
    let with = move || {
        let idp = idp.clone();
        warp::any().map(move || idp.clone())
    };
    let discovery = warp::path!(".well-known" / "openid-configuration")
        .and(warp::get())
        .and(with())
        .map(|idp: Arc<Inner>| json_reply(StatusCode::OK, &discovery(&idp)));
    let jwks = warp::path!("jwks").and(warp::get()).and(with()).map(|idp: Arc<Inner>| {
        bump(&idp.counters.jwks_fetches);
        json_reply(StatusCode::OK, idp.signer.jwks())
    });
    let authorize_get =
        warp::path!("authorize").and(warp::get()).and(warp::query::<Params>()).and(with()).map(authorize);
    let authorize_post =
        warp::path!("authorize").and(warp::post()).and(warp::body::form::<Params>()).and(with()).map(authorize);
    let token = warp::path!("token")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::form::<Params>())
        .and(with())
        .then(token);
    let revoke = warp::path!("revoke").and(warp::post()).and(warp::body::form::<Params>()).and(with()).map(
        |form: Params, idp: Arc<Inner>| {
            if let Some(token) = form.get("token") {
                idp.revoke(token);
            }
            empty(StatusCode::OK)
        },
    );
    // OpenID Connect Core 5.3.1: the UserInfo endpoint takes GET and POST.
    let userinfo = warp::path!("userinfo")
        .and(warp::get().or(warp::post()).unify())
        .and(warp::header::optional::<String>("authorization"))
        .and(with())
        .map(userinfo);
    let end_session =
        warp::path!("session" / "end").and(warp::get()).and(warp::query::<Params>()).and(with()).map(end_session);
    let counters = warp::path!("admin" / "counters")
        .and(warp::get())
        .and(with())
        .map(|idp: Arc<Inner>| json_reply(StatusCode::OK, &idp.counters()));
    let fail = warp::path!("admin" / "fail-next-refresh")
        .and(warp::post())
        .and(warp::body::json::<FaultRequest>())
        .and(with())
        .map(|f: FaultRequest, idp: Arc<Inner>| match f.fault() {
            Some(fault) => {
                idp.push_fault(fault, f.sid.as_deref());
                empty(StatusCode::NO_CONTENT)
            }
            None => json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request", "message": "kind must be invalid_grant, server_error or delay"}),
            ),
        });
    let backchannel = warp::path!("admin" / "backchannel-logout")
        .and(warp::post())
        .and(warp::body::json::<LogoutRequest>())
        .and(with())
        .then(|r: LogoutRequest, idp: Arc<Inner>| async move {
            match idp.backchannel_logout(r.sub.as_deref(), r.sid.as_deref()).await {
                Ok(status) => json_reply(StatusCode::OK, &json!({ "client_status": status })),
                Err(e) => json_reply(StatusCode::BAD_GATEWAY, &json!({ "error": "delivery_failed", "message": e })),
            }
        });
    discovery
        .or(jwks)
        .unify()
        .or(authorize_get)
        .unify()
        .or(authorize_post)
        .unify()
        .or(token)
        .unify()
        .or(revoke)
        .unify()
        .or(userinfo)
        .unify()
        .or(end_session)
        .unify()
        .or(counters)
        .unify()
        .or(fail)
        .unify()
        .or(backchannel)
        .unify()
        .recover(refused)
        .unify()
        .boxed()
}

/// What no route took, said in JSON like every other answer: an unknown path, a method a route does not
/// take, or a body or query that does not parse.
async fn refused(rejection: warp::Rejection) -> Result<warp::reply::Response, std::convert::Infallible> {
    let (status, error, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not_found", "this provider has no such endpoint".to_owned())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method".to_owned())
    } else {
        (StatusCode::BAD_REQUEST, "invalid_request", format!("the request does not parse: {rejection:?}"))
    };
    Ok(json_reply(status, &json!({ "error": error, "message": message })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_no_route_takes_is_answered_in_json() {
        let idp = crate::DevIdp::new(crate::Config {
            issuer: "http://127.0.0.1:1/idp".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            backchannel_logout_uri: None,
            access_token_ttl: Duration::from_secs(60),
        })
        .unwrap();
        let routes = idp.routes();
        for (method, path, body, status, error) in [
            ("GET", "/nope", "", StatusCode::NOT_FOUND, "not_found"),
            ("DELETE", "/token", "", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ("POST", "/admin/fail-next-refresh", "{", StatusCode::BAD_REQUEST, "invalid_request"),
        ] {
            let r = warp::test::request().method(method).path(path).body(body).reply(&routes).await;
            assert_eq!(r.status(), status, "{method} {path}");
            let answer: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
            assert_eq!(answer["error"], error, "{method} {path}");
        }
        let r = warp::test::request().path("/.well-known/openid-configuration").reply(&routes).await;
        assert_eq!(r.status(), StatusCode::OK, "a known route still answers");
    }
}

#[derive(Deserialize)]
struct FaultRequest {
    kind: String,
    #[serde(default)]
    millis: u64,
    /// Only a refresh of this provider session's grant takes the fault.
    sid: Option<String>,
}

impl FaultRequest {
    fn fault(&self) -> Option<Fault> {
        match self.kind.as_str() {
            "invalid_grant" => Some(Fault::InvalidGrant),
            "server_error" => Some(Fault::ServerError),
            "delay" => Some(Fault::Delay(Duration::from_millis(self.millis))),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct LogoutRequest {
    sub: Option<String>,
    sid: Option<String>,
}

fn discovery(idp: &Inner) -> serde_json::Value {
    let iss = &idp.config.issuer;
    json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "userinfo_endpoint": format!("{iss}/userinfo"),
        "jwks_uri": format!("{iss}/jwks"),
        "revocation_endpoint": format!("{iss}/revoke"),
        "end_session_endpoint": format!("{iss}/session/end"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "name", "email", "sid"],
        "backchannel_logout_supported": true,
        "authorization_response_iss_parameter_supported": true,
        "backchannel_logout_session_supported": true,
    })
}

fn authorize(p: Params, idp: Arc<Inner>) -> Reply {
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
    let cfg = &idp.config;
    if get("client_id") != cfg.client_id || !cfg.redirect_uris.iter().any(|u| u == get("redirect_uri")) {
        // Never redirect to an unregistered URI.
        return html(StatusCode::BAD_REQUEST, "<h1>Unknown client or redirect_uri</h1>");
    }
    let redirect_uri = get("redirect_uri");
    let state = get("state");
    let iss = cfg.issuer.as_str();
    let fail = |error: &str| redirect(&with_query(redirect_uri, &[("error", error), ("state", state), ("iss", iss)]));
    if get("response_type") != "code" {
        return fail("unsupported_response_type");
    }
    if get("code_challenge_method") != "S256" || get("code_challenge").is_empty() {
        return fail("invalid_request");
    }
    if !get("scope").split(' ').any(|s| s == "openid") {
        return fail("invalid_scope");
    }
    let user = p.get("username").or_else(|| p.get("login_hint")).map(|u| u.trim()).filter(|u| !u.is_empty());
    let Some(user) = user else {
        return html(StatusCode::OK, &login_form(&p));
    };
    if !user.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)) || user.len() > 64 {
        return html(StatusCode::BAD_REQUEST, "<h1>User names are letters, digits and . _ - @</h1>");
    }
    bump(&idp.counters.authorize);
    let nonce = p.get("nonce").cloned();
    let code = idp.issue_code(user, redirect_uri, nonce, get("code_challenge"), get("scope"));
    redirect(&with_query(redirect_uri, &[("code", &code), ("state", state), ("iss", iss)]))
}

async fn token(authorization: Option<String>, form: Params, idp: Arc<Inner>) -> Reply {
    match token_inner(authorization, &form, &idp).await {
        Ok(response) => with_no_store(json_reply(StatusCode::OK, &response)),
        Err(e) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            with_no_store(json_reply(status, &json!({ "error": e.error, "error_description": e.description })))
        }
    }
}

async fn token_inner(
    authorization: Option<String>,
    form: &Params,
    idp: &Inner,
) -> Result<crate::state::TokenResponse, OAuthError> {
    let (id, secret) = client_credentials(authorization.as_deref(), form).ok_or_else(|| OAuthError {
        status: 401,
        error: "invalid_client",
        description: "no client credentials".into(),
    })?;
    if id != idp.config.client_id || secret != idp.config.client_secret {
        return Err(OAuthError {
            status: 401,
            error: "invalid_client",
            description: "wrong client credentials".into(),
        });
    }
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    match get("grant_type") {
        "authorization_code" => idp.exchange_code(get("code"), get("redirect_uri"), get("code_verifier")),
        "refresh_token" => {
            bump(&idp.counters.refresh_requests);
            idp.count_refresh_of(get("refresh_token"));
            match idp.take_fault(get("refresh_token")) {
                Some(Fault::InvalidGrant) => {
                    idp.revoke_grant_of(get("refresh_token"));
                    return Err(idp.invalid_grant("injected: grant revoked"));
                }
                Some(Fault::ServerError) => {
                    return Err(OAuthError {
                        status: 500,
                        error: "server_error",
                        description: "injected failure".into(),
                    });
                }
                Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
                None => {}
            }
            idp.refresh(get("refresh_token"))
        }
        _ => Err(OAuthError::bad("unsupported_grant_type", "only authorization_code and refresh_token")),
    }
}

fn client_credentials(authorization: Option<&str>, form: &Params) -> Option<(String, String)> {
    if let Some(basic) = authorization.and_then(|h| h.strip_prefix("Basic ")) {
        let decoded = String::from_utf8(STANDARD.decode(basic.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let unescape =
            |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        return Some((unescape(id)?, unescape(secret)?));
    }
    Some((form.get("client_id")?.clone(), form.get("client_secret")?.clone()))
}

fn userinfo(authorization: Option<String>, idp: Arc<Inner>) -> Reply {
    let token = authorization.as_deref().and_then(|h| h.strip_prefix("Bearer ")).unwrap_or_default();
    if !idp.access_token_active(token) {
        return json_reply(StatusCode::UNAUTHORIZED, &json!({ "error": "invalid_token" }));
    }
    // The access token is our own JWT; its payload names the subject and the expiry an API must enforce
    // (a relying party that forwards an expired token is told so, as a resource server would).
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .unwrap_or_default();
    if claims["exp"].as_u64().is_some_and(|exp| exp <= crate::state::now_secs()) {
        return json_reply(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "invalid_token", "error_description": "expired" }),
        );
    }
    let sub = claims["sub"].as_str().unwrap_or_default().to_owned();
    json_reply(StatusCode::OK, &json!({ "sub": sub, "email": format!("{sub}@example.test") }))
}

fn end_session(p: Params, idp: Arc<Inner>) -> Reply {
    bump(&idp.counters.end_sessions);
    let cfg = &idp.config;
    if let Some(hint) = p.get("id_token_hint") {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[&cfg.client_id]);
        validation.set_issuer(&[&cfg.issuer]);
        // An ID token hint may have expired: RP-initiated logout accepts it anyway.
        validation.validate_exp = false;
        let Some(key) = idp.signer.decoding_key() else {
            return html(StatusCode::INTERNAL_SERVER_ERROR, "<h1>Key unavailable</h1>");
        };
        match jsonwebtoken::decode::<serde_json::Value>(hint, &key, &validation) {
            Ok(data) => {
                if let Some(sid) = data.claims["sid"].as_str() {
                    idp.end_provider_session(sid);
                }
            }
            Err(e) => {
                return html(
                    StatusCode::BAD_REQUEST,
                    &format!("<h1>Invalid id_token_hint</h1><p>{}</p>", escape(&e.to_string())),
                );
            }
        }
    }
    match p.get("post_logout_redirect_uri") {
        Some(uri) if cfg.post_logout_redirect_uris.iter().any(|u| u == uri) => {
            let state = p.get("state").map(String::as_str).unwrap_or_default();
            redirect(&with_query(uri, &[("state", state)]))
        }
        Some(_) => html(StatusCode::BAD_REQUEST, "<h1>Unregistered post_logout_redirect_uri</h1>"),
        None => html(StatusCode::OK, "<h1>Signed out of the dev provider</h1>"),
    }
}

fn login_form(p: &Params) -> String {
    let hidden: String = p
        .iter()
        .filter(|(k, _)| k.as_str() != "username")
        .map(|(k, v)| format!(r#"<input type="hidden" name="{}" value="{}">"#, escape(k), escape(v)))
        .collect();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Dev provider: sign in</title></head>
<body style="font-family:sans-serif;max-width:28em;margin:3em auto">
<h1>Dev OpenID provider</h1><p>Sign in as any user name. There is no password: this provider is for development.</p>
<form method="post" action="authorize">{hidden}
<label>User name <input name="username" id="username" autofocus required pattern="[A-Za-z0-9._@-]+"></label>
<button type="submit" id="signin">Sign in</button></form></body></html>"#
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().filter(|(_, v)| !v.is_empty()))
        .finish();
    let sep = if base.contains('?') { '&' } else { '?' };
    if query.is_empty() { base.to_owned() } else { format!("{base}{sep}{query}") }
}

fn json_reply(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

fn html(status: StatusCode, body: &str) -> Reply {
    warp::reply::with_status(warp::reply::html(body.to_owned()), status).into_response()
}

fn empty(status: StatusCode) -> Reply {
    warp::reply::with_status(warp::reply(), status).into_response()
}

fn redirect(location: &str) -> Reply {
    let mut r = empty(StatusCode::FOUND);
    if let Ok(v) = header::HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn with_no_store(mut r: Reply) -> Reply {
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}
