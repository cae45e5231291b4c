//! The reference model: what core must do, written as plainly as possible.
//!
//! Sessions sit in one ordered map and every question is answered by a linear scan, so there are no indexes
//! and no schedule to get wrong. Times are plain milliseconds. If this model has a bug it will hide the same
//! bug in core, so it stays small: each rule is a few lines that can be checked against the issue text.

use std::collections::BTreeMap;
use std::time::Duration;

use bff_session_core::Device;
use bff_session_core::csrf::CsrfError;
use bff_session_core::{
    Command, Durability, ExpiryReason, Login, Method, NewSession, OidcIdentity, Policy, RefreshCompletion,
    RefreshRefusal, RefreshResult, RefreshTicket, Refusal, RevocationReason, Secret, SessionId, SessionIdError,
    SessionKey, Timestamp, TokenGrant, Trigger, UserId,
};

pub const ISS: &str = "https://idp.test";
pub const GARBAGE_COOKIE: &str = "garbage";
pub const USERS: usize = 3;

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Expired(ExpiryReason),
    Revoked(RevocationReason),
}

#[derive(Clone, Debug)]
pub struct MTokens {
    pub issued: u64,
    pub expires: u64,
    pub refresh_token: Option<String>,
    pub refresh_expires: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct MSession {
    pub user: usize,
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub last_used: u64,
    pub absolute: u64,
    pub end: Option<(u64, End)>,
    pub tokens: Option<MTokens>,
    pub generation: u64,
    pub lease: Option<(u64, u64)>,
    pub failures: u32,
    pub retry_at: Option<u64>,
    /// The record's version: 1 at creation, one more for each change.
    pub version: u64,
}

/// What a step should be observed to do: the outcome, minus implementation details such as versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obs {
    None,
    Created(bool),
    Auth(Result<AuthObs, Refusal>),
    Touch(Result<bool, Refusal>),
    Begin(Result<(SessionKey, u64, String, u64), RefreshRefusal>),
    Renew(Result<u64, RefreshRefusal>),
    Complete(RefreshCompletion),
    Revoke(Result<(), Refusal>),
    Many(Vec<SessionKey>),
    Tick { expired: Vec<(SessionKey, ExpiryReason)>, deleted: Vec<SessionKey>, refresh_due: Vec<SessionKey> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthObs {
    pub touch_due: bool,
    pub refresh_due: bool,
    pub absolute: u64,
    pub idle: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cookies {
    Untouched,
    /// Set, with this `Max-Age` in milliseconds.
    Set {
        max_age_ms: u64,
    },
    Cleared,
}

/// One write a step asks of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Write {
    Put { key: SessionKey, version: u64, durability: Durability },
    Delete { key: SessionKey },
}

/// The expected observation of one step: the outcome, the tokens revoked at the provider, the browser's
/// cookies and the store's writes (sorted), each with its version and durability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub obs: Obs,
    pub revoked_at_provider: Vec<String>,
    pub cookies: Cookies,
    pub writes: Vec<Write>,
}

/// What one step did besides its outcome.
#[derive(Debug, Default)]
struct Fx {
    revoked: Vec<String>,
    writes: Vec<Write>,
}

/// Which element of a growing pool (sessions, tickets) an op addresses: any of them, or one of the newest.
/// Indexes wrap around the pool, so shrinking never invalidates them.
#[derive(Clone, Copy, Debug)]
pub enum Pick {
    Nth(u16),
    Newest(u8),
}

impl Pick {
    pub fn of(self, len: usize) -> usize {
        match self {
            Self::Nth(n) => usize::from(n) % len,
            Self::Newest(k) => len - 1 - usize::from(k) % len,
        }
    }
}

/// Browsers cap a cookie's lifetime at 400 days (RFC 6265bis).
const COOKIE_AGE_CAP_MS: u64 = 400 * 86_400_000;

/// What the test generator may ask for. Sessions and tickets are addressed by [`Pick`]; users by number.
#[derive(Clone, Debug)]
pub enum Op {
    Create {
        user: usize,
        oidc: Option<OidcOp>,
        supersede: Option<Pick>,
    },
    Authenticate {
        target: Target,
        unsafe_method: bool,
        proof: Proof,
    },
    Touch(Pick),
    BeginRefresh(Pick, Trigger),
    RenewLease(Pick),
    CompleteRefresh(Pick, ResultOp),
    Revoke(Pick, RevocationReason),
    RevokeUser(usize, RevocationReason),
    /// Ends session `.1` of user `.0` from the device list of session `.2`.
    RevokeHandle(usize, Pick, Pick),
    RevokeBySid(u8),
    RevokeBySub(usize),
    Tick,
    Advance(u64),
    Rewind(u64),
    /// Sets the clock to one of the instants where some rule changes its answer (a deadline, a due time, a
    /// lease's or a back-off's end, a tombstone's deletion), past or future, plus `offset` ms (-1, 0 or 1).
    ClockTo(Pick, i8),
}

#[derive(Clone, Debug)]
pub struct OidcOp {
    pub sid: Option<u8>,
    pub expires_in: Option<u64>,
    pub refresh_token: bool,
    pub refresh_expires_in: Option<u64>,
}

#[derive(Clone, Debug)]
pub enum Target {
    Session(Pick),
    Garbage,
    NoCookie,
}

#[derive(Clone, Debug)]
pub enum Proof {
    Own,
    Missing,
    Foreign(Pick),
    /// A string of the attacker's making.
    Forged(String),
}

#[derive(Clone, Debug)]
pub enum ResultOp {
    Success { expires_in: Option<u64>, rotate: bool, refresh_expires_in: Option<u64> },
    InvalidGrant,
    Transient,
}

/// The model's whole state, plus the last command it translated and what it expects of it.
#[derive(Clone, Debug)]
pub struct Model {
    pub policy: Policy,
    pub now: u64,
    pub ids: Vec<SessionId>,
    pub sessions: BTreeMap<SessionKey, MSession>,
    pub tickets: Vec<RefreshTicket>,
    pub counter: u64,
    pub last: Option<(Option<Command>, Expect)>,
    /// How strongly a generated sequence follows [`Model::chain_step`], out of 8 (0: never). Chosen once per
    /// sequence, so some sequences wander and others drive one session through a long rotation chain.
    pub focus: u32,
}

/// Small numbers everywhere, so that short sequences reach every deadline and back-off.
pub fn tiny_policy() -> Policy {
    let s = Duration::from_secs;
    Policy {
        absolute_lifetime: s(3600),
        idle_timeout: Some(s(600)),
        touch_interval: s(60),
        refresh_margin: s(30),
        background_interval: s(10),
        background_window: s(60),
        background_recent_use: s(300),
        assumed_token_lifetime: s(300),
        refresh_lease: s(10),
        refresh_backoff_base: s(1),
        refresh_backoff_max: s(16),
        tombstone_retention: s(300),
        clock_skew: s(5),
    }
}

pub fn user_id(u: usize) -> UserId {
    UserId::new(format!("user{u}"))
}

/// A session ID no one was given, for lookups of unknown sessions.
pub fn stranger() -> SessionId {
    SessionId::from_random_bytes([0xee; 32])
}

impl Model {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            now: 1_700_000_000_000,
            ids: Vec::new(),
            sessions: BTreeMap::new(),
            tickets: Vec::new(),
            counter: 0,
            last: None,
            focus: 0,
        }
    }

    /// The op that takes the newest session one step further along its rotation chain: complete its
    /// outstanding refresh with a rotated token, else move the clock to when a refresh is due (or its
    /// back-off ends), else begin one. Random ops alone seldom chain more than a few rotations, and rules
    /// keyed to later generations went unseen. `None` once the newest session cannot refresh.
    pub fn chain_step(&self) -> Option<Op> {
        let key = self.ids.last()?.key();
        let s = self.sessions.get(&key)?;
        if s.end.is_some() || self.now >= self.expiry(s).0 {
            return None;
        }
        let lifetime = ms(self.policy.assumed_token_lifetime) / 2;
        if let Some((generation, _)) = s.lease.filter(|&(_, until)| self.now < until) {
            let newest = self.tickets.last()?;
            if newest.key == key && newest.generation == generation {
                return Some(Op::CompleteRefresh(
                    Pick::Newest(0),
                    ResultOp::Success { expires_in: Some(lifetime), rotate: true, refresh_expires_in: None },
                ));
            }
            return None;
        }
        let due = self.refresh_from(s, self.policy.refresh_margin)?.max(s.retry_at.unwrap_or(0));
        if self.now < due {
            return Some(Op::Advance(due - self.now));
        }
        Some(Op::BeginRefresh(Pick::Newest(0), Trigger::Request))
    }

    fn id(&self, i: Pick) -> SessionId {
        if self.ids.is_empty() { stranger() } else { self.ids[i.of(self.ids.len())].clone() }
    }

    /// One more version of the record under `key`, written with `durability`.
    fn write(&mut self, key: SessionKey, durability: Durability, fx: &mut Fx) {
        let s = self.sessions.get_mut(&key).unwrap();
        s.version += 1;
        fx.writes.push(Write::Put { key, version: s.version, durability });
    }

    /// Every instant at which some rule about a session changes its answer, sorted and each once.
    pub fn instants(&self) -> Vec<u64> {
        let p = &self.policy;
        let mut at = Vec::new();
        for s in self.sessions.values() {
            match s.end {
                Some((ended, _)) => at.push(ended.saturating_add(ms(p.tombstone_retention))),
                None => {
                    at.push(s.absolute);
                    at.extend(p.idle_timeout.map(|i| s.last_used.saturating_add(ms(i))));
                    at.push(s.last_used.saturating_add(ms(p.touch_interval)));
                    at.push(s.last_used.saturating_add(ms(p.background_recent_use)));
                    at.extend(self.refresh_from(s, p.refresh_margin));
                    at.extend(self.refresh_from(s, p.background_window));
                    if let Some(t) = &s.tokens {
                        at.push(t.expires);
                        at.extend(t.refresh_expires);
                    }
                    at.extend(s.lease.map(|(_, until)| until));
                    at.extend(s.retry_at);
                }
            }
        }
        at.sort_unstable();
        at.dedup();
        at
    }

    fn expiry(&self, s: &MSession) -> (u64, ExpiryReason) {
        let mut candidates = vec![(s.absolute, ExpiryReason::Absolute)];
        if let Some(idle) = self.policy.idle_timeout {
            candidates.push((s.last_used.saturating_add(ms(idle)), ExpiryReason::Idle));
        }
        if let Some(t) = s.tokens.as_ref().and_then(|t| t.refresh_expires) {
            candidates.push((t, ExpiryReason::RefreshToken));
        }
        candidates.into_iter().min().unwrap()
    }

    fn refresh_from(&self, s: &MSession, ahead: Duration) -> Option<u64> {
        let t = s.tokens.as_ref()?;
        t.refresh_token.as_ref()?;
        let by_margin = t.expires.saturating_sub(ms(ahead) + ms(self.policy.clock_skew));
        let half_life = t.issued + t.expires.saturating_sub(t.issued) / 2;
        Some(by_margin.max(half_life))
    }

    fn end(&mut self, key: SessionKey, end: End, fx: &mut Fx) {
        let now = self.now;
        let s = self.sessions.get_mut(&key).unwrap();
        let at_provider = match end {
            End::Expired(_) => true,
            End::Revoked(r) => !matches!(r, RevocationReason::RefreshRejected | RevocationReason::BackchannelLogout),
        };
        s.end = Some((now, end));
        s.lease = None;
        s.retry_at = None;
        if let Some(rt) = s.tokens.take().and_then(|t| t.refresh_token)
            && at_provider
        {
            fx.revoked.push(rt);
        }
        self.write(key, Durability::Durable, fx);
    }

    /// Ok when the session exists, is active and within its deadlines; a passed deadline ends it here.
    fn live(&mut self, key: SessionKey, fx: &mut Fx) -> Result<(), Refusal> {
        let s = self.sessions.get(&key).ok_or(Refusal::Unknown)?;
        match &s.end {
            Some((_, End::Expired(r))) => Err(Refusal::Expired(*r)),
            Some((_, End::Revoked(r))) => Err(Refusal::Revoked(*r)),
            None => {
                let (deadline, reason) = self.expiry(s);
                if self.now >= deadline {
                    self.end(key, End::Expired(reason), fx);
                    Err(Refusal::Expired(reason))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn revoke(&mut self, key: SessionKey, reason: RevocationReason, fx: &mut Fx) -> Result<(), Refusal> {
        self.live(key, fx)?;
        self.end(key, End::Revoked(reason), fx);
        Ok(())
    }

    fn revoke_where(
        &mut self,
        reason: RevocationReason,
        pick: impl Fn(&MSession) -> bool,
        fx: &mut Fx,
    ) -> Vec<SessionKey> {
        let keys: Vec<SessionKey> =
            self.sessions.iter().filter(|(_, s)| s.end.is_none() && pick(s)).map(|(k, _)| *k).collect();
        keys.into_iter().filter(|&k| self.revoke(k, reason, fx).is_ok()).collect()
    }

    fn next_token(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{kind}-{}", self.counter)
    }

    /// Applies one op: updates the model and records the command and the expectation in `last`.
    pub fn step(&mut self, op: &Op) {
        let fx = &mut Fx::default();
        let mut cookies = Cookies::Untouched;
        let now = self.now;
        let (command, obs) = match op {
            Op::Advance(d) => {
                self.now = self.now.saturating_add(*d);
                (None, Obs::None)
            }
            Op::Rewind(d) => {
                self.now = self.now.saturating_sub(*d);
                (None, Obs::None)
            }
            Op::ClockTo(pick, offset) => {
                let instants = self.instants();
                if let Some(at) = (!instants.is_empty()).then(|| instants[pick.of(instants.len())]) {
                    self.now = at.saturating_add_signed(i64::from(*offset));
                }
                (None, Obs::None)
            }
            Op::Create { user, oidc, supersede } => {
                self.counter += 1;
                let mut bytes = [0u8; 32];
                bytes[..8].copy_from_slice(&self.counter.to_le_bytes());
                let id = SessionId::from_random_bytes(bytes);
                let supersedes = supersede.map(|i| self.id(i).key());
                if let Some(old) = supersedes
                    && self.live(old, fx).is_ok()
                {
                    self.end(old, End::Revoked(RevocationReason::Superseded), fx);
                }
                let (login, sub, sid, tokens) = match oidc {
                    None => (Login::Local, None, None, None),
                    Some(o) => {
                        let access = self.next_token("at");
                        let rt = o.refresh_token.then(|| self.next_token("rt"));
                        let sid = o.sid.map(|n| format!("sid{n}"));
                        let sub = format!("sub{user}");
                        let grant = TokenGrant {
                            access_token: Secret::new(access),
                            expires_in: o.expires_in.map(Duration::from_millis),
                            refresh_token: rt.clone().map(Secret::new),
                            refresh_expires_in: o.refresh_expires_in.map(Duration::from_millis),
                            id_token: Some(Secret::new("id-token")),
                        };
                        let tokens = MTokens {
                            issued: now,
                            expires: now.saturating_add(o.expires_in.unwrap_or(ms(self.policy.assumed_token_lifetime))),
                            refresh_expires: rt.as_ref().and(o.refresh_expires_in).map(|d| now.saturating_add(d)),
                            refresh_token: rt,
                        };
                        let identity = OidcIdentity {
                            iss: ISS.into(),
                            sub: sub.clone(),
                            sid: sid.clone(),
                            name: None,
                            email: None,
                        };
                        (Login::Oidc { identity, grant }, Some(sub), sid, Some(tokens))
                    }
                };
                self.sessions.insert(
                    id.key(),
                    MSession {
                        user: *user,
                        sub,
                        sid,
                        last_used: now,
                        absolute: now.saturating_add(ms(self.policy.absolute_lifetime)),
                        end: None,
                        tokens,
                        generation: 0,
                        lease: None,
                        failures: 0,
                        retry_at: None,
                        version: 1,
                    },
                );
                fx.writes.push(Write::Put { key: id.key(), version: 1, durability: Durability::Durable });
                self.ids.push(id.clone());
                cookies = Cookies::Set { max_age_ms: ms(self.policy.absolute_lifetime).min(COOKIE_AGE_CAP_MS) };
                let new = NewSession { id, user: user_id(*user), login, device: Device::default() };
                (Some(Command::Create { new, supersedes }), Obs::Created(true))
            }
            Op::Authenticate { target, unsafe_method, proof } => {
                let method = if *unsafe_method { Method::Unsafe } else { Method::Safe };
                let (cookie, csrf_proof) = match target {
                    Target::NoCookie => (None, None),
                    Target::Garbage => (Some(GARBAGE_COOKIE.to_owned()), None),
                    Target::Session(i) => {
                        let id = self.id(*i);
                        let proof = match proof {
                            Proof::Own => Some(bff_session_core::csrf::proof_for(&id)),
                            Proof::Missing => None,
                            Proof::Foreign(j) => Some(bff_session_core::csrf::proof_for(&self.id(*j))),
                            Proof::Forged(s) => Some(s.clone()),
                        };
                        (Some(id.encode()), proof)
                    }
                };
                let result = match target {
                    Target::NoCookie => Err(Refusal::NoCookie),
                    Target::Garbage => Err(Refusal::Malformed(SessionIdError::Length { found: GARBAGE_COOKIE.len() })),
                    Target::Session(i) => {
                        let id = self.id(*i);
                        let csrf_ok = match (unsafe_method, proof) {
                            (false, _) | (true, Proof::Own) => Ok(()),
                            (true, Proof::Missing) => Err(CsrfError::Missing),
                            (true, Proof::Foreign(j)) => {
                                if self.id(*j) == id {
                                    Ok(())
                                } else {
                                    Err(CsrfError::Mismatch)
                                }
                            }
                            (true, Proof::Forged(_)) => Err(CsrfError::Mismatch),
                        };
                        match csrf_ok {
                            Err(e) => Err(Refusal::Csrf(e)),
                            Ok(()) => self.live(id.key(), fx).map(|()| {
                                let s = &self.sessions[&id.key()];
                                AuthObs {
                                    touch_due: now >= s.last_used.saturating_add(ms(self.policy.touch_interval)),
                                    refresh_due: self
                                        .refresh_from(s, self.policy.refresh_margin)
                                        .is_some_and(|f| now >= f),
                                    absolute: s.absolute,
                                    idle: self.policy.idle_timeout.map(|i| s.last_used.saturating_add(ms(i))),
                                }
                            }),
                        }
                    }
                };
                if matches!(result, Err(r) if !matches!(r, Refusal::NoCookie | Refusal::Csrf(_))) {
                    cookies = Cookies::Cleared;
                }
                (Some(Command::Authenticate { cookie, method, csrf_proof }), Obs::Auth(result))
            }
            Op::Touch(i) => {
                let key = self.id(*i).key();
                let result = self.live(key, fx).map(|()| {
                    let interval = ms(self.policy.touch_interval);
                    let s = self.sessions.get_mut(&key).unwrap();
                    let due = now >= s.last_used.saturating_add(interval);
                    if due {
                        s.last_used = now;
                    }
                    due
                });
                if result == Ok(true) {
                    self.write(key, Durability::Lazy, fx);
                }
                (Some(Command::Touch { key }), Obs::Touch(result))
            }
            Op::BeginRefresh(i, trigger) => {
                let key = self.id(*i).key();
                let result = self.begin(key, *trigger, fx);
                (Some(Command::BeginRefresh { key, trigger: *trigger }), Obs::Begin(result))
            }
            Op::RenewLease(i) => {
                if self.tickets.is_empty() {
                    (None, Obs::None)
                } else {
                    let ticket = self.tickets[i.of(self.tickets.len())].clone();
                    let result = self.renew(&ticket, fx);
                    (Some(Command::RenewLease { ticket }), Obs::Renew(result))
                }
            }
            Op::CompleteRefresh(i, result_op) => {
                if self.tickets.is_empty() {
                    (None, Obs::None)
                } else {
                    let ticket = self.tickets[i.of(self.tickets.len())].clone();
                    let result = match result_op {
                        ResultOp::Success { expires_in, rotate, refresh_expires_in } => {
                            RefreshResult::Success(TokenGrant {
                                access_token: Secret::new(self.next_token("at")),
                                expires_in: expires_in.map(Duration::from_millis),
                                refresh_token: rotate.then(|| Secret::new(self.next_token("rt"))),
                                refresh_expires_in: refresh_expires_in.map(Duration::from_millis),
                                id_token: None,
                            })
                        }
                        ResultOp::InvalidGrant => RefreshResult::InvalidGrant,
                        ResultOp::Transient => RefreshResult::Transient,
                    };
                    let completion = self.complete(&ticket, &result, fx);
                    (Some(Command::CompleteRefresh { ticket, result }), Obs::Complete(completion))
                }
            }
            Op::Revoke(i, reason) => {
                let key = self.id(*i).key();
                let result = self.revoke(key, *reason, fx);
                if result.is_ok() && matches!(reason, RevocationReason::Logout | RevocationReason::LogoutEverywhere) {
                    cookies = Cookies::Cleared;
                }
                (Some(Command::Revoke { key, reason: *reason }), Obs::Revoke(result))
            }
            Op::RevokeUser(u, reason) => {
                let ended = self.revoke_where(*reason, |s| s.user == *u, fx);
                if matches!(reason, RevocationReason::Logout | RevocationReason::LogoutEverywhere) {
                    cookies = Cookies::Cleared;
                }
                (Some(Command::RevokeUser { user: user_id(*u), reason: *reason }), Obs::Many(ended))
            }
            Op::RevokeHandle(u, i, from) => {
                let id = self.id(*i);
                let requester = self.id(*from).key();
                let mine = self.sessions.get(&id.key()).is_some_and(|s| s.user == *u && s.end.is_none());
                let result = if mine {
                    self.revoke(id.key(), RevocationReason::RevokedFromDevice, fx)
                } else {
                    Err(Refusal::Unknown)
                };
                // Ending the very session that asks signs this browser out.
                if result.is_ok() && id.key() == requester {
                    cookies = Cookies::Cleared;
                }
                (Some(Command::RevokeHandle { user: user_id(*u), handle: id.handle(), requester }), Obs::Revoke(result))
            }
            Op::RevokeBySid(n) => {
                let sid = format!("sid{n}");
                let ended =
                    self.revoke_where(RevocationReason::BackchannelLogout, |s| s.sid.as_deref() == Some(&*sid), fx);
                (Some(Command::RevokeBySid { iss: ISS.into(), sid }), Obs::Many(ended))
            }
            Op::RevokeBySub(u) => {
                let sub = format!("sub{u}");
                let ended =
                    self.revoke_where(RevocationReason::BackchannelLogout, |s| s.sub.as_deref() == Some(&*sub), fx);
                (Some(Command::RevokeBySub { iss: ISS.into(), sub }), Obs::Many(ended))
            }
            Op::Tick => {
                let (mut expired, mut deleted, mut refresh_due) = (Vec::new(), Vec::new(), Vec::new());
                let retention = ms(self.policy.tombstone_retention);
                let keys: Vec<SessionKey> = self.sessions.keys().copied().collect();
                for key in keys {
                    let s = &self.sessions[&key];
                    if let Some((at, _)) = s.end {
                        if now >= at.saturating_add(retention) {
                            self.sessions.remove(&key);
                            fx.writes.push(Write::Delete { key });
                            deleted.push(key);
                        }
                        continue;
                    }
                    if let Err(Refusal::Expired(reason)) = self.live(key, fx) {
                        expired.push((key, reason));
                    } else if self.background_due(&self.sessions[&key]) {
                        refresh_due.push(key);
                    }
                }
                (Some(Command::Tick), Obs::Tick { expired, deleted, refresh_due })
            }
        };
        fx.revoked.sort();
        fx.writes.sort();
        let Fx { revoked, writes } = std::mem::take(fx);
        self.last = Some((command, Expect { obs, revoked_at_provider: revoked, cookies, writes }));
    }

    fn background_due(&self, s: &MSession) -> bool {
        let Some(mut at) = self.refresh_from(s, self.policy.background_window) else { return false };
        if let Some((_, until)) = s.lease {
            at = at.max(until);
        }
        if let Some(r) = s.retry_at {
            at = at.max(r);
        }
        self.now >= at && at <= s.last_used.saturating_add(ms(self.policy.background_recent_use))
    }

    fn begin(
        &mut self,
        key: SessionKey,
        trigger: Trigger,
        fx: &mut Fx,
    ) -> Result<(SessionKey, u64, String, u64), RefreshRefusal> {
        self.live(key, fx).map_err(RefreshRefusal::Ended)?;
        let now = self.now;
        let ahead = match trigger {
            Trigger::Request => self.policy.refresh_margin,
            Trigger::Background => self.policy.background_window,
        };
        let lease_ms = ms(self.policy.refresh_lease);
        let from = self.refresh_from(&self.sessions[&key], ahead).ok_or(RefreshRefusal::NoRefreshToken)?;
        let s = self.sessions.get_mut(&key).unwrap();
        if now < from {
            return Err(RefreshRefusal::NotDue);
        }
        if let Some((_, until)) = s.lease.filter(|&(_, until)| now < until) {
            return Err(RefreshRefusal::InFlight { until: Timestamp::from_millis(until) });
        }
        if let Some(until) = s.retry_at.filter(|&r| now < r) {
            return Err(RefreshRefusal::BackingOff { until: Timestamp::from_millis(until) });
        }
        s.generation += 1;
        s.lease = Some((s.generation, now + lease_ms));
        let generation = s.generation;
        let rt = s.tokens.as_ref().and_then(|t| t.refresh_token.clone()).unwrap();
        self.write(key, Durability::Lazy, fx);
        self.tickets.push(RefreshTicket {
            key,
            generation,
            refresh_token: Secret::new(rt.clone()),
            lease_expires_at: Timestamp::from_millis(now + lease_ms),
        });
        Ok((key, generation, rt, now + lease_ms))
    }

    /// A lease is extended only by its own ticket while it is live, to `refresh_lease` from now, and never
    /// shortened; an extension that moves nothing writes nothing.
    fn renew(&mut self, ticket: &RefreshTicket, fx: &mut Fx) -> Result<u64, RefreshRefusal> {
        self.live(ticket.key, fx).map_err(RefreshRefusal::Ended)?;
        let now = self.now;
        let lease_ms = ms(self.policy.refresh_lease);
        let s = self.sessions.get_mut(&ticket.key).unwrap();
        match s.lease {
            Some((generation, until)) if generation == ticket.generation && now < until => {
                let extended = (now + lease_ms).max(until);
                if extended > until {
                    s.lease = Some((generation, extended));
                    self.write(ticket.key, Durability::Lazy, fx);
                }
                Ok(extended)
            }
            _ => Err(RefreshRefusal::NotDue),
        }
    }

    fn complete(&mut self, ticket: &RefreshTicket, result: &RefreshResult, fx: &mut Fx) -> RefreshCompletion {
        let now = self.now;
        let new_rt = match result {
            RefreshResult::Success(g) => g.refresh_token.as_ref().map(|t| t.expose().to_owned()),
            _ => None,
        };
        if self.live(ticket.key, fx).is_err() {
            fx.revoked.extend(new_rt);
            return RefreshCompletion::Discarded;
        }
        let policy = self.policy.clone();
        let s = self.sessions.get_mut(&ticket.key).unwrap();
        if s.lease.map(|(g, _)| g) != Some(ticket.generation) {
            return RefreshCompletion::Stale;
        }
        s.lease = None;
        match result {
            RefreshResult::Success(g) => {
                let old = s.tokens.take().unwrap();
                let expires = now.saturating_add(g.expires_in.map_or(ms(policy.assumed_token_lifetime), ms));
                let (refresh_token, refresh_expires) = match &new_rt {
                    Some(rt) => (Some(rt.clone()), g.refresh_expires_in.map(|d| now.saturating_add(ms(d)))),
                    None => (old.refresh_token, old.refresh_expires),
                };
                s.tokens = Some(MTokens { issued: now, expires, refresh_token, refresh_expires });
                s.failures = 0;
                s.retry_at = None;
                self.write(ticket.key, Durability::Durable, fx);
                RefreshCompletion::Refreshed { access_expires_at: Timestamp::from_millis(expires) }
            }
            RefreshResult::InvalidGrant => {
                self.end(ticket.key, End::Revoked(RevocationReason::RefreshRejected), fx);
                RefreshCompletion::Revoked
            }
            RefreshResult::Transient => {
                s.failures += 1;
                let backoff = (ms(policy.refresh_backoff_base) as u128) << (s.failures - 1).min(64);
                let until = now + backoff.min(ms(policy.refresh_backoff_max) as u128) as u64;
                s.retry_at = Some(until);
                self.write(ticket.key, Durability::Lazy, fx);
                RefreshCompletion::BackingOff { until: Timestamp::from_millis(until) }
            }
        }
    }
}
