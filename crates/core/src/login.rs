//! Pending logins: the state a relying party keeps between sending a browser to the provider and its
//! return to the callback.
//!
//! Owns a pending login's record (the `state`, `nonce` and PKCE verifier that bind the callback to this
//! browser, and where to go afterwards), its life (pending, then used or expired: single use, with a time
//! to live), its store key, its stored bytes, and [`Logins`], a bounded in-memory table that evicts the
//! oldest pending login first. It never draws the secrets (the shell does, from the OS random source) and
//! never reads a clock.
//!
//! ```text
//!   begin ──▶ Pending ──redeem before expires_at──▶ Used      (a second redeem: LoginRefusal::Used)
//!                │
//!                └──redeem at or after expires_at──▶ Expired  (LoginRefusal::Expired)
//! ```
//!
//! A shared store makes "used" durable by removing the record in the same atomic step that reads it; the
//! shell then runs [`redeem`] on what it took, so two callbacks racing with one login cookie see one login.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::id::Secret;
use crate::time::Timestamp;

const KEY_DOMAIN: &[u8] = b"bff-session/v1/login-key\0";

/// How long a login may take, and how many may be pending at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginPolicy {
    /// From the redirect to the provider until the callback must have arrived.
    pub lifetime: Duration,
    /// Pending logins held at most; beyond it the oldest is evicted, so a flood of anonymous login starts
    /// cannot grow the store without bound.
    pub capacity: usize,
}

impl Default for LoginPolicy {
    /// Ten minutes, as most providers allow for their own login pages; 100,000 pending at once.
    fn default() -> Self {
        Self { lifetime: Duration::from_secs(600), capacity: 100_000 }
    }
}

/// Where a pending login is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoginState {
    Pending,
    Used { at: Timestamp },
    Expired,
}

/// The values that tie a callback to the login that started it. Never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginSecrets {
    /// The OAuth `state`, compared with the callback's in constant time by the shell.
    pub state: Secret,
    /// The OpenID Connect `nonce`, checked inside the ID token.
    pub nonce: Secret,
    /// The PKCE code verifier.
    pub verifier: Secret,
}

impl fmt::Debug for LoginSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginSecrets(<redacted>)")
    }
}

/// One login in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    pub secrets: LoginSecrets,
    /// A validated return path (`return_path::validate`).
    pub return_to: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub state: LoginState,
}

/// Why a callback's login cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginRefusal {
    /// No such login: never started here, evicted, swept, or taken by another callback.
    Unknown,
    /// Its callback already ran.
    Used,
    /// It took longer than the login lifetime.
    Expired,
}

impl LoginRefusal {
    pub const fn code(self) -> &'static str {
        match self {
            Self::Unknown => "login_unknown",
            Self::Used => "login_used",
            Self::Expired => "login_expired",
        }
    }
}

impl fmt::Display for LoginRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "this login is unknown here",
            Self::Used => "this login was already completed",
            Self::Expired => "this login took too long",
        })
    }
}

impl std::error::Error for LoginRefusal {}

/// A pending login's stored bytes do not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginDecodeError(String);

impl fmt::Display for LoginDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pending login does not decode: {}", self.0)
    }
}

impl std::error::Error for LoginDecodeError {}

/// A pending login's name in a store: a domain-separated hash of the login cookie's random value, so the
/// store never holds what the browser presents.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LoginKey([u8; 32]);

