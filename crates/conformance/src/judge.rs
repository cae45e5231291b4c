//! What a marked step is judged by: the meaning of an answer, refresh counts, revocation, cookie attributes.
//!
//! Owns the comparisons of [`crate::invariant::Check`]: answers are compared by what they mean to the front
//! end (served, signed out, refused, failed), not by their exact code, where targets legitimately differ, as
//! the target's profile says. It never predicts (the oracle does) and never runs a sequence.

use std::time::{Duration, Instant};

use bff_session_dev_idp::DevIdp;

use crate::oracle::{Observation, Status};
use crate::profile::{Profile, Unauthenticated};
use crate::step::Step;

/// What a response means to the front end, whatever code the target chose to say it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Meaning {
    /// The session is live and the request was served.
    Served,
    /// No live session: signed out.
    SignedOut,
    /// Refused for a CSRF failure.
    Refused,
    /// The target failed this request (5xx); the session may live on.
    Failed,
    /// A redirect that is not a sign-in (login's answer).
    Redirected,
    Other(u16),
}

impl Meaning {
    fn label(self) -> String {
        match self {
            Self::Served => "served (2xx)".to_owned(),
            Self::SignedOut => "signed out".to_owned(),
            Self::Refused => "refused (403)".to_owned(),
            Self::Failed => "failed (5xx)".to_owned(),
            Self::Redirected => "redirected".to_owned(),
            Self::Other(code) => format!("answered {code}"),
        }
    }
}

/// Where a step's answer comes from: the API or the session endpoint differ in how they say "signed out".
fn unauthenticated_by(step: &Step, profile: &Profile) -> Unauthenticated {
    match step {
        Step::Call { .. } | Step::Burst { .. } => profile.http.unauthenticated_api,
        _ => profile.http.unauthenticated_session,
    }
}

/// The oracle predicts in this repository's conventions: 401 is signed out, 503 a failure.
fn expected_meaning(status: Status) -> Meaning {
    match status {
        Status::Success => Meaning::Served,
        Status::Unauthorized => Meaning::SignedOut,
        Status::Forbidden => Meaning::Refused,
        Status::Unavailable => Meaning::Failed,
        Status::Redirect => Meaning::Redirected,
        Status::NotFound => Meaning::Other(404),
        Status::Other(code) if code >= 500 => Meaning::Failed,
        Status::Other(code) => Meaning::Other(code),
    }
}

/// What the target meant, by its profile's conventions.
fn observed_meaning(status: Status, unauthenticated: Unauthenticated) -> Meaning {
    match (status, unauthenticated) {
        (Status::Unauthorized, _)
        | (Status::Redirect, Unauthenticated::Redirect | Unauthenticated::Status401OrRedirect) => Meaning::SignedOut,
        (other, _) => expected_meaning(other),
    }
}

fn meanings(observation: &Observation, unauthenticated: Unauthenticated, expected: bool) -> Vec<Meaning> {
    let one =
        |status: Status| if expected { expected_meaning(status) } else { observed_meaning(status, unauthenticated) };
    match observation {
        Observation::Response { status, .. } | Observation::Listed { status, .. } | Observation::Answered(status) => {
            vec![one(*status)]
        }
        Observation::Burst(statuses) => {
            let mut all: Vec<Meaning> = statuses.iter().map(|s| one(*s)).collect();
            all.sort();
            all
        }
        Observation::Nothing => Vec::new(),
    }
}

/// `Check::Answer`: the answer means what the oracle's does. `Some((expected, observed))` when not.
pub fn judge_answer(
    step: &Step,
    expected: &Observation,
    observed: &Observation,
    profile: &Profile,
) -> Option<(String, String)> {
    let unauthenticated = unauthenticated_by(step, profile);
    let want = meanings(expected, unauthenticated, true);
    let got = meanings(observed, unauthenticated, false);
    let label = |m: &[Meaning]| m.iter().map(|m| m.label()).collect::<Vec<_>>().join(", ");
    (want != got).then(|| (format!("{} ({expected})", label(&want)), format!("{} ({observed})", label(&got))))
}

