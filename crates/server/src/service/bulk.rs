//! Ending many sessions at once: logout everywhere, a back-channel logout, and the per-user allowance.
//!
//! Owns reading the records a core [`RevokeAll`] plan names and applying its revocation to each. Which
//! sessions a plan reaches, in what order, and which fall outside a user's allowance are core's answers
//! (`RevokeAll::order`, `revoke_all::over_limit`); nothing here picks a session on its own.

use std::sync::Arc;

use bff_session_core::{Effect, RevokeAll, Session, SessionKey, UserId, revoke_all};
use tracing::info;

use super::{Applied, Service, ServiceError};
use crate::store::StoreError;

impl Service {
    /// Ends, durably, the sessions core's `over_limit` says the new session `key` pushes out of its user's
    /// allowance; returns their effects (the refresh tokens to revoke among them). It runs after the new
    /// session is stored, so a failure here never costs the user the sign-in that caused it.
    pub(super) async fn end_over_limit(
        self: &Arc<Self>,
        user: UserId,
        key: SessionKey,
        max: usize,
    ) -> Result<Vec<Effect>, ServiceError> {
        let plan = RevokeAll::over_limit(user);
        let mut sessions = Vec::new();
        for other in plan.order(self.store.keys(&plan.lookup).await?) {
            match self.store.get(&other).await {
                Ok(Some(s)) => sessions.push(s),
                Ok(None) | Err(StoreError::Corrupt { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let records: Vec<&Session> = sessions.iter().map(|s| &**s).collect();
        let mut effects = Vec::new();
        for other in revoke_all::over_limit(&records, key, max) {
            let ended = self.apply(other, |s, now, p| plan.revoke(s, now, p)).await?;
            if ended.outcome.is_ok() {
                info!(session = %other, "session ended: its user signed in past the sessions allowed per user");
            }
            effects.extend(ended.effects);
        }
        Ok(effects)
    }

    /// Ends every active session a plan's lookup names, in core's order; the outcome lists those it ended.
    pub async fn revoke_all(self: &Arc<Self>, plan: &RevokeAll) -> Result<Applied<Vec<SessionKey>>, ServiceError> {
        let keys = plan.order(self.store.keys(&plan.lookup).await?);
        let mut visits = Vec::with_capacity(keys.len());
        for key in keys {
            let applied = self.apply(key, |s, now, p| plan.revoke(s, now, p)).await?;
            visits.push((key, applied.into_transition()));
        }
        let t = plan.finish(visits);
        Ok(Applied { outcome: t.outcome, effects: t.effects, session: None, now: self.clock.now() })
    }
}
