//! A target's profile: what it supports, how it speaks HTTP, how it is started and which policy it runs.
//!
//! Owns the profile file (TOML, one per target under `targets/NAME/profile.toml`). A profile decides which
//! steps are generated and which invariants apply; it never changes what a supported step is judged by.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bff_session_core::Policy;
use serde::Deserialize;

use crate::mapping::{Mapping, MappingError};

/// Everything the harness needs to know about one target.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name, used for file names (`apache-mod-auth-openidc`).
    pub name: String,
    /// What a reader calls it (`Apache httpd + mod_auth_openidc`).
    pub title: String,
    /// A shell command that starts the target in the profile's directory once the provider is up. It gets
    /// `BFF_CONFORMANCE_ISSUER`, `_CLIENT_ID`, `_CLIENT_SECRET`, `_UPSTREAM`, `_PORT` and `_ORIGIN`.
    pub launch: String,
    /// A shell command that prints the versions of what the target runs, one per line.
    #[serde(default)]
    pub versions: Option<String>,
    /// How the harness moves the target's time.
    pub clock: ClockMode,
    /// Access-token lifetime at the harness's provider, in seconds.
    pub token_ttl_secs: u64,
    pub policy: PolicySpec,
    pub supports: Supports,
    pub http: Conventions,
    /// Paths and cookie names; every key defaults to the reference server's.
    #[serde(default)]
    pub paths: Option<toml::Table>,
    /// Why an invariant does not apply, or how the target's documented configuration bears on it, by
    /// invariant name; quoted in the report.
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
    /// The plain test in `tests/peers.rs` that reproduces a violation without the harness, by invariant.
    #[serde(default)]
    pub confirmed_by: BTreeMap<String, String>,
    /// The profile's directory, where `launch` runs.
    #[serde(skip)]
    pub dir: PathBuf,
    #[serde(skip)]
    pub mapping: Mapping,
}

/// Whether the target has a test clock the harness sets, or runs on real time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    /// `POST {clock} {"freeze_ms": T}`: the harness moves a frozen clock; sequences run one at a time.
    Test,
    /// Real time: the harness sleeps; the oracle's clock follows the real one, and an observation within
    /// [`TOLERANCE`] of a deadline is never judged.
    Wall,
}

/// How close to a deadline a wall-clock observation may land and still be judged, and how far past it a
/// wall-clock move lands: the report states it.
pub const TOLERANCE: Duration = Duration::from_secs(1);

/// The policy the oracle runs for this target: a preset, or explicit durations for a target configured
/// with short ones.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// `helix`, `default` or `asvs-l2`; the base the durations below override.
    #[serde(default = "default_preset")]
    pub preset: String,
    pub absolute_secs: Option<u64>,
    /// 0 for no idle timeout.
    pub idle_secs: Option<u64>,
    pub touch_secs: Option<u64>,
    pub refresh_margin_secs: Option<u64>,
    pub clock_skew_secs: Option<u64>,
    pub assumed_token_lifetime_secs: Option<u64>,
    /// How long before expiry a background pass refreshes; shorter than the token's lifetime.
    pub background_window_secs: Option<u64>,
}

fn default_preset() -> String {
    "default".to_owned()
}

/// The step kinds a target supports. An unsupported kind is never generated, and the invariants that
/// need it are reported as not applicable.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Supports {
    /// Unsafe requests carry a CSRF proof bound to the session.
    pub csrf: bool,
    /// A device list with handles (`GET {sessions}`, and `session.handle` in the session answer).
    pub device_list: bool,
    pub logout_everywhere: bool,
    pub end_device: bool,
    pub backchannel_logout: bool,
    /// `{api}` is forwarded with the access token.
    pub api_proxy: bool,
    /// `POST {tick}` runs a background pass.
    pub background: bool,
}

/// How the target answers, where targets legitimately differ.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conventions {
    /// What an API call without a live session answers.
    pub unauthenticated_api: Unauthenticated,
    /// What the session endpoint answers without a live session.
    pub unauthenticated_session: Unauthenticated,
    /// `GET` or `POST` for logout.
    pub logout_method: String,
    /// Whether the login path takes `return_to` and `login_hint` in its query (otherwise the harness adds
    /// `login_hint` to the provider's authorize URL itself).
    #[serde(default)]
    pub login_query: bool,
}

impl Default for Conventions {
    /// This repository's server.
    fn default() -> Self {
        Self {
            unauthenticated_api: Unauthenticated::Status401,
            unauthenticated_session: Unauthenticated::Status401,
            logout_method: "POST".to_owned(),
            login_query: true,
        }
    }
}

/// How a target says "no session".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unauthenticated {
    /// 401.
    Status401,
    /// A redirect to sign in.
    Redirect,
    /// 401 for a request without a session, a redirect to sign in again for one whose session expired.
    Status401OrRedirect,
}

/// Why a profile cannot be used.
#[derive(Debug)]
pub enum ProfileError {
    Read(PathBuf, std::io::Error),
    Parse(PathBuf, toml::de::Error),
    Mapping(MappingError),
    UnknownPreset(String),
    Policy(bff_session_core::PolicyError),
    LogoutMethod(String),
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            Self::Parse(p, e) => write!(f, "invalid profile {}: {e}", p.display()),
            Self::Mapping(e) => write!(f, "profile paths: {e}"),
            Self::UnknownPreset(p) => {
                write!(f, "unknown policy preset {p:?}; use one of {}", Policy::PRESETS.join(", "))
            }
            Self::Policy(e) => write!(f, "profile policy: {e}"),
            Self::LogoutMethod(m) => write!(f, "logout_method must be GET or POST, not {m:?}"),
        }
    }
}

