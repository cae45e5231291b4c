//! The stored form of a session record, and decoding it from untrusted bytes.
//!
//! Owns the byte format: a magic tag, a format version, the record without its tokens, and the tokens
//! sealed by a [`Sealer`] the shell provides (an AEAD with a random nonce in the server), bound to the
//! record's key so sealed tokens cannot be moved to another record. Decoding any byte string gives a record
//! or a [`DecodeError`], never a panic, and a decoded record satisfies the invariants the transitions rely on.
//! It never encrypts anything itself: sealing needs randomness, which belongs to the shell.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::session::{Provider, Session, State, Tokens};

const MAGIC: &[u8; 4] = b"BFFS";
const FORMAT: u8 = 1;

/// Seals token plaintext for storage and opens it again.
pub trait Sealer {
    /// Encrypts and authenticates `plaintext`, bound to `context`.
    fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8>;
    /// Reverses [`Sealer::seal`]; fails when the bytes or the context are not what was sealed.
    fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError>;
}

/// Sealed bytes that do not open: wrong key, wrong context, or tampering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealError;

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sealed tokens do not open with this key")
    }
}

impl std::error::Error for SealError {}

/// Stores tokens in the clear. Only for tests and fuzzing, where the format, not secrecy, is under test.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unsealed;

impl Sealer for Unsealed {
    fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        [context, plaintext].concat()
    }

    fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        sealed.strip_prefix(context).map(<[u8]>::to_vec).ok_or(SealError)
    }
}

/// Why stored bytes are not a record.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes do not start with the record tag.
    NotARecord,
    /// A format this build does not know (written by a newer version).
    UnknownFormat { found: u8 },
    /// The bytes are cut short or malformed.
    Malformed { detail: String },
    /// The tokens do not open.
    Seal(SealError),
    /// The record decodes but breaks an invariant.
    Inconsistent { what: &'static str },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotARecord => f.write_str("not a session record (bad tag)"),
            Self::UnknownFormat { found } => write!(f, "unknown record format {found} (this build reads {FORMAT})"),
            Self::Malformed { detail } => write!(f, "malformed record: {detail}"),
            Self::Seal(e) => write!(f, "record tokens: {e}"),
            Self::Inconsistent { what } => write!(f, "inconsistent record: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

#[derive(Serialize)]
struct WireRef<'a> {
    session: &'a Session,
    tokens: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct Wire {
    session: Session,
    tokens: Option<Vec<u8>>,
}

/// The stored bytes of a record.
pub fn encode(session: &Session, sealer: &dyn Sealer) -> Vec<u8> {
    let context = session.key.as_bytes();
    let tokens = session.tokens.as_ref().map(|t| sealer.seal(&to_bytes(t), context));
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&to_bytes(&WireRef { session, tokens }));
    out
}

fn to_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard only fails on types it cannot represent (maps with unknown length, etc.); ours are plain.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// A record from stored bytes, checked.
pub fn decode(bytes: &[u8], sealer: &dyn Sealer) -> Result<Session, DecodeError> {
    let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or(DecodeError::NotARecord)?;
    let (&format, body) = rest.split_first().ok_or(DecodeError::Malformed { detail: "no format byte".into() })?;
    if format != FORMAT {
        return Err(DecodeError::UnknownFormat { found: format });
    }
    let (wire, trailing): (Wire, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed { detail: e.to_string() })?;
    if !trailing.is_empty() {
        return Err(DecodeError::Malformed { detail: format!("{} trailing bytes", trailing.len()) });
    }
    let mut session = wire.session;
    if let Some(sealed) = wire.tokens {
        let plain = sealer.open(&sealed, session.key.as_bytes()).map_err(DecodeError::Seal)?;
        let tokens: Tokens =
            postcard::from_bytes(&plain).map_err(|e| DecodeError::Malformed { detail: format!("tokens: {e}") })?;
        session.tokens = Some(tokens);
    }
    check(&session)?;
    Ok(session)
}

fn check(s: &Session) -> Result<(), DecodeError> {
    let inconsistent = |what| Err(DecodeError::Inconsistent { what });
    if s.version == 0 {
        return inconsistent("version 0");
    }
    if s.absolute_deadline < s.created_at {
        return inconsistent("absolute deadline before creation");
    }
    if s.last_used_at < s.created_at {
        return inconsistent("last use before creation");
    }
    if s.tokens.is_some() && (!s.is_active() || matches!(s.provider, Provider::Local)) {
        return inconsistent("tokens on a local session or a tombstone");
    }
    if s.state != State::Active && s.refresh.lease.is_some() {
        return inconsistent("refresh lease on a tombstone");
    }
    if s.refresh.lease.is_some_and(|l| l.generation != s.refresh.generation) {
        return inconsistent("lease generation is not the last issued");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ended::RevocationReason;
    use crate::lifecycle;
    use crate::refresh::Lease;
    use crate::testing::{grant, identity, sign_in};
    use crate::{Policy, Timestamp};

    fn oidc_session() -> Session {
        let new = sign_in(4, identity(), grant());
        lifecycle::create(&new, Timestamp::from_millis(1_000_000), &Policy::hardened()).outcome
    }

    fn decoded(s: &Session) -> Result<Session, DecodeError> {
        decode(&encode(s, &Unsealed), &Unsealed)
    }

    fn inconsistent(what: &'static str) -> Result<Session, DecodeError> {
        Err(DecodeError::Inconsistent { what })
    }

    /// A record that decodes but breaks a rule the transitions rely on is refused, each for its own reason;
    /// the boundary cases that are consistent decode.
    #[test]
    fn inconsistent_records_are_refused() {
        let fresh = oidc_session();
        assert_eq!(decoded(&fresh), Ok(fresh.clone()));

        let s = Session { version: 0, ..fresh.clone() };
        assert_eq!(decoded(&s), inconsistent("version 0"));

        let earlier = Timestamp::from_millis(fresh.created_at.as_millis() - 1);
        let s = Session { absolute_deadline: earlier, ..fresh.clone() };
        assert_eq!(decoded(&s), inconsistent("absolute deadline before creation"));
        let s = Session { absolute_deadline: fresh.created_at, ..fresh.clone() };
        assert_eq!(decoded(&s), Ok(s.clone()), "a deadline at creation is odd but consistent");

        let s = Session { last_used_at: earlier, ..fresh.clone() };
        assert_eq!(decoded(&s), inconsistent("last use before creation"));

        let tombstone = State::Revoked { at: fresh.created_at, reason: RevocationReason::Logout };
        let s = Session { state: tombstone, ..fresh.clone() };
        assert_eq!(decoded(&s), inconsistent("tokens on a local session or a tombstone"));
        let s = Session { provider: Provider::Local, ..fresh.clone() };
        assert_eq!(decoded(&s), inconsistent("tokens on a local session or a tombstone"));

        let lease = Some(Lease { generation: 1, expires_at: fresh.created_at });
        let mut s = Session { state: tombstone, tokens: None, ..fresh.clone() };
        s.refresh.generation = 1;
        s.refresh.lease = lease;
        assert_eq!(decoded(&s), inconsistent("refresh lease on a tombstone"));
        let mut s = fresh.clone();
        s.refresh.generation = 2;
        s.refresh.lease = lease;
        assert_eq!(decoded(&s), inconsistent("lease generation is not the last issued"));
    }
}
