//! The durable stores, through the server's `Service`, as the system under test of core's model-based
//! property tests.
//!
//! Each generated command runs twice: on core's in-memory `Registry`, and on the `Service` the server runs,
//! over a store (sled, and PostgreSQL when `BFF_TEST_POSTGRES` names a database) with its clock frozen at
//! the command's instant. Both must equal the reference model's expectation, and each other, outcome and
//! effects alike: the service's loading, compare-and-swap, effect handling, indexes and schedule are what is
//! under test, with no copy of the registry in between.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod postgres;
#[path = "../../core/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bff_session_core::lifecycle::{self, AuthRequest, Transition};
use bff_session_core::{
    Command, Outcome, Policy, RefreshError, Registry, RevocationReason, RevokeAll, Secret, Timestamp, TokenGrant,
};
use bff_session_server::clock::Clock;
use bff_session_server::oidc::{OidcError, TokenEndpoint};
use bff_session_server::seal::TokenSealer;
use bff_session_server::service::{Applied, Service};
use bff_session_server::store::{self, Location, PgStore, Store, StoreError};
use proptest::test_runner::{Config, FileFailurePersistence};
use proptest_state_machine::{StateMachineTest, prop_state_machine};
use support::driver::observe;
use support::model::Model;
use support::strategies::{Hardened, Helix, PolicyChoice, Reference, Tiny};

/// The model drives refreshes itself (`BeginRefresh`, `CompleteRefresh`): the service never calls this.
#[derive(Debug)]
struct NoProvider;

#[async_trait]
impl TokenEndpoint for NoProvider {
    async fn refresh(&self, _: &Secret) -> Result<TokenGrant, RefreshError> {
        Err(RefreshError::Transient)
    }

    async fn revoke(&self, _: &Secret) -> Result<(), OidcError> {
        Ok(())
    }
}

/// The server's service over a store, on a runtime of its own.
struct Served {
    service: Arc<Service>,
    rt: Arc<tokio::runtime::Runtime>,
}

fn plain<T>(applied: Applied<T>) -> Transition<T> {
    applied.into_transition()
}

impl Served {
    fn new(store: Arc<dyn Store>, policy: &Policy, rt: Arc<tokio::runtime::Runtime>) -> Self {
        let clock = Clock::new(true);
        let provider = Arc::new(NoProvider);
        let service = Arc::new(Service::new(policy.clone(), clock, store, provider, Duration::from_secs(5)));
        Self { service, rt }
    }

    /// Runs one command through the service's public operations, at `now`.
    fn apply(&self, command: &Command, now: Timestamp) -> Transition<Outcome> {
        self.service.clock.freeze(now);
        let s = &self.service;
        self.rt.block_on(async move {
            match command {
                Command::Create { new, supersedes } => {
                    plain(s.create(new, *supersedes).await.unwrap()).map(Outcome::Created)
                }
                Command::Authenticate { cookie, method, csrf_proof } => {
                    let request =
                        AuthRequest { cookie: cookie.as_deref(), method: *method, csrf_proof: csrf_proof.as_deref() };
                    let applied = s.authenticate(&request).await.unwrap();
                    plain(applied).map(|o| Outcome::Authenticated(o.map(|admitted| admitted.auth)))
                }
                Command::Touch { key } => plain(s.touch(*key).await.unwrap()).map(Outcome::Touched),
                Command::BeginRefresh { key, trigger } => {
                    plain(s.begin_refresh(*key, *trigger).await.unwrap()).map(Outcome::RefreshBegun)
                }
                Command::RenewLease { ticket } => {
                    plain(s.renew_lease(ticket).await.unwrap()).map(Outcome::LeaseRenewed)
                }
                Command::CompleteRefresh { ticket, result } => {
                    plain(s.complete_refresh(ticket, result.clone()).await.unwrap()).map(Outcome::RefreshCompleted)
                }
                Command::Revoke { key, reason } => plain(s.revoke(*key, *reason).await.unwrap()).map(Outcome::Revoked),
                Command::RevokeUser { user, reason } => {
                    let plan = RevokeAll::user(user.clone(), *reason);
                    plain(s.revoke_all(&plan).await.unwrap()).map(Outcome::RevokedMany)
                }
                Command::RevokeHandle { user, handle, requester } => {
                    plain(s.end_device(user, *handle, *requester).await.unwrap()).map(Outcome::Revoked)
                }
                Command::RevokeBySid { iss, sid } => {
                    plain(s.revoke_all(&RevokeAll::by_sid(iss, sid)).await.unwrap()).map(Outcome::RevokedMany)
                }
                Command::RevokeBySub { iss, sub } => {
                    plain(s.revoke_all(&RevokeAll::by_sub(iss, sub)).await.unwrap()).map(Outcome::RevokedMany)
                }
                Command::Tick => plain(s.sweep().await.unwrap()).map(Outcome::Ticked),
            }
        })
    }
}

