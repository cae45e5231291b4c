//! Performing steps against the target over HTTP, and what it was seen to do.
//!
//! Owns the devices' cookie jars, the sign-in dance through the provider, and turning responses into
//! [`Observation`]s. It knows the target only through the [`Mapping`]; it never predicts anything.

use std::collections::BTreeMap;
use std::fmt;

use bff_session_dev_idp::{DevIdp, Fault};
use reqwest::header::{COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};

use crate::mapping::Mapping;
use crate::oracle::{CHOSEN_PROOF, CookieChange, FOREIGN_FALLBACK, NO_HANDLE, Observation, Status};
use crate::profile::{Conventions, Profile, Supports};
use crate::step::{CallMethod, DEVICES, Failure, LogoutBy, Proof, Step};

/// Why a step could not be carried out at all (as opposed to the target answering wrongly).
#[derive(Debug)]
pub enum TargetError {
    /// The target or the provider did not answer.
    Http(String),
    /// The target answered something the protocol does not allow here.
    Protocol(String),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(e) => write!(f, "no answer: {e}"),
            Self::Protocol(e) => write!(f, "protocol violation: {e}"),
        }
    }
}

impl std::error::Error for TargetError {}

fn http(e: reqwest::Error) -> TargetError {
    TargetError::Http(e.to_string())
}

#[derive(Clone, Default)]
struct Jar {
    cookies: BTreeMap<String, String>,
    /// The session cookie this jar held before its current one.
    previous: Option<String>,
    /// The handle of the latest session signed in on this device, as the target named it.
    handle: Option<String>,
    user: Option<String>,
    sid: Option<String>,
}

struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

/// The target as the devices see it.
#[derive(Debug)]
pub struct Target {
    base: String,
    mapping: Mapping,
    http: reqwest::Client,
    devices: Vec<Jar>,
    conventions: Conventions,
    supports: Supports,
    /// The attributes (never the value) of the latest `Set-Cookie` for the session cookie.
    last_session_cookie: Option<String>,
}

