//! The background: the pass over due records, the refreshes it starts, and the revocation worker.
//!
//! Owns the timing (a jittered interval, a test clock that hands the pass to a harness), claiming and
//! releasing due keys, bounded concurrency for refreshes; the revocation worker is `revocations`'. What to do with each
//! due record is core's `background::visit`; this module never looks at a deadline.

use std::sync::Arc;
use std::time::Duration;

use bff_session_core::{Effect, SessionKey, TickReport, Timestamp, Trigger, background};
use tokio::sync::Semaphore;
use tracing::warn;

use super::{Applied, Service, ServiceError};
use crate::store::{StoreError, Write};

/// Due records one pass visits, at most; the rest wait for the next pass.
const PASS_LIMIT: usize = 10_000;
/// How long past its token's `exp` a `jti` is kept: longer than any clock skew a token is accepted with.
const JTI_GRACE_SECS: u64 = 600;
impl Service {
    /// One sweep over the records whose scheduled event has come, each read once and judged by core
    /// (`background::visit`): tombstones past retention and unreadable records are deleted, sessions past a
    /// deadline expire, and those due for a background refresh are listed. Visits at most 10,000 records,
    /// and hands their writes to the store together ([`Store::write_all`](crate::store::Store::write_all)),
    /// which commits them in groups (sled: sixteen to a transaction). A record written meanwhile by anyone
    /// else is visited again on its own.
    pub async fn sweep(self: &Arc<Self>) -> Result<Applied<TickReport>, ServiceError> {
        let now = self.clock.now();
        let due = self.store.due(now, PASS_LIMIT).await?;
        let visited = self.visit_all(&due, now).await;
        // Whatever this pass did not write goes back to the pool for the next pass of any replica.
        self.store.release(&due).await?;
        let (report, effects) = visited?;
        Ok(Applied { outcome: report, effects, session: None, now })
    }

    async fn visit_all(
        self: &Arc<Self>,
        due: &[SessionKey],
        now: Timestamp,
    ) -> Result<(TickReport, Vec<Effect>), ServiceError> {
        let mut read = Vec::with_capacity(due.len());
        for &key in due {
            let previous = self.read(key).await?;
            let mut current = previous.as_deref().cloned();
            let t = background::visit(key, current.as_mut(), now, &self.policy);
            read.push((key, previous, current, t));
        }
        let writes: Vec<(usize, Write<'_>)> = read
            .iter()
            .enumerate()
            .filter_map(|(i, (key, previous, current, t))| {
                Write::of_effects(*key, previous.as_deref(), current.as_ref(), &t.effects, now).map(|w| (i, w))
            })
            .collect();
        let batch: Vec<Write<'_>> = writes.iter().map(|(_, w)| *w).collect();
        let mut results = vec![Ok(()); read.len()];
        for ((i, write), result) in writes.iter().zip(self.store.write_all(&batch).await) {
            if result.is_ok() {
                self.committed(write, now);
            }
            results[*i] = result;
        }
        let mut report = TickReport::default();
        let mut effects = Vec::new();
        let mut failed = None;
        for ((key, previous, current, t), result) in read.into_iter().zip(results) {
            // No flush: nobody waits on an expiry, and one lost in a crash is redone by its deadline.
            let applied = match result {
                Ok(()) => self.finish(t, previous.as_deref(), current, false, now).await,
                Err(StoreError::Conflict) => {
                    self.apply_with(key, |s, now, p| background::visit(key, s, now, p), false).await
                }
                Err(e) => Err(e.into()),
            };
            match applied {
                Ok(visited) => {
                    report.add(key, visited.outcome);
                    effects.extend(visited.effects);
                }
                // The others' writes are committed, so their effects are still carried out.
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok((report, effects)),
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
