//! Why a session ended: the deadline that ran out, or who ended it early.
//!
//! Owns [`ExpiryReason`] and [`RevocationReason`], their stable names, and what each reason implies for the
//! provider's grant and the requesting browser's cookies. It knows nothing of records or requests, so both
//! `session` and `refusal` can name a reason without depending on each other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which deadline ended a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ExpiryReason {
    /// The absolute lifetime ran out.
    Absolute,
    /// The session was not used for the idle timeout.
    Idle,
    /// The provider's refresh token expired, so the session can no longer get access tokens.
    RefreshToken,
}

/// Who or what ended a session early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum RevocationReason {
    /// The user signed out of this session.
    Logout,
    /// The user signed out of every session.
    LogoutEverywhere,
    /// The user ended this session from another device.
    RevokedFromDevice,
    /// The provider answered `invalid_grant` to a refresh.
    RefreshRejected,
    /// The provider sent a back-channel logout token.
    BackchannelLogout,
    /// The same browser signed in again.
    Superseded,
    /// An operator ended it.
    Admin,
    /// Its user signed in once more than the sessions allowed per user, and it was the least recently used.
    SessionLimit,
}

impl RevocationReason {
    /// Whether ending the session should also revoke its refresh token at the provider. Not when the
    /// provider itself ended the grant.
    pub const fn revokes_at_provider(self) -> bool {
        !matches!(self, Self::RefreshRejected | Self::BackchannelLogout)
    }

    /// Whether the request that asked for it should leave the browser without cookies.
    pub const fn clears_cookies(self) -> bool {
        matches!(self, Self::Logout | Self::LogoutEverywhere)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::LogoutEverywhere => "logout_everywhere",
            Self::RevokedFromDevice => "revoked_from_device",
            Self::RefreshRejected => "refresh_rejected",
            Self::BackchannelLogout => "backchannel_logout",
            Self::Superseded => "superseded",
            Self::Admin => "admin",
            Self::SessionLimit => "session_limit",
        }
    }
}

impl ExpiryReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Absolute => "absolute",
            Self::Idle => "idle",
            Self::RefreshToken => "refresh_token",
        }
    }
}

impl fmt::Display for ExpiryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
