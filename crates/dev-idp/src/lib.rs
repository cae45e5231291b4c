//! A small OpenID provider for bff-session's demo, its tests and the conformance harness.
//!
//! It implements what a Backend-for-Frontend exercises: discovery, JWKS, an authorize page (a form with a
//! user name; `login_hint=NAME` signs NAME in at once), the token endpoint (authorization code with PKCE
//! S256; refresh with rotation and reuse detection: presenting a rotated-out refresh token answers
//! `invalid_grant` and revokes the whole grant), revocation (RFC 7009), RP-initiated logout, and sending
//! back-channel logout tokens. Tests read its counters and make it fail the next refresh.
//!
//! It is a development tool: one confidential client, state in memory, keys generated at start. It never
//! runs in front of real users.

mod keys;
mod routes;
mod state;

use std::sync::Arc;
use std::time::Duration;

pub use keys::Signer;
pub use state::{Counters, Fault};

/// The provider's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The issuer URL, exactly as discovery will report it (no trailing slash).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Redirect URIs the client may use.
    pub redirect_uris: Vec<String>,
    /// Where the client may ask to be sent after RP-initiated logout.
    pub post_logout_redirect_uris: Vec<String>,
    /// The client's back-channel logout endpoint.
    pub backchannel_logout_uri: Option<String>,
    /// Lifetime of access tokens; short in the demo so refresh is visible.
    pub access_token_ttl: Duration,
}

/// A running provider's handle: its routes, counters and fault injection.
#[derive(Clone, Debug)]
pub struct DevIdp {
    inner: Arc<state::Inner>,
}

impl DevIdp {
    /// A provider with a freshly generated RSA key.
    pub fn new(config: Config) -> Result<Self, keys::KeyError> {
        Ok(Self { inner: Arc::new(state::Inner::new(config, Signer::generate()?)) })
    }

    /// A provider that signs with `signer` (tests share one key to avoid generating many).
    pub fn with_signer(config: Config, signer: Signer) -> Self {
        Self { inner: Arc::new(state::Inner::new(config, signer)) }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The warp routes, relative to the issuer's path.
    pub fn routes(&self) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
        routes::routes(self.inner.clone())
    }

    /// How many calls of each kind the provider has received.
    pub fn counters(&self) -> Counters {
        self.inner.counters()
    }

    /// Makes the next refresh request fail (or stall) as `fault` says.
    pub fn fail_next_refresh(&self, fault: Fault) {
        self.inner.push_fault(fault, None);
    }

    /// Makes the next refresh of the grant behind provider session `sid` fail as `fault` says; other
    /// grants are unaffected, whatever order their refreshes come in.
    pub fn fail_next_refresh_of(&self, sid: &str, fault: Fault) {
        self.inner.push_fault(fault, Some(sid));
    }

    /// Sends a back-channel logout token naming `sub` and/or `sid` to the client; returns the HTTP status
    /// the client answered.
    pub async fn backchannel_logout(&self, sub: Option<&str>, sid: Option<&str>) -> Result<u16, String> {
        self.inner.backchannel_logout(sub, sid).await
    }

    /// Signs an arbitrary logout token with the provider's key, for tests that forge variants.
    pub fn sign_logout_token(&self, claims: &serde_json::Value) -> Result<String, String> {
        self.inner.signer.sign_logout(claims)
    }

    /// Signs arbitrary claims with the provider's key under any `typ`, for tests that forge variants.
    pub fn sign_with_typ(&self, typ: &str, claims: &serde_json::Value) -> Result<String, String> {
        self.inner.signer.sign(typ, claims)
    }

    /// Refresh requests received for grants of user `sub`, whatever their outcome.
    pub fn refresh_requests_of(&self, sub: &str) -> u64 {
        self.inner.refresh_requests_of(sub)
    }

    /// Whether provider session `sid` still has an active grant (its refresh token still works); `None`
    /// when no grant was ever issued for it.
    pub fn grant_active(&self, sid: &str) -> Option<bool> {
        self.inner.grant_active(sid)
    }

    /// The `sid` of the provider session most recently created for `sub`.
    pub fn latest_sid(&self, sub: &str) -> Option<String> {
        self.inner.latest_sid(sub)
    }
}
