//! A conformance harness for Backend-for-Frontend session servers, with `bff-session-core` as the oracle.
//!
//! [`run`] starts a dev OpenID provider, drives a target BFF over HTTP with sequences of [`Step`]s generated
//! by proptest (sign-ins from several devices, API calls with right, missing and foreign CSRF proofs, clock
//! moves across every deadline, logouts, back-channel logouts, provider faults, bursts of concurrent calls)
//! and compares every response, cookie change, device list and the provider's refresh count with what
//! [`Oracle`] (core's `Registry` fed the same steps) predicts. A divergence is shrunk to a minimal sequence
//! and printed as readable steps with a replay command.
//!
//! For targets that cannot be held to every observation (peers written elsewhere, on real time), [`verdict`]
//! gives a verdict per lifecycle [`invariant`] instead, as the [`profile`] of the target allows, and
//! [`report`] renders the report cards.
//!
//! The harness binary's `trace` subcommand replays an audit trail (JSON lines of lifecycle events) through
//! [`bff_session_core::trace`] and reports the first illegal transition.
//!
//! The protocol a target must speak is in this crate's README.

pub mod invariant;
pub mod judge;
pub mod mapping;
pub mod oracle;
pub mod profile;
pub mod provider;
pub mod report;
pub mod run;
pub mod step;
pub mod target;
pub mod verdict;

pub use mapping::Mapping;
pub use oracle::Oracle;
pub use run::{Divergence, Harness, Options, Report};
pub use step::Step;
