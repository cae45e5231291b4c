//! Exhaustive bounded model checking of core with stateright, beside the property tests.
//!
//! One user on two devices, the provider (it mints rotated tokens, or fails), and the background pass. Every
//! action is a core command on a `Registry`: sign-in (superseding the device's old session), a request (with
//! its touch), refresh begin, lease renewal and completion with two tickets outstanding at most, logout,
//! logout everywhere, back-channel logout and the background tick. The clock moves only to the instants where
//! some rule changes its answer, 1 ms before, exactly and 1 ms after, and back across the latest one passed.
//!
//! Every named invariant of `support/assertions.rs` is an `always` property, checked on every transition;
//! `sometimes` properties prove the interesting corners are reached. `quick` runs in the test suite (and so in
//! `cargo xtask ci`); `deep` is ignored here and run by `cargo xtask model-check --deep`. Both print the state
//! count, the depth and the time.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// The checker's own run time is reported (never asserted); core, the subject, still reads no clock.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use bff_session_core::record::{self, Unsealed};
use bff_session_core::{
    Command, Device, ExpiryReason, Login, NewSession, OidcIdentity, Outcome, Policy, RefreshCompletion, RefreshResult,
    RefreshTicket, Registry, RevocationReason, Secret, SessionId, State, Timestamp, TokenGrant, Trigger, UserId,
};
use stateright::{Checker, Model, Property};
use support::assertions::{self as check, History};
use support::driver::Step;
use support::model::tiny_policy;

const ISS: &str = "https://idp.test";
const DEVICES: u8 = 2;
const MAX_TICKETS: usize = 2;

/// What the provider answers to a refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Answer {
    Rotated,
    InvalidGrant,
    Transient,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    SignIn(u8),
    Request(u8),
    BeginRefresh(u8),
    RenewLease(usize),
    Complete(usize, Answer),
    Logout(u8),
    LogoutEverywhere(u8),
    Backchannel(u8),
    Tick,
    ClockTo(u64),
}

/// The world after some actions, and what the last one did.
#[derive(Clone, Debug)]
struct World {
    registry: Registry,
    now: Timestamp,
    devices: [Option<SessionId>; DEVICES as usize],
    tickets: Vec<RefreshTicket>,
    minted: u64,
    history: History,
    /// Invariants the last action broke.
    violated: Vec<&'static str>,
    /// Corners the last action reached, for the `sometimes` properties.
    events: Vec<&'static str>,
}

/// Equal exactly when the fingerprint's fields are equal (the same fields `Hash` reads).
impl PartialEq for World {
    fn eq(&self, other: &Self) -> bool {
        let keys = |w: &Self| w.devices.iter().map(|d| d.as_ref().map(SessionId::key)).collect::<Vec<_>>();
        self.now == other.now
            && self.registry == other.registry
            && keys(self) == keys(other)
            && self.tickets == other.tickets
            && self.minted == other.minted
            && self.history.ended == other.history.ended
            && self.history.rotated_out == other.history.rotated_out
            && self.history.live_ticket == other.history.live_ticket
            && self.violated == other.violated
            && self.events == other.events
    }
}

impl Eq for World {}

impl Hash for World {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.now.hash(h);
        for s in self.registry.iter() {
            record::encode(s, &Unsealed).hash(h);
        }
        for d in &self.devices {
            d.as_ref().map(SessionId::key).hash(h);
        }
        for t in &self.tickets {
            (t.key, t.generation, t.lease_expires_at, t.refresh_token.expose()).hash(h);
        }
        self.minted.hash(h);
        self.history.ended.hash(h);
        self.history.rotated_out.hash(h);
        self.history.live_ticket.hash(h);
        self.violated.hash(h);
        self.events.hash(h);
    }
}

struct Bff {
    policy: Policy,
    /// How many of the nearest future instants the clock may jump to.
    horizon: usize,
    /// Whether a device may sign in again over its own session.
    resign: bool,
}

impl World {
    fn session(&self, device: u8) -> Option<&bff_session_core::Session> {
        let id = self.devices[usize::from(device)].as_ref()?;
        self.registry.get(&id.key())
    }

