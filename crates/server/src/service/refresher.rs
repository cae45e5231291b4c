//! Single-flight refresh: one provider call per session at a time, across tasks and replicas.
//!
//! Owns the in-process side (waiters for a ticket in flight), the provider call on its own task with its
//! time limit, renewing the lease while the call runs, and storing the answer so rotated tokens survive a
//! passing store fault. Across replicas the lease in the record (core's `begin_refresh`) decides who calls;
//! this module never judges whether a refresh is due or a token is live: core does.

use std::sync::Arc;
use std::time::Duration;

use bff_session_core::lifecycle;
use bff_session_core::{
    RefreshCompletion, RefreshRefusal, RefreshResult, RefreshTicket, Refusal, Secret, Session, SessionKey, Trigger,
};
use tokio::sync::watch;
use tracing::warn;

use super::{Admitted, Applied, Service, ServiceError};

/// What a request can send upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// The live access token.
    Token(Secret),
    /// The session was made without a provider: it has no token to send.
    NoTokens,
    /// The refresh failed transiently and the old token has run out: the session stays, the call waits.
    Unavailable,
}

impl Service {
    /// The access token for an admitted request, refreshed first when core said a refresh is due.
    pub async fn access_token(self: &Arc<Self>, admitted: &Admitted) -> Result<Result<Access, Refusal>, ServiceError> {
        let session = if admitted.auth.refresh_due {
            match self.ensure_fresh(admitted.auth.key, Trigger::Request).await? {
                Ok(session) => session,
                Err(refusal) => return Ok(Err(refusal)),
            }
        } else {
            admitted.session.clone()
        };
        if session.tokens().is_none() {
            return Ok(Ok(Access::NoTokens));
        }
        let live = session.live_access_token(self.clock.now()).cloned();
        Ok(Ok(live.map_or(Access::Unavailable, Access::Token)))
    }

    /// Issues the session's refresh ticket if core says a refresh is due and none is live.
    pub async fn begin_refresh(
        self: &Arc<Self>,
        key: SessionKey,
        trigger: Trigger,
    ) -> Result<Applied<Result<RefreshTicket, RefreshRefusal>>, ServiceError> {
        self.apply(key, |s, now, p| lifecycle::begin_refresh(s, trigger, now, p)).await
    }

    /// Extends a ticket's lease while its provider call runs.
    pub async fn renew_lease(
        self: &Arc<Self>,
        ticket: &RefreshTicket,
    ) -> Result<Applied<Result<bff_session_core::Timestamp, RefreshRefusal>>, ServiceError> {
        self.apply(ticket.key, |s, now, p| lifecycle::renew_lease(s, ticket, now, p)).await
    }

    /// Stores the provider's answer to a ticket.
    pub async fn complete_refresh(
        self: &Arc<Self>,
        ticket: &RefreshTicket,
        result: RefreshResult,
    ) -> Result<Applied<RefreshCompletion>, ServiceError> {
        self.apply(ticket.key, |s, now, p| lifecycle::complete_refresh(s, ticket, result.clone(), now, p)).await
    }

    /// Makes sure the session's access token is fresh, refreshing it at most once across concurrent callers.
    /// Returns the record to use, or the refusal if the session is not usable.
    pub async fn ensure_fresh(
        self: &Arc<Self>,
        key: SessionKey,
        trigger: Trigger,
    ) -> Result<Result<Arc<Session>, Refusal>, ServiceError> {
        let wait = tokio::time::sleep(self.refresh_timeout + Duration::from_secs(5));
        tokio::pin!(wait);
        loop {
            let mut inflight = self.inflight.lock().await;
            let waiting = if let Some(rx) = inflight.get(&key).cloned() {
                drop(inflight);
                rx
            } else {
                let begun = match self.begin_refresh(key, trigger).await {
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
                        rx
                    }
                    Err(RefreshRefusal::Ended(refusal)) => return Ok(Err(refusal)),
                    Err(RefreshRefusal::InFlight { .. }) => {
                        // Another process holds the lease: poll until it completes or lapses.
                        drop(inflight);
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                            () = &mut wait => return self.current(key).await,
                        }
                    }
                    Err(_) => {
                        drop(inflight);
                        return Ok(begun.session.ok_or(Refusal::Unknown));
                    }
                }
            };
            // Until the ticket's task is done, or the wait is over for a task that never reports.
            tokio::select! {
                () = done(waiting) => {}
                () = &mut wait => return self.current(key).await,
            }
        }
    }

    /// The record as stored, when waiting for a refresh took too long.
    async fn current(&self, key: SessionKey) -> Result<Result<Arc<Session>, Refusal>, ServiceError> {
        Ok(self.store.get(&key).await?.ok_or(Refusal::Unknown))
    }

    async fn run_refresh(self: &Arc<Self>, ticket: RefreshTicket) {
        let result = match self.call_provider_keeping_lease(&ticket).await {
            Ok(answer) => RefreshResult::from(answer),
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
            match self.complete_refresh(&ticket, result.clone()).await {
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
        ticket: &RefreshTicket,
    ) -> Result<Result<bff_session_core::TokenGrant, bff_session_core::RefreshError>, tokio::time::error::Elapsed> {
        let every = (self.policy.refresh_lease / 4).min(self.refresh_timeout / 2).max(Duration::from_millis(100));
        let call = tokio::time::timeout(self.refresh_timeout, self.provider.refresh(&ticket.refresh_token));
        tokio::pin!(call);
        loop {
            tokio::select! {
                result = &mut call => return result,
                () = tokio::time::sleep(every) => {
                    match self.renew_lease(ticket).await.map(|a| a.outcome) {
                        Ok(Ok(_)) => {}
                        Ok(Err(refusal)) => warn!(session = %ticket.key, %refusal, "refresh lease not renewed"),
                        Err(e) => warn!(session = %ticket.key, error = %e, "refresh lease not renewed"),
                    }
                }
            }
        }
    }
}

/// Resolves when a refresh task reports that it is done (or is gone).
async fn done(mut rx: watch::Receiver<bool>) {
    // The borrow `wait_for` returns must not live across an await: map it away at once.
    let _ = rx.wait_for(|done| *done).await.map(|_| ());
}
