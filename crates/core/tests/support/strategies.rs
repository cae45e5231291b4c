//! Generators of op sequences, scaled to the policy so that generated sequences cross every deadline.

use std::marker::PhantomData;
use std::time::Duration;

use bff_session_core::{Policy, RevocationReason, Trigger};
use proptest::prelude::*;
use proptest_state_machine::ReferenceStateMachine;

use super::model::{Model, OidcOp, Op, Pick, Proof, ResultOp, Target, USERS};

/// Which policy a generated sequence runs under.
pub trait PolicyChoice: 'static {
    fn policy() -> Policy;
}

/// Small numbers everywhere, so that short sequences reach every deadline and back-off.
pub struct Tiny;
pub struct Helix;
pub struct Hardened;
pub struct AsvsL2;

impl PolicyChoice for Tiny {
    fn policy() -> Policy {
        super::model::tiny_policy()
    }
}
impl PolicyChoice for Helix {
    fn policy() -> Policy {
        Policy::helix()
    }
}
impl PolicyChoice for Hardened {
    fn policy() -> Policy {
        Policy::hardened()
    }
}
impl PolicyChoice for AsvsL2 {
    fn policy() -> Policy {
        Policy::asvs_l2()
    }
}

/// The reference state machine over policy `P`.
pub struct Reference<P>(PhantomData<P>);

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn reason() -> impl Strategy<Value = RevocationReason> {
    prop_oneof![
        Just(RevocationReason::Logout),
        Just(RevocationReason::LogoutEverywhere),
        Just(RevocationReason::RevokedFromDevice),
        Just(RevocationReason::Superseded),
        Just(RevocationReason::Admin),
        Just(RevocationReason::SessionLimit),
        Just(RevocationReason::BackchannelLogout),
        Just(RevocationReason::RefreshRejected),
    ]
}

fn token_lifetime(p: &Policy) -> impl Strategy<Value = Option<u64>> + use<> {
    prop::option::weighted(0.8, 0..=2 * ms(p.assumed_token_lifetime))
}

fn refresh_lifetime(p: &Policy) -> impl Strategy<Value = Option<u64>> + use<> {
    prop::option::weighted(0.2, 0..=ms(p.absolute_lifetime))
}

/// Clock moves: mostly small steps around the touch interval and token lifetimes, sometimes across the
/// idle or absolute deadline or the tombstone retention, and sometimes backwards. `Op::ClockTo` (in [`op`])
/// lands on the exact instants where rules change, and a millisecond either side, in either direction.
fn clock(p: &Policy) -> impl Strategy<Value = Op> + use<> {
    let small = (2 * ms(p.touch_interval)).min(ms(p.assumed_token_lifetime) / 2);
    let medium = ms(p.idle_timeout.unwrap_or(p.absolute_lifetime / 4));
    let large = ms(p.absolute_lifetime + p.tombstone_retention);
    prop_oneof![
        6 => (0..=small).prop_map(Op::Advance),
        2 => (0..=ms(p.refresh_lease) * 2).prop_map(Op::Advance),
        2 => (0..=medium * 11 / 10).prop_map(Op::Advance),
        1 => (0..=large).prop_map(Op::Advance),
        1 => (0..=small).prop_map(Op::Rewind),
    ]
}

/// Any session or ticket, with the newest ones (where the action is) more often.
fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![1 => any::<u16>().prop_map(Pick::Nth), 1 => (0..3u8).prop_map(Pick::Newest)]
}

/// A CSRF proof of the attacker's making: any string, or one shaped like a real proof (43 base64url
/// characters) that belongs to no session.
fn forged() -> impl Strategy<Value = String> {
    prop_oneof![".{0,60}", "[A-Za-z0-9_-]{43}"]
}

pub fn op(p: &Policy) -> impl Strategy<Value = Op> + use<> {
    let idx = pick;
    let user = || 0..USERS;
    let oidc = (prop::option::of(0..3u8), token_lifetime(p), prop::bool::weighted(0.85), refresh_lifetime(p)).prop_map(
        |(sid, expires_in, refresh_token, refresh_expires_in)| OidcOp {
            sid,
            expires_in,
            refresh_token,
            refresh_expires_in,
        },
    );
    let target =
        prop_oneof![8 => idx().prop_map(Target::Session), 1 => Just(Target::Garbage), 1 => Just(Target::NoCookie)];
    let proof = prop_oneof![
        6 => Just(Proof::Own),
        1 => Just(Proof::Missing),
        1 => idx().prop_map(Proof::Foreign),
        1 => forged().prop_map(Proof::Forged),
    ];
    let result = prop_oneof![
        6 => (token_lifetime(p), any::<bool>(), refresh_lifetime(p))
            .prop_map(|(expires_in, rotate, refresh_expires_in)| ResultOp::Success { expires_in, rotate, refresh_expires_in }),
        1 => Just(ResultOp::InvalidGrant),
        2 => Just(ResultOp::Transient),
    ];
    let trigger = prop_oneof![Just(Trigger::Request), Just(Trigger::Background)];
    prop_oneof![
        4 => (user(), prop::option::weighted(0.8, oidc), prop::option::weighted(0.2, idx()))
            .prop_map(|(user, oidc, supersede)| Op::Create { user, oidc, supersede }),
        8 => (target, any::<bool>(), proof).prop_map(|(target, unsafe_method, proof)| Op::Authenticate { target, unsafe_method, proof }),
        3 => idx().prop_map(Op::Touch),
        6 => (idx(), trigger).prop_map(|(i, t)| Op::BeginRefresh(i, t)),
        2 => idx().prop_map(Op::RenewLease),
        6 => (idx(), result).prop_map(|(i, r)| Op::CompleteRefresh(i, r)),
        1 => (idx(), reason()).prop_map(|(i, r)| Op::Revoke(i, r)),
        1 => (user(), reason()).prop_map(|(u, r)| Op::RevokeUser(u, r)),
        1 => (user(), idx(), idx()).prop_map(|(u, i, from)| Op::RevokeHandle(u, i, from)),
        1 => (0..3u8).prop_map(Op::RevokeBySid),
        1 => user().prop_map(Op::RevokeBySub),
        3 => Just(Op::Tick),
        10 => clock(p),
        6 => (idx(), -1..=1i8).prop_map(|(i, offset)| Op::ClockTo(i, offset)),
    ]
}

impl<P: PolicyChoice> ReferenceStateMachine for Reference<P> {
    type State = Model;
    type Transition = Op;

    /// Half the sequences wander; the others follow the newest session's rotation chain a little or a lot.
    fn init_state() -> BoxedStrategy<Model> {
        prop_oneof![2 => Just(0u32), 1 => Just(2u32), 1 => Just(6u32)]
            .prop_map(|focus| Model { focus, ..Model::new(P::policy()) })
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        match state.chain_step() {
            Some(next) if state.focus > 0 => {
                prop_oneof![8 - state.focus => op(&P::policy()), state.focus => Just(next)].boxed()
            }
            _ => op(&P::policy()).boxed(),
        }
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        state.step(op);
        state
    }
}