impl LoginKey {
    pub fn of_cookie(value: &str) -> Self {
        let mut h = Sha256::new();
        h.update(KEY_DOMAIN);
        h.update(value.as_bytes());
        Self(h.finalize().into())
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for LoginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoginKey({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

impl PendingLogin {
    /// A new pending login that the callback must redeem within the policy's lifetime.
    pub fn begin(secrets: LoginSecrets, return_to: String, now: Timestamp, policy: &LoginPolicy) -> Self {
        Self {
            secrets,
            return_to,
            created_at: now,
            expires_at: now.saturating_add(policy.lifetime),
            state: LoginState::Pending,
        }
    }

    /// Whether a sweep may drop it: once its lifetime is over nothing can redeem it, used or not.
    pub fn is_over(&self, now: Timestamp) -> bool {
        is_over(self.expires_at, now)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, LoginDecodeError> {
        serde_json::from_slice(bytes).map_err(|e| LoginDecodeError(e.to_string()))
    }
}

/// Whether a login that expires at `expires_at` is over at `now`: for a store that keeps the expiry apart
/// from the login (an index), so it can sweep without decoding.
pub fn is_over(expires_at: Timestamp, now: Timestamp) -> bool {
    now >= expires_at
}

/// The callback's step: takes the login for good if it is still pending and in time. `None` when the
/// shell found no login under the cookie's key.
pub fn redeem(login: Option<&mut PendingLogin>, now: Timestamp) -> Result<PendingLogin, LoginRefusal> {
    let login = login.ok_or(LoginRefusal::Unknown)?;
    match login.state {
        LoginState::Used { .. } => Err(LoginRefusal::Used),
        LoginState::Expired => Err(LoginRefusal::Expired),
        LoginState::Pending if login.is_over(now) => {
            login.state = LoginState::Expired;
            Err(LoginRefusal::Expired)
        }
        LoginState::Pending => {
            login.state = LoginState::Used { at: now };
            Ok(login.clone())
        }
    }
}

/// Pending logins in memory, bounded: the reference the stores are checked against, and a store in its
/// own right. Ordered collections only, so equal inputs give equal tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logins {
    policy: LoginPolicy,
    entries: BTreeMap<LoginKey, (u64, PendingLogin)>,
    /// Insertion order, for evicting the oldest.
    order: BTreeSet<(u64, LoginKey)>,
    next: u64,
}

impl Logins {
    pub fn new(policy: LoginPolicy) -> Self {
        Self { policy, entries: BTreeMap::new(), order: BTreeSet::new(), next: 0 }
    }

    pub fn policy(&self) -> &LoginPolicy {
        &self.policy
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &LoginKey) -> Option<&PendingLogin> {
        self.entries.get(key).map(|(_, login)| login)
    }

    /// Starts a login under `key`; returns the keys evicted to stay within the capacity, oldest first.
    pub fn begin(&mut self, key: LoginKey, secrets: LoginSecrets, return_to: String, now: Timestamp) -> Vec<LoginKey> {
        self.remove(&key);
        let mut evicted = Vec::new();
        while self.entries.len() >= self.policy.capacity.max(1) {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.entries.remove(&oldest);
            evicted.push(oldest);
        }
        let login = PendingLogin::begin(secrets, return_to, now, &self.policy);
        self.order.insert((self.next, key));
        self.entries.insert(key, (self.next, login));
        self.next += 1;
        evicted
    }

    /// The callback: [`redeem`] on the login under `key`. A used login stays (as used) until it is swept,
    /// so a replayed callback is told so.
    pub fn redeem(&mut self, key: &LoginKey, now: Timestamp) -> Result<PendingLogin, LoginRefusal> {
        redeem(self.entries.get_mut(key).map(|(_, login)| login), now)
    }

    /// Drops every login whose lifetime is over; returns their keys.
    pub fn sweep(&mut self, now: Timestamp) -> Vec<LoginKey> {
        let over: Vec<LoginKey> =
            self.entries.iter().filter(|(_, (_, login))| login.is_over(now)).map(|(key, _)| *key).collect();
        for key in &over {
            self.remove(key);
        }
        over
    }

    fn remove(&mut self, key: &LoginKey) {
        if let Some((seq, _)) = self.entries.remove(key) {
            self.order.remove(&(seq, *key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> LoginSecrets {
        LoginSecrets { state: Secret::new("s"), nonce: Secret::new("n"), verifier: Secret::new("v") }
    }

    /// The codes are the server's wire vocabulary (JSON `error` fields); the texts are what a person reads.
    #[test]
    fn refusals_have_fixed_codes_and_texts() {
        let all = [LoginRefusal::Unknown, LoginRefusal::Used, LoginRefusal::Expired];
        assert_eq!(all.map(LoginRefusal::code), ["login_unknown", "login_used", "login_expired"]);
        assert_eq!(
            all.map(|r| r.to_string()),
            ["this login is unknown here", "this login was already completed", "this login took too long"]
        );
        let err = PendingLogin::decode(b"{").unwrap_err();
        assert!(err.to_string().starts_with("pending login does not decode: "), "{err}");
    }

    /// A key is a hash of the cookie value: the same value gives the same key, its bytes are the hash, and
    /// `Debug` shows only a prefix.
    #[test]
    fn keys_are_hashes_shown_by_prefix() {
        let key = LoginKey::of_cookie("cookie-value");
        assert_eq!(key, LoginKey::of_cookie("cookie-value"));
        assert_ne!(key, LoginKey::of_cookie("cookie-valuf"));
        assert_eq!(LoginKey::from_bytes(*key.as_bytes()), key);
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8 + 0xa0);
        assert_eq!(LoginKey::from_bytes(bytes).as_bytes(), &bytes);
        assert_eq!(format!("{:?}", LoginKey::from_bytes(bytes)), "LoginKey(a0a1a2a3…)");
    }

    #[test]
    fn secrets_never_print() {
        let shown = format!("{:?}", secrets());
        assert_eq!(shown, "LoginSecrets(<redacted>)");
        let pending = PendingLogin::begin(secrets(), "/".into(), Timestamp::from_millis(0), &LoginPolicy::default());
        assert!(format!("{pending:?}").contains("LoginSecrets(<redacted>)"));
    }

    #[test]
    fn the_table_reports_what_it_holds() {
        let policy = LoginPolicy { lifetime: Duration::from_secs(5), capacity: 3 };
        let mut logins = Logins::new(policy);
        assert_eq!(logins.policy(), &policy);
        assert!(logins.is_empty());
        let key = LoginKey::from_bytes([1; 32]);
        let now = Timestamp::from_millis(1_000);
        assert!(logins.begin(key, secrets(), "/here".into(), now).is_empty());
        assert!(!logins.is_empty());
        assert_eq!(logins.len(), 1);
        let pending = logins.get(&key).map(|l| (l.return_to.clone(), l.expires_at));
        assert_eq!(pending, Some(("/here".to_owned(), Timestamp::from_millis(6_000))));
        assert_eq!(logins.get(&LoginKey::from_bytes([2; 32])), None);
    }
}