/// How long a target may take to revoke at the provider after answering the logout: this repository's
/// server revokes from a queue, after the answer.
const REVOCATION_GRACE: Duration = Duration::from_secs(5);

/// `Check::Revoked`: the grant of provider session `sid` stops working at the provider.
pub async fn judge_revoked(idp: &DevIdp, sid: &str) -> Option<(String, String)> {
    let deadline = Instant::now() + REVOCATION_GRACE;
    loop {
        if idp.grant_active(sid) != Some(true) {
            return None;
        }
        if Instant::now() >= deadline {
            return Some((
                "the refresh token revoked at the provider".to_owned(),
                format!("the refresh token still valid at the provider {} s after logout", REVOCATION_GRACE.as_secs()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `Check::CookieAttributes`: the session cookie is `HttpOnly`, `SameSite=Lax` or `Strict`, `Path=/`.
/// `Secure` and the `__Host-` prefix cannot be asked of a target served over plain HTTP on 127.0.0.1.
pub fn judge_cookie(set_cookie: Option<&str>) -> Option<(String, String)> {
    let expected = "HttpOnly; SameSite=Lax or Strict; Path=/".to_owned();
    let Some(header) = set_cookie else {
        return Some((expected, "no session cookie set".to_owned()));
    };
    let attributes: Vec<(String, String)> = header
        .split(';')
        .skip(1)
        .map(|a| {
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase())
        })
        .collect();
    let has = |k: &str| attributes.iter().any(|(key, _)| key == k);
    let value = |k: &str| attributes.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let ok = has("httponly") && matches!(value("samesite"), Some("lax" | "strict")) && value("path") == Some("/");
    (!ok).then(|| (expected, header.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::CookieChange;

    fn response(code: u16) -> Observation {
        Observation::Response { status: Status::of(code), cookie: CookieChange::Kept }
    }

    #[test]
    fn a_redirect_to_sign_in_means_signed_out_only_where_the_profile_says_so() {
        let mut profile = Profile::reference("default").unwrap();
        let call = Step::Call { device: 0, method: crate::step::CallMethod::Get, proof: crate::step::Proof::Right };
        assert!(judge_answer(&call, &response(401), &response(302), &profile).is_some());
        profile.http.unauthenticated_api = Unauthenticated::Redirect;
        assert_eq!(judge_answer(&call, &response(401), &response(302), &profile), None);
        let session = Step::Session { device: 0 };
        assert!(judge_answer(&session, &response(401), &response(302), &profile).is_some());
    }

    #[test]
    fn any_server_error_is_a_failure_and_a_live_answer_is_not_signed_out() {
        let profile = Profile::reference("default").unwrap();
        let call = Step::Call { device: 0, method: crate::step::CallMethod::Get, proof: crate::step::Proof::Right };
        assert_eq!(judge_answer(&call, &response(503), &response(500), &profile), None);
        let (expected, observed) = judge_answer(&call, &response(401), &response(200), &profile).unwrap();
        assert!(expected.starts_with("signed out") && observed.starts_with("served"), "{expected} / {observed}");
    }

    #[test]
    fn cookie_attributes_need_httponly_samesite_and_root_path() {
        assert_eq!(judge_cookie(Some("s=…; Path=/; HttpOnly; SameSite=Lax")), None);
        assert_eq!(judge_cookie(Some("s=…; path=/; httponly; samesite=strict; Secure")), None);
        assert!(judge_cookie(Some("s=…; Path=/; HttpOnly")).is_some());
        assert!(judge_cookie(Some("s=…; Path=/; SameSite=None; HttpOnly")).is_some());
        assert!(judge_cookie(Some("s=…; Path=/api; HttpOnly; SameSite=Lax")).is_some());
        assert!(judge_cookie(None).is_some());
    }
}
