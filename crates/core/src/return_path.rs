//! Where to send the browser after login: only a path on this origin.
//!
//! Owns the validation of the `return_to` parameter. A return path is accepted only if every reasonable URL
//! parser resolves it to this origin: it starts with a single `/`, contains no backslash (browsers read it
//! as `/`), no whitespace or control characters (browsers strip tabs and newlines, which turns `/\t/evil`
//! into `//evil`), no dot segments or empty segments, and stays so after percent-decoding. It never builds a
//! redirect: it only says yes or no.

use std::fmt;

use percent_encoding::percent_decode;

/// Longest return path accepted.
pub const MAX_LEN: usize = 2048;

/// A path on this origin, safe to put in a `Location` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnPath(String);

impl ReturnPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path used when none is given.
    pub fn root() -> Self {
        Self("/".to_owned())
    }
}

/// Why a return path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReturnPathError {
    Empty,
    TooLong {
        len: usize,
    },
    /// It does not start with `/` (an absolute URL, `javascript:`, a relative path).
    NotAbsolutePath,
    /// `//host` or `/\host`: another origin.
    OtherOrigin,
    /// A character outside printable ASCII, or a backslash.
    ForbiddenCharacter {
        byte: u8,
    },
    /// A `.` or `..` segment, or an empty one (`a//b`), which normalisation could turn into `//host`.
    AmbiguousSegment,
    /// Decoding `%XX` escapes reveals one of the above.
    EncodedTrick,
}

impl fmt::Display for ReturnPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("return path is empty"),
            Self::TooLong { len } => write!(f, "return path is {len} bytes, longer than {MAX_LEN}"),
            Self::NotAbsolutePath => f.write_str("return path must start with /"),
            Self::OtherOrigin => f.write_str("return path points to another origin"),
            Self::ForbiddenCharacter { byte } => {
                write!(f, "return path contains forbidden byte 0x{byte:02x}")
            }
            Self::AmbiguousSegment => f.write_str("return path contains an empty, . or .. segment"),
            Self::EncodedTrick => f.write_str("return path hides a forbidden form behind percent-encoding"),
        }
    }
}

impl std::error::Error for ReturnPathError {}

