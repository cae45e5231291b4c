//! The operations a sequence is made of, how they read, and how proptest generates them.
//!
//! Owns the step vocabulary. A step names devices (cookie jars) and users by small indexes, so a shrunk
//! sequence reads like a story. It never performs anything: [`crate::target`] does, and
//! [`crate::oracle`] predicts.

use std::fmt;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// Browsers ("devices"), each with its own cookie jar.
pub const DEVICES: u8 = 3;
/// Users that sign in.
pub const USERS: u8 = 2;

/// One thing that happens to the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// The device signs in through the provider as the user (ending the device's current session, if any).
    Login {
        device: u8,
        user: u8,
    },
    /// An API call through the target, which attaches the access token (refreshing it first when due).
    Call {
        device: u8,
        method: CallMethod,
        proof: Proof,
    },
    /// `GET` the session.
    Session {
        device: u8,
    },
    /// `GET` the user's device list.
    Sessions {
        device: u8,
    },
    /// The clock moves on (both the target's and the oracle's).
    Advance {
        by: Span,
    },
    Logout {
        device: u8,
    },
    LogoutAll {
        device: u8,
    },
    /// The device ends the latest session of `other` (its own user's, or a stranger's) from its device list.
    EndDevice {
        device: u8,
        other: u8,
    },
    /// The provider sends a back-channel logout for the device's provider session (`sid`) or its user (`sub`).
    BackchannelLogout {
        device: u8,
        by: LogoutBy,
    },
    /// The provider will fail the next refresh of the device's grant.
    FailNextRefresh {
        device: u8,
        error: Failure,
    },
    /// Several concurrent `GET` API calls on one session.
    Burst {
        device: u8,
        requests: u8,
    },
    /// The target runs one background pass (refresher and sweeper).
    Background,
    /// Someone presents the cookie of the device's previous, ended session.
    Replay {
        device: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallMethod {
    Get,
    Post,
}

/// The CSRF proof an unsafe call carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proof {
    /// The session's own proof.
    Right,
    Missing,
    /// The proof of another device's session.
    Foreign {
        from: u8,
    },
    /// A CSRF cookie and header with the same value, chosen by the client (double-submit without binding).
    ChosenPair,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogoutBy {
    Sid,
    Sub,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    InvalidGrant,
    Transient,
}

/// How far the clock moves: fixed spans, or to just before or after one of a device's deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Span {
    Seconds(u32),
    /// One touch interval and a second.
    TouchInterval,
    /// Half the access token's lifetime and a second.
    HalfTokenLife,
    /// A third of the absolute lifetime.
    ThirdOfLifetime,
    /// Half the idle timeout (a third of the absolute lifetime without one): a pause that use survives.
    Keepalive,
    /// To just before or after a deadline of the device's current session (one second on a test clock,
    /// a little more than the tolerance on a wall clock); one second when it has none or it has passed.
    To {
        device: u8,
        deadline: Deadline,
        side: Side,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deadline {
    AccessExpiry,
    RefreshDue,
    Idle,
    Absolute,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Before,
    After,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Login { device, user } => write!(f, "device {device} signs in as user {user}"),
            Self::Call { device, method: CallMethod::Get, .. } => write!(f, "device {device} calls the API (GET)"),
            Self::Call { device, method: CallMethod::Post, proof } => {
                let proof = match proof {
                    Proof::Right => "its own CSRF proof".to_owned(),
                    Proof::Missing => "no CSRF proof".to_owned(),
                    Proof::Foreign { from } => format!("the CSRF proof of device {from}"),
                    Proof::ChosenPair => "a CSRF cookie and header it chose itself".to_owned(),
                };
                write!(f, "device {device} calls the API (POST) with {proof}")
            }
            Self::Session { device } => write!(f, "device {device} reads its session"),
            Self::Sessions { device } => write!(f, "device {device} lists its user's sessions"),
            Self::Advance { by } => write!(f, "the clock moves {by}"),
            Self::Logout { device } => write!(f, "device {device} signs out"),
            Self::LogoutAll { device } => write!(f, "device {device} signs out everywhere"),
            Self::EndDevice { device, other } => write!(f, "device {device} ends device {other}'s latest session"),
            Self::BackchannelLogout { device, by: LogoutBy::Sid } => {
                write!(f, "the provider sends a back-channel logout for device {device}'s provider session")
            }
            Self::BackchannelLogout { device, by: LogoutBy::Sub } => {
                write!(f, "the provider sends a back-channel logout for device {device}'s user")
            }
            Self::FailNextRefresh { device, error } => {
                let e = match error {
                    Failure::InvalidGrant => "invalid_grant",
                    Failure::Transient => "a server error",
                };
                write!(f, "the provider will answer device {device}'s next refresh with {e}")
            }
            Self::Burst { device, requests } => write!(f, "device {device} makes {requests} concurrent API calls"),
            Self::Background => f.write_str("the target runs its background pass"),
            Self::Replay { device } => write!(f, "someone presents device {device}'s previous session cookie"),
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Seconds(s) => write!(f, "{s} s"),
            Self::TouchInterval => f.write_str("one touch interval and a second"),
            Self::HalfTokenLife => f.write_str("half an access token's life and a second"),
            Self::ThirdOfLifetime => f.write_str("a third of the absolute lifetime"),
            Self::Keepalive => f.write_str("half the idle timeout"),
            Self::To { device, deadline, side } => {
                let side = match side {
                    Side::Before => "to just before",
                    Side::After => "to just after",
                };
                let deadline = match deadline {
                    Deadline::AccessExpiry => "access token's expiry",
                    Deadline::RefreshDue => "refresh-due instant",
                    Deadline::Idle => "idle deadline",
                    Deadline::Absolute => "absolute deadline",
                };
                write!(f, "{side} device {device}'s {deadline}")
            }
        }
    }
}

