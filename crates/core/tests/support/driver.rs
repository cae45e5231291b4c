//! The system under test: a [`Registry`] driven by the commands the model translated, and the projection
//! of what it did onto the model's [`Expect`] vocabulary.

use bff_session_core::{Command, Effect, Outcome, Registry, Timestamp, Transition};

use super::model::{AuthObs, Cookies, Expect, Model, Obs, Write};

/// One executed step: the registry before and after, the command and what came back.
#[derive(Clone, Debug)]
pub struct Step {
    pub before: Registry,
    pub now: Timestamp,
    pub command: Command,
    pub transition: Transition<Outcome>,
}

/// Runs the model's last command on `registry`; `None` for steps that only move the clock.
pub fn run(registry: &mut Registry, model: &Model) -> Option<Step> {
    let (command, _) = model.last.as_ref()?;
    let command = command.clone()?;
    let now = Timestamp::from_millis(model.now);
    let before = registry.clone();
    let transition = registry.apply(&command, now);
    Some(Step { before, now, command, transition })
}

/// What the model would have said, had it been this registry.
pub fn observe(t: &Transition<Outcome>) -> Expect {
    let obs = match &t.outcome {
        Outcome::Created(r) => Obs::Created(r.is_ok()),
        Outcome::Authenticated(r) => Obs::Auth(r.map(|a| AuthObs {
            touch_due: a.touch_due,
            refresh_due: a.refresh_due,
            absolute: a.absolute_deadline.as_millis(),
            idle: a.idle_deadline.map(Timestamp::as_millis),
        })),
        Outcome::Touched(r) => Obs::Touch(*r),
        Outcome::RefreshBegun(r) => Obs::Begin(
            r.as_ref()
                .map_err(|e| *e)
                .map(|t| (t.key, t.generation, t.refresh_token.expose().to_owned(), t.lease_expires_at.as_millis())),
        ),
        Outcome::LeaseRenewed(r) => Obs::Renew(r.map(Timestamp::as_millis)),
        Outcome::RefreshCompleted(c) => Obs::Complete(*c),
        Outcome::Revoked(r) => Obs::Revoke(*r),
        Outcome::RevokedMany(keys) => Obs::Many(keys.clone()),
        Outcome::Ticked(report) => {
            let (mut expired, mut deleted, mut refresh_due) =
                (report.expired.clone(), report.deleted.clone(), report.refresh_due.clone());
            expired.sort();
            deleted.sort();
            refresh_due.sort();
            Obs::Tick { expired, deleted, refresh_due }
        }
    };
    let mut revoked_at_provider: Vec<String> = t
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::RevokeAtProvider { token } => Some(token.expose().to_owned()),
            _ => None,
        })
        .collect();
    revoked_at_provider.sort();
    let set = t.effects.iter().find_map(|e| match e {
        Effect::SetCookies { max_age, .. } => Some(max_age.as_millis() as u64),
        _ => None,
    });
    let cookies = match set {
        Some(max_age_ms) => Cookies::Set { max_age_ms },
        None if t.effects.contains(&Effect::ClearCookies) => Cookies::Cleared,
        None => Cookies::Untouched,
    };
    let mut writes: Vec<Write> = t
        .effects
        .iter()
        .filter_map(|e| match *e {
            Effect::Persist { key, version, durability } => Some(Write::Put { key, version, durability }),
            Effect::Delete { key } => Some(Write::Delete { key }),
            _ => None,
        })
        .collect();
    writes.sort();
    Expect { obs, revoked_at_provider, cookies, writes }
}
