//! Hand-written scenarios: boundaries the generators rarely hit exactly, and behaviours worth reading as a
//! story (supersede on login, a refresh that lands after logout, back-off).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bff_session_core::csrf::CsrfError;
use bff_session_core::lifecycle::{self, Refusal};
use bff_session_core::record::{self, DecodeError, SealError, Unsealed};
use bff_session_core::{
    CreateError, Device, Effect, ExpiryReason, Login, Method, NewSession, OidcIdentity, Policy, RefreshCompletion,
    RefreshRefusal, RefreshResult, Registry, RevocationReason, Secret, SessionId, SessionIdError, Timestamp,
    TokenGrant, Trigger, UserId,
};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);
const MIN: Duration = Duration::from_secs(60);

fn at(d: Duration) -> Timestamp {
    T0.saturating_add(d)
}

fn id(n: u8) -> SessionId {
    SessionId::from_random_bytes([n; 32])
}

fn grant(expires_in: Option<Duration>, refresh: Option<&str>) -> TokenGrant {
    TokenGrant {
        access_token: Secret::new("at"),
        expires_in,
        refresh_token: refresh.map(Secret::new),
        refresh_expires_in: None,
        id_token: None,
    }
}

fn oidc(n: u8, expires_in: Option<Duration>) -> NewSession {
    NewSession {
        id: id(n),
        user: UserId::new("alice"),
        login: Login::Oidc {
            identity: OidcIdentity {
                iss: "https://idp".into(),
                sub: "alice".into(),
                sid: Some("s1".into()),
                name: None,
                email: None,
            },
            grant: grant(expires_in, Some("rt-1")),
        },
        device: Device::default(),
    }
}

fn registry() -> Registry {
    Registry::new(Policy::hardened()).unwrap()
}

#[test]
fn errors_say_what_is_wrong() {
    assert_eq!(CsrfError::Missing.to_string(), "unsafe request without a CSRF proof");
    assert_eq!(CsrfError::Mismatch.to_string(), "CSRF proof does not belong to this session");
    assert_eq!(Refusal::Expired(ExpiryReason::Idle).to_string(), "session expired (idle)");
    assert_eq!(Refusal::Revoked(RevocationReason::Logout).to_string(), "session revoked (logout)");
    assert_eq!(Refusal::Unknown.to_string(), "unknown session");
    assert_eq!(Refusal::NoCookie.to_string(), "no session cookie");
    assert_eq!(
        Refusal::Malformed(SessionIdError::Encoding).to_string(),
        "malformed session cookie: session id is not canonical unpadded base64url"
    );
    assert_eq!(Refusal::Csrf(CsrfError::Missing).to_string(), "unsafe request without a CSRF proof");
    assert_eq!(CreateError::DuplicateId.to_string(), "a session with this id already exists");
    assert_eq!(RefreshRefusal::NotDue.to_string(), "access token is not due for refresh");
    assert_eq!(SealError.to_string(), "sealed tokens do not open with this key");
}

#[test]
fn refusal_codes_are_stable() {
    let codes: Vec<&str> = [
        Refusal::NoCookie,
        Refusal::Malformed(SessionIdError::Encoding),
        Refusal::Csrf(CsrfError::Missing),
        Refusal::Csrf(CsrfError::Mismatch),
        Refusal::Unknown,
        Refusal::Expired(ExpiryReason::Absolute),
        Refusal::Revoked(RevocationReason::Admin),
    ]
    .iter()
    .map(|r| r.code())
    .collect();
    assert_eq!(
        codes,
        [
            "no_session",
            "malformed_session",
            "csrf_missing",
            "csrf_mismatch",
            "unknown_session",
            "session_expired",
            "session_revoked"
        ]
    );
}

#[test]
fn only_get_head_options_and_trace_are_safe() {
    for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
        assert_eq!(Method::classify(m), Method::Safe, "{m}");
    }
    for m in ["POST", "PUT", "PATCH", "DELETE", "get", "PROPFIND", ""] {
        assert_eq!(Method::classify(m), Method::Unsafe, "{m}");
    }
}

#[test]
fn a_refresh_is_due_from_the_margin_exactly() {
    let mut r = registry();
    let key = r.create(&oidc(1, Some(10 * MIN)), None, T0).outcome.unwrap();
    // Due from expiry - margin (1 min) - skew (30 s) = 8.5 minutes.
    let due = at(10 * MIN - MIN - Duration::from_secs(30));
    let before = due.saturating_sub(Duration::from_millis(1));
    assert_eq!(r.begin_refresh(key, Trigger::Request, before).outcome, Err(RefreshRefusal::NotDue));
    assert!(r.begin_refresh(key, Trigger::Request, due).outcome.is_ok());
}

