//! What a conforming BFF does at each step, according to core.
//!
//! Owns the prediction: core's [`Registry`] holds the model sessions (with IDs the oracle mints; the
//! target's are secret), the oracle plays the provider (its refresh count and injected faults), and every
//! step is turned into the [`Observation`] a conforming target must produce. The HTTP conventions on top
//! of core (401 and cleared cookies for an ended session, 403 for a CSRF failure, 503 when an expired access
//! token could not be refreshed) are the target protocol of this crate's README. It never talks to the
//! network.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use bff_session_core::lifecycle::{AuthRequest, Login, Method, NewSession, Refusal};
use bff_session_core::{
    Device, Effect, Handle, OidcIdentity, Policy, RefreshCompletion, RefreshRefusal, RefreshResult, RefreshTicket,
    Registry, RevocationReason, Secret, SessionId, SessionKey, Timestamp, TokenGrant, Trigger, UserId, csrf,
};

use crate::step::{CallMethod, DEVICES, Deadline, Failure, LogoutBy, Proof, Side, Span, Step};

/// A response's status, by what it means to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// 2xx.
    Success,
    /// 3xx.
    Redirect,
    Unauthorized,
    Forbidden,
    NotFound,
    /// 503: try again later; nothing was lost.
    Unavailable,
    /// Anything else, with its code.
    Other(u16),
}

impl Status {
    pub fn of(code: u16) -> Self {
        match code {
            200..=299 => Self::Success,
            300..=399 => Self::Redirect,
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            503 => Self::Unavailable,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Success => f.write_str("2xx"),
            Self::Redirect => f.write_str("3xx"),
            Self::Unauthorized => f.write_str("401"),
            Self::Forbidden => f.write_str("403"),
            Self::NotFound => f.write_str("404"),
            Self::Unavailable => f.write_str("503"),
            Self::Other(code) => write!(f, "{code}"),
        }
    }
}

/// What a response did to the device's session cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieChange {
    Kept,
    Set,
    Cleared,
}

/// What the harness compares after a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    Response {
        status: Status,
        cookie: CookieChange,
    },
    /// The device list: its status and, when it answered, how many sessions it lists.
    Listed {
        status: Status,
        cookie: CookieChange,
        sessions: Option<usize>,
    },
    /// The statuses of a burst of concurrent calls, sorted.
    Burst(Vec<Status>),
    /// The status the target answered the provider or the harness with (back-channel logout, a tick).
    Answered(Status),
    /// The step has nothing to observe (a clock move, a fault set up, a step about a device with no session).
    Nothing,
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cookie = |c: &CookieChange| match c {
            CookieChange::Kept => "session cookie kept",
            CookieChange::Set => "session cookie set",
            CookieChange::Cleared => "session cookie cleared",
        };
        match self {
            Self::Response { status, cookie: c } => write!(f, "{status}, {}", cookie(c)),
            Self::Listed { status, cookie: c, sessions: Some(n) } => {
                write!(f, "{status}, {}, {n} session(s) listed", cookie(c))
            }
            Self::Listed { status, cookie: c, sessions: None } => write!(f, "{status}, {}", cookie(c)),
            Self::Burst(statuses) => {
                let list: Vec<String> = statuses.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", list.join(", "))
            }
            Self::Answered(status) => write!(f, "{status}"),
            Self::Nothing => f.write_str("nothing"),
        }
    }
}

/// One device as the oracle sees it.
#[derive(Clone, Debug, Default)]
struct ModelDevice {
    /// The session its jar holds.
    current: Option<SessionId>,
    /// The session its jar held before the current one, ended since.
    previous: Option<SessionId>,
    /// The session of its latest sign-in, and who signed in.
    latest: Option<SessionId>,
    user: Option<u8>,
    sid: Option<String>,
}

