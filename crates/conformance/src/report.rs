//! Report cards: one target's verdicts as JSON, and every card rendered as `CONFORMANCE.md`.
//!
//! Owns the card's format and its rendering for a reader: a table of invariant × target, then each
//! violation's reproducer as numbered steps, the versions and settings of every target, and the command
//! that produced the report. It never runs anything.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::invariant::Invariant;
use crate::verdict::{Outcome, Verdict};

/// One target's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Card {
    /// The profile's name.
    pub target: String,
    pub title: String,
    /// What the target runs, as its own tools print it.
    pub versions: Vec<String>,
    /// `test` or `wall`.
    pub clock: String,
    /// How close to a deadline an observation may land and still be judged, in milliseconds.
    pub tolerance_ms: u64,
    /// The durations the target and the oracle run with.
    pub policy: String,
    pub elapsed_secs: f64,
    pub steps: u64,
    /// The full model comparison (every step, every observation), for targets held to it.
    pub model_comparison: Option<String>,
    pub verdicts: Vec<Verdict>,
    /// Remarks from the profile by invariant name: how the documented configuration bears on it.
    pub notes: std::collections::BTreeMap<String, String>,
    /// Plain tests that reproduce a violation without the harness, by invariant name.
    pub confirmed_by: std::collections::BTreeMap<String, String>,
}

impl Card {
    /// Whether anything was violated or could not be judged.
    pub fn clean(&self) -> bool {
        self.verdicts.iter().all(|v| matches!(v.outcome, Outcome::Holds | Outcome::NotApplicable))
            && self.model_comparison.as_deref().is_none_or(|m| m.starts_with("conforms"))
    }
}

fn cell(v: Option<&Verdict>) -> String {
    match v {
        None => "—".to_owned(),
        Some(v) => match v.outcome {
            Outcome::Holds => format!("holds ({})", v.exercised),
            Outcome::Violated => "**violated**".to_owned(),
            Outcome::NotApplicable => "n/a".to_owned(),
            Outcome::Inconclusive => "inconclusive".to_owned(),
        },
    }
}

/// The table of invariant × target, as Markdown.
pub fn table(cards: &[Card]) -> String {
    let mut out = String::from("| invariant |");
    for c in cards {
        let _ = write!(out, " {} |", c.title);
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(cards.len()));
    out.push('\n');
    for invariant in Invariant::ALL {
        let _ = write!(out, "| {} |", invariant.title());
        for c in cards {
            let _ = write!(out, " {} |", cell(c.verdicts.iter().find(|v| v.invariant == invariant)));
        }
        out.push('\n');
    }
    out
}

