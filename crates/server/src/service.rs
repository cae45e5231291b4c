//! The shell around core: load a record, run a core transition, compare-and-swap it back, carry out the
//! effects.
//!
//! Owns the orchestration only: retries on write conflicts, durability before acknowledgement, the
//! in-process side of single-flight refresh (waiters for a ticket in flight), revocation at the provider,
//! and the background refresher and sweeper. Every decision about a session is a call into
//! `bff_session_core::lifecycle`; nothing here inspects deadlines or tokens to decide on its own.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bff_session_core::lifecycle::{self, AuthRequest, Authenticated, NewSession, Refusal, Transition};
use bff_session_core::{
    Durability, Effect, Policy, RefreshCompletion, RefreshRefusal, RefreshResult, RevocationReason, Session, SessionId,
    SessionKey, State, Timestamp, Trigger,
};
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::oidc::{Oidc, RefreshError};
use crate::store::{Store, StoreError};

/// Why the service could not do what was asked. Client mistakes are [`Refusal`]s inside outcomes instead.
#[derive(Debug)]
pub enum ServiceError {
    /// The store failed: fail closed (503), log no one out.
    Store(StoreError),
    /// The OS random source failed.
    Random(String),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => e.fmt(f),
            Self::Random(e) => write!(f, "OS random source failed: {e}"),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// A transition that was carried out: its outcome, its cookie effects, and the record as stored now.
#[derive(Debug)]
pub struct Applied<T> {
    pub outcome: T,
    pub effects: Vec<Effect>,
    pub session: Option<Arc<Session>>,
}

const MAX_ATTEMPTS: usize = 8;

pub struct Service {
    pub policy: Policy,
    pub clock: Clock,
    pub store: Store,
    pub oidc: Oidc,
    pub metrics: Metrics,
    /// The trail of committed transitions, when `--audit-log` names a file.
    pub audit: Option<crate::audit::AuditLog>,
    /// Tickets in flight in this process, so concurrent requests wait for the one refresh.
    inflight: tokio::sync::Mutex<HashMap<SessionKey, watch::Receiver<bool>>>,
    refresh_timeout: Duration,
    /// Set when the server stops; the background tasks end on it.
    stopping: watch::Sender<bool>,
    /// Refresh tokens to revoke at the provider, drained by one worker with bounded concurrency, so a mass
    /// expiry never turns into a burst of provider calls.
    revocations: tokio::sync::mpsc::Sender<bff_session_core::Secret>,
    revocation_queue: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<bff_session_core::Secret>>>,
}

/// Revocations waiting for the provider, at most; beyond that they are dropped and counted.
const REVOCATION_QUEUE: usize = 10_000;
/// Revocation calls in flight at once.
const REVOCATION_CONCURRENCY: usize = 4;

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service").field("store", &self.store).field("oidc", &self.oidc).finish_non_exhaustive()
    }
}

/// A new session ID: 256 bits from the OS random source.
pub fn new_session_id() -> Result<SessionId, ServiceError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ServiceError::Random(e.to_string()))?;
    Ok(SessionId::from_random_bytes(bytes))
}

fn ended_reason(s: &Session) -> Option<(&'static str, &'static str)> {
    match s.state() {
        State::Active => None,
        State::Expired { reason, .. } => Some(("bff_sessions_expired_total", reason.as_str())),
        State::Revoked { reason, .. } => Some(("bff_sessions_revoked_total", reason.as_str())),
    }
}

