//! Running generated sequences against a target, comparing with the oracle, and shrinking divergences.
//!
//! Owns the harness's loop: each sequence gets fresh users, fresh devices and a fresh stretch of the
//! target's (frozen) clock, so sequences never see each other's sessions; every step is performed, predicted
//! and compared, and so is the provider's refresh count. proptest generates the sequences and shrinks a
//! failing one. It never decides what is correct: that is [`Oracle`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bff_session_core::{Policy, Timestamp};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde::Serialize;

use crate::invariant::{Check, Scenario};
use crate::mapping::Mapping;
use crate::oracle::{Observation, Oracle};
use crate::profile::{ClockMode, Profile, TOLERANCE};
use crate::provider::{Provider, ProviderError};
use crate::step::{self, Step, USERS};
use crate::target::Target;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The target's origin, e.g. `http://127.0.0.1:8080`.
    pub target: String,
    /// The preset's name, for the replay command.
    pub policy_name: String,
    pub policy: Policy,
    pub mapping: Mapping,
    /// Access-token lifetime of the harness's provider.
    pub token_ttl: Duration,
    /// Where the provider listens.
    pub provider_listen: std::net::SocketAddr,
    pub sequences: u32,
    pub max_steps: usize,
    pub seed: u64,
    /// Where a reproducer is written.
    pub out_dir: PathBuf,
    /// What the target supports and how it speaks; its paths are `mapping`.
    pub profile: Profile,
}

impl Options {
    pub fn new(target: &str, policy_name: &str) -> Option<Self> {
        Some(Self {
            target: target.trim_end_matches('/').to_owned(),
            policy_name: policy_name.to_owned(),
            policy: Policy::preset(policy_name)?,
            mapping: Mapping::default(),
            token_ttl: Duration::from_secs(600),
            provider_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            sequences: 200,
            max_steps: 24,
            seed: 0,
            out_dir: PathBuf::from("target/conformance"),
            profile: Profile::reference(policy_name).ok()?,
        })
    }

    /// Options for a target described by `profile`.
    pub fn from_profile(target: &str, profile: Profile) -> Result<Self, crate::profile::ProfileError> {
        Ok(Self {
            target: target.trim_end_matches('/').to_owned(),
            policy_name: profile.policy.preset.clone(),
            policy: profile.policy()?,
            mapping: profile.mapping.clone(),
            token_ttl: profile.token_ttl(),
            provider_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            sequences: 200,
            max_steps: 24,
            seed: 0,
            out_dir: PathBuf::from("target/conformance"),
            profile,
        })
    }
}

/// What one invariant-checking execution found.
#[derive(Clone, Debug)]
pub enum Checked {
    /// Every check held.
    Held,
    Violated(Divergence),
    /// The sequence could not be carried out (the target or provider did not answer as the protocol
    /// needs); nothing is concluded from it.
    Inconclusive(String),
}

/// The first step whose observation differs from the oracle's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// 0-based index into the sequence.
    pub index: usize,
    pub step: Step,
    pub expected: String,
    pub observed: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} ({}): expected {}, observed {}", self.index + 1, self.step, self.expected, self.observed)
    }
}

