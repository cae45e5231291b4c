//! core's hot paths: authenticate on a warm session, create, the refresh round trip, and tick over
//! 1,000,000 sessions of which 100 are due.

use std::hint::black_box;
use std::time::Duration;

use bff_session_core::{
    AuthRequest, Device, Login, Method, NewSession, OidcIdentity, Policy, RefreshResult, Registry, Secret, SessionId,
    Timestamp, TokenGrant, Trigger, UserId, csrf,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

fn id(n: u64) -> SessionId {
    let mut bytes = [0x5a; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    SessionId::from_random_bytes(bytes)
}

fn grant(expires_in: Duration) -> TokenGrant {
    TokenGrant {
        access_token: Secret::new("access-token"),
        expires_in: Some(expires_in),
        refresh_token: Some(Secret::new("refresh-token")),
        refresh_expires_in: None,
        id_token: None,
    }
}

fn new_session(n: u64, oidc: Option<Duration>) -> NewSession {
    let login = match oidc {
        None => Login::Local,
        Some(expires_in) => Login::Oidc {
            identity: OidcIdentity {
                iss: "https://idp".into(),
                sub: format!("sub{}", n % 1000),
                sid: None,
                name: None,
                email: None,
            },
            grant: grant(expires_in),
        },
    };
    NewSession { id: id(n), user: UserId::new(format!("user{}", n % 1000)), login, device: Device::default() }
}

/// `n` local sessions, plus `due` recently used sessions whose tokens are due for a background refresh at
/// `T0 + 8 min` (a 10-minute token, a 2-minute window and 30 s of skew).
fn registry(n: u64, due: u64) -> Registry {
    let mut r = Registry::new(Policy::hardened()).expect("valid preset");
    for i in 0..n {
        let _ = r.create(&new_session(i, None), None, T0);
    }
    for i in n..n + due {
        let _ = r.create(&new_session(i, Some(Duration::from_secs(600))), None, T0);
    }
    r
}

fn authenticate(c: &mut Criterion) {
    let mut r = registry(10_000, 0);
    let cookie = id(4_242).encode();
    let proof = csrf::proof_for(&id(4_242));
    let now = T0.saturating_add(Duration::from_secs(1));
    c.bench_function("authenticate/safe_warm_10k", |b| {
        b.iter(|| {
            let req = AuthRequest { cookie: Some(black_box(&cookie)), method: Method::Safe, csrf_proof: None };
            black_box(r.authenticate(&req, now))
        })
    });
    c.bench_function("authenticate/unsafe_with_csrf_warm_10k", |b| {
        b.iter(|| {
            let req = AuthRequest { cookie: Some(&cookie), method: Method::Unsafe, csrf_proof: Some(&proof) };
            black_box(r.authenticate(&req, now))
        })
    });
}

fn create(c: &mut Criterion) {
    let mut r = registry(10_000, 0);
    let mut n = 1_000_000u64;
    c.bench_function("create/oidc_into_10k", |b| {
        b.iter_batched(
            || {
                n += 1;
                new_session(n, Some(Duration::from_secs(300)))
            },
            |new| black_box(r.create(&new, None, T0)),
            BatchSize::SmallInput,
        )
    });
}

fn refresh_round_trip(c: &mut Criterion) {
    let mut r = registry(10_000, 0);
    // A zero-lifetime token is due at once, so every iteration begins and completes one refresh.
    let _ = r.create(&new_session(7_000_007, Some(Duration::ZERO)), None, T0);
    let key7 = id(7_000_007).key();
    c.bench_function("refresh/begin_and_complete", |b| {
        b.iter(|| {
            let ticket = r.begin_refresh(key7, Trigger::Request, T0).outcome.expect("due");
            black_box(r.complete_refresh(&ticket, RefreshResult::Success(grant(Duration::ZERO)), T0))
        })
    });
}

fn tick(c: &mut Criterion) {
    // Reporting refresh-due sessions changes no state, so the same tick can be measured repeatedly.
    let mut r = registry(1_000_000, 100);
    let now = T0.saturating_add(Duration::from_secs(8 * 60));
    let due = r.tick(now).outcome.refresh_due.len();
    assert_eq!(due, 100);
    let mut group = c.benchmark_group("tick");
    group.sample_size(20);
    group.bench_function("1m_sessions_100_due", |b| b.iter(|| black_box(r.tick(now))));
    group.finish();
}

criterion_group!(benches, authenticate, create, refresh_round_trip, tick);
criterion_main!(benches);