/// core, playing a conforming BFF and its provider. See the module docs.
#[derive(Debug)]
pub struct Oracle {
    registry: Registry,
    now: Timestamp,
    issuer: String,
    token_ttl: Duration,
    users: Vec<String>,
    devices: Vec<ModelDevice>,
    minted: u64,
    faults: BTreeMap<String, VecDeque<Failure>>,
    refresh_requests: u64,
    /// Refresh tokens a conforming target has revoked at the provider so far.
    revocations: u64,
    /// How far from a deadline [`Span::To`] lands.
    near: Duration,
}

/// A handle no session has (sixteen zero bytes): what the harness sends to end a device that never signed in.
pub const NO_HANDLE: &str = "AAAAAAAAAAAAAAAAAAAAAA";

impl Oracle {
    pub fn new(
        policy: Policy,
        now: Timestamp,
        issuer: &str,
        token_ttl: Duration,
        users: Vec<String>,
    ) -> Result<Self, bff_session_core::PolicyError> {
        Ok(Self {
            registry: Registry::new(policy)?,
            now,
            issuer: issuer.to_owned(),
            token_ttl,
            users,
            devices: vec![ModelDevice::default(); usize::from(DEVICES)],
            minted: 0,
            faults: BTreeMap::new(),
            refresh_requests: 0,
            revocations: 0,
            near: Duration::from_secs(1),
        })
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Lands [`Span::To`] this far from its deadline (a wall clock needs more than the tolerance).
    pub fn land_near(&mut self, near: Duration) {
        self.near = near;
    }

    /// Moves the clock to `now` if that is later: on a wall clock, the oracle's time follows the real one.
    pub fn follow(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
    }

    /// Refresh tokens a conforming target has revoked at the provider so far.
    pub fn revocations(&self) -> u64 {
        self.revocations
    }

    /// Refresh requests a conforming target has sent the provider so far.
    pub fn refresh_requests(&self) -> u64 {
        self.refresh_requests
    }

    pub fn user_name(&self, user: u8) -> &str {
        self.users.get(usize::from(user)).map_or("", String::as_str)
    }

    /// The user who last signed in on `device`, and the provider session of that sign-in.
    pub fn signed_in(&self, device: u8) -> Option<(&str, &str)> {
        let d = self.device(device)?;
        Some((self.user_name(d.user?), d.sid.as_deref()?))
    }

    fn device(&self, device: u8) -> Option<&ModelDevice> {
        self.devices.get(usize::from(device))
    }

    fn device_mut(&mut self, device: u8) -> &mut ModelDevice {
        let i = usize::from(device).min(self.devices.len() - 1);
        &mut self.devices[i]
    }

    /// How far `span` moves the clock from now.
    pub fn resolve(&self, span: Span) -> Duration {
        let policy = self.registry.policy();
        let second = Duration::from_secs(1);
        match span {
            Span::Seconds(s) => Duration::from_secs(u64::from(s.max(1))),
            Span::TouchInterval => policy.touch_interval + second,
            Span::HalfTokenLife => self.token_ttl / 2 + second,
            Span::ThirdOfLifetime => policy.absolute_lifetime / 3,
            Span::Keepalive => policy.idle_timeout.map_or(policy.absolute_lifetime / 3, |idle| idle / 2),
            Span::To { device, deadline, side } => {
                let session = self
                    .device(device)
                    .and_then(|d| d.current.as_ref())
                    .and_then(|id| self.registry.get(&id.key()))
                    .filter(|s| s.is_active());
                let at = session.and_then(|s| match deadline {
                    Deadline::AccessExpiry => s.tokens().map(|t| t.access_expires_at),
                    Deadline::RefreshDue => s.refresh_from(policy.refresh_margin, policy),
                    Deadline::Idle => s.idle_deadline(policy),
                    Deadline::Absolute => Some(s.absolute_deadline()),
                });
                let to = at.map(|at| match side {
                    Side::Before => at.saturating_sub(self.near),
                    Side::After => at.saturating_add(self.near),
                });
                to.filter(|&to| to > self.now).map_or(second, |to| self.now.until(to))
            }
        }
    }

    /// Moves the clock on by `span`; returns the new time.
    pub fn advance(&mut self, span: Span) -> Timestamp {
        self.now = self.now.saturating_add(self.resolve(span));
        self.now
    }

    /// The observation a conforming target gives for `step`. `sid` is the provider session a `Login` step
    /// created (the provider chose it).
    pub fn expect(&mut self, step: &Step, sid: Option<&str>) -> Observation {
        match *step {
            Step::Login { device, user } => self.login(device, user, sid),
            Step::Call { device, method, proof } => {
                let (method, proof) = match method {
                    CallMethod::Get => (Method::Safe, None),
                    CallMethod::Post => (Method::Unsafe, Some(self.proof(device, proof))),
                };
                let current = self.device(device).and_then(|d| d.current.clone());
                let (status, cookie) = self.call(current.as_ref(), method, proof);
                self.settle(device, cookie);
                Observation::Response { status, cookie }
            }
            Step::Session { device } => {
                let current = self.device(device).and_then(|d| d.current.clone());
                let (status, cookie) = match self.request(current.as_ref(), Method::Safe, None) {
                    Ok(_) => (Status::Success, CookieChange::Kept),
                    Err(refused) => refused,
                };
                self.settle(device, cookie);
                Observation::Response { status, cookie }
            }
            Step::Sessions { device } => {
                let current = self.device(device).and_then(|d| d.current.clone());
                let (status, cookie, sessions) = match self.request(current.as_ref(), Method::Safe, None) {
                    Ok(key) => {
                        let user = self.registry.get(&key).map(|s| s.user().clone());
                        let n = user.map_or(0, |u| self.registry.sessions_of(&u).len());
                        (Status::Success, CookieChange::Kept, Some(n))
                    }
                    Err((status, cookie)) => (status, cookie, None),
                };
                self.settle(device, cookie);
                Observation::Listed { status, cookie, sessions }
            }
            Step::Advance { by } => {
                self.advance(by);
                Observation::Nothing
            }
            Step::Logout { device } => self.unsafe_request(device, |oracle, key| {
                let t = oracle.registry.revoke(key, RevocationReason::Logout, oracle.now);
                oracle.count_revocations(&t.effects);
                (Status::Success, cookies_after(&t.effects))
            }),
            Step::LogoutAll { device } => self.unsafe_request(device, |oracle, key| {
                let Some(user) = oracle.registry.get(&key).map(|s| s.user().clone()) else {
                    return (Status::Unauthorized, CookieChange::Cleared);
                };
                let t = oracle.registry.revoke_user(&user, RevocationReason::LogoutEverywhere, oracle.now);
                oracle.count_revocations(&t.effects);
                (Status::Success, cookies_after(&t.effects))
            }),
            Step::EndDevice { device, other } => {
                let target = self.device(other).and_then(|d| d.latest.clone());
                self.unsafe_request(device, |oracle, key| {
                    let Some(user) = oracle.registry.get(&key).map(|s| s.user().clone()) else {
                        return (Status::Unauthorized, CookieChange::Cleared);
                    };
                    let handle = target.as_ref().map(SessionId::handle).or_else(|| Handle::parse(NO_HANDLE));
                    let Some(handle) = handle else { return (Status::NotFound, CookieChange::Kept) };
                    let t = oracle.registry.revoke_handle(&user, handle, key, oracle.now);
                    match t.outcome {
                        Ok(()) => (Status::Success, cookies_after(&t.effects)),
                        Err(_) => (Status::NotFound, CookieChange::Kept),
                    }
                })
            }
            Step::BackchannelLogout { device, by } => {
                let Some((user, sid)) = self.signed_in(device).map(|(u, s)| (u.to_owned(), s.to_owned())) else {
                    return Observation::Nothing;
                };
                let _ = match by {
                    LogoutBy::Sid => self.registry.revoke_by_sid(&self.issuer, &sid, self.now),
                    LogoutBy::Sub => self.registry.revoke_by_sub(&self.issuer, &user, self.now),
                };
                Observation::Answered(Status::Success)
            }
            Step::FailNextRefresh { device, error } => {
                if let Some(sid) = self.device(device).and_then(|d| d.sid.clone()) {
                    self.faults.entry(sid).or_default().push_back(error);
                }
                Observation::Nothing
            }
            Step::Burst { device, requests } => {
                let current = self.device(device).and_then(|d| d.current.clone());
                let mut statuses = Vec::new();
                let mut cleared = false;
                for _ in 0..requests {
                    let (status, cookie) = self.call(current.as_ref(), Method::Safe, None);
                    cleared |= cookie == CookieChange::Cleared;
                    statuses.push(status);
                }
                if cleared {
                    self.settle(device, CookieChange::Cleared);
                }
                statuses.sort();
                Observation::Burst(statuses)
            }
            Step::Background => {
                let report = self.registry.tick(self.now).outcome;
                for key in report.refresh_due {
                    if let Ok(ticket) = self.registry.begin_refresh(key, Trigger::Background, self.now).outcome {
                        self.refresh(&ticket);
                    }
                }
                Observation::Answered(Status::Success)
            }
            Step::Replay { device } => {
                let Some(previous) = self.device(device).and_then(|d| d.previous.clone()) else {
                    return Observation::Nothing;
                };
                let (status, cookie) = match self.request(Some(&previous), Method::Safe, None) {
                    Ok(_) => (Status::Success, CookieChange::Kept),
                    Err(refused) => refused,
                };
                Observation::Response { status, cookie }
            }
        }
    }

    fn login(&mut self, device: u8, user: u8, sid: Option<&str>) -> Observation {
        self.minted += 1;
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&self.minted.to_be_bytes());
        let id = SessionId::from_random_bytes(bytes);
        let name = self.user_name(user).to_owned();
        let new = NewSession {
            id: id.clone(),
            user: UserId::new(name.clone()),
            login: Login::Oidc {
                identity: OidcIdentity {
                    iss: self.issuer.clone(),
                    sub: name,
                    sid: sid.map(str::to_owned),
                    name: None,
                    email: None,
                },
                grant: self.grant(),
            },
            device: Device::default(),
        };
        let supersedes = self.device(device).and_then(|d| d.current.as_ref()).map(SessionId::key);
        let _ = self.registry.create(&new, supersedes, self.now);
        let d = self.device_mut(device);
        if let Some(old) = d.current.replace(id.clone()) {
            d.previous = Some(old);
        }
        d.latest = Some(id);
        d.user = Some(user);
        d.sid = sid.map(str::to_owned);
        Observation::Response { status: Status::Redirect, cookie: CookieChange::Set }
    }

