//! The durable stores as the system under test of core's model-based property tests.
//!
//! Each generated command runs twice: on core's in-memory `Registry`, and on a registry whose records live
//! in a store (sled, and PostgreSQL when `BFF_TEST_POSTGRES` names a database), loaded and written back
//! with compare-and-swap exactly as the server does, its multi-record commands served by the store's
//! indexes and schedule. Both must equal the reference model's expectation, and each other, outcome and
//! effects alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../core/tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use bff_session_core::lifecycle::{self, AuthRequest, Refusal, Transition};
use bff_session_core::{
    Command, CreateError, Effect, Outcome, Policy, RefreshRefusal, Registry, RevocationReason, Session, SessionKey,
    TickReport, Timestamp,
};
use bff_session_server::seal::TokenSealer;
use bff_session_server::store::{Location, Store, StoreError};
use proptest::test_runner::Config;
use proptest_state_machine::{StateMachineTest, prop_state_machine};
use support::driver::observe;
use support::model::Model;
use support::strategies::{Hardened, Helix, PolicyChoice, Reference, Tiny};

/// A registry whose records live in a store.
struct Stored {
    store: Store,
    policy: Policy,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Stored {
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// Loads, transitions and writes back one record, as `Service::apply` does.
    fn update<T>(
        &self,
        key: SessionKey,
        f: impl FnOnce(Option<&mut Session>, &Policy) -> Transition<T>,
    ) -> Transition<T> {
        let previous = self.block(self.store.get(&key)).unwrap();
        let mut current: Option<Session> = previous.as_deref().cloned();
        let t = f(current.as_mut(), &self.policy);
        if let Some(new) = &current
            && previous.as_ref().map(|p| p.version()) != Some(new.version())
        {
            self.block(self.store.put(previous.as_deref(), new)).unwrap();
        }
        t
    }

    fn revoke_keys(
        &self,
        mut keys: Vec<SessionKey>,
        reason: RevocationReason,
        now: Timestamp,
    ) -> Transition<Vec<SessionKey>> {
        keys.sort();
        let mut ended = Vec::new();
        let mut effects = Vec::new();
        for key in keys {
            let t = self.update(key, |s, p| match s {
                Some(s) => lifecycle::revoke(s, reason, now, p),
                None => Transition { outcome: Err(Refusal::Unknown), effects: Vec::new() },
            });
            if t.outcome.is_ok() {
                ended.push(key);
            }
            effects.extend(t.effects);
        }
        Transition { outcome: ended, effects }
    }

    fn apply(&self, command: &Command, now: Timestamp) -> Transition<Outcome> {
        let revoke = |s: Option<&mut Session>, reason, p: &Policy| match s {
            Some(s) => lifecycle::revoke(s, reason, now, p),
            None => Transition { outcome: Err(Refusal::Unknown), effects: Vec::new() },
        };
        match command {
            Command::Create { new, supersedes } => {
                let key = new.id.key();
                if self.block(self.store.get(&key)).unwrap().is_some() {
                    return Transition { outcome: Outcome::Created(Err(CreateError::DuplicateId)), effects: vec![] };
                }
                let mut effects = Vec::new();
                if let Some(old) = supersedes {
                    let t = self.update(*old, |s, p| match s {
                        Some(s) => lifecycle::revoke(s, RevocationReason::Superseded, now, p),
                        None => Transition { outcome: Ok(()), effects: Vec::new() },
                    });
                    effects.extend(t.effects);
                }
                let created = lifecycle::create(new, now, &self.policy);
                self.block(self.store.put(None, &created.outcome)).unwrap();
                effects.extend(created.effects);
                Transition { outcome: Outcome::Created(Ok(key)), effects }
            }
            Command::Authenticate { cookie, method, csrf_proof } => {
                let request =
                    AuthRequest { cookie: cookie.as_deref(), method: *method, csrf_proof: csrf_proof.as_deref() };
                let id = match lifecycle::admit(&request) {
                    Ok(id) => id,
                    Err(r @ (Refusal::NoCookie | Refusal::Csrf(_))) => {
                        return Transition { outcome: Outcome::Authenticated(Err(r)), effects: vec![] };
                    }
                    Err(r) => {
                        return Transition {
                            outcome: Outcome::Authenticated(Err(r)),
                            effects: vec![Effect::ClearCookies],
                        };
                    }
                };
                self.update(id.key(), |s, p| lifecycle::authenticate(s, now, p)).map(Outcome::Authenticated)
            }
            Command::Touch { key } => self
                .update(*key, |s, p| match s {
                    Some(s) => lifecycle::touch(s, now, p),
                    None => Transition { outcome: Err(Refusal::Unknown), effects: vec![] },
                })
                .map(Outcome::Touched),
            Command::BeginRefresh { key, trigger } => self
                .update(*key, |s, p| match s {
                    Some(s) => lifecycle::begin_refresh(s, *trigger, now, p),
                    None => Transition { outcome: Err(RefreshRefusal::Ended(Refusal::Unknown)), effects: vec![] },
                })
                .map(Outcome::RefreshBegun),
            Command::CompleteRefresh { ticket, result } => self
                .update(ticket.key, |s, p| lifecycle::complete_refresh(s, ticket, result.clone(), now, p))
                .map(Outcome::RefreshCompleted),
            Command::Revoke { key, reason } => self.update(*key, |s, p| revoke(s, *reason, p)).map(Outcome::Revoked),
            Command::RevokeUser { user, reason } => {
                let keys = self.block(self.store.keys_of_user(user.as_str())).unwrap();
                let mut t = self.revoke_keys(keys, *reason, now);
                if reason.clears_cookies() && !t.effects.contains(&Effect::ClearCookies) {
                    t.effects.push(Effect::ClearCookies);
                }
                t.map(Outcome::RevokedMany)
            }
            Command::RevokeHandle { user, handle } => {
                let keys = self.block(self.store.keys_of_user(user.as_str())).unwrap();
                let key = keys
                    .into_iter()
                    .find(|k| self.block(self.store.get(k)).unwrap().is_some_and(|s| s.handle() == *handle));
                match key {
                    Some(key) => {
                        self.update(key, |s, p| revoke(s, RevocationReason::RevokedFromDevice, p)).map(Outcome::Revoked)
                    }
                    None => Transition { outcome: Outcome::Revoked(Err(Refusal::Unknown)), effects: vec![] },
                }
            }
            Command::RevokeBySid { iss, sid } => {
                let keys = self.block(self.store.keys_of_sid(iss, sid)).unwrap();
                self.revoke_keys(keys, RevocationReason::BackchannelLogout, now).map(Outcome::RevokedMany)
            }
            Command::RevokeBySub { iss, sub } => {
                let keys = self.block(self.store.keys_of_sub(iss, sub)).unwrap();
                self.revoke_keys(keys, RevocationReason::BackchannelLogout, now).map(Outcome::RevokedMany)
            }
            Command::Tick => {
                let due = self.block(self.store.due(now, 100_000)).unwrap();
                let mut report = TickReport::default();
                let mut effects = Vec::new();
                for &key in &due {
                    let Some(session) = self.block(self.store.get(&key)).unwrap() else { continue };
                    if session.delete_at(&self.policy).is_some_and(|at| now >= at) {
                        self.block(self.store.delete(&session)).unwrap();
                        report.deleted.push(key);
                        effects.push(Effect::Delete { key });
                        continue;
                    }
                    let t = self.update(key, |s, p| match s {
                        Some(s) => lifecycle::expire_if_due(s, now, p),
                        None => Transition { outcome: None, effects: vec![] },
                    });
                    effects.extend(t.effects);
                    if let Some(reason) = t.outcome {
                        report.expired.push((key, reason));
                    }
                    let current = self.block(self.store.get(&key)).unwrap();
                    if current.is_some_and(|s| s.background_refresh_due(now, &self.policy)) {
                        report.refresh_due.push(key);
                    }
                }
                self.block(self.store.release(&due)).unwrap();
                Transition { outcome: Outcome::Ticked(report), effects }
            }
        }
    }
}

/// Which store a test runs on.
trait Backend: 'static {
    fn open(test: &str, policy: &Policy, rt: &tokio::runtime::Runtime) -> Option<(Store, Option<tempfile::TempDir>)>;
}

