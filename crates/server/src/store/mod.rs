//! Where session records live: sled on one machine, or PostgreSQL shared by several replicas.
//!
//! Owns the choice of backend (`--store sled:PATH` or `--store postgres://…`), the error type, and the
//! operations every backend provides: compare-and-swap writes on a record's version, index lookups by
//! user, `(iss, sid)` and `(iss, sub)`, the schedule of due records, pending logins and seen logout-token
//! IDs. It never decides anything about a session: the transitions come from core.

mod postgres;
mod sled;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bff_session_core::record::DecodeError;
use bff_session_core::{Policy, Session, SessionKey, Timestamp};

pub use self::postgres::PgStore;
pub use self::sled::SledStore;
use crate::seal::TokenSealer;

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// The disk, sled or the database failed; the operation may be retried.
    Io(String),
    /// The record changed since it was read; re-read and try again.
    Conflict,
    /// A stored record does not decode.
    Corrupt { key: SessionKey, error: DecodeError },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "session store unavailable: {e}"),
            Self::Conflict => f.write_str("session record changed concurrently"),
            Self::Corrupt { key, error } => write!(f, "session record {key} is corrupt: {error}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Which backend, from `--store`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Sled(PathBuf),
    /// A `postgres://` or `postgresql://` connection URL.
    Postgres(String),
}

impl Location {
    /// `sled:PATH` or a PostgreSQL URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("sled:") {
            if path.is_empty() {
                return Err("sled: needs a folder, as in sled:/var/lib/bff-session/sessions.sled".into());
            }
            return Ok(Self::Sled(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<tokio_postgres::Config>().map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
            return Ok(Self::Postgres(s.to_owned()));
        }
        Err("use sled:PATH or postgres://USER:PASSWORD@HOST/DB".into())
    }
}

/// The session store. See the module docs.
#[derive(Debug)]
pub enum Store {
    Sled(SledStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens the backend at `location`; for PostgreSQL this applies the schema migrations.
    pub async fn open(
        location: &Location,
        sealer: TokenSealer,
        policy: Policy,
        cache_bytes: u64,
    ) -> Result<Self, StoreError> {
        match location {
            Location::Sled(path) => Ok(Self::Sled(SledStore::open(path, sealer, policy, cache_bytes)?)),
            Location::Postgres(url) => Ok(Self::Postgres(PgStore::connect(url, sealer, policy).await?)),
        }
    }

    /// The record under `key`. Always asks the backend, so a write by any replica is seen at once.
    pub async fn get(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        match self {
            Self::Sled(s) => s.get(key),
            Self::Postgres(p) => p.get(key).await,
        }
    }

    /// Writes `new` if the stored record is still `previous` (compare-and-swap on the version), with its
    /// schedule and index changes.
    pub async fn put(&self, previous: Option<&Session>, new: &Session) -> Result<(), StoreError> {
        match self {
            Self::Sled(s) => s.put(previous, new),
            Self::Postgres(p) => p.put(previous, new).await,
        }
    }

    /// Removes a tombstone if it is still `previous`.
    pub async fn delete(&self, previous: &Session) -> Result<(), StoreError> {
        match self {
            Self::Sled(s) => s.delete(previous),
            Self::Postgres(p) => p.delete(previous).await,
        }
    }

    /// Removes a record that cannot be decoded.
    pub async fn purge_corrupt(&self, key: &SessionKey) -> Result<(), StoreError> {
        match self {
            Self::Sled(s) => s.purge_corrupt(key),
            Self::Postgres(p) => p.purge_corrupt(key).await,
        }
    }

    pub async fn keys_of_user(&self, user: &str) -> Result<Vec<SessionKey>, StoreError> {
        match self {
            Self::Sled(s) => s.keys_of_user(user),
            Self::Postgres(p) => p.keys_of(postgres::Index::User(user)).await,
        }
    }

    pub async fn keys_of_sid(&self, iss: &str, sid: &str) -> Result<Vec<SessionKey>, StoreError> {
        match self {
            Self::Sled(s) => s.keys_of_sid(iss, sid),
            Self::Postgres(p) => p.keys_of(postgres::Index::Sid { iss, sid }).await,
        }
    }

    pub async fn keys_of_sub(&self, iss: &str, sub: &str) -> Result<Vec<SessionKey>, StoreError> {
        match self {
            Self::Sled(s) => s.keys_of_sub(iss, sub),
            Self::Postgres(p) => p.keys_of(postgres::Index::Sub { iss, sub }).await,
        }
    }

    /// Keys whose scheduled event is at or before `now`, at most `limit`, earliest first. With PostgreSQL
    /// the keys are claimed for this replica until they are written or the claim lapses, so replicas share
    /// the work instead of doing it twice.
    pub async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<SessionKey>, StoreError> {
        match self {
            Self::Sled(s) => s.due(now, limit),
            Self::Postgres(p) => p.due(now, limit).await,
        }
    }

    /// Gives back due keys a pass claimed and did not write (PostgreSQL; sled claims nothing), so the next
    /// pass of any replica sees them again.
    pub async fn release(&self, keys: &[SessionKey]) -> Result<(), StoreError> {
        match self {
            Self::Sled(_) => Ok(()),
            Self::Postgres(p) => p.release(keys).await,
        }
    }

    /// Drops schedule entries whose record is gone (sled keeps its schedule apart from the records).
    pub async fn unschedule(&self, at_or_before: Timestamp, key: &SessionKey) -> Result<(), StoreError> {
        match self {
            Self::Sled(s) => s.unschedule(at_or_before, key),
            Self::Postgres(_) => Ok(()),
        }
    }

    /// Waits until every write so far is durable (PostgreSQL commits are).
    pub async fn flush(&self) -> Result<(), StoreError> {
        match self {
            Self::Sled(s) => s.flush().await,
            Self::Postgres(_) => Ok(()),
        }
    }

    pub async fn put_login(&self, key: &[u8; 32], value: &[u8], expires_ms: u64) -> Result<(), StoreError> {
        match self {
            Self::Sled(s) => s.put_login(key, value, expires_ms),
            Self::Postgres(p) => p.put_login(key, value, expires_ms).await,
        }
    }

    /// Removes and returns a pending login: of two concurrent takes, one gets it.
    pub async fn take_login(&self, key: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::Sled(s) => s.take_login(key),
            Self::Postgres(p) => p.take_login(key).await,
        }
    }

