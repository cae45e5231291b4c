//! The transitions of one session record.
//!
//! Owns every rule of a session's life: how it is created, admitted, touched, refreshed, expired and
//! revoked. Each function takes the record, `now` and the policy, changes the record in place and returns an
//! outcome plus the [`Effect`]s for the shell. It never looks at other sessions (that is `registry`) and never
//! reads a clock.
//!
//! ```text
//!              create
//!                │
//!                ▼            authenticate / touch / refresh
//!          ┌──────────┐ ◀──────────────────────────────┐
//!          │  Active  │ ───────────────────────────────┘
//!          └──────────┘
//!     deadline │    │ revoke, invalid_grant,
//!       passed │    │ back-channel logout, superseded
//!              ▼    ▼
//!      ┌─────────┐ ┌─────────┐
//!      │ Expired │ │ Revoked │   terminal: tombstones that absorb every later command,
//!      └─────────┘ └─────────┘   deleted by `tick` after the retention period
//! ```

use crate::csrf;
use crate::effect::{Durability, Effect};
use crate::id::{SessionId, SessionKey};
use crate::policy::Policy;
use crate::refresh::{
    Lease, RefreshCompletion, RefreshRefusal, RefreshResult, RefreshState, RefreshTicket, TokenGrant, Trigger,
};
use crate::session::{Device, ExpiryReason, OidcIdentity, Provider, RevocationReason, Session, State, Tokens, UserId};
use crate::time::Timestamp;

pub use crate::refusal::Refusal;

/// An outcome and the effects that go with it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Transition<T> {
    pub outcome: T,
    pub effects: Vec<Effect>,
}

impl<T> Transition<T> {
    pub(crate) fn new(outcome: T, effects: Vec<Effect>) -> Self {
        Self { outcome, effects }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Transition<U> {
        Transition { outcome: f(self.outcome), effects: self.effects }
    }
}

/// Whether a request can change state on the server (anything but GET, HEAD, OPTIONS, TRACE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Method {
    Safe,
    Unsafe,
}

impl Method {
    /// Classifies an HTTP method name; anything unknown is unsafe.
    pub fn classify(name: &str) -> Self {
        match name {
            "GET" | "HEAD" | "OPTIONS" | "TRACE" => Self::Safe,
            _ => Self::Unsafe,
        }
    }
}

/// What a request presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthRequest<'a> {
    /// The session cookie's value, already picked out of the `Cookie` header by [`crate::cookie::find`].
    pub cookie: Option<&'a str>,
    pub method: Method,
    /// The CSRF header's value.
    pub csrf_proof: Option<&'a str>,
}

/// A request that carries a live session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub key: SessionKey,
    /// The record's version when it was checked.
    pub version: u64,
    /// Record this use with [`touch`].
    pub touch_due: bool,
    /// Refresh the access token before using it ([`begin_refresh`] with [`Trigger::Request`]).
    pub refresh_due: bool,
    pub absolute_deadline: Timestamp,
    pub idle_deadline: Option<Timestamp>,
}

/// How the user signed in.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "built once per login and moved into the record; a box buys nothing")]
pub enum Login {
    Local,
    Oidc { identity: OidcIdentity, grant: TokenGrant },
}

/// Everything needed to create a session. The caller draws `id` from the OS CSPRNG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession {
    pub id: SessionId,
    pub user: UserId,
    pub login: Login,
    pub device: Device,
}

/// Picks the session ID out of a request and, for unsafe methods, checks the CSRF proof. This needs no
/// record, so a refused request costs no lookup; its only possible effect is clearing a cookie that can
/// never name a session ([`Refusal::clears_cookies`]).
pub fn admit(request: &AuthRequest<'_>) -> Transition<Result<SessionId, Refusal>> {
    let outcome = (|| -> Result<SessionId, Refusal> {
        let cookie = request.cookie.ok_or(Refusal::NoCookie)?;
        let id = SessionId::decode(cookie).map_err(Refusal::Malformed)?;
        if request.method == Method::Unsafe {
            csrf::verify(&id, request.csrf_proof).map_err(Refusal::Csrf)?;
        }
        Ok(id)
    })();
    let effects = match outcome {
        Err(refusal) if refusal.clears_cookies() => vec![Effect::ClearCookies],
        _ => Vec::new(),
    };
    Transition::new(outcome, effects)
}

