//! The per-device session list: a user's active sessions, and ending one of them by its handle.
//!
//! Owns finding a user's sessions through the store's index. Whether ending one also ends the asking
//! browser's cookies is core's `end_from_device`; nothing here compares keys to decide it.

use std::sync::Arc;

use bff_session_core::lifecycle;
use bff_session_core::{Handle, Lookup, Policy, Refusal, Session, SessionKey, UserId};
use tracing::warn;

use super::{Applied, Service, ServiceError};
use crate::store::StoreError;

impl Service {
    /// Ends `user`'s session named by `handle` from the device list of the session `requester`.
    pub async fn end_device(
        self: &Arc<Self>,
        user: &UserId,
        handle: Handle,
        requester: SessionKey,
    ) -> Result<Applied<Result<(), Refusal>>, ServiceError> {
        let mut target = None;
        for key in self.store.keys(&Lookup::User(user.clone())).await? {
            if matches!(self.store.get(&key).await, Ok(Some(s)) if s.handle() == handle) {
                target = Some(key);
                break;
            }
        }
        let end = |s: Option<&mut Session>, now, p: &Policy| lifecycle::end_from_device(s, requester, now, p);
        match target {
            Some(key) => self.apply(key, end).await,
            None => {
                let now = self.clock.now();
                let t = end(None, now, &self.policy);
                Ok(Applied { outcome: t.outcome, effects: t.effects, session: None, now })
            }
        }
    }

    /// The user's active sessions, oldest first.
    pub async fn sessions_of(&self, user: &UserId) -> Result<Vec<Arc<Session>>, ServiceError> {
        let mut out = Vec::new();
        for key in self.store.keys(&Lookup::User(user.clone())).await? {
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
}
