//! One property per invariant. Each runs generated op sequences (the same generator as the model test, under
//! the tiny policy where deadlines come quickly) against the registry and checks its one invariant after
//! every step. ARCHITECTURE.md lists them by these names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bff_session_core::record::{self, DecodeError, Unsealed};
use bff_session_core::{Command, Registry, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use proptest_state_machine::ReferenceStateMachine;

use support::assertions::{self as check, History};
use support::driver::{Step, run};
use support::model::{Model, Op};
use support::strategies::{PolicyChoice, Reference, Tiny};

type Sequence = (Model, Vec<Op>, Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>);

fn sequences() -> impl Strategy<Value = Sequence> {
    Reference::<Tiny>::sequential_strategy(1..64)
}

/// Runs a sequence, handing each executed step and the registry after it to `check`.
fn drive(initial: Model, ops: &[Op], mut check: impl FnMut(&mut History, &Step, &Registry)) -> Registry {
    let mut model = initial;
    let mut registry = Registry::new(Tiny::policy()).expect("valid policy");
    let mut history = History::default();
    for op in ops {
        model.step(op);
        if let Some(step) = run(&mut registry, &model) {
            check(&mut history, &step, &registry);
        }
    }
    registry
}

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/invariants.txt"))),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// A foreign or forged CSRF proof is always refused, and changes nothing.
    #[test]
    fn forged_csrf_is_refused((model, ops, _) in sequences()) {
        drive(model, &ops, |_, step, after| check::forged_csrf_is_refused(step, after));
    }

    /// Revoked or expired never authenticates again (no resurrection), whatever comes later.
    #[test]
    fn no_resurrection((model, ops, _) in sequences()) {
        drive(model, &ops, check::no_resurrection);
    }

    /// Authentication succeeds exactly when the session exists, is active and is within both deadlines.
    #[test]
    fn authenticates_exactly_live_sessions((model, ops, _) in sequences()) {
        drive(model, &ops, |_, step, after| check::authenticates_exactly_live_sessions(step, after));
    }

    /// At most one live refresh ticket per session; completing with a stale ticket changes nothing.
    #[test]
    fn single_flight((model, ops, _) in sequences()) {
        drive(model, &ops, check::single_flight);
    }

    /// A rotated-out refresh token is never handed out again.
    #[test]
    fn rotated_tokens_stay_retired((model, ops, _) in sequences()) {
        drive(model, &ops, check::rotated_tokens_stay_retired);
    }

    /// No refresh begins for a session that is not active.
    #[test]
    fn no_refresh_for_ended_sessions((model, ops, _) in sequences()) {
        drive(model, &ops, |_, step, _| check::no_refresh_for_ended_sessions(step));
    }

    /// Touches are bounded by the touch interval, so store writes per session are too.
    #[test]
    fn touches_are_bounded((model, ops, _) in sequences()) {
        drive(model, &ops, |_, step, after| check::touches_are_bounded(step, after));
    }

    /// Revoke-all ends exactly that user's sessions.
    #[test]
    fn revoke_all_ends_exactly_that_user((model, ops, _) in sequences()) {
        drive(model, &ops, |_, step, after| check::revoke_all_ends_exactly_that_user(step, after));
    }

    /// No command extends the absolute deadline.
    #[test]
    fn absolute_deadline_is_fixed((model, ops, _) in sequences()) {
        drive(model, &ops, |h, _, after| check::absolute_deadline_is_fixed(h, after));
    }

    /// A refused CSRF check has no effect: no state change, no touch, no refresh.
    #[test]
    fn refused_csrf_has_no_effect((model, ops, _) in sequences()) {
        drive(model, &ops, |_, step, after| check::refused_csrf_has_no_effect(step, after));
    }

    /// Every change to a record is announced as a Persist at its new version; every removal as a Delete.
    #[test]
    fn changes_are_persisted((model, ops, _) in sequences()) {
        drive(model, &ops, |_, step, after| check::changes_are_persisted(step, after));
    }

    /// Persisted records round-trip through the stored encoding.
    #[test]
    fn records_round_trip((model, ops, _) in sequences()) {
        drive(model, &ops, |_, _, after| check::records_round_trip(after));
    }

    /// Replay of a command log reproduces the state exactly: same outcomes, same effects, equal registries.
    #[test]
    fn replay_reproduces_state((model, ops, _) in sequences()) {
        let mut log: Vec<(Timestamp, Command, _)> = Vec::new();
        let original = drive(model, &ops, |_, step, _| {
            log.push((step.now, step.command.clone(), step.transition.clone()));
        });
        let mut replayed = Registry::new(Tiny::policy()).expect("valid policy");
        for (now, command, transition) in &log {
            prop_assert_eq!(&replayed.apply(command, *now), transition);
        }
        prop_assert_eq!(replayed, original);
    }

    /// Decoding arbitrary bytes gives an error, never a panic; bytes with the record tag too.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(tail in prop::collection::vec(any::<u8>(), 0..512), tagged in any::<bool>()) {
        let bytes = if tagged { [b"BFFS\x01".as_slice(), &tail].concat() } else { tail };
        let _ = record::decode(&bytes, &Unsealed);
    }
}

#[test]
fn decode_errors_are_precise() {
    assert_eq!(record::decode(b"", &Unsealed), Err(DecodeError::NotARecord));
    assert_eq!(
        record::decode(b"BFFS", &Unsealed).map_err(|e| e.to_string()),
        Err("malformed record: no format byte".into())
    );
    assert_eq!(record::decode(b"BFFS\x07", &Unsealed), Err(DecodeError::UnknownFormat { found: 7 }));
    assert!(matches!(record::decode(b"BFFS\x01\xff", &Unsealed), Err(DecodeError::Malformed { .. })));
}
