//! The shell around core: load a record, run a core transition, compare-and-swap it back, carry out the
//! effects.
//!
//! Owns the orchestration only: retries on write conflicts, durability before acknowledgement, and the
//! store and provider calls a transition's effects ask for. Its submodules own the refresher (single-flight
//! refresh with a kept lease), the background pass and revocation worker, ending many sessions at once, the
//! device list and pending logins. Every decision about a session is a call into core; nothing here inspects
//! deadlines or tokens to decide on its own, and a record is written or deleted only because an [`Effect`]
//! says so.

mod background;
mod bulk;
mod devices;
mod logins;
mod refresher;
mod revocations;
mod timeline;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bff_session_core::audit::Event;
use bff_session_core::lifecycle::{self, AuthRequest, Authenticated, NewSession, Transition};
use bff_session_core::{
    CreateError, Durability, Effect, LoginPolicy, Policy, Refusal, RevocationReason, Session, SessionId, SessionKey,
    State, Timestamp, UserId,
};
use tokio::sync::watch;
use tracing::{info, warn};

pub use self::logins::Replayed;
pub use self::refresher::Access;
pub use self::revocations::Drained;
pub use self::timeline::{Entry as TimelineEntry, Timeline};
use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::oidc::TokenEndpoint;
use crate::store::{Store, StoreError, Write};

/// Why the service could not do what was asked. Client mistakes are [`Refusal`]s inside outcomes instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceError {
    /// The store failed: fail closed (503), log no one out.
    Store(StoreError),
    /// The OS random source failed.
    Random(getrandom::Error),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => e.fmt(f),
            Self::Random(e) => write!(f, "OS random source failed: {e}"),
        }
    }
}

impl std::error::Error for ServiceError {}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// A transition that was carried out: its outcome, its effects, the record as stored now, and the instant
/// core was given (the one a caller must use for any further question about this record).
#[derive(Debug)]
pub struct Applied<T> {
    pub outcome: T,
    pub effects: Vec<Effect>,
    pub session: Option<Arc<Session>>,
    pub now: Timestamp,
}

impl<T> Applied<T> {
    /// The outcome and effects, as core's registry would answer them.
    pub fn into_transition(self) -> Transition<T> {
        Transition { outcome: self.outcome, effects: self.effects }
    }
}

/// A request core let in: its session ID (decoded once, by [`lifecycle::admit`]), core's verdict and the
/// record it was judged on.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub id: SessionId,
    pub auth: Authenticated,
    pub session: Arc<Session>,
}

const MAX_ATTEMPTS: usize = 8;

pub struct Service {
    pub policy: Policy,
    pub login_policy: LoginPolicy,
    /// Sessions one user may hold at once (`--max-sessions-per-user`); `None`: no limit.
    pub max_sessions_per_user: Option<std::num::NonZeroUsize>,
    pub clock: Clock,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    /// The trail of committed transitions, when `--audit-log` names a file.
    pub audit: Option<AuditLog>,
    /// Each session's recent transitions, for the demo page; `None` outside the demo.
    pub timeline: Option<Timeline>,
    provider: Arc<dyn TokenEndpoint>,
    /// Tickets in flight in this process, so concurrent requests wait for the one refresh.
    inflight: tokio::sync::Mutex<HashMap<SessionKey, watch::Receiver<bool>>>,
    refresh_timeout: Duration,
    /// Set when the server stops; the background tasks end on it.
    stopping: watch::Sender<bool>,
    revocations: revocations::RevocationQueue,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service").field("store", &self.store).field("provider", &self.provider).finish_non_exhaustive()
    }
}

/// 32 bytes from the OS random source.
fn random_bytes() -> Result<[u8; 32], ServiceError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(ServiceError::Random)?;
    Ok(bytes)
}

/// A new session ID: 256 bits from the OS random source.
pub fn new_session_id() -> Result<SessionId, ServiceError> {
    random_bytes().map(SessionId::from_random_bytes)
}

fn ended_reason(s: &Session) -> Option<(&'static str, &'static str)> {
    match s.state() {
        State::Active => None,
        State::Expired { reason, .. } => Some(("bff_sessions_expired_total", reason.as_str())),
        State::Revoked { reason, .. } => Some(("bff_sessions_revoked_total", reason.as_str())),
    }
}

impl Service {
    pub fn new(
        policy: Policy,
        clock: Clock,
        store: Arc<dyn Store>,
        provider: Arc<dyn TokenEndpoint>,
        refresh_timeout: Duration,
    ) -> Self {
        let metrics = Metrics::default();
        Self {
            policy,
            login_policy: LoginPolicy::default(),
            max_sessions_per_user: None,
            clock,
            store: Arc::new(crate::store::Timed::new(store, metrics.store_times())),
            metrics,
            audit: None,
            timeline: None,
            provider,
            inflight: tokio::sync::Mutex::new(HashMap::new()),
            refresh_timeout,
            stopping: watch::channel(false).0,
            revocations: revocations::RevocationQueue::new(revocations::DEFAULT_CAPACITY),
        }
    }

