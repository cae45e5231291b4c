//! The API proxy: forwards `/api/{path}` to the one configured upstream with the session's access token.
//!
//! Owns the methods it forwards, building the upstream URL (the path can never choose another host: dot
//! segments in any encoding, empty segments, `;` parameters, backslashes and encoded separators are
//! refused, and the result is checked against the upstream's origin), and copying requests and responses:
//! hop-by-hop headers, headers named in `Connection`, cookies, the CSRF header and client-supplied
//! forwarding headers never reach the upstream (the BFF sets its own), and CORS headers and `Set-Cookie`
//! never come back. It never decides whether a request may pass: the caller has authenticated it.

use std::fmt;
use std::net::IpAddr;

use bff_session_core::Secret;
use bytes::Bytes;
use warp::http::{HeaderMap, HeaderName, StatusCode};
use warp::reply::Response;

use crate::request::{CSRF_HEADER, Req};

/// The methods an API call may use; anything else (TRACE, CONNECT, WebDAV's) gets 405.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

const DROPPED_REQUEST: [&str; 15] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "cookie",
    "authorization",
    "content-length",
    // Forwarding headers are the BFF's to set: a client's own would be believed upstream.
    "forwarded",
    "x-real-ip",
    "proxy-connection",
];
const DROPPED_RESPONSE: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
    "content-length",
];

/// Why a path under `/api` cannot be forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// The path is not under `/api`.
    NotApi,
    /// Dot segments, empty segments, backslashes or encoded separators.
    Unsafe,
    /// The joined URL does not parse.
    Invalid(String),
    /// The joined URL would leave the upstream's origin or path.
    LeavesUpstream,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotApi => f.write_str("not an API path"),
            Self::Unsafe => {
                f.write_str("the API path contains dot segments, empty segments, `;` parameters or encoded separators")
            }
            Self::Invalid(e) => write!(f, "invalid API path: {e}"),
            Self::LeavesUpstream => f.write_str("the API path leaves the upstream"),
        }
    }
}

/// Why the upstream call failed. Messages never carry the URL (it may hold a query with secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// The method or the access token cannot be sent as HTTP.
    Request(String),
    /// The upstream could not be reached or its answer could not be read.
    Upstream(String),
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream's answer is larger than the cap.
    TooLarge { limit: usize },
}

impl ForwardError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() { Self::Timeout } else { Self::Upstream(e.without_url().to_string()) }
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Request(e) => write!(f, "request cannot be forwarded: {e}"),
            Self::Upstream(e) => write!(f, "upstream call failed: {e}"),
            Self::Timeout => f.write_str("the upstream did not answer in time"),
            Self::TooLarge { limit } => write!(f, "the upstream's answer is larger than {limit} bytes"),
        }
    }
}

/// The upstream URL for a request path under `/api`.
pub fn target(upstream: &url::Url, path: &str, query: &str) -> Result<url::Url, TargetError> {
    let rest = path.strip_prefix("/api").ok_or(TargetError::NotApi)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err(TargetError::NotApi);
    }
    let lower = rest.to_ascii_lowercase();
    let segments_ok = rest.split('/').skip(1).enumerate().all(|(i, seg)| {
        // An empty final segment (a trailing slash) is fine; empty inner ones and dot segments are not.
        (seg.is_empty() && i == rest.split('/').count() - 2) || (!seg.is_empty() && seg != "." && seg != "..")
    });
    // Encoded separators and dots, also encoded twice (`%25`), as overlong UTF-8 (`%c0`, `%c1`) or as the
    // full-width dot, and `;` path parameters, which some servers strip before routing.
    const ENCODED: [&str; 9] = ["%2f", "%5c", "%2e", "%00", "%3b", "%25", "%c0", "%c1", "%ef%bc%8e"];
    if !segments_ok || rest.contains(['\\', ';', '\u{ff0e}']) || ENCODED.iter().any(|bad| lower.contains(bad)) {
        return Err(TargetError::Unsafe);
    }
    let base = upstream.as_str().trim_end_matches('/');
    let mut joined = format!("{base}{rest}");
    if !query.is_empty() {
        joined.push('?');
        joined.push_str(query);
    }
    let url = url::Url::parse(&joined).map_err(|e| TargetError::Invalid(e.to_string()))?;
    if url.origin() != upstream.origin() || !url.path().starts_with(upstream.path().trim_end_matches('/')) {
        return Err(TargetError::LeavesUpstream);
    }
    Ok(url)
}

/// Who asked, as the BFF tells the upstream: the client address it resolved (trusted proxies considered)
/// and the public origin's scheme and host.
#[derive(Clone, Debug)]
pub struct Forwarding {
    pub client: IpAddr,
    pub proto: String,
    pub host: String,
}

/// Header names a `Connection` header lists: hop-by-hop for this connection only.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The headers sent upstream: the client's, minus hop-by-hop ones, cookies, credentials, the CSRF header
/// and forwarding headers, plus the BFF's own forwarding headers and the bearer token.
pub fn request_headers(
    headers: &HeaderMap,
    forwarding: &Forwarding,
    token: &Secret,
) -> Result<reqwest::header::HeaderMap, ForwardError> {
    let named = connection_named(headers);
    let mut out = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if DROPPED_REQUEST.contains(&n)
            || n == CSRF_HEADER
            || n.starts_with("x-forwarded-")
            || named.iter().any(|c| c == n)
        {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(n.as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(k, v);
        }
    }
    let value = |v: String| {
        reqwest::header::HeaderValue::from_str(&v)
            .map_err(|_| ForwardError::Request("a forwarding header is not a valid header value".into()))
    };
    out.insert("x-forwarded-for", value(forwarding.client.to_string())?);
    out.insert("x-forwarded-proto", value(forwarding.proto.clone())?);
    out.insert("x-forwarded-host", value(forwarding.host.clone())?);
    let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| ForwardError::Request("the access token is not a valid header value".into()))?;
    out.insert(reqwest::header::AUTHORIZATION, bearer);
    Ok(out)
}

