//! The server as an OpenID Connect relying party.
//!
//! Owns everything said to the provider: discovery, the authorization URL (state, nonce, PKCE S256), the
//! code exchange and ID-token validation (openidconnect), refresh, RFC 7009 revocation, the RP-initiated
//! logout URL, and validation of back-channel logout tokens (jsonwebtoken against the provider's JWKS, by
//! the rules of OpenID Connect Back-Channel Logout 1.0). It never touches a session: it turns provider
//! answers into core's vocabulary ([`TokenGrant`], [`OidcIdentity`]).

use std::fmt;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bff_session_core::{LoginSecrets, OidcIdentity, RefreshError, Secret, TokenGrant};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreErrorResponseType, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError,
    Scope, TokenResponse,
};
use serde::Deserialize;
use tracing::warn;

type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How often a token naming an unknown key may make the JWKS be fetched again.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// Why talking to the provider failed. Messages never contain a token or code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcError {
    /// Discovery or configuration failed at start.
    Setup(String),
    /// The provider could not be reached or answered with an error (retryable).
    Unavailable(String),
    /// The provider refused the code or the ID token is invalid.
    Rejected(String),
}

impl fmt::Display for OidcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(e) => write!(f, "OpenID provider setup failed: {e}"),
            Self::Unavailable(e) => write!(f, "OpenID provider unavailable: {e}"),
            Self::Rejected(e) => write!(f, "OpenID provider response rejected: {e}"),
        }
    }
}

impl std::error::Error for OidcError {}

/// The provider calls a session makes after login: refreshing its tokens and revoking them. The service
/// holds one of these rather than an [`Oidc`], so the store conformance suite can drive it with no provider.
#[async_trait]
pub trait TokenEndpoint: Send + Sync + fmt::Debug {
    /// One call to the token endpoint with a refresh token, its answer in core's terms.
    async fn refresh(&self, refresh_token: &Secret) -> Result<TokenGrant, RefreshError>;

    /// RFC 7009 revocation of a refresh token.
    async fn revoke(&self, token: &Secret) -> Result<(), OidcError>;
}

/// Why a logout token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutTokenError {
    Malformed(String),
    Signature(String),
    Claims(&'static str),
}

impl fmt::Display for LogoutTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "logout token is malformed: {e}"),
            Self::Signature(e) => write!(f, "logout token signature or standard claims invalid: {e}"),
            Self::Claims(what) => write!(f, "logout token claims invalid: {what}"),
        }
    }
}

/// The claims of a valid logout token that the server acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutClaims {
    pub iss: String,
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    pub exp: u64,
}