/// `CONFORMANCE.md`.
pub fn render(cards: &[Card], command: &str) -> String {
    let mut out = String::new();
    out.push_str("# Conformance report\n\n");
    out.push_str(
        "The conformance harness (`crates/conformance`) drove each BFF below over HTTP, through the harness's own \
         OpenID provider (`bff-session-dev-idp`: authorization code with PKCE, refresh-token rotation with reuse \
         detection, revocation, back-channel logout), and judged what it observed against `bff-session-core`, \
         the oracle. Each invariant is put to the test by generated sequences: a few random steps the target \
         supports, then the steps that test the rule. A cell says *holds* (with the number of sequences that \
         exercised it), **violated** (the shrunk reproducer is below), or *n/a* (the reason is below).\n\n",
    );
    out.push_str(&table(cards));
    out.push_str(
        "\nAnswers are judged by what they mean (served, signed out, refused, failed), so a peer that signs out \
         with a redirect instead of a 401, or fails with a 500 instead of a 503, is not faulted for it. Targets \
         without a test clock run on real time with short durations; the harness lands 1.5 s past a deadline \
         and never judges an observation within the tolerance stated for each target.\n",
    );

    out.push_str("\n## Violations\n");
    let mut any = false;
    for c in cards {
        for v in &c.verdicts {
            let Some(r) = &v.reproducer else { continue };
            any = true;
            let _ = writeln!(out, "\n### {}: {}\n", c.title, v.invariant.title());
            for (i, step) in r.steps.iter().enumerate() {
                let marker = if i == r.index { " ← judged here" } else { "" };
                let _ = writeln!(out, "{}. {step}{marker}", i + 1);
            }
            let _ = writeln!(out, "\n- expected: {}\n- observed: {}", r.expected, r.observed);
            let _ = writeln!(
                out,
                "- found in {} of {} sequences; shrunk to {} steps in {} runs",
                v.violations,
                v.exercised,
                r.steps.len(),
                r.shrink_runs
            );
            match c.confirmed_by.get(v.invariant.name()) {
                Some(test) => {
                    let _ = writeln!(out, "- confirmed without the harness by `{test}`");
                }
                None => out.push_str("- not yet confirmed by a plain test\n"),
            }
            if let Some(note) = c.notes.get(v.invariant.name()) {
                let _ = writeln!(out, "- {note}");
            }
        }
    }
    if !any {
        out.push_str("\nNone.\n");
    }

    out.push_str("\n## Targets\n");
    for c in cards {
        let _ = writeln!(out, "\n### {}\n", c.title);
        for v in &c.versions {
            let _ = writeln!(out, "- {v}");
        }
        let clock = match c.clock.as_str() {
            "wall" => format!("real time, tolerance {} ms", c.tolerance_ms),
            _ => "the target's test clock (exact)".to_owned(),
        };
        let _ = writeln!(out, "- clock: {clock}; policy: {}", c.policy);
        let _ = writeln!(out, "- {} steps in {:.0} s", c.steps, c.elapsed_secs);
        if let Some(m) = &c.model_comparison {
            let _ = writeln!(out, "- full model comparison: {m}");
        }
        for v in &c.verdicts {
            let reason = match (&v.outcome, &v.reason) {
                (Outcome::NotApplicable, Some(r)) => Some(format!("n/a: {r}")),
                (Outcome::Inconclusive, Some(r)) => Some(format!("inconclusive: {r}")),
                (_, _) if v.inconclusive > 0 => {
                    Some(format!("{} sequence(s) inconclusive: {}", v.inconclusive, v.reason.as_deref().unwrap_or("")))
                }
                _ => None,
            };
            let note = c.notes.get(v.invariant.name()).filter(|_| v.reproducer.is_none());
            if reason.is_some() || note.is_some() {
                let text = [reason, note.cloned()].into_iter().flatten().collect::<Vec<_>>().join("; ");
                let _ = writeln!(out, "- {}: {text}", v.invariant.title());
            }
        }
        if let Some(general) = c.notes.get("configuration") {
            let _ = writeln!(out, "- configuration: {general}");
        }
    }
    let _ = writeln!(out, "\n## How this report was made\n\n```sh\n{command}\n```");
    out.push_str("\nRaw results: `target/conformance/report/*.json`.\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Reproducer;

    fn card(outcome: Outcome) -> Card {
        let reproducer = (outcome == Outcome::Violated).then(|| Reproducer {
            steps: vec![crate::step::Step::Login { device: 0, user: 0 }, crate::step::Step::Session { device: 0 }],
            index: 1,
            expected: "signed out".into(),
            observed: "served".into(),
            shrink_runs: 3,
        });
        Card {
            target: "peer".into(),
            title: "A peer".into(),
            versions: vec!["peer 1.0".into()],
            clock: "wall".into(),
            tolerance_ms: 1000,
            policy: "idle 20 s".into(),
            elapsed_secs: 12.0,
            steps: 40,
            model_comparison: None,
            verdicts: Invariant::ALL
                .into_iter()
                .map(|invariant| Verdict {
                    invariant,
                    outcome: outcome.clone(),
                    exercised: 3,
                    violations: u32::from(outcome == Outcome::Violated),
                    inconclusive: 0,
                    reason: None,
                    reproducer: reproducer.clone(),
                })
                .collect(),
            notes: Default::default(),
            confirmed_by: [("idle_deadline".to_owned(), "peers::x".to_owned())].into(),
        }
    }

    #[test]
    fn the_table_has_a_row_per_invariant_and_a_column_per_target() {
        let t = table(&[card(Outcome::Holds), card(Outcome::Violated)]);
        assert_eq!(t.lines().count(), 2 + Invariant::ALL.len());
        assert!(t.contains("| holds (3) | **violated** |"), "{t}");
    }

    #[test]
    fn a_violation_is_rendered_as_numbered_steps_with_its_confirmation() {
        let md = render(&[card(Outcome::Violated)], "cargo xtask conformance-report");
        assert!(md.contains("2. device 0 reads its session ← judged here"), "{md}");
        assert!(md.contains("confirmed without the harness by `peers::x`"));
        assert!(md.contains("cargo xtask conformance-report"));
        assert!(!card(Outcome::Violated).clean() && card(Outcome::Holds).clean());
    }
}
