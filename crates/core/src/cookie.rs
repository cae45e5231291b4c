//! Reading the session cookie out of `Cookie` headers, and writing `Set-Cookie` values.
//!
//! Owns the cookie names, the attributes of every cookie the BFF sends, and the parsing rules. A duplicate
//! session cookie is refused outright, never resolved first-wins or last-wins: a sibling subdomain or a
//! network attacker can plant a second cookie, and whichever order the browser sends them in, the attacker's
//! value must not be chosen. Names are exact and case-sensitive, so `__host-` does not match `__Host-`. Set
//! and clear come from one builder, so a cookie is always cleared with the attributes it was set with. It
//! never decides whether a session is valid.

use std::fmt;
use std::time::Duration;

use crate::policy::MAX_COOKIE_AGE;

/// The most bytes of `Cookie` header this parser reads, across all `Cookie` headers of a request.
pub const MAX_COOKIE_HEADER_BYTES: usize = 16 * 1024;

/// Why the `Cookie` headers were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieError {
    /// The cookie appears more than once (in one header or across several).
    Duplicate { name: String },
    /// The headers are longer than [`MAX_COOKIE_HEADER_BYTES`].
    TooLarge { len: usize },
}

impl fmt::Display for CookieError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Duplicate { name } => write!(f, "cookie {name} is present more than once"),
            Self::TooLarge { len } => {
                write!(f, "cookie headers are {len} bytes, more than the {MAX_COOKIE_HEADER_BYTES} accepted")
            }
        }
    }
}

impl std::error::Error for CookieError {}

/// The value of the cookie named exactly `name`, from every `Cookie` header of a request.
pub fn find<'a, I>(headers: I, name: &str) -> Result<Option<&'a str>, CookieError>
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: Clone,
{
    let headers = headers.into_iter();
    let len: usize = headers.clone().map(str::len).sum();
    if len > MAX_COOKIE_HEADER_BYTES {
        return Err(CookieError::TooLarge { len });
    }
    let mut found = None;
    for pair in headers.flat_map(|h| h.split(';')) {
        let Some((n, v)) = pair.split_once('=') else {
            continue;
        };
        if n.trim_matches([' ', '\t']) != name {
            continue;
        }
        if found.is_some() {
            return Err(CookieError::Duplicate { name: name.to_owned() });
        }
        let v = v.trim_matches([' ', '\t']);
        // RFC 6265 allows a value in double quotes; the quotes are not part of it.
        found = Some(v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v));
    }
    Ok(found)
}

/// The cookies the BFF sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The session ID: HttpOnly, never visible to scripts.
    Session,
    /// The CSRF proof: readable by the page's script, which echoes it in a header.
    Csrf,
    /// Binds a pending login to the browser between `/auth/login` and `/auth/callback`: HttpOnly.
    Login,
}

impl Kind {
    const fn base_name(self) -> &'static str {
        match self {
            Self::Session => "bff-session",
            Self::Csrf => "bff-csrf",
            Self::Login => "bff-login",
        }
    }

    const fn http_only(self) -> bool {
        !matches!(self, Self::Csrf)
    }
}

/// Names and attributes of the BFF's cookies for one deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cookies {
    secure: bool,
}

impl Cookies {
    /// `secure`: the public origin is https (or localhost, which browsers treat as secure). Secure cookies
    /// take the `__Host-` prefix, which pins them to this host, path `/` and https.
    pub const fn new(secure: bool) -> Self {
        Self { secure }
    }

    pub const fn is_secure(&self) -> bool {
        self.secure
    }

    /// The exact name of a cookie.
    pub fn name(&self, kind: Kind) -> String {
        if self.secure { format!("__Host-{}", kind.base_name()) } else { kind.base_name().to_owned() }
    }

    /// A `Set-Cookie` value that sets `kind` to `value` for `max_age` (capped at 400 days).
    pub fn set(&self, kind: Kind, value: &str, max_age: Duration) -> String {
        self.build(kind, value, max_age.min(MAX_COOKIE_AGE).as_secs())
    }

    /// A `Set-Cookie` value that deletes `kind`, with the same attributes it was set with.
    pub fn clear(&self, kind: Kind) -> String {
        self.build(kind, "", 0)
    }