struct Sled;
struct Postgres;

impl Backend for Sled {
    fn open(_test: &str, policy: &Policy, rt: &tokio::runtime::Runtime) -> Option<(Store, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Sled(dir.path().join("s.sled"));
        let store = rt.block_on(Store::open(&location, TokenSealer::from_key([3; 32]), policy.clone(), 8 << 20));
        Some((store.unwrap(), Some(dir)))
    }
}

/// A database of its own for test `name`, created once per process on the server `BFF_TEST_POSTGRES`
/// names, so tests running in parallel never share tables.
fn postgres_url(name: &str) -> Option<String> {
    static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let base = std::env::var("BFF_TEST_POSTGRES").ok().filter(|u| !u.is_empty());
    let Some(base) = base else {
        assert!(
            std::env::var("BFF_REQUIRE_POSTGRES").is_err(),
            "BFF_REQUIRE_POSTGRES is set but BFF_TEST_POSTGRES is not"
        );
        return None;
    };
    let db =
        format!("bff_t_{}", name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>())
            .to_ascii_lowercase();
    let mut created = CREATED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !created.contains(&db) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await.unwrap();
            client.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
        });
        created.push(db.clone());
    }
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&db);
    Some(url.to_string())
}

impl Backend for Postgres {
    fn open(test: &str, policy: &Policy, rt: &tokio::runtime::Runtime) -> Option<(Store, Option<tempfile::TempDir>)> {
        let url = postgres_url(test)?;
        let store = rt
            .block_on(Store::open(&Location::Postgres(url.clone()), TokenSealer::from_key([3; 32]), policy.clone(), 0))
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.batch_execute("TRUNCATE bff_sessions, bff_logins, bff_jtis").await.unwrap();
        });
        Some((store, None))
    }
}

