//! One session's record: who it belongs to, its tokens, its deadlines and its state.
//!
//! Owns the data of a session and the pure questions about it ("when does it expire?", "is the access token
//! due?"). It never changes a record: changes are transitions, in `lifecycle`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::ended::{ExpiryReason, RevocationReason};
use crate::id::{Handle, Secret, SessionKey};
use crate::policy::Policy;
use crate::refresh::RefreshState;
use crate::time::Timestamp;

/// The application's name for a user; sessions are grouped by it for "log out everywhere".
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct UserId(String);

impl UserId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who vouched for the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Provider {
    /// Signed in by the application itself; there are no tokens.
    Local,
    /// Signed in through an OpenID provider.
    Oidc(OidcIdentity),
}

/// The provider's names for the user and their provider-side session, used by back-channel logout, and the
/// display claims the ID token carried at login.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OidcIdentity {
    pub iss: String,
    pub sub: String,
    /// The provider's session ID (`sid` claim), when it sends one.
    pub sid: Option<String>,
    /// `name`, for display only.
    pub name: Option<String>,
    /// `email`, for display only.
    pub email: Option<String>,
}

/// What the session knows about the browser that created it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub user_agent: String,
    pub client_ip: Option<IpAddr>,
}

/// The provider's tokens. They never leave the server and are sealed at rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: Secret,
    /// When the access token was received; bounds how early it is refreshed.
    pub access_issued_at: Timestamp,
    pub access_expires_at: Timestamp,
    pub refresh_token: Option<Secret>,
    pub refresh_expires_at: Option<Timestamp>,
    pub id_token: Option<Secret>,
}

/// Where a session is in its life. `Expired` and `Revoked` are terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Active,
    Expired { at: Timestamp, reason: ExpiryReason },
    Revoked { at: Timestamp, reason: RevocationReason },
}

/// A session record. Fields are read through accessors; only `lifecycle` changes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub(crate) key: SessionKey,
    pub(crate) handle: Handle,
    pub(crate) user: UserId,
    pub(crate) provider: Provider,
    pub(crate) device: Device,
    pub(crate) created_at: Timestamp,
    pub(crate) last_used_at: Timestamp,
    pub(crate) absolute_deadline: Timestamp,
    pub(crate) state: State,
    pub(crate) refresh: RefreshState,
    /// Bumped by every change; the shell's stores compare-and-swap on it.
    pub(crate) version: u64,
    /// Sealed separately by `record`, so the plain encoding never contains a token.
    #[serde(skip)]
    pub(crate) tokens: Option<Tokens>,
}

impl Session {
    pub fn key(&self) -> SessionKey {
        self.key
    }
    pub fn handle(&self) -> Handle {
        self.handle
    }
    pub fn user(&self) -> &UserId {
        &self.user
    }
    pub fn provider(&self) -> &Provider {
        &self.provider
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }
    pub fn last_used_at(&self) -> Timestamp {
        self.last_used_at
    }
    pub fn absolute_deadline(&self) -> Timestamp {
        self.absolute_deadline
    }
    pub fn state(&self) -> State {
        self.state
    }
    pub fn refresh_state(&self) -> &RefreshState {
        &self.refresh
    }
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn tokens(&self) -> Option<&Tokens> {
        self.tokens.as_ref()
    }
    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    /// The OIDC identity, for sessions signed in through a provider.
    pub fn oidc(&self) -> Option<&OidcIdentity> {
        match &self.provider {
            Provider::Oidc(identity) => Some(identity),
            Provider::Local => None,
        }
    }

    /// When the idle timeout ends the session, if the policy has one.
    pub fn idle_deadline(&self, policy: &Policy) -> Option<Timestamp> {
        policy.idle_timeout.map(|idle| self.last_used_at.saturating_add(idle))
    }

    /// The earliest deadline and the reason it would give. Ties go to the reason listed first in
    /// [`ExpiryReason`], so the answer does not depend on evaluation order.
    pub fn expiry(&self, policy: &Policy) -> (Timestamp, ExpiryReason) {
        let mut earliest = (self.absolute_deadline, ExpiryReason::Absolute);
        let others = [
            self.idle_deadline(policy).map(|t| (t, ExpiryReason::Idle)),
            self.tokens.as_ref().and_then(|t| t.refresh_expires_at).map(|t| (t, ExpiryReason::RefreshToken)),
        ];
        for candidate in others.into_iter().flatten() {
            if candidate.0 < earliest.0 {
                earliest = candidate;
            }
        }
        earliest
    }

    /// The reason the session has expired at `now`, if a deadline has passed.
    pub fn expired_at(&self, now: Timestamp, policy: &Policy) -> Option<ExpiryReason> {
        let (deadline, reason) = self.expiry(policy);
        (now >= deadline).then_some(reason)
    }

    /// From when the access token should be refreshed, given how far ahead of expiry to act. `None` when
    /// there is nothing to refresh with. Never before half the token's lifetime has passed, so a provider
    /// that issues tokens shorter than the margin does not get a refresh on every request.
    pub fn refresh_from(&self, ahead: Duration, policy: &Policy) -> Option<Timestamp> {
        let tokens = self.tokens.as_ref()?;
        tokens.refresh_token.as_ref()?;
        let by_margin = tokens.access_expires_at.saturating_sub(ahead.saturating_add(policy.clock_skew));
        let half_life =
            tokens.access_issued_at.saturating_add(tokens.access_issued_at.until(tokens.access_expires_at) / 2);
        Some(by_margin.max(half_life))
    }