    /// A successful token response as the harness's provider sends it.
    fn grant(&self) -> TokenGrant {
        TokenGrant {
            access_token: Secret::new("access"),
            expires_in: Some(self.token_ttl),
            refresh_token: Some(Secret::new("refresh")),
            refresh_expires_in: None,
            id_token: Some(Secret::new("id")),
        }
    }

    /// The proof an unsafe call of `device` carries, in model terms.
    fn proof(&self, device: u8, proof: Proof) -> String {
        let of = |d: u8| self.device(d).and_then(|d| d.current.as_ref()).map(csrf::proof_for);
        match proof {
            Proof::Right => of(device).unwrap_or_default(),
            Proof::Missing => String::new(),
            Proof::Foreign { from } => of(from).unwrap_or_else(|| FOREIGN_FALLBACK.to_owned()),
            Proof::ChosenPair => CHOSEN_PROOF.to_owned(),
        }
    }

    /// Checks a request's session as the target's front door does, touching it when due.
    fn request(
        &mut self,
        session: Option<&SessionId>,
        method: Method,
        proof: Option<String>,
    ) -> Result<SessionKey, (Status, CookieChange)> {
        let cookie = session.map(SessionId::encode);
        let proof = proof.filter(|p| !p.is_empty());
        let request = AuthRequest { cookie: cookie.as_deref(), method, csrf_proof: proof.as_deref() };
        let t = self.registry.authenticate(&request, self.now);
        let cookie = cookies_after(&t.effects);
        match t.outcome {
            Ok(auth) => {
                if auth.touch_due {
                    let _ = self.registry.touch(auth.key, self.now);
                }
                Ok(auth.key)
            }
            Err(Refusal::Csrf(_)) => Err((Status::Forbidden, CookieChange::Kept)),
            Err(_) => Err((Status::Unauthorized, cookie)),
        }
    }

