//! Encryption of tokens at rest.
//!
//! Owns the AEAD key file and the [`Sealer`] that core's record codec calls: XChaCha20-Poly1305 with a
//! random 192-bit nonce per record, the record's key as associated data. A sealer seals with its current key
//! and opens with it or with any earlier key it was given, so a key rotation never makes a record unreadable.
//! It never sees a record, only token bytes.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bff_session_core::record::{SealError, Sealer};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngExt as _;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// Why the key file cannot be used. The I/O cause is kept as its text, so errors compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyFileError {
    Read {
        path: PathBuf,
        error: String,
    },
    Create {
        path: PathBuf,
        error: String,
    },
    Length {
        path: PathBuf,
        found: usize,
    },
    /// The file's group or others may read or write it: anyone on the machine could decrypt every token.
    Exposed {
        path: PathBuf,
        mode: u32,
    },
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, error } => write!(f, "cannot read key file {}: {error}", path.display()),
            Self::Create { path, error } => write!(f, "cannot create key file {}: {error}", path.display()),
            Self::Length { path, found } => {
                write!(f, "key file {} holds {found} bytes; it must hold exactly {KEY_LEN}", path.display())
            }
            Self::Exposed { path, mode } => write!(
                f,
                "key file {} has mode {mode:o}: its group or others may read it; make it private (chmod 600)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for KeyFileError {}

/// Seals tokens with a key from a file; opens them with that key or an earlier one.
pub struct TokenSealer {
    cipher: XChaCha20Poly1305,
    /// Keys rotated out (`--previous-key-file`): still accepted for reading, never for sealing.
    previous: Vec<XChaCha20Poly1305>,
}

impl fmt::Debug for TokenSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSealer(XChaCha20-Poly1305, {} previous keys)", self.previous.len())
    }
}

impl TokenSealer {
    pub fn from_key(key: [u8; KEY_LEN]) -> Self {
        Self { cipher: XChaCha20Poly1305::new(&key.into()), previous: Vec::new() }
    }

    /// The key at `current` (see [`TokenSealer::from_file`]), also opening what the keys at `previous` sealed.
    pub fn with_previous(current: &Path, create: bool, previous: &[PathBuf]) -> Result<Self, KeyFileError> {
        let mut sealer = Self::from_file(current, create)?;
        for path in previous {
            sealer = sealer.accepting(Self::from_file(path, false)?);
        }
        Ok(sealer)
    }

    /// Also opens what `earlier` sealed (its current and previous keys), while sealing with this one's key.
    pub fn accepting(mut self, earlier: Self) -> Self {
        self.previous.push(earlier.cipher);
        self.previous.extend(earlier.previous);
        self
    }

    /// This sealer without its previous keys: what opens with it was sealed under the current key.
    pub fn current_only(&self) -> CurrentKey<'_> {
        CurrentKey(self)
    }

    /// Loads the key at `path`, creating it (mode 0600, from the OS random source) if `create` and absent.
    /// A key file its group or others may read or write is refused.
    pub fn from_file(path: &Path, create: bool) -> Result<Self, KeyFileError> {
        match fs::read(path) {
            Ok(bytes) => {
                refuse_exposed(path)?;
                let key: [u8; KEY_LEN] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyFileError::Length { path: path.to_owned(), found: bytes.len() })?;
                Ok(Self::from_key(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key: [u8; KEY_LEN] = rand::rng().random();
                write_private(path, &key)
                    .map_err(|e| KeyFileError::Create { path: path.to_owned(), error: e.to_string() })?;
                Ok(Self::from_key(key))
            }
            Err(e) => Err(KeyFileError::Read { path: path.to_owned(), error: e.to_string() }),
        }
    }
}

#[cfg(unix)]
fn refuse_exposed(path: &Path) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(path)
        .map_err(|e| KeyFileError::Read { path: path.to_owned(), error: e.to_string() })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Exposed { path: path.to_owned(), mode: mode & 0o777 });
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_exposed(_: &Path) -> Result<(), KeyFileError> {
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl Sealer for TokenSealer {
    fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::rng().random();
        let sealed = self.cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: context });
        // Encryption only fails for messages beyond the cipher's limit (256 GiB); tokens are far smaller.
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed.unwrap_or_default());
        out
    }

    fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        std::iter::once(&self.cipher)
            .chain(&self.previous)
            .find_map(|c| open_with(c, sealed, context).ok())
            .ok_or(SealError)
    }
}

/// A [`TokenSealer`] that opens only what its current key sealed; see [`TokenSealer::current_only`].
#[derive(Debug)]
pub struct CurrentKey<'a>(&'a TokenSealer);

impl Sealer for CurrentKey<'_> {
    fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        self.0.seal(plaintext, context)
    }

    fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        open_with(&self.0.cipher, sealed, context)
    }
}

fn open_with(cipher: &XChaCha20Poly1305, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < NONCE_LEN {
        return Err(SealError);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: context }).map_err(|_| SealError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_with_their_context_and_key() {
        let a = TokenSealer::from_key([1; 32]);
        let sealed = a.seal(b"refresh-token", b"key-a");
        assert!(!sealed.windows(13).any(|w| w == b"refresh-token"));
        assert_eq!(a.open(&sealed, b"key-a"), Ok(b"refresh-token".to_vec()));
        assert_eq!(a.open(&sealed, b"key-b"), Err(SealError));
        assert_eq!(TokenSealer::from_key([2; 32]).open(&sealed, b"key-a"), Err(SealError));
        assert_eq!(a.open(&sealed[..10], b"key-a"), Err(SealError));
    }

    #[test]
    fn a_rotated_sealer_opens_old_and_new_but_seals_only_new() {
        let old = TokenSealer::from_key([1; 32]);
        let by_old = old.seal(b"t", b"k");
        let new = TokenSealer::from_key([2; 32]).accepting(TokenSealer::from_key([1; 32]));
        let by_new = new.seal(b"t", b"k");
        assert_eq!(new.open(&by_old, b"k"), Ok(b"t".to_vec()));
        assert_eq!(new.open(&by_new, b"k"), Ok(b"t".to_vec()));
        assert_eq!(new.current_only().open(&by_old, b"k"), Err(SealError));
        assert_eq!(new.current_only().open(&by_new, b"k"), Ok(b"t".to_vec()));
        assert_eq!(old.open(&by_new, b"k"), Err(SealError), "the new key sealed it");
        assert_eq!(new.open(&by_old, b"other"), Err(SealError));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        fs::write(&path, [7u8; 32]).unwrap();
        for (mode, refused) in [(0o644, true), (0o640, true), (0o602, true), (0o600, false), (0o400, false)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let result = TokenSealer::from_file(&path, false);
            assert_eq!(
                matches!(result, Err(KeyFileError::Exposed { mode: m, .. }) if m == mode),
                refused,
                "mode {mode:o}"
            );
        }
    }

    #[test]
    fn a_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let sealed = TokenSealer::from_file(&path, true).unwrap().seal(b"x", b"c");
        assert_eq!(TokenSealer::from_file(&path, false).unwrap().open(&sealed, b"c"), Ok(b"x".to_vec()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        fs::write(&path, b"short").unwrap();
        assert!(matches!(TokenSealer::from_file(&path, false), Err(KeyFileError::Length { found: 5, .. })));
    }
}
