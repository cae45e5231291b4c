//! A verdict per invariant for one target: running an invariant's sequences and shrinking its violations.
//!
//! Owns running each applicable invariant's generated sequences against the target (side by side on a wall
//! clock), counting what they exercised, and shrinking the first violation of each. It never decides what
//! is correct (the oracle does), never compares an observation (that is [`crate::judge`]) and never
//! renders (that is [`crate::report`]).

use std::sync::Arc;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde::{Deserialize, Serialize};

use crate::invariant::{Invariant, Scenario};
use crate::profile::ClockMode;
use crate::run::{Checked, Harness};
use crate::step::Step;

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
