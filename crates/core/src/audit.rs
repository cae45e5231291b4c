//! The audit trail's vocabulary: one event for each committed change of a session record.
//!
//! Owns naming what a transition did, given the record before and after it ([`Event::between`]), and the
//! line format a shell writes and a checker reads back ([`Line`], [`Header`]). Every event can be replayed
//! through `lifecycle` at its timestamp, which is how a trace is checked. It never writes anything and never
//! reads a clock.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::session::{ExpiryReason, RevocationReason, Session, State};

/// What happened to a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A new session; `access_expires_at` (Unix ms) is absent for a session without provider tokens.
    Created {
        access_expires_at: Option<u64>,
        refresh_token: bool,
    },
    /// A use was recorded: the idle deadline moved.
    Touched,
    /// A refresh ticket was issued (the lease is held).
    RefreshStarted,
    /// The lease of the refresh in flight was extended: the provider is slow to answer.
    LeaseRenewed,
    /// The provider issued new tokens and the ticket's holder stored them.
    RefreshSucceeded {
        access_expires_at: u64,
    },
    /// The provider refused or failed the refresh. `invalid_grant` also ends the session (revoked,
    /// `refresh_rejected`); `transient` starts a back-off.
    RefreshFailed {
        error: RefreshError,
    },
    Expired {
        reason: ExpiryReason,
    },
    Revoked {
        reason: RevocationReason,
    },
}

impl Event {
    /// The event's name in the trail (its `event` field).
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::Touched => "touched",
            Self::RefreshStarted => "refresh_started",
            Self::LeaseRenewed => "lease_renewed",
            Self::RefreshSucceeded { .. } => "refresh_succeeded",
            Self::RefreshFailed { .. } => "refresh_failed",
            Self::Expired { .. } => "expired",
            Self::Revoked { .. } => "revoked",
        }
    }

    /// Its reason or error, in the trail's words; empty for an event without one. A fixed vocabulary, so a
    /// shell may use it as a metric label.
    pub const fn detail(&self) -> &'static str {
        match self {
            Self::RefreshFailed { error } => error.as_str(),
            Self::Expired { reason } => reason.as_str(),
            Self::Revoked { reason } => reason.as_str(),
            _ => "",
        }
    }
}

/// How a refresh failed: the one vocabulary of the provider's answer, shared with `refresh`.
pub use crate::refresh::RefreshError;

/// One line of the trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// When the transition ran, in Unix milliseconds (the shell's clock, test offsets included).
    pub ts: u64,
    /// The session's name in logs (a prefix of its key, itself a hash of the ID): never the ID.
    pub session: String,
    /// The record's version after the transition; each transition adds one.
    pub version: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// The first line of a trace: the policy the events were decided under, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always `"start"`.
    pub event: String,
    pub policy: PolicyMillis,
}

/// [`Policy`] with every duration in milliseconds, for JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyMillis {
    pub absolute_lifetime: u64,
    pub idle_timeout: Option<u64>,
    pub touch_interval: u64,
    pub refresh_margin: u64,
    pub background_interval: u64,
    pub background_window: u64,
    pub background_recent_use: u64,
    pub assumed_token_lifetime: u64,
    pub refresh_lease: u64,
    pub refresh_backoff_base: u64,
    pub refresh_backoff_max: u64,
    pub tombstone_retention: u64,
    pub clock_skew: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&Policy> for PolicyMillis {
    fn from(p: &Policy) -> Self {
        Self {
            absolute_lifetime: ms(p.absolute_lifetime),
            idle_timeout: p.idle_timeout.map(ms),
            touch_interval: ms(p.touch_interval),
            refresh_margin: ms(p.refresh_margin),
            background_interval: ms(p.background_interval),
            background_window: ms(p.background_window),
            background_recent_use: ms(p.background_recent_use),
            assumed_token_lifetime: ms(p.assumed_token_lifetime),
            refresh_lease: ms(p.refresh_lease),
            refresh_backoff_base: ms(p.refresh_backoff_base),
            refresh_backoff_max: ms(p.refresh_backoff_max),
            tombstone_retention: ms(p.tombstone_retention),
            clock_skew: ms(p.clock_skew),
        }
    }
}

impl From<&PolicyMillis> for Policy {
    fn from(p: &PolicyMillis) -> Self {
        let d = Duration::from_millis;
        Self {
            absolute_lifetime: d(p.absolute_lifetime),
            idle_timeout: p.idle_timeout.map(d),
            touch_interval: d(p.touch_interval),
            refresh_margin: d(p.refresh_margin),
            background_interval: d(p.background_interval),
            background_window: d(p.background_window),
            background_recent_use: d(p.background_recent_use),
            assumed_token_lifetime: d(p.assumed_token_lifetime),
            refresh_lease: d(p.refresh_lease),
            refresh_backoff_base: d(p.refresh_backoff_base),
            refresh_backoff_max: d(p.refresh_backoff_max),
            tombstone_retention: d(p.tombstone_retention),
            clock_skew: d(p.clock_skew),
        }
    }
}

impl Header {
    pub fn new(policy: &Policy) -> Self {
        Self { event: "start".to_owned(), policy: policy.into() }
    }
}

