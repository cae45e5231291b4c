//! Many users' sessions in memory, with the indexes the lifecycle needs.
//!
//! Owns the map from [`SessionKey`] to [`Session`], the secondary indexes (by user, by `(iss, sid)`, by
//! `(iss, sub)`) and the schedule of each session's next due event, which is what lets [`Registry::tick`]
//! cost in proportion to the sessions that are due rather than to all sessions. Every rule comes from
//! `lifecycle`; this module only finds records and keeps the indexes true.
//!
//! The registry is the oracle the server's durable stores are checked against, and an in-memory store in
//! its own right. It is deterministic: every collection is ordered, so equal command logs give equal
//! registries, byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::background;
pub use crate::background::TickReport;
use crate::effect::Effect;
use crate::id::{Handle, SessionId, SessionKey};
use crate::lifecycle::{self, AuthRequest, Authenticated, NewSession, Refusal, Transition};
use crate::policy::{Policy, PolicyError};
use crate::refresh::{RefreshCompletion, RefreshRefusal, RefreshResult, RefreshTicket, Trigger};
use crate::revoke_all::{Lookup, RevokeAll};
use crate::session::{RevocationReason, Session, UserId};
use crate::time::Timestamp;

/// The largest key, to make a schedule range inclusive of every key at one instant.
const LAST_KEY: SessionKey = SessionKey::from_bytes([0xff; 32]);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    session: Session,
    /// The instant under which the session sits in `schedule`.
    scheduled: Option<Timestamp>,
}

/// Sessions of many users. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    policy: Policy,
    entries: BTreeMap<SessionKey, Entry>,
    by_user: BTreeMap<UserId, BTreeSet<SessionKey>>,
    by_sid: BTreeMap<(String, String), BTreeSet<SessionKey>>,
    by_sub: BTreeMap<(String, String), BTreeSet<SessionKey>>,
    schedule: BTreeSet<(Timestamp, SessionKey)>,
}

/// Why a session could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CreateError {
    /// A record with this key exists: the caller's random source repeated itself, or an ID was reused.
    DuplicateId,
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateId => f.write_str("a session with this id already exists"),
        }
    }
}

impl std::error::Error for CreateError {}

impl Registry {
    pub fn new(policy: Policy) -> Result<Self, PolicyError> {
        policy.validate()?;
        Ok(Self {
            policy,
            entries: BTreeMap::new(),
            by_user: BTreeMap::new(),
            by_sid: BTreeMap::new(),
            by_sub: BTreeMap::new(),
            schedule: BTreeSet::new(),
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Records held, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &SessionKey) -> Option<&Session> {
        self.entries.get(key).map(|e| &e.session)
    }

    /// Every record in key order, tombstones included.
    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.entries.values().map(|e| &e.session)
    }

    /// A user's active sessions, in key order.
    pub fn sessions_of(&self, user: &UserId) -> Vec<&Session> {
        self.keys_of(&self.by_user, user).iter().filter_map(|k| self.get(k)).collect()
    }

    /// When the next call to [`Registry::tick`] has something to do. Calling earlier is a harmless no-op.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        self.schedule.first().map(|&(at, _)| at)
    }

    /// Creates a session. A login that presents an active session (`supersedes`) ends it.
    pub fn create(
        &mut self,
        new: &NewSession,
        supersedes: Option<SessionKey>,
        now: Timestamp,
    ) -> Transition<Result<SessionKey, CreateError>> {
        let key = new.id.key();
        if self.entries.contains_key(&key) {
            return Transition::new(Err(CreateError::DuplicateId), Vec::new());
        }
        let mut effects = Vec::new();
        if let Some(old) = supersedes {
            let t = self.update(old, |s, policy| lifecycle::revoke(s, RevocationReason::Superseded, now, policy));
            effects.extend(t.effects);
        }
        let created = lifecycle::create(new, now, &self.policy);
        effects.extend(created.effects);
        self.insert(created.outcome);
        Transition::new(Ok(key), effects)
    }

    /// Puts a record loaded from a store into the registry, replacing any with the same key.
    pub fn restore(&mut self, session: Session) {
        self.remove(&session.key());
        self.insert(session);
    }

