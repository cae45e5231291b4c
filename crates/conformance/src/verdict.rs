//! A verdict per invariant for one target: judging a marked step, and running an invariant's sequences.
//!
//! Owns what a check compares (the meaning of an answer, not its exact code, where targets legitimately
//! differ), running each applicable invariant's generated sequences against the target, and shrinking the
//! first violation of each. It never decides what is correct (the oracle does) and never renders (that is
//! [`crate::report`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bff_session_dev_idp::DevIdp;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde::{Deserialize, Serialize};

use crate::invariant::{Invariant, Scenario};
use crate::oracle::{Observation, Status};
use crate::profile::{ClockMode, Profile, Unauthenticated};
use crate::run::{Checked, Harness};
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

/// A verdict on one invariant for one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Holds,
    Violated,
    NotApplicable,
    /// Every sequence was inconclusive: the target could not be driven through it.
    Inconclusive,
}

/// The shrunk sequence that violates an invariant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reproducer {
    pub steps: Vec<Step>,
    /// 0-based index of the judged step that failed.
    pub index: usize,
    pub expected: String,
    pub observed: String,
    /// Executions spent shrinking.
    pub shrink_runs: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verdict {
    pub invariant: Invariant,
    pub outcome: Outcome,
    /// Generated sequences that reached every check (held or violated).
    pub exercised: u32,
    /// Of those, the sequences that violated it.
    pub violations: u32,
    pub inconclusive: u32,
    /// Why it does not apply, or why it was inconclusive.
    pub reason: Option<String>,
    pub reproducer: Option<Reproducer>,
}

/// How hard to try.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    pub sequences: u32,
    /// Executions of candidate sequences while shrinking one violation.
    pub shrink_runs: u32,
    /// Sequences in flight at once (1 on a test clock: the clock is shared).
    pub parallel: usize,
    pub seed: u64,
}

impl Effort {
    /// A wall-clock target runs its sequences side by side and shrinks briefly; a test clock runs more,
    /// one at a time.
    pub fn for_clock(clock: ClockMode, seed: u64) -> Self {
        match clock {
            ClockMode::Wall => Self { sequences: 6, shrink_runs: 6, parallel: 33, seed },
            ClockMode::Test => Self { sequences: 30, shrink_runs: 64, parallel: 1, seed },
        }
    }
}

struct Pending {
    invariant: Invariant,
    tree: Box<dyn ValueTree<Value = Scenario>>,
}

/// Runs every invariant's sequences against the harness's target and returns one verdict per invariant.
pub async fn evaluate(harness: Arc<Harness>, effort: Effort) -> Vec<Verdict> {
    let profile = harness.options.profile.clone();
    let policy = harness.options.policy.clone();
    let mut verdicts = Vec::new();
    let mut pending = Vec::new();
    for (n, invariant) in Invariant::ALL.into_iter().enumerate() {
        let verdict = Verdict {
            invariant,
            outcome: Outcome::Holds,
            exercised: 0,
            violations: 0,
            inconclusive: 0,
            reason: invariant.not_applicable(&profile, &policy),
            reproducer: None,
        };
        if verdict.reason.is_some() {
            verdicts.push(Verdict { outcome: Outcome::NotApplicable, ..verdict });
            continue;
        }
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&effort.seed.to_le_bytes());
        seed[8] = n as u8;
        let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        let strategy = invariant.scenarios(&profile, &policy);
        for _ in 0..effort.sequences {
            match strategy.new_tree(&mut runner) {
                Ok(tree) => pending.push(Pending { invariant, tree }),
                Err(e) => note_generation_failure(&mut verdicts, invariant, &e.to_string()),
            }
        }
        verdicts.push(verdict);
    }
    let scenarios: Vec<Scenario> = pending.iter().map(|p| p.tree.current()).collect();
    let results = run_all(&harness, scenarios, effort.parallel).await;

    // The first violating tree of each invariant is shrunk; the others only count.
    let mut shrinking: Vec<(Pending, crate::run::Divergence)> = Vec::new();
    for (p, result) in pending.into_iter().zip(results) {
        let Some(v) = verdicts.iter_mut().find(|v| v.invariant == p.invariant) else { continue };
        match result {
            Checked::Held => v.exercised += 1,
            Checked::Violated(d) => {
                v.exercised += 1;
                v.violations += 1;
                if v.outcome != Outcome::Violated {
                    v.outcome = Outcome::Violated;
                    shrinking.push((p, d));
                }
            }
            Checked::Inconclusive(e) => {
                v.inconclusive += 1;
                v.reason.get_or_insert(e);
            }
        }
    }
    for v in verdicts.iter_mut().filter(|v| v.outcome == Outcome::Holds && v.exercised == 0) {
        v.outcome = Outcome::Inconclusive;
    }
    for (invariant, reproducer) in shrink_all(&harness, shrinking, effort).await {
        if let Some(v) = verdicts.iter_mut().find(|v| v.invariant == invariant) {
            v.reproducer = Some(reproducer);
        }
    }
    verdicts
}

