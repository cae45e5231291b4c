//! Why a request does not carry a usable session, and what the browser's cookies become because of it.
//!
//! Owns [`Refusal`], its stable codes and the rule of which refusals clear the browser's cookies. It never
//! looks at a record: `lifecycle` decides which refusal applies.

use std::fmt;

use crate::csrf::CsrfError;
use crate::ended::{ExpiryReason, RevocationReason};
use crate::id::SessionIdError;

/// Why a request does not carry a usable session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No session cookie.
    NoCookie,
    /// A cookie that cannot be a session ID.
    Malformed(SessionIdError),
    /// An unsafe request without the session's CSRF proof.
    Csrf(CsrfError),
    /// No such session (never existed, or its tombstone was deleted).
    Unknown,
    Expired(ExpiryReason),
    Revoked(RevocationReason),
}

impl Refusal {
    /// A short, stable name for metrics and error bodies.
    pub const fn code(self) -> &'static str {
        match self {
            Self::NoCookie => "no_session",
            Self::Malformed(_) => "malformed_session",
            Self::Csrf(CsrfError::Missing) => "csrf_missing",
            Self::Csrf(_) => "csrf_mismatch",
            Self::Unknown => "unknown_session",
            Self::Expired(_) => "session_expired",
            Self::Revoked(_) => "session_revoked",
        }
    }

    /// Whether the browser should be left without its session cookies. A cookie that names no live session
    /// is dead weight; but a CSRF refusal says nothing about the session (a cross-site page may have sent
    /// the request), and with no cookie there is nothing to clear.
    pub const fn clears_cookies(self) -> bool {
        !matches!(self, Self::NoCookie | Self::Csrf(_))
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCookie => f.write_str("no session cookie"),
            Self::Malformed(e) => write!(f, "malformed session cookie: {e}"),
            Self::Csrf(e) => e.fmt(f),
            Self::Unknown => f.write_str("unknown session"),
            Self::Expired(reason) => write!(f, "session expired ({reason})"),
            Self::Revoked(reason) => write!(f, "session revoked ({reason})"),
        }
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_cookie_is_cleared() {
        assert!(!Refusal::NoCookie.clears_cookies());
        assert!(!Refusal::Csrf(CsrfError::Missing).clears_cookies());
        assert!(!Refusal::Csrf(CsrfError::Mismatch).clears_cookies());
        assert!(Refusal::Malformed(SessionIdError::Length { found: 3 }).clears_cookies());
        assert!(Refusal::Unknown.clears_cookies());
        assert!(Refusal::Expired(ExpiryReason::Idle).clears_cookies());
        assert!(Refusal::Revoked(RevocationReason::Logout).clears_cookies());
    }
}