/// A divergence, shrunk.
#[derive(Clone, Debug)]
pub struct Failure {
    pub steps: Vec<Step>,
    pub divergence: Divergence,
    /// Where the steps were written for `--replay`.
    pub replay_file: Option<PathBuf>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Report {
    /// Generated sequences that conformed.
    pub sequences: u64,
    /// Sequences executed in all, shrinking included.
    pub executions: u64,
    /// Steps executed in all.
    pub steps: u64,
    pub elapsed: Duration,
    pub failure: Option<Failure>,
}

impl Report {
    /// The reproducer as readable steps, with the replay command.
    pub fn render(&self, options: &Options) -> String {
        let mut out = String::new();
        let Some(f) = &self.failure else {
            return format!(
                "conforms: {} sequences, {} steps, under policy {} in {:.1} s\n",
                self.sequences,
                self.steps,
                options.policy_name,
                self.elapsed.as_secs_f64()
            );
        };
        out.push_str(&format!(
            "DIVERGES under policy {} after {} conforming sequences; shrunk to {} steps:\n",
            options.policy_name,
            self.sequences,
            f.steps.len()
        ));
        for (i, s) in f.steps.iter().enumerate() {
            let marker = if i == f.divergence.index { "   <-- here" } else { "" };
            out.push_str(&format!("  {:>2}. {s}{marker}\n", i + 1));
        }
        out.push_str(&format!("expected: {}\nobserved: {}\n", f.divergence.expected, f.divergence.observed));
        if let Some(path) = &f.replay_file {
            out.push_str(&format!(
                "replay: bff-session-conformance run --target {} --policy {} --replay {}\n",
                options.target,
                options.policy_name,
                path.display()
            ));
        }
        out
    }
}

/// Why the harness could not run at all.
#[derive(Debug)]
pub enum HarnessError {
    Provider(ProviderError),
    Http(String),
    Policy(bff_session_core::PolicyError),
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Provider(e) => e.fmt(f),
            Self::Http(e) => write!(f, "HTTP client: {e}"),
            Self::Policy(e) => write!(f, "policy: {e}"),
        }
    }
}

impl std::error::Error for HarnessError {}

/// A provider and the state shared by every sequence of a run.
#[derive(Debug)]
pub struct Harness {
    pub options: Options,
    pub provider: Provider,
    http: reqwest::Client,
    /// The instant the next sequence starts at, on the target's frozen clock.
    next_start: Mutex<Timestamp>,
    runs: AtomicU64,
    steps: AtomicU64,
    /// The divergence of the latest failing execution, to report the shrunk one exactly.
    last: Mutex<Option<Divergence>>,
}