    fn build(&self, kind: Kind, value: &str, max_age_secs: u64) -> String {
        let mut out = format!("{}={value}; Path=/; Max-Age={max_age_secs}; SameSite=Lax", self.name(kind));
        if kind.http_only() {
            out.push_str("; HttpOnly");
        }
        if self.secure {
            out.push_str("; Secure");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "__Host-bff-session";

    #[test]
    fn finds_the_exact_name_among_others() {
        assert_eq!(find(["a=1; __Host-bff-session=abc; b=2"], NAME), Ok(Some("abc")));
        assert_eq!(find(["a=1", "__Host-bff-session=\"abc\""], NAME), Ok(Some("abc")));
        assert_eq!(find(["a=1; b"], NAME), Ok(None));
        assert_eq!(find([], NAME), Ok(None));
    }

    #[test]
    fn names_are_case_sensitive_so_a_lowercase_prefix_is_ignored() {
        assert_eq!(find(["__host-bff-session=evil"], NAME), Ok(None));
        assert_eq!(find(["__host-bff-session=evil; __Host-bff-session=good"], NAME), Ok(Some("good")));
    }

    #[test]
    fn duplicates_are_refused_in_either_order_and_across_headers() {
        let dup = Err(CookieError::Duplicate { name: NAME.into() });
        assert_eq!(find(["__Host-bff-session=a; __Host-bff-session=b"], NAME), dup);
        assert_eq!(find(["__Host-bff-session=b; __Host-bff-session=a"], NAME), dup);
        assert_eq!(find(["__Host-bff-session=a", "__Host-bff-session=b"], NAME), dup);
        assert_eq!(find(["__Host-bff-session=a; __Host-bff-session=a"], NAME), dup);
    }

    #[test]
    fn oversized_headers_are_refused() {
        let big = format!("x={}", "y".repeat(MAX_COOKIE_HEADER_BYTES));
        assert_eq!(find([big.as_str()], NAME), Err(CookieError::TooLarge { len: big.len() }));
    }

    #[test]
    fn secure_cookies_take_the_host_prefix_and_set_matches_clear() {
        let c = Cookies::new(true);
        let set = c.set(Kind::Session, "v", Duration::from_secs(60));
        let clear = c.clear(Kind::Session);
        assert_eq!(set, "__Host-bff-session=v; Path=/; Max-Age=60; SameSite=Lax; HttpOnly; Secure");
        assert_eq!(clear, "__Host-bff-session=; Path=/; Max-Age=0; SameSite=Lax; HttpOnly; Secure");
        assert_eq!(
            c.set(Kind::Csrf, "p", Duration::from_secs(1)),
            "__Host-bff-csrf=p; Path=/; Max-Age=1; SameSite=Lax; Secure"
        );
    }

    #[test]
    fn insecure_cookies_have_no_prefix_and_no_secure_flag() {
        let c = Cookies::new(false);
        assert_eq!(
            c.set(Kind::Login, "s", Duration::from_secs(600)),
            "bff-login=s; Path=/; Max-Age=600; SameSite=Lax; HttpOnly"
        );
    }

    #[test]
    fn max_age_never_exceeds_four_hundred_days() {
        let c = Cookies::new(true);
        let set = c.set(Kind::Csrf, "p", Duration::from_secs(10 * 365 * 86_400));
        assert!(set.contains("Max-Age=34560000;"), "{set}");
    }

    /// The size limit is exactly 16 KiB: a header of that length is read, one byte more is refused, and the
    /// refusal says how long it was.
    #[test]
    fn the_size_limit_is_exact() {
        let pad = |len: usize| format!("{NAME}=abc; p={}", "x".repeat(len - NAME.len() - 8));
        let at_limit = pad(MAX_COOKIE_HEADER_BYTES);
        assert_eq!(at_limit.len(), 16 * 1024);
        assert_eq!(find([at_limit.as_str()], NAME), Ok(Some("abc")));
        let over = pad(MAX_COOKIE_HEADER_BYTES + 1);
        let refused = find([over.as_str()], NAME);
        assert_eq!(refused, Err(CookieError::TooLarge { len: 16 * 1024 + 1 }));
        assert_eq!(
            refused.map_err(|e| e.to_string()),
            Err("cookie headers are 16385 bytes, more than the 16384 accepted".to_owned())
        );
        assert_eq!(
            CookieError::Duplicate { name: NAME.into() }.to_string(),
            "cookie __Host-bff-session is present more than once"
        );
    }

    #[test]
    fn secure_is_what_it_was_built_with() {
        assert!(Cookies::new(true).is_secure());
        assert!(!Cookies::new(false).is_secure());
    }
}