    /// Gives the queue of refresh tokens waiting for revocation `capacity` places (`--revocation-queue`);
    /// before the background starts, as whatever was queued is dropped.
    pub fn limit_revocations(&mut self, capacity: usize) {
        self.revocations = revocations::RevocationQueue::new(capacity);
    }

    /// Runs `f` on the record under `key`, carries out its effects and retries on concurrent writes.
    /// Durable writes are on disk when this returns.
    pub async fn apply<T>(
        self: &Arc<Self>,
        key: SessionKey,
        f: impl Fn(Option<&mut Session>, Timestamp, &Policy) -> Transition<T>,
    ) -> Result<Applied<T>, ServiceError> {
        self.apply_with(key, f, true).await
    }

    /// [`Service::apply`], leaving the flush of durable writes to the caller when `flush` is false (a sweep:
    /// nobody waits on an expiry).
    async fn apply_with<T>(
        self: &Arc<Self>,
        key: SessionKey,
        f: impl Fn(Option<&mut Session>, Timestamp, &Policy) -> Transition<T>,
        flush: bool,
    ) -> Result<Applied<T>, ServiceError> {
        for _ in 0..MAX_ATTEMPTS {
            let now = self.clock.now();
            let previous = self.read(key).await?;
            let mut current: Option<Session> = previous.as_deref().cloned();
            let t = f(current.as_mut(), now, &self.policy);
            match self.write(key, previous.as_deref(), current.as_ref(), &t.effects, now).await {
                Ok(()) => {}
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
            return self.finish(t, previous.as_deref(), current, flush, now).await;
        }
        Err(ServiceError::Store(StoreError::Conflict))
    }

    /// The record under `key` for a transition; one that does not decode is treated as unknown, so the
    /// transition's answer for a missing record (a refusal, or a purge) applies.
    async fn read(&self, key: SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        self.store.get(&key).await.or_else(|e| match e {
            StoreError::Corrupt { key, error } => {
                warn!(session = %key, %error, "corrupt session record treated as unknown");
                Ok(None)
            }
            e => Err(e),
        })
    }

    /// What follows a transition's committed write: its other effects, and the record as it is now.
    async fn finish<T>(
        &self,
        t: Transition<T>,
        previous: Option<&Session>,
        current: Option<Session>,
        flush: bool,
        now: Timestamp,
    ) -> Result<Applied<T>, ServiceError> {
        let user = current.as_ref().or(previous).map(Session::user);
        self.carry_out(&t.effects, flush, user).await?;
        let deleted = t.effects.iter().any(|e| matches!(e, Effect::Delete { .. }));
        let session = if deleted { None } else { current.map(Arc::new) };
        Ok(Applied { outcome: t.outcome, effects: t.effects, session, now })
    }

    /// Carries out the store effects of a transition on the record under `key` ([`Write::of_effects`]).
    async fn write(
        &self,
        key: SessionKey,
        previous: Option<&Session>,
        current: Option<&Session>,
        effects: &[Effect],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let Some(write) = Write::of_effects(key, previous, current, effects, now) else { return Ok(()) };
        write.to(self.store.as_ref()).await?;
        self.committed(&write, now);
        Ok(())
    }

    /// The audit trail and the metrics of a committed write that stored a new version of a record.
    fn committed(&self, write: &Write<'_>, now: Timestamp) {
        let Write::Put { previous, new } = *write else { return };
        let Some(event) = Event::between(previous, new) else { return };
        self.metrics.transition(&event);
        // An event of the request's span when traces are on; debug, so logs do not repeat the audit trail.
        tracing::debug!(event = event.name(), detail = event.detail(), version = new.version(), "transition");
        if let Some(timeline) = &self.timeline {
            timeline.push(new.key(), timeline::Entry::new(now, &event));
        }
        if let Some(audit) = &self.audit {
            audit.record(now, new, event);
        }
        if previous.is_some_and(Session::is_active)
            && let Some((metric, reason)) = ended_reason(new)
        {
            self.metrics.inc(metric, "reason", reason);
            info!(session = %new.key(), reason, "session ended");
        }
    }

    /// The effects that are not the store's or the HTTP layer's: durability and revocation at the provider.
    /// `user` is whose record the effects came from, so the revocation queue can keep users' turns.
    async fn carry_out(&self, effects: &[Effect], flush: bool, user: Option<&UserId>) -> Result<(), ServiceError> {
        if flush && effects.iter().any(|e| matches!(e, Effect::Persist { durability: Durability::Durable, .. })) {
            self.store.flush().await?;
        }
        for effect in effects {
            if let Effect::RevokeAtProvider { token } = effect {
                self.revocations.push(user, token.clone(), &self.metrics);
            }
        }
        Ok(())
    }

    /// Creates a session (durably) and ends the one the browser presented, if any. An ID already stored is
    /// refused before anything changes, as core's registry refuses it.
    pub async fn create(
        self: &Arc<Self>,
        new: &NewSession,
        supersedes: Option<SessionKey>,
    ) -> Result<Applied<Result<SessionKey, CreateError>>, ServiceError> {
        let key = new.id.key();
        let duplicate =
            |now| Applied { outcome: Err(CreateError::DuplicateId), effects: Vec::new(), session: None, now };
        match self.store.get(&key).await {
            Ok(None) => {}
            Ok(Some(_)) | Err(StoreError::Corrupt { .. }) => return Ok(duplicate(self.clock.now())),
            Err(e) => return Err(e.into()),
        }
        let mut effects = Vec::new();
        if let Some(old) = supersedes {
            let ended = self.apply(old, |s, now, p| lifecycle::revoke(s, RevocationReason::Superseded, now, p)).await?;
            effects.extend(ended.effects);
        }
        let now = self.clock.now();
        let t = lifecycle::create(new, now, &self.policy);
        match self.write(key, None, Some(&t.outcome), &t.effects, now).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => return Ok(duplicate(now)),
            Err(e) => return Err(e.into()),
        }
        self.carry_out(&t.effects, true, Some(&new.user)).await?;
        let provider = if t.outcome.oidc().is_some() { "oidc" } else { "local" };
        self.metrics.inc("bff_sessions_created_total", "provider", provider);
        info!(session = %key, "session created");
        effects.extend(t.effects);
        if let Some(max) = self.max_sessions_per_user {
            effects.extend(self.end_over_limit(new.user.clone(), key, max.get()).await?);
        }
        Ok(Applied { outcome: Ok(key), effects, session: Some(Arc::new(t.outcome)), now })
    }

