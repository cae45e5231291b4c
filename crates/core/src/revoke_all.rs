//! Commands that end several sessions at once: logout everywhere, back-channel logout, and a sign-in past
//! the sessions allowed per user.
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

/// The sessions a sign-in pushes out when a user may hold at most `max` at once: of `sessions` (the user's
/// records, as the user index found them), the active ones other than `new` beyond the `max - 1` most
/// recently used. The least recently used go first; among equals the older, then the smaller key, so two
/// shells choose alike. `max` of 0 is read as 1: the new session itself always stays.
pub fn over_limit(sessions: &[&Session], new: SessionKey, max: usize) -> Vec<SessionKey> {
    let mut others: Vec<&Session> = sessions.iter().copied().filter(|s| s.is_active() && s.key() != new).collect();
    let keep = max.max(1) - 1;
    if others.len() <= keep {
        return Vec::new();
    }
    others.sort_by_key(|s| (s.last_used_at(), s.created_at(), s.key()));
    others.truncate(others.len() - keep);
    others.into_iter().map(Session::key).collect()
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

    /// A sign-in past the sessions allowed per user: ends those of its user that [`over_limit`] picks.
    pub fn over_limit(user: UserId) -> Self {
        Self::user(user, RevocationReason::SessionLimit)
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

    /// `SessionLimitKeepsTheMostRecent`: a sign-in pushes out exactly enough of the user's other active
    /// sessions to leave `max - 1` beside it, and none it pushes out was used after one it keeps. Judged on
    /// the instants the sessions were created and used at, as generated, not on what core reports.
    #[test]
    fn session_limit_keeps_the_most_recent() {
        use proptest::prelude::*;

        use crate::lifecycle;
        use crate::testing::{grant, identity, sign_in};
        use crate::{Policy, Timestamp};

        let policy = Policy { touch_interval: std::time::Duration::from_secs(1), ..Policy::hardened() };
        // Each session: created at `c` seconds, used `u` seconds later (0: never used again), ended or not.
        let sessions = proptest::collection::vec((0u64..50, 0u64..50, proptest::bool::weighted(0.2)), 0..12);
        proptest!(|(specs in sessions, max in 0usize..6, new_index in 0usize..12)| {
            let mut all = Vec::new();
            let mut last_use = Vec::new();
            for (i, (created, used, ended)) in specs.iter().enumerate() {
                let new = sign_in(i as u8 + 1, identity(), grant());
                let mut s = lifecycle::create(&new, Timestamp::from_millis(created * 1_000), &policy).outcome;
                let mut at = *created;
                if *used > 0 {
                    at = created + 1 + used;
                    let t = lifecycle::touch(Some(&mut s), Timestamp::from_millis(at * 1_000), &policy);
                    prop_assert_eq!(t.outcome, Ok(true));
                }
                if *ended {
                    let _ = lifecycle::revoke(Some(&mut s), RevocationReason::Logout, Timestamp::from_millis(at * 1_000), &policy);
                }
                last_use.push((s.key(), at * 1_000, !ended));
                all.push(s);
            }
            let new = all.get(new_index).map_or(SessionKey::from_bytes([0xee; 32]), Session::key);
            let refs: Vec<&Session> = all.iter().collect();
            let out = over_limit(&refs, new, max);
            let candidates: Vec<_> = last_use.iter().filter(|(k, _, live)| *live && *k != new).collect();
            let keep = max.max(1) - 1;
            prop_assert_eq!(out.len(), candidates.len().saturating_sub(keep));
            prop_assert!(!out.contains(&new));
            for (key, used, live) in &last_use {
                if out.contains(key) {
                    prop_assert!(*live, "an ended session is not pushed out again");
                    for (other, other_used, other_live) in &candidates {
                        if !out.contains(other) && *other_live {
                            prop_assert!(used <= other_used, "{key:?} pushed out though used after {other:?}");
                        }
                    }
                }
            }
        });
    }
}