impl Service {
    pub fn new(policy: Policy, clock: Clock, store: Store, oidc: Oidc, refresh_timeout: Duration) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(REVOCATION_QUEUE);
        Self {
            policy,
            clock,
            store,
            oidc,
            metrics: Metrics::default(),
            audit: None,
            inflight: tokio::sync::Mutex::new(HashMap::new()),
            refresh_timeout,
            stopping: watch::channel(false).0,
            revocations: tx,
            revocation_queue: std::sync::Mutex::new(Some(rx)),
        }
    }

    /// Runs `f` on the record under `key` and stores the result, retrying on concurrent writes. Durable
    /// writes are on disk when this returns.
    pub async fn apply<T>(
        self: &Arc<Self>,
        key: SessionKey,
        f: impl Fn(Option<&mut Session>, Timestamp, &Policy) -> Transition<T>,
    ) -> Result<Applied<T>, ServiceError> {
        self.apply_with(key, f, true).await
    }

    /// [`Service::apply`], leaving the flush of durable writes to the caller when `flush` is false (a sweep
    /// flushes once per pass: nobody waits on an expiry).
    async fn apply_with<T>(
        self: &Arc<Self>,
        key: SessionKey,
        f: impl Fn(Option<&mut Session>, Timestamp, &Policy) -> Transition<T>,
        flush: bool,
    ) -> Result<Applied<T>, ServiceError> {
        for _ in 0..MAX_ATTEMPTS {
            let now = self.clock.now();
            let previous = match self.store.get(&key).await {
                Ok(p) => p,
                Err(StoreError::Corrupt { key, error }) => {
                    warn!(session = %key, %error, "corrupt session record treated as unknown");
                    None
                }
                Err(e) => return Err(e.into()),
            };
            let mut current: Option<Session> = previous.as_deref().cloned();
            let t = f(current.as_mut(), now, &self.policy);
            if let (Some(new), true) =
                (&current, current.as_ref().map(Session::version) != previous.as_deref().map(Session::version))
            {
                match self.store.put(previous.as_deref(), new).await {
                    Ok(()) => {}
                    Err(StoreError::Conflict) => continue,
                    Err(e) => return Err(e.into()),
                }
                if let Some(audit) = &self.audit {
                    audit.record(now, previous.as_deref(), new);
                }
                if previous.as_deref().is_some_and(Session::is_active)
                    && let Some((metric, reason)) = ended_reason(new)
                {
                    self.metrics.inc(metric, "reason", reason);
                    info!(session = %key, reason, "session ended");
                }
            }
            self.carry_out(&t.effects, flush).await?;
            return Ok(Applied { outcome: t.outcome, effects: t.effects, session: current.map(Arc::new) });
        }
        Err(ServiceError::Store(StoreError::Conflict))
    }

    /// The effects that are not the HTTP layer's: durability and revocation at the provider.
    async fn carry_out(self: &Arc<Self>, effects: &[Effect], flush: bool) -> Result<(), ServiceError> {
        if flush && effects.iter().any(|e| matches!(e, Effect::Persist { durability: Durability::Durable, .. })) {
            self.store.flush().await?;
        }
        for effect in effects {
            if let Effect::RevokeAtProvider { token } = effect
                && self.revocations.try_send(token.clone()).is_err()
            {
                self.metrics.inc("bff_provider_revocations_total", "outcome", "dropped");
                warn!("revocation queue full; a refresh token is left to expire at the provider");
            }
        }
        Ok(())
    }

    /// Creates a session (durably) and ends the one the browser presented, if any.
    pub async fn create(
        self: &Arc<Self>,
        new: &NewSession,
        supersedes: Option<SessionKey>,
    ) -> Result<Applied<SessionKey>, ServiceError> {
        if let Some(old) = supersedes {
            self.apply(old, |s, now, p| match s {
                Some(s) => lifecycle::revoke(s, RevocationReason::Superseded, now, p),
                None => Transition { outcome: Err(Refusal::Unknown), effects: Vec::new() },
            })
            .await?;
        }
        let now = self.clock.now();
        let t = lifecycle::create(new, now, &self.policy);
        self.store.put(None, &t.outcome).await?;
        if let Some(audit) = &self.audit {
            audit.record(now, None, &t.outcome);
        }
        self.carry_out(&t.effects, true).await?;
        self.metrics.inc(
            "bff_sessions_created_total",
            "provider",
            if t.outcome.oidc().is_some() { "oidc" } else { "local" },
        );
        info!(session = %t.outcome.key(), "session created");
        Ok(Applied { outcome: t.outcome.key(), effects: t.effects, session: Some(Arc::new(t.outcome)) })
    }

    /// Checks a request's session and records its use when a touch is due.
    pub async fn authenticate(
        self: &Arc<Self>,
        request: &AuthRequest<'_>,
    ) -> Result<Applied<Result<Authenticated, Refusal>>, ServiceError> {
        let id = match lifecycle::admit(request) {
            Ok(id) => id,
            Err(refusal) => {
                let effects = match refusal {
                    Refusal::NoCookie | Refusal::Csrf(_) => Vec::new(),
                    _ => vec![Effect::ClearCookies],
                };
                return Ok(Applied { outcome: Err(refusal), effects, session: None });
            }
        };
        let key = id.key();
        // Most requests change nothing: read, let core check, and answer without copying or writing.
        if let Ok(Some(session)) = self.store.get(&key).await
            && let Ok(auth) = lifecycle::check(&session, self.clock.now(), &self.policy)
            && !auth.touch_due
        {
            return Ok(Applied { outcome: Ok(auth), effects: Vec::new(), session: Some(session) });
        }
        let mut applied = self.apply(key, lifecycle::authenticate).await?;
        if let Ok(auth) = &applied.outcome
            && auth.touch_due
        {
            match self
                .apply(key, |s, now, p| match s {
                    Some(s) => lifecycle::touch(s, now, p),
                    None => Transition { outcome: Err(Refusal::Unknown), effects: Vec::new() },
                })
                .await
            {
                Ok(touched) => applied.session = touched.session,
                // A lost touch costs idle-deadline accuracy, not the request.
                Err(e) => warn!(session = %key, error = %e, "touch not recorded"),
            }
        }
        Ok(applied)
    }

    /// Makes sure the session's access token is fresh, refreshing it at most once across concurrent callers.
    /// Returns the record to use, or the refusal if the session is not usable.
    pub async fn ensure_fresh(
        self: &Arc<Self>,
        key: SessionKey,
        trigger: Trigger,
    ) -> Result<Result<Arc<Session>, Refusal>, ServiceError> {
        let deadline = tokio::time::Instant::now() + self.refresh_timeout + Duration::from_secs(5);
        loop {
            let mut inflight = self.inflight.lock().await;
            if let Some(rx) = inflight.get(&key).cloned() {
                drop(inflight);
                wait_for(rx, deadline).await;
            } else {
                let begun = self.apply(key, |s, now, p| match s {
                    Some(s) => lifecycle::begin_refresh(s, trigger, now, p),
                    None => Transition { outcome: Err(RefreshRefusal::Ended(Refusal::Unknown)), effects: Vec::new() },
                });
                let begun = match begun.await {
                    Ok(b) => b,
                    Err(e) => {
                        drop(inflight);
                        return Err(e);
                    }
                };
                match begun.outcome {
                    Ok(ticket) => {
                        let (tx, rx) = watch::channel(false);
                        inflight.insert(key, rx.clone());
                        drop(inflight);
                        // The provider call runs on its own task: a client that disconnects does not cancel
                        // it, and the rotated refresh token is never lost.
                        let service = self.clone();
                        tokio::spawn(async move {
                            service.run_refresh(ticket).await;
                            service.inflight.lock().await.remove(&key);
                            let _ = tx.send(true);
                        });
                        wait_for(rx, deadline).await;
                    }
                    Err(RefreshRefusal::Ended(refusal)) => return Ok(Err(refusal)),
                    Err(RefreshRefusal::InFlight { .. }) => {
                        // Another process holds the lease: poll until it completes or lapses.
                        drop(inflight);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => {
                        drop(inflight);
                        return Ok(begun.session.ok_or(Refusal::Unknown));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let current = self.store.get(&key).await?;
                return Ok(current.ok_or(Refusal::Unknown));
            }
        }
    }

    async fn run_refresh(self: &Arc<Self>, ticket: bff_session_core::RefreshTicket) {
        let result = match self.call_provider_keeping_lease(&ticket).await {
            Ok(Ok(grant)) => RefreshResult::Success(grant),
            Ok(Err(RefreshError::InvalidGrant)) => RefreshResult::InvalidGrant,
            Ok(Err(RefreshError::Transient(e))) => {
                warn!(session = %ticket.key, error = %e, "refresh failed transiently");
                RefreshResult::Transient
            }
            Err(_) => {
                warn!(session = %ticket.key, "refresh timed out");
                RefreshResult::Transient
            }
        };
        let label = match &result {
            RefreshResult::Success(_) => "success",
            RefreshResult::InvalidGrant => "invalid_grant",
            RefreshResult::Transient => "transient",
        };
        self.metrics.inc("bff_refreshes_total", "outcome", label);
        // Storing rotated tokens must not be lost to a passing store fault.
        for attempt in 0..5u32 {
            let completed = self
                .apply(ticket.key, |s, now, p| lifecycle::complete_refresh(s, &ticket, result.clone(), now, p))
                .await;
            match completed {
                Ok(done) => {
                    if done.outcome == RefreshCompletion::Stale {
                        warn!(session = %ticket.key, "stale refresh completion ignored");
                    }
                    return;
                }
                Err(e) => {
                    warn!(session = %ticket.key, error = %e, attempt, "cannot store refresh result; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
    }

    /// The provider call of a ticket, with its time limit. While the call runs the lease is renewed, so a
    /// slow provider cannot let the lease lapse and a second ticket (on another replica) present the same
    /// refresh token.
    async fn call_provider_keeping_lease(
        self: &Arc<Self>,
        ticket: &bff_session_core::RefreshTicket,
    ) -> Result<Result<bff_session_core::TokenGrant, RefreshError>, tokio::time::error::Elapsed> {
        let every = (self.policy.refresh_lease / 4).min(self.refresh_timeout / 2).max(Duration::from_millis(100));
        let call = tokio::time::timeout(self.refresh_timeout, self.oidc.refresh(&ticket.refresh_token));
        tokio::pin!(call);
        loop {
            tokio::select! {
                result = &mut call => return result,
                () = tokio::time::sleep(every) => {
                    let renewed = self
                        .apply(ticket.key, |s, now, p| match s {
                            Some(s) => lifecycle::renew_lease(s, ticket, now, p),
                            None => Transition {
                                outcome: Err(RefreshRefusal::Ended(Refusal::Unknown)),
                                effects: Vec::new(),
                            },
                        })
                        .await;
                    match renewed.map(|a| a.outcome) {
                        Ok(Ok(_)) => {}
                        Ok(Err(refusal)) => warn!(session = %ticket.key, %refusal, "refresh lease not renewed"),
                        Err(e) => warn!(session = %ticket.key, error = %e, "refresh lease not renewed"),
                    }
                }
            }
        }
    }

    /// Ends one session.
    pub async fn revoke(
        self: &Arc<Self>,
        key: SessionKey,
        reason: RevocationReason,
    ) -> Result<Applied<Result<(), Refusal>>, ServiceError> {
        self.apply(key, |s, now, p| match s {
            Some(s) => lifecycle::revoke(s, reason, now, p),
            None => Transition { outcome: Err(Refusal::Unknown), effects: Vec::new() },
        })
        .await
    }

    /// Ends every session in `keys`; returns how many it ended.
    pub async fn revoke_all(
        self: &Arc<Self>,
        keys: Vec<SessionKey>,
        reason: RevocationReason,
    ) -> Result<usize, ServiceError> {
        let mut ended = 0;
        for key in keys {
            if self.revoke(key, reason).await?.outcome.is_ok() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// The user's active sessions.
    pub async fn sessions_of(&self, user: &str) -> Result<Vec<Arc<Session>>, ServiceError> {
        let mut out = Vec::new();
        for key in self.store.keys_of_user(user).await? {
            match self.store.get(&key).await {
                Ok(Some(s)) if s.is_active() => out.push(s),
                Ok(_) => {}
                Err(StoreError::Corrupt { key, error }) => warn!(session = %key, %error, "corrupt record skipped"),
                Err(e) => return Err(e.into()),
            }
        }
        out.sort_by_key(|s| s.created_at());
        Ok(out)
    }

    /// One background pass over the sessions whose scheduled event has come, each read once: the sweeper's
    /// work (expire sessions past a deadline, delete tombstones past retention, drop corrupt records) and the
    /// refresher's (refresh recently used sessions whose tokens are due, at most `concurrency` at a time).
    /// Handles at most 10,000 due records per pass; returns how many it acted on.
    pub async fn tick(self: &Arc<Self>, concurrency: usize) -> Result<usize, ServiceError> {
        let now = self.clock.now();
        let limit = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut refreshes = Vec::new();
        let mut done = 0;
        let due = self.store.due(now, 10_000).await?;
        for &key in &due {
            match self.store.get(&key).await {
                Ok(Some(s)) if s.delete_at(&self.policy).is_some_and(|at| now >= at) => {
                    match self.store.delete(&s).await {
                        Ok(()) | Err(StoreError::Conflict) => done += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(Some(s)) if s.is_active() && s.expired_at(now, &self.policy).is_some() => {
                    let expire = |s: Option<&mut Session>, now, p: &Policy| match s {
                        Some(s) => lifecycle::expire_if_due(s, now, p),
                        None => Transition { outcome: None, effects: Vec::new() },
                    };
                    self.apply_with(key, expire, false).await?;
                    done += 1;
                }
                Ok(Some(s)) if s.background_refresh_due(now, &self.policy) => {
                    let Ok(permit) = limit.clone().acquire_owned().await else { break };
                    let service = self.clone();
                    refreshes.push(tokio::spawn(async move {
                        let _permit = permit;
                        service.ensure_fresh(key, Trigger::Background).await
                    }));
                    done += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) => self.store.unschedule(now, &key).await?,
                Err(StoreError::Corrupt { key, error }) => {
                    warn!(session = %key, %error, "deleting corrupt session record");
                    self.store.purge_corrupt(&key).await?;
                    self.store.unschedule(now, &key).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.sweep_logins(now).await;
        // No flush: nobody waits on an expiry, and one lost in a crash is redone by its deadline. sled
        // flushes on its own every half second. Refreshes store their tokens durably themselves.
        for r in refreshes {
            let _ = r.await;
        }
        // Whatever this pass did not write goes back to the pool for the next pass of any replica.
        self.store.release(&due).await?;
        Ok(done)
    }

    async fn sweep_logins(&self, now: Timestamp) {
        let now_ms = now.as_millis();
        let expired = |v: &[u8]| crate::login::PendingLogin::decode(v).is_none_or(|p| p.expires_ms <= now_ms);
        if let Err(e) = self.store.sweep_logins(now_ms, expired).await {
            warn!(error = %e, "expired pending logins not swept");
        }
    }

    /// Runs the background pass (refresher and sweeper) and the revocation worker until
    /// [`Service::stop_background`].
    pub fn spawn_background(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![self.every("background", |s| async move { s.tick(8).await })];
        let queue = self.revocation_queue.lock().ok().and_then(|mut q| q.take());
        if let Some(queue) = queue {
            tasks.push(self.revoke_worker(queue));
        }
        tasks
    }

    /// Revokes queued refresh tokens at the provider, a few at a time, until the service stops (then drains).
    fn revoke_worker(
        self: &Arc<Self>,
        mut queue: tokio::sync::mpsc::Receiver<bff_session_core::Secret>,
    ) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        let mut stop = self.stopping.subscribe();
        tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(REVOCATION_CONCURRENCY));
            loop {
                let next = tokio::select! {
                    t = queue.recv() => Some(t),
                    _ = stop.wait_for(|s| *s) => None,
                };
                let token = match next {
                    Some(t) => t,
                    // Stopping: take no more, but finish what was queued.
                    None => {
                        queue.close();
                        queue.recv().await
                    }
                };
                let Some(token) = token else { return };
                let Ok(permit) = limit.clone().acquire_owned().await else { return };
                let s = service.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match s.oidc.revoke(&token).await {
                        Ok(()) => s.metrics.inc("bff_provider_revocations_total", "outcome", "ok"),
                        Err(e) => {
                            s.metrics.inc("bff_provider_revocations_total", "outcome", "failed");
                            warn!(error = %e, "refresh token revocation at the provider failed");
                        }
                    }
                });
            }
        })
    }

    fn every<F, Fut>(self: &Arc<Self>, what: &'static str, pass: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<usize, ServiceError>> + Send,
    {
        let service = self.clone();
        let mut stop = self.stopping.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(jittered(service.policy.background_interval)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                // A frozen test clock means a harness decides when passes run (POST /__test/tick).
                if service.clock.is_frozen() {
                    continue;
                }
                if let Err(e) = pass(service.clone()).await {
                    warn!(error = %e, "{what} pass failed");
                }
            }
        })
    }

    /// Ends the background tasks after their current pass.
    pub fn stop_background(&self) {
        let _ = self.stopping.send(true);
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>, deadline: tokio::time::Instant) {
    let _ = tokio::time::timeout_at(deadline, rx.wait_for(|done| *done)).await;
}

/// `d` give or take 10%, so replicas and restarts do not beat in step.
fn jittered(d: Duration) -> Duration {
    use rand::RngExt as _;
    let tenth = (d.as_millis() / 10) as u64;
    let jitter = if tenth == 0 { 0 } else { rand::rng().random_range(0..=2 * tenth) };
    (d + Duration::from_millis(jitter)).saturating_sub(Duration::from_millis(tenth))
}
