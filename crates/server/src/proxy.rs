//! The API proxy: forwards `/api/{path}` to the one configured upstream with the session's access token.
//!
//! Owns building the upstream URL (the path can never choose another host: dot segments, empty segments,
//! backslashes and encoded separators are refused, and the result is checked against the upstream's
//! origin) and copying requests and responses minus hop-by-hop headers, cookies and the CSRF header. It
//! never decides whether a request may pass: the caller has authenticated it.

use std::fmt;

use bff_session_core::Secret;
use bytes::Bytes;
use warp::http::{HeaderMap, HeaderName, StatusCode};
use warp::reply::Response;

use crate::request::{CSRF_HEADER, Req};

const DROPPED_REQUEST: [&str; 12] = [
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
            Self::Unsafe => f.write_str("the API path contains dot segments, empty segments or encoded separators"),
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
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Request(e) => write!(f, "request cannot be forwarded: {e}"),
            Self::Upstream(e) => write!(f, "upstream call failed: {e}"),
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
    if !segments_ok || rest.contains('\\') || ["%2f", "%5c", "%2e", "%00"].iter().any(|bad| lower.contains(bad)) {
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

/// Sends the request upstream with `Authorization: Bearer` and returns the upstream's response.
pub async fn forward(
    http: &reqwest::Client,
    req: &Req,
    target: url::Url,
    token: &Secret,
) -> Result<Response, ForwardError> {
    let method = reqwest::Method::from_bytes(req.method.as_str().as_bytes())
        .map_err(|e| ForwardError::Request(e.to_string()))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &req.headers {
        let n = name.as_str();
        if DROPPED_REQUEST.contains(&n) || n == CSRF_HEADER {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(n.as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(k, v);
        }
    }
    let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| ForwardError::Request("the access token is not a valid header value".into()))?;
    headers.insert(reqwest::header::AUTHORIZATION, bearer);
    let upstream = http
        .request(method, target)
        .headers(headers)
        .body(req.body.clone())
        .send()
        .await
        .map_err(|e| ForwardError::Upstream(e.without_url().to_string()))?;
    let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out_headers = HeaderMap::new();
    for (name, value) in upstream.headers() {
        if DROPPED_RESPONSE.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(k), Ok(v)) =
            (HeaderName::from_bytes(name.as_str().as_bytes()), warp::http::HeaderValue::from_bytes(value.as_bytes()))
        {
            out_headers.append(k, v);
        }
    }
    let body: Bytes = upstream.bytes().await.map_err(|e| ForwardError::Upstream(e.without_url().to_string()))?;
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
        ] {
            assert!(target(&up(), bad, "").is_err(), "{bad}");
        }
        assert_eq!(target(&up(), "/api/@evil.com", "").unwrap().host_str(), Some("127.0.0.1"));
    }
}
