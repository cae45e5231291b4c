//! Commands that end several sessions at once: logout everywhere and back-channel logout.
//!
//! Owns which sessions such a command names ([`Lookup`]), which one a back-channel logout token names
//! (its `sid` before its `sub`) and how old a logout token may be ([`logout_token_is_fresh`]), the reason each session ends with, and what the requesting browser's
//! cookies become. It finds no records: the shell (or `Registry`) looks the keys up in its indexes, runs
//! [`RevokeAll::revoke`] on each record and folds the results with [`RevokeAll::finish`].

use crate::effect::Effect;
use crate::id::SessionKey;
use crate::lifecycle::{self, Refusal, Transition};
use crate::policy::Policy;
use crate::session::{RevocationReason, Session, UserId};
use crate::time::Timestamp;

/// How long after its `iat` a logout token is still taken, besides the clock skew allowed: long enough for
/// a provider's retries, short enough that the `jti`s seen need only be kept that long.
pub const LOGOUT_TOKEN_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether a logout token issued at `iat` is still taken at `now` (both Unix seconds on the provider's
/// clock, the one its `exp` and `iat` are written in), allowing `skew`.
pub fn logout_token_is_fresh(iat: u64, now: u64, skew: std::time::Duration) -> bool {
    iat.saturating_add((LOGOUT_TOKEN_MAX_AGE + skew).as_secs()) >= now
}

/// An index of active sessions, and the value to look up in it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lookup {
    /// A user's sessions.
    User(UserId),
    /// The sessions signed in through one provider-side session.
    Sid { iss: String, sid: String },
    /// The sessions of one user at a provider.
    Sub { iss: String, sub: String },
}

impl Lookup {
    /// Whether `session` is one this lookup names: an index entry that has gone stale never ends another
    /// user's session.
    pub fn matches(&self, session: &Session) -> bool {
        match self {
            Self::User(user) => session.user() == user,
            Self::Sid { iss, sid } => {
                session.oidc().is_some_and(|o| &o.iss == iss && o.sid.as_deref() == Some(sid.as_str()))
            }
            Self::Sub { iss, sub } => session.oidc().is_some_and(|o| &o.iss == iss && &o.sub == sub),
        }
    }
}

/// A plan to end every active session a lookup names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokeAll {
    pub lookup: Lookup,
    pub reason: RevocationReason,
}

impl RevokeAll {
    /// Ends every session of `user` for `reason`.
    pub fn user(user: UserId, reason: RevocationReason) -> Self {
        Self { lookup: Lookup::User(user), reason }
    }

    /// "Log out everywhere".
    pub fn everywhere(user: UserId) -> Self {
        Self::user(user, RevocationReason::LogoutEverywhere)
    }

    /// Back-channel logout naming the provider's session.
    pub fn by_sid(iss: &str, sid: &str) -> Self {
        let lookup = Lookup::Sid { iss: iss.to_owned(), sid: sid.to_owned() };
        Self { lookup, reason: RevocationReason::BackchannelLogout }
    }

    /// Back-channel logout naming the user at the provider.
    pub fn by_sub(iss: &str, sub: &str) -> Self {
        let lookup = Lookup::Sub { iss: iss.to_owned(), sub: sub.to_owned() };
        Self { lookup, reason: RevocationReason::BackchannelLogout }
    }

    /// The target of a back-channel logout token. A token with a `sid` ends that provider session only
    /// (OpenID Connect Back-Channel Logout 1.0, section 2.4), even when it also names the user; one with
    /// neither names nothing.
    pub fn backchannel(iss: &str, sid: Option<&str>, sub: Option<&str>) -> Option<Self> {
        match (sid, sub) {
            (Some(sid), _) => Some(Self::by_sid(iss, sid)),
            (None, Some(sub)) => Some(Self::by_sub(iss, sub)),
            (None, None) => None,
        }
    }