    /// Whether a request at `now` should refresh the access token first.
    pub fn refresh_due(&self, now: Timestamp, policy: &Policy) -> bool {
        self.refresh_from(policy.refresh_margin, policy).is_some_and(|from| now >= from)
    }

    /// The access token, unless it has expired at `now`. A shell must not send a request on with a token it
    /// knows the provider will refuse; when a refresh could not replace it, the request waits for a retry.
    pub fn live_access_token(&self, now: Timestamp) -> Option<&Secret> {
        self.tokens.as_ref().filter(|t| now < t.access_expires_at).map(|t| &t.access_token)
    }

    /// Whether a request at `now` should record its use.
    pub fn touch_due(&self, now: Timestamp, policy: &Policy) -> bool {
        now >= self.last_used_at.saturating_add(policy.touch_interval)
    }

    /// Seconds a cookie for this session may live from `now`: never past the absolute deadline, never beyond
    /// what browsers accept.
    pub fn cookie_max_age(&self, now: Timestamp) -> Duration {
        now.until(self.absolute_deadline).min(crate::policy::MAX_COOKIE_AGE)
    }

    /// When a tombstone may be deleted; `None` for an active session.
    pub fn delete_at(&self, policy: &Policy) -> Option<Timestamp> {
        match self.state {
            State::Active => None,
            State::Expired { at, .. } | State::Revoked { at, .. } => {
                Some(at.saturating_add(policy.tombstone_retention))
            }
        }
    }

    /// The next instant at which a sweep has something to decide about this session: its deletion (for a
    /// tombstone), or the earlier of its expiry and its background refresh. A pure function of the record,
    /// so a schedule built from it cannot drift whichever way the clock moves.
    pub fn next_event(&self, policy: &Policy) -> Option<Timestamp> {
        if let Some(at) = self.delete_at(policy) {
            return Some(at);
        }
        let (expiry, _) = self.expiry(policy);
        Some(self.background_refresh_at(policy).map_or(expiry, |at| at.min(expiry)))
    }

    /// When the background refresher should pick this session up: once its token is within the window, no
    /// lease is live and no back-off runs, provided the session was used within `background_recent_use` of
    /// that instant. A session idle by then is left to expire, or to refresh on its next request.
    pub fn background_refresh_at(&self, policy: &Policy) -> Option<Timestamp> {
        let mut at = self.refresh_from(policy.background_window, policy)?;
        if let Some(lease) = self.refresh.lease() {
            at = at.max(lease.expires_at);
        }
        if let Some(retry_at) = self.refresh.retry_at() {
            at = at.max(retry_at);
        }
        (at <= self.last_used_at.saturating_add(policy.background_recent_use)).then_some(at)
    }

    /// Whether the background refresher should refresh this session at `now`. Tombstones hold no tokens, so
    /// only active sessions can be due.
    pub fn background_refresh_due(&self, now: Timestamp, policy: &Policy) -> bool {
        self.background_refresh_at(policy).is_some_and(|at| now >= at)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Timestamp;
    use crate::lifecycle::{self, NewSession};
    use crate::refresh::TokenGrant;
    use crate::testing::{grant, identity, sign_in};

    const HOUR: Duration = Duration::from_secs(3600);

    fn session(policy: &Policy, refresh_expires_in: Option<Duration>) -> Session {
        let device = Device { user_agent: "agent/1".into(), client_ip: Some([192, 0, 2, 1].into()) };
        let grant = TokenGrant { refresh_expires_in, ..grant() };
        let new = NewSession { user: UserId::new("alice"), device, ..sign_in(5, identity(), grant) };
        lifecycle::create(&new, Timestamp::from_millis(1_000_000), policy).outcome
    }

    #[test]
    fn the_record_answers_what_it_was_created_with() {
        let s = session(&Policy::hardened(), None);
        assert_eq!(s.user().as_str(), "alice");
        assert_eq!(s.user().to_string(), "alice");
        assert_eq!(s.device().user_agent, "agent/1");
        assert_eq!(s.device().client_ip, Some([192, 0, 2, 1].into()));
        assert_eq!(s.created_at(), Timestamp::from_millis(1_000_000));
    }

    /// Deadlines that fall on the same instant give the reason listed first in `ExpiryReason`.
    #[test]
    fn tied_deadlines_give_the_first_listed_reason() {
        let policy = Policy { absolute_lifetime: HOUR, idle_timeout: Some(HOUR), ..Policy::hardened() };
        let at = Timestamp::from_millis(1_000_000).saturating_add(HOUR);
        assert_eq!(session(&policy, None).expiry(&policy), (at, ExpiryReason::Absolute));
        let policy = Policy { absolute_lifetime: 2 * HOUR, idle_timeout: Some(HOUR), ..Policy::hardened() };
        assert_eq!(session(&policy, Some(HOUR)).expiry(&policy), (at, ExpiryReason::Idle));
        assert_eq!(session(&policy, Some(HOUR / 2)).expiry(&policy).1, ExpiryReason::RefreshToken);
    }

    /// The access token is offered up to the millisecond before it expires, and never at or after.
    #[test]
    fn the_access_token_is_live_until_its_expiry() {
        let s = session(&Policy::hardened(), None);
        let expires = Timestamp::from_millis(1_000_000).saturating_add(Duration::from_secs(600));
        let before = Timestamp::from_millis(expires.as_millis() - 1);
        assert_eq!(s.live_access_token(before).map(Secret::expose), Some("a"));
        assert_eq!(s.live_access_token(expires), None);
        assert_eq!(s.live_access_token(expires.saturating_add(Duration::from_millis(1))), None);
    }
}