    fn active(&self, device: u8) -> bool {
        self.session(device).is_some_and(bff_session_core::Session::is_active)
    }

    /// Every instant at which a rule about some session changes its answer.
    fn instants(&self, policy: &Policy) -> Vec<Timestamp> {
        let mut at = Vec::new();
        for s in self.registry.iter() {
            at.extend(s.delete_at(policy));
            if !s.is_active() {
                continue;
            }
            at.push(s.absolute_deadline());
            at.extend(s.idle_deadline(policy));
            at.push(s.last_used_at().saturating_add(policy.touch_interval));
            at.extend(s.refresh_from(policy.refresh_margin, policy));
            at.extend(s.background_refresh_at(policy));
            at.extend(s.tokens().map(|t| t.access_expires_at));
            at.extend(s.tokens().and_then(|t| t.refresh_expires_at));
            at.extend(s.refresh_state().lease().map(|l| l.expires_at));
            at.extend(s.refresh_state().retry_at());
        }
        at.sort_unstable();
        at.dedup();
        at
    }

    /// Runs one command, then every invariant on the step, recording which broke.
    fn run(&mut self, command: Command) -> Outcome {
        let before = self.registry.clone();
        let transition = self.registry.apply(&command, self.now);
        let outcome = transition.outcome.clone();
        let step = Step { before, now: self.now, command, transition };
        let after = &self.registry;
        let history = &mut self.history;
        let mut broke = |name: &'static str, f: &mut dyn FnMut()| {
            if catch_unwind(AssertUnwindSafe(f)).is_err() {
                self.violated.push(name);
            }
        };
        broke("no_resurrection", &mut || check::no_resurrection(history, &step, after));
        broke("authenticates_exactly_live_sessions", &mut || check::authenticates_exactly_live_sessions(&step, after));
        broke("single_flight", &mut || check::single_flight(history, &step, after));
        broke("rotated_tokens_stay_retired", &mut || check::rotated_tokens_stay_retired(history, &step, after));
        broke("no_refresh_for_ended_sessions", &mut || check::no_refresh_for_ended_sessions(&step));
        broke("touches_are_bounded", &mut || check::touches_are_bounded(&step, after));
        broke("revoke_all_ends_exactly_that_user", &mut || check::revoke_all_ends_exactly_that_user(&step, after));
        broke("absolute_deadline_is_fixed", &mut || check::absolute_deadline_is_fixed(history, after));
        broke("refused_csrf_has_no_effect", &mut || check::refused_csrf_has_no_effect(&step, after));
        broke("forged_csrf_is_refused", &mut || check::forged_csrf_is_refused(&step, after));
        broke("changes_are_persisted", &mut || check::changes_are_persisted(&step, after));
        broke("records_round_trip", &mut || check::records_round_trip(after));
        outcome
    }

    fn mint(&mut self, kind: &str) -> Secret {
        self.minted += 1;
        Secret::new(format!("{kind}-{}", self.minted))
    }
}

