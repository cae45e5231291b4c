//! The harness against a toy BFF: it conforms when it is right, and each of the known defects is found
//! and shrunk to a short, readable reproducer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bff_session_conformance::step::{Failure, Proof, Step};
use support::run_against_toy;
use support::toy::Defect;

/// A reproducer must be short enough to read at a glance.
const SHORT: usize = 8;

fn reproducer(policy: &str, defect: Defect) -> Vec<Step> {
    let report = run_against_toy(policy, defect, 300);
    let failure = report.failure.unwrap_or_else(|| panic!("{defect:?} was not found in 300 sequences"));
    assert!(failure.steps.len() <= SHORT, "{defect:?}: reproducer of {} steps", failure.steps.len());
    failure.steps
}

#[test]
fn a_correct_bff_conforms() {
    let report = run_against_toy("default", Defect::None, 150);
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert_eq!(report.sequences, 150);
}

#[test]
fn refresh_without_single_flight_is_found() {
    let steps = reproducer("default", Defect::RefreshWithoutSingleFlight);
    assert!(steps.iter().any(|s| matches!(s, Step::Burst { .. })), "{steps:?}");
}

#[test]
fn a_session_revived_by_a_write_after_logout_is_found() {
    let steps = reproducer("default", Defect::WriteAfterLogoutRevives);
    let ends = |s: &Step| {
        matches!(
            s,
            Step::Logout { .. }
                | Step::LogoutAll { .. }
                | Step::EndDevice { .. }
                | Step::BackchannelLogout { .. }
                | Step::Login { .. }
        )
    };
    assert!(steps.iter().skip(1).any(ends), "{steps:?}");
}

#[test]
fn an_ignored_invalid_grant_is_found() {
    let steps = reproducer("default", Defect::InvalidGrantIgnored);
    assert!(steps.iter().any(|s| matches!(s, Step::FailNextRefresh { error: Failure::InvalidGrant, .. })), "{steps:?}");
}

#[test]
fn a_csrf_check_that_accepts_an_equal_pair_is_found() {
    let steps = reproducer("default", Defect::CsrfAcceptsEqualPair);
    assert!(steps.iter().any(|s| matches!(s, Step::Call { proof: Proof::ChosenPair, .. })), "{steps:?}");
}

#[test]
fn a_touch_that_extends_the_absolute_deadline_is_found() {
    // helix has no idle timeout, so only the absolute deadline ends an unused-but-touched session.
    let steps = reproducer("helix", Defect::TouchExtendsAbsolute);
    assert!(steps.len() >= 3, "{steps:?}");
}