    /// An unsafe request with the device's own proof, then `then` on its session.
    fn unsafe_request(
        &mut self,
        device: u8,
        then: impl FnOnce(&mut Self, SessionKey) -> (Status, CookieChange),
    ) -> Observation {
        let current = self.device(device).and_then(|d| d.current.clone());
        let proof = current.as_ref().map(csrf::proof_for);
        let (status, cookie) = match self.request(current.as_ref(), Method::Unsafe, proof) {
            Ok(key) => then(self, key),
            Err(refused) => refused,
        };
        self.settle(device, cookie);
        Observation::Response { status, cookie }
    }

    /// An API call: the session, a refresh when due, and a live access token to forward.
    fn call(&mut self, session: Option<&SessionId>, method: Method, proof: Option<String>) -> (Status, CookieChange) {
        let key = match self.request(session, method, proof) {
            Ok(key) => key,
            Err(refused) => return refused,
        };
        let policy = self.registry.policy().clone();
        if self.registry.get(&key).is_some_and(|s| s.refresh_due(self.now, &policy)) {
            match self.registry.begin_refresh(key, Trigger::Request, self.now).outcome {
                Ok(ticket) => {
                    if self.refresh(&ticket) == RefreshCompletion::Revoked {
                        return (Status::Unauthorized, CookieChange::Cleared);
                    }
                }
                Err(RefreshRefusal::Ended(_)) => return (Status::Unauthorized, CookieChange::Cleared),
                Err(_) => {}
            }
        }
        match self.registry.get(&key).and_then(|s| s.live_access_token(self.now)) {
            Some(_) => (Status::Success, CookieChange::Kept),
            None => (Status::Unavailable, CookieChange::Kept),
        }
    }

