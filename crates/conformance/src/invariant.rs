//! The lifecycle invariants a report card gives a verdict on, and the sequences that exercise each.
//!
//! Owns the vocabulary of the report (names, readable titles), which profile capabilities each invariant
//! needs, and a generator per invariant: a few random supported steps first, then the steps that put the
//! invariant to the test, each marked with the [`Check`] it is judged by. It never performs or predicts a
//! step: [`crate::target`] and [`crate::oracle`] do, and [`crate::verdict`] compares.

use std::fmt;

use bff_session_core::Policy;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::profile::{ClockMode, Profile};
use crate::step::{CallMethod, DEVICES, Deadline, Failure, LogoutBy, Proof, Side, Span, Step};

/// A lifecycle rule every BFF must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    SingleFlightBurstAtExpiry,
    NoResurrectionAfterLogout,
    InvalidGrantEndsSession,
    TransientFailureKeepsSession,
    IdleDeadline,
    UseDoesNotExtendAbsolute,
    BackchannelLogoutBySid,
    BackchannelLogoutBySub,
    CsrfBoundToSession,
    LogoutRevokesRefreshToken,
    SessionCookieAttributes,
}

/// How a marked step is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The answer's meaning (live, signed out, refused, failed) is the oracle's.
    Answer,
    /// The provider sees no more refresh requests during the step than the oracle sends.
    Refreshes,
    /// The device's grant is revoked at the provider within a few seconds when the oracle revokes it.
    Revoked,
    /// The session cookie the step sets is `HttpOnly`, `SameSite=Lax` or `Strict`, and `Path=/`.
    CookieAttributes,
}

/// A sequence that exercises one invariant: its steps, and which of them are judged and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    pub steps: Vec<Step>,
    /// `(step index, check)`.
    pub checks: Vec<(usize, Check)>,
}

impl Scenario {
    fn new(filler: Vec<Step>, probe: Vec<(Step, Option<Check>)>) -> Self {
        let mut steps = vec![Step::Login { device: 0, user: 0 }];
        steps.extend(filler);
        let mut checks = Vec::new();
        for (step, check) in probe {
            if let Some(c) = check {
                checks.push((steps.len(), c));
            }
            steps.push(step);
        }
        Self { steps, checks }
    }
}

