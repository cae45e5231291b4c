//! The committed JSON schema of the audit trail names exactly what core writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bff_session_core::audit::{Event, Header, RefreshError};
use bff_session_core::{ExpiryReason, Policy, RevocationReason};
use serde_json::Value;

fn schema() -> Value {
    serde_json::from_str(include_str!("../audit-trail.schema.json")).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

#[test]
fn every_event_core_writes_is_in_the_schema_and_no_other() {
    let s = schema();
    let transition = &s["oneOf"][1];
    let events = strings(&transition["properties"]["event"]["enum"]);
    let written = [
        Event::Created { access_expires_at: Some(1), refresh_token: true },
        Event::Touched,
        Event::RefreshStarted,
        Event::LeaseRenewed,
        Event::RefreshSucceeded { access_expires_at: 1 },
        Event::RefreshFailed { error: RefreshError::Transient },
        Event::Expired { reason: ExpiryReason::Idle },
        Event::Revoked { reason: RevocationReason::Logout },
    ];
    let names: Vec<String> =
        written.iter().map(|e| serde_json::to_value(e).unwrap()["event"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, events);
    let revoked = &transition["allOf"][4]["then"]["properties"]["reason"]["enum"];
    let reasons = [
        RevocationReason::Logout,
        RevocationReason::LogoutEverywhere,
        RevocationReason::RevokedFromDevice,
        RevocationReason::RefreshRejected,
        RevocationReason::BackchannelLogout,
        RevocationReason::Superseded,
        RevocationReason::Admin,
        RevocationReason::SessionLimit,
    ];
    assert_eq!(strings(revoked), reasons.map(|r| r.as_str().to_owned()).to_vec());
    let expired = &transition["allOf"][3]["then"]["properties"]["reason"]["enum"];
    let reasons = [ExpiryReason::Absolute, ExpiryReason::Idle, ExpiryReason::RefreshToken];
    assert_eq!(strings(expired), reasons.map(|r| r.as_str().to_owned()).to_vec());
}

#[test]
fn the_start_line_has_every_policy_field() {
    let s = schema();
    let required = strings(&s["oneOf"][0]["properties"]["policy"]["required"]);
    let header = serde_json::to_value(Header::new(&Policy::hardened())).unwrap();
    let mut written: Vec<String> = header["policy"].as_object().unwrap().keys().cloned().collect();
    let mut required_sorted = required.clone();
    written.sort();
    required_sorted.sort();
    assert_eq!(written, required_sorted);
}