/// Which store a test runs on.
trait Backend: 'static {
    fn open(
        test: &str,
        policy: &Policy,
        rt: &tokio::runtime::Runtime,
    ) -> Option<(Arc<dyn Store>, Option<tempfile::TempDir>)>;
}

struct Sled;
struct Postgres;
/// PostgreSQL in its cached mode (`--postgres-cache`): one replica must answer exactly as strict mode does.
struct PostgresCached;
struct Memory;

impl Backend for Memory {
    fn open(
        _test: &str,
        policy: &Policy,
        _rt: &tokio::runtime::Runtime,
    ) -> Option<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
        Some((Arc::new(store::MemoryStore::new(policy.clone())), None))
    }
}

impl Backend for Sled {
    fn open(
        _test: &str,
        policy: &Policy,
        rt: &tokio::runtime::Runtime,
    ) -> Option<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Sled(dir.path().join("s.sled"));
        let store = rt.block_on(store::open(&location, TokenSealer::from_key([3; 32]), policy.clone(), 8 << 20));
        Some((store.unwrap(), Some(dir)))
    }
}

/// A fresh database for one test; see `postgres::fresh_database`.
fn postgres_url(name: &str) -> Option<String> {
    postgres::fresh_database(&format!("store_model::{name}"), name)
}

impl Backend for Postgres {
    fn open(
        test: &str,
        policy: &Policy,
        rt: &tokio::runtime::Runtime,
    ) -> Option<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
        let url = postgres_url(test)?;
        let store = rt
            .block_on(store::open(&Location::Postgres(url.clone()), TokenSealer::from_key([3; 32]), policy.clone(), 0))
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.batch_execute("TRUNCATE bff_sessions, bff_logins, bff_jtis").await.unwrap();
        });
        Some((store, None))
    }
}

impl Backend for PostgresCached {
    fn open(
        test: &str,
        policy: &Policy,
        rt: &tokio::runtime::Runtime,
    ) -> Option<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
        let url = postgres_url(&format!("cached_{test}"))?;
        let store = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let store = PgStore::connect(&url, TokenSealer::from_key([3; 32]), policy.clone(), 64 << 20).await.unwrap();
            client.batch_execute("TRUNCATE bff_sessions, bff_logins, bff_jtis").await.unwrap();
            store.with_change_notices()
        });
        Some((Arc::new(store), None))
    }
}

struct AgainstModel<P, B>(std::marker::PhantomData<(P, B)>);

struct Sut {
    served: Option<Served>,
    registry: Registry,
    _dir: Option<tempfile::TempDir>,
}

impl<P: PolicyChoice, B: Backend> StateMachineTest for AgainstModel<P, B> {
    type SystemUnderTest = Sut;
    type Reference = Reference<P>;

    fn init_test(model: &Model) -> Sut {
        let rt = Arc::new(tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());
        let test = std::any::type_name::<P>().rsplit("::").next().unwrap_or("p");
        let opened = B::open(test, &model.policy, &rt);
        let (served, dir) = match opened {
            Some((store, dir)) => (Some(Served::new(store, &model.policy, rt)), dir),
            None => (None, None),
        };
        Sut { served, registry: Registry::new(model.policy.clone()).unwrap(), _dir: dir }
    }

    fn apply(sut: Sut, model: &Model, _op: support::model::Op) -> Sut {
        let Some(served) = &sut.served else { return sut };
        let Some((Some(command), expected)) = model.last.as_ref().map(|(c, e)| (c.clone(), e)) else { return sut };
        let now = Timestamp::from_millis(model.now);
        let mut registry = sut.registry.clone();
        let in_memory = registry.apply(&command, now);
        let in_store = served.apply(&command, now);
        assert_eq!(&observe(&in_store), expected, "command {command:?} at {now:?}");
        assert_eq!(in_store, in_memory, "command {command:?} at {now:?}");
        Sut { registry, ..sut }
    }
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/store_model.txt"))),
        ..Config::default()
    }
}

