//! A store in this process's memory: for the in-process fuzzer and the model-based tests, never for a
//! server (a restart would lose every session).
//!
//! Owns the same promises as the durable backends (compare-and-swap on the version, a schedule of next
//! events, claims, bounded pending logins, seen `jti`s) behind one lock, so it runs without a disk or a
//! runtime of its own. Index lookups scan the records: fine for the few a test holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bff_session_core::{LoginKey, Lookup, PendingLogin, Policy, Session, SessionKey, Timestamp, login};

use super::{Store, StoreError};

/// The greatest key, so that `(now, LAST_KEY)` bounds every schedule entry due by `now`, as sled's range does.
const LAST_KEY: SessionKey = SessionKey::from_bytes([0xff; 32]);

#[derive(Default)]
struct Tables {
    sessions: HashMap<SessionKey, Arc<Session>>,
    schedule: BTreeSet<(Timestamp, SessionKey)>,
    claimed: HashSet<SessionKey>,
    logins: HashMap<LoginKey, PendingLogin>,
    /// Pending logins by the order they began: (login, its expiry).
    login_order: BTreeMap<u64, (LoginKey, Timestamp)>,
    next_login: u64,
    jtis: HashMap<String, u64>,
    jtis_by_exp: BTreeSet<(u64, String)>,
}

/// See the module docs.
pub struct MemoryStore {
    policy: Policy,
    tables: Mutex<Tables>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store that schedules records by `policy`'s deadlines.
    pub fn new(policy: Policy) -> Self {
        Self { policy, tables: Mutex::default() }
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Tables {
    fn drop_login(&mut self, seq: u64) -> bool {
        match self.login_order.remove(&seq) {
            Some((key, _)) => self.logins.remove(&key).is_some(),
            None => false,
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        Ok(self.tables().sessions.get(key).cloned())
    }

    async fn put(&self, previous: Option<&Session>, new: &Session) -> Result<(), StoreError> {
        let key = new.key();
        let mut t = self.tables();
        if t.sessions.get(&key).map(|s| s.version()) != previous.map(Session::version) {
            return Err(StoreError::Conflict);
        }
        if let Some(at) = previous.and_then(|p| p.next_event(&self.policy)) {
            t.schedule.remove(&(at, key));
        }
        if let Some(at) = new.next_event(&self.policy) {
            t.schedule.insert((at, key));
        }
        t.sessions.insert(key, Arc::new(new.clone()));
        t.claimed.remove(&key);
        Ok(())
    }

    async fn delete(&self, previous: &Session) -> Result<(), StoreError> {
        let key = previous.key();
        let mut t = self.tables();
        if t.sessions.get(&key).map(|s| s.version()) != Some(previous.version()) {
            return Err(StoreError::Conflict);
        }
        t.sessions.remove(&key);
        if let Some(at) = previous.next_event(&self.policy) {
            t.schedule.remove(&(at, key));
        }
        t.claimed.remove(&key);
        Ok(())
    }

    async fn purge(&self, key: &SessionKey, now: Timestamp) -> Result<(), StoreError> {
        let mut t = self.tables();
        t.sessions.remove(key);
        let due: Vec<_> = t.schedule.range(..=(now, LAST_KEY)).filter(|(_, k)| k == key).copied().collect();
        for entry in &due {
            t.schedule.remove(entry);
        }
        t.claimed.remove(key);
        Ok(())
    }

    async fn keys(&self, lookup: &Lookup) -> Result<Vec<SessionKey>, StoreError> {
        let t = self.tables();
        Ok(t.sessions.values().filter(|s| s.is_active() && lookup.matches(s)).map(|s| s.key()).collect())
    }

    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<SessionKey>, StoreError> {
        let mut t = self.tables();
        let candidates: Vec<SessionKey> = t.schedule.range(..=(now, LAST_KEY)).map(|(_, k)| *k).collect();
        let mut keys = Vec::new();
        for key in candidates {
            if keys.len() >= limit {
                break;
            }
            if t.claimed.insert(key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    async fn release(&self, keys: &[SessionKey]) -> Result<(), StoreError> {
        let mut t = self.tables();
        for key in keys {
            t.claimed.remove(key);
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn put_login(&self, key: &LoginKey, login: &PendingLogin, capacity: usize) -> Result<usize, StoreError> {
        let mut t = self.tables();
        let seq = t.next_login;
        t.next_login += 1;
        t.logins.insert(*key, login.clone());
        t.login_order.insert(seq, (*key, login.expires_at));
        let Some(bound) = seq.checked_sub(capacity.max(1) as u64) else { return Ok(0) };
        let old: Vec<u64> = t.login_order.range(..=bound).map(|(s, _)| *s).collect();
        Ok(old.into_iter().filter(|s| t.drop_login(*s)).count())
    }

    async fn take_login(&self, key: &LoginKey) -> Result<Option<PendingLogin>, StoreError> {
        Ok(self.tables().logins.remove(key))
    }

    async fn sweep_logins(&self, now: Timestamp) -> Result<usize, StoreError> {
        let mut t = self.tables();
        let over: Vec<u64> =
            t.login_order.iter().take_while(|(_, (_, at))| login::is_over(*at, now)).map(|(s, _)| *s).collect();
        Ok(over.into_iter().filter(|s| t.drop_login(*s)).count())
    }

    async fn jti_seen(&self, jti: &str) -> Result<bool, StoreError> {
        Ok(self.tables().jtis.contains_key(jti))
    }

    async fn sweep_jtis(&self, exp: u64) -> Result<usize, StoreError> {
        let mut t = self.tables();
        let over: Vec<(u64, String)> = t.jtis_by_exp.iter().take_while(|(e, _)| *e < exp).cloned().collect();
        for entry in &over {
            t.jtis_by_exp.remove(entry);
            t.jtis.remove(&entry.1);
        }
        Ok(over.len())
    }

    async fn remember_jti(&self, jti: &str, exp: u64) -> Result<bool, StoreError> {
        let mut t = self.tables();
        if t.jtis.contains_key(jti) {
            return Ok(false);
        }
        t.jtis.insert(jti.to_owned(), exp);
        t.jtis_by_exp.insert((exp, jti.to_owned()));
        Ok(true)
    }
}