impl Event {
    /// The event a committed write from `before` to `after` records, or `None` for a write that changed no
    /// lifecycle fact (there is none today; the `Option` keeps shells honest if one is added).
    pub fn between(before: Option<&Session>, after: &Session) -> Option<Self> {
        let Some(before) = before else {
            let tokens = after.tokens();
            return Some(Self::Created {
                access_expires_at: tokens.map(|t| t.access_expires_at.as_millis()),
                refresh_token: tokens.is_some_and(|t| t.refresh_token.is_some()),
            });
        };
        if before.is_active() {
            match after.state() {
                State::Active => {}
                State::Expired { reason, .. } => return Some(Self::Expired { reason }),
                State::Revoked { reason: RevocationReason::RefreshRejected, .. } => {
                    return Some(Self::RefreshFailed { error: RefreshError::InvalidGrant });
                }
                State::Revoked { reason, .. } => return Some(Self::Revoked { reason }),
            }
        }
        let (b, a) = (before.refresh_state(), after.refresh_state());
        if a.generation() > b.generation() {
            return Some(Self::RefreshStarted);
        }
        if let (Some(bl), Some(al)) = (b.lease(), a.lease())
            && bl.generation == al.generation
            && al.expires_at > bl.expires_at
        {
            return Some(Self::LeaseRenewed);
        }
        if b.lease().is_some() && a.lease().is_none() {
            if a.failures() > b.failures() {
                return Some(Self::RefreshFailed { error: RefreshError::Transient });
            }
            if let Some(t) = after.tokens() {
                return Some(Self::RefreshSucceeded { access_expires_at: t.access_expires_at.as_millis() });
            }
        }
        (after.last_used_at() != before.last_used_at()).then_some(Self::Touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use crate::lifecycle;
    use crate::refresh::{RefreshResult, Trigger};
    use crate::testing::{grant, identity, sign_in};

    /// `name` and `detail` are the trail's own words, as serde writes them.
    #[test]
    fn names_and_details_are_the_serialized_ones() {
        let events = [
            Event::Created { access_expires_at: None, refresh_token: false },
            Event::Touched,
            Event::RefreshStarted,
            Event::LeaseRenewed,
            Event::RefreshSucceeded { access_expires_at: 1 },
            Event::RefreshFailed { error: RefreshError::InvalidGrant },
            Event::RefreshFailed { error: RefreshError::Transient },
            Event::Expired { reason: ExpiryReason::Idle },
            Event::Revoked { reason: RevocationReason::SessionLimit },
        ];
        for event in events {
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["event"], event.name());
            let detail = json.get("reason").or_else(|| json.get("error")).and_then(|v| v.as_str()).unwrap_or("");
            assert_eq!(detail, event.detail(), "{json}");
        }
    }

    /// Each transition names itself, and the events replay: that is what makes a trail checkable.
    #[test]
    fn each_transition_is_one_event() {
        let policy = Policy::hardened();
        let new = sign_in(1, identity(), grant());
        let t0 = Timestamp::from_millis(1_000_000);
        let mut s = lifecycle::create(&new, t0, &policy).outcome;
        assert_eq!(
            Event::between(None, &s),
            Some(Event::Created { access_expires_at: Some(1_600_000), refresh_token: true })
        );
        fn step(s: &mut Session, f: impl FnOnce(&mut Session)) -> Option<Event> {
            let before = s.clone();
            f(s);
            Event::between(Some(&before), s)
        }
        let t1 = t0.saturating_add(Duration::from_secs(540));
        assert_eq!(step(&mut s, |s| drop(lifecycle::touch(Some(s), t1, &policy))), Some(Event::Touched));
        let mut ticket = None;
        assert_eq!(
            step(&mut s, |s| ticket = lifecycle::begin_refresh(Some(s), Trigger::Request, t1, &policy).outcome.ok()),
            Some(Event::RefreshStarted)
        );
        let ticket = ticket.unwrap();
        assert_eq!(
            step(&mut s, |s| drop(lifecycle::complete_refresh(
                Some(s),
                &ticket,
                RefreshResult::Transient,
                t1,
                &policy
            ))),
            Some(Event::RefreshFailed { error: RefreshError::Transient })
        );
        let t2 = t1.saturating_add(Duration::from_secs(2));
        let ticket = lifecycle::begin_refresh(Some(&mut s), Trigger::Request, t2, &policy).outcome.unwrap();
        assert_eq!(
            step(&mut s, |s| drop(lifecycle::complete_refresh(
                Some(s),
                &ticket,
                RefreshResult::Success(grant()),
                t2,
                &policy
            ))),
            Some(Event::RefreshSucceeded { access_expires_at: t2.as_millis() + 600_000 })
        );
        assert_eq!(
            step(&mut s, |s| drop(lifecycle::revoke(Some(s), RevocationReason::Logout, t2, &policy))),
            Some(Event::Revoked { reason: RevocationReason::Logout })
        );
    }

    /// A renewal that moves the lease is named; one that moves nothing is no event (and writes nothing); a
    /// first refresh with no failure before it is a success, not a failure.
    #[test]
    fn renewals_and_a_clean_refresh_are_named() {
        let policy = Policy::hardened();
        let new = sign_in(2, identity(), grant());
        let t0 = Timestamp::from_millis(1_000_000);
        let mut s = lifecycle::create(&new, t0, &policy).outcome;
        let t1 = t0.saturating_add(Duration::from_secs(560));
        let ticket = lifecycle::begin_refresh(Some(&mut s), Trigger::Request, t1, &policy).outcome.unwrap();
        let before = s.clone();
        let later = t1.saturating_add(Duration::from_secs(1));
        assert!(lifecycle::renew_lease(Some(&mut s), &ticket, later, &policy).outcome.is_ok());
        assert_eq!(Event::between(Some(&before), &s), Some(Event::LeaseRenewed));
        assert_eq!(Event::between(Some(&s), &s.clone()), None, "an unchanged record is no event");
        let before = s.clone();
        drop(lifecycle::complete_refresh(Some(&mut s), &ticket, RefreshResult::Success(grant()), later, &policy));
        assert_eq!(
            Event::between(Some(&before), &s),
            Some(Event::RefreshSucceeded { access_expires_at: later.as_millis() + 600_000 })
        );
    }
}
