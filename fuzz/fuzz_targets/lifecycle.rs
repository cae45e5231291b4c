//! Command sequences from raw bytes: the registry against the reference model of the property tests, with
//! every named invariant checked after every step.
#![no_main]

use arbitrary::{Result, Unstructured};
use bff_session_core::{Registry, RevocationReason, Trigger};
use libfuzzer_sys::fuzz_target;

mod support;

use support::assertions::{History, check_step};
use support::driver::{observe, run};
use support::model::{Model, OidcOp, Op, Pick, Proof, ResultOp, Target, USERS, tiny_policy};

const MAX_STEPS: usize = 200;

fn op(u: &mut Unstructured<'_>, scale: u64) -> Result<Op> {
    let idx = |u: &mut Unstructured<'_>| -> Result<Pick> {
        Ok(if u.arbitrary()? { Pick::Nth(u.arbitrary()?) } else { Pick::Newest(u.int_in_range(0..=2)?) })
    };
    let user = |u: &mut Unstructured<'_>| u.int_in_range(0..=USERS - 1);
    let lifetime = |u: &mut Unstructured<'_>| -> Result<Option<u64>> {
        Ok(if u.ratio(4, 5)? { Some(u.int_in_range(0..=2 * scale)?) } else { None })
    };
    Ok(match u.int_in_range(0..=14u8)? {
        0 => Op::Create {
            user: user(u)?,
            oidc: if u.ratio(4, 5)? {
                Some(OidcOp {
                    sid: if u.arbitrary()? { Some(u.int_in_range(0..=2)?) } else { None },
                    expires_in: lifetime(u)?,
                    refresh_token: u.ratio(9, 10)?,
                    refresh_expires_in: if u.ratio(1, 5)? { Some(u.int_in_range(0..=12 * scale)?) } else { None },
                })
            } else {
                None
            },
            supersede: if u.ratio(1, 5)? { Some(idx(u)?) } else { None },
        },
        1 => Op::Authenticate {
            target: match u.int_in_range(0..=9u8)? {
                0 => Target::Garbage,
                1 => Target::NoCookie,
                _ => Target::Session(idx(u)?),
            },
            unsafe_method: u.arbitrary()?,
            proof: match u.int_in_range(0..=8u8)? {
                0 => Proof::Missing,
                1 => Proof::Foreign(idx(u)?),
                2 => Proof::Forged(u.arbitrary()?),
                _ => Proof::Own,
            },
        },
        2 => Op::Touch(idx(u)?),
        3 => Op::BeginRefresh(idx(u)?, u.arbitrary::<Trigger>()?),
        4 => Op::CompleteRefresh(
            idx(u)?,
            match u.int_in_range(0..=8u8)? {
                0 => ResultOp::InvalidGrant,
                1 | 2 => ResultOp::Transient,
                _ => ResultOp::Success { expires_in: lifetime(u)?, rotate: u.arbitrary()?, refresh_expires_in: None },
            },
        ),
        5 => Op::Revoke(idx(u)?, u.arbitrary::<RevocationReason>()?),
        6 => Op::RevokeUser(user(u)?, u.arbitrary::<RevocationReason>()?),
        7 => Op::RevokeHandle(user(u)?, idx(u)?, idx(u)?),
        8 => Op::RevokeBySid(u.int_in_range(0..=2)?),
        9 => Op::RevokeBySub(user(u)?),
        10 => Op::Tick,
        11 => Op::Rewind(u.int_in_range(0..=scale / 2)?),
        12 => Op::RenewLease(idx(u)?),
        13 => Op::ClockTo(idx(u)?, u.int_in_range(-1..=1)?),
        _ => Op::Advance(if u.ratio(1, 8)? { u.int_in_range(0..=14 * scale)? } else { u.int_in_range(0..=scale / 2)? }),
    })
}

fuzz_target!(|data: &[u8]| {
    let policy = tiny_policy();
    let scale = policy.assumed_token_lifetime.as_millis() as u64;
    let mut u = Unstructured::new(data);
    let mut model = Model::new(policy.clone());
    let Ok(mut registry) = Registry::new(policy) else { return };
    let mut history = History::default();
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = op(&mut u, scale) else { break };
        model.step(&op);
        if let Some(step) = run(&mut registry, &model) {
            let expected = &model.last.as_ref().map(|(_, e)| e.clone());
            assert_eq!(Some(observe(&step.transition)), *expected, "{:?}", step.command);
            check_step(&mut history, &step, &registry);
        }
    }
});
