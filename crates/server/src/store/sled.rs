//! The embedded store: sessions in sled, for one machine.
//!
//! Owns the byte layout on disk and the indexes: records by key, a schedule of each record's next event
//! (so sweeps cost in proportion to due sessions), and active sessions by user, `(iss, sid)` and
//! `(iss, sub)`. Every write is a compare-and-swap on the record's version inside one transaction with its
//! index changes, so a stale write can never overwrite a newer one or bring back a revoked session. It never
//! decides anything about a session: the transitions come from core.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bff_session_core::{LoginKey, Lookup, PendingLogin, Policy, Session, SessionKey, Timestamp};
use bff_session_core::{login, record};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{Db, Tree};

use super::maintenance::{Maintenance, Progress, Resealed, Scanned, VerifyReport};
use super::notices::Notices;
use super::{Store, StoreError, Write};
use crate::seal::TokenSealer;

const SEP: u8 = 0xff;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        Self::Io(e.to_string())
    }
}

/// The sled database with its trees.
pub struct SledStore {
    db: Db,
    sessions: Tree,
    schedule: Tree,
    by_user: Tree,
    by_sid: Tree,
    by_sub: Tree,
    logins: Tree,
    /// Pending logins in the order they began (a sequence number, big-endian), each naming its login key and
    /// expiry: eviction takes the oldest and the sweep reads only what is over, never the whole table.
    login_order: Tree,
    /// The next pending login's sequence number; in memory, as only this process opens the database.
    login_seq: AtomicU64,
    jtis: Tree,
    /// Seen `jti`s by expiry (`exp` big-endian, then the `jti`), so the sweep reads only what is over.
    jtis_by_exp: Tree,
    sealer: TokenSealer,
    policy: Policy,
    /// Decoded records, kept true by every write below: a read costs no sled read and no decode when the
    /// record is here. Exact, because only this process opens sled.
    copy: Arc<Notices>,
    /// Due keys a pass holds (see [`Store::due`]); in memory, as only this process opens the database.
    claimed: Mutex<HashSet<SessionKey>>,
    /// Keeps transactions and flushes apart; see [`Gate`].
    gate: Arc<Gate>,
    /// The thread that flushes lazy writes every [`FLUSH_EVERY`], in place of sled's own flusher.
    flusher: Option<std::thread::JoinHandle<()>>,
    /// Callers of [`SledStore::flush`] sharing fsyncs.
    group: GroupCommit,
}

/// The state of the group commit: how many flushes were asked for, how many of those a finished flush
/// covers, and who is flushing now.
#[derive(Debug, Default)]
struct GroupCommit {
    requested: AtomicU64,
    /// The highest request number a finished flush covers.
    completed: AtomicU64,
    leader: tokio::sync::Mutex<()>,
    flushes: AtomicU64,
}

/// How often lazy writes (a touch, a lease) reach the disk when no durable write flushes them sooner; sled's
/// own default.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// sled 0.34 deadlocks when a transaction starts while a flush is under way: the flush holds sled's global
/// concurrency-control lock shared while it waits for the log to become stable; the transaction asks for it
/// exclusively, which (the lock being fair to writers) blocks the log writer that the flush waits for. So
/// no flush may run while a transaction waits, and none outside this gate: sled's background flusher is off
/// and a thread of ours flushes through the gate instead. Transactions share the gate; a flush holds it alone.
///
/// A flush lasts as long as the disk's fsync. A task that meets one waits for [`Gate::reopened`] rather
/// than on the lock, so the runtime's workers go on serving everything else (every read) meanwhile.
#[derive(Default)]
struct Gate {
    lock: std::sync::RwLock<()>,
    reopened: tokio::sync::Notify,
    stopping: std::sync::atomic::AtomicBool,
}

/// Proof that the gate is held open for a transaction; every function that starts one asks for it.
struct Entered<'a> {
    _open: std::sync::RwLockReadGuard<'a, ()>,
}

impl Gate {
    /// Waits on the lock: for callers that are not tasks of a runtime (tests, benchmarks, tools).
    fn transaction(&self) -> Entered<'_> {
        Entered { _open: self.lock.read().unwrap_or_else(PoisonError::into_inner) }
    }

    /// Waits for a flush under way without holding the worker.
    async fn enter(&self) -> Entered<'_> {
        loop {
            if let Some(entered) = self.try_enter() {
                return entered;
            }
            let reopened = self.reopened.notified();
            let mut reopened = std::pin::pin!(reopened);
            // Registered before the second try, so a flush that ends between the two still wakes this one.
            reopened.as_mut().enable();
            if let Some(entered) = self.try_enter() {
                return entered;
            }
            reopened.await;
        }
    }

    /// The gate, unless a flush holds it or waits for it (the lock lets no reader overtake a waiting writer).
    fn try_enter(&self) -> Option<Entered<'_>> {
        match self.lock.try_read() {
            Ok(guard) => Some(Entered { _open: guard }),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(Entered { _open: p.into_inner() }),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn flush(&self, db: &Db) -> sled::Result<usize> {
        let result = {
            let _alone = self.lock.write().unwrap_or_else(PoisonError::into_inner);
            db.flush()
        };
        self.reopened.notify_waiters();
        result
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.gate.stopping.store(true, Ordering::Relaxed);
        if let Some(flusher) = self.flusher.take() {
            flusher.thread().unpark();
            let _ = flusher.join();
        }
        // What the last interval wrote; the flusher has stopped, so nothing else flushes now.
        let _ = self.gate.flush(&self.db);
    }
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore").field("sessions", &self.sessions.len()).finish_non_exhaustive()
    }
}

