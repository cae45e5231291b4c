//! Pending logins against a deliberately naive model: a list in insertion order, plain millisecond
//! arithmetic, linear scans.

use std::time::Duration;

use bff_session_core::login::{LoginKey, LoginPolicy, LoginRefusal, LoginSecrets, LoginState, Logins};
use bff_session_core::{Secret, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

#[derive(Clone, Debug)]
enum Op {
    Begin(u8),
    Redeem(u8),
    Sweep,
    Advance(u64),
}

const LIFETIME_MS: u64 = 1_000;
const CAPACITY: usize = 4;

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (0..8u8).prop_map(Op::Begin),
        4 => (0..8u8).prop_map(Op::Redeem),
        1 => Just(Op::Sweep),
        // Steps that land exactly on, just before and just after the lifetime, and small ones.
        3 => prop_oneof![Just(LIFETIME_MS - 1), Just(LIFETIME_MS), Just(LIFETIME_MS + 1), 0..400u64]
            .prop_map(Op::Advance),
    ];
    prop::collection::vec(op, 1..64)
}

fn key(n: u8) -> LoginKey {
    LoginKey::of_cookie(&format!("cookie-{n}"))
}

fn secrets(n: u8) -> LoginSecrets {
    LoginSecrets {
        state: Secret::new(format!("state-{n}")),
        nonce: Secret::new(format!("nonce-{n}")),
        verifier: Secret::new(format!("verifier-{n}")),
    }
}

/// The model's entry: name, start time (ms), used.
#[derive(Clone, Debug)]
struct Entry {
    n: u8,
    started: u64,
    used: bool,
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/logins.txt"))),
        ..ProptestConfig::with_cases(512)
    })]

    /// `login_single_use_ttl_bounded`: a login redeems at most once, only before its lifetime is over, the
    /// table never holds more than its capacity, and it evicts the oldest login first.
    #[test]
    fn login_single_use_ttl_bounded(ops in ops()) {
        let policy = LoginPolicy { lifetime: Duration::from_millis(LIFETIME_MS), capacity: CAPACITY };
        let mut logins = Logins::new(policy);
        let mut model: Vec<Entry> = Vec::new();
        let mut now = 1_000_000u64;
        for op in ops {
            let at = Timestamp::from_millis(now);
            match op {
                Op::Begin(n) => {
                    model.retain(|e| e.n != n);
                    let mut expected_evicted = Vec::new();
                    while model.len() >= CAPACITY {
                        expected_evicted.push(key(model.remove(0).n));
                    }
                    model.push(Entry { n, started: now, used: false });
                    let evicted = logins.begin(key(n), secrets(n), format!("/r{n}"), at);
                    prop_assert_eq!(evicted, expected_evicted);
                }
                Op::Redeem(n) => {
                    let expected = match model.iter_mut().find(|e| e.n == n) {
                        None => Err(LoginRefusal::Unknown),
                        Some(e) if e.used => Err(LoginRefusal::Used),
                        Some(e) if now >= e.started + LIFETIME_MS => Err(LoginRefusal::Expired),
                        Some(e) => {
                            e.used = true;
                            Ok(n)
                        }
                    };
                    let got = logins.redeem(&key(n), at);
                    match (&got, expected) {
                        (Ok(login), Ok(n)) => {
                            prop_assert_eq!(&login.secrets, &secrets(n));
                            prop_assert_eq!(&login.return_to, &format!("/r{n}"));
                            prop_assert_eq!(login.state, LoginState::Used { at });
                        }
                        (got, expected) => prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), expected.map(|_| ())),
                    }
                }
                Op::Sweep => {
                    let mut expected: Vec<LoginKey> =
                        model.iter().filter(|e| now >= e.started + LIFETIME_MS).map(|e| key(e.n)).collect();
                    model.retain(|e| now < e.started + LIFETIME_MS);
                    let mut swept = logins.sweep(at);
                    expected.sort();
                    swept.sort();
                    prop_assert_eq!(swept, expected);
                }
                Op::Advance(ms) => now += ms,
            }
            prop_assert!(logins.len() <= CAPACITY);
            prop_assert_eq!(logins.len(), model.len());
        }
    }
}

/// A pending login survives its stored form, and bytes that are not one are an error, not a panic.
#[test]
fn pending_logins_round_trip_through_bytes() {
    let policy = LoginPolicy::default();
    let login = bff_session_core::PendingLogin::begin(secrets(1), "/x".into(), Timestamp::from_millis(5), &policy);
    assert_eq!(bff_session_core::PendingLogin::decode(&login.encode()), Ok(login.clone()));
    assert!(bff_session_core::PendingLogin::decode(b"\xff not json").is_err());
    assert_eq!(login.expires_at, Timestamp::from_millis(5).saturating_add(policy.lifetime));
    assert!(!format!("{login:?}").contains("state-1"), "secrets never print");
}