    /// Checks a request: the cookie, the CSRF proof on unsafe methods, and the session's state and deadlines.
    pub fn authenticate(
        &mut self,
        request: &AuthRequest<'_>,
        now: Timestamp,
    ) -> Transition<Result<Authenticated, Refusal>> {
        let admitted = lifecycle::admit(request);
        match admitted.outcome {
            Ok(id) => self.authenticate_id(&id, now),
            Err(refusal) => Transition::new(Err(refusal), admitted.effects),
        }
    }

    /// [`Registry::authenticate`] for a caller that has already admitted the request.
    pub fn authenticate_id(&mut self, id: &SessionId, now: Timestamp) -> Transition<Result<Authenticated, Refusal>> {
        self.update(id.key(), |s, policy| lifecycle::authenticate(s, now, policy))
    }

    pub fn touch(&mut self, key: SessionKey, now: Timestamp) -> Transition<Result<bool, Refusal>> {
        self.update(key, |s, policy| lifecycle::touch(s, now, policy))
    }

    pub fn begin_refresh(
        &mut self,
        key: SessionKey,
        trigger: Trigger,
        now: Timestamp,
    ) -> Transition<Result<RefreshTicket, RefreshRefusal>> {
        self.update(key, |s, policy| lifecycle::begin_refresh(s, trigger, now, policy))
    }

    /// Extends the lease of a ticket whose provider call is still running.
    pub fn renew_lease(
        &mut self,
        ticket: &RefreshTicket,
        now: Timestamp,
    ) -> Transition<Result<Timestamp, RefreshRefusal>> {
        self.update(ticket.key, |s, policy| lifecycle::renew_lease(s, ticket, now, policy))
    }

    pub fn complete_refresh(
        &mut self,
        ticket: &RefreshTicket,
        result: RefreshResult,
        now: Timestamp,
    ) -> Transition<RefreshCompletion> {
        self.update(ticket.key, |s, policy| lifecycle::complete_refresh(s, ticket, result, now, policy))
    }

    /// Ends one session.
    pub fn revoke(
        &mut self,
        key: SessionKey,
        reason: RevocationReason,
        now: Timestamp,
    ) -> Transition<Result<(), Refusal>> {
        self.update(key, |s, policy| lifecycle::revoke(s, reason, now, policy))
    }

    /// Ends every active session a plan names. Returns the sessions it ended.
    pub fn revoke_all(&mut self, plan: &RevokeAll, now: Timestamp) -> Transition<Vec<SessionKey>> {
        let keys = plan.order(self.lookup(&plan.lookup));
        let mut visits = Vec::with_capacity(keys.len());
        for key in keys {
            visits.push((key, self.update(key, |s, policy| plan.revoke(s, now, policy))));
        }
        plan.finish(visits)
    }

    /// Ends every active session of a user ("log out everywhere"). Returns the sessions it ended.
    pub fn revoke_user(
        &mut self,
        user: &UserId,
        reason: RevocationReason,
        now: Timestamp,
    ) -> Transition<Vec<SessionKey>> {
        self.revoke_all(&RevokeAll::user(user.clone(), reason), now)
    }

    /// Ends the user's session named by `handle`, from the device list of the session `requester`.
    /// Another user's handle is unknown.
    pub fn revoke_handle(
        &mut self,
        user: &UserId,
        handle: Handle,
        requester: SessionKey,
        now: Timestamp,
    ) -> Transition<Result<(), Refusal>> {
        let key = self
            .lookup(&Lookup::User(user.clone()))
            .into_iter()
            .find(|k| self.get(k).is_some_and(|s| s.handle() == handle));
        match key {
            Some(key) => self.update(key, |s, policy| lifecycle::end_from_device(s, requester, now, policy)),
            None => lifecycle::end_from_device(None, requester, now, &self.policy),
        }
    }

    /// Back-channel logout naming the provider's session.
    pub fn revoke_by_sid(&mut self, iss: &str, sid: &str, now: Timestamp) -> Transition<Vec<SessionKey>> {
        self.revoke_all(&RevokeAll::by_sid(iss, sid), now)
    }

    /// Back-channel logout naming the user at the provider.
    pub fn revoke_by_sub(&mut self, iss: &str, sub: &str, now: Timestamp) -> Transition<Vec<SessionKey>> {
        self.revoke_all(&RevokeAll::by_sub(iss, sub), now)
    }