    /// The keys an index returned, in the order to visit them: sorted, each once.
    pub fn order(&self, mut keys: Vec<SessionKey>) -> Vec<SessionKey> {
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Ends one of the looked-up sessions. A record the lookup does not name is left alone.
    pub fn revoke(
        &self,
        session: Option<&mut Session>,
        now: Timestamp,
        policy: &Policy,
    ) -> Transition<Result<(), Refusal>> {
        let session = session.filter(|s| self.lookup.matches(s));
        lifecycle::end_for(session, self.reason, now, policy)
    }

    /// Folds the visits into one transition: the sessions that ended, every record's effects, and the
    /// requesting browser's cookies cleared once when the reason says so (even when nothing was left to end).
    pub fn finish(
        &self,
        visits: impl IntoIterator<Item = (SessionKey, Transition<Result<(), Refusal>>)>,
    ) -> Transition<Vec<SessionKey>> {
        let mut ended = Vec::new();
        let mut effects = Vec::new();
        for (key, t) in visits {
            if t.outcome.is_ok() {
                ended.push(key);
            }
            effects.extend(t.effects);
        }
        if self.reason.clears_cookies() {
            effects.push(Effect::ClearCookies);
        }
        Transition { outcome: ended, effects }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_logout_token_is_fresh_for_five_minutes_and_the_skew() {
        let skew = std::time::Duration::from_secs(30);
        assert!(logout_token_is_fresh(1_000, 1_000, skew));
        assert!(logout_token_is_fresh(1_000, 1_330, skew), "the last second counts");
        assert!(!logout_token_is_fresh(1_000, 1_331, skew));
        assert!(logout_token_is_fresh(1_000, 1_300, std::time::Duration::ZERO));
        assert!(!logout_token_is_fresh(1_000, 1_301, std::time::Duration::ZERO));
        assert!(logout_token_is_fresh(u64::MAX, 5, skew), "a token from the future is exp's and nbf's to judge");
    }

    use super::*;

    #[test]
    fn a_back_channel_token_names_its_sid_before_its_sub() {
        let both = RevokeAll::backchannel("https://idp", Some("s1"), Some("u1"));
        assert_eq!(both, Some(RevokeAll::by_sid("https://idp", "s1")));
        assert_eq!(
            RevokeAll::backchannel("https://idp", None, Some("u1")),
            Some(RevokeAll::by_sub("https://idp", "u1"))
        );
        assert_eq!(RevokeAll::backchannel("https://idp", None, None), None);
        assert_eq!(both.map(|p| p.reason), Some(RevocationReason::BackchannelLogout));
    }

    #[test]
    fn logout_everywhere_clears_the_cookies_even_with_nothing_to_end() {
        let plan = RevokeAll::everywhere(UserId::new("u"));
        assert_eq!(plan.finish(Vec::new()), Transition { outcome: Vec::new(), effects: vec![Effect::ClearCookies] });
        let backchannel = RevokeAll::by_sub("i", "u");
        assert_eq!(backchannel.finish(Vec::new()).effects, Vec::new());
    }

    #[test]
    fn keys_are_visited_sorted_and_once() {
        let plan = RevokeAll::everywhere(UserId::new("u"));
        let (a, b) = (SessionKey::from_bytes([1; 32]), SessionKey::from_bytes([2; 32]));
        assert_eq!(plan.order(vec![b, a, b]), vec![a, b]);
    }

    /// A lookup names a session only when every part of it matches: issuer and `sid`, issuer and `sub`.
    #[test]
    fn a_lookup_matches_only_on_every_part() {
        use crate::lifecycle;
        use crate::session::OidcIdentity;
        use crate::testing::{grant, identity, sign_in};
        use crate::{Policy, Timestamp};

        let identity = OidcIdentity { iss: "iss".into(), sub: "sub".into(), sid: Some("sid".into()), ..identity() };
        let new = sign_in(6, identity, grant());
        let s = lifecycle::create(&new, Timestamp::from_millis(1), &Policy::hardened()).outcome;
        let sid = |iss: &str, sid: &str| Lookup::Sid { iss: iss.into(), sid: sid.into() };
        let sub = |iss: &str, sub: &str| Lookup::Sub { iss: iss.into(), sub: sub.into() };
        assert!(Lookup::User(UserId::new("u")).matches(&s));
        assert!(!Lookup::User(UserId::new("v")).matches(&s));
        assert!(sid("iss", "sid").matches(&s));
        assert!(!sid("other", "sid").matches(&s));
        assert!(!sid("iss", "other").matches(&s));
        assert!(sub("iss", "sub").matches(&s));
        assert!(!sub("other", "sub").matches(&s));
        assert!(!sub("iss", "other").matches(&s));
    }
}
