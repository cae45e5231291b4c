//! The CSRF proof: a value the page must echo in a header on every unsafe request.
//!
//! Owns deriving and checking the proof. The proof is an HMAC of a fixed label under the session ID as key,
//! so it is bound to that one session (a proof from another session, or an earlier one of the same user,
//! fails), it cannot be chosen by the client (an equal cookie/header pair of the attacker's making fails),
//! and it reveals nothing about the ID. The check is constant-time. It never looks at the CSRF cookie: the
//! cookie only carries the proof to the page's script.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::id::SessionId;

const LABEL: &[u8] = b"bff-session/v1/csrf";
/// Length of a proof: unpadded base64url of 32 bytes.
pub const PROOF_LEN: usize = 43;

/// Why an unsafe request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsrfError {
    /// No proof header.
    Missing,
    /// A proof that is not this session's.
    Mismatch,
}

impl fmt::Display for CsrfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("unsafe request without a CSRF proof"),
            Self::Mismatch => f.write_str("CSRF proof does not belong to this session"),
        }
    }
}

impl std::error::Error for CsrfError {}

fn mac(id: &SessionId) -> Hmac<Sha256> {
    // HMAC zero-pads a short key to the block size, so this is HMAC keyed by the ID itself, through the
    // infallible fixed-size constructor.
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(id.as_bytes());
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&key.into());
    mac.update(LABEL);
    mac
}

/// The proof for a session, as sent in the CSRF cookie and returned by the session endpoint.
pub fn proof_for(id: &SessionId) -> String {
    URL_SAFE_NO_PAD.encode(mac(id).finalize().into_bytes())
}

/// Checks a presented proof against the session, in constant time.
pub fn verify(id: &SessionId, presented: Option<&str>) -> Result<(), CsrfError> {
    let presented = presented.ok_or(CsrfError::Missing)?;
    let mut bytes = [0u8; 32];
    let decoded = presented.len() == PROOF_LEN
        && matches!(URL_SAFE_NO_PAD.decode_slice(presented.as_bytes(), &mut bytes), Ok(32));
    // Malformed proofs still go through the comparison, so timing says nothing about the format check.
    let matches = mac(id).verify_slice(&bytes).is_ok();
    if decoded && matches { Ok(()) } else { Err(CsrfError::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> SessionId {
        SessionId::from_random_bytes([n; 32])
    }

    #[test]
    fn a_sessions_own_proof_verifies() {
        assert_eq!(verify(&id(1), Some(&proof_for(&id(1)))), Ok(()));
        assert_eq!(proof_for(&id(1)).len(), PROOF_LEN);
    }

    #[test]
    fn a_proof_from_another_session_fails() {
        assert_eq!(verify(&id(1), Some(&proof_for(&id(2)))), Err(CsrfError::Mismatch));
    }

    #[test]
    fn missing_and_malformed_proofs_fail() {
        assert_eq!(verify(&id(1), None), Err(CsrfError::Missing));
        assert_eq!(verify(&id(1), Some("")), Err(CsrfError::Mismatch));
        assert_eq!(verify(&id(1), Some("not base64 at all, but 43 characters long!!")), Err(CsrfError::Mismatch));
        let mut long = proof_for(&id(1));
        long.push('A');
        assert_eq!(verify(&id(1), Some(&long)), Err(CsrfError::Mismatch));
    }

    #[test]
    fn the_proof_does_not_contain_the_id() {
        assert_ne!(proof_for(&id(3)), id(3).encode());
    }
}