/// Writes committed in one transaction, at most. A transaction holds sled's global lock, which keeps every
/// read (every request's authentication) waiting until it commits, so a pass's writes go in small groups:
/// enough to share a transaction's fixed cost, few enough that no request waits long.
const TOGETHER: usize = 16;

/// A compare-and-swap write of one record with its schedule and index changes, ready to commit: a write
/// of `value`, or the removal of the record when it is `None`.
struct Prepared {
    key: SessionKey,
    expected: Option<u64>,
    value: Option<Vec<u8>>,
    removed: Vec<(usize, Vec<u8>)>,
    added: Vec<(usize, Vec<u8>)>,
    old_event: Option<Timestamp>,
    new_event: Option<Timestamp>,
}

fn schedule_key(at: Timestamp, key: &SessionKey) -> Vec<u8> {
    let mut k = at.as_millis().to_be_bytes().to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

fn index_key(parts: &[&str], key: &SessionKey) -> Vec<u8> {
    let mut k = Vec::new();
    for p in parts {
        k.extend_from_slice(p.as_bytes());
        k.push(SEP);
    }
    k.extend_from_slice(key.as_bytes());
    k
}

fn index_prefix(parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::new();
    for p in parts {
        k.extend_from_slice(p.as_bytes());
        k.push(SEP);
    }
    k
}

/// Index entries (tree number, key) of an active session: 0 = user, 1 = sid, 2 = sub.
fn index_entries(s: &Session) -> Vec<(usize, Vec<u8>)> {
    if !s.is_active() {
        return Vec::new();
    }
    let key = s.key();
    let mut out = vec![(0, index_key(&[s.user().as_str()], &key))];
    if let Some(oidc) = s.oidc() {
        out.push((2, index_key(&[&oidc.iss, &oidc.sub], &key)));
        if let Some(sid) = &oidc.sid {
            out.push((1, index_key(&[&oidc.iss, sid], &key)));
        }
    }
    out
}

fn keys_from(tree: &Tree, prefix: &[u8]) -> Result<Vec<SessionKey>, StoreError> {
    let mut keys = Vec::new();
    for item in tree.scan_prefix(prefix) {
        let (k, _) = item?;
        if let Ok(bytes) = <[u8; 32]>::try_from(&k[prefix.len()..]) {
            keys.push(SessionKey::from_bytes(bytes));
        }
    }
    Ok(keys)
}

impl SledStore {
    /// Opens (or creates) the store. Its memory is bounded by `cache_bytes`: half for sled's page cache, half
    /// for the copy of decoded records.
    pub fn open(path: &Path, sealer: TokenSealer, policy: Policy, cache_bytes: u64) -> Result<Self, StoreError> {
        let (pages, copy_bytes) = super::halves(cache_bytes);
        let db = sled::Config::new().path(path).cache_capacity(pages).flush_every_ms(None).open()?;
        let gate = Arc::new(Gate::default());
        let flusher = {
            let (db, gate) = (db.clone(), gate.clone());
            std::thread::Builder::new()
                .name("bff-sled-flusher".into())
                .spawn(move || {
                    while !gate.stopping.load(Ordering::Relaxed) {
                        std::thread::park_timeout(FLUSH_EVERY);
                        if let Err(error) = gate.flush(&db) {
                            tracing::warn!(%error, "periodic flush of lazy writes failed; the next durable write retries");
                        }
                    }
                })
                .map_err(|e| StoreError::Io(format!("cannot start the flusher thread: {e}")))?
        };
        let login_order = db.open_tree("login_order")?;
        let next_seq = match login_order.last()? {
            Some((k, _)) => <[u8; 8]>::try_from(&*k).map_or(0, u64::from_be_bytes).saturating_add(1),
            None => 0,
        };
        Ok(Self {
            login_order,
            login_seq: AtomicU64::new(next_seq),
            sessions: db.open_tree("sessions")?,
            schedule: db.open_tree("schedule")?,
            by_user: db.open_tree("by_user")?,
            by_sid: db.open_tree("by_sid")?,
            by_sub: db.open_tree("by_sub")?,
            logins: db.open_tree("logins")?,
            jtis: db.open_tree("jtis")?,
            jtis_by_exp: db.open_tree("jtis_by_exp")?,
            db,
            sealer,
            policy,
            copy: Notices::of_own_writes(super::records_in(copy_bytes)),
            claimed: Mutex::default(),
            gate,
            flusher: Some(flusher),
            group: GroupCommit::default(),
        })
    }

    /// Records held, tombstones included.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every record's key, tombstones included (for offline checks; the server never scans).
    pub fn all_keys(&self) -> Result<Vec<SessionKey>, StoreError> {
        let mut keys = Vec::new();
        for item in self.sessions.iter() {
            let (k, _) = item?;
            if let Ok(bytes) = <[u8; 32]>::try_from(&k[..]) {
                keys.push(SessionKey::from_bytes(bytes));
            }
        }
        Ok(keys)
    }

    /// The record under `key`: from the copy, or decoded from sled (then kept, unless a write to its part of
    /// the copy came meanwhile).
    pub fn get(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        let ticket = match self.copy.get(key) {
            Ok(session) => return Ok(Some(session)),
            Err(ticket) => ticket,
        };
        let Some(bytes) = self.sessions.get(key.as_bytes())? else { return Ok(None) };
        let body = bytes.get(8..).unwrap_or_default();
        let session =
            Arc::new(record::decode(body, &self.sealer).map_err(|error| StoreError::Corrupt { key: *key, error })?);
        self.copy.fill(*key, session.clone(), ticket);
        Ok(Some(session))
    }

    /// Writes `new` if the stored record is still `previous` (compare-and-swap on the version), updating
    /// the schedule and indexes in the same transaction.
    pub fn put(&self, previous: Option<&Session>, new: &Session) -> Result<(), StoreError> {
        let prepared = self.prepare_put(previous, new);
        self.commit(&self.gate.transaction(), &[prepared])
    }

    /// Removes a tombstone if it is still `previous`.
    pub fn delete(&self, previous: &Session) -> Result<(), StoreError> {
        self.commit(&self.gate.transaction(), &[self.prepare_delete(previous)])
    }

    /// Carries out `writes`, sixteen to a transaction (see `TOGETHER`).
    pub fn write_all(&self, writes: &[Write<'_>]) -> Vec<Result<(), StoreError>> {
        writes.chunks(TOGETHER).flat_map(|chunk| self.write_together(&self.gate.transaction(), chunk)).collect()
    }

    /// Carries out `writes` in one transaction; when one of them conflicts (the transaction then writes
    /// nothing), each on its own, so that one alone is refused. Purges are not compare-and-swap writes and
    /// go on their own after the others.
    fn write_together(&self, entered: &Entered<'_>, writes: &[Write<'_>]) -> Vec<Result<(), StoreError>> {
        let prepared: Vec<Option<Prepared>> = writes
            .iter()
            .map(|w| match *w {
                Write::Put { previous, new } => Some(self.prepare_put(previous, new)),
                Write::Delete { previous } => Some(self.prepare_delete(previous)),
                Write::Purge { .. } => None,
            })
            .collect();
        let together: Vec<&Prepared> = prepared.iter().flatten().collect();
        let joint = if together.is_empty() { Ok(()) } else { self.commit(entered, &together) };
        writes
            .iter()
            .zip(&prepared)
            .map(|(write, prepared)| match (write, prepared) {
                (Write::Purge { key, now }, _) => self.purge(key, *now),
                (_, Some(one)) if joint == Err(StoreError::Conflict) => self.commit(entered, &[one]),
                _ => joint.clone(),
            })
            .collect()
    }

    /// A write of `new` over `previous`, encoded and sealed outside any transaction.
    fn prepare_put(&self, previous: Option<&Session>, new: &Session) -> Prepared {
        let mut value = new.version().to_be_bytes().to_vec();
        value.extend_from_slice(&record::encode(new, &self.sealer));
        Prepared {
            key: new.key(),
            expected: previous.map(Session::version),
            value: Some(value),
            removed: previous.map(index_entries).unwrap_or_default(),
            added: index_entries(new),
            old_event: previous.and_then(|p| p.next_event(&self.policy)),
            new_event: new.next_event(&self.policy),
        }
    }

    /// The removal of `previous` with its schedule and index entries.
    fn prepare_delete(&self, previous: &Session) -> Prepared {
        Prepared {
            key: previous.key(),
            expected: Some(previous.version()),
            value: None,
            removed: index_entries(previous),
            added: Vec::new(),
            old_event: previous.next_event(&self.policy),
            new_event: None,
        }
    }

    /// Commits prepared writes in one transaction: all of them, or none when any record is no longer the
    /// version its write expects ([`StoreError::Conflict`]).
    fn commit(&self, _: &Entered<'_>, writes: &[impl std::borrow::Borrow<Prepared>]) -> Result<(), StoreError> {
        let trees = (&self.sessions, &self.schedule, &self.by_user, &self.by_sid, &self.by_sub);
        let result = trees.transaction(|(sessions, schedule, user, sid, sub)| {
            for w in writes.iter().map(std::borrow::Borrow::borrow) {
                let key = w.key.as_bytes();
                if sessions.get(key)?.map(|v| version_of(&v)) != w.expected {
                    return Err(ConflictableTransactionError::Abort(()));
                }
                match &w.value {
                    Some(value) => sessions.insert(key, value.as_slice())?,
                    None => sessions.remove(key)?,
                };
                if w.old_event != w.new_event {
                    if let Some(at) = w.old_event {
                        schedule.remove(schedule_key(at, &w.key))?;
                    }
                    if let Some(at) = w.new_event {
                        schedule.insert(schedule_key(at, &w.key), &[])?;
                    }
                }
                let index = [user, sid, sub];
                for (tree, k) in w.removed.iter().filter(|e| !w.added.contains(e)) {
                    index[*tree].remove(k.as_slice())?;
                }
                for (tree, k) in w.added.iter().filter(|e| !w.removed.contains(e)) {
                    index[*tree].insert(k.as_slice(), &[])?;
                }
            }
            Ok(())
        });
        let keys: Vec<SessionKey> = writes.iter().map(|w| w.borrow().key).collect();
        // The copy drops these records whatever the outcome. Written, they changed. Refused, another writer
        // changed them and may not have dropped them yet (it does so after its commit): the caller's retry
        // must read sled, or it could meet the same stale record on every attempt.
        for key in &keys {
            self.copy.forget(key);
        }
        map_tx(result)?;
        // Written: passes may claim them again.
        self.unclaim(&keys);
        Ok(())
    }

    /// Removes whatever is under `key` and its schedule entries due by `now`.
    pub fn purge(&self, key: &SessionKey, now: Timestamp) -> Result<(), StoreError> {
        self.sessions.remove(key.as_bytes())?;
        self.copy.forget(key);
        let end = schedule_key(now, key);
        for item in self.schedule.range(..=end) {
            let (k, _) = item?;
            if k.ends_with(key.as_bytes()) {
                self.schedule.remove(k)?;
            }
        }
        self.unclaim(&[*key]);
        Ok(())
    }

    pub fn keys(&self, lookup: &Lookup) -> Result<Vec<SessionKey>, StoreError> {
        match lookup {
            Lookup::User(user) => keys_from(&self.by_user, &index_prefix(&[user.as_str()])),
            Lookup::Sid { iss, sid } => keys_from(&self.by_sid, &index_prefix(&[iss, sid])),
            Lookup::Sub { iss, sub } => keys_from(&self.by_sub, &index_prefix(&[iss, sub])),
        }
    }

    /// Keys whose scheduled event is at or before `now` and that no pass holds, at most `limit`, earliest
    /// first; they are held until written or released.
    pub fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<SessionKey>, StoreError> {
        let end = schedule_key(now, &SessionKey::from_bytes([0xff; 32]));
        let mut claimed = self.claimed.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys = Vec::new();
        for item in self.schedule.range(..=end) {
            if keys.len() >= limit {
                break;
            }
            let (k, _) = item?;
            if let Ok(bytes) = <[u8; 32]>::try_from(&k[8..]) {
                let key = SessionKey::from_bytes(bytes);
                if claimed.insert(key) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }

    fn unclaim(&self, keys: &[SessionKey]) {
        let mut claimed = self.claimed.lock().unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            claimed.remove(key);
        }
    }

    /// Saves a pending login, then evicts the oldest beyond `capacity`: the entries of the order tree at
    /// least `capacity` places behind this one. Returns how many it evicted.
    pub fn put_login(&self, key: &LoginKey, login: &PendingLogin, capacity: usize) -> Result<usize, StoreError> {
        self.put_login_in(&self.gate.transaction(), key, login, capacity)
    }

    fn put_login_in(
        &self,
        _: &Entered<'_>,
        key: &LoginKey,
        login: &PendingLogin,
        capacity: usize,
    ) -> Result<usize, StoreError> {
        let seq = self.login_seq.fetch_add(1, Ordering::Relaxed);
        let mut entry = key.as_bytes().to_vec();
        entry.extend_from_slice(&login.expires_at.as_millis().to_be_bytes());
        let result = (&self.logins, &self.login_order).transaction(|(logins, order)| {
            logins.insert(key.as_bytes().as_slice(), login.encode())?;
            order.insert(seq.to_be_bytes().as_slice(), entry.as_slice())?;
            Ok::<_, ConflictableTransactionError<()>>(())
        });
        map_tx(result)?;
        let Some(bound) = seq.checked_sub(capacity.max(1) as u64) else { return Ok(0) };
        let mut evicted = 0;
        for item in self.login_order.range(..=bound.to_be_bytes()) {
            let (k, v) = item?;
            evicted += usize::from(self.drop_login(&k, &v)?);
        }
        Ok(evicted)
    }

    /// Removes an order entry and the pending login it names; whether that login was still there (a taken
    /// login leaves its order entry behind for this to clear).
    fn drop_login(&self, order_key: &[u8], entry: &[u8]) -> Result<bool, StoreError> {
        let had = match entry.get(..32) {
            Some(login_key) => self.logins.remove(login_key)?.is_some(),
            None => false,
        };
        self.login_order.remove(order_key)?;
        Ok(had)
    }

    /// Removes and returns the pending login under `key`: a second take finds nothing.
    pub fn take_login(&self, key: &LoginKey) -> Result<Option<PendingLogin>, StoreError> {
        let Some(bytes) = self.logins.remove(key.as_bytes())? else { return Ok(None) };
        PendingLogin::decode(&bytes).map(Some).map_err(StoreError::CorruptLogin)
    }

    /// Drops the pending logins whose lifetime is over at `now`, oldest first, and stops at the first that
    /// is not: logins begin in order with one lifetime, so what follows is not over either. (Were the
    /// lifetime shortened across a restart, a few would wait for the one before them; the callback refuses
    /// them as expired meanwhile.) An order entry that does not decode is dropped, login and all.
    pub fn sweep_logins(&self, now: Timestamp) -> Result<usize, StoreError> {
        let mut swept = 0;
        for item in self.login_order.iter() {
            let (k, v) = item?;
            let expires = v.get(32..40).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
            if expires.is_some_and(|ms| !login::is_over(Timestamp::from_millis(ms), now)) {
                break;
            }
            swept += usize::from(self.drop_login(&k, &v)?);
        }
        Ok(swept)
    }

    /// Records a logout token's `jti`; `false` if it was seen before.
    pub fn remember_jti(&self, jti: &str, exp: u64) -> Result<bool, StoreError> {
        self.remember_jti_in(&self.gate.transaction(), jti, exp)
    }

    fn remember_jti_in(&self, _: &Entered<'_>, jti: &str, exp: u64) -> Result<bool, StoreError> {
        let by_exp = jti_exp_key(exp, jti);
        let result = (&self.jtis, &self.jtis_by_exp).transaction(|(jtis, by_expiry)| {
            if jtis.get(jti.as_bytes())?.is_some() {
                return Err(ConflictableTransactionError::Abort(()));
            }
            jtis.insert(jti.as_bytes(), exp.to_be_bytes().as_slice())?;
            by_expiry.insert(by_exp.as_slice(), &[])?;
            Ok(())
        });
        match map_tx(result) {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Forgets the `jti`s whose tokens expired before `exp`, reading only those.
    pub fn sweep_jtis(&self, exp: u64) -> Result<usize, StoreError> {
        let over: Vec<_> = self.jtis_by_exp.range(..exp.to_be_bytes().to_vec()).keys().filter_map(Result::ok).collect();
        for key in &over {
            if let Some(jti) = key.get(8..) {
                self.jtis.remove(jti)?;
            }
            self.jtis_by_exp.remove(key)?;
        }
        Ok(over.len())
    }

    /// Waits until every write so far is durable. Concurrent callers share flushes (group commit): a caller
    /// returns once a flush that began after its call has finished, so no one is acknowledged before its
    /// writes are on disk, and a burst of durable writes (logouts under load) costs one fsync per round, not
    /// one each. The flush runs on a blocking thread: it may wait for the transactions under way (sled 0.34
    /// deadlocks when the two overlap), and for the disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let group = &self.group;
        // Every write of this caller's was made before this number was taken.
        let mine = group.requested.fetch_add(1, Ordering::SeqCst) + 1;
        // One flusher at a time; the others queue here, and whoever a finished flush covered leaves at once. A
        // caller that goes away (a cancelled request) releases its place with its guard.
        let _turn = group.leader.lock().await;
        if group.completed.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        // Everything requested so far happened before this flush begins, so it covers them all.
        let covers = group.requested.load(Ordering::SeqCst);
        let (db, gate) = (self.db.clone(), self.gate.clone());
        tokio::task::spawn_blocking(move || gate.flush(&db))
            .await
            .map_err(|e| StoreError::Io(format!("the flush did not finish: {e}")))??;
        group.flushes.fetch_add(1, Ordering::Relaxed);
        group.completed.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Flushes that reached the disk through [`SledStore::flush`] so far (for tests of the group commit).
    pub fn flushes(&self) -> u64 {
        self.group.flushes.load(Ordering::Relaxed)
    }
}

/// sled is synchronous and fast enough to call from a task: each method runs the inherent one.
#[async_trait]
impl Store for SledStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        SledStore::get(self, key)
    }

    // The copy already answers `get`; this only spares a check the extra future of the trait's default.
    async fn get_for_check(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        SledStore::get(self, key)
    }

    async fn put(&self, previous: Option<&Session>, new: &Session) -> Result<(), StoreError> {
        let prepared = self.prepare_put(previous, new);
        self.commit(&self.gate.enter().await, &[prepared])
    }

    async fn delete(&self, previous: &Session) -> Result<(), StoreError> {
        let prepared = self.prepare_delete(previous);
        self.commit(&self.gate.enter().await, &[prepared])
    }

    async fn purge(&self, key: &SessionKey, now: Timestamp) -> Result<(), StoreError> {
        SledStore::purge(self, key, now)
    }

    async fn write_all(&self, writes: &[Write<'_>]) -> Vec<Result<(), StoreError>> {
        let mut results = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(TOGETHER) {
            // Entered per transaction, so a flush waits for one group at most.
            results.extend(self.write_together(&self.gate.enter().await, chunk));
        }
        results
    }

    async fn keys(&self, lookup: &Lookup) -> Result<Vec<SessionKey>, StoreError> {
        SledStore::keys(self, lookup)
    }

    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<SessionKey>, StoreError> {
        SledStore::due(self, now, limit)
    }

    async fn release(&self, keys: &[SessionKey]) -> Result<(), StoreError> {
        self.unclaim(keys);
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        SledStore::flush(self).await
    }

    async fn put_login(&self, key: &LoginKey, login: &PendingLogin, capacity: usize) -> Result<usize, StoreError> {
        self.put_login_in(&self.gate.enter().await, key, login, capacity)
    }

    async fn take_login(&self, key: &LoginKey) -> Result<Option<PendingLogin>, StoreError> {
        SledStore::take_login(self, key)
    }

    async fn sweep_logins(&self, now: Timestamp) -> Result<usize, StoreError> {
        SledStore::sweep_logins(self, now)
    }

    async fn jti_seen(&self, jti: &str) -> Result<bool, StoreError> {
        Ok(self.jtis.contains_key(jti.as_bytes())?)
    }

    async fn remember_jti(&self, jti: &str, exp: u64) -> Result<bool, StoreError> {
        self.remember_jti_in(&self.gate.enter().await, jti, exp)
    }

    async fn sweep_jtis(&self, exp: u64) -> Result<usize, StoreError> {
        SledStore::sweep_jtis(self, exp)
    }
}

/// The operator's tools; they run with the database to themselves (sled lets one process open it).
#[async_trait]
impl Maintenance for SledStore {
    async fn scan(&self, after: Option<SessionKey>, limit: usize) -> Result<Vec<Scanned>, StoreError> {
        use std::ops::Bound;
        let start = match &after {
            Some(key) => Bound::Excluded(key.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.sessions.range::<Vec<u8>, _>((start, Bound::Unbounded)).take(limit) {
            let (k, v) = item?;
            let Ok(bytes) = <[u8; 32]>::try_from(&k[..]) else { continue };
            let record = record::decode(v.get(8..).unwrap_or_default(), &self.sealer);
            out.push(Scanned { key: SessionKey::from_bytes(bytes), record });
        }
        Ok(out)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.sessions.len() as u64)
    }

    async fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    async fn verify(&self, repair: bool, progress: Progress<'_>) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport { repaired: repair, ..VerifyReport::default() };
        let index = [&self.by_user, &self.by_sid, &self.by_sub];
        let mut done = 0;
        // Every record, and the entries it needs.
        for item in self.sessions.iter() {
            let (k, v) = item?;
            done += 1;
            progress(done);
            report.records += 1;
            let key = <[u8; 32]>::try_from(&k[..]).map(SessionKey::from_bytes);
            let decoded = record::decode(v.get(8..).unwrap_or_default(), &self.sealer);
            let (Ok(key), Ok(session)) = (key, &decoded) else {
                let key = key.unwrap_or(SessionKey::from_bytes([0; 32]));
                if let Err(error) = &decoded {
                    report.undecodable(key, error);
                }
                if repair && !matches!(decoded, Err(record::DecodeError::Seal(_))) {
                    self.sessions.remove(&k)?;
                    self.copy.forget(&key);
                }
                continue;
            };
            let needed = index_entries(session)
                .into_iter()
                .map(|(tree, entry)| (index[tree], entry))
                .chain(session.next_event(&self.policy).map(|at| (&self.schedule, schedule_key(at, &key))));
            for (tree, entry) in needed {
                if !tree.contains_key(&entry)? {
                    report.missing_entries += 1;
                    if repair {
                        tree.insert(entry, &[])?;
                    }
                }
            }
        }
        // Every entry, against the record it names.
        for (tree_number, tree) in index.iter().enumerate() {
            for item in tree.iter() {
                let (entry, _) = item?;
                done += 1;
                progress(done);
                let named = entry.len().checked_sub(32).and_then(|at| self.record_of(&entry[at..]).transpose());
                let describes = match named.transpose()? {
                    Some(session) => index_entries(&session).iter().any(|(t, e)| *t == tree_number && **e == *entry),
                    None => false,
                };
                if !describes {
                    report.stray_entries += 1;
                    if repair {
                        tree.remove(&entry)?;
                    }
                }
            }
        }
        for item in self.schedule.iter() {
            let (entry, _) = item?;
            done += 1;
            progress(done);
            let describes = match entry.get(8..).map(|k| self.record_of(k)).transpose()?.flatten() {
                Some(session) => {
                    session.next_event(&self.policy).map(|at| schedule_key(at, &session.key())) == Some(entry.to_vec())
                }
                None => false,
            };
            if !describes {
                report.stray_entries += 1;
                if repair {
                    self.schedule.remove(&entry)?;
                }
            }
        }
        if repair {
            self.flush().await?;
        }
        Ok(report)
    }

    async fn reseal(&self, key: &SessionKey) -> Result<Resealed, StoreError> {
        let Some(stored) = self.sessions.get(key.as_bytes())? else { return Ok(Resealed::Gone) };
        let body = stored.get(8..).unwrap_or_default();
        if record::decode(body, &self.sealer.current_only()).is_ok() {
            return Ok(Resealed::Current);
        }
        let session = record::decode(body, &self.sealer).map_err(|error| StoreError::Corrupt { key: *key, error })?;
        let mut value = stored.get(..8).unwrap_or_default().to_vec();
        value.extend_from_slice(&record::encode(&session, &self.sealer));
        let _entered = self.gate.enter().await;
        let swapped = self.sessions.compare_and_swap(key.as_bytes(), Some(stored), Some(value))?;
        self.copy.forget(key);
        match swapped {
            Ok(()) => Ok(Resealed::Resealed),
            Err(_) => Err(StoreError::Conflict),
        }
    }
}

impl SledStore {
    /// The record a 32-byte key names, if it is there and decodes.
    fn record_of(&self, key: &[u8]) -> Result<Option<Session>, StoreError> {
        let Some(v) = self.sessions.get(key)? else { return Ok(None) };
        Ok(record::decode(v.get(8..).unwrap_or_default(), &self.sealer).ok())
    }
}

fn jti_exp_key(exp: u64, jti: &str) -> Vec<u8> {
    let mut key = exp.to_be_bytes().to_vec();
    key.extend_from_slice(jti.as_bytes());
    key
}

fn version_of(value: &[u8]) -> u64 {
    value.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_be_bytes)
}

fn map_tx(result: Result<(), TransactionError<()>>) -> Result<(), StoreError> {
    match result {
        Ok(()) => Ok(()),
        Err(TransactionError::Abort(())) => Err(StoreError::Conflict),
        Err(TransactionError::Storage(e)) => Err(StoreError::Io(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many concurrent durable writers share fsyncs, and each returns only after a flush that began after
    /// its write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_are_grouped_and_none_returns_before_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SledStore::open(dir.path(), TokenSealer::from_key([3; 32]), Policy::hardened(), 1 << 20).unwrap());
        let callers: Vec<_> = (0..64u64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.jtis.insert(i.to_be_bytes(), &[]).unwrap();
                    let before = store.flushes();
                    store.flush().await.unwrap();
                    assert!(store.flushes() > before, "caller {i} returned before any flush began after its write");
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        let flushes = store.flushes();
        assert!((1..64).contains(&flushes), "64 callers shared {flushes} flushes");
    }

    fn local(n: u8) -> Session {
        let new = bff_session_core::NewSession {
            id: bff_session_core::SessionId::from_random_bytes([n; 32]),
            user: bff_session_core::UserId::new(format!("user{n}")),
            login: bff_session_core::Login::Local,
            device: bff_session_core::Device::default(),
        };
        bff_session_core::lifecycle::create(&new, Timestamp::from_millis(1), &Policy::hardened()).outcome
    }

    fn revoked(s: &Session) -> Session {
        let mut s = s.clone();
        let reason = bff_session_core::RevocationReason::Logout;
        let _ =
            bff_session_core::lifecycle::revoke(Some(&mut s), reason, Timestamp::from_millis(2), &Policy::hardened());
        s
    }

    /// Writes committed together still answer one by one: a stale one is refused alone, and the others
    /// are written with their index changes.
    #[test]
    fn a_batch_with_a_stale_write_refuses_that_one_and_writes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), TokenSealer::from_key([3; 32]), Policy::hardened(), 1 << 20).unwrap();
        let sessions: Vec<Session> = (1..=40).map(local).collect();
        for s in &sessions {
            store.put(None, s).unwrap();
        }
        // Someone else ends session 7 first, so the batch's write of it is stale.
        let (stale, theirs) = (&sessions[7], revoked(&sessions[7]));
        store.put(Some(stale), &theirs).unwrap();
        let ended: Vec<Session> = sessions.iter().map(revoked).collect();
        let writes: Vec<Write<'_>> =
            sessions.iter().zip(&ended).map(|(previous, new)| Write::Put { previous: Some(previous), new }).collect();
        let results = store.write_all(&writes);
        for (i, result) in results.iter().enumerate() {
            let expected = if i == 7 { Err(StoreError::Conflict) } else { Ok(()) };
            assert_eq!(*result, expected, "write {i}");
        }
        for (i, s) in ended.iter().enumerate() {
            let user = Lookup::User(s.user().clone());
            assert!(store.keys(&user).unwrap().is_empty(), "session {i} still indexed as active");
        }
        let theirs_version = store.get(&theirs.key()).unwrap().map(|s| s.version());
        assert_eq!(theirs_version, Some(theirs.version()), "the stale write replaced the newer record");
        // Removals go together too.
        let removals: Vec<Write<'_>> =
            ended.iter().filter(|s| s.key() != theirs.key()).map(|previous| Write::Delete { previous }).collect();
        assert!(store.write_all(&removals).iter().all(Result::is_ok));
        assert_eq!(store.len(), 1);
    }

    /// Reads are answered from memory, and every write reaches them before it returns.
    #[test]
    fn a_read_sees_each_write_as_soon_as_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), TokenSealer::from_key([3; 32]), Policy::hardened(), 1 << 20).unwrap();
        let version = |store: &SledStore, s: &Session| store.get(&s.key()).unwrap().map(|s| s.version());
        let s = local(1);
        assert_eq!(version(&store, &s), None);
        store.put(None, &s).unwrap();
        assert_eq!(version(&store, &s), Some(s.version()));
        // Behind the store's back (nothing of this process writes so), only to show where the answer comes from.
        let stored = store.sessions.remove(s.key().as_bytes()).unwrap().unwrap();
        assert_eq!(version(&store, &s), Some(s.version()), "answered from the copy, without reading sled");
        store.sessions.insert(s.key().as_bytes(), stored).unwrap();
        let ended = revoked(&s);
        store.put(Some(&s), &ended).unwrap();
        assert_eq!(version(&store, &s), Some(ended.version()), "a check saw the record before the logout");
        let again = revoked(&ended);
        assert_eq!(store.write_all(&[Write::Put { previous: Some(&ended), new: &again }]), [Ok(())]);
        assert_eq!(version(&store, &s), Some(again.version()));
        store.delete(&again).unwrap();
        assert_eq!(version(&store, &s), None, "a deleted record still answered");
    }

    /// A write that meets a newer record than the one it read leaves the next read to sled: until the
    /// writer of that record updates the copy, the copy still answers the old one, and a retry that read it
    /// again would conflict again.
    #[test]
    fn a_conflict_sends_the_next_read_to_sled() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), TokenSealer::from_key([3; 32]), Policy::hardened(), 1 << 20).unwrap();
        let s = local(1);
        store.put(None, &s).unwrap();
        assert_eq!(store.get(&s.key()).unwrap().map(|s| s.version()), Some(s.version()));
        // Another writer's commit, caught before it told the copy (written behind the store's back).
        let theirs = revoked(&s);
        let mut value = theirs.version().to_be_bytes().to_vec();
        value.extend_from_slice(&record::encode(&theirs, &store.sealer));
        store.sessions.insert(s.key().as_bytes(), value).unwrap();
        let mine = revoked(&s);
        assert_eq!(store.put(Some(&s), &mine), Err(StoreError::Conflict));
        let read = store.get(&s.key()).unwrap().map(|s| s.version());
        assert_eq!(read, Some(theirs.version()), "the retry read the record the conflict replaced");
    }

    /// A write that meets a flush waits for it without holding its worker: the runtime here has one, and
    /// the task that lets the flush end must run on it while the write waits.
    #[test]
    fn a_write_that_meets_a_flush_leaves_the_worker_to_other_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SledStore::open(dir.path(), TokenSealer::from_key([3; 32]), Policy::hardened(), 1 << 20).unwrap());
        let (held, is_held) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let gate = store.gate.clone();
        // Holds the gate as a flush does, until a task on the runtime says so (or, were the worker blocked,
        // until it gives up).
        let flush = std::thread::spawn(move || {
            let alone = gate.lock.write().unwrap();
            held.send(()).unwrap();
            let by_a_task = released.recv_timeout(std::time::Duration::from_secs(30)).is_ok();
            drop(alone);
            gate.reopened.notify_waiters();
            by_a_task
        });
        is_held.recv().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let s = local(1);
            let writer = {
                let store = store.clone();
                tokio::spawn(async move { Store::put(&*store, None, &s).await })
            };
            // The writer runs first and meets the flush.
            tokio::task::yield_now().await;
            // Gone only if the flush gave up waiting: the assertion below says why.
            let _ = release.send(());
            writer.await.unwrap().unwrap();
        });
        assert!(flush.join().unwrap(), "the write held the only worker while the flush ran");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn seen_jtis_are_refused_until_swept_and_the_sweep_takes_only_expired_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), TokenSealer::from_key([3; 32]), Policy::hardened(), 1 << 20).unwrap();
        for (jti, exp) in [("a", 100), ("b", 200), ("c", 300)] {
            assert!(store.remember_jti(jti, exp).unwrap());
            assert!(!store.remember_jti(jti, exp).unwrap(), "{jti} replayed");
        }
        assert_eq!(store.sweep_jtis(250).unwrap(), 2);
        assert!(store.remember_jti("a", 100).unwrap(), "a is forgotten");
        assert!(!store.remember_jti("c", 300).unwrap(), "c is still remembered");
        assert_eq!(store.sweep_jtis(250).unwrap(), 1);
    }
}
