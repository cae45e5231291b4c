//! The invariants, one named function each. `check_step` runs them all; each property test in
//! `tests/invariants.rs` runs one.

use std::collections::{BTreeMap, BTreeSet};

use bff_session_core::record::{self, Unsealed};
use bff_session_core::{
    Command, Effect, Method, Outcome, Policy, RefreshCompletion, Refusal, Registry, Session, SessionId, SessionKey,
    Timestamp, csrf,
};

use super::driver::Step;

/// What earlier steps established, for invariants that span steps.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Sessions seen ended or deleted: they must never authenticate again.
    pub ended: BTreeSet<SessionKey>,
    /// Refresh tokens replaced by a rotation.
    pub rotated_out: BTreeSet<String>,
    /// The last ticket issued per session: generation and lease expiry, until completed.
    pub live_ticket: BTreeMap<SessionKey, (u64, Timestamp)>,
    /// Absolute deadline of every session ever created.
    pub absolute: BTreeMap<SessionKey, Timestamp>,
}

fn records(r: &Registry) -> BTreeMap<SessionKey, &Session> {
    r.iter().map(|s| (s.key(), s)).collect()
}

/// Whether a session is usable at `now`, by plain millisecond arithmetic on its public fields: active, and
/// before its absolute deadline, its idle deadline and its refresh token's expiry. Deliberately not core's
/// `expired_at`, so a wrong deadline rule in core cannot agree with itself here.
fn live_by_arithmetic(s: &Session, now: Timestamp, policy: &Policy) -> bool {
    let now = now.as_millis();
    let before = |deadline: u64| now < deadline;
    let idle = policy.idle_timeout.map(|i| s.last_used_at().as_millis().saturating_add(i.as_millis() as u64));
    let refresh = s.tokens().and_then(|t| t.refresh_expires_at).map(Timestamp::as_millis);
    s.is_active() && before(s.absolute_deadline().as_millis()) && idle.is_none_or(before) && refresh.is_none_or(before)
}

fn cookie_key(step: &Step) -> Option<SessionKey> {
    match &step.command {
        Command::Authenticate { cookie: Some(c), .. } => SessionId::decode(c).ok().map(|id| id.key()),
        _ => None,
    }
}

/// No resurrection: a session once expired, revoked or deleted never authenticates again, whatever comes
/// later.
pub fn no_resurrection(h: &mut History, step: &Step, after: &Registry) {
    if let (Outcome::Authenticated(Ok(a)), Some(key)) = (&step.transition.outcome, cookie_key(step)) {
        assert_eq!(a.key, key);
        assert!(!h.ended.contains(&key), "ended session {key} authenticated again");
    }
    for s in after.iter().filter(|s| !s.is_active()) {
        h.ended.insert(s.key());
    }
    for s in step.before.iter() {
        if after.get(&s.key()).is_none() {
            h.ended.insert(s.key());
        }
    }
}

/// Authentication succeeds exactly when the session exists, is active and is within both deadlines (for a
/// request whose cookie and CSRF proof are in order).
pub fn authenticates_exactly_live_sessions(step: &Step, after: &Registry) {
    let Outcome::Authenticated(outcome) = &step.transition.outcome else { return };
    if matches!(outcome, Err(Refusal::NoCookie | Refusal::Malformed(_) | Refusal::Csrf(_))) {
        return;
    }
    let Some(key) = cookie_key(step) else { return };
    let live = step.before.get(&key).is_some_and(|s| live_by_arithmetic(s, step.now, step.before.policy()));
    assert_eq!(outcome.is_ok(), live, "authenticate {key}: {outcome:?}");
    if outcome.is_ok() {
        assert!(after.get(&key).is_some_and(Session::is_active));
    }
}

/// At most one live refresh ticket per session, and only that ticket's completion counts: every completion
/// of any other ticket on a live session is refused as stale and changes nothing.
pub fn single_flight(h: &mut History, step: &Step, after: &Registry) {
    match (&step.command, &step.transition.outcome) {
        (Command::BeginRefresh { key, .. }, Outcome::RefreshBegun(Ok(ticket))) => {
            if let Some(&(generation, until)) = h.live_ticket.get(key) {
                assert!(step.now >= until, "ticket {} issued while ticket {generation} was live", ticket.generation);
            }
            h.live_ticket.insert(*key, (ticket.generation, ticket.lease_expires_at));
        }
        (Command::RenewLease { ticket }, Outcome::LeaseRenewed(Ok(until))) => {
            h.live_ticket.insert(ticket.key, (ticket.generation, *until));
        }
        (Command::CompleteRefresh { ticket, .. }, Outcome::RefreshCompleted(completion)) => {
            let before = step.before.get(&ticket.key);
            let live = before.is_some_and(|s| live_by_arithmetic(s, step.now, step.before.policy()));
            let current = before.and_then(|s| s.refresh_state().lease()).map(|l| l.generation);
            if live && current != Some(ticket.generation) {
                assert_eq!(*completion, RefreshCompletion::Stale, "generation {} is not current", ticket.generation);
            }
            if *completion == RefreshCompletion::Stale {
                assert_eq!(&step.before, after, "stale completion of generation {} changed state", ticket.generation);
                assert!(step.transition.effects.is_empty(), "stale completion had effects");
            } else {
                h.live_ticket.remove(&ticket.key);
            }
        }
        _ => {}
    }
}

