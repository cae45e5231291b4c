//! The report card's verdicts on the toy BFFs: the correct one holds every invariant, and each defect is
//! reported against the invariant it breaks, with a short reproducer. Regressions for the report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bff_session_conformance::invariant::Invariant;
use bff_session_conformance::verdict::{Outcome, Verdict};
use support::toy::Defect;
use support::verdicts_on_toy;

fn outcome(verdicts: &[Verdict], invariant: Invariant) -> &Verdict {
    verdicts.iter().find(|v| v.invariant == invariant).unwrap()
}

/// `defect` violates `invariant`, with a reproducer of at most `max` steps.
fn violates(policy: &str, defect: Defect, invariant: Invariant, max: usize) {
    let verdicts = verdicts_on_toy(policy, defect, 8);
    let v = outcome(&verdicts, invariant);
    assert_eq!(v.outcome, Outcome::Violated, "{defect:?}: {v:?}");
    let r = v.reproducer.as_ref().unwrap();
    assert!(r.steps.len() <= max, "{defect:?}: a reproducer of {} steps: {:?}", r.steps.len(), r.steps);
    assert!(r.index < r.steps.len());
}

#[test]
fn a_correct_bff_holds_every_invariant() {
    for policy in ["default", "helix"] {
        let verdicts = verdicts_on_toy(policy, Defect::None, 6);
        for v in &verdicts {
            assert!(matches!(v.outcome, Outcome::Holds | Outcome::NotApplicable), "{policy}: {v:?}");
            if v.outcome == Outcome::Holds {
                assert_eq!(v.exercised, 6, "{policy}: {v:?}");
            }
        }
    }
}

#[test]
fn refresh_without_single_flight_breaks_single_flight() {
    violates("default", Defect::RefreshWithoutSingleFlight, Invariant::SingleFlightBurstAtExpiry, 4);
}

#[test]
fn an_ignored_invalid_grant_breaks_its_invariant() {
    violates("default", Defect::InvalidGrantIgnored, Invariant::InvalidGrantEndsSession, 5);
}

#[test]
fn an_unbound_csrf_pair_breaks_csrf_binding() {
    violates("default", Defect::CsrfAcceptsEqualPair, Invariant::CsrfBoundToSession, 7);
}

#[test]
fn a_touch_that_moves_the_absolute_deadline_breaks_it() {
    violates("helix", Defect::TouchExtendsAbsolute, Invariant::UseDoesNotExtendAbsolute, 8);
}