#[test]
fn back_off_ends_exactly_at_its_deadline() {
    let mut r = registry();
    let key = r.create(&oidc(1, Some(MIN)), None, T0).outcome.unwrap();
    let t1 = at(MIN);
    let ticket = r.begin_refresh(key, Trigger::Request, t1).outcome.unwrap();
    let until = t1.saturating_add(Duration::from_secs(1));
    assert_eq!(
        r.complete_refresh(&ticket, RefreshResult::Transient, t1).outcome,
        RefreshCompletion::BackingOff { until }
    );
    let early = until.saturating_sub(Duration::from_millis(1));
    assert_eq!(r.begin_refresh(key, Trigger::Request, early).outcome, Err(RefreshRefusal::BackingOff { until }));
    let second = r.begin_refresh(key, Trigger::Request, until).outcome.unwrap();
    // The second consecutive failure doubles the wait.
    let until2 = until.saturating_add(Duration::from_secs(2));
    assert_eq!(
        r.complete_refresh(&second, RefreshResult::Transient, until).outcome,
        RefreshCompletion::BackingOff { until: until2 }
    );
}

#[test]
fn a_missing_expires_in_assumes_the_policy_lifetime_instead_of_refreshing_every_request() {
    let mut r = registry();
    let key = r.create(&oidc(1, None), None, T0).outcome.unwrap();
    let tokens = r.get(&key).unwrap().tokens().unwrap();
    assert_eq!(tokens.access_expires_at, at(Policy::hardened().assumed_token_lifetime));
    let auth = r.authenticate_id(&id(1), at(Duration::from_secs(1))).outcome.unwrap();
    assert!(!auth.refresh_due);
}

#[test]
fn a_grant_without_a_new_refresh_token_keeps_the_old_one() {
    let mut r = registry();
    let key = r.create(&oidc(1, Some(MIN)), None, T0).outcome.unwrap();
    let ticket = r.begin_refresh(key, Trigger::Request, at(MIN)).outcome.unwrap();
    let done = r.complete_refresh(&ticket, RefreshResult::Success(grant(Some(10 * MIN), None)), at(MIN));
    assert_eq!(done.outcome, RefreshCompletion::Refreshed { access_expires_at: at(11 * MIN) });
    let rt = r.get(&key).unwrap().tokens().unwrap().refresh_token.clone();
    assert_eq!(rt, Some(Secret::new("rt-1")));
}

#[test]
fn a_refresh_landing_after_logout_is_discarded_and_its_new_token_revoked() {
    let mut r = registry();
    let key = r.create(&oidc(1, Some(MIN)), None, T0).outcome.unwrap();
    let ticket = r.begin_refresh(key, Trigger::Request, at(MIN)).outcome.unwrap();
    let logout = r.revoke(key, RevocationReason::Logout, at(MIN));
    assert!(logout.effects.contains(&Effect::RevokeAtProvider { token: Secret::new("rt-1") }));
    assert!(logout.effects.contains(&Effect::ClearCookies));
    let late = r.complete_refresh(&ticket, RefreshResult::Success(grant(Some(MIN), Some("rt-2"))), at(MIN));
    assert_eq!(late.outcome, RefreshCompletion::Discarded);
    assert_eq!(late.effects, [Effect::RevokeAtProvider { token: Secret::new("rt-2") }]);
    assert_eq!(r.authenticate_id(&id(1), at(MIN)).outcome, Err(Refusal::Revoked(RevocationReason::Logout)));
}

#[test]
fn a_lapsed_lease_lets_a_new_ticket_fence_out_the_old_one() {
    let mut r = registry();
    let key = r.create(&oidc(1, Some(MIN)), None, T0).outcome.unwrap();
    let first = r.begin_refresh(key, Trigger::Request, at(MIN)).outcome.unwrap();
    let lapse = first.lease_expires_at;
    let second = r.begin_refresh(key, Trigger::Request, lapse).outcome.unwrap();
    assert_eq!(second.generation, first.generation + 1);
    let stale = r.complete_refresh(&first, RefreshResult::Success(grant(Some(MIN), Some("rt-x"))), lapse);
    assert_eq!((stale.outcome, stale.effects.len()), (RefreshCompletion::Stale, 0));
    assert!(matches!(
        r.complete_refresh(&second, RefreshResult::InvalidGrant, lapse).outcome,
        RefreshCompletion::Revoked
    ));
}

#[test]
fn signing_in_again_supersedes_the_session_the_browser_presented() {
    let mut r = registry();
    let old = r.create(&oidc(1, Some(MIN)), None, T0).outcome.unwrap();
    let new = r.create(&oidc(2, Some(MIN)), Some(old), at(MIN)).outcome.unwrap();
    assert_eq!(r.authenticate_id(&id(1), at(MIN)).outcome, Err(Refusal::Revoked(RevocationReason::Superseded)));
    assert!(r.authenticate_id(&id(2), at(MIN)).outcome.is_ok());
    assert_eq!(r.sessions_of(&UserId::new("alice")).iter().map(|s| s.key()).collect::<Vec<_>>(), [new]);
    assert_eq!(r.create(&oidc(2, None), None, at(MIN)).outcome, Err(CreateError::DuplicateId));
}