    /// Expires sessions past a deadline, deletes tombstones past retention and lists the sessions due for a
    /// background refresh. Looks only at sessions whose scheduled instant has come.
    pub fn tick(&mut self, now: Timestamp) -> Transition<TickReport> {
        let due: Vec<SessionKey> = self.schedule.range(..=(now, LAST_KEY)).map(|&(_, key)| key).collect();
        let mut report = TickReport::default();
        let mut effects = Vec::new();
        for key in due {
            let t = self.update(key, |s, policy| background::visit(key, s, now, policy));
            report.add(key, t.outcome);
            effects.extend(t.effects);
        }
        Transition::new(report, effects)
    }

    /// The keys an index holds for `lookup`.
    pub fn lookup(&self, lookup: &Lookup) -> Vec<SessionKey> {
        match lookup {
            Lookup::User(user) => self.keys_of(&self.by_user, user),
            Lookup::Sid { iss, sid } => self.keys_of(&self.by_sid, &(iss.clone(), sid.clone())),
            Lookup::Sub { iss, sub } => self.keys_of(&self.by_sub, &(iss.clone(), sub.clone())),
        }
    }

    fn keys_of<K: Ord>(&self, index: &BTreeMap<K, BTreeSet<SessionKey>>, k: &K) -> Vec<SessionKey> {
        index.get(k).map(|set| set.iter().copied().collect()).unwrap_or_default()
    }

    /// Runs a transition on one record and carries out its store effects here: a `Persist` brings the
    /// indexes and the schedule up to date with the new record, a `Delete` removes it.
    fn update<T>(
        &mut self,
        key: SessionKey,
        f: impl FnOnce(Option<&mut Session>, &Policy) -> Transition<T>,
    ) -> Transition<T> {
        let Some(entry) = self.entries.get_mut(&key) else {
            return f(None, &self.policy);
        };
        let was_active = entry.session.is_active();
        let t = f(Some(&mut entry.session), &self.policy);
        // A transition sees one record, so its store effects can only name that record's key.
        for effect in &t.effects {
            match effect {
                Effect::Delete { .. } => self.remove(&key),
                Effect::Persist { .. } => {
                    if let Some(entry) = self.entries.get(&key)
                        && was_active
                        && !entry.session.is_active()
                    {
                        let session = entry.session.clone();
                        self.unindex(&session);
                    }
                    self.reschedule(key);
                }
                _ => {}
            }
        }
        t
    }

    fn insert(&mut self, session: Session) {
        let key = session.key();
        if session.is_active() {
            self.by_user.entry(session.user().clone()).or_default().insert(key);
            if let Some(oidc) = session.oidc() {
                self.by_sub.entry((oidc.iss.clone(), oidc.sub.clone())).or_default().insert(key);
                if let Some(sid) = &oidc.sid {
                    self.by_sid.entry((oidc.iss.clone(), sid.clone())).or_default().insert(key);
                }
            }
        }
        self.entries.insert(key, Entry { session, scheduled: None });
        self.reschedule(key);
    }

    fn remove(&mut self, key: &SessionKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.unindex(&entry.session);
            if let Some(at) = entry.scheduled {
                self.schedule.remove(&(at, *key));
            }
        }
    }

    fn unindex(&mut self, session: &Session) {
        let key = session.key();
        remove_from(&mut self.by_user, session.user(), &key);
        if let Some(oidc) = session.oidc() {
            remove_from(&mut self.by_sub, &(oidc.iss.clone(), oidc.sub.clone()), &key);
            if let Some(sid) = &oidc.sid {
                remove_from(&mut self.by_sid, &(oidc.iss.clone(), sid.clone()), &key);
            }
        }
    }

    fn reschedule(&mut self, key: SessionKey) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        let next = entry.session.next_event(&self.policy);
        if entry.scheduled == next {
            return;
        }
        if let Some(at) = entry.scheduled {
            self.schedule.remove(&(at, key));
        }
        if let Some(at) = next {
            self.schedule.insert((at, key));
        }
        entry.scheduled = next;
    }
}

fn remove_from<K: Ord + Clone>(index: &mut BTreeMap<K, BTreeSet<SessionKey>>, k: &K, key: &SessionKey) {
    if let Some(set) = index.get_mut(k) {
        set.remove(key);
        if set.is_empty() {
            index.remove(k);
        }
    }
}
