//! The background pass: what to do with one record whose scheduled instant has come.
//!
//! Owns the decision a sweeper and a refresher make about a due record: delete a tombstone past its
//! retention, expire a session past a deadline, refresh a recently used session's token, or nothing (an
//! early wake-up is harmless). It runs on one record at a time and never finds records: the shell (or
//! `Registry::tick`) reads its schedule, asks [`visit`] for each due key and carries out the effects.

use std::time::Duration;

use crate::effect::Effect;
use crate::id::SessionKey;
use crate::lifecycle::{self, Transition};
use crate::policy::Policy;
use crate::session::{ExpiryReason, Session};
use crate::time::Timestamp;

/// How long a store that several replicas share keeps the due records one replica claimed for its pass
/// before another replica may take them: far longer than a pass takes, so replicas do not visit one record
/// twice. An overlap would cost work only, as every visit is a compare-and-swap.
pub const CLAIM: Duration = Duration::from_secs(60);

/// Until when a claim made at `now` holds (see [`CLAIM`]).
pub fn claimed_until(now: Timestamp) -> Timestamp {
    now.saturating_add(CLAIM)
}

/// What a background pass did, or asks the shell to do, about one due record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visit {
    /// A tombstone past its retention: the effects delete it.
    Deleted,
    /// Nothing readable is stored under the key (the record is gone, or its bytes do not decode): the
    /// effects delete whatever is left, schedule entries included.
    Gone,
    /// A deadline passed: the session expired now.
    Expired(ExpiryReason),
    /// A recently used session's access token is within the background window: begin a refresh with
    /// [`crate::Trigger::Background`].
    RefreshDue,
    /// Nothing is due yet.
    Nothing,
}

/// What one sweep found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Sessions that expired in this sweep.
    pub expired: Vec<(SessionKey, ExpiryReason)>,
    /// Tombstones deleted.
    pub deleted: Vec<SessionKey>,
    /// Recently used sessions whose access token is within the background window: begin a refresh for each
    /// with [`crate::Trigger::Background`].
    pub refresh_due: Vec<SessionKey>,
}

impl TickReport {
    /// Files one record's visit under what it did.
    pub fn add(&mut self, key: SessionKey, visit: Visit) {
        match visit {
            Visit::Deleted => self.deleted.push(key),
            Visit::Expired(reason) => self.expired.push((key, reason)),
            Visit::RefreshDue => self.refresh_due.push(key),
            Visit::Gone | Visit::Nothing => {}
        }
    }
}

/// Decides about the record under `key` at `now`. `session` is `None` when the shell found nothing
/// readable under the key.
pub fn visit(key: SessionKey, session: Option<&mut Session>, now: Timestamp, policy: &Policy) -> Transition<Visit> {
    let Some(s) = session else {
        return Transition { outcome: Visit::Gone, effects: vec![Effect::Delete { key }] };
    };
    if s.delete_at(policy).is_some_and(|at| now >= at) {
        return Transition { outcome: Visit::Deleted, effects: vec![Effect::Delete { key }] };
    }
    let expired = lifecycle::expire_if_due(Some(&mut *s), now, policy);
    if let Some(reason) = expired.outcome {
        return expired.map(|_| Visit::Expired(reason));
    }
    // An expired session holds no tokens, so only a live one can be due for a refresh.
    let outcome = if s.background_refresh_due(now, policy) { Visit::RefreshDue } else { Visit::Nothing };
    expired.map(|_| outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Login, NewSession};
    use crate::session::{Device, UserId};
    use crate::{RevocationReason, SessionId};

    #[test]
    fn a_claim_lasts_a_minute_and_saturates() {
        assert_eq!(claimed_until(Timestamp::from_millis(1_000)), Timestamp::from_millis(61_000));
        assert_eq!(claimed_until(Timestamp::from_millis(u64::MAX - 1)), Timestamp::from_millis(u64::MAX));
    }

    fn session(policy: &Policy, at: Timestamp) -> Session {
        let new = NewSession {
            id: SessionId::from_random_bytes([9; 32]),
            user: UserId::new("u"),
            login: Login::Local,
            device: Device::default(),
        };
        lifecycle::create(&new, at, policy).outcome
    }

    #[test]
    fn each_due_record_gets_exactly_one_decision() {
        let policy = Policy::hardened();
        let t0 = Timestamp::from_millis(1_000_000);
        let mut s = session(&policy, t0);
        let key = s.key();
        assert_eq!(visit(key, Some(&mut s), t0, &policy).outcome, Visit::Nothing);
        let idle = s.idle_deadline(&policy).unwrap_or(t0);
        let one_before = idle.saturating_sub(std::time::Duration::from_millis(1));
        assert_eq!(visit(key, Some(&mut s), one_before, &policy).outcome, Visit::Nothing);
        let expired = visit(key, Some(&mut s), idle, &policy);
        assert_eq!(expired.outcome, Visit::Expired(ExpiryReason::Idle));
        assert!(matches!(expired.effects[0], Effect::Persist { .. }));
        let retention_over = idle.saturating_add(policy.tombstone_retention);
        let deleted = visit(key, Some(&mut s), retention_over, &policy);
        assert_eq!(deleted, Transition { outcome: Visit::Deleted, effects: vec![Effect::Delete { key }] });
        assert_eq!(
            visit(key, None, t0, &policy),
            Transition { outcome: Visit::Gone, effects: vec![Effect::Delete { key }] }
        );
        let mut revoked = session(&policy, t0);
        let _ = lifecycle::revoke(Some(&mut revoked), RevocationReason::Logout, t0, &policy);
        assert_eq!(visit(key, Some(&mut revoked), t0, &policy).outcome, Visit::Nothing);
    }
}