/// A foreign or forged CSRF proof is always refused: an unsafe request whose proof is not the one derived
/// from its own cookie's session ID never gets past the CSRF check, and changes nothing.
pub fn forged_csrf_is_refused(step: &Step, after: &Registry) {
    let Command::Authenticate { cookie: Some(cookie), method: Method::Unsafe, csrf_proof } = &step.command else {
        return;
    };
    let Ok(id) = SessionId::decode(cookie) else { return };
    if csrf_proof.as_deref() == Some(csrf::proof_for(&id).as_str()) {
        return;
    }
    assert!(
        matches!(step.transition.outcome, Outcome::Authenticated(Err(Refusal::Csrf(_)))),
        "a proof that is not the session's own was accepted: {:?}",
        step.transition.outcome
    );
    assert_eq!(&step.before, after);
}

/// A rotated-out refresh token is never handed out again.
pub fn rotated_tokens_stay_retired(h: &mut History, step: &Step, after: &Registry) {
    if let Outcome::RefreshBegun(Ok(ticket)) = &step.transition.outcome {
        assert!(!h.rotated_out.contains(ticket.refresh_token.expose()), "ticket carries a rotated-out token");
    }
    for s in step.before.iter() {
        let old = s.tokens().and_then(|t| t.refresh_token.as_ref());
        let new = after.get(&s.key()).and_then(|s| s.tokens()).and_then(|t| t.refresh_token.as_ref());
        if let (Some(old), Some(new)) = (old, new)
            && old != new
        {
            h.rotated_out.insert(old.expose().to_owned());
        }
    }
}

/// No refresh begins for a session that is not active.
pub fn no_refresh_for_ended_sessions(step: &Step) {
    if let (Command::BeginRefresh { key, .. }, Outcome::RefreshBegun(Ok(_))) = (&step.command, &step.transition.outcome)
    {
        let s = step.before.get(key);
        assert!(s.is_some_and(|s| live_by_arithmetic(s, step.now, step.before.policy())));
    }
}

/// Touches are bounded: last use moves only forwards, and by at least the touch interval.
pub fn touches_are_bounded(step: &Step, after: &Registry) {
    let interval = step.before.policy().touch_interval;
    for s in step.before.iter() {
        if let Some(a) = after.get(&s.key())
            && a.last_used_at() != s.last_used_at()
        {
            assert!(a.last_used_at() >= s.last_used_at().saturating_add(interval), "touch within the interval");
        }
    }
}

/// Revoke-all ends exactly that user's sessions: none of theirs stays usable, no one else's changes.
pub fn revoke_all_ends_exactly_that_user(step: &Step, after: &Registry) {
    let Command::RevokeUser { user, .. } = &step.command else { return };
    for s in step.before.iter() {
        let a = after.get(&s.key());
        if s.user() == user {
            assert!(a.is_none_or(|a| !a.is_active()), "a session of {user} survived revoke-all");
        } else {
            assert_eq!(Some(s), a, "revoke-all of {user} changed another user's session");
        }
    }
}

/// No command extends (or otherwise moves) a session's absolute deadline.
pub fn absolute_deadline_is_fixed(h: &mut History, after: &Registry) {
    for s in after.iter() {
        let first = *h.absolute.entry(s.key()).or_insert(s.absolute_deadline());
        assert_eq!(first, s.absolute_deadline(), "absolute deadline of {} moved", s.key());
    }
}

/// A refused CSRF check has no effect: no state change, no effect, no touch, no refresh.
pub fn refused_csrf_has_no_effect(step: &Step, after: &Registry) {
    if let Outcome::Authenticated(Err(Refusal::Csrf(_))) = step.transition.outcome {
        assert_eq!(&step.before, after);
        assert!(step.transition.effects.is_empty());
    }
}

/// Every change to a record is announced by a `Persist` at its new version, every removal by a `Delete`.
pub fn changes_are_persisted(step: &Step, after: &Registry) {
    let (before, after) = (records(&step.before), records(after));
    for (key, a) in &after {
        if before.get(key) != Some(a) {
            let persisted =
                step.transition.effects.iter().any(
                    |e| matches!(e, Effect::Persist { key: k, version, .. } if k == key && *version == a.version()),
                );
            assert!(persisted, "{key} changed without a Persist at version {}", a.version());
        }
    }
    for key in before.keys().filter(|k| !after.contains_key(k)) {
        assert!(step.transition.effects.contains(&Effect::Delete { key: *key }), "{key} removed without Delete");
    }
}

/// Persisted records round-trip through the stored encoding.
pub fn records_round_trip(after: &Registry) {
    for s in after.iter() {
        let bytes = record::encode(s, &Unsealed);
        assert_eq!(record::decode(&bytes, &Unsealed).as_ref(), Ok(s));
    }
}

/// Every invariant, for the model-driven state machine test.
pub fn check_step(h: &mut History, step: &Step, after: &Registry) {
    no_resurrection(h, step, after);
    authenticates_exactly_live_sessions(step, after);
    single_flight(h, step, after);
    rotated_tokens_stay_retired(h, step, after);
    no_refresh_for_ended_sessions(step);
    touches_are_bounded(step, after);
    revoke_all_ends_exactly_that_user(step, after);
    absolute_deadline_is_fixed(h, after);
    refused_csrf_has_no_effect(step, after);
    forged_csrf_is_refused(step, after);
    changes_are_persisted(step, after);
    records_round_trip(after);
}
