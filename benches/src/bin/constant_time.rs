//! Constant time, measured the dudect way: two classes of inputs that differ only in how close they are to a
//! secret, timed interleaved in random order, and Welch's t-test on the two distributions. |t| under 5 is no
//! evidence of a leak; a comparison that stops at the first differing byte reaches hundreds.
//!
//! - `csrf_verify`: proofs that differ from the session's own proof only in their last character (Left)
//!   against proofs that differ everywhere (Right).
//! - `session_lookup`: unknown session IDs that share 31 of 32 bytes with a stored one (Left) against random
//!   unknown IDs (Right), looked up in a registry of 10,000 sessions, each class drawn from a pool of 10,000.
//!   The lookup is by the ID's SHA-256, so nearness to a stored ID must not show.
//!
//! - `session_lookup_control`: the same lookup with both classes drawn alike (random unknown IDs), an A/A
//!   test: whatever |t| it reaches is this harness's own bias on this machine, the yardstick for the other
//!   two.
//!
//! `cargo xtask constant-time` runs it (optimised) and prints the t-values; `--continuous csrf_verify` keeps
//! sampling until interrupted.

use bff_session_core::lifecycle::{Login, NewSession};
use bff_session_core::{Device, Policy, Registry, SessionId, Timestamp, UserId, csrf};
use dudect_bencher::rand::{Rng, RngExt};
use dudect_bencher::{BenchRng, Class, CtRunner, ctbench_main};

const SAMPLES: usize = 100_000;

fn class(rng: &mut BenchRng) -> Class {
    if rng.random::<bool>() { Class::Left } else { Class::Right }
}

fn random_bytes(rng: &mut BenchRng) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    bytes
}

fn random_id(rng: &mut BenchRng) -> SessionId {
    SessionId::from_random_bytes(random_bytes(rng))
}

fn csrf_verify(runner: &mut CtRunner, rng: &mut BenchRng) {
    let id = random_id(rng);
    let own = csrf::proof_for(&id);
    let mut inputs = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let class = class(rng);
        let proof = match class {
            // The right proof but for its last character: as near as a guess can get.
            Class::Left => {
                let last = if own.ends_with('A') { "Q" } else { "A" };
                format!("{}{last}", &own[..own.len() - 1])
            }
            Class::Right => csrf::proof_for(&random_id(rng)),
        };
        inputs.push((class, proof));
    }
    for (class, proof) in inputs {
        runner.run_one(class, || csrf::verify(&id, Some(&proof)));
    }
}

fn session_lookup(runner: &mut CtRunner, rng: &mut BenchRng) {
    lookup(runner, rng, true);
}

fn session_lookup_control(runner: &mut CtRunner, rng: &mut BenchRng) {
    lookup(runner, rng, false);
}

/// Left IDs are one bit away from a stored one when `near`, random like Right ones otherwise. Both classes
/// draw from a pool of as many IDs as are stored, so each class repeats its IDs equally often: drawing Left
/// from the stored pool and Right fresh made repetition (a key whose tree path is already cached) look like
/// a leak of nearness, and the swapped classes showed it.
fn lookup(runner: &mut CtRunner, rng: &mut BenchRng, near: bool) {
    const STORED: usize = 10_000;
    let policy = Policy::hardened();
    let now = Timestamp::from_millis(1_700_000_000_000);
    let mut registry = Registry::new(policy).expect("valid policy");
    let mut stored = Vec::with_capacity(STORED);
    for _ in 0..STORED {
        let bytes = random_bytes(rng);
        let id = SessionId::from_random_bytes(bytes);
        let new = NewSession { id, user: UserId::new("u"), login: Login::Local, device: Device::default() };
        let _ = registry.create(&new, None, now);
        stored.push(bytes);
    }
    let left: Vec<[u8; 32]> = if near {
        stored
            .iter()
            .map(|&bytes| {
                let mut bytes = bytes;
                bytes[31] ^= 1;
                bytes
            })
            .collect()
    } else {
        (0..STORED).map(|_| random_bytes(rng)).collect()
    };
    let right: Vec<[u8; 32]> = (0..STORED).map(|_| random_bytes(rng)).collect();
    let mut inputs = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let class = class(rng);
        let pool = match class {
            Class::Left => &left,
            Class::Right => &right,
        };
        let id = SessionId::from_random_bytes(pool[rng.random_range(0..STORED)]);
        inputs.push((class, id.encode()));
    }
    // What every request does before a record is touched: decode the cookie, hash the ID, look the key up.
    for (class, cookie) in inputs {
        runner.run_one(class, || SessionId::decode(&cookie).map(|id| registry.get(&id.key()).is_some()));
    }
}

ctbench_main!(csrf_verify, session_lookup, session_lookup_control);