fn note_generation_failure(verdicts: &mut [Verdict], invariant: Invariant, reason: &str) {
    if let Some(v) = verdicts.iter_mut().find(|v| v.invariant == invariant) {
        v.reason.get_or_insert_with(|| format!("cannot generate: {reason}"));
    }
}

/// Executes `scenarios`, at most `parallel` at a time; results in the same order.
async fn run_all(harness: &Arc<Harness>, scenarios: Vec<Scenario>, parallel: usize) -> Vec<Checked> {
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let n = scenarios.len();
    for (i, scenario) in scenarios.into_iter().enumerate() {
        let harness = harness.clone();
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            (i, harness.execute_checked(&scenario).await)
        });
    }
    let mut results: Vec<Option<Checked>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        // A panicked task leaves its slot empty; it is reported as inconclusive below.
        if let Ok((i, checked)) = joined {
            results[i] = Some(checked);
        }
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Checked::Inconclusive("the execution panicked".into()))).collect()
}

/// Shrinks every violation side by side: each round executes one candidate per invariant still shrinking.
async fn shrink_all(
    harness: &Arc<Harness>,
    violations: Vec<(Pending, crate::run::Divergence)>,
    effort: Effort,
) -> Vec<(Invariant, Reproducer)> {
    struct Shrink {
        pending: Pending,
        best: Scenario,
        divergence: crate::run::Divergence,
        runs: u32,
        /// Whether the current candidate came from `simplify` (else `complicate`).
        done: bool,
    }
    let mut all: Vec<Shrink> = violations
        .into_iter()
        .map(|(pending, divergence)| {
            let best = pending.tree.current();
            Shrink { pending, best, divergence, runs: 0, done: false }
        })
        .collect();
    for s in &mut all {
        s.done = !s.pending.tree.simplify();
    }
    loop {
        let active: Vec<usize> = (0..all.len()).filter(|&i| !all[i].done && all[i].runs < effort.shrink_runs).collect();
        if active.is_empty() {
            break;
        }
        let candidates: Vec<Scenario> = active.iter().map(|&i| all[i].pending.tree.current()).collect();
        let results = run_all(harness, candidates.clone(), effort.parallel).await;
        for ((&i, candidate), result) in active.iter().zip(candidates).zip(results) {
            let s = &mut all[i];
            s.runs += 1;
            match result {
                Checked::Violated(d) => {
                    s.best = candidate;
                    s.divergence = d;
                    s.done = !s.pending.tree.simplify();
                }
                Checked::Held | Checked::Inconclusive(_) => s.done = !s.pending.tree.complicate(),
            }
        }
    }
    all.into_iter()
        .map(|s| {
            let reproducer = Reproducer {
                steps: s.best.steps,
                index: s.divergence.index,
                expected: s.divergence.expected,
                observed: s.divergence.observed,
                shrink_runs: s.runs,
            };
            (s.pending.invariant, reproducer)
        })
        .collect()
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
