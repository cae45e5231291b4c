//! Guards a request passes before any session is read: the body's size, the sign-in rate per address, and
//! where the request comes from (Fetch Metadata and `Origin`).
//!
//! Owns the refusals of hardening, each with its status and code. It holds no session rule and reads no
//! record: what it refuses never reaches core, and what it lets through is still judged there.

use bff_session_core::lifecycle::Method;
use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::BodyExt as _;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::{ApiError, App};
use crate::request::Req;

/// Reads a request body of at most `limit` bytes. A declared length over the limit is refused before
/// anything is read (so `Expect: 100-continue` gets the 413, never a 100), and a body without one
/// (chunked) is cut off as soon as it passes the limit.
pub(super) async fn read_body<B>(headers: &warp::http::HeaderMap, body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies here are limited to {limit} bytes"),
        )
    };
    let declared = headers.get(header::CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()));
    match declared {
        Some(None) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_content_length", "Content-Length is not a number"));
        }
        Some(Some(n)) if n > limit as u64 => return Err(too_large()),
        _ => {}
    }
    // Most requests (every GET) have none: no buffer, no poll.
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let mut body = std::pin::pin!(body);
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("the request body could not be read: {e}"))
        })?;
        // Trailers carry nothing a route reads.
        let Ok(mut chunk) = frame.into_data() else { continue };
        if out.len() + chunk.remaining() > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            out.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

/// 429 with the whole seconds to wait in `Retry-After`.
pub(super) fn rate_limited(app: &App, wait: std::time::Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = app.error_response(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many sign-ins from this address; try again in {secs} s"),
    ));
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

impl App {
    /// Fetch Metadata and `Origin`, before any session is read: a cross-site request never reaches the API
    /// or the session endpoints, whatever its method, and an unsafe one from another origin is refused even
    /// with a valid CSRF token. A client that sends neither header is left to the CSRF check. The
    /// provider's own requests (the callback is a cross-site navigation, back-channel logout comes from
    /// its server) are not browser requests of this origin and are not judged here.
    pub(super) fn cross_site_refusal(&self, req: &Req, segments: &[&str]) -> Option<ApiError> {
        let guarded = matches!(
            segments,
            ["api", ..] | ["auth", "session" | "sessions" | "logout" | "logout-all"] | ["auth", "sessions", _]
        );
        if !guarded {
            return None;
        }
        let site = req.header("sec-fetch-site");
        if site == Some("cross-site") {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_site_request",
                "requests from other sites are refused (Sec-Fetch-Site: cross-site)",
            ));
        }
        if Method::classify(req.method.as_str()) == Method::Safe {
            return None;
        }
        if site.is_some_and(|s| s != "same-origin" && s != "none") {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin_request",
                "unsafe requests must come from this origin (Sec-Fetch-Site)",
            ));
        }
        match req.header("origin") {
            Some(origin) if origin != self.public_url && !self.allowed_origins.iter().any(|o| o == origin) => {
                Some(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin_request",
                    "unsafe requests must come from this origin or an allowed one (Origin)",
                ))
            }
            _ => None,
        }
    }
}
