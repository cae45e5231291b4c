//! The single-flight refresh protocol: tickets, fencing generations, leases and back-off.
//!
//! Owns the refresh bookkeeping kept in each session and the values exchanged with the shell around a call
//! to the provider's token endpoint. It never calls the provider: beginning a refresh hands out a
//! [`RefreshTicket`], the shell makes the call, and completing hands the [`RefreshResult`] back.
//!
//! At most one ticket is live per session. A ticket carries the generation it was issued for; completing
//! with any other generation is stale and changes nothing, which is what keeps a slow, superseded call from
//! overwriting newer tokens.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::{Secret, SessionKey};
use crate::refusal::Refusal;
use crate::time::Timestamp;

/// Refresh bookkeeping of one session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshState {
    /// The generation of the last ticket issued; 0 before the first.
    pub(crate) generation: u64,
    /// The live or lapsed lease of the last ticket, until it completes.
    pub(crate) lease: Option<Lease>,
    /// Consecutive transient failures.
    pub(crate) failures: u32,
    /// No ticket is issued before this time.
    pub(crate) retry_at: Option<Timestamp>,
}

impl RefreshState {
    pub fn generation(&self) -> u64 {
        self.generation
    }
    pub fn lease(&self) -> Option<Lease> {
        self.lease
    }
    pub fn failures(&self) -> u32 {
        self.failures
    }
    pub fn retry_at(&self) -> Option<Timestamp> {
        self.retry_at
    }

    /// The lease that still excludes a new ticket at `now`.
    pub fn live_lease(&self, now: Timestamp) -> Option<Lease> {
        self.lease.filter(|lease| now < lease.expires_at)
    }
}

/// Exclusive right of one ticket to refresh, until `expires_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub generation: u64,
    pub expires_at: Timestamp,
}

/// Permission to call the token endpoint once, with this refresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshTicket {
    pub key: SessionKey,
    pub generation: u64,
    pub refresh_token: Secret,
    pub lease_expires_at: Timestamp,
}

/// What started a refresh; decides how close to expiry counts as due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Trigger {
    /// A request found the access token within the refresh margin.
    Request,
    /// The background refresher found it within its window.
    Background,
}

/// A successful token response, as relative values: core turns them into deadlines with `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    pub access_token: Secret,
    /// `expires_in`; when absent the policy's assumed lifetime applies.
    pub expires_in: Option<Duration>,
    /// A rotated refresh token; when absent the current one stays.
    pub refresh_token: Option<Secret>,
    /// The refresh token's own lifetime, when the provider states one.
    pub refresh_expires_in: Option<Duration>,
    pub id_token: Option<Secret>,
}

/// Why the provider did not issue new tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshError {
    /// The provider refused the refresh token (`invalid_grant`): the grant is gone.
    InvalidGrant,
    /// A timeout, a 5xx, a network error: try again after a back-off.
    Transient,
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidGrant => "the provider refused the refresh token (invalid_grant)",
            Self::Transient => "the provider could not be reached or failed",
        })
    }
}

impl std::error::Error for RefreshError {}

impl RefreshError {
    /// The name the audit trail gives it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidGrant => "invalid_grant",
            Self::Transient => "transient",
        }
    }
}

/// How the call to the token endpoint ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshResult {
    Success(TokenGrant),
    /// The provider refused the refresh token (`invalid_grant`): the grant is gone.
    InvalidGrant,
    /// A timeout, a 5xx, a network error: try again after a back-off.
    Transient,
}

impl From<Result<TokenGrant, RefreshError>> for RefreshResult {
    fn from(r: Result<TokenGrant, RefreshError>) -> Self {
        match r {
            Ok(grant) => Self::Success(grant),
            Err(RefreshError::InvalidGrant) => Self::InvalidGrant,
            Err(RefreshError::Transient) => Self::Transient,
        }
    }
}

/// Why no ticket was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshRefusal {
    /// The session is not active (or its deadline just passed).
    Ended(Refusal),
    /// The session has no refresh token.
    NoRefreshToken,
    /// The access token is not yet within the trigger's margin: someone refreshed it already.
    NotDue,
    /// Another ticket is live; wait for it or use the current token.
    InFlight { until: Timestamp },
    /// A recent transient failure; the next attempt is allowed at `until`.
    BackingOff { until: Timestamp },
}

impl fmt::Display for RefreshRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ended(refusal) => write!(f, "session cannot refresh: {refusal}"),
            Self::NoRefreshToken => f.write_str("session has no refresh token"),
            Self::NotDue => f.write_str("access token is not due for refresh"),
            Self::InFlight { until } => write!(f, "a refresh is in flight until {until}"),
            Self::BackingOff { until } => write!(f, "refresh is backing off until {until}"),
        }
    }
}

impl std::error::Error for RefreshRefusal {}

/// What completing a ticket did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshCompletion {
    /// New tokens are stored.
    Refreshed { access_expires_at: Timestamp },
    /// The provider refused the grant; the session is revoked.
    Revoked,
    /// A transient failure; no ticket before `until`.
    BackingOff { until: Timestamp },
    /// The ticket is not the session's current one; nothing changed.
    Stale,
    /// The session ended while the call was in flight; new tokens are revoked at the provider.
    Discarded,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an operator reads in the log when a refresh fails.
    #[test]
    fn refresh_errors_say_what_happened() {
        assert_eq!(RefreshError::InvalidGrant.to_string(), "the provider refused the refresh token (invalid_grant)");
        assert_eq!(RefreshError::Transient.to_string(), "the provider could not be reached or failed");
    }
}