    /// The provider's side of a refresh: count it, take an injected fault, or grant.
    fn refresh(&mut self, ticket: &RefreshTicket) -> RefreshCompletion {
        self.refresh_requests += 1;
        let sid = self.registry.get(&ticket.key).and_then(|s| s.oidc()).and_then(|o| o.sid.clone());
        let fault = sid.and_then(|sid| self.faults.get_mut(&sid)).and_then(VecDeque::pop_front);
        let result = match fault {
            Some(Failure::InvalidGrant) => RefreshResult::InvalidGrant,
            Some(Failure::Transient) => RefreshResult::Transient,
            None => RefreshResult::Success(self.grant()),
        };
        self.registry.complete_refresh(ticket, result, self.now).outcome
    }

    fn count_revocations(&mut self, effects: &[Effect]) {
        let n = effects.iter().filter(|e| matches!(e, Effect::RevokeAtProvider { .. })).count();
        self.revocations += n as u64;
    }

    /// A response that cleared the cookies leaves the device without a session.
    fn settle(&mut self, device: u8, cookie: CookieChange) {
        if cookie == CookieChange::Cleared {
            let d = self.device_mut(device);
            if let Some(old) = d.current.take() {
                d.previous = Some(old);
            }
        }
    }
}

/// The value of a client-chosen CSRF cookie and header pair.
pub const CHOSEN_PROOF: &str = "conformance-chosen-proof";
/// The proof sent as "another device's" when that device has no session.
pub const FOREIGN_FALLBACK: &str = "conformance-no-such-proof";

/// What a transition's effects do to the requesting browser's cookies.
fn cookies_after(effects: &[Effect]) -> CookieChange {
    if effects.contains(&Effect::ClearCookies) { CookieChange::Cleared } else { CookieChange::Kept }
}
