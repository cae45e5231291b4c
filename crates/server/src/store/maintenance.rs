//! What an operator's tools need from a backend beyond serving: scanning every record, checking the indexes
//! against the records, and re-sealing tokens under a new key.
//!
//! Owns the [`Maintenance`] trait and its reports. The server never scans; only `bff-session admin` does.
//! Nothing here decides about a session either: revocations go through the service and core.

use async_trait::async_trait;
use bff_session_core::record::DecodeError;
use bff_session_core::{Session, SessionKey};

use super::{Store, StoreError};

/// A stored record as a scan finds it: decoded, or why not.
#[derive(Debug)]
pub struct Scanned {
    pub key: SessionKey,
    pub record: Result<Session, DecodeError>,
}

/// What [`Maintenance::verify`] found, and with `repair`, put right.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// Records whose bytes are not a record this build reads; `repair` removes them.
    pub corrupt: Vec<SessionKey>,
    /// Records whose tokens do not open with the keys given: a wrong `--key-file` rather than damage, so
    /// `repair` never removes them.
    pub unreadable: Vec<SessionKey>,
    /// Index or schedule entries that name no record, or describe their record wrongly; `repair` removes or
    /// corrects them.
    pub stray_entries: u64,
    /// Index or schedule entries a record needs and the store lacks; `repair` adds them.
    pub missing_entries: u64,
    /// Whether the findings were repaired.
    pub repaired: bool,
}

impl VerifyReport {
    /// Nothing wrong, or everything wrong was repaired (records the key does not open are never repaired).
    pub fn is_clean(&self) -> bool {
        self.unreadable.is_empty()
            && (self.repaired || (self.corrupt.is_empty() && self.stray_entries == 0 && self.missing_entries == 0))
    }

    /// Sorts a record that does not decode into damage or a key problem.
    pub(crate) fn undecodable(&mut self, key: SessionKey, error: &DecodeError) {
        match error {
            DecodeError::Seal(_) => self.unreadable.push(key),
            _ => self.corrupt.push(key),
        }
    }
}

/// What [`Maintenance::reseal`] did to one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resealed {
    /// Its tokens were already sealed under the current key (or it holds none).
    Current,
    /// Re-sealed under the current key, its version and everything else unchanged.
    Resealed,
    /// No record under that key any more.
    Gone,
}

/// Called with the count of items done so far, for a progress bar.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// The operator's view of a backend; see the module docs.
#[async_trait]
pub trait Maintenance: Store {
    /// Up to `limit` records after `after` (from the first, for `None`), in key order.
    async fn scan(&self, after: Option<SessionKey>, limit: usize) -> Result<Vec<Scanned>, StoreError>;

    /// Records held, tombstones included.
    async fn count(&self) -> Result<u64, StoreError>;

    /// Bytes the backend takes on disk for sessions, pending logins and seen `jti`s.
    async fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// Decodes every record and checks every index and schedule entry against its record; with `repair`,
    /// removes corrupt records and stray entries and adds missing ones.
    async fn verify(&self, repair: bool, progress: Progress<'_>) -> Result<VerifyReport, StoreError>;

    /// Re-seals the record's tokens under the sealer's current key if an earlier key sealed them. A
    /// compare-and-swap on the stored bytes: a concurrent write wins and this answers
    /// [`StoreError::Conflict`], to be retried.
    async fn reseal(&self, key: &SessionKey) -> Result<Resealed, StoreError>;
}