impl Model for Bff {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        vec![World {
            registry: Registry::new(self.policy.clone()).unwrap(),
            now: Timestamp::from_millis(1_700_000_000_000),
            devices: [None, None],
            tickets: Vec::new(),
            minted: 0,
            history: History::default(),
            violated: Vec::new(),
            events: Vec::new(),
        }]
    }

    fn actions(&self, w: &World, actions: &mut Vec<Action>) {
        for d in 0..DEVICES {
            if w.devices[usize::from(d)].is_none() || (self.resign && !w.active(d)) {
                actions.push(Action::SignIn(d));
            }
            if w.active(d) {
                actions.extend([Action::Request(d), Action::Logout(d), Action::Backchannel(d)]);
                if w.tickets.len() < MAX_TICKETS {
                    actions.push(Action::BeginRefresh(d));
                }
            }
        }
        if w.active(0) || w.active(1) {
            actions.push(Action::LogoutEverywhere(if w.active(0) { 0 } else { 1 }));
        }
        for (i, _) in w.tickets.iter().enumerate() {
            actions.push(Action::RenewLease(i));
            for answer in [Answer::Rotated, Answer::InvalidGrant, Answer::Transient] {
                actions.push(Action::Complete(i, answer));
            }
        }
        actions.push(Action::Tick);
        let instants = w.instants(&self.policy);
        let now = w.now.as_millis();
        for at in instants.iter().map(|t| t.as_millis()).filter(|&t| t > now).take(self.horizon) {
            actions.extend([at - 1, at, at + 1].into_iter().filter(|&t| t > now).map(Action::ClockTo));
        }
        if let Some(passed) = instants.iter().map(|t| t.as_millis()).rfind(|&t| t <= now) {
            actions.push(Action::ClockTo(passed.saturating_sub(1)));
        }
    }

    fn next_state(&self, last: &World, action: Action) -> Option<World> {
        let mut w = last.clone();
        w.violated.clear();
        w.events.clear();
        match action {
            Action::SignIn(d) => {
                let n = w.minted + 1;
                let mut bytes = [0u8; 32];
                bytes[..8].copy_from_slice(&n.to_le_bytes());
                let id = SessionId::from_random_bytes(bytes);
                let grant = TokenGrant {
                    access_token: w.mint("at"),
                    expires_in: Some(Duration::from_secs(120)),
                    refresh_token: Some(w.mint("rt")),
                    refresh_expires_in: None,
                    id_token: None,
                };
                let identity = OidcIdentity {
                    iss: ISS.into(),
                    sub: "alice".into(),
                    sid: Some(format!("sid{d}")),
                    name: None,
                    email: None,
                };
                let new = NewSession {
                    id: id.clone(),
                    user: UserId::new("alice"),
                    login: Login::Oidc { identity, grant },
                    device: Device::default(),
                };
                let supersedes = w.devices[usize::from(d)].as_ref().map(SessionId::key);
                w.run(Command::Create { new, supersedes });
                w.devices[usize::from(d)] = Some(id);
            }
            Action::Request(d) => {
                let id = w.devices[usize::from(d)].clone()?;
                let deadline = w.session(d).and_then(|s| s.idle_deadline(&self.policy));
                let command = Command::Authenticate {
                    cookie: Some(id.encode()),
                    method: bff_session_core::Method::Safe,
                    csrf_proof: None,
                };
                if let Outcome::Authenticated(Ok(auth)) = w.run(command) {
                    if auth.touch_due {
                        w.run(Command::Touch { key: id.key() });
                    }
                } else if deadline == Some(w.now) && w.session(d).is_some_and(|s| idle_expired(s.state())) {
                    w.events.push("expired_exactly_at_idle_deadline");
                }
            }
            Action::BeginRefresh(d) => {
                let key = w.devices[usize::from(d)].as_ref()?.key();
                let retried = w.session(d).is_some_and(|s| s.refresh_state().failures() > 0);
                if let Outcome::RefreshBegun(Ok(ticket)) =
                    w.run(Command::BeginRefresh { key, trigger: Trigger::Request })
                {
                    if retried {
                        w.events.push("retry_after_backoff");
                    }
                    w.tickets.push(ticket);
                }
            }
            Action::RenewLease(i) => {
                let ticket = w.tickets.get(i)?.clone();
                w.run(Command::RenewLease { ticket });
            }
            Action::Complete(i, answer) => {
                let ticket = w.tickets.remove(i);
                let logged_out = w
                    .registry
                    .get(&ticket.key)
                    .is_some_and(|s| matches!(s.state(), State::Revoked { reason: RevocationReason::Logout, .. }));
                let result = match answer {
                    Answer::Rotated => RefreshResult::Success(TokenGrant {
                        access_token: w.mint("at"),
                        expires_in: Some(Duration::from_secs(120)),
                        refresh_token: Some(w.mint("rt")),
                        refresh_expires_in: None,
                        id_token: None,
                    }),
                    Answer::InvalidGrant => RefreshResult::InvalidGrant,
                    Answer::Transient => RefreshResult::Transient,
                };
                match w.run(Command::CompleteRefresh { ticket, result }) {
                    Outcome::RefreshCompleted(RefreshCompletion::Stale) => w.events.push("stale_completion_fenced"),
                    Outcome::RefreshCompleted(RefreshCompletion::Discarded) if logged_out => {
                        w.events.push("refresh_landed_after_logout");
                    }
                    _ => {}
                }
            }
            Action::Logout(d) => {
                let key = w.devices[usize::from(d)].as_ref()?.key();
                w.run(Command::Revoke { key, reason: RevocationReason::Logout });
            }
            Action::LogoutEverywhere(_) => {
                w.run(Command::RevokeUser { user: UserId::new("alice"), reason: RevocationReason::LogoutEverywhere });
            }
            Action::Backchannel(d) => {
                let in_flight = w.session(d).is_some_and(|s| s.refresh_state().live_lease(w.now).is_some());
                let ended = w.run(Command::RevokeBySid { iss: ISS.into(), sid: format!("sid{d}") });
                if in_flight && matches!(ended, Outcome::RevokedMany(ref keys) if !keys.is_empty()) {
                    w.events.push("backchannel_logout_during_refresh");
                }
            }
            Action::Tick => {
                w.run(Command::Tick);
            }
            Action::ClockTo(at) => w.now = Timestamp::from_millis(at),
        }
        Some(w)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        macro_rules! always {
            ($($name:literal),* $(,)?) => {
                vec![$(Property::always($name, |_, w: &World| !w.violated.contains(&$name))),*]
            };
        }
        macro_rules! sometimes {
            ($($name:literal),* $(,)?) => {
                vec![$(Property::sometimes($name, |_, w: &World| w.events.contains(&$name))),*]
            };
        }
        let mut properties = always![
            "no_resurrection",
            "authenticates_exactly_live_sessions",
            "single_flight",
            "rotated_tokens_stay_retired",
            "no_refresh_for_ended_sessions",
            "touches_are_bounded",
            "revoke_all_ends_exactly_that_user",
            "absolute_deadline_is_fixed",
            "refused_csrf_has_no_effect",
            "forged_csrf_is_refused",
            "changes_are_persisted",
            "records_round_trip",
        ];
        properties.extend(sometimes![
            "stale_completion_fenced",
            "refresh_landed_after_logout",
            "expired_exactly_at_idle_deadline",
            "retry_after_backoff",
            "backchannel_logout_during_refresh",
        ]);
        properties
    }
}