    /// Checks a request's session: core's `admit`, then `authenticate` on the stored record. Records nothing
    /// about the use; see [`Service::authenticate_and_touch`].
    pub async fn authenticate(
        self: &Arc<Self>,
        request: &AuthRequest<'_>,
    ) -> Result<Applied<Result<Admitted, Refusal>>, ServiceError> {
        let admitted = lifecycle::admit(request);
        let id = match admitted.outcome {
            Ok(id) => id,
            Err(refusal) => {
                let now = self.clock.now();
                return Ok(Applied { outcome: Err(refusal), effects: admitted.effects, session: None, now });
            }
        };
        let key = id.key();
        // Most requests change nothing: read, let core check, and answer without copying or writing. Anything
        // else goes through `apply`, which reads the store itself.
        let now = self.clock.now();
        if let Ok(Some(session)) = self.store.get_for_check(&key).await
            && let Ok(auth) = lifecycle::check(&session, now, &self.policy)
        {
            let outcome = Ok(Admitted { id, auth, session: session.clone() });
            return Ok(Applied { outcome, effects: Vec::new(), session: Some(session), now });
        }
        let applied = self.apply(key, lifecycle::authenticate).await?;
        let outcome = match (applied.outcome, &applied.session) {
            (Ok(auth), Some(session)) => Ok(Admitted { id, auth, session: session.clone() }),
            (Ok(_), None) => Err(Refusal::Unknown),
            (Err(refusal), _) => Err(refusal),
        };
        Ok(Applied { outcome, effects: applied.effects, session: applied.session, now: applied.now })
    }

    /// [`Service::authenticate`], then a touch when core says one is due: what every request does.
    pub async fn authenticate_and_touch(
        self: &Arc<Self>,
        request: &AuthRequest<'_>,
    ) -> Result<Applied<Result<Admitted, Refusal>>, ServiceError> {
        let mut applied = self.authenticate(request).await?;
        if let Ok(admitted) = &mut applied.outcome
            && admitted.auth.touch_due
        {
            match self.touch(admitted.auth.key).await {
                Ok(Applied { outcome: Ok(_), session: Some(session), .. }) => admitted.session = session,
                Ok(_) => {}
                // A lost touch costs idle-deadline accuracy, not the request.
                Err(e) => warn!(session = %admitted.auth.key, error = %e, "touch not recorded"),
            }
        }
        Ok(applied)
    }

    /// Records a use of the session when a touch is due.
    pub async fn touch(self: &Arc<Self>, key: SessionKey) -> Result<Applied<Result<bool, Refusal>>, ServiceError> {
        self.apply(key, lifecycle::touch).await
    }

    /// Ends one session.
    pub async fn revoke(
        self: &Arc<Self>,
        key: SessionKey,
        reason: RevocationReason,
    ) -> Result<Applied<Result<(), Refusal>>, ServiceError> {
        self.apply(key, |s, now, p| lifecycle::revoke(s, reason, now, p)).await
    }
}
