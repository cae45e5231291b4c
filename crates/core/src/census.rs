//! What an operator sees of stored records: each session's standing at an instant, and the counts over many.
//!
//! Owns the rule that a record still marked active but past a deadline is already over (the sweep simply has
//! not reached it), and which scheduled events fall within a horizon. It reads no store: the shell scans its
//! records and hands each one here.

use std::time::Duration;

use crate::ended::{ExpiryReason, RevocationReason};
use crate::policy::Policy;
use crate::session::{Session, State};
use crate::time::Timestamp;

/// A session's standing at an instant, as `admin sessions list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// It would authenticate now.
    Active,
    /// A deadline has passed, whether or not the record says so yet.
    Expired(ExpiryReason),
    Revoked(RevocationReason),
}

impl Standing {
    /// `session` at `now`.
    pub fn of(session: &Session, now: Timestamp, policy: &Policy) -> Self {
        match session.state() {
            State::Active => match session.expired_at(now, policy) {
                None => Self::Active,
                Some(reason) => Self::Expired(reason),
            },
            State::Expired { reason, .. } => Self::Expired(reason),
            State::Revoked { reason, .. } => Self::Revoked(reason),
        }
    }

    pub const fn is_active(self) -> bool {
        matches!(self, Self::Active)
    }

    /// `active`, `expired` or `revoked`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired(_) => "expired",
            Self::Revoked(_) => "revoked",
        }
    }

    /// Why it ended, in the audit trail's vocabulary; `None` while active.
    pub const fn reason(self) -> Option<&'static str> {
        match self {
            Self::Active => None,
            Self::Expired(r) => Some(r.as_str()),
            Self::Revoked(r) => Some(r.as_str()),
        }
    }
}

/// Counts over a store's records at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub active: u64,
    pub expired: u64,
    pub revoked: u64,
    /// Per horizon asked for: records whose next scheduled event (expiry, background refresh or deletion)
    /// comes within it, overdue ones included.
    pub due_within: Vec<(Duration, u64)>,
}

impl Census {
    /// An empty census that will count events due within each of `horizons`.
    pub fn new(horizons: &[Duration]) -> Self {
        Self { due_within: horizons.iter().map(|h| (*h, 0)).collect(), ..Self::default() }
    }

    /// Counts `session` as it stands at `now`.
    pub fn count(&mut self, session: &Session, now: Timestamp, policy: &Policy) {
        match Standing::of(session, now, policy) {
            Standing::Active => self.active += 1,
            Standing::Expired(_) => self.expired += 1,
            Standing::Revoked(_) => self.revoked += 1,
        }
        if let Some(at) = session.next_event(policy) {
            for (horizon, due) in &mut self.due_within {
                if at <= now.saturating_add(*horizon) {
                    *due += 1;
                }
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.active + self.expired + self.revoked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle;
    use crate::testing::{grant, identity, sign_in};

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_millis(secs * 1000)
    }

    fn new_session(policy: &Policy, now: Timestamp) -> Session {
        lifecycle::create(&sign_in(1, identity(), grant()), now, policy).outcome
    }

    #[test]
    fn a_record_past_its_deadline_stands_expired_before_the_sweep_marks_it() {
        let policy = Policy::hardened();
        let session = new_session(&policy, t(0));
        assert_eq!(Standing::of(&session, t(1), &policy), Standing::Active);
        let (deadline, reason) = session.expiry(&policy);
        assert!(matches!(session.state(), State::Active));
        assert_eq!(Standing::of(&session, deadline, &policy), Standing::Expired(reason), "exactly at the deadline");
        assert_eq!(
            Standing::of(&session, deadline.saturating_sub(Duration::from_millis(1)), &policy),
            Standing::Active
        );
    }

    #[test]
    fn the_census_counts_states_and_events_within_each_horizon() {
        let policy = Policy::hardened();
        let mut revoked = new_session(&policy, t(0));
        let _ = lifecycle::revoke(Some(&mut revoked), RevocationReason::Admin, t(1), &policy);
        let active = new_session(&policy, t(0));
        let next = active.next_event(&policy).map(|at| t(0).until(at)).unwrap_or_default();
        let mut census = Census::new(&[Duration::ZERO, next, next + Duration::from_secs(1)]);
        census.count(&active, t(0), &policy);
        census.count(&revoked, t(1), &policy);
        assert_eq!((census.active, census.revoked, census.expired, census.total()), (1, 1, 0, 2));
        assert_eq!(census.due_within[0].1, 0, "nothing is due at once");
        assert_eq!(census.due_within[1].1, 1, "the active one's event falls exactly on the horizon");
        assert_eq!(census.due_within[2].1, 1);
    }
}
