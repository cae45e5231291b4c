//! The numbers that shape a session's life, as one value with named presets.
//!
//! Owns [`Policy`] and its validation. It decides nothing by itself: `lifecycle` and `registry` read it. A
//! policy is checked once ([`Policy::validate`]) so that no transition has to handle a nonsensical one.

use std::fmt;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Browsers cap a cookie's lifetime at 400 days (RFC 6265bis); asking for more only misleads.
pub const MAX_COOKIE_AGE: Duration = Duration::from_secs(400 * 86_400);

/// How long sessions live and when their tokens are refreshed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// From creation to the hard end of the session; nothing extends it.
    pub absolute_lifetime: Duration,
    /// A session unused for this long expires. `None`: no idle timeout.
    pub idle_timeout: Option<Duration>,
    /// Last use is recorded at most once per interval, which bounds store writes per session.
    pub touch_interval: Duration,
    /// A request refreshes the access token when it expires within this margin.
    pub refresh_margin: Duration,
    /// How often the shell should run the background refresher ([`crate::Registry::tick`]).
    pub background_interval: Duration,
    /// The background refresher refreshes access tokens that expire within this window...
    pub background_window: Duration,
    /// ...but only for sessions used this recently: idle sessions are not kept alive.
    pub background_recent_use: Duration,
    /// Access-token lifetime assumed when the provider omits `expires_in`, so that a missing value neither
    /// refreshes on every request nor never refreshes.
    pub assumed_token_lifetime: Duration,
    /// How long a refresh ticket is exclusive. Must outlive the shell's timeout for the provider call.
    pub refresh_lease: Duration,
    /// First back-off after a transient refresh failure; doubles per consecutive failure...
    pub refresh_backoff_base: Duration,
    /// ...up to this bound.
    pub refresh_backoff_max: Duration,
    /// How long an ended session's tombstone is kept so no late write can bring it back.
    pub tombstone_retention: Duration,
    /// Times issued by the provider (token expiry) are treated as this much earlier, for clock skew.
    pub clock_skew: Duration,
}