fn idle_expired(state: State) -> bool {
    matches!(state, State::Expired { reason: ExpiryReason::Idle, .. })
}

/// Checks the model to `depth` and reports what it covered. Breadth-first keeps the whole frontier of states
/// in memory, fine for the quick bound; the deep one goes depth-first, which keeps only fingerprints and the
/// current path (breadth-first ran out of 24 GB at depth 10).
fn check(depth: usize, horizon: usize, resign: bool, depth_first: bool) {
    // The invariants report by panicking; a caught panic is a recorded violation, not noise.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let builder = Bff { policy: tiny_policy(), horizon, resign }
        .checker()
        .threads(std::thread::available_parallelism().map_or(1, usize::from))
        .target_max_depth(depth);
    if depth_first {
        report(builder.spawn_dfs().join(), depth, started);
    } else {
        report(builder.spawn_bfs().join(), depth, started);
    }
}

fn report(checker: impl Checker<Bff>, depth: usize, started: Instant) {
    let _ = std::panic::take_hook();
    eprintln!(
        "model check: depth {depth} (reached {}), {} states ({} unique), {:.1} s",
        checker.max_depth(),
        checker.state_count(),
        checker.unique_state_count(),
        started.elapsed().as_secs_f64()
    );
    for (name, path) in checker.discoveries() {
        eprintln!("discovery {name}: {} steps", path.into_actions().len());
    }
    checker.assert_properties();
}

/// The bound that runs with every `cargo test`: every invariant over all behaviours of up to 7 actions (8
/// states, the initial one included), two instants ahead.
#[test]
fn quick() {
    check(8, 2, false, false);
}

/// Deeper: 9 actions, three instants ahead, and devices signing in again. `cargo xtask model-check --deep`.
#[test]
#[ignore = "minutes long: run by `cargo xtask model-check --deep`"]
fn deep() {
    check(10, 3, true, true);
}
