//! Pending logins between `/auth/login` and `/auth/callback`, and back-channel logouts.
//!
//! Owns drawing the login cookie's value, keeping the pending login under its hash, taking it back once, and
//! remembering logout-token IDs. The rules (lifetime, single use, which sessions a logout token names) are
//! core's `login` and `revoke_all`; this module only stores and carries out.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bff_session_core::login;
use bff_session_core::{LoginKey, LoginRefusal, LoginSecrets, PendingLogin, RevokeAll};
use tracing::warn;

use super::{Service, ServiceError, random_bytes};
use crate::oidc::LogoutClaims;
use crate::store::StoreError;

/// A logout token whose `jti` was seen before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed;

impl Service {
    /// Saves a pending login; returns the value for the login cookie, which alone can name it.
    pub async fn begin_login(&self, secrets: LoginSecrets, return_to: String) -> Result<String, ServiceError> {
        let cookie = URL_SAFE_NO_PAD.encode(random_bytes()?);
        let pending = PendingLogin::begin(secrets, return_to, self.clock.now(), &self.login_policy);
        let evicted = self.store.put_login(&LoginKey::of_cookie(&cookie), &pending, self.login_policy.capacity).await?;
        if evicted > 0 {
            self.metrics.add("bff_pending_logins_evicted_total", "reason", "capacity", evicted as u64);
        }
        Ok(cookie)
    }

    /// Takes the pending login a login cookie names, once, and lets core redeem it.
    pub async fn finish_login(&self, cookie: &str) -> Result<Result<PendingLogin, LoginRefusal>, ServiceError> {
        let mut taken = match self.store.take_login(&LoginKey::of_cookie(cookie)).await {
            Ok(taken) => taken,
            Err(StoreError::CorruptLogin(error)) => {
                warn!(%error, "corrupt pending login treated as unknown");
                None
            }
            Err(e) => return Err(e.into()),
        };
        Ok(login::redeem(taken.as_mut(), self.clock.now()))
    }

    /// Carries out a valid back-channel logout token, once per `jti`: ends the sessions core says it names.
    /// Returns how many it ended.
    pub async fn backchannel(self: &Arc<Self>, claims: &LogoutClaims) -> Result<Result<usize, Replayed>, ServiceError> {
        // The jti is recorded only after the revocation it causes is durable: if the store fails in between,
        // the provider's retry of the same token must still get through. Two deliveries racing past the
        // check revoke the same sessions twice, which ends nothing more.
        if self.store.jti_seen(&claims.jti).await? {
            return Ok(Err(Replayed));
        }
        let ended = match RevokeAll::backchannel(&claims.iss, claims.sid.as_deref(), claims.sub.as_deref()) {
            Some(plan) => self.revoke_all(&plan).await?.outcome.len(),
            None => 0,
        };
        if !self.store.remember_jti(&claims.jti, claims.exp).await? {
            return Ok(Err(Replayed));
        }
        Ok(Ok(ended))
    }
}
