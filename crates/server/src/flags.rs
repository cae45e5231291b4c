//! Flag groups that more than one command shares, and the error a setting that cannot be used gives.
//!
//! Owns the session policy's flags (a preset and its overrides, which `serve`, `demo` and `admin` must read
//! alike), the OpenID client's flags (`serve` signs in with them, `admin` revokes with them), duration
//! parsing, and [`ConfigError`]. It starts nothing and reads no file.

use std::time::Duration;

use bff_session_core::Policy;
use clap::Args;

/// The relying party as registered at the provider.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The provider's issuer URL, exactly as in its discovery document.
    #[arg(long, env = "BFF_SESSION_ISSUER")]
    pub issuer: String,
    #[arg(long, env = "BFF_SESSION_CLIENT_ID")]
    pub client_id: String,
    #[arg(long, env = "BFF_SESSION_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: String,
}

/// The session policy: a preset and its overrides. Shared by `serve`, `demo` and `admin`, which must agree.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Session policy preset: helix, default or asvs-l2.
    #[arg(long, env = "BFF_SESSION_POLICY", default_value = "default")]
    pub policy: String,
    /// Override the preset's absolute lifetime (e.g. 12h, 7d).
    #[arg(long, env = "BFF_SESSION_ABSOLUTE_LIFETIME", value_parser = parse_duration)]
    pub absolute_lifetime: Option<Duration>,
    /// Override the preset's idle timeout (e.g. 30m); `0` disables it.
    #[arg(long, env = "BFF_SESSION_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Override how often last use is recorded (e.g. 5m).
    #[arg(long, env = "BFF_SESSION_TOUCH_INTERVAL", value_parser = parse_duration)]
    pub touch_interval: Option<Duration>,
    /// Override how long before expiry a request refreshes the access token (e.g. 1m).
    #[arg(long, env = "BFF_SESSION_REFRESH_MARGIN", value_parser = parse_duration)]
    pub refresh_margin: Option<Duration>,
}

impl PolicyArgs {
    /// The preset with its overrides, validated.
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        let mut policy = Policy::preset(&self.policy).ok_or_else(|| {
            err("--policy", format!("unknown preset {:?}; use one of {}", self.policy, Policy::PRESETS.join(", ")))
        })?;
        if let Some(d) = self.absolute_lifetime {
            policy.absolute_lifetime = d;
        }
        if let Some(d) = self.idle_timeout {
            policy.idle_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(d) = self.touch_interval {
            policy.touch_interval = d;
        }
        if let Some(d) = self.refresh_margin {
            policy.refresh_margin = d;
        }
        policy.validate().map_err(|e| err("--policy and its overrides", e.to_string()))?;
        Ok(policy)
    }
}

/// A setting that cannot be used, with the reason.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn err(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { setting, reason: reason.into() }
}

/// `90`, `90s`, `5m`, `12h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration like 90s, 5m, 12h or 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?} has an unknown unit (use s, m, h or d)")),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(|| format!("{s:?} is too long"))
}
