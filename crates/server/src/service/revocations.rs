//! Refresh tokens on their way to the provider's revocation endpoint (RFC 7009).
//!
//! Owns the queue, fair between users, and the worker that drains it with bounded concurrency, so a mass
//! expiry never turns into a burst of provider calls and one user's mass logout never starves the others:
//! users take turns, one token each, and no user holds more than a tenth of the places (so ten users in a
//! mass logout at once still leave everyone else a turn). It never decides
//! which tokens to revoke; core's `RevokeAtProvider` effects do.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bff_session_core::{Secret, UserId};
use tokio::sync::{Notify, Semaphore};
use tracing::warn;

use super::Service;
use crate::metrics::Metrics;

/// Revocations waiting for the provider, at most, unless `--revocation-queue` says otherwise; beyond that
/// they are dropped and counted.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Revocation calls in flight at once.
const CONCURRENCY: usize = 4;

/// Whose turn it is, and what each user has waiting. `None` is a token whose user the shell did not know.
struct Turns {
    waiting: HashMap<Option<UserId>, VecDeque<Secret>>,
    order: VecDeque<Option<UserId>>,
    len: usize,
    capacity: usize,
    per_user: usize,
}

impl Turns {
    /// Queues `token` behind its user's others; `false` when the queue or the user's share is full.
    fn push(&mut self, user: Option<UserId>, token: Secret) -> bool {
        if self.len >= self.capacity {
            return false;
        }
        let queued = self.waiting.entry(user.clone()).or_default();
        if queued.len() >= self.per_user {
            return false;
        }
        if queued.is_empty() {
            self.order.push_back(user);
        }
        queued.push_back(token);
        self.len += 1;
        true
    }

    /// The next user's oldest token; that user goes to the back of the line if more are waiting.
    fn pop(&mut self) -> Option<Secret> {
        let user = self.order.pop_front()?;
        let queued = self.waiting.get_mut(&user)?;
        let token = queued.pop_front();
        if queued.is_empty() {
            self.waiting.remove(&user);
        } else {
            self.order.push_back(user);
        }
        self.len -= usize::from(token.is_some());
        token
    }
}

/// The queue; see the module docs.
pub(super) struct RevocationQueue {
    turns: Mutex<Turns>,
    ready: Notify,
}

impl RevocationQueue {
    /// A queue of `capacity` places, a tenth of them (at least one) for each user.
    pub(super) fn new(capacity: usize) -> Self {
        let turns = Turns {
            waiting: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            capacity,
            per_user: (capacity / 10).max(1),
        };
        Self { turns: Mutex::new(turns), ready: Notify::new() }
    }

    pub(super) fn push(&self, user: Option<&UserId>, token: Secret, metrics: &Metrics) {
        let queued = self.turns.lock().unwrap_or_else(PoisonError::into_inner).push(user.cloned(), token);
        if queued {
            self.ready.notify_one();
        } else {
            metrics.inc("bff_provider_revocations_total", "outcome", "dropped");
            warn!("revocation queue full for this user or for all; a refresh token is left to expire at the provider");
        }
    }

    /// Tokens waiting.
    fn len(&self) -> usize {
        self.turns.lock().unwrap_or_else(PoisonError::into_inner).len
    }

    fn pop(&self) -> Option<Secret> {
        self.turns.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    /// The next token, waiting for one.
    async fn next(&self) -> Secret {
        loop {
            if let Some(token) = self.pop() {
                return token;
            }
            // A push between the pop and here leaves a permit, so this wakes at once.
            self.ready.notified().await;
        }
    }
}

/// What [`Service::drain_revocations`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub revoked: usize,
    pub failed: usize,
}

impl Service {
    /// `/metrics`, with the revocation queue's depth as it is now.
    pub fn render_metrics(&self) -> String {
        self.metrics.set_revocation_queue(self.revocations.len());
        self.metrics.render()
    }

    /// Revokes every queued refresh token now, one after another: for a process with no background worker
    /// (`bff-session admin`), which must not exit with revocations still queued.
    pub async fn drain_revocations(&self) -> Drained {
        let mut drained = Drained::default();
        while let Some(token) = self.revocations.pop() {
            match self.provider.revoke(&token).await {
                Ok(()) => {
                    self.metrics.inc("bff_provider_revocations_total", "outcome", "ok");
                    drained.revoked += 1;
                }
                Err(e) => {
                    self.metrics.inc("bff_provider_revocations_total", "outcome", "failed");
                    warn!(error = %e, "refresh token revocation at the provider failed");
                    drained.failed += 1;
                }
            }
        }
        drained
    }

    /// Revokes queued refresh tokens at the provider, a few at a time, until the service stops (then drains).
    pub(super) fn revoke_worker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        let mut stop = self.stopping.subscribe();
        tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(CONCURRENCY));
            let mut stopping = false;
            loop {
                let token = if stopping {
                    // Stopping: take no more waits, but finish what was queued.
                    match service.revocations.pop() {
                        Some(token) => token,
                        None => return,
                    }
                } else {
                    tokio::select! {
                        token = service.revocations.next() => token,
                        _ = stop.wait_for(|s| *s) => {
                            stopping = true;
                            continue;
                        }
                    }
                };
                let Ok(permit) = limit.clone().acquire_owned().await else { return };
                let s = service.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match s.provider.revoke(&token).await {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(user: &str, n: usize) -> Secret {
        Secret::new(format!("{user}-{n}"))
    }

    /// One user's mass logout queued first does not hold back another user's single revocation: users take
    /// turns, and the flooding user keeps at most its share.
    #[test]
    fn a_mass_logout_cannot_monopolise_the_queue() {
        let queue = RevocationQueue::new(DEFAULT_CAPACITY);
        const PER_USER: usize = DEFAULT_CAPACITY / 10;
        let metrics = Metrics::default();
        let (flood, other) = (UserId::new("flood"), UserId::new("other"));
        for n in 0..PER_USER + 50 {
            queue.push(Some(&flood), token("flood", n), &metrics);
        }
        assert_eq!(metrics.get("bff_provider_revocations_total", "outcome", "dropped"), 50);
        queue.push(Some(&other), token("other", 0), &metrics);
        queue.push(None, token("unknown", 0), &metrics);
        let first: Vec<String> = (0..4).filter_map(|_| queue.pop()).map(|t| t.expose().to_owned()).collect();
        assert_eq!(first, ["flood-0", "other-0", "unknown-0", "flood-1"]);
        let rest = std::iter::from_fn(|| queue.pop()).count();
        assert_eq!(rest, PER_USER - 2, "every queued token of the flood still goes out");
    }

    /// The whole queue is bounded too, whatever the number of users.
    #[test]
    fn the_queue_holds_at_most_its_capacity() {
        let queue = RevocationQueue::new(DEFAULT_CAPACITY);
        let metrics = Metrics::default();
        for n in 0..DEFAULT_CAPACITY + 7 {
            let user = UserId::new(format!("u{n}"));
            queue.push(Some(&user), token("u", n), &metrics);
        }
        assert_eq!(metrics.get("bff_provider_revocations_total", "outcome", "dropped"), 7);
        assert_eq!(std::iter::from_fn(|| queue.pop()).count(), DEFAULT_CAPACITY);
    }
}
