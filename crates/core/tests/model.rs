//! The registry against the reference model, under every preset and a policy of tiny durations.
//!
//! Each step's outcome, tokens revoked at the provider and cookie effect must equal the model's, and every
//! named invariant in `support/assertions.rs` must hold after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bff_session_core::Registry;
use proptest::test_runner::{Config, FileFailurePersistence};
use proptest_state_machine::{StateMachineTest, prop_state_machine};

use support::assertions::{History, check_step};
use support::driver::{observe, run};
use support::model::Model;
use support::strategies::{AsvsL2, Hardened, Helix, PolicyChoice, Reference, Tiny};

struct AgainstModel<P>(std::marker::PhantomData<P>);

struct Sut {
    registry: Registry,
    history: History,
}

impl<P: PolicyChoice> StateMachineTest for AgainstModel<P> {
    type SystemUnderTest = Sut;
    type Reference = Reference<P>;

    fn init_test(model: &Model) -> Sut {
        Sut { registry: Registry::new(model.policy.clone()).expect("valid policy"), history: History::default() }
    }

    fn apply(mut sut: Sut, model: &Model, _op: support::model::Op) -> Sut {
        if let Some(step) = run(&mut sut.registry, model) {
            let expected = &model.last.as_ref().expect("model recorded the step").1;
            assert_eq!(&observe(&step.transition), expected, "command {:?} at {}", step.command, step.now);
            check_step(&mut sut.history, &step, &sut.registry);
        }
        sut
    }
}

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/model.txt"))),
        ..Config::default()
    }
}

prop_state_machine! {
    #![proptest_config(config())]

    /// The registry agrees with the model when every duration is small and deadlines come quickly.
    #[test]
    fn registry_agrees_with_model_under_tiny_policy(sequential 1..64 => AgainstModel<Tiny>);

    /// The registry agrees with the model under the `helix` preset.
    #[test]
    fn registry_agrees_with_model_under_helix(sequential 1..64 => AgainstModel<Helix>);

    /// The registry agrees with the model under the hardened `default` preset.
    #[test]
    fn registry_agrees_with_model_under_default(sequential 1..64 => AgainstModel<Hardened>);

    /// The registry agrees with the model under the `asvs_l2` preset.
    #[test]
    fn registry_agrees_with_model_under_asvs_l2(sequential 1..64 => AgainstModel<AsvsL2>);
}