prop_state_machine! {
    #![proptest_config(config(64))]

    /// sled, as the registry's store, agrees with the model and the registry under a policy of tiny durations.
    #[test]
    fn sled_store_agrees_with_model_under_tiny_policy(sequential 1..48 => AgainstModel<Tiny, Sled>);

    /// sled agrees with the model and the registry under the hardened `default` preset.
    #[test]
    fn sled_store_agrees_with_model_under_default(sequential 1..48 => AgainstModel<Hardened, Sled>);

    /// The in-memory store (the in-process fuzzer's) agrees with the model and the registry.
    #[test]
    fn memory_store_agrees_with_model_under_tiny_policy(sequential 1..48 => AgainstModel<Tiny, Memory>);
}

prop_state_machine! {
    #![proptest_config(config(96))]

    /// PostgreSQL, as the registry's store, agrees with the model and the registry under tiny durations.
    #[test]
    fn postgres_store_agrees_with_model_under_tiny_policy(sequential 1..48 => AgainstModel<Tiny, Postgres>);

    /// PostgreSQL agrees with the model and the registry under the hardened `default` preset.
    #[test]
    fn postgres_store_agrees_with_model_under_default(sequential 1..48 => AgainstModel<Hardened, Postgres>);

    /// PostgreSQL agrees with the model and the registry under the `helix` preset.
    #[test]
    fn postgres_store_agrees_with_model_under_helix(sequential 1..48 => AgainstModel<Helix, Postgres>);

    /// PostgreSQL's cached mode, as one replica's store, agrees with the model and the registry.
    #[test]
    fn postgres_cached_store_agrees_with_model_under_tiny_policy(sequential 1..48 => AgainstModel<Tiny, PostgresCached>);
}

#[test]
fn migrations_are_versioned_and_idempotent() {
    let Some(url) = postgres_url("migrations") else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let location = Location::Postgres(url);
    for _ in 0..3 {
        let Location::Postgres(url) = &location else { unreachable!() };
        let pg =
            rt.block_on(PgStore::connect(url, TokenSealer::from_key([3; 32]), Policy::hardened(), 64 << 20)).unwrap();
        assert_eq!(rt.block_on(pg.applied_migrations()).unwrap(), vec![1, 2, 3, 4]);
    }
}

/// Seen logout-token `jti`s are refused until swept, and a sweep takes only the expired ones (through the
/// expiry index), in PostgreSQL as in sled.
#[test]
fn jtis_are_swept_by_expiry_in_postgres() {
    let Some(url) = postgres_url("jtis") else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = rt
        .block_on(store::open(&Location::Postgres(url), TokenSealer::from_key([3; 32]), Policy::hardened(), 0))
        .unwrap();
    rt.block_on(async {
        for (jti, exp) in [("pg-a", 100), ("pg-b", 200), ("pg-c", 300)] {
            assert!(store.remember_jti(jti, exp).await.unwrap());
            assert!(store.jti_seen(jti).await.unwrap());
            assert!(!store.remember_jti(jti, exp).await.unwrap(), "{jti} replayed");
        }
        assert_eq!(store.sweep_jtis(250).await.unwrap(), 2);
        assert!(!store.jti_seen("pg-a").await.unwrap());
        assert!(store.jti_seen("pg-c").await.unwrap());
    });
}