struct AgainstModel<P, B>(std::marker::PhantomData<(P, B)>);

struct Sut {
    stored: Option<Stored>,
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
        let (stored, dir) = match opened {
            Some((store, dir)) => (Some(Stored { store, policy: model.policy.clone(), rt }), dir),
            None => (None, None),
        };
        Sut { stored, registry: Registry::new(model.policy.clone()).unwrap(), _dir: dir }
    }

    fn apply(sut: Sut, model: &Model, _op: support::model::Op) -> Sut {
        let Some(stored) = &sut.stored else { return sut };
        let Some((Some(command), expected)) = model.last.as_ref().map(|(c, e)| (c.clone(), e)) else { return sut };
        let now = Timestamp::from_millis(model.now);
        let mut registry = sut.registry.clone();
        let in_memory = registry.apply(&command, now);
        let in_store = stored.apply(&command, now);
        assert_eq!(&observe(&in_store), expected, "command {command:?} at {now:?}");
        assert_eq!(in_store, in_memory, "command {command:?} at {now:?}");
        Sut { registry, ..sut }
    }
}

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

prop_state_machine! {
    #![proptest_config(config(64))]

    /// sled, as the registry's store, agrees with the model and the registry under a policy of tiny durations.
    #[test]
    fn sled_store_agrees_with_model_under_tiny_policy(sequential 1..48 => AgainstModel<Tiny, Sled>);

    /// sled agrees with the model and the registry under the hardened `default` preset.
    #[test]
    fn sled_store_agrees_with_model_under_default(sequential 1..48 => AgainstModel<Hardened, Sled>);
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
}

#[test]
fn migrations_are_versioned_and_idempotent() {
    let Some(url) = postgres_url("migrations") else { return eprintln!("skipped: BFF_TEST_POSTGRES is not set") };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let location = Location::Postgres(url);
    for _ in 0..3 {
        let store = rt.block_on(Store::open(&location, TokenSealer::from_key([3; 32]), Policy::hardened(), 0)).unwrap();
        let Store::Postgres(pg) = &store else { unreachable!() };
        assert_eq!(rt.block_on(pg.applied_migrations()).unwrap(), vec![1]);
    }
}

/// The database refuses to make a tombstone active again, whatever version a writer presents.
#[test]
fn a_tombstone_cannot_be_overwritten_in_postgres() {
    let Some(url) = postgres_url("tombstone") else { return eprintln!("skipped: BFF_TEST_POSTGRES is not set") };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let policy = Policy::hardened();
    let store =
        rt.block_on(Store::open(&Location::Postgres(url), TokenSealer::from_key([3; 32]), policy.clone(), 0)).unwrap();
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
    let _ = lifecycle::revoke(&mut ended, RevocationReason::Logout, now, &policy);
    rt.block_on(store.put(Some(&created), &ended)).unwrap();
    // A stale writer that read the active record loses the compare-and-swap...
    let mut stale = created.clone();
    let _ = lifecycle::touch(&mut stale, now.saturating_add(std::time::Duration::from_secs(600)), &policy);
    assert!(matches!(rt.block_on(store.put(Some(&created), &stale)), Err(StoreError::Conflict)));
    // ...and one that forges the current version is stopped by the database itself.
    let mut forged = stale.clone();
    for _ in 0..(ended.version() - created.version()) {
        let _ = lifecycle::touch(&mut forged, now.saturating_add(std::time::Duration::from_secs(1200)), &policy);
    }
    let forged_put = rt.block_on(store.put(Some(&ended), &forged));
    assert!(forged_put.is_err(), "a revoked session was made active again");
    let stored = rt.block_on(store.get(&created.key())).unwrap().unwrap();
    assert!(!stored.is_active());
    rt.block_on(store.delete(&stored)).unwrap();
}