/// The headers returned to the browser: the upstream's, minus hop-by-hop ones, cookies and CORS (the BFF
/// is same-origin with its page; an upstream's CORS grant must not widen that), plus `nosniff`.
pub fn response_headers(upstream: &reqwest::header::HeaderMap) -> HeaderMap {
    let named: Vec<String> = upstream
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::new();
    for (name, value) in upstream {
        let n = name.as_str();
        if DROPPED_RESPONSE.contains(&n) || n.starts_with("access-control-") || named.iter().any(|c| c == n) {
            continue;
        }
        if let (Ok(k), Ok(v)) =
            (HeaderName::from_bytes(n.as_bytes()), warp::http::HeaderValue::from_bytes(value.as_bytes()))
        {
            out.append(k, v);
        }
    }
    out.insert("x-content-type-options", warp::http::HeaderValue::from_static("nosniff"));
    out
}

/// Sends the request upstream with `Authorization: Bearer` and returns the upstream's response.
pub async fn forward(
    http: &reqwest::Client,
    req: &Req,
    target: url::Url,
    token: &Secret,
    forwarding: &Forwarding,
    max_answer: usize,
) -> Result<Response, ForwardError> {
    let method = reqwest::Method::from_bytes(req.method.as_str().as_bytes())
        .map_err(|e| ForwardError::Request(e.to_string()))?;
    let headers = request_headers(&req.headers, forwarding, token)?;
    let upstream = http
        .request(method, target)
        .headers(headers)
        .body(req.body.clone())
        .send()
        .await
        .map_err(ForwardError::from_reqwest)?;
    let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let out_headers = response_headers(upstream.headers());
    // The answer is held in memory: refuse a declared length over the cap before reading, and stop reading
    // one without a length as soon as it passes the cap.
    if upstream.content_length().is_some_and(|n| n > max_answer as u64) {
        return Err(ForwardError::TooLarge { limit: max_answer });
    }
    let mut upstream = upstream;
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = upstream.chunk().await.map_err(ForwardError::from_reqwest)? {
        if body.len() + chunk.len() > max_answer {
            return Err(ForwardError::TooLarge { limit: max_answer });
        }
        body.extend_from_slice(&chunk);
    }
    let body: Bytes = body.freeze();
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> url::Url {
        url::Url::parse("http://127.0.0.1:9000/v1").unwrap()
    }

    #[test]
    fn paths_map_under_the_upstream() {
        assert_eq!(target(&up(), "/api/users/7", "x=1").unwrap().as_str(), "http://127.0.0.1:9000/v1/users/7?x=1");
        assert_eq!(target(&up(), "/api", "").unwrap().as_str(), "http://127.0.0.1:9000/v1");
        assert_eq!(target(&up(), "/api/items/", "").unwrap().as_str(), "http://127.0.0.1:9000/v1/items/");
    }

    #[test]
    fn paths_cannot_reach_another_host_or_climb_out() {
        for bad in [
            "/api//evil.com/x",
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api/a%2Fb",
            "/api/a\\b",
            "/api/./x",
            "/apix",
            "/api/a//b",
            "/api/a;jsessionid=1",
            "/api/a%3bx",
            "/api/%252e%252e/admin",
            "/api/%c0%ae%c0%ae/admin",
            "/api/%ef%bc%8e%ef%bc%8e/admin",
            "/api/a%25",
        ] {
            assert!(target(&up(), bad, "").is_err(), "{bad}");
        }
        assert_eq!(target(&up(), "/api/@evil.com", "").unwrap().host_str(), Some("127.0.0.1"));
    }

    fn forwarding() -> Forwarding {
        Forwarding { client: "203.0.113.7".parse().unwrap(), proto: "https".into(), host: "app.example".into() }
    }

    #[test]
    fn hop_by_hop_forwarding_and_credential_headers_never_go_upstream() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "5"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "1.2.3.4"),
            ("cookie", "bff-session=x"),
            ("authorization", "Basic eA=="),
            ("x-csrf-token", "p"),
            ("accept", "application/json"),
        ] {
            h.append(HeaderName::from_static(k), warp::http::HeaderValue::from_static(v));
        }
        let out = request_headers(&h, &forwarding(), &Secret::new("at")).unwrap();
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 5, "{names:?}");
        assert_eq!(out["accept"], "application/json");
        assert_eq!(out["x-forwarded-for"], "203.0.113.7");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "app.example");
        assert_eq!(out["authorization"], "Bearer at");
    }

    #[test]
    fn upstream_cors_cookies_and_hop_headers_never_reach_the_browser() {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in [
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("set-cookie", "upstream=1"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("content-type", "application/json"),
            ("x-content-type-options", "whatever"),
        ] {
            h.append(reqwest::header::HeaderName::from_static(k), reqwest::header::HeaderValue::from_static(v));
        }
        let out = response_headers(&h);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-content-type-options"], "{names:?}");
        assert_eq!(out["x-content-type-options"], "nosniff");
    }
}