/// The database refuses to make a tombstone active again, whatever version a writer presents.
#[test]
fn a_tombstone_cannot_be_overwritten_in_postgres() {
    let Some(url) = postgres_url("tombstone") else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let policy = Policy::hardened();
    let store =
        rt.block_on(store::open(&Location::Postgres(url), TokenSealer::from_key([3; 32]), policy.clone(), 0)).unwrap();
    let new = bff_session_core::NewSession {
        id: bff_session_core::SessionId::from_random_bytes([0xab; 32]),
        user: bff_session_core::UserId::new("tomb"),
        login: bff_session_core::Login::Local,
        device: bff_session_core::Device::default(),
    };
    let now = Timestamp::from_millis(1_000_000);
    let created = lifecycle::create(&new, now, &policy).outcome;
    let _ = rt.block_on(store.delete(&created));
    rt.block_on(store.put(None, &created)).unwrap();
    let mut ended = created.clone();
    let _ = lifecycle::revoke(Some(&mut ended), RevocationReason::Logout, now, &policy);
    rt.block_on(store.put(Some(&created), &ended)).unwrap();
    // A stale writer that read the active record loses the compare-and-swap...
    let mut stale = created.clone();
    let _ = lifecycle::touch(Some(&mut stale), now.saturating_add(Duration::from_secs(600)), &policy);
    assert!(matches!(rt.block_on(store.put(Some(&created), &stale)), Err(StoreError::Conflict)));
    // ...and one that forges the current version is stopped by the database itself.
    let mut forged = stale.clone();
    for _ in 0..(ended.version() - created.version()) {
        let _ = lifecycle::touch(Some(&mut forged), now.saturating_add(Duration::from_secs(1200)), &policy);
    }
    let forged_put = rt.block_on(store.put(Some(&ended), &forged));
    assert!(forged_put.is_err(), "a revoked session was made active again");
    let stored = rt.block_on(store.get(&created.key())).unwrap().unwrap();
    assert!(!stored.is_active());
    rt.block_on(store.delete(&stored)).unwrap();
}

/// A step of the pending-login test: begin one, redeem the `n`th begun (modulo), sweep, or let time pass.
#[derive(Clone, Debug)]
enum LoginStep {
    Begin,
    Redeem(usize),
    Sweep,
    Wait(u64),
}

fn login_steps() -> impl proptest::strategy::Strategy<Value = Vec<LoginStep>> {
    use proptest::prelude::*;
    let step = prop_oneof![
        4 => Just(LoginStep::Begin),
        3 => (0usize..16).prop_map(LoginStep::Redeem),
        1 => Just(LoginStep::Sweep),
        2 => (0u64..8_000).prop_map(LoginStep::Wait),
    ];
    proptest::collection::vec(step, 1..40)
}

/// Pending logins through the service, on a store, against core's bounded table (`Logins`): every callback
/// gets what the table says, while the store evicts the oldest beyond the capacity and sweeps what is over.
/// A store takes a login out to redeem it, so a second callback with one cookie finds nothing there where the
/// table remembers "used" or "expired".
fn logins_agree_with_core(store: Arc<dyn Store>, rt: &tokio::runtime::Runtime, steps: &[LoginStep]) {
    use bff_session_core::login::{LoginPolicy, Logins};
    use bff_session_core::{LoginKey, LoginRefusal, LoginSecrets};

    let policy = LoginPolicy { lifetime: Duration::from_secs(10), capacity: 3 };
    let mut service =
        Service::new(Policy::hardened(), Clock::new(true), store, Arc::new(NoProvider), Duration::from_secs(5));
    service.login_policy = policy;
    let mut table = Logins::new(policy);
    let mut now = Timestamp::from_millis(1_000_000);
    let mut cookies: Vec<String> = Vec::new();
    let mut redeemed = std::collections::HashSet::new();
    let secrets = || LoginSecrets { state: Secret::new("s"), nonce: Secret::new("n"), verifier: Secret::new("v") };
    for step in steps {
        service.clock.freeze(now);
        match step {
            LoginStep::Begin => {
                let return_to = format!("/{}", cookies.len());
                let cookie = rt.block_on(service.begin_login(secrets(), return_to.clone())).unwrap();
                table.begin(LoginKey::of_cookie(&cookie), secrets(), return_to, now);
                cookies.push(cookie);
            }
            LoginStep::Redeem(n) if !cookies.is_empty() => {
                let cookie = &cookies[n % cookies.len()];
                let got = rt.block_on(service.finish_login(cookie)).unwrap().map(|l| l.return_to);
                let in_table = table.redeem(&LoginKey::of_cookie(cookie), now).map(|l| l.return_to);
                let expected = if redeemed.insert(n % cookies.len()) { in_table } else { Err(LoginRefusal::Unknown) };
                assert_eq!(got, expected, "redeeming login {} at {now:?} after {steps:?}", n % cookies.len());
            }
            LoginStep::Redeem(_) => {}
            LoginStep::Sweep => {
                rt.block_on(service.store.sweep_logins(now)).unwrap();
                table.sweep(now);
            }
            LoginStep::Wait(ms) => now = now.saturating_add(Duration::from_millis(*ms)),
        }
    }
}