    /// Drops expired pending logins (`expired` reads sled's stored value; PostgreSQL keeps the expiry).
    pub async fn sweep_logins(&self, now_ms: u64, expired: impl Fn(&[u8]) -> bool) -> Result<(), StoreError> {
        match self {
            Self::Sled(s) => s.sweep_logins(expired),
            Self::Postgres(p) => p.sweep_logins(now_ms).await,
        }
    }

    /// Records a logout token's `jti`; `false` if any replica saw it before.
    pub async fn remember_jti(&self, jti: &str, exp: u64) -> Result<bool, StoreError> {
        match self {
            Self::Sled(s) => s.remember_jti(jti, exp),
            Self::Postgres(p) => p.remember_jti(jti, exp).await,
        }
    }
}

/// Decoded records by key and version. A backend still reads the stored version on every `get` and uses an
/// entry only while it is exactly what is stored; it saves the decode and the token decryption.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    entries: RwLock<HashMap<SessionKey, (u64, Arc<Session>)>>,
}

/// Decoded records kept, at most (about 2.5 KB each).
const DECODED_CAPACITY: usize = 10_000;

impl Decoded {
    pub(crate) fn get(&self, key: &SessionKey, version: u64) -> Option<Arc<Session>> {
        let cache = self.entries.read().ok()?;
        cache.get(key).filter(|(v, _)| *v == version).map(|(_, s)| s.clone())
    }

    pub(crate) fn insert(&self, key: SessionKey, version: u64, session: Arc<Session>) {
        if let Ok(mut cache) = self.entries.write() {
            if cache.len() >= DECODED_CAPACITY
                && let Some(evict) = cache.keys().next().copied()
            {
                cache.remove(&evict);
            }
            cache.insert(key, (version, session));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_or_say_what_is_expected() {
        assert_eq!(Location::parse("sled:/tmp/x"), Ok(Location::Sled("/tmp/x".into())));
        assert!(matches!(Location::parse("postgres://bff:pw@127.0.0.1/bff"), Ok(Location::Postgres(_))));
        assert!(Location::parse("sled:").is_err());
        assert!(Location::parse("mysql://x").unwrap_err().contains("sled:PATH"));
        assert!(Location::parse("postgres://x:y@/db?sslmode=bogus").is_err());
    }
}
