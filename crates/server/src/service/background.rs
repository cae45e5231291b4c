//! The background: the pass over due records, the refreshes it starts, and the revocation worker.
//!
//! Owns the timing (a jittered interval, a test clock that hands the pass to a harness), claiming and
//! releasing due keys, bounded concurrency for refreshes; the revocation worker is `revocations`'. What to do with each
//! due record is core's `background::visit`; this module never looks at a deadline.

use std::sync::Arc;
use std::time::Duration;

use bff_session_core::{TickReport, Trigger, background};
use tokio::sync::Semaphore;
use tracing::warn;

use super::{Applied, Service, ServiceError};

/// Due records one pass visits, at most; the rest wait for the next pass.
const PASS_LIMIT: usize = 10_000;
/// How long past its token's `exp` a `jti` is kept: longer than any clock skew a token is accepted with.
const JTI_GRACE_SECS: u64 = 600;
impl Service {
    /// One sweep over the records whose scheduled event has come, each read once and judged by core
    /// (`background::visit`): tombstones past retention and unreadable records are deleted, sessions past a
    /// deadline expire, and those due for a background refresh are listed. Visits at most 10,000 records.
    pub async fn sweep(self: &Arc<Self>) -> Result<Applied<TickReport>, ServiceError> {
        let now = self.clock.now();
        let due = self.store.due(now, PASS_LIMIT).await?;
        let mut report = TickReport::default();
        let mut effects = Vec::new();
        let mut failed = None;
        for &key in &due {
            // No flush: nobody waits on an expiry, and one lost in a crash is redone by its deadline.
            match self.apply_with(key, |s, now, p| background::visit(key, s, now, p), false).await {
                Ok(visited) => {
                    report.add(key, visited.outcome);
                    effects.extend(visited.effects);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Whatever this pass did not write goes back to the pool for the next pass of any replica.
        self.store.release(&due).await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(Applied { outcome: report, effects, session: None, now }),
        }
    }

    /// One background pass: [`Service::sweep`], then the refreshes it found due (at most `concurrency` at a
    /// time) and the expired pending logins. Returns how many records it acted on.
    pub async fn tick(self: &Arc<Self>, concurrency: usize) -> Result<usize, ServiceError> {
        let report = self.sweep().await?.outcome;
        let limit = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut refreshes = Vec::new();
        for &key in &report.refresh_due {
            let Ok(permit) = limit.clone().acquire_owned().await else { break };
            let service = self.clone();
            refreshes.push(tokio::spawn(async move {
                let _permit = permit;
                service.ensure_fresh(key, Trigger::Background).await
            }));
        }
        if let Err(e) = self.store.sweep_logins(self.clock.now()).await {
            warn!(error = %e, "expired pending logins not swept");
        }
        // Logout tokens are judged on real time (their exp and iat come from the provider's clock), so are
        // their jtis: one is forgotten once its token is past exp by more than any skew allowed.
        let real_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Err(e) = self.store.sweep_jtis(real_now.saturating_sub(JTI_GRACE_SECS)).await {
            warn!(error = %e, "expired logout-token jtis not swept");
        }
        for r in refreshes {
            let _ = r.await;
        }
        Ok(report.expired.len() + report.deleted.len() + report.refresh_due.len())
    }

    /// Runs the background pass (refresher and sweeper) and the revocation worker until
    /// [`Service::stop_background`].
    pub fn spawn_background(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![self.every("background", |s| async move { s.tick(8).await }), self.revoke_worker()]
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

/// `d` give or take 10%, so replicas and restarts do not beat in step.
fn jittered(d: Duration) -> Duration {
    use rand::RngExt as _;
    let tenth = (d.as_millis() / 10) as u64;
    let jitter = if tenth == 0 { 0 } else { rand::rng().random_range(0..=2 * tenth) };
    (d + Duration::from_millis(jitter)).saturating_sub(Duration::from_millis(tenth))
}
