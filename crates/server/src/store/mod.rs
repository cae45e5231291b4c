//! Where session records live: sled on one machine, or PostgreSQL shared by several replicas.
//!
//! Owns the [`Store`] trait, the choice of backend (`--store sled:PATH` or `--store postgres://…`), the
//! error type, and the operations every backend provides: compare-and-swap writes on a record's version, index lookups by
//! user, `(iss, sid)` and `(iss, sub)`, the schedule of due records, pending logins and seen logout-token
//! IDs. It never decides anything about a session: the transitions come from core.

mod maintenance;
mod memory;
mod notices;
mod postgres;
mod sled;
mod timed;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bff_session_core::login::LoginDecodeError;
use bff_session_core::record::DecodeError;
use bff_session_core::{Effect, LoginKey, Lookup, PendingLogin, Policy, Session, SessionKey, Timestamp};

pub use self::maintenance::{Maintenance, Progress, Resealed, Scanned, VerifyReport};
pub use self::memory::MemoryStore;
pub use self::postgres::PgStore;
pub use self::sled::SledStore;
pub use self::timed::Timed;
use crate::seal::TokenSealer;

/// Why a store operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The disk, sled or the database failed; the operation may be retried.
    Io(String),
    /// The record changed since it was read; re-read and try again.
    Conflict,
    /// A stored record does not decode.
    Corrupt { key: SessionKey, error: DecodeError },
    /// A stored pending login does not decode.
    CorruptLogin(LoginDecodeError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "session store unavailable: {e}"),
            Self::Conflict => f.write_str("session record changed concurrently"),
            Self::Corrupt { key, error } => write!(f, "session record {key} is corrupt: {error}"),
            Self::CorruptLogin(error) => write!(f, "a pending login is corrupt: {error}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Why a `--store` value names no backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocationError {
    /// `sled:` with no folder after it.
    NoSledFolder,
    /// A `postgres://` URL that `tokio-postgres` does not accept.
    InvalidPostgresUrl(String),
    /// Neither `sled:` nor a PostgreSQL URL.
    UnknownScheme,
}

impl fmt::Display for LocationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSledFolder => f.write_str("sled: needs a folder, as in sled:/var/lib/bff-session/sessions.sled"),
            Self::InvalidPostgresUrl(e) => write!(f, "invalid PostgreSQL URL: {e}"),
            Self::UnknownScheme => f.write_str("use sled:PATH or postgres://USER:PASSWORD@HOST/DB"),
        }
    }
}

impl std::error::Error for LocationError {}

/// Which backend, from `--store`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Sled(PathBuf),
    /// A `postgres://` or `postgresql://` connection URL.
    Postgres(String),
}

