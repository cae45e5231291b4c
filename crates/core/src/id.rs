//! Session identifiers and the secrets derived from them.
//!
//! Owns [`SessionId`] (the 256-bit secret in the browser's cookie), [`SessionKey`] (its SHA-256, the only form
//! that is stored or logged), [`Handle`] (a non-secret name for one session in a device list) and [`Secret`]
//! (a string that never prints). It must never generate an ID: the caller draws the bytes from the OS CSPRNG
//! and passes them in, which keeps core deterministic.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes of entropy in a session ID.
pub const SESSION_ID_BYTES: usize = 32;
/// Length of a session ID as it appears in a cookie (unpadded base64url of 32 bytes).
pub const SESSION_ID_ENCODED_LEN: usize = 43;

const KEY_DOMAIN: &[u8] = b"bff-session/v1/store-key\0";
const HANDLE_DOMAIN: &[u8] = b"bff-session/v1/handle\0";

/// The secret a browser presents. Never stored, never logged, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId([u8; SESSION_ID_BYTES]);

/// Why a cookie value is not a session ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionIdError {
    /// The value is not 43 characters long.
    Length { found: usize },
    /// The value is not unpadded base64url, or not canonically so.
    Encoding,
}

impl fmt::Display for SessionIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { found } => {
                write!(f, "session id must be {SESSION_ID_ENCODED_LEN} characters, found {found}")
            }
            Self::Encoding => f.write_str("session id is not canonical unpadded base64url"),
        }
    }
}

impl std::error::Error for SessionIdError {}

impl SessionId {
    /// Wraps bytes that the caller drew from the OS CSPRNG.
    pub const fn from_random_bytes(bytes: [u8; SESSION_ID_BYTES]) -> Self {
        Self(bytes)
    }

    /// Parses the value of a session cookie.
    pub fn decode(value: &str) -> Result<Self, SessionIdError> {
        if value.len() != SESSION_ID_ENCODED_LEN {
            return Err(SessionIdError::Length { found: value.len() });
        }
        let mut out = [0u8; SESSION_ID_BYTES];
        // The engine refuses non-canonical trailing bits, so every ID has exactly one spelling.
        match URL_SAFE_NO_PAD.decode_slice(value.as_bytes(), &mut out) {
            Ok(SESSION_ID_BYTES) => Ok(Self(out)),
            _ => Err(SessionIdError::Encoding),
        }
    }

    /// The cookie value: unpadded base64url.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; SESSION_ID_BYTES] {
        &self.0
    }

    /// The store key: what the server persists and logs instead of the ID.
    pub fn key(&self) -> SessionKey {
        SessionKey(domain_hash(KEY_DOMAIN, &self.0))
    }

    /// The non-secret handle shown in device lists.
    pub fn handle(&self) -> Handle {
        let full = domain_hash(HANDLE_DOMAIN, &self.0);
        let mut short = [0u8; 16];
        short.copy_from_slice(&full[..16]);
        Handle(short)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.key())
    }
}

fn domain_hash(domain: &[u8], bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(bytes);
    h.finalize().into()
}

/// SHA-256 of a session ID under a domain tag: the store key and the name used in logs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for SessionKey {
    /// The first 12 bytes in hex: enough to correlate log lines, short enough to read.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..12] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({self})")
    }
}

/// A non-secret name for a session, safe to show to its user (in the device list) and to put in a URL.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Handle([u8; 16]);

impl Handle {
    /// Parses the URL form produced by `Display`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        match URL_SAFE_NO_PAD.decode_slice(s.as_bytes(), &mut out) {
            // Only 22 unpadded characters decode to exactly 16 bytes; padding is refused by the engine.
            Ok(16) => Some(Self(out)),
            _ => None,
        }
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({self})")
    }
}

/// A token or other secret string. `Debug` and `Display` never show it; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it (the IdP or the upstream API).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_cookie_form() {
        let id = SessionId::from_random_bytes([7; 32]);
        let encoded = id.encode();
        assert_eq!(encoded.len(), SESSION_ID_ENCODED_LEN);
        assert_eq!(SessionId::decode(&encoded), Ok(id.clone()));
        assert_eq!(id.key(), SessionId::decode(&encoded).map(|i| i.key()).unwrap_or(SessionKey([0; 32])));
    }

    #[test]
    fn malformed_ids_are_refused_with_the_reason() {
        assert_eq!(SessionId::decode(""), Err(SessionIdError::Length { found: 0 }));
        assert_eq!(SessionId::decode(&"a".repeat(44)), Err(SessionIdError::Length { found: 44 }));
        assert_eq!(SessionId::decode(&"*".repeat(43)), Err(SessionIdError::Encoding));
        // 43 characters whose last one carries non-zero padding bits: a second spelling of some ID.
        let canonical = SessionId::from_random_bytes([0; 32]).encode();
        let mut twin = canonical[..42].to_string();
        twin.push('B');
        assert_eq!(SessionId::decode(&twin), Err(SessionIdError::Encoding));
    }

    #[test]
    fn key_and_handle_are_distinct_hashes_and_never_the_id() {
        let id = SessionId::from_random_bytes([1; 32]);
        assert_ne!(id.key().as_bytes()[..16], id.handle().0);
        assert_ne!(id.key().as_bytes(), id.as_bytes());
        assert!(!format!("{id:?}").contains(&id.encode()));
        assert_eq!(Handle::parse(&id.handle().to_string()), Some(id.handle()));
        assert_eq!(Handle::parse("short"), None);
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("eyJhbGciOi.secret");
        assert_eq!(format!("{s:?}"), "Secret(<17 bytes>)");
    }

    /// Debug output is for logs: it shows the key (a hash), never the ID a browser holds.
    #[test]
    fn debug_shows_the_key_not_the_id() {
        let id = SessionId::from_random_bytes([9; 32]);
        let shown = format!("{id:?}");
        assert_eq!(shown, format!("SessionId({})", id.key()));
        assert!(!shown.contains(&id.encode()));
        let key = SessionKey::from_bytes([0xab; 32]);
        assert_eq!(key.to_string(), "ab".repeat(12), "the first 12 bytes, in hex");
    }

    #[test]
    fn handles_parse_only_their_own_form() {
        let handle = SessionId::from_random_bytes([3; 32]).handle();
        let shown = handle.to_string();
        assert_eq!(shown.len(), 22);
        assert_eq!(Handle::parse(&shown), Some(handle));
        assert_eq!(format!("{handle:?}"), format!("Handle({shown})"));
        for other in [&shown[..21], &format!("{shown}A"), &format!("{shown}AA"), &format!("{shown}=="), ""] {
            assert_eq!(Handle::parse(other), None, "{other:?}");
        }
        let key = SessionKey::from_bytes([0x01; 32]);
        assert_eq!(format!("{key:?}"), format!("SessionKey({})", "01".repeat(12)));
    }
}