impl Invariant {
    pub const ALL: [Self; 11] = [
        Self::SingleFlightBurstAtExpiry,
        Self::NoResurrectionAfterLogout,
        Self::InvalidGrantEndsSession,
        Self::TransientFailureKeepsSession,
        Self::IdleDeadline,
        Self::UseDoesNotExtendAbsolute,
        Self::BackchannelLogoutBySid,
        Self::BackchannelLogoutBySub,
        Self::CsrfBoundToSession,
        Self::LogoutRevokesRefreshToken,
        Self::SessionCookieAttributes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::SingleFlightBurstAtExpiry => "single_flight_burst_at_expiry",
            Self::NoResurrectionAfterLogout => "no_resurrection_after_logout",
            Self::InvalidGrantEndsSession => "invalid_grant_ends_session",
            Self::TransientFailureKeepsSession => "transient_failure_keeps_session",
            Self::IdleDeadline => "idle_deadline",
            Self::UseDoesNotExtendAbsolute => "use_does_not_extend_absolute",
            Self::BackchannelLogoutBySid => "backchannel_logout_by_sid",
            Self::BackchannelLogoutBySub => "backchannel_logout_by_sub",
            Self::CsrfBoundToSession => "csrf_bound_to_session",
            Self::LogoutRevokesRefreshToken => "logout_revokes_refresh_token",
            Self::SessionCookieAttributes => "session_cookie_attributes",
        }
    }

    /// What the rule says, for a reader.
    pub fn title(self) -> &'static str {
        match self {
            Self::SingleFlightBurstAtExpiry => "one refresh for a burst of calls at expiry",
            Self::NoResurrectionAfterLogout => "no resurrection after logout",
            Self::InvalidGrantEndsSession => "`invalid_grant` ends the session",
            Self::TransientFailureKeepsSession => "a transient provider failure keeps the session",
            Self::IdleDeadline => "the idle deadline holds",
            Self::UseDoesNotExtendAbsolute => "use does not extend the absolute deadline",
            Self::BackchannelLogoutBySid => "back-channel logout by `sid`",
            Self::BackchannelLogoutBySub => "back-channel logout by `sub`",
            Self::CsrfBoundToSession => "CSRF proof bound to the session",
            Self::LogoutRevokesRefreshToken => "logout revokes the refresh token at the provider",
            Self::SessionCookieAttributes => "session cookie attributes",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Why the invariant cannot be put to this target, or `None` when it applies.
    pub fn not_applicable(self, profile: &Profile, policy: &Policy) -> Option<String> {
        let s = &profile.supports;
        let missing = |what: &str| Some(format!("the profile declares no {what}"));
        match self {
            Self::SingleFlightBurstAtExpiry | Self::InvalidGrantEndsSession | Self::TransientFailureKeepsSession
                if !s.api_proxy =>
            {
                missing("API proxy that refreshes the access token")
            }
            Self::BackchannelLogoutBySid | Self::BackchannelLogoutBySub if !s.backchannel_logout => {
                missing("back-channel logout endpoint")
            }
            Self::CsrfBoundToSession if !s.csrf => missing("CSRF proof bound to the session"),
            Self::IdleDeadline if policy.idle_timeout.is_none() => Some("the policy has no idle timeout".to_owned()),
            _ => None,
        }
    }

    /// Sequences that put the invariant to the test on a target with `profile`.
    pub fn scenarios(self, profile: &Profile, policy: &Policy) -> BoxedStrategy<Scenario> {
        let filler = proptest::collection::vec(filler_step(profile), 0..=3);
        let burst = 3u8..=6;
        match self {
            Self::SingleFlightBurstAtExpiry => (filler, burst)
                .prop_map(|(filler, requests)| {
                    Scenario::new(
                        filler,
                        vec![
                            (to(Deadline::AccessExpiry, Side::After), None),
                            (Step::Burst { device: 0, requests }, Some(Check::Refreshes)),
                            (get(0), Some(Check::Answer)),
                        ],
                    )
                })
                .boxed(),
            Self::NoResurrectionAfterLogout => filler
                .prop_map(|filler| {
                    Scenario::new(
                        filler,
                        vec![
                            (Step::Logout { device: 0 }, None),
                            (Step::Replay { device: 0 }, Some(Check::Answer)),
                            (Step::Session { device: 0 }, Some(Check::Answer)),
                        ],
                    )
                })
                .boxed(),
            Self::InvalidGrantEndsSession => filler
                .prop_map(|filler| {
                    Scenario::new(
                        filler,
                        vec![
                            (Step::FailNextRefresh { device: 0, error: Failure::InvalidGrant }, None),
                            (to(Deadline::AccessExpiry, Side::After), None),
                            (get(0), None),
                            (Step::Session { device: 0 }, Some(Check::Answer)),
                        ],
                    )
                })
                .boxed(),
            Self::TransientFailureKeepsSession => filler
                .prop_map(|filler| {
                    Scenario::new(
                        filler,
                        vec![
                            (Step::FailNextRefresh { device: 0, error: Failure::Transient }, None),
                            (to(Deadline::AccessExpiry, Side::After), None),
                            (get(0), None),
                            (Step::Session { device: 0 }, Some(Check::Answer)),
                        ],
                    )
                })
                .boxed(),
            Self::IdleDeadline => filler
                .prop_map(|filler| {
                    Scenario::new(
                        filler,
                        vec![
                            (to(Deadline::Idle, Side::Before), None),
                            (Step::Session { device: 0 }, Some(Check::Answer)),
                            (to(Deadline::Idle, Side::After), None),
                            (Step::Session { device: 0 }, Some(Check::Answer)),
                        ],
                    )
                })
                .boxed(),
            Self::UseDoesNotExtendAbsolute => {
                // Uses spaced under the idle timeout, as many as fit before the absolute deadline.
                let spacing = policy.idle_timeout.map_or(policy.absolute_lifetime / 3, |idle| idle / 2);
                let uses = (policy.absolute_lifetime.as_secs() / spacing.as_secs().max(1)).saturating_sub(1).max(1);
                let uses = usize::try_from(uses.min(64)).unwrap_or(64);
                filler
                    .prop_map(move |filler| {
                        let mut probe = Vec::new();
                        for _ in 0..uses {
                            probe.push((Step::Advance { by: Span::Keepalive }, None));
                            probe.push((Step::Session { device: 0 }, None));
                        }
                        probe.push((to(Deadline::Absolute, Side::After), None));
                        probe.push((Step::Session { device: 0 }, Some(Check::Answer)));
                        Scenario::new(filler, probe)
                    })
                    .boxed()
            }
            Self::BackchannelLogoutBySid => filler
                .prop_map(|filler| {
                    Scenario::new(
                        filler,
                        vec![
                            (Step::BackchannelLogout { device: 0, by: LogoutBy::Sid }, None),
                            (Step::Session { device: 0 }, Some(Check::Answer)),
                        ],
                    )
                })
                .boxed(),
            Self::BackchannelLogoutBySub => filler
                .prop_map(|filler| {
                    Scenario::new(
                        filler,
                        vec![
                            (Step::Login { device: 1, user: 0 }, None),
                            (Step::BackchannelLogout { device: 0, by: LogoutBy::Sub }, None),
                            (Step::Session { device: 0 }, Some(Check::Answer)),
                            (Step::Session { device: 1 }, Some(Check::Answer)),
                        ],
                    )
                })
                .boxed(),
            Self::CsrfBoundToSession => filler
                .prop_map(|filler| {
                    let post = |proof| Step::Call { device: 0, method: CallMethod::Post, proof };
                    Scenario::new(
                        filler,
                        vec![
                            (Step::Login { device: 1, user: 1 }, None),
                            (post(Proof::Foreign { from: 1 }), Some(Check::Answer)),
                            (post(Proof::ChosenPair), Some(Check::Answer)),
                            (post(Proof::Missing), Some(Check::Answer)),
                            (post(Proof::Right), Some(Check::Answer)),
                        ],
                    )
                })
                .boxed(),
            Self::LogoutRevokesRefreshToken => filler
                .prop_map(|filler| Scenario::new(filler, vec![(Step::Logout { device: 0 }, Some(Check::Revoked))]))
                .boxed(),
            Self::SessionCookieAttributes => filler
                .prop_map(|filler| {
                    Scenario::new(filler, vec![(Step::Login { device: 2, user: 1 }, Some(Check::CookieAttributes))])
                })
                .boxed(),
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn to(deadline: Deadline, side: Side) -> Step {
    Step::Advance { by: Span::To { device: 0, deadline, side } }
}

fn get(device: u8) -> Step {
    Step::Call { device, method: CallMethod::Get, proof: Proof::Right }
}

/// A step that may come before the probe: any supported step on any device, with clock moves kept short
/// on a wall clock so a sequence stays within minutes.
fn filler_step(profile: &Profile) -> BoxedStrategy<Step> {
    let s = profile.supports;
    let device = 0..DEVICES;
    let seconds = match profile.clock {
        ClockMode::Test => 1u32..=120,
        ClockMode::Wall => 1u32..=2,
    };
    let mut options: Vec<(u32, BoxedStrategy<Step>)> = vec![
        (3, (device.clone(), 0u8..2).prop_map(|(device, user)| Step::Login { device, user }).boxed()),
        (2, device.clone().prop_map(|device| Step::Session { device }).boxed()),
        (2, seconds.prop_map(|s| Step::Advance { by: Span::Seconds(s) }).boxed()),
    ];
    if s.api_proxy {
        options.push((3, device.clone().prop_map(get).boxed()));
    }
    if s.csrf && s.api_proxy {
        let post = |device| Step::Call { device, method: CallMethod::Post, proof: Proof::Right };
        options.push((1, device.clone().prop_map(post).boxed()));
    }
    if s.device_list {
        options.push((1, device.clone().prop_map(|device| Step::Sessions { device }).boxed()));
    }
    if s.background {
        options.push((1, Just(Step::Background).boxed()));
    }
    // Ending the probe's own session first would test nothing; other devices may end theirs.
    options.push((1, (1..DEVICES).prop_map(|device| Step::Logout { device }).boxed()));
    proptest::strategy::Union::new_weighted(options).boxed()
}

#[cfg(test)]
mod tests {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    use super::*;

    #[test]
    fn every_scenario_starts_with_a_sign_in_and_checks_something_in_range() {
        let profile = Profile::reference("asvs-l2").unwrap();
        let policy = profile.policy().unwrap();
        let mut runner = TestRunner::deterministic();
        for invariant in Invariant::ALL {
            for _ in 0..20 {
                let s = invariant.scenarios(&profile, &policy).new_tree(&mut runner).unwrap().current();
                assert_eq!(s.steps[0], Step::Login { device: 0, user: 0 }, "{invariant}");
                assert!(!s.checks.is_empty(), "{invariant} checks nothing");
                assert!(s.checks.iter().all(|(i, _)| *i < s.steps.len()), "{invariant}");
            }
        }
    }

    #[test]
    fn names_round_trip_and_are_distinct() {
        for i in Invariant::ALL {
            assert_eq!(Invariant::parse(i.name()), Some(i));
        }
        let mut names: Vec<_> = Invariant::ALL.iter().map(|i| i.name()).collect();
        names.dedup();
        assert_eq!(names.len(), Invariant::ALL.len());
    }
}