impl fmt::Debug for Jar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Cookie values are session secrets of the target; keep them out of debug output.
        f.debug_struct("Jar").field("cookies", &self.cookies.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Target {
    pub fn new(base: &str, mapping: Mapping, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            mapping,
            http,
            devices: vec![Jar::default(); usize::from(DEVICES)],
            conventions: Conventions::default(),
            supports: Supports::default(),
            last_session_cookie: None,
        }
    }

    /// Speaks to the target as `profile` says (login dance, logout method, what a session answer holds).
    pub fn with_profile(mut self, profile: &Profile) -> Self {
        self.conventions = profile.http.clone();
        self.supports = profile.supports;
        self
    }

    /// The attributes of the latest session cookie a response set, without its value.
    pub fn last_session_cookie(&self) -> Option<&str> {
        self.last_session_cookie.as_deref()
    }

    /// The provider session (`sid`) of the device's latest sign-in.
    pub fn sid_of(&self, device: u8) -> Option<&str> {
        self.devices.get(usize::from(device)).and_then(|j| j.sid.as_deref())
    }

    /// The `Cookie` header the device sends, values included: for a load generator that replays a session.
    pub fn cookie_header_of(&self, device: u8) -> Option<String> {
        self.devices.get(usize::from(device)).and_then(|j| Self::cookie_header(&j.cookies))
    }

    fn jar(&mut self, device: u8) -> &mut Jar {
        let i = usize::from(device).min(self.devices.len() - 1);
        &mut self.devices[i]
    }

    fn cookie_header(cookies: &BTreeMap<String, String>) -> Option<String> {
        (!cookies.is_empty()).then(|| cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        cookies: Option<String>,
        headers: &[(&str, String)],
        json: Option<serde_json::Value>,
    ) -> Result<Response, TargetError> {
        let url = if url.starts_with("http") { url.to_owned() } else { format!("{}{url}", self.base) };
        let mut req = self.http.request(method, &url).header("user-agent", "bff-session-conformance");
        if let Some(c) = cookies {
            req = req.header(COOKIE, c);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(j) = json {
            req = req.json(&j);
        }
        let r = req.send().await.map_err(http)?;
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.text().await.map_err(http)?;
        Ok(Response { status, headers, body })
    }

    /// Stores the cookies a response set in the device's jar; says what happened to the session cookie.
    fn absorb(&mut self, device: u8, headers: &HeaderMap) -> CookieChange {
        let session_name = self.mapping.session_cookie.clone();
        if let Some(attributes) = session_cookie_attributes(headers, &session_name) {
            self.last_session_cookie = Some(attributes);
        }
        let jar = self.jar(device);
        for (name, value) in set_cookies(headers) {
            if name == session_name
                && let Some(old) = jar.cookies.get(&name).filter(|old| **old != value)
            {
                jar.previous = Some(old.clone());
            }
            if value.is_empty() {
                jar.cookies.remove(&name);
            } else {
                jar.cookies.insert(name, value);
            }
        }
        session_cookie_change(headers, &session_name)
    }

    fn csrf_of(&self, device: u8) -> Option<String> {
        self.devices.get(usize::from(device)).and_then(|j| j.cookies.get(&self.mapping.csrf_cookie).cloned())
    }

    /// Carries out `step`. For a sign-in, also returns the provider session (`sid`) it created.
    pub async fn perform(
        &mut self,
        step: &Step,
        idp: &DevIdp,
        user_name: &str,
        freeze_at: u64,
    ) -> Result<(Observation, Option<String>), TargetError> {
        let m = self.mapping.clone();
        let observed = match *step {
            Step::Login { device, .. } => return self.login(device, idp, user_name).await,
            Step::Call { device, method, proof } => self.call(device, method, proof).await?,
            Step::Session { device } => {
                let r = self.get(device, &m.session).await?;
                let cookie = self.absorb(device, &r.headers);
                Observation::Response { status: Status::of(r.status.as_u16()), cookie }
            }
            Step::Sessions { device } => {
                let r = self.get(device, &m.sessions).await?;
                let cookie = self.absorb(device, &r.headers);
                let status = Status::of(r.status.as_u16());
                let sessions = if status == Status::Success {
                    let v: serde_json::Value = serde_json::from_str(&r.body)
                        .map_err(|e| TargetError::Protocol(format!("the session list is not JSON: {e}")))?;
                    let list = v["sessions"]
                        .as_array()
                        .ok_or_else(|| TargetError::Protocol("the session list has no `sessions` array".to_owned()))?;
                    Some(list.len())
                } else {
                    None
                };
                Observation::Listed { status, cookie, sessions }
            }
            Step::Advance { .. } => {
                let r = self
                    .send(Method::POST, &m.clock, None, &[], Some(serde_json::json!({ "freeze_ms": freeze_at })))
                    .await?;
                if !r.status.is_success() {
                    return Err(TargetError::Protocol(format!("the test clock answered {}: {}", r.status, r.body)));
                }
                Observation::Nothing
            }
            Step::Logout { device } => {
                let method = if self.conventions.logout_method == "GET" { Method::GET } else { Method::POST };
                self.unsafe_own(device, method, &m.logout).await?
            }
            Step::LogoutAll { device } => self.unsafe_own(device, Method::POST, &m.logout_all).await?,
            Step::EndDevice { device, other } => {
                let handle =
                    self.devices.get(usize::from(other)).and_then(|j| j.handle.clone()).unwrap_or(NO_HANDLE.into());
                self.unsafe_own(device, Method::DELETE, &format!("{}/{handle}", m.sessions)).await?
            }
            Step::BackchannelLogout { device, by } => {
                let jar = self.jar(device).clone();
                let (Some(user), Some(sid)) = (jar.user, jar.sid) else { return Ok((Observation::Nothing, None)) };
                let sent = match by {
                    LogoutBy::Sid => idp.backchannel_logout(None, Some(&sid)).await,
                    LogoutBy::Sub => idp.backchannel_logout(Some(&user), None).await,
                };
                let code = sent.map_err(TargetError::Http)?;
                Observation::Answered(Status::of(code))
            }
            Step::FailNextRefresh { device, error } => {
                if let Some(sid) = self.jar(device).sid.clone() {
                    let fault = match error {
                        Failure::InvalidGrant => Fault::InvalidGrant,
                        Failure::Transient => Fault::ServerError,
                    };
                    idp.fail_next_refresh_of(&sid, fault);
                }
                Observation::Nothing
            }
            Step::Burst { device, requests } => {
                let cookies = Self::cookie_header(&self.jar(device).cookies);
                let mut calls = tokio::task::JoinSet::new();
                for _ in 0..requests {
                    let req = self.http.get(format!("{}{}", self.base, m.api));
                    let req = match &cookies {
                        Some(c) => req.header(COOKIE, c.clone()),
                        None => req,
                    };
                    calls.spawn(async move {
                        let r = req.send().await?;
                        Ok::<_, reqwest::Error>((r.status(), r.headers().clone()))
                    });
                }
                let mut statuses = Vec::new();
                while let Some(joined) = calls.join_next().await {
                    let (status, headers) = joined.map_err(|e| TargetError::Http(e.to_string()))?.map_err(http)?;
                    self.absorb(device, &headers);
                    statuses.push(Status::of(status.as_u16()));
                }
                statuses.sort();
                Observation::Burst(statuses)
            }
            Step::Background => {
                let r = self.send(Method::POST, &m.tick, None, &[], None).await?;
                Observation::Answered(Status::of(r.status.as_u16()))
            }
            Step::Replay { device } => {
                let Some(previous) = self.jar(device).previous.clone() else {
                    return Ok((Observation::Nothing, None));
                };
                // Someone else's client: what the response sets does not reach this device's jar.
                let cookies = format!("{}={previous}", m.session_cookie);
                let r = self.send(Method::GET, &m.session, Some(cookies), &[], None).await?;
                let cookie = session_cookie_change(&r.headers, &m.session_cookie);
                Observation::Response { status: Status::of(r.status.as_u16()), cookie }
            }
        };
        Ok((observed, None))
    }

    async fn get(&self, device: u8, path: &str) -> Result<Response, TargetError> {
        let cookies = self.devices.get(usize::from(device)).and_then(|j| Self::cookie_header(&j.cookies));
        self.send(Method::GET, path, cookies, &[], None).await
    }

    /// An unsafe request with the device's own CSRF proof.
    async fn unsafe_own(&mut self, device: u8, method: Method, path: &str) -> Result<Observation, TargetError> {
        let cookies = Self::cookie_header(&self.jar(device).cookies);
        let headers: Vec<(&str, String)> =
            self.csrf_of(device).map(|p| (self.mapping.csrf_header.as_str(), p)).into_iter().collect();
        let r = self.send(method, path, cookies, &headers, None).await?;
        let cookie = self.absorb(device, &r.headers);
        Ok(Observation::Response { status: Status::of(r.status.as_u16()), cookie })
    }

    async fn call(&mut self, device: u8, method: CallMethod, proof: Proof) -> Result<Observation, TargetError> {
        let m = self.mapping.clone();
        let mut cookies = self.jar(device).cookies.clone();
        let header = match (method, proof) {
            (CallMethod::Get, _) | (CallMethod::Post, Proof::Missing) => None,
            (CallMethod::Post, Proof::Right) => self.csrf_of(device),
            (CallMethod::Post, Proof::Foreign { from }) => {
                Some(self.csrf_of(from).unwrap_or_else(|| FOREIGN_FALLBACK.to_owned()))
            }
            (CallMethod::Post, Proof::ChosenPair) => {
                cookies.insert(m.csrf_cookie.clone(), CHOSEN_PROOF.to_owned());
                Some(CHOSEN_PROOF.to_owned())
            }
        };
        let headers: Vec<(&str, String)> = header.map(|p| (m.csrf_header.as_str(), p)).into_iter().collect();
        let http_method = match method {
            CallMethod::Get => Method::GET,
            CallMethod::Post => Method::POST,
        };
        let r = self.send(http_method, &m.api, Self::cookie_header(&cookies), &headers, None).await?;
        let cookie = self.absorb(device, &r.headers);
        Ok(Observation::Response { status: Status::of(r.status.as_u16()), cookie })
    }

    /// Signs the device in through the provider's authorize endpoint (`login_hint` signs in at once).
    async fn login(
        &mut self,
        device: u8,
        idp: &DevIdp,
        user: &str,
    ) -> Result<(Observation, Option<String>), TargetError> {
        let m = self.mapping.clone();
        let start_path = if self.conventions.login_query {
            format!("{}?return_to=/&login_hint={user}", m.login)
        } else {
            m.login.clone()
        };
        let cookies = Self::cookie_header(&self.jar(device).cookies);
        let start = self.send(Method::GET, &start_path, cookies, &[], None).await?;
        let start_cookie = self.absorb(device, &start.headers);
        let Some(authorize) = location(&start) else {
            return Ok((
                Observation::Response { status: Status::of(start.status.as_u16()), cookie: start_cookie },
                None,
            ));
        };
        let authorize = with_login_hint(&authorize, user);
        let approved = self.send(Method::GET, &authorize, None, &[], None).await?;
        let callback = location(&approved).ok_or_else(|| {
            TargetError::Protocol(format!("the provider's authorize endpoint answered {}", approved.status))
        })?;
        let cookies = Self::cookie_header(&self.jar(device).cookies);
        let r = self.send(Method::GET, &callback, cookies, &[], None).await?;
        let cookie = self.absorb(device, &r.headers);
        let observed = Observation::Response { status: Status::of(r.status.as_u16()), cookie };
        let sid = idp.latest_sid(user);
        if cookie == CookieChange::Set && !self.supports.device_list {
            let j = self.jar(device);
            j.handle = None;
            j.user = Some(user.to_owned());
            j.sid.clone_from(&sid);
        } else if cookie == CookieChange::Set {
            let s = self.get(device, &m.session).await?;
            let v: serde_json::Value = serde_json::from_str(&s.body).unwrap_or_default();
            let handle = v["session"]["handle"].as_str().map(str::to_owned).ok_or_else(|| {
                TargetError::Protocol(format!(
                    "after sign-in, the session endpoint answered {} without session.handle",
                    s.status
                ))
            })?;
            let j = self.jar(device);
            j.handle = Some(handle);
            j.user = Some(user.to_owned());
            j.sid.clone_from(&sid);
        }
        Ok((observed, sid))
    }
}

/// The authorize URL with `login_hint` added when the target did not pass one: the harness's provider
/// signs the hinted user in at once, whatever the target put in the request.
fn with_login_hint(authorize: &str, user: &str) -> String {
    match url::Url::parse(authorize) {
        Ok(mut url) if !url.query_pairs().any(|(k, _)| k == "login_hint") => {
            url.query_pairs_mut().append_pair("login_hint", user);
            url.into()
        }
        _ => authorize.to_owned(),
    }
}

/// The attributes of the session cookie a response sets (the value replaced by `…`), if it sets one.
fn session_cookie_attributes(headers: &HeaderMap, session_cookie: &str) -> Option<String> {
    headers.get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).rev().find_map(|header| {
        let (pair, attributes) = header.split_once(';').unwrap_or((header, ""));
        let (name, value) = pair.split_once('=')?;
        (name.trim() == session_cookie && !value.trim().is_empty()).then(|| format!("{name}=…;{attributes}"))
    })
}

fn location(r: &Response) -> Option<String> {
    if !r.status.is_redirection() {
        return None;
    }
    r.headers.get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The cookies a response sets, as (name, value); a cookie being cleared has an empty value.
fn set_cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|header| {
            let (name, value) = header.split(';').next()?.split_once('=')?;
            let attrs = header.to_ascii_lowercase();
            let cleared = attrs.contains("max-age=0") || attrs.contains("expires=thu, 01 jan 1970");
            Some((name.trim().to_owned(), if cleared { String::new() } else { value.trim().to_owned() }))
        })
        .collect()
}

fn session_cookie_change(headers: &HeaderMap, session_cookie: &str) -> CookieChange {
    set_cookies(headers)
        .into_iter()
        .filter(|(name, _)| name == session_cookie)
        .fold(CookieChange::Kept, |_, (_, v)| if v.is_empty() { CookieChange::Cleared } else { CookieChange::Set })
}
