//! How a target names its endpoints, cookies and CSRF header.
//!
//! Owns the mapping file (TOML) that adapts the harness to a BFF whose paths or cookie names differ from
//! the reference server's. It never changes what is checked, only where it is looked for.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// Paths, cookie names and the CSRF header of a target. Every field defaults to the reference server's.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mapping {
    /// `GET` with `return_to` and `login_hint`: redirects to the provider's authorize endpoint.
    pub login: String,
    /// Where the provider sends the browser back (registered as the redirect URI).
    pub callback: String,
    /// `GET`: 200 with `session.handle` while the session is live.
    pub session: String,
    /// `POST` with the CSRF proof: ends this session.
    pub logout: String,
    /// `POST` with the CSRF proof: ends every session of the user.
    pub logout_all: String,
    /// `GET`: 200 with `sessions`, the user's active sessions; `DELETE {sessions}/{handle}` ends one.
    pub sessions: String,
    /// The back-channel logout endpoint registered at the provider.
    pub backchannel_logout: String,
    /// An API path that the target forwards, with the access token, to the provider's UserInfo endpoint.
    pub api: String,
    /// `POST {"freeze_ms": T}` stops the target's clock at T.
    pub clock: String,
    /// `POST` runs one background pass (refresher and sweeper) and answers when it is done.
    pub tick: String,
    pub session_cookie: String,
    pub csrf_cookie: String,
    pub csrf_header: String,
}

impl Default for Mapping {
    fn default() -> Self {
        Self {
            login: "/auth/login".into(),
            callback: "/auth/callback".into(),
            session: "/auth/session".into(),
            logout: "/auth/logout".into(),
            logout_all: "/auth/logout-all".into(),
            sessions: "/auth/sessions".into(),
            backchannel_logout: "/auth/backchannel-logout".into(),
            api: "/api/userinfo".into(),
            clock: "/__test/clock".into(),
            tick: "/__test/tick".into(),
            session_cookie: "bff-session".into(),
            csrf_cookie: "bff-csrf".into(),
            csrf_header: "x-csrf-token".into(),
        }
    }
}

/// Why a mapping file cannot be used.
#[derive(Debug)]
pub enum MappingError {
    Read(std::io::Error),
    Parse(toml::de::Error),
    /// A path that does not start with `/`.
    NotAPath {
        field: &'static str,
        value: String,
    },
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(e) => write!(f, "cannot read the mapping file: {e}"),
            Self::Parse(e) => write!(f, "invalid mapping file: {e}"),
            Self::NotAPath { field, value } => write!(f, "mapping field {field} = {value:?} must start with /"),
        }
    }
}

impl std::error::Error for MappingError {}

impl Mapping {
    pub fn load(path: &Path) -> Result<Self, MappingError> {
        let text = std::fs::read_to_string(path).map_err(MappingError::Read)?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, MappingError> {
        let m: Self = toml::from_str(text).map_err(MappingError::Parse)?;
        let paths = [
            ("login", &m.login),
            ("callback", &m.callback),
            ("session", &m.session),
            ("logout", &m.logout),
            ("logout_all", &m.logout_all),
            ("sessions", &m.sessions),
            ("backchannel_logout", &m.backchannel_logout),
            ("api", &m.api),
            ("clock", &m.clock),
            ("tick", &m.tick),
        ];
        if let Some((field, value)) = paths.iter().find(|(_, v)| !v.starts_with('/')) {
            return Err(MappingError::NotAPath { field, value: (*value).clone() });
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let m = Mapping::parse("session_cookie = \"sid\"\napi = \"/bff/api/me\"").unwrap();
        assert_eq!(m.session_cookie, "sid");
        assert_eq!(m.api, "/bff/api/me");
        assert_eq!(m.logout, Mapping::default().logout);
    }

    #[test]
    fn unknown_fields_and_relative_paths_are_refused() {
        assert!(matches!(Mapping::parse("sesion_cookie = \"x\""), Err(MappingError::Parse(_))));
        assert!(matches!(Mapping::parse("logout = \"auth/logout\""), Err(MappingError::NotAPath { .. })));
    }
}