#[test]
fn expiring_twice_reports_only_the_first_time() {
    let policy = Policy::hardened();
    let mut session = lifecycle::create(&oidc(1, Some(MIN)), T0, &policy).outcome;
    let late = at(policy.absolute_lifetime);
    let first = lifecycle::expire_if_due(Some(&mut session), late, &policy);
    assert_eq!(first.outcome, Some(ExpiryReason::Idle));
    assert!(!first.effects.is_empty());
    let again = lifecycle::expire_if_due(Some(&mut session), late, &policy);
    assert_eq!((again.outcome, again.effects.len()), (None, 0));
}

#[test]
fn the_registry_counts_records_and_knows_its_next_wakeup() {
    let mut r = registry();
    assert!(r.is_empty());
    assert_eq!(r.next_wakeup(), None);
    let key = r.create(&oidc(1, Some(10 * MIN)), None, T0).outcome.unwrap();
    assert_eq!((r.len(), r.is_empty()), (1, false));
    // The background window (2 min) and skew (30 s) before a 10-minute token's expiry.
    assert_eq!(r.next_wakeup(), Some(at(10 * MIN - 2 * MIN - Duration::from_secs(30))));
    assert_eq!(r.iter().map(|s| s.key()).collect::<Vec<_>>(), [key]);
    let record = r.get(&key).unwrap().clone();
    let mut fresh = registry();
    fresh.restore(record);
    assert_eq!(fresh, r);
    assert_eq!(fresh.tick(at(8 * MIN)).outcome.refresh_due, [key]);
    let _ = fresh.create(&oidc(2, None), None, T0);
    assert_eq!(fresh.len(), 2);
}

#[test]
fn tick_expires_deletes_and_reports_only_what_is_due() {
    let mut r = registry();
    let key = r.create(&oidc(1, Some(10 * MIN)), None, T0).outcome.unwrap();
    assert_eq!(r.tick(at(MIN)).outcome, Default::default());
    let idle = at(Policy::hardened().idle_timeout.unwrap());
    let t = r.tick(idle);
    assert_eq!(t.outcome.expired, [(key, ExpiryReason::Idle)]);
    assert!(t.effects.contains(&Effect::RevokeAtProvider { token: Secret::new("rt-1") }));
    let gone = r.tick(idle.saturating_add(Policy::hardened().tombstone_retention));
    assert_eq!(gone.outcome.deleted, [key]);
    assert_eq!(gone.effects, [Effect::Delete { key }]);
    assert!(r.is_empty());
}

#[test]
fn sealed_tokens_do_not_open_under_another_record() {
    let policy = Policy::hardened();
    let a = lifecycle::create(&oidc(1, Some(MIN)), T0, &policy).outcome;
    let b = lifecycle::create(&oidc(2, Some(MIN)), T0, &policy).outcome;
    let bytes_a = record::encode(&a, &Unsealed);
    let bytes_b = record::encode(&b, &Unsealed);
    assert_eq!(record::decode(&bytes_a, &Unsealed).as_ref(), Ok(&a));
    // Graft a's body onto b's key: the sealed tokens are bound to a's key and refuse to open.
    let (ka, kb) = (a.key(), b.key());
    let mut forged = bytes_a.clone();
    let pos = forged.windows(32).position(|w| w == ka.as_bytes()).unwrap();
    forged[pos..pos + 32].copy_from_slice(kb.as_bytes());
    assert_eq!(record::decode(&forged, &Unsealed), Err(DecodeError::Seal(SealError)));
    assert_ne!(bytes_a, bytes_b);
}

/// A slow provider call keeps its lease by renewing it; a lapsed or superseded ticket cannot renew, so it can
/// never stretch a lease another ticket now holds.
#[test]
fn a_lease_is_renewed_only_by_its_live_ticket() {
    let mut r = registry();
    let s = oidc(1, Some(Duration::from_secs(600)));
    let key = r.create(&s, None, at(Duration::ZERO)).outcome.unwrap();
    let t0 = at(Duration::from_secs(590));
    let ticket = r.begin_refresh(key, Trigger::Request, t0).outcome.unwrap();
    let lease = r.policy().refresh_lease;
    let renewed = r.renew_lease(&ticket, t0.saturating_add(lease / 2)).outcome.unwrap();
    assert_eq!(renewed, t0.saturating_add(lease / 2).saturating_add(lease));
    // While renewed, nobody else gets a ticket, even after the first lease would have lapsed.
    let later = t0.saturating_add(lease + Duration::from_secs(1));
    assert!(matches!(r.begin_refresh(key, Trigger::Request, later).outcome, Err(RefreshRefusal::InFlight { .. })));
    // Once it lapses, another ticket is issued and the old one can renew nothing.
    let lapsed = renewed.saturating_add(Duration::from_secs(1));
    let second = r.begin_refresh(key, Trigger::Request, lapsed).outcome.unwrap();
    assert_eq!(r.renew_lease(&ticket, lapsed).outcome, Err(RefreshRefusal::NotDue));
    assert!(r.renew_lease(&second, lapsed).outcome.is_ok());
}