/// Accepts `s` as a return path or says why not.
pub fn validate(s: &str) -> Result<ReturnPath, ReturnPathError> {
    if s.is_empty() {
        return Err(ReturnPathError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(ReturnPathError::TooLong { len: s.len() });
    }
    check(s.as_bytes(), true)?;
    // Decode repeatedly: a redirect target may be decoded more than once on its way (double encoding).
    let mut current = s.as_bytes().to_vec();
    for _ in 0..3 {
        let decoded: Vec<u8> = percent_decode(&current).collect();
        if decoded == current {
            break;
        }
        check(&decoded, false).map_err(|_| ReturnPathError::EncodedTrick)?;
        current = decoded;
    }
    Ok(ReturnPath(s.to_owned()))
}

/// `raw` is the value as received, which must be printable ASCII throughout; the path of a decoded form may
/// hold other bytes (UTF-8 in a path is fine) but no control character, whitespace or backslash.
fn check(bytes: &[u8], raw: bool) -> Result<(), ReturnPathError> {
    // Once decoded, the query and fragment cannot change the origin; only the path can.
    let bytes =
        if raw { bytes } else { &bytes[..bytes.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(bytes.len())] };
    let forbidden = |b: u8| b <= 0x20 || b == 0x7f || b == b'\\' || (raw && b > 0x7e);
    if let Some(&byte) = bytes.iter().find(|&&b| forbidden(b)) {
        return Err(ReturnPathError::ForbiddenCharacter { byte });
    }
    if bytes.first() != Some(&b'/') {
        return Err(ReturnPathError::NotAbsolutePath);
    }
    if bytes.get(1) == Some(&b'/') {
        return Err(ReturnPathError::OtherOrigin);
    }
    let path_end = bytes.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(bytes.len());
    // A single trailing slash leaves an empty final segment, which is harmless.
    let path = &bytes[1..path_end];
    let path = path.strip_suffix(b"/").unwrap_or(path);
    if !path.is_empty() && path.split(|&b| b == b'/').any(|seg| seg.is_empty() || seg == b"." || seg == b"..") {
        return Err(ReturnPathError::AmbiguousSegment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReturnPathError::*;

    #[test]
    fn ordinary_paths_are_accepted() {
        for ok in ["/", "/app", "/app/", "/app/x?y=1&z=%20#frag", "/a-b_c~d/e.html", "/%E2%9C%93"] {
            assert_eq!(validate(ok).map(|p| p.as_str().to_owned()), Ok(ok.to_owned()), "{ok}");
        }
    }

    #[test]
    fn other_origins_and_schemes_are_refused() {
        assert_eq!(validate("//evil.com"), Err(OtherOrigin));
        assert_eq!(validate("/\\evil.com"), Err(ForbiddenCharacter { byte: b'\\' }));
        assert_eq!(validate("https://evil.com"), Err(NotAbsolutePath));
        assert_eq!(validate("javascript:alert(1)"), Err(NotAbsolutePath));
        assert_eq!(validate("app"), Err(NotAbsolutePath));
        assert_eq!(validate(""), Err(Empty));
    }

    #[test]
    fn whitespace_and_control_tricks_are_refused() {
        assert_eq!(validate("/\t/evil.com"), Err(ForbiddenCharacter { byte: b'\t' }));
        assert_eq!(validate("/\n/evil.com"), Err(ForbiddenCharacter { byte: b'\n' }));
        assert_eq!(validate(" /app"), Err(ForbiddenCharacter { byte: b' ' }));
        assert_eq!(validate("/app\u{e9}"), Err(ForbiddenCharacter { byte: 0xc3 }));
    }

    #[test]
    fn encoded_tricks_are_refused() {
        assert_eq!(validate("/%2Fevil.com"), Err(EncodedTrick));
        assert_eq!(validate("/%5Cevil.com"), Err(EncodedTrick));
        assert_eq!(validate("/%09/evil.com"), Err(EncodedTrick));
        assert_eq!(validate("/%252Fevil.com"), Err(EncodedTrick));
        assert_eq!(validate("/%2e%2e/x"), Err(EncodedTrick));
    }

    #[test]
    fn dot_and_empty_segments_are_refused() {
        assert_eq!(validate("/./"), Err(AmbiguousSegment));
        assert_eq!(validate("/.//evil.com"), Err(AmbiguousSegment));
        assert_eq!(validate("/a/../b"), Err(AmbiguousSegment));
        assert_eq!(validate("/a//b"), Err(AmbiguousSegment));
    }

    #[test]
    fn overlong_paths_are_refused() {
        let long = format!("/{}", "a".repeat(MAX_LEN));
        assert_eq!(validate(&long), Err(TooLong { len: MAX_LEN + 1 }));
    }

    #[test]
    fn the_length_limit_is_exact() {
        let at_limit = format!("/{}", "a".repeat(MAX_LEN - 1));
        assert_eq!(validate(&at_limit).map(|p| p.as_str().len()), Ok(MAX_LEN));
        let over = format!("{at_limit}a");
        assert_eq!(validate(&over), Err(TooLong { len: MAX_LEN + 1 }));
    }

    /// Each refusal says what is wrong in words a developer can act on.
    #[test]
    fn refusals_explain_themselves() {
        let texts = [
            (Empty, "return path is empty"),
            (TooLong { len: 3000 }, "return path is 3000 bytes, longer than 2048"),
            (NotAbsolutePath, "return path must start with /"),
            (OtherOrigin, "return path points to another origin"),
            (ForbiddenCharacter { byte: 0x0a }, "return path contains forbidden byte 0x0a"),
            (AmbiguousSegment, "return path contains an empty, . or .. segment"),
            (EncodedTrick, "return path hides a forbidden form behind percent-encoding"),
        ];
        for (error, text) in texts {
            assert_eq!(error.to_string(), text);
        }
    }

    /// Only the path is checked for empty and dot segments: a query or fragment may hold anything printable.
    #[test]
    fn query_and_fragment_may_hold_slashes_and_dots() {
        for ok in ["/app?next=a//b", "/app?x=/../y", "/app#/a//b", "/app#./x"] {
            assert_eq!(validate(ok).map(|p| p.as_str().to_owned()), Ok(ok.to_owned()), "{ok}");
        }
    }
}