/// A new active session.
pub fn create(new: &NewSession, now: Timestamp, policy: &Policy) -> Transition<Session> {
    let (provider, tokens) = match &new.login {
        Login::Local => (Provider::Local, None),
        Login::Oidc { identity, grant } => {
            (Provider::Oidc(identity.clone()), Some(tokens_from_grant(grant, None, now, policy)))
        }
    };
    let session = Session {
        key: new.id.key(),
        handle: new.id.handle(),
        user: new.user.clone(),
        provider,
        device: new.device.clone(),
        created_at: now,
        last_used_at: now,
        absolute_deadline: now.saturating_add(policy.absolute_lifetime),
        state: State::Active,
        refresh: RefreshState::default(),
        version: 1,
        tokens,
    };
    let effects = vec![
        Effect::persist(session.key, 1, Durability::Durable),
        Effect::SetCookies { key: session.key, max_age: session.cookie_max_age(now) },
    ];
    Transition::new(session, effects)
}

/// What [`authenticate`] would answer, without changing anything: for shells that read a record and only
/// need to write when something changes. `Err(Refusal::Expired(_))` on an active session means
/// [`authenticate`] would expire it now.
pub fn check(s: &Session, now: Timestamp, policy: &Policy) -> Result<Authenticated, Refusal> {
    match s.state {
        State::Expired { reason, .. } => Err(Refusal::Expired(reason)),
        State::Revoked { reason, .. } => Err(Refusal::Revoked(reason)),
        State::Active => match s.expired_at(now, policy) {
            Some(reason) => Err(Refusal::Expired(reason)),
            None => Ok(Authenticated {
                key: s.key,
                version: s.version,
                touch_due: s.touch_due(now, policy),
                refresh_due: s.refresh_due(now, policy),
                absolute_deadline: s.absolute_deadline,
                idle_deadline: s.idle_deadline(policy),
            }),
        },
    }
}

/// Runs `f` on the record, or answers `missing` with no effect when there is none: the one shape every
/// transition of an existing record has for a key that names nothing.
fn on_record<T>(
    session: Option<&mut Session>,
    missing: T,
    f: impl FnOnce(&mut Session, &mut Vec<Effect>) -> T,
) -> Transition<T> {
    let mut effects = Vec::new();
    let outcome = match session {
        Some(s) => f(s, &mut effects),
        None => missing,
    };
    Transition::new(outcome, effects)
}

/// Checks an admitted request's session. A session found past a deadline expires here and then.
pub fn authenticate(
    session: Option<&mut Session>,
    now: Timestamp,
    policy: &Policy,
) -> Transition<Result<Authenticated, Refusal>> {
    let mut t = on_record(session, Err(Refusal::Unknown), |s, effects| {
        let outcome = check(s, now, policy);
        if matches!(outcome, Err(Refusal::Expired(_))) {
            // The same deadline check, now with its effect: the session ends as expired (a record that had
            // already ended is left as it was).
            let _ = ensure_live(s, now, policy, effects);
        }
        outcome
    });
    if t.outcome.is_err_and(Refusal::clears_cookies) {
        t.effects.push(Effect::ClearCookies);
    }
    t
}

/// Records a use of the session, at most once per touch interval. Slides the idle deadline only.
/// `Ok(false)`: not due, nothing written.
pub fn touch(session: Option<&mut Session>, now: Timestamp, policy: &Policy) -> Transition<Result<bool, Refusal>> {
    on_record(session, Err(Refusal::Unknown), |s, effects| {
        ensure_live(s, now, policy, effects).map(|()| {
            if !s.touch_due(now, policy) {
                return false;
            }
            s.last_used_at = now;
            bump(s, Durability::Lazy, effects);
            true
        })
    })
}

/// Issues the session's one refresh ticket, if a refresh is due and none is live.
pub fn begin_refresh(
    session: Option<&mut Session>,
    trigger: Trigger,
    now: Timestamp,
    policy: &Policy,
) -> Transition<Result<RefreshTicket, RefreshRefusal>> {
    on_record(session, Err(RefreshRefusal::Ended(Refusal::Unknown)), |s, effects| {
        begin(s, trigger, now, policy, effects)
    })
}

fn begin(
    s: &mut Session,
    trigger: Trigger,
    now: Timestamp,
    policy: &Policy,
    effects: &mut Vec<Effect>,
) -> Result<RefreshTicket, RefreshRefusal> {
    ensure_live(s, now, policy, effects).map_err(RefreshRefusal::Ended)?;
    let ahead = match trigger {
        Trigger::Request => policy.refresh_margin,
        Trigger::Background => policy.background_window,
    };
    let from = s.refresh_from(ahead, policy).ok_or(RefreshRefusal::NoRefreshToken)?;
    if now < from {
        return Err(RefreshRefusal::NotDue);
    }
    if let Some(lease) = s.refresh.live_lease(now) {
        return Err(RefreshRefusal::InFlight { until: lease.expires_at });
    }
    if let Some(until) = s.refresh.retry_at.filter(|&until| now < until) {
        return Err(RefreshRefusal::BackingOff { until });
    }
    let refresh_token =
        s.tokens.as_ref().and_then(|t| t.refresh_token.clone()).ok_or(RefreshRefusal::NoRefreshToken)?;
    let generation = s.refresh.generation + 1;
    let expires_at = now.saturating_add(policy.refresh_lease);
    s.refresh.generation = generation;
    s.refresh.lease = Some(Lease { generation, expires_at });
    bump(s, Durability::Lazy, effects);
    Ok(RefreshTicket { key: s.key, generation, refresh_token, lease_expires_at: expires_at })
}

