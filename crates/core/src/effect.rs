//! What a transition asks the shell to do.
//!
//! Owns [`Effect`]. core performs none of these: the shell carries them out, in order, after the transition.

use std::time::Duration;

use crate::id::{Secret, SessionKey};

/// Whether the shell may acknowledge the request before a write reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    /// Losing the write in a crash costs nothing that matters (a touch, a lease).
    Lazy,
    /// The request must not be acknowledged until the write is durable (a login, a logout, rotated tokens).
    Durable,
}

/// One thing for the shell to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Write the record now at `version`, compare-and-swap against `version - 1` (or absence, for version 1).
    Persist { key: SessionKey, version: u64, durability: Durability },
    /// Remove the record: a tombstone whose retention has passed.
    Delete { key: SessionKey },
    /// Send the session and CSRF cookies for the ID the caller created the session with.
    SetCookies { key: SessionKey, max_age: Duration },
    /// Send both cookies cleared, with the attributes they were set with.
    ClearCookies,
    /// Revoke this refresh token at the provider (RFC 7009); failures are logged, never retried forever.
    RevokeAtProvider { token: Secret },
}

impl Effect {
    pub(crate) fn persist(key: SessionKey, version: u64, durability: Durability) -> Self {
        Self::Persist { key, version, durability }
    }
}