impl std::error::Error for ProfileError {}

impl Profile {
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Read(path.to_owned(), e))?;
        let mut profile = Self::parse(&text).map_err(|e| match e {
            ProfileError::Parse(_, e) => ProfileError::Parse(path.to_owned(), e),
            other => other,
        })?;
        profile.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(profile)
    }

    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let mut profile: Self = toml::from_str(text).map_err(|e| ProfileError::Parse(PathBuf::new(), e))?;
        let paths = profile.paths.clone().unwrap_or_default();
        profile.mapping = Mapping::parse(&paths.to_string()).map_err(ProfileError::Mapping)?;
        if !matches!(profile.http.logout_method.as_str(), "GET" | "POST") {
            return Err(ProfileError::LogoutMethod(profile.http.logout_method.clone()));
        }
        profile.policy()?;
        Ok(profile)
    }

    /// The policy the oracle runs, validated.
    pub fn policy(&self) -> Result<Policy, ProfileError> {
        let spec = &self.policy;
        let mut p = Policy::preset(&spec.preset).ok_or_else(|| ProfileError::UnknownPreset(spec.preset.clone()))?;
        let secs = Duration::from_secs;
        if let Some(s) = spec.absolute_secs {
            p.absolute_lifetime = secs(s);
        }
        if let Some(s) = spec.idle_secs {
            p.idle_timeout = (s > 0).then(|| secs(s));
        }
        if let Some(s) = spec.touch_secs {
            p.touch_interval = secs(s);
        }
        if let Some(s) = spec.refresh_margin_secs {
            p.refresh_margin = secs(s);
        }
        if let Some(s) = spec.clock_skew_secs {
            p.clock_skew = secs(s);
        }
        if let Some(s) = spec.assumed_token_lifetime_secs {
            p.assumed_token_lifetime = secs(s);
        }
        if let Some(s) = spec.background_window_secs {
            p.background_window = secs(s);
        }
        p.validate().map_err(ProfileError::Policy)?;
        Ok(p)
    }

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs.max(1))
    }

    /// The profile of this repository's server under `preset`, on its test clock: its committed profile
    /// (`targets/bff-session/profile.toml`) with that preset.
    pub fn reference(preset: &str) -> Result<Self, ProfileError> {
        let mut profile = Self::parse(REFERENCE)?;
        Policy::preset(preset).ok_or_else(|| ProfileError::UnknownPreset(preset.to_owned()))?;
        profile.name = format!("bff-session-{preset}");
        profile.title = format!("bff-session ({preset})");
        profile.policy.preset = preset.to_owned();
        profile.launch = profile.launch.replace("--policy default", &format!("--policy {preset}"));
        // The harness is built from the same workspace as the server it judges.
        profile.versions = Some(format!("echo 'bff-session {} (this repository)'", env!("CARGO_PKG_VERSION")));
        Ok(profile)
    }
}

/// This repository's server's profile.
const REFERENCE: &str = include_str!("../targets/bff-session/profile.toml");

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: &str = r#"
        name = "peer"
        title = "A peer"
        launch = "exec node app.js"
        clock = "wall"
        token_ttl_secs = 10
        [policy]
        absolute_secs = 60
        idle_secs = 20
        touch_secs = 2
        refresh_margin_secs = 0
        clock_skew_secs = 0
        assumed_token_lifetime_secs = 10
        background_window_secs = 5
        [supports]
        api_proxy = true
        backchannel_logout = true
        [http]
        unauthenticated_api = "redirect"
        unauthenticated_session = "status401"
        logout_method = "GET"
        [paths]
        session = "/session"
        session_cookie = "appSession"
    "#;

    #[test]
    fn a_wall_clock_profile_overrides_the_preset_and_keeps_the_other_paths() {
        let p = Profile::parse(WALL).unwrap();
        let policy = p.policy().unwrap();
        assert_eq!(policy.absolute_lifetime, Duration::from_secs(60));
        assert_eq!(policy.idle_timeout, Some(Duration::from_secs(20)));
        assert_eq!(p.mapping.session, "/session");
        assert_eq!(p.mapping.logout, Mapping::default().logout);
        assert!(!p.supports.csrf && p.supports.api_proxy);
        assert_eq!(p.clock, ClockMode::Wall);
    }

    #[test]
    fn the_reference_profile_supports_everything_under_each_preset() {
        for preset in Policy::PRESETS {
            let p = Profile::reference(preset).unwrap();
            assert_eq!(p.policy().unwrap(), Policy::preset(preset).unwrap());
            assert_eq!(p.mapping, Mapping::default());
            assert!(p.launch.contains(&format!("--policy {preset}")));
            let s = p.supports;
            assert!(s.csrf && s.device_list && s.logout_everywhere && s.end_device && s.backchannel_logout);
            assert!(s.api_proxy && s.background && p.clock == ClockMode::Test);
        }
        assert!(Profile::reference("nope").is_err());
    }

    #[test]
    fn a_policy_core_refuses_is_refused_here() {
        let bad = WALL.replace("touch_secs = 2", "touch_secs = 30");
        assert!(matches!(Profile::parse(&bad), Err(ProfileError::Policy(_))));
        let method = WALL.replace("logout_method = \"GET\"", "logout_method = \"PUT\"");
        assert!(matches!(Profile::parse(&method), Err(ProfileError::LogoutMethod(_))));
    }

    #[test]
    fn every_committed_profile_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path().join("profile.toml");
            if path.exists() {
                Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen >= 4, "expected this server's, the apache and two express profiles, found {seen}");
    }
}