/// Extends a live lease while its provider call is still running, so a slow provider cannot let a second
/// ticket be issued for the same refresh token. `Err(NotDue)` when the ticket is no longer the session's
/// live one (it lapsed, was superseded or completed): its holder must not count on the lease any more.
pub fn renew_lease(
    session: Option<&mut Session>,
    ticket: &RefreshTicket,
    now: Timestamp,
    policy: &Policy,
) -> Transition<Result<Timestamp, RefreshRefusal>> {
    on_record(session, Err(RefreshRefusal::Ended(Refusal::Unknown)), |s, effects| {
        ensure_live(s, now, policy, effects).map_err(RefreshRefusal::Ended)?;
        match s.refresh.live_lease(now) {
            Some(lease) if lease.generation == ticket.generation && s.key == ticket.key => {
                let expires_at = now.saturating_add(policy.refresh_lease).max(lease.expires_at);
                // A renewal that moves nothing writes nothing.
                if expires_at > lease.expires_at {
                    s.refresh.lease = Some(Lease { generation: lease.generation, expires_at });
                    bump(s, Durability::Lazy, effects);
                }
                Ok(expires_at)
            }
            _ => Err(RefreshRefusal::NotDue),
        }
    })
}

/// Hands back a ticket with the provider's answer. `session` is `None` when the record is gone.
pub fn complete_refresh(
    session: Option<&mut Session>,
    ticket: &RefreshTicket,
    result: RefreshResult,
    now: Timestamp,
    policy: &Policy,
) -> Transition<RefreshCompletion> {
    let mut effects = Vec::new();
    let outcome = complete(session, ticket, result, now, policy, &mut effects);
    Transition::new(outcome, effects)
}

fn complete(
    session: Option<&mut Session>,
    ticket: &RefreshTicket,
    result: RefreshResult,
    now: Timestamp,
    policy: &Policy,
    effects: &mut Vec<Effect>,
) -> RefreshCompletion {
    // New tokens for a session that no longer exists must not outlive it at the provider.
    let discard = |result: RefreshResult, effects: &mut Vec<Effect>| {
        if let RefreshResult::Success(TokenGrant { refresh_token: Some(token), .. }) = result {
            effects.push(Effect::RevokeAtProvider { token });
        }
        RefreshCompletion::Discarded
    };
    let Some(s) = session.filter(|s| s.key == ticket.key) else {
        return discard(result, effects);
    };
    if ensure_live(s, now, policy, effects).is_err() {
        return discard(result, effects);
    }
    // Fencing: only the last ticket issued may complete, and only once. A superseded ticket's new tokens are
    // left alone rather than revoked: revoking one refresh token may end the whole grant at the provider.
    if s.refresh.lease.is_none_or(|lease| lease.generation != ticket.generation) {
        return RefreshCompletion::Stale;
    }
    s.refresh.lease = None;
    match result {
        RefreshResult::Success(grant) => {
            s.tokens = Some(tokens_from_grant(&grant, s.tokens.take(), now, policy));
            s.refresh.failures = 0;
            s.refresh.retry_at = None;
            bump(s, Durability::Durable, effects);
            let access_expires_at = s.tokens.as_ref().map_or(now, |t| t.access_expires_at);
            RefreshCompletion::Refreshed { access_expires_at }
        }
        RefreshResult::InvalidGrant => {
            end(s, State::Revoked { at: now, reason: RevocationReason::RefreshRejected }, effects);
            RefreshCompletion::Revoked
        }
        RefreshResult::Transient => {
            s.refresh.failures = s.refresh.failures.saturating_add(1);
            let until = now.saturating_add(policy.backoff(s.refresh.failures));
            s.refresh.retry_at = Some(until);
            bump(s, Durability::Lazy, effects);
            RefreshCompletion::BackingOff { until }
        }
    }
}

