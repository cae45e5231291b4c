//! Pending logins between `/auth/login` and `/auth/callback`.
//!
//! Owns the server-side record of a login in progress (state, nonce, PKCE verifier, return path), stored
//! under the hash of a random value that only the browser's short-lived login cookie carries. A pending
//! login is single use and expires after ten minutes. It never creates a session.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

pub const LIFETIME: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub return_to: String,
    pub expires_ms: u64,
}

impl PendingLogin {
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

fn store_key(cookie_value: &str) -> [u8; 32] {
    Sha256::digest(cookie_value.as_bytes()).into()
}

/// Saves a pending login; returns the value for the login cookie.
pub async fn save(store: &Store, login: &PendingLogin) -> Result<String, crate::service::ServiceError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| crate::service::ServiceError::Random(e.to_string()))?;
    let cookie = URL_SAFE_NO_PAD.encode(bytes);
    let value = serde_json::to_vec(login).unwrap_or_default();
    store.put_login(&store_key(&cookie), &value, login.expires_ms).await?;
    Ok(cookie)
}

/// Takes the pending login for a cookie value, once. `Ok(None)`: unknown, used or expired.
pub async fn take(store: &Store, cookie_value: &str, now_ms: u64) -> Result<Option<PendingLogin>, StoreError> {
    let Some(bytes) = store.take_login(&store_key(cookie_value)).await? else { return Ok(None) };
    Ok(PendingLogin::decode(&bytes).filter(|p| p.expires_ms > now_ms))
}