impl Location {
    /// `sled:PATH` or a PostgreSQL URL.
    pub fn parse(s: &str) -> Result<Self, LocationError> {
        if let Some(path) = s.strip_prefix("sled:") {
            if path.is_empty() {
                return Err(LocationError::NoSledFolder);
            }
            return Ok(Self::Sled(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<tokio_postgres::Config>().map_err(|e| LocationError::InvalidPostgresUrl(e.to_string()))?;
            return Ok(Self::Postgres(s.to_owned()));
        }
        Err(LocationError::UnknownScheme)
    }
}

/// The session store: what the service needs from a backend. See the module docs.
///
/// Writes are compare-and-swap on a record's version; a backend keeps its indexes and schedule in step with
/// the record in the same atomic write. Nothing here decides about a session: the service runs core's
/// transitions and calls [`Store::put`] or [`Store::delete`] because an effect says so.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// The record under `key`. A write by any replica is seen at once: the backend is asked, or a copy that is
    /// exact (sled's, as every write to it is this process's own and drops what it changes).
    async fn get(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError>;

    /// The record under `key`, for a check that writes nothing (a request's authentication). It is
    /// [`Store::get`] unless the backend keeps a copy that change notices keep true (PostgreSQL with
    /// `--postgres-cache`): then a change made by another replica is seen once its notice arrives, not at
    /// once. Every write still starts from [`Store::get`].
    async fn get_for_check(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        self.get(key).await
    }

    /// Writes `new` if the stored record is still `previous` (absent, for `None`), with its schedule and
    /// index changes; [`StoreError::Conflict`] otherwise.
    async fn put(&self, previous: Option<&Session>, new: &Session) -> Result<(), StoreError>;

    /// Removes the record if it is still `previous`, with its schedule and index entries.
    async fn delete(&self, previous: &Session) -> Result<(), StoreError>;

    /// Removes whatever is stored under `key` (bytes that do not decode, or nothing) and any schedule
    /// entry for it due by `now`.
    async fn purge(&self, key: &SessionKey, now: Timestamp) -> Result<(), StoreError>;

    /// Carries out `writes`, each as [`Store::put`], [`Store::delete`] or [`Store::purge`] would, and
    /// answers each one's result in order. A backend may commit them together (sled does, sixteen to a
    /// transaction), so a background pass costs a few commits instead of one per record; a conflict on any
    /// record must still leave the others written and answer [`StoreError::Conflict`] for that one alone.
    async fn write_all(&self, writes: &[Write<'_>]) -> Vec<Result<(), StoreError>> {
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(write.to(self).await);
        }
        results
    }

    /// The keys of the active sessions a lookup names.
    async fn keys(&self, lookup: &Lookup) -> Result<Vec<SessionKey>, StoreError>;

    /// Keys whose scheduled event is at or before `now`, at most `limit`, earliest first. They are claimed
    /// for the caller until written, deleted or [released](Store::release), so two passes (threads or
    /// replicas) never visit one record at once.
    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<SessionKey>, StoreError>;

    /// Gives back claimed keys, so the next pass of anyone sees those still due.
    async fn release(&self, keys: &[SessionKey]) -> Result<(), StoreError>;

    /// Waits until every write so far is durable.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Saves a pending login under the key its cookie names, then evicts the oldest so that at most
    /// `capacity` stay (core's [`LoginPolicy::capacity`](bff_session_core::LoginPolicy)); how many it evicted.
    async fn put_login(&self, key: &LoginKey, login: &PendingLogin, capacity: usize) -> Result<usize, StoreError>;

    /// Removes and returns a pending login: of two concurrent takes, one gets it.
    async fn take_login(&self, key: &LoginKey) -> Result<Option<PendingLogin>, StoreError>;

    /// Drops the pending logins whose lifetime is over at `now` ([`PendingLogin::is_over`]), reading only
    /// those; how many it dropped.
    async fn sweep_logins(&self, now: Timestamp) -> Result<usize, StoreError>;

    /// Whether a logout token's `jti` has been recorded.
    async fn jti_seen(&self, jti: &str) -> Result<bool, StoreError>;

    /// Forgets the `jti`s of tokens that expired before `exp` (Unix seconds), without reading the others.
    async fn sweep_jtis(&self, exp: u64) -> Result<usize, StoreError>;

    /// Records a logout token's `jti` until `exp`; `false` if anyone recorded it before.
    async fn remember_jti(&self, jti: &str, exp: u64) -> Result<bool, StoreError>;
}

/// One write of a batch for [`Store::write_all`].
#[derive(Clone, Copy, Debug)]
pub enum Write<'a> {
    /// [`Store::put`].
    Put { previous: Option<&'a Session>, new: &'a Session },
    /// [`Store::delete`].
    Delete { previous: &'a Session },
    /// [`Store::purge`].
    Purge { key: SessionKey, now: Timestamp },
}

impl<'a> Write<'a> {
    /// The store effects of a transition on the record under `key`: at most one write of the record as it
    /// is now, or its removal, as its [`Effect::Persist`] or [`Effect::Delete`] says.
    pub fn of_effects(
        key: SessionKey,
        previous: Option<&'a Session>,
        current: Option<&'a Session>,
        effects: &[Effect],
        now: Timestamp,
    ) -> Option<Self> {
        let persist = effects.iter().any(|e| matches!(e, Effect::Persist { key: k, .. } if *k == key));
        let delete = effects.iter().any(|e| matches!(e, Effect::Delete { key: k } if *k == key));
        match (previous, current) {
            (Some(previous), _) if delete => Some(Self::Delete { previous }),
            (None, _) if delete => Some(Self::Purge { key, now }),
            (_, Some(new)) if persist => Some(Self::Put { previous, new }),
            _ => None,
        }
    }

    /// Carries out this write alone on `store`.
    pub async fn to<S: Store + ?Sized>(&self, store: &S) -> Result<(), StoreError> {
        match *self {
            Self::Put { previous, new } => store.put(previous, new).await,
            Self::Delete { previous } => store.delete(previous).await,
            Self::Purge { key, now } => store.purge(&key, now).await,
        }
    }
}

/// Opens the backend at `location`; for PostgreSQL this applies the schema migrations.
pub async fn open(
    location: &Location,
    sealer: TokenSealer,
    policy: Policy,
    cache_bytes: u64,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match location {
        Location::Sled(path) => Arc::new(SledStore::open(path, sealer, policy, cache_bytes)?),
        Location::Postgres(url) => Arc::new(PgStore::connect(url, sealer, policy, cache_bytes).await?),
    })
}

/// Opens the backend at `location` for `bff-session admin`.
pub async fn open_for_maintenance(
    location: &Location,
    sealer: TokenSealer,
    policy: Policy,
    cache_bytes: u64,
) -> Result<Arc<dyn Maintenance>, StoreError> {
    Ok(match location {
        Location::Sled(path) => Arc::new(SledStore::open(path, sealer, policy, cache_bytes)?),
        Location::Postgres(url) => Arc::new(PgStore::connect(url, sealer, policy, cache_bytes).await?),
    })
}

/// Decoded records by key and version, for PostgreSQL's strict mode: it still reads the stored version on
/// every `get` and uses an entry only while it is exactly what is stored, which saves the decode and the
/// token decryption. (sled's copy is exact and needs no version check: see `notices`.)
#[derive(Debug)]
pub(crate) struct Decoded {
    entries: RwLock<HashMap<SessionKey, (u64, Arc<Session>)>>,
    capacity: usize,
}

/// What one decoded record costs in memory, about: an OIDC session with its tokens, and its place in a map.
const RECORD_BYTES: u64 = 2_560;

/// A `--cache-mb` budget split between two caches, the odd byte to the second.
pub fn halves(bytes: u64) -> (u64, u64) {
    let first = bytes / 2;
    (first, bytes - first)
}

/// How many decoded records `bytes` of the `--cache-mb` budget hold.
pub(crate) fn records_in(bytes: u64) -> usize {
    usize::try_from(bytes / RECORD_BYTES).unwrap_or(usize::MAX)
}

impl Decoded {
    /// Keeps at most `capacity` records; none for 0.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self { entries: RwLock::default(), capacity }
    }

    pub(crate) fn get(&self, key: &SessionKey, version: u64) -> Option<Arc<Session>> {
        let cache = self.entries.read().ok()?;
        cache.get(key).filter(|(v, _)| *v == version).map(|(_, s)| s.clone())
    }

    /// The version decoded under `key`, if any.
    pub(crate) fn version_of(&self, key: &SessionKey) -> Option<u64> {
        self.entries.read().ok()?.get(key).map(|(v, _)| *v)
    }

    pub(crate) fn insert(&self, key: SessionKey, version: u64, session: Arc<Session>) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut cache) = self.entries.write() {
            if cache.len() >= self.capacity
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
        assert_eq!(Location::parse("sled:"), Err(LocationError::NoSledFolder));
        assert_eq!(Location::parse("mysql://x"), Err(LocationError::UnknownScheme));
        assert!(Location::parse("postgres://x:y@/db?sslmode=bogus").is_err());
    }
}
