//! The registry's commands as data, so that a log of them can be generated, stored, fuzzed and replayed.
//!
//! Owns [`Command`], [`Outcome`] and [`Registry::apply`], a dispatcher over the registry's methods. It adds
//! no rule of its own.

use crate::id::{Handle, SessionKey};
use crate::lifecycle::{AuthRequest, Authenticated, Method, NewSession, Refusal, Transition};
use crate::refresh::{RefreshCompletion, RefreshRefusal, RefreshResult, RefreshTicket, Trigger};
use crate::registry::{CreateError, Registry, TickReport};
use crate::session::{RevocationReason, UserId};
use crate::time::Timestamp;

/// One input to the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Create {
        new: NewSession,
        supersedes: Option<SessionKey>,
    },
    Authenticate {
        cookie: Option<String>,
        method: Method,
        csrf_proof: Option<String>,
    },
    Touch {
        key: SessionKey,
    },
    BeginRefresh {
        key: SessionKey,
        trigger: Trigger,
    },
    /// Extends a ticket's lease while its provider call runs.
    RenewLease {
        ticket: RefreshTicket,
    },
    CompleteRefresh {
        ticket: RefreshTicket,
        result: RefreshResult,
    },
    Revoke {
        key: SessionKey,
        reason: RevocationReason,
    },
    RevokeUser {
        user: UserId,
        reason: RevocationReason,
    },
    /// Ends the user's session named by `handle` from the device list of the session `requester`.
    RevokeHandle {
        user: UserId,
        handle: Handle,
        requester: SessionKey,
    },
    RevokeBySid {
        iss: String,
        sid: String,
    },
    RevokeBySub {
        iss: String,
        sub: String,
    },
    Tick,
}

/// The outcome of one [`Command`], by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created(Result<SessionKey, CreateError>),
    Authenticated(Result<Authenticated, Refusal>),
    Touched(Result<bool, Refusal>),
    RefreshBegun(Result<RefreshTicket, RefreshRefusal>),
    LeaseRenewed(Result<Timestamp, RefreshRefusal>),
    RefreshCompleted(RefreshCompletion),
    Revoked(Result<(), Refusal>),
    RevokedMany(Vec<SessionKey>),
    Ticked(TickReport),
}

impl Registry {
    /// Runs one command at `now`.
    pub fn apply(&mut self, command: &Command, now: Timestamp) -> Transition<Outcome> {
        match command {
            Command::Create { new, supersedes } => self.create(new, *supersedes, now).map(Outcome::Created),
            Command::Authenticate { cookie, method, csrf_proof } => {
                let request =
                    AuthRequest { cookie: cookie.as_deref(), method: *method, csrf_proof: csrf_proof.as_deref() };
                self.authenticate(&request, now).map(Outcome::Authenticated)
            }
            Command::Touch { key } => self.touch(*key, now).map(Outcome::Touched),
            Command::BeginRefresh { key, trigger } => {
                self.begin_refresh(*key, *trigger, now).map(Outcome::RefreshBegun)
            }
            Command::RenewLease { ticket } => self.renew_lease(ticket, now).map(Outcome::LeaseRenewed),
            Command::CompleteRefresh { ticket, result } => {
                self.complete_refresh(ticket, result.clone(), now).map(Outcome::RefreshCompleted)
            }
            Command::Revoke { key, reason } => self.revoke(*key, *reason, now).map(Outcome::Revoked),
            Command::RevokeUser { user, reason } => self.revoke_user(user, *reason, now).map(Outcome::RevokedMany),
            Command::RevokeHandle { user, handle, requester } => {
                self.revoke_handle(user, *handle, *requester, now).map(Outcome::Revoked)
            }
            Command::RevokeBySid { iss, sid } => self.revoke_by_sid(iss, sid, now).map(Outcome::RevokedMany),
            Command::RevokeBySub { iss, sub } => self.revoke_by_sub(iss, sub, now).map(Outcome::RevokedMany),
            Command::Tick => self.tick(now).map(Outcome::Ticked),
        }
    }
}