fn wall_now() -> Timestamp {
    Timestamp::from_millis(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

impl Harness {
    /// Starts the provider. The target must be started afterwards, pointed at [`Provider::issuer`].
    pub async fn start(options: Options) -> Result<Self, HarnessError> {
        options.policy.validate().map_err(HarnessError::Policy)?;
        let provider = Provider::start(options.provider_listen, &options.target, &options.mapping, options.token_ttl)
            .await
            .map_err(HarnessError::Provider)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| HarnessError::Http(e.to_string()))?;
        Ok(Self {
            options,
            provider,
            http,
            next_start: Mutex::new(wall_now()),
            runs: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            last: Mutex::new(None),
        })
    }

    /// Steps executed so far, in every sequence.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    /// Waits until the target answers HTTP with anything but 503, up to `timeout`: a server may listen
    /// before it is ready (this repository's answers 503 until it has read its provider's discovery document),
    /// and a sequence that starts then would report the start-up as a divergence.
    pub async fn wait_for_target(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let answer = self.http.get(format!("{}/", self.options.target)).send().await;
            if answer.is_ok_and(|r| r.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Signs one device in as `bench-user` and returns its `Cookie` header: for a load generator, which then
    /// presents it on every request.
    pub async fn sign_in_one(&self) -> Result<String, String> {
        let mut target = Target::new(&self.options.target, self.options.mapping.clone(), self.http.clone())
            .with_profile(&self.options.profile);
        let login = Step::Login { device: 0, user: 0 };
        target.perform(&login, &self.provider.idp, "bench-user", 0).await.map_err(|e| e.to_string())?;
        target.cookie_header_of(0).ok_or_else(|| "the sign-in set no cookie".to_owned())
    }

    /// Executes one sequence; `Err` at the first divergence, which is also kept to report the shrunk one.
    pub async fn execute(&self, steps: &[Step]) -> Result<(), Divergence> {
        let result = self.execute_once(steps).await;
        if let Err(d) = &result {
            *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(d.clone());
        }
        result
    }

    async fn execute_once(&self, steps: &[Step]) -> Result<(), Divergence> {
        match self.drive(steps, None).await {
            Checked::Held => Ok(()),
            Checked::Violated(d) => Err(d),
            Checked::Inconclusive(e) => Err(setup(e)),
        }
    }

    /// Executes a scenario, judging only its marked steps, each by its [`Check`].
    pub async fn execute_checked(&self, scenario: &Scenario) -> Checked {
        self.drive(&scenario.steps, Some(&scenario.checks)).await
    }

    /// Performs `steps`, predicting each. Without `checks`, every step's observation and the provider's
    /// refresh count must be the oracle's exactly, and a step the target cannot carry out is a divergence.
    /// With `checks`, only the marked steps are judged, and a step that cannot be carried out makes the
    /// execution inconclusive.
    async fn drive(&self, steps: &[Step], checks: Option<&[(usize, Check)]>) -> Checked {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let policy = &self.options.policy;
        let wall = self.options.profile.clock == ClockMode::Wall;
        let start = if wall { wall_now() } else { self.claim_start() };
        let users: Vec<String> = (0..USERS).map(|u| format!("r{run}u{u}")).collect();
        let mut oracle =
            match Oracle::new(policy.clone(), start, &self.provider.issuer, self.options.token_ttl, users.clone()) {
                Ok(o) => o,
                Err(e) => return Checked::Inconclusive(format!("invalid policy: {e}")),
            };
        if wall {
            // Past the tolerance, so an observation after a move is never within it of the deadline.
            oracle.land_near(TOLERANCE + Duration::from_millis(500));
        }
        let mut target = Target::new(&self.options.target, self.options.mapping.clone(), self.http.clone())
            .with_profile(&self.options.profile);
        let idp = &self.provider.idp;
        let refreshes = || users.iter().map(|u| idp.refresh_requests_of(u)).sum::<u64>();
        if !wall {
            let freeze = Step::Advance { by: step::Span::Seconds(1) };
            if let Err(e) = target.perform(&freeze, idp, "", start.as_millis()).await {
                return Checked::Inconclusive(e.to_string());
            }
        }
        let mut result = Checked::Held;
        // The longest a step other than a clock move took on a wall clock: the window in which the target
        // decided what the oracle dates at the step's end.
        let mut slowest = Duration::ZERO;
        // Whether a move to just before a deadline came earlier in the sequence.
        let mut landed_before = false;
        for (index, step) in steps.iter().enumerate() {
            landed_before |= matches!(step, Step::Advance { by: step::Span::To { side: step::Side::Before, .. } });
            self.steps.fetch_add(1, Ordering::Relaxed);
            let diverge =
                |expected: String, observed: String| Divergence { index, step: step.clone(), expected, observed };
            let check = checks.map(|c| c.iter().filter(|(i, _)| *i == index).map(|(_, c)| *c).collect::<Vec<_>>());
            if wall {
                oracle.follow(wall_now());
            }
            let user = match step {
                Step::Login { user, .. } => oracle.user_name(*user).to_owned(),
                _ => String::new(),
            };
            let freeze_at = match step {
                Step::Advance { by } => oracle.resolve(*by),
                _ => Duration::ZERO,
            };
            let freeze_at = oracle.now().saturating_add(freeze_at);
            let (refreshes_before, oracle_refreshes_before, revocations_before) =
                (refreshes(), oracle.refresh_requests(), oracle.revocations());
            let started_at = wall_now();
            let performed = match step {
                Step::Advance { .. } if wall => {
                    let wait = wall_now().until(freeze_at);
                    tokio::time::sleep(wait).await;
                    Ok((Observation::Nothing, None))
                }
                _ => target.perform(step, idp, &user, freeze_at.as_millis()).await,
            };
            let observed = match performed {
                Ok(o) => o,
                Err(e) if checks.is_some() => {
                    result = Checked::Inconclusive(format!("step {} ({step}): {e}", index + 1));
                    break;
                }
                Err(e) => {
                    result = Checked::Violated(diverge("a protocol answer".into(), e.to_string()));
                    break;
                }
            };
            if wall {
                // The target decided somewhere during the step; predicting from its end puts every deadline
                // the oracle computes at or after the target's, so a move past one lands past both.
                let ended = wall_now();
                if !matches!(step, Step::Advance { .. }) {
                    slowest = slowest.max(started_at.until(ended));
                }
                oracle.follow(ended);
            }
            let expected = oracle.expect(step, observed.1.as_deref());
            let Some(check) = check else {
                if expected != observed.0 {
                    result = Checked::Violated(diverge(expected.to_string(), observed.0.to_string()));
                    break;
                }
                let requests = refreshes();
                if requests != oracle.refresh_requests() {
                    result = Checked::Violated(diverge(
                        format!("{} refresh request(s) at the provider so far", oracle.refresh_requests()),
                        format!("{requests}"),
                    ));
                    break;
                }
                continue;
            };
            for c in check {
                let verdict = match c {
                    Check::Answer => crate::judge::judge_answer(step, &expected, &observed.0, &self.options.profile),
                    Check::Refreshes => {
                        let sent = refreshes() - refreshes_before;
                        let allowed = oracle.refresh_requests() - oracle_refreshes_before;
                        (sent > allowed).then(|| {
                            (format!("at most {allowed} refresh request(s) at the provider"), format!("{sent}"))
                        })
                    }
                    Check::Revoked => {
                        let sid = step_device(step).and_then(|d| target.sid_of(d)).map(str::to_owned);
                        match sid {
                            Some(sid) if oracle.revocations() > revocations_before => {
                                crate::judge::judge_revoked(idp, &sid).await
                            }
                            _ => None,
                        }
                    }
                    Check::CookieAttributes => crate::judge::judge_cookie(target.last_session_cookie()),
                };
                if let Some((expected, observed)) = verdict {
                    result = if c == Check::Answer && landed_before && slowest > TOLERANCE / 2 {
                        // A deadline the target computed inside a slow step may lie up to that long before
                        // the oracle's; a move to just before it then lands within the tolerance of the
                        // target's own, where nothing is concluded. (A move past a deadline cannot: the
                        // oracle's deadline is never earlier than the target's.)
                        Checked::Inconclusive(format!(
                            "a step took {} ms, so a move to just before a deadline landed within the {} ms tolerance; step {} ({step}) then found {observed} where {expected} was expected",
                            slowest.as_millis(),
                            TOLERANCE.as_millis(),
                            index + 1
                        ))
                    } else {
                        Checked::Violated(diverge(expected, observed))
                    };
                    break;
                }
            }
            if !matches!(result, Checked::Held) {
                break;
            }
        }
        if !wall {
            // The next sequence starts after everything this one reached.
            let gap = self.gap();
            let mut next = self.next_start.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *next = (*next).max(oracle.now().saturating_add(gap));
        }
        result
    }

    /// Past every earlier sequence's absolute deadlines, so their sessions can only be swept, never
    /// refreshed, in the next one.
    fn gap(&self) -> Duration {
        let policy = &self.options.policy;
        policy.absolute_lifetime + policy.background_recent_use + Duration::from_secs(86_400)
    }

    /// The start of the next sequence's stretch of the frozen clock.
    fn claim_start(&self) -> Timestamp {
        let mut next = self.next_start.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = *next;
        *next = start.saturating_add(self.gap());
        start
    }

    /// Runs `options.sequences` generated sequences (blocking; call it outside the runtime), shrinking the
    /// first divergence.
    pub fn run(&self, rt: &tokio::runtime::Runtime) -> Report {
        let started = Instant::now();
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.options.seed.to_le_bytes());
        let config = Config {
            cases: self.options.sequences,
            failure_persistence: None,
            max_shrink_iters: 1024,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        let passed = AtomicU64::new(0);
        let first_failure_seen = std::sync::atomic::AtomicBool::new(false);
        let outcome =
            runner.run(&step::sequence(self.options.max_steps), |steps| match rt.block_on(self.execute(&steps)) {
                Ok(()) => {
                    if !first_failure_seen.load(Ordering::Relaxed) {
                        passed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
                Err(d) => {
                    first_failure_seen.store(true, Ordering::Relaxed);
                    Err(TestCaseError::fail(d.to_string()))
                }
            });
        let failure = match outcome {
            Ok(()) => None,
            Err(TestError::Fail(_, steps)) => {
                // Run the minimal sequence once more so the report shows its own divergence.
                let divergence = match rt.block_on(self.execute(&steps)) {
                    Err(d) => d,
                    Ok(()) => self.last.lock().ok().and_then(|l| l.clone()).unwrap_or_else(|| Divergence {
                        index: 0,
                        step: steps.first().cloned().unwrap_or(Step::Background),
                        expected: "a reproducible divergence".into(),
                        observed: "the shrunk sequence passed when run again (a race in the target?)".into(),
                    }),
                };
                let replay_file = self.save(&steps).ok();
                Some(Failure { steps, divergence, replay_file })
            }
            Err(TestError::Abort(reason)) => Some(Failure {
                steps: Vec::new(),
                divergence: Divergence {
                    index: 0,
                    step: Step::Background,
                    expected: "a run".into(),
                    observed: format!("proptest aborted: {reason}"),
                },
                replay_file: None,
            }),
        };
        Report {
            sequences: passed.into_inner(),
            executions: self.runs.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
            failure,
        }
    }

    /// Executes exactly `steps` once.
    pub fn replay(&self, rt: &tokio::runtime::Runtime, steps: Vec<Step>) -> Report {
        let started = Instant::now();
        let result = rt.block_on(self.execute(&steps));
        Report {
            sequences: u64::from(result.is_ok()),
            executions: 1,
            steps: self.steps.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
            failure: result.err().map(|divergence| Failure { steps, divergence, replay_file: None }),
        }
    }

    fn save(&self, steps: &[Step]) -> std::io::Result<PathBuf> {
        #[derive(Serialize)]
        struct Repro<'a> {
            policy: &'a str,
            steps: &'a [Step],
        }
        std::fs::create_dir_all(&self.options.out_dir)?;
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let path = self.options.out_dir.join(format!("repro-{}-{stamp}.json", self.options.policy_name));
        let json = serde_json::to_string_pretty(&Repro { policy: &self.options.policy_name, steps })
            .map_err(std::io::Error::other)?;
        std::fs::write(&path, json)?;
        Ok(path)
    }
}

/// Reads a reproducer written by a failed run.
pub fn load_replay(path: &std::path::Path) -> Result<Vec<Step>, String> {
    #[derive(serde::Deserialize)]
    struct Repro {
        steps: Vec<Step>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str::<Repro>(&text).map(|r| r.steps).map_err(|e| format!("{}: {e}", path.display()))
}

/// The device a step acts for.
fn step_device(step: &Step) -> Option<u8> {
    match *step {
        Step::Login { device, .. }
        | Step::Call { device, .. }
        | Step::Session { device }
        | Step::Sessions { device }
        | Step::Logout { device }
        | Step::LogoutAll { device }
        | Step::EndDevice { device, .. }
        | Step::BackchannelLogout { device, .. }
        | Step::FailNextRefresh { device, .. }
        | Step::Burst { device, .. }
        | Step::Replay { device } => Some(device),
        Step::Advance { .. } | Step::Background => None,
    }
}

fn setup(observed: String) -> Divergence {
    Divergence { index: 0, step: Step::Background, expected: "a target that accepts the test clock".into(), observed }
}