/// A login ready to become a session.
#[derive(Debug)]
pub struct LoginResult {
    pub identity: OidcIdentity,
    pub grant: TokenGrant,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// What an authorization redirect must remember.
#[derive(Debug)]
pub struct AuthorizationStart {
    pub url: String,
    pub secrets: LoginSecrets,
}

#[derive(Deserialize)]
struct ExtraMetadata {
    end_session_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    jwks_uri: String,
    /// RFC 9207: the provider names itself in every authorization response.
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

pub struct Oidc {
    client: Client,
    http: openidconnect::reqwest::Client,
    issuer: String,
    client_id: String,
    client_secret: String,
    end_session: Option<String>,
    revocation: Option<String>,
    jwks_uri: String,
    jwks: RwLock<JwkSet>,
    /// When the JWKS was last fetched again for an unknown key.
    jwks_fetched: Mutex<Option<Instant>>,
    skew: Duration,
    scopes: Vec<String>,
    /// Whether authorization responses must carry `iss` (RFC 9207), as the provider advertises.
    iss_parameter: bool,
}

impl fmt::Debug for Oidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oidc").field("issuer", &self.issuer).field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

/// The settings the relying party needs.
#[derive(Debug, Clone)]
pub struct RpConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub skew: Duration,
    pub timeout: Duration,
}

impl Oidc {
    pub async fn discover(cfg: &RpConfig) -> Result<Self, OidcError> {
        let http = Self::http_client(cfg)?;
        let issuer = IssuerUrl::new(cfg.issuer.clone()).map_err(|e| OidcError::Setup(format!("issuer: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| OidcError::Setup(format!("discovery of {}: {e}", cfg.issuer)))?;
        let extra: ExtraMetadata = get_json(&http, &format!("{}/.well-known/openid-configuration", cfg.issuer)).await?;
        let jwks: JwkSet = get_json(&http, &extra.jwks_uri).await?;
        Self::assemble(cfg, http, metadata, extra, jwks)
    }

    /// The relying party from a discovery document and a JWKS already in hand, with no request made: for the
    /// in-process fuzzer, where no provider runs. The provider's endpoints are still called when needed.
    pub fn from_documents(cfg: &RpConfig, discovery: &str, jwks: &str) -> Result<Self, OidcError> {
        let setup = |what: &str, e: serde_json::Error| OidcError::Setup(format!("{what}: {e}"));
        let metadata: CoreProviderMetadata =
            serde_json::from_str(discovery).map_err(|e| setup("discovery document", e))?;
        if metadata.issuer().as_str() != cfg.issuer {
            return Err(OidcError::Setup(format!("discovery document names issuer {}", metadata.issuer().as_str())));
        }
        let extra: ExtraMetadata = serde_json::from_str(discovery).map_err(|e| setup("discovery document", e))?;
        let jwks: JwkSet = serde_json::from_str(jwks).map_err(|e| setup("JWKS", e))?;
        Self::assemble(cfg, Self::http_client(cfg)?, metadata, extra, jwks)
    }

    fn http_client(cfg: &RpConfig) -> Result<openidconnect::reqwest::Client, OidcError> {
        openidconnect::reqwest::ClientBuilder::new()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| OidcError::Setup(e.to_string()))
    }

    fn assemble(
        cfg: &RpConfig,
        http: openidconnect::reqwest::Client,
        metadata: CoreProviderMetadata,
        extra: ExtraMetadata,
        jwks: JwkSet,
    ) -> Result<Self, OidcError> {
        let redirect =
            RedirectUrl::new(cfg.redirect_uri.clone()).map_err(|e| OidcError::Setup(format!("redirect uri: {e}")))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(cfg.client_id.clone()),
            Some(ClientSecret::new(cfg.client_secret.clone())),
        )
        .set_redirect_uri(redirect);
        Ok(Self {
            client,
            http,
            issuer: cfg.issuer.clone(),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            end_session: extra.end_session_endpoint,
            revocation: extra.revocation_endpoint,
            jwks_uri: extra.jwks_uri,
            iss_parameter: extra.authorization_response_iss_parameter_supported,
            jwks: RwLock::new(jwks),
            jwks_fetched: Mutex::new(None),
            skew: cfg.skew,
            scopes: cfg.scopes.clone(),
        })
    }

    /// RFC 9207: whether an authorization response's `iss` parameter is acceptable. A provider that
    /// advertises the parameter must send its own issuer, so a response from another provider (mix-up) is
    /// refused; one that does not advertise it is not asked for it.
    pub fn accepts_response_issuer(&self, iss: Option<&str>) -> bool {
        !self.iss_parameter || iss == Some(self.issuer.as_str())
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The authorization URL with fresh state, nonce and PKCE verifier.
    pub fn start(&self, login_hint: Option<&str>) -> AuthorizationStart {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self
            .client
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .set_pkce_challenge(challenge);
        // openidconnect adds `openid` itself.
        for scope in self.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if let Some(hint) = login_hint {
            request = request.add_extra_param("login_hint", hint.to_owned());
        }
        if self.scopes.iter().any(|s| s == "offline_access") {
            // Some providers drop offline_access silently unless consent is prompted.
            request = request.add_extra_param("prompt", "consent");
        }
        let (url, state, nonce) = request.url();
        AuthorizationStart {
            url: url.to_string(),
            secrets: LoginSecrets {
                state: Secret::new(state.secret().clone()),
                nonce: Secret::new(nonce.secret().clone()),
                verifier: Secret::new(verifier.secret().clone()),
            },
        }
    }

    /// Exchanges a code and validates the ID token (signature, iss, aud, exp, nonce).
    pub async fn exchange(&self, code: &str, secrets: &LoginSecrets) -> Result<LoginResult, OidcError> {
        let (verifier, nonce) = (secrets.verifier.expose(), secrets.nonce.expose());
        let request = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Setup(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()));
        let response = request.request_async(&self.http).await.map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => OidcError::Rejected(format!("token endpoint: {}", r.error())),
            other => OidcError::Unavailable(format!("token endpoint: {other}")),
        })?;
        let id_token = response.id_token().ok_or_else(|| OidcError::Rejected("no id_token in response".into()))?;
        let skew = chrono_like_skew(self.skew);
        // The configured skew on both sides of the provider's clock: an expired token is accepted only within
        // it, and a token issued in the future only within it.
        let verifier =
            self.client.id_token_verifier().set_time_fn(move || openidconnect_now() - skew).set_issue_time_verifier_fn(
                move |iat| {
                    if iat > openidconnect_now() + skew { Err("issued in the future".to_owned()) } else { Ok(()) }
                },
            );
        let claims = id_token
            .claims(&verifier, &Nonce::new(nonce.to_owned()))
            .map_err(|e| OidcError::Rejected(format!("id_token: {e}")))?;
        let sid = jwt_payload(&id_token.to_string()).and_then(|v| v["sid"].as_str().map(str::to_owned));
        let name = claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned());
        let email = claims.email().map(|e| e.as_str().to_owned());
        let identity = OidcIdentity {
            iss: claims.issuer().as_str().to_owned(),
            sub: claims.subject().as_str().to_owned(),
            sid,
            name: name.clone(),
            email: email.clone(),
        };
        let grant = TokenGrant {
            access_token: Secret::new(response.access_token().secret().clone()),
            expires_in: response.expires_in(),
            refresh_token: response.refresh_token().map(|t| Secret::new(t.secret().clone())),
            refresh_expires_in: None,
            id_token: Some(Secret::new(id_token.to_string())),
        };
        Ok(LoginResult { identity, grant, name, email })
    }

    /// The provider's end-session URL for RP-initiated logout, if it has one.
    pub fn end_session_url(
        &self,
        id_token_hint: Option<&Secret>,
        post_logout_redirect_uri: &str,
        state: &str,
    ) -> Option<String> {
        let base = self.end_session.as_ref()?;
        let mut url = url::Url::parse(base).ok()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(hint) = id_token_hint {
                q.append_pair("id_token_hint", hint.expose());
            }
            q.append_pair("client_id", &self.client_id);
            q.append_pair("post_logout_redirect_uri", post_logout_redirect_uri);
            q.append_pair("state", state);
        }
        Some(url.to_string())
    }

    /// Validates a back-channel logout token: signature and algorithm against the JWKS, iss, aud, iat,
    /// exp, the events claim, no nonce, a sub or sid, and a jti (whose replay the caller checks).
    pub async fn validate_logout_token(&self, token: &str) -> Result<LogoutClaims, LogoutTokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| LogoutTokenError::Malformed(e.to_string()))?;
        // RFC 8725 §3.11: a logout token says what it is, so an ID token can never pass for one.
        if let Some(typ) = &header.typ
            && !(typ.eq_ignore_ascii_case("logout+jwt") || typ.eq_ignore_ascii_case("application/logout+jwt"))
        {
            return Err(LogoutTokenError::Claims("typ is not logout+jwt"));
        }
        let key = match self.key_for(&header) {
            Some(key) => key,
            None => {
                // The provider may have rotated its keys: fetch once more, but at most once per interval, so
                // tokens naming unknown keys cannot make this server hammer the provider.
                if self.may_refetch_jwks()
                    && let Ok(fresh) = get_json::<JwkSet>(&self.http, &self.jwks_uri).await
                    && let Ok(mut jwks) = self.jwks.write()
                {
                    *jwks = fresh;
                }
                self.key_for(&header).ok_or_else(|| LogoutTokenError::Signature("no matching key".into()))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["iss", "aud", "iat", "exp"]);
        validation.leeway = self.skew.as_secs();
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| LogoutTokenError::Signature(e.to_string()))?;
        let c = data.claims;
        if !c["events"].get(BACKCHANNEL_EVENT).is_some_and(serde_json::Value::is_object) {
            return Err(LogoutTokenError::Claims("events claim lacks the back-channel logout event"));
        }
        if c.get("nonce").is_some() {
            return Err(LogoutTokenError::Claims("a logout token must not contain a nonce"));
        }
        let sub = c["sub"].as_str().map(str::to_owned);
        let sid = c["sid"].as_str().map(str::to_owned);
        if sub.is_none() && sid.is_none() {
            return Err(LogoutTokenError::Claims("neither sub nor sid"));
        }
        // A token issued long ago is refused even before it expires: its jti may have been forgotten.
        let iat = c["iat"].as_u64().ok_or(LogoutTokenError::Claims("iat is not a number"))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if !bff_session_core::revoke_all::logout_token_is_fresh(iat, now, self.skew) {
            return Err(LogoutTokenError::Claims("iat is too old"));
        }
        let jti = c["jti"].as_str().filter(|j| !j.is_empty()).ok_or(LogoutTokenError::Claims("no jti"))?.to_owned();
        let exp = c["exp"].as_u64().ok_or(LogoutTokenError::Claims("exp is not a number"))?;
        Ok(LogoutClaims { iss: self.issuer.clone(), sub, sid, jti, exp })
    }

    /// Whether the JWKS may be fetched again now; claims the slot if so.
    fn may_refetch_jwks(&self) -> bool {
        let Ok(mut last) = self.jwks_fetched.lock() else { return false };
        if last.is_some_and(|at| at.elapsed() < JWKS_REFETCH_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    fn key_for(&self, header: &jsonwebtoken::Header) -> Option<DecodingKey> {
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::ES256 | Algorithm::PS256
        ) {
            return None;
        }
        let jwks = self.jwks.read().ok()?;
        let jwk = match &header.kid {
            Some(kid) => jwks.find(kid)?,
            None if jwks.keys.len() == 1 => &jwks.keys[0],
            None => return None,
        };
        DecodingKey::from_jwk(jwk).ok()
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &openidconnect::reqwest::Client,
    url: &str,
) -> Result<T, OidcError> {
    let response = http.get(url).send().await.map_err(|e| OidcError::Setup(format!("GET {url}: {e}")))?;
    if !response.status().is_success() {
        return Err(OidcError::Setup(format!("GET {url}: {}", response.status())));
    }
    response.json().await.map_err(|e| OidcError::Setup(format!("GET {url}: {e}")))
}

/// The payload of a compact JWS, unverified: only for claims of a token already verified.
pub fn jwt_payload(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

fn openidconnect_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn chrono_like_skew(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or_default()
}

#[async_trait]
impl TokenEndpoint for Oidc {
    /// One call to the token endpoint with a refresh token.
    async fn refresh(&self, refresh_token: &Secret) -> Result<TokenGrant, RefreshError> {
        let token = RefreshToken::new(refresh_token.expose().to_owned());
        let request = self.client.exchange_refresh_token(&token).map_err(|e| {
            warn!(error = %e, "refresh request not built");
            RefreshError::Transient
        })?;
        match request.request_async(&self.http).await {
            Ok(r) => Ok(TokenGrant {
                access_token: Secret::new(r.access_token().secret().clone()),
                expires_in: r.expires_in(),
                refresh_token: r.refresh_token().map(|t| Secret::new(t.secret().clone())),
                refresh_expires_in: None,
                id_token: r.id_token().map(|t| Secret::new(t.to_string())),
            }),
            Err(RequestTokenError::ServerResponse(r)) if *r.error() == CoreErrorResponseType::InvalidGrant => {
                Err(RefreshError::InvalidGrant)
            }
            Err(e) => {
                // The detail goes to the log only: core's answer is the same for every passing fault.
                warn!(error = %e, "refresh failed transiently");
                Err(RefreshError::Transient)
            }
        }
    }

    /// RFC 7009 revocation of a refresh token. Failures are reported, never retried forever.
    async fn revoke(&self, token: &Secret) -> Result<(), OidcError> {
        let Some(url) = &self.revocation else { return Ok(()) };
        let response = self
            .http
            .post(url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[("token", token.expose()), ("token_type_hint", "refresh_token")])
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(e.without_url().to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(OidcError::Unavailable(format!("revocation answered {}", response.status())))
        }
    }
}
