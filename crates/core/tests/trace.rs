//! The trace checker: a conforming trail passes, and each kind of illegal transition is reported at its
//! line, with a message that says what went wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bff_session_core::Policy;
use bff_session_core::audit::{Header, PolicyMillis};
use bff_session_core::trace::{TraceError, Violation, check};

const T0: u64 = 1_700_000_000_000;
const MIN: u64 = 60_000;
/// The access tokens in these trails live ten minutes.
const TTL: u64 = 10 * MIN;

/// One event line at `T0 + minutes`.
fn ev(minutes: u64, session: &str, version: u64, event: &str) -> String {
    let ts = T0 + minutes * MIN;
    let body = match event {
        "created" => format!(r#""event":"created","access_expires_at":{},"refresh_token":true"#, ts + TTL),
        "refresh_succeeded" => format!(r#""event":"refresh_succeeded","access_expires_at":{}"#, ts + TTL),
        other if other.starts_with('"') => other.to_owned(),
        other => format!(r#""event":"{other}""#),
    };
    format!(r#"{{"ts":{ts},"session":"{session}","version":{version},{body}}}"#)
}

fn header() -> String {
    serde_json::to_string(&Header::new(&Policy::hardened())).unwrap()
}

fn trail(lines: &[String]) -> String {
    let mut text = header();
    for l in lines {
        text.push('\n');
        text.push_str(l);
    }
    text
}

/// The violation, which must exist.
fn violation(lines: &[String]) -> Violation {
    match check(&trail(lines), None) {
        Ok(Err(v)) => v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

const TRANSIENT: &str = r#""event":"refresh_failed","error":"transient""#;
const INVALID_GRANT: &str = r#""event":"refresh_failed","error":"invalid_grant""#;
const LOGOUT: &str = r#""event":"revoked","reason":"logout""#;
const IDLE: &str = r#""event":"expired","reason":"idle""#;
const ABSOLUTE: &str = r#""event":"expired","reason":"absolute""#;

/// A whole life: touches, a refresh, a transient failure and its retry after the back-off, a logout; and a
/// second session that idles out. Lines of one session may be out of order in the file.
#[test]
fn a_conforming_trail_conforms() {
    let lines = [
        ev(0, "a", 1, "created"),
        ev(0, "b", 1, "created"),
        ev(6, "a", 2, "touched"),
        ev(9, "a", 3, "refresh_started"),
        ev(9, "a", 4, "refresh_succeeded"),
        ev(18, "a", 5, "refresh_started"),
        ev(19, "a", 7, "refresh_started"),
        ev(18, "a", 6, TRANSIENT),
        ev(19, "a", 8, "refresh_succeeded"),
        ev(30, "a", 9, LOGOUT),
        ev(12 * 60 + 1, "b", 2, IDLE),
    ];
    let summary = check(&trail(&lines), None).unwrap().unwrap();
    assert_eq!((summary.events, summary.sessions), (11, 2));
}

#[test]
fn a_touch_before_the_touch_interval_is_reported() {
    let v = violation(&[ev(0, "a", 1, "created"), ev(1, "a", 2, "touched")]);
    assert_eq!(v.line, 3);
    assert!(v.message.contains("touch interval"), "{v}");
}

/// The session that comes back: any event after the end is illegal.
#[test]
fn a_write_after_logout_is_reported() {
    let v = violation(&[ev(0, "a", 1, "created"), ev(1, "a", 2, LOGOUT), ev(7, "a", 3, "touched")]);
    assert_eq!(v.line, 4);
    assert!(v.message.contains("revoked (logout)"), "{v}");
}

#[test]
fn a_refresh_before_it_is_due_is_reported() {
    let v = violation(&[ev(0, "a", 1, "created"), ev(2, "a", 2, "refresh_started")]);
    assert!(v.message.contains("not due"), "{v}");
}

/// Two refreshes for one expiry: the second starts while the first holds the lease.
#[test]
fn a_refresh_without_single_flight_is_reported() {
    let v = violation(&[ev(0, "a", 1, "created"), ev(9, "a", 2, "refresh_started"), ev(9, "a", 3, "refresh_started")]);
    assert_eq!(v.line, 4);
    assert!(v.message.contains("no single flight"), "{v}");
}

#[test]
fn a_refresh_result_without_a_refresh_is_reported() {
    let v = violation(&[ev(0, "a", 1, "created"), ev(9, "a", 2, "refresh_succeeded")]);
    assert!(v.message.contains("none was in flight"), "{v}");
}

/// The violation of a trail where the session ends while a refresh is in flight and `then` follows.
fn ended_mid_refresh(then: &str) -> Violation {
    violation(&[ev(0, "a", 1, "created"), ev(9, "a", 2, "refresh_started"), ev(9, "a", 3, LOGOUT), ev(9, "a", 4, then)])
}

#[test]
fn tokens_stored_after_the_session_ended_are_reported() {
    let v = ended_mid_refresh("refresh_succeeded");
    assert_eq!(v.line, 5);
    assert_eq!(v.message, "a refresh's result was stored after the session had ended");
}

/// A refresh in flight when the session ended cannot renew its lease afterwards.
#[test]
fn a_lease_renewed_after_the_session_ended_is_reported() {
    let v = ended_mid_refresh("lease_renewed");
    assert_eq!(v.message, "a lease was renewed, but the session had been revoked (logout)");
}

/// invalid_grant ends the session; a later use is illegal.
#[test]
fn a_session_that_outlives_invalid_grant_is_reported() {
    let v = violation(&[
        ev(0, "a", 1, "created"),
        ev(9, "a", 2, "refresh_started"),
        ev(9, "a", 3, INVALID_GRANT),
        ev(20, "a", 4, "touched"),
    ]);
    assert!(v.message.contains("refresh_rejected"), "{v}");
}

#[test]
fn a_retry_during_the_back_off_is_reported() {
    let v = violation(&[
        ev(0, "a", 1, "created"),
        ev(9, "a", 2, "refresh_started"),
        ev(9, "a", 3, TRANSIENT),
        ev(9, "a", 4, "refresh_started"),
    ]);
    assert!(v.message.contains("backing off"), "{v}");
}

#[test]
fn an_expiry_before_the_deadline_is_reported() {
    let v = violation(&[ev(0, "a", 1, "created"), ev(60, "a", 2, IDLE)]);
    assert!(v.message.contains("before its deadline"), "{v}");
}

#[test]
fn an_expiry_for_the_wrong_deadline_is_reported() {
    let v = violation(&[ev(0, "a", 1, "created"), ev(8 * 24 * 60, "a", 2, ABSOLUTE)]);
    assert!(v.message.contains("idle deadline came first"), "{v}");
}

/// Touched sessions stay alive past the idle timeout, but never past the absolute deadline: a use after it is
/// illegal, which is how a touch that extends the absolute deadline shows in a trail.
#[test]
fn a_use_after_the_absolute_deadline_is_reported() {
    let mut lines = vec![ev(0, "a", 1, "created")];
    for i in 1..=16u64 {
        lines.push(ev(i * 11 * 60, "a", i + 1, "touched"));
    }
    let v = violation(&lines);
    assert!(v.message.contains("expired (absolute)"), "{v}");
}

#[test]
fn a_missing_event_is_reported() {
    let v = violation(&[ev(0, "a", 1, "created"), ev(6, "a", 3, "touched")]);
    assert!(v.message.contains("jumps from 1 to 3"), "{v}");
    let v = violation(&[ev(6, "a", 2, "touched")]);
    assert!(v.message.contains("creation is missing"), "{v}");
    let v = violation(&[ev(0, "a", 1, "created"), ev(6, "a", 2, "touched"), ev(12, "a", 2, "touched")]);
    assert!(v.message.contains("two events claim version 2"), "{v}");
}

#[test]
fn the_first_violation_by_line_is_reported_across_sessions() {
    let v = violation(&[
        ev(0, "a", 1, "created"),
        ev(0, "b", 1, "created"),
        ev(1, "b", 2, "touched"),
        ev(2, "a", 2, "refresh_started"),
    ]);
    assert_eq!((v.line, v.session.as_str()), (4, "b"));
}

#[test]
fn unreadable_trails_are_errors_not_verdicts() {
    assert_eq!(
        check(&trail(&[ev(0, "a", 1, "created"), "{not json".into()]), None),
        Err(TraceError::Syntax { line: 3, error: "key must be a string at line 1 column 2".into() })
    );
    assert_eq!(check(&ev(0, "a", 1, "created"), None), Err(TraceError::NoPolicy));
    assert!(check(&ev(0, "a", 1, "created"), Some(Policy::hardened())).unwrap().is_ok());
    let other = serde_json::to_string(&Header::new(&Policy::helix())).unwrap();
    assert_eq!(check(&format!("{}\n{other}", header()), None), Err(TraceError::PolicyChanged { line: 2 }));
    let _ = PolicyMillis::from(&Policy::hardened());
}

/// A slow refresh renews its lease; a renewal after the lease lapsed is reported.
#[test]
fn lease_renewals_are_checked() {
    let ok = [
        ev(0, "a", 1, "created"),
        ev(9, "a", 2, "refresh_started"),
        // The lease is 30 s; minutes are too coarse, so renew at the same minute.
        ev(9, "a", 3, "lease_renewed"),
        ev(9, "a", 4, "refresh_succeeded"),
    ];
    assert!(check(&trail(&ok), None).unwrap().is_ok());
    let lapsed = [ev(0, "a", 1, "created"), ev(9, "a", 2, "refresh_started"), ev(10, "a", 3, "lease_renewed")];
    assert!(violation(&lapsed).message.contains("lapsed"));
}

/// A trail written across restarts repeats its header; the same policy again is no change.
#[test]
fn a_repeated_header_with_the_same_policy_is_accepted() {
    let text = format!("{}\n{}\n{}", trail(&[ev(0, "a", 1, "created")]), header(), ev(5, "a", 2, "touched"));
    assert_eq!(check(&text, None).map(|v| v.map(|s| (s.events, s.sessions))), Ok(Ok((2, 1))));
}

/// What a person reads: the line, the session and what went wrong; for an unreadable trail, why.
#[test]
fn verdicts_and_errors_read_as_sentences() {
    let v = violation(&[ev(0, "a", 1, "created"), ev(1, "a", 2, "touched")]);
    assert_eq!(v.to_string(), format!("line {}: session a: {}", v.line, v.message));
    assert!(!v.message.is_empty());
    let texts = [
        (TraceError::Syntax { line: 3, error: "eof".into() }, "line 3: not an audit line: eof"),
        (TraceError::NoPolicy, "the trail has no start line with the policy; name one"),
        (TraceError::PolicyChanged { line: 9 }, "line 9: the policy changed mid-trail; check each part separately"),
    ];
    for (error, text) in texts {
        assert_eq!(error.to_string(), text);
    }
    let invalid = Policy { refresh_lease: std::time::Duration::ZERO, ..Policy::hardened() }.validate().unwrap_err();
    assert_eq!(TraceError::InvalidPolicy(invalid.clone()).to_string(), format!("invalid policy: {invalid}"));
}
