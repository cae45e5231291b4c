//! Checking an audit trail: replaying its events through `lifecycle` and finding the first illegal one.
//!
//! Owns reading the JSON-lines trail (an optional `start` header with the policy, then one [`Line`] per
//! committed transition) and deciding, per session in version order, whether core would have made each
//! transition at its timestamp. It reports the violation with the lowest line number. It never reads a
//! file or a clock: the caller hands it the text.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::Secret;
use crate::audit::{Event, Header, Line, RefreshError};
use crate::id::SessionId;
use crate::lifecycle::{Login, NewSession, Refusal};
use crate::policy::{Policy, PolicyError};
use crate::refresh::{RefreshCompletion, RefreshRefusal, RefreshResult, RefreshTicket, TokenGrant, Trigger};
use crate::registry::Registry;
use crate::session::{Device, OidcIdentity, UserId};
use crate::time::Timestamp;

/// The first illegal transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// 1-based line number in the trail.
    pub line: usize,
    pub session: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: session {}: {}", self.line, self.session, self.message)
    }
}

/// A trail that cannot be checked at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceError {
    /// A line that is neither a header nor an event.
    Syntax {
        line: usize,
        error: String,
    },
    /// No `start` header and no policy given.
    NoPolicy,
    /// A later header names another policy.
    PolicyChanged {
        line: usize,
    },
    InvalidPolicy(PolicyError),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax { line, error } => write!(f, "line {line}: not an audit line: {error}"),
            Self::NoPolicy => f.write_str("the trail has no start line with the policy; name one"),
            Self::PolicyChanged { line } => {
                write!(f, "line {line}: the policy changed mid-trail; check each part separately")
            }
            Self::InvalidPolicy(e) => write!(f, "invalid policy: {e}"),
        }
    }
}

impl std::error::Error for TraceError {}

/// What a conforming trail contained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub events: usize,
    pub sessions: usize,
}

/// Checks `text`, a JSON-lines trail. `policy` applies when the trail has no `start` header.
pub fn check(text: &str, policy: Option<Policy>) -> Result<Result<Summary, Violation>, TraceError> {
    let mut header: Option<Policy> = None;
    let mut sessions: BTreeMap<String, Vec<(usize, Line)>> = BTreeMap::new();
    let mut events = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if let Ok(h) = serde_json::from_str::<Header>(raw)
            .map_err(|e| e.to_string())
            .and_then(|h| if h.event == "start" { Ok(h) } else { Err("not a start line".into()) })
        {
            let p = Policy::from(&h.policy);
            match &header {
                Some(existing) if *existing != p => return Err(TraceError::PolicyChanged { line }),
                _ => header = Some(p),
            }
            continue;
        }
        let parsed: Line = serde_json::from_str(raw).map_err(|e| TraceError::Syntax { line, error: e.to_string() })?;
        events += 1;
        sessions.entry(parsed.session.clone()).or_default().push((line, parsed));
    }
    let policy = header.or(policy).ok_or(TraceError::NoPolicy)?;
    let mut replay = Replay::new(policy).map_err(TraceError::InvalidPolicy)?;
    let count = sessions.len();
    // Each line belongs to one session, so the earliest violation is unique.
    let first = sessions
        .into_iter()
        .enumerate()
        .filter_map(|(n, (name, mut lines))| {
            // Lines of one session may be written out of order by concurrent writers; versions say the order.
            lines.sort_by_key(|(line, l)| (l.version, *line));
            replay.session(n as u64, &name, &lines).err()
        })
        .min_by_key(|v| v.line);
    Ok(first.map_or(Ok(Summary { events, sessions: count }), Err))
}

/// The replaying registry.
struct Replay {
    registry: Registry,
}

impl Replay {
    fn new(policy: Policy) -> Result<Self, PolicyError> {
        Ok(Self { registry: Registry::new(policy)? })
    }