proptest::proptest! {
    #![proptest_config(config(48))]

    /// sled bounds and sweeps pending logins as core's table does.
    #[test]
    fn sled_pending_logins_agree_with_core(steps in login_steps()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (store, _dir) = Sled::open("logins", &Policy::hardened(), &rt).unwrap();
        logins_agree_with_core(store, &rt, &steps);
    }

    /// The in-memory store bounds and sweeps pending logins as core's table does.
    #[test]
    fn memory_pending_logins_agree_with_core(steps in login_steps()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (store, _) = Memory::open("logins", &Policy::hardened(), &rt).unwrap();
        logins_agree_with_core(store, &rt, &steps);
    }

    /// PostgreSQL bounds and sweeps pending logins as core's table does.
    #[test]
    fn postgres_pending_logins_agree_with_core(steps in login_steps()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        if let Some((store, _)) = Postgres::open("logins", &Policy::hardened(), &rt) {
            logins_agree_with_core(store, &rt, &steps);
        }
    }
}

/// The cached mode answers checks from memory, and a change by another replica reaches it by notice: a
/// session ended elsewhere is refused once the notice arrives. Without the notice (its trigger disabled) the
/// copy is served, which is what the trigger is for; and while the listening connection is lost, checks read
/// the database.
#[test]
fn a_cached_replica_is_told_of_changes_by_notice() {
    let Some(url) = postgres_url("notices") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let policy = Policy::hardened();
        let (sql, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let a = PgStore::connect(&url, TokenSealer::from_key([3; 32]), policy.clone(), 64 << 20).await.unwrap();
        let b = PgStore::connect(&url, TokenSealer::from_key([3; 32]), policy.clone(), 64 << 20)
            .await
            .unwrap()
            .with_change_notices();
        let listening = |b: &PgStore| b.is_listening();
        for _ in 0..200 {
            if listening(&b) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(listening(&b), "the cached replica never listened");

        let new = bff_session_core::NewSession {
            id: bff_session_core::SessionId::from_random_bytes([0x5a; 32]),
            user: bff_session_core::UserId::new("cached"),
            login: bff_session_core::Login::Local,
            device: bff_session_core::Device::default(),
        };
        let now = Timestamp::from_millis(1_000_000);
        let created = lifecycle::create(&new, now, &policy).outcome;
        let key = created.key();
        a.put(None, &created).await.unwrap();
        assert_eq!(b.get_for_check(&key).await.unwrap().map(|s| s.version()), Some(created.version()));

        // Without the notice, the copy answers: the check does not read the database.
        sql.batch_execute("ALTER TABLE bff_sessions DISABLE TRIGGER bff_sessions_changed").await.unwrap();
        let mut ended = created.clone();
        let revoked = lifecycle::revoke(Some(&mut ended), RevocationReason::Logout, now, &policy);
        assert!(revoked.outcome.is_ok());
        a.put(Some(&created), &ended).await.unwrap();
        assert!(b.get_for_check(&key).await.unwrap().is_some_and(|s| s.is_active()), "the cached copy was not used");
        assert!(b.get(&key).await.unwrap().is_some_and(|s| !s.is_active()), "get must read the database");

        // With it, the change arrives.
        sql.batch_execute("ALTER TABLE bff_sessions ENABLE TRIGGER bff_sessions_changed").await.unwrap();
        a.delete(&ended).await.unwrap();
        let mut seen = Some(());
        for _ in 0..200 {
            seen = b.get_for_check(&key).await.unwrap().map(drop);
            if seen.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen, None, "the notice of the removal never reached the cached replica");

        // A lost connection turns the cache off until it listens again.
        a.put(None, &created).await.unwrap();
        assert!(b.get_for_check(&key).await.unwrap().is_some());
        sql.batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN bff_sessions_changed'",
        )
        .await
        .unwrap();
        sql.batch_execute("ALTER TABLE bff_sessions DISABLE TRIGGER bff_sessions_changed").await.unwrap();
        let mut off = false;
        for _ in 0..200 {
            if !listening(&b) {
                off = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(off, "the cache stayed on without its connection");
        a.put(Some(&created), &ended).await.unwrap();
        assert!(
            b.get_for_check(&key).await.unwrap().is_some_and(|s| !s.is_active()),
            "while not listening, a check must read the database"
        );
        sql.batch_execute("ALTER TABLE bff_sessions ENABLE TRIGGER bff_sessions_changed").await.unwrap();
        for _ in 0..400 {
            if listening(&b) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(listening(&b), "the cached replica did not listen again");
    });
}