/// Ends an active session for `reason`. `Err` carries how it had already ended. A logout also clears the
/// requesting browser's cookies.
pub fn revoke(
    session: Option<&mut Session>,
    reason: RevocationReason,
    now: Timestamp,
    policy: &Policy,
) -> Transition<Result<(), Refusal>> {
    let mut t = end_for(session, reason, now, policy);
    if t.outcome.is_ok() && reason.clears_cookies() {
        t.effects.push(Effect::ClearCookies);
    }
    t
}

/// Ends a session from the device list of the session `requester`. Ending the very session that asks is a
/// logout of this browser, so its cookies are cleared; ending another device's leaves them alone.
pub fn end_from_device(
    session: Option<&mut Session>,
    requester: SessionKey,
    now: Timestamp,
    policy: &Policy,
) -> Transition<Result<(), Refusal>> {
    let own = session.as_ref().is_some_and(|s| s.key == requester);
    let mut t = end_for(session, RevocationReason::RevokedFromDevice, now, policy);
    if t.outcome.is_ok() && own {
        t.effects.push(Effect::ClearCookies);
    }
    t
}

/// Ends an active session for `reason`, without a word about the requester's cookies: the part of a
/// revocation that concerns only the record (one session of a revoke-all, say).
pub(crate) fn end_for(
    session: Option<&mut Session>,
    reason: RevocationReason,
    now: Timestamp,
    policy: &Policy,
) -> Transition<Result<(), Refusal>> {
    on_record(session, Err(Refusal::Unknown), |s, effects| {
        ensure_live(s, now, policy, effects).map(|()| end(s, State::Revoked { at: now, reason }, effects))
    })
}

/// Expires the session if a deadline has passed; `None` if it did not expire now.
pub fn expire_if_due(
    session: Option<&mut Session>,
    now: Timestamp,
    policy: &Policy,
) -> Transition<Option<ExpiryReason>> {
    on_record(session, None, |s, effects| match ensure_live(s, now, policy, effects) {
        Err(Refusal::Expired(reason)) if !effects.is_empty() => Some(reason),
        _ => None,
    })
}

/// `Ok` when the session is active and within its deadlines; otherwise expires it if a deadline just passed
/// and says why it is unusable.
fn ensure_live(s: &mut Session, now: Timestamp, policy: &Policy, effects: &mut Vec<Effect>) -> Result<(), Refusal> {
    match s.state {
        State::Expired { reason, .. } => Err(Refusal::Expired(reason)),
        State::Revoked { reason, .. } => Err(Refusal::Revoked(reason)),
        State::Active => match s.expired_at(now, policy) {
            None => Ok(()),
            Some(reason) => {
                end(s, State::Expired { at: now, reason }, effects);
                Err(Refusal::Expired(reason))
            }
        },
    }
}

/// Moves an active session to a terminal state: the tokens leave the record (a tombstone holds no secret),
/// the refresh token is revoked at the provider where that is still meaningful, and the write is durable.
fn end(s: &mut Session, state: State, effects: &mut Vec<Effect>) {
    let revoke_at_provider = match state {
        State::Revoked { reason, .. } => reason.revokes_at_provider(),
        State::Expired { .. } | State::Active => true,
    };
    s.state = state;
    s.refresh.lease = None;
    s.refresh.retry_at = None;
    let tokens = s.tokens.take();
    bump(s, Durability::Durable, effects);
    if let Some(token) = tokens.and_then(|t| t.refresh_token).filter(|_| revoke_at_provider) {
        effects.push(Effect::RevokeAtProvider { token });
    }
}

fn bump(s: &mut Session, durability: Durability, effects: &mut Vec<Effect>) {
    s.version += 1;
    effects.push(Effect::persist(s.key, s.version, durability));
}

fn tokens_from_grant(grant: &TokenGrant, previous: Option<Tokens>, now: Timestamp, policy: &Policy) -> Tokens {
    let lifetime = grant.expires_in.unwrap_or(policy.assumed_token_lifetime);
    let (previous_refresh, previous_refresh_expiry, previous_id) = match previous {
        Some(t) => (t.refresh_token, t.refresh_expires_at, t.id_token),
        None => (None, None, None),
    };
    // A rotated refresh token brings its own lifetime; a kept one keeps its old one.
    let (refresh_token, refresh_expires_at) = match &grant.refresh_token {
        Some(token) => (Some(token.clone()), grant.refresh_expires_in.map(|d| now.saturating_add(d))),
        None => (previous_refresh, previous_refresh_expiry),
    };
    Tokens {
        access_token: grant.access_token.clone(),
        access_issued_at: now,
        access_expires_at: now.saturating_add(lifetime),
        refresh_token,
        refresh_expires_at,
        id_token: grant.id_token.clone().or(previous_id),
    }
}