    fn session(&mut self, n: u64, name: &str, lines: &[(usize, Line)]) -> Result<(), Violation> {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&n.to_be_bytes());
        let id = SessionId::from_random_bytes(bytes);
        let key = id.key();
        let mut ticket: Option<RefreshTicket> = None;
        let mut version = 0u64;
        for (line, l) in lines {
            let fail = |message: String| Violation { line: *line, session: name.to_owned(), message };
            if l.version != version + 1 {
                return Err(fail(match l.version {
                    v if v == version => format!("two events claim version {v}"),
                    v if version == 0 => format!("the first event has version {v}: the creation is missing"),
                    v => format!("version jumps from {version} to {v}: an event is missing"),
                }));
            }
            version = l.version;
            let now = Timestamp::from_millis(l.ts);
            let r = &mut self.registry;
            match &l.event {
                Event::Created { access_expires_at, refresh_token } => {
                    if version != 1 {
                        return Err(fail("created twice".into()));
                    }
                    let login = match access_expires_at {
                        None => Login::Local,
                        Some(at) => Login::Oidc {
                            identity: OidcIdentity {
                                iss: "trace".into(),
                                sub: name.to_owned(),
                                sid: None,
                                name: None,
                                email: None,
                            },
                            grant: grant(now, *at, *refresh_token),
                        },
                    };
                    let new = NewSession { id: id.clone(), user: UserId::new(name), login, device: Device::default() };
                    let _ = r.create(&new, None, now);
                }
                Event::Touched => match r.touch(key, now).outcome {
                    Ok(true) => {}
                    Ok(false) => return Err(fail("touched before the touch interval had passed".into())),
                    Err(refusal) => return Err(fail(format!("touched, but the {}", ended(refusal)))),
                },
                Event::RefreshStarted => {
                    let mut begun = r.begin_refresh(key, Trigger::Request, now).outcome;
                    if matches!(begun, Err(RefreshRefusal::NotDue)) {
                        begun = r.begin_refresh(key, Trigger::Background, now).outcome;
                    }
                    match begun {
                        Ok(t) => ticket = Some(t),
                        Err(refusal) => return Err(fail(format!("refresh started, but {}", refused(refusal)))),
                    }
                }
                Event::LeaseRenewed => {
                    let Some(t) = &ticket else {
                        return Err(fail("a lease was renewed, but no refresh was in flight".into()));
                    };
                    if let Err(refusal) = r.renew_lease(t, now).outcome {
                        return Err(fail(match refusal {
                            RefreshRefusal::Ended(refusal) => {
                                format!("a lease was renewed, but the {}", ended(refusal))
                            }
                            _ => "a lease was renewed after it had lapsed".into(),
                        }));
                    }
                }
                Event::RefreshSucceeded { access_expires_at } => {
                    let result = RefreshResult::Success(grant(now, *access_expires_at, true));
                    complete(r, ticket.take(), result, now, |c| matches!(c, RefreshCompletion::Refreshed { .. }))
                        .map_err(fail)?;
                }
                Event::RefreshFailed { error } => {
                    let (result, expected): (_, fn(&RefreshCompletion) -> bool) = match error {
                        RefreshError::InvalidGrant => {
                            (RefreshResult::InvalidGrant, |c| *c == RefreshCompletion::Revoked)
                        }
                        RefreshError::Transient => {
                            (RefreshResult::Transient, |c| matches!(c, RefreshCompletion::BackingOff { .. }))
                        }
                    };
                    complete(r, ticket.take(), result, now, expected).map_err(fail)?;
                }
                Event::Expired { reason } => {
                    let policy = r.policy().clone();
                    let deadline = r.get(&key).map(|s| s.expiry(&policy));
                    match r.authenticate_id(&id, now).outcome {
                        // Core refuses as expired only past a deadline, so the reason is all left to compare.
                        Err(Refusal::Expired(got)) if got == *reason => {}
                        Err(Refusal::Expired(got)) => {
                            return Err(fail(format!("expired for {reason}, but its {got} deadline came first")));
                        }
                        Ok(_) => {
                            let (at, why) = deadline.unwrap_or((now, *reason));
                            return Err(fail(format!(
                                "expired ({reason}) before its deadline: the {why} deadline is {} ms later",
                                now.until(at).as_millis()
                            )));
                        }
                        Err(refusal) => return Err(fail(format!("expired, but the {}", ended(refusal)))),
                    }
                }
                Event::Revoked { reason } => {
                    if let Err(refusal) = r.revoke(key, *reason, now).outcome {
                        return Err(fail(format!("revoked ({reason}), but the {}", ended(refusal))));
                    }
                }
            }
        }
        Ok(())
    }
}

fn grant(now: Timestamp, access_expires_at: u64, rotated: bool) -> TokenGrant {
    TokenGrant {
        access_token: Secret::new("access"),
        expires_in: Some(Duration::from_millis(access_expires_at.saturating_sub(now.as_millis()))),
        refresh_token: rotated.then(|| Secret::new("refresh")),
        refresh_expires_in: None,
        id_token: None,
    }
}

fn complete(
    r: &mut Registry,
    ticket: Option<RefreshTicket>,
    result: RefreshResult,
    now: Timestamp,
    expected: fn(&RefreshCompletion) -> bool,
) -> Result<(), String> {
    let Some(ticket) = ticket else {
        return Err("a refresh ended, but none was in flight".into());
    };
    let done = r.complete_refresh(&ticket, result, now).outcome;
    if expected(&done) {
        return Ok(());
    }
    Err(match done {
        RefreshCompletion::Stale => "a superseded refresh's result was stored".into(),
        RefreshCompletion::Discarded => "a refresh's result was stored after the session had ended".into(),
        other => format!("a refresh ended as the trail says, but core makes it {other:?}"),
    })
}

fn ended(refusal: Refusal) -> String {
    match refusal {
        Refusal::Expired(reason) => format!("session had expired ({reason})"),
        Refusal::Revoked(reason) => format!("session had been revoked ({reason})"),
        other => format!("session was unusable ({other})"),
    }
}

fn refused(refusal: RefreshRefusal) -> String {
    match refusal {
        RefreshRefusal::NotDue => "it was not due yet".into(),
        RefreshRefusal::InFlight { until } => {
            format!("another refresh held the lease until {} (no single flight)", until.as_millis())
        }
        RefreshRefusal::BackingOff { until } => format!("it was backing off until {}", until.as_millis()),
        RefreshRefusal::NoRefreshToken => "the session has no refresh token".into(),
        RefreshRefusal::Ended(refusal) => format!("the {}", ended(refusal)),
    }
}
