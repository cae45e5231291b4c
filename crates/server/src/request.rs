//! One HTTP request as the handlers, the proxy and the demo see it.
//!
//! Owns [`Req`] and reading it: headers, the query, cookies (through core's duplicate-aware
//! `cookie::find`), and the device a request comes from. It never answers a request and never prints a
//! header value or the body, which may carry cookies and tokens.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use bff_session_core::cookie::{self, CookieError, Cookies, Kind};
use bff_session_core::{Device, client_ip};
use bytes::Bytes;
use warp::http::{HeaderMap, header};

/// The header that carries the CSRF proof on unsafe requests.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// One request.
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

impl Req {
    /// A header's value, if it is present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header that is visible ASCII.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
    }

    /// The query's parameters; a repeated one keeps its last value.
    pub fn query_map(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(self.query.as_bytes()).into_owned().collect()
    }

    /// A form body's fields.
    pub fn form(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// The value of one of our cookies. Two cookies of that name are an error, never a choice.
    pub fn cookie(&self, cookies: &Cookies, kind: Kind) -> Result<Option<&str>, CookieError> {
        cookie::find(self.headers_named(header::COOKIE.as_str()), &cookies.name(kind))
    }

    /// The browser's device as far as the request tells: its user agent and its address, read through the
    /// trusted proxies only.
    pub fn device(&self, trusted: &client_ip::TrustedProxies) -> Device {
        let user_agent = self.header("user-agent").unwrap_or_default().chars().take(256).collect();
        Device { user_agent, client_ip: Some(self.client_ip(trusted)) }
    }

    /// The client's address, read through the trusted proxies only.
    pub fn client_ip(&self, trusted: &client_ip::TrustedProxies) -> IpAddr {
        let peer = self.peer.map_or(IpAddr::from([127, 0, 0, 1]), |p| p.ip());
        client_ip::resolve(peer, &self.headers_named("forwarded"), &self.headers_named("x-forwarded-for"), trusted)
    }
}