/// Why a policy cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// A duration that must be positive is zero.
    Zero { field: &'static str },
    /// `smaller` must be strictly less than `larger`.
    NotLess { smaller: &'static str, larger: &'static str },
    /// The lifetime is beyond what a cookie can hold.
    LifetimeTooLong { max: Duration },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Zero { field } => write!(f, "{field} must be greater than zero"),
            Self::NotLess { smaller, larger } => {
                write!(f, "{smaller} must be shorter than {larger}")
            }
            Self::LifetimeTooLong { max } => {
                write!(f, "absolute_lifetime must be at most {} days", max.as_secs() / 86_400)
            }
        }
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// The constants of helix's Go session manager, unchanged: a 30-day session, no idle timeout, last use
    /// recorded at most hourly, refresh when the access token expires within 5 minutes, and a background
    /// refresher every minute over a 5-minute window. The reference refreshes every session in the background;
    /// this preset still skips sessions unused for longer than two touch intervals, because last use is only
    /// known to within one. The reference has no value for a token without `expires_in`; this preset assumes
    /// 15 minutes, longer than its 5-minute margin.
    pub fn helix() -> Self {
        Self {
            absolute_lifetime: 30 * DAY,
            idle_timeout: None,
            touch_interval: HOUR,
            refresh_margin: 5 * MINUTE,
            background_interval: MINUTE,
            background_window: 5 * MINUTE,
            background_recent_use: 2 * HOUR,
            assumed_token_lifetime: 15 * MINUTE,
            refresh_lease: 30 * Duration::from_secs(1),
            refresh_backoff_base: Duration::from_secs(1),
            refresh_backoff_max: 5 * MINUTE,
            tombstone_retention: DAY,
            clock_skew: Duration::ZERO,
        }
    }

    /// The hardened default (meets OWASP ASVS 4.0.3 level 1, V3.3.2): a 7-day session that also ends after 12
    /// idle hours, last use recorded every 5 minutes so the idle deadline is accurate to that, refresh one
    /// minute before expiry with 30 s of skew allowance, and background refresh only for sessions used in the
    /// last 15 minutes.
    pub fn hardened() -> Self {
        Self {
            absolute_lifetime: 7 * DAY,
            idle_timeout: Some(12 * HOUR),
            touch_interval: 5 * MINUTE,
            refresh_margin: MINUTE,
            background_interval: MINUTE,
            background_window: 2 * MINUTE,
            background_recent_use: 15 * MINUTE,
            assumed_token_lifetime: 5 * MINUTE,
            refresh_lease: 30 * Duration::from_secs(1),
            refresh_backoff_base: Duration::from_secs(1),
            refresh_backoff_max: 5 * MINUTE,
            tombstone_retention: DAY,
            clock_skew: Duration::from_secs(30),
        }
    }

    /// OWASP ASVS 4.0.3 level 2 (V3.3.2): 12 hours absolute, 30 minutes idle; last use recorded every minute.
    pub fn asvs_l2() -> Self {
        Self {
            absolute_lifetime: 12 * HOUR,
            idle_timeout: Some(30 * MINUTE),
            touch_interval: MINUTE,
            background_recent_use: 10 * MINUTE,
            ..Self::hardened()
        }
    }

    /// A preset by its name on the command line: `helix`, `default` or `asvs-l2`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "helix" => Some(Self::helix()),
            "default" => Some(Self::hardened()),
            "asvs-l2" | "asvs_l2" => Some(Self::asvs_l2()),
            _ => None,
        }
    }

    /// The names [`Policy::preset`] accepts.
    pub const PRESETS: [&'static str; 3] = ["helix", "default", "asvs-l2"];

    /// Checks the relations the transitions rely on.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let positive = [
            ("absolute_lifetime", self.absolute_lifetime),
            ("touch_interval", self.touch_interval),
            ("background_interval", self.background_interval),
            ("assumed_token_lifetime", self.assumed_token_lifetime),
            ("refresh_lease", self.refresh_lease),
            ("refresh_backoff_base", self.refresh_backoff_base),
            ("tombstone_retention", self.tombstone_retention),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(PolicyError::Zero { field });
        }
        if self.absolute_lifetime > MAX_COOKIE_AGE {
            return Err(PolicyError::LifetimeTooLong { max: MAX_COOKIE_AGE });
        }
        let less = |smaller, a: Duration, larger, b: Duration| {
            if a < b { Ok(()) } else { Err(PolicyError::NotLess { smaller, larger }) }
        };
        less("touch_interval", self.touch_interval, "absolute_lifetime", self.absolute_lifetime)?;
        if let Some(idle) = self.idle_timeout {
            if idle.is_zero() {
                return Err(PolicyError::Zero { field: "idle_timeout" });
            }
            // Last use is known only to within one touch interval, so the idle deadline is that coarse.
            less("touch_interval", self.touch_interval, "idle_timeout", idle)?;
        }
        less("refresh_backoff_base", self.refresh_backoff_base, "refresh_backoff_max", self.refresh_backoff_max)?;
        // A margin as long as the token's lifetime would refresh on every request.
        less(
            "refresh_margin",
            self.refresh_margin + self.clock_skew,
            "assumed_token_lifetime",
            self.assumed_token_lifetime,
        )?;
        less(
            "background_window",
            self.background_window + self.clock_skew,
            "assumed_token_lifetime",
            self.assumed_token_lifetime,
        )?;
        Ok(())
    }

    /// The delay before the next attempt after `failures` consecutive transient failures (`failures >= 1`).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.refresh_backoff_base.saturating_mul(1u32 << doublings.min(31)).min(self.refresh_backoff_max)
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::hardened()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid() {
        for name in Policy::PRESETS {
            let policy = Policy::preset(name);
            assert_eq!(policy.as_ref().map(Policy::validate), Some(Ok(())), "{name}");
        }
        assert_eq!(Policy::preset("lenient"), None);
    }

    // One test per constant of the reference session manager.
    #[test]
    fn helix_sessions_last_thirty_days() {
        assert_eq!(Policy::helix().absolute_lifetime, Duration::from_secs(30 * 24 * 3600));
    }

    #[test]
    fn helix_has_no_idle_timeout() {
        assert_eq!(Policy::helix().idle_timeout, None);
    }

    #[test]
    fn helix_touches_at_most_hourly() {
        assert_eq!(Policy::helix().touch_interval, Duration::from_secs(3600));
    }

    #[test]
    fn helix_refreshes_within_five_minutes_of_expiry() {
        assert_eq!(Policy::helix().refresh_margin, Duration::from_secs(300));
    }

    #[test]
    fn helix_background_refresher_runs_every_minute_over_five_minutes() {
        let p = Policy::helix();
        assert_eq!(p.background_interval, Duration::from_secs(60));
        assert_eq!(p.background_window, Duration::from_secs(300));
    }

    // One test per deliberate difference between `default` and the reference.
    #[test]
    fn default_shortens_the_absolute_lifetime_to_seven_days() {
        assert_eq!(Policy::hardened().absolute_lifetime, Duration::from_secs(7 * 24 * 3600));
        assert!(Policy::hardened().absolute_lifetime < Policy::helix().absolute_lifetime);
    }

    #[test]
    fn default_adds_an_idle_timeout() {
        assert_eq!(Policy::hardened().idle_timeout, Some(Duration::from_secs(12 * 3600)));
    }

    #[test]
    fn default_touches_often_enough_for_the_idle_deadline() {
        let p = Policy::hardened();
        assert_eq!(p.touch_interval, Duration::from_secs(300));
        assert!(p.idle_timeout.is_some_and(|idle| p.touch_interval * 100 < idle));
    }

    #[test]
    fn default_allows_for_clock_skew_where_the_reference_allowed_none() {
        assert_eq!(Policy::helix().clock_skew, Duration::ZERO);
        assert_eq!(Policy::hardened().clock_skew, Duration::from_secs(30));
    }

    #[test]
    fn default_refreshes_closer_to_expiry_and_only_recently_used_sessions() {
        let (d, h) = (Policy::hardened(), Policy::helix());
        assert_eq!(d.refresh_margin, Duration::from_secs(60));
        assert_eq!(d.background_recent_use, Duration::from_secs(15 * 60));
        assert!(d.background_recent_use < h.background_recent_use);
    }

    #[test]
    fn asvs_l2_is_twelve_hours_absolute_and_thirty_minutes_idle() {
        let p = Policy::asvs_l2();
        assert_eq!(p.absolute_lifetime, Duration::from_secs(12 * 3600));
        assert_eq!(p.idle_timeout, Some(Duration::from_secs(30 * 60)));
    }

    #[test]
    fn validation_names_the_setting_at_fault() {
        let mut p = Policy::hardened();
        p.touch_interval = Duration::from_secs(13 * 3600);
        assert_eq!(p.validate(), Err(PolicyError::NotLess { smaller: "touch_interval", larger: "idle_timeout" }));
        p = Policy::hardened();
        p.refresh_lease = Duration::ZERO;
        assert_eq!(p.validate(), Err(PolicyError::Zero { field: "refresh_lease" }));
        assert_eq!(p.validate().map_err(|e| e.to_string()), Err("refresh_lease must be greater than zero".into()));
        p = Policy::hardened();
        p.absolute_lifetime = MAX_COOKIE_AGE + Duration::from_secs(1);
        assert!(matches!(p.validate(), Err(PolicyError::LifetimeTooLong { .. })));
        p = Policy::hardened();
        p.refresh_margin = p.assumed_token_lifetime;
        assert!(matches!(p.validate(), Err(PolicyError::NotLess { smaller: "refresh_margin", .. })));
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let p = Policy::hardened();
        let secs: Vec<u64> = [1, 2, 3, 4, 9, 10, 1000, u32::MAX].iter().map(|&f| p.backoff(f).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 256, 300, 300, 300]);
    }

    #[test]
    fn asvs_l2_touches_every_minute_and_refreshes_only_sessions_used_in_ten() {
        let p = Policy::asvs_l2();
        assert_eq!(p.touch_interval, Duration::from_secs(60));
        assert_eq!(p.background_recent_use, Duration::from_secs(10 * 60));
    }

    /// The bounds are exact: the cookie-age cap itself is a valid lifetime, and "less than" refuses equality.
    /// The refresh margin and the background window each count the clock skew.
    #[test]
    fn validation_bounds_are_exact() {
        let p = Policy { absolute_lifetime: MAX_COOKIE_AGE, ..Policy::hardened() };
        assert_eq!(p.validate(), Ok(()));
        let p = Policy {
            touch_interval: Duration::from_secs(3600),
            absolute_lifetime: Duration::from_secs(3600),
            idle_timeout: None,
            ..Policy::hardened()
        };
        assert_eq!(p.validate(), Err(PolicyError::NotLess { smaller: "touch_interval", larger: "absolute_lifetime" }));
        let minutes = |m: u64| Duration::from_secs(60 * m);
        let p = Policy {
            refresh_margin: minutes(3),
            clock_skew: minutes(2),
            background_window: minutes(1),
            assumed_token_lifetime: minutes(5),
            ..Policy::hardened()
        };
        assert_eq!(
            p.validate(),
            Err(PolicyError::NotLess { smaller: "refresh_margin", larger: "assumed_token_lifetime" })
        );
        let p = Policy {
            refresh_margin: minutes(1),
            clock_skew: minutes(2),
            background_window: minutes(3),
            assumed_token_lifetime: minutes(5),
            ..Policy::hardened()
        };
        assert_eq!(
            p.validate(),
            Err(PolicyError::NotLess { smaller: "background_window", larger: "assumed_token_lifetime" })
        );
        let p = Policy { background_window: minutes(2), ..p };
        assert_eq!(p.validate(), Ok(()));
    }
}