fn device() -> impl Strategy<Value = u8> {
    0..DEVICES
}

fn span() -> impl Strategy<Value = Span> {
    let deadline = prop_oneof![
        Just(Deadline::AccessExpiry),
        Just(Deadline::RefreshDue),
        Just(Deadline::Idle),
        Just(Deadline::Absolute)
    ];
    let side = prop_oneof![Just(Side::After), Just(Side::Before)];
    prop_oneof![
        2 => (1u32..=30).prop_map(Span::Seconds),
        2 => Just(Span::TouchInterval),
        1 => Just(Span::HalfTokenLife),
        1 => Just(Span::ThirdOfLifetime),
        4 => (device(), deadline, side).prop_map(|(device, deadline, side)| Span::To { device, deadline, side }),
    ]
}

fn proof() -> impl Strategy<Value = Proof> {
    prop_oneof![
        6 => Just(Proof::Right),
        1 => Just(Proof::Missing),
        1 => device().prop_map(|from| Proof::Foreign { from }),
        1 => Just(Proof::ChosenPair),
    ]
}

/// One step, weighted towards sign-ins, calls and clock moves.
pub fn step() -> impl Strategy<Value = Step> {
    let method = prop_oneof![Just(CallMethod::Get), Just(CallMethod::Post)];
    let failure = prop_oneof![Just(Failure::InvalidGrant), Just(Failure::Transient)];
    let by = prop_oneof![Just(LogoutBy::Sid), Just(LogoutBy::Sub)];
    prop_oneof![
        4 => (device(), 0..USERS).prop_map(|(device, user)| Step::Login { device, user }),
        8 => (device(), method, proof()).prop_map(|(device, method, proof)| Step::Call { device, method, proof }),
        6 => span().prop_map(|by| Step::Advance { by }),
        2 => device().prop_map(|device| Step::Session { device }),
        1 => device().prop_map(|device| Step::Sessions { device }),
        1 => device().prop_map(|device| Step::Logout { device }),
        1 => device().prop_map(|device| Step::LogoutAll { device }),
        1 => (device(), device()).prop_map(|(device, other)| Step::EndDevice { device, other }),
        1 => (device(), by).prop_map(|(device, by)| Step::BackchannelLogout { device, by }),
        2 => (device(), failure).prop_map(|(device, error)| Step::FailNextRefresh { device, error }),
        2 => (device(), 2u8..=6).prop_map(|(device, requests)| Step::Burst { device, requests }),
        2 => Just(Step::Background),
        1 => device().prop_map(|device| Step::Replay { device }),
    ]
}

/// A sequence of up to `max` steps that starts with a sign-in, so most sequences have a session to work on.
pub fn sequence(max: usize) -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 0..max.max(1))
        .prop_map(|rest| std::iter::once(Step::Login { device: 0, user: 0 }).chain(rest).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_json() {
        let steps = vec![
            Step::Login { device: 0, user: 1 },
            Step::Advance { by: Span::To { device: 0, deadline: Deadline::Idle, side: Side::After } },
            Step::Call { device: 0, method: CallMethod::Post, proof: Proof::Foreign { from: 2 } },
        ];
        let json = serde_json::to_string(&steps).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Step>>(&json).unwrap(), steps);
    }
}
