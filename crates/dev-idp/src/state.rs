//! The provider's memory: pending codes, grants, tokens, counters and injected faults.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt as _;
use serde::Serialize;
use serde_json::json;

use crate::Config;
use crate::keys::Signer;

/// How the next refresh request should misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer 400 `invalid_grant` and revoke the grant.
    InvalidGrant,
    /// Answer 500.
    ServerError,
    /// Wait this long, then answer normally.
    Delay(Duration),
}

/// Calls received, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub authorize: u64,
    pub code_exchanges: u64,
    /// Refresh requests received, whatever their outcome.
    pub refresh_requests: u64,
    /// Refresh requests that issued new tokens.
    pub refresh_grants: u64,
    pub invalid_grant: u64,
    /// Presentations of a rotated-out refresh token (each revoked its grant).
    pub reuse_detected: u64,
    pub revocations: u64,
    pub end_sessions: u64,
    pub backchannel_sent: u64,
    /// Requests for the JWKS.
    pub jwks_fetches: u64,
}

#[derive(Default)]
pub(crate) struct AtomicCounters {
    pub authorize: AtomicU64,
    pub code_exchanges: AtomicU64,
    pub refresh_requests: AtomicU64,
    pub refresh_grants: AtomicU64,
    pub invalid_grant: AtomicU64,
    pub reuse_detected: AtomicU64,
    pub revocations: AtomicU64,
    pub end_sessions: AtomicU64,
    pub backchannel_sent: AtomicU64,
    pub jwks_fetches: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) struct PendingCode {
    pub redirect_uri: String,
    pub sub: String,
    pub nonce: Option<String>,
    pub code_challenge: String,
    pub scope: String,
    pub expires: u64,
}

pub(crate) struct Grant {
    pub sub: String,
    pub sid: String,
    pub scope: String,
    pub active: bool,
}

#[derive(Default)]
pub(crate) struct Memory {
    pub codes: HashMap<String, PendingCode>,
    pub grants: HashMap<u64, Grant>,
    /// Every refresh token ever issued: its grant, and whether it is the grant's current one.
    pub refresh: HashMap<String, (u64, bool)>,
    pub access: HashMap<String, u64>,
    pub latest_sid: HashMap<String, String>,
    pub faults: VecDeque<Fault>,
    /// Faults for the grant of one provider session (by `sid`), taken before the general ones.
    pub faults_for: HashMap<String, VecDeque<Fault>>,
    pub next_grant: u64,
    /// Refresh requests received per user (`sub`), for harnesses that run several users at once.
    pub refreshes_by_sub: HashMap<String, u64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdp").field("issuer", &self.config.issuer).finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub config: Config,
    pub signer: Signer,
    pub counters: AtomicCounters,
    pub http: reqwest::Client,
    memory: Mutex<Memory>,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token response as the token endpoint sends it.
#[derive(Debug, Serialize)]
pub(crate) struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub refresh_token: String,
    pub id_token: String,
    pub scope: String,
}

/// An OAuth error response.
#[derive(Debug)]
pub(crate) struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn bad(error: &'static str, description: impl Into<String>) -> Self {
        Self { status: 400, error, description: description.into() }
    }
}

impl Inner {
    pub fn new(config: Config, signer: Signer) -> Self {
        Self {
            config,
            signer,
            counters: AtomicCounters::default(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default(),
            memory: Mutex::new(Memory::default()),
        }
    }

    pub fn memory(&self) -> MutexGuard<'_, Memory> {
        // A panic while holding the lock leaves plain maps behind; keep serving.
        self.memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn counters(&self) -> Counters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            authorize: get(&c.authorize),
            code_exchanges: get(&c.code_exchanges),
            refresh_requests: get(&c.refresh_requests),
            refresh_grants: get(&c.refresh_grants),
            invalid_grant: get(&c.invalid_grant),
            reuse_detected: get(&c.reuse_detected),
            revocations: get(&c.revocations),
            end_sessions: get(&c.end_sessions),
            backchannel_sent: get(&c.backchannel_sent),
            jwks_fetches: get(&c.jwks_fetches),
        }
    }

    pub fn push_fault(&self, fault: Fault, sid: Option<&str>) {
        let mut m = self.memory();
        match sid {
            Some(sid) => m.faults_for.entry(sid.to_owned()).or_default().push_back(fault),
            None => m.faults.push_back(fault),
        }
    }

    /// The fault the refresh presenting `refresh_token` must suffer, if any.
    pub fn take_fault(&self, refresh_token: &str) -> Option<Fault> {
        let mut m = self.memory();
        let sid = m.refresh.get(refresh_token).and_then(|(grant, _)| m.grants.get(grant)).map(|g| g.sid.clone());
        if let Some(fault) = sid.and_then(|sid| m.faults_for.get_mut(&sid)).and_then(VecDeque::pop_front) {
            return Some(fault);
        }
        m.faults.pop_front()
    }

    pub fn latest_sid(&self, sub: &str) -> Option<String> {
        self.memory().latest_sid.get(sub).cloned()
    }

    /// Counts a refresh request against the user whose grant the presented token belongs to.
    pub fn count_refresh_of(&self, refresh_token: &str) {
        let mut m = self.memory();
        let sub = m.refresh.get(refresh_token).and_then(|(grant, _)| m.grants.get(grant)).map(|g| g.sub.clone());
        if let Some(sub) = sub {
            *m.refreshes_by_sub.entry(sub).or_default() += 1;
        }
    }

    pub fn refresh_requests_of(&self, sub: &str) -> u64 {
        self.memory().refreshes_by_sub.get(sub).copied().unwrap_or(0)
    }

    /// Whether any grant of provider session `sid` is still active; `None` for an unknown `sid`.
    pub fn grant_active(&self, sid: &str) -> Option<bool> {
        let m = self.memory();
        let mut grants = m.grants.values().filter(|g| g.sid == sid).peekable();
        grants.peek()?;
        Some(grants.any(|g| g.active))
    }

    /// Records a sign-in and returns the code for it.
    pub fn issue_code(
        &self,
        sub: &str,
        redirect_uri: &str,
        nonce: Option<String>,
        challenge: &str,
        scope: &str,
    ) -> String {
        let code = random_token();
        self.memory().codes.insert(
            code.clone(),
            PendingCode {
                redirect_uri: redirect_uri.to_owned(),
                sub: sub.to_owned(),
                nonce,
                code_challenge: challenge.to_owned(),
                scope: scope.to_owned(),
                expires: now_secs() + 60,
            },
        );
        code
    }

    /// Redeems a code (once) for a new grant and its tokens.
    pub fn exchange_code(&self, code: &str, redirect_uri: &str, verifier: &str) -> Result<TokenResponse, OAuthError> {
        bump(&self.counters.code_exchanges);
        let pending =
            self.memory().codes.remove(code).ok_or_else(|| OAuthError::bad("invalid_grant", "unknown or used code"))?;
        if pending.expires < now_secs() {
            return Err(OAuthError::bad("invalid_grant", "code expired"));
        }
        if pending.redirect_uri != redirect_uri {
            return Err(OAuthError::bad("invalid_grant", "redirect_uri does not match the authorization request"));
        }
        use sha2::Digest;
        let computed = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        if computed != pending.code_challenge {
            return Err(OAuthError::bad("invalid_grant", "PKCE verifier does not match the challenge"));
        }
        let sid = random_token()[..16].to_owned();
        let grant_id = {
            let mut m = self.memory();
            m.next_grant += 1;
            let id = m.next_grant;
            m.grants.insert(
                id,
                Grant { sub: pending.sub.clone(), sid: sid.clone(), scope: pending.scope.clone(), active: true },
            );
            m.latest_sid.insert(pending.sub.clone(), sid);
            id
        };
        self.tokens(grant_id, pending.nonce.as_deref())
    }

    /// Rotates a refresh token, detecting reuse of rotated-out ones.
    pub fn refresh(&self, presented: &str) -> Result<TokenResponse, OAuthError> {
        let grant_id = {
            let mut m = self.memory();
            let Some(&(grant_id, current)) = m.refresh.get(presented) else {
                return Err(self.invalid_grant("unknown refresh token"));
            };
            if !current {
                if let Some(g) = m.grants.get_mut(&grant_id) {
                    g.active = false;
                }
                bump(&self.counters.reuse_detected);
                drop(m);
                return Err(self.invalid_grant("refresh token was already used; the grant is revoked"));
            }
            if !m.grants.get(&grant_id).is_some_and(|g| g.active) {
                drop(m);
                return Err(self.invalid_grant("grant revoked"));
            }
            m.refresh.insert(presented.to_owned(), (grant_id, false));
            grant_id
        };
        let response = self.tokens(grant_id, None)?;
        bump(&self.counters.refresh_grants);
        Ok(response)
    }

    pub fn invalid_grant(&self, description: &str) -> OAuthError {
        bump(&self.counters.invalid_grant);
        OAuthError::bad("invalid_grant", description)
    }

    /// Ends the grant a refresh token belongs to (injected `invalid_grant`).
    pub fn revoke_grant_of(&self, refresh_token: &str) {
        let mut m = self.memory();
        if let Some(&(grant_id, _)) = m.refresh.get(refresh_token)
            && let Some(g) = m.grants.get_mut(&grant_id)
        {
            g.active = false;
        }
    }

    /// RFC 7009: revoking a refresh token ends its grant; revoking an access token forgets it.
    pub fn revoke(&self, token: &str) {
        bump(&self.counters.revocations);
        self.revoke_grant_of(token);
        self.memory().access.remove(token);
    }

    /// Ends every grant of the provider session `sid` (RP-initiated logout).
    pub fn end_provider_session(&self, sid: &str) {
        for g in self.memory().grants.values_mut().filter(|g| g.sid == sid) {
            g.active = false;
        }
    }

    /// Whether an access token was issued by this provider and its grant is still active.
    pub fn access_token_active(&self, token: &str) -> bool {
        let m = self.memory();
        m.access.get(token).and_then(|id| m.grants.get(id)).is_some_and(|g| g.active)
    }

    fn tokens(&self, grant_id: u64, nonce: Option<&str>) -> Result<TokenResponse, OAuthError> {
        let (sub, sid, scope) = {
            let m = self.memory();
            let g = m.grants.get(&grant_id).ok_or_else(|| OAuthError::bad("invalid_grant", "no such grant"))?;
            (g.sub.clone(), g.sid.clone(), g.scope.clone())
        };
        let now = now_secs();
        let ttl = self.config.access_token_ttl.as_secs();
        let server_error = |e: String| OAuthError { status: 500, error: "server_error", description: e };
        let access_token = self
            .signer
            .sign(
                "at+jwt",
                &json!({
                    "iss": self.config.issuer, "sub": sub, "aud": self.config.client_id, "client_id": self.config.client_id,
                    "iat": now, "exp": now + ttl, "jti": random_token(), "scope": scope, "sid": sid,
                }),
            )
            .map_err(server_error)?;
        let mut id_claims = json!({
            "iss": self.config.issuer, "sub": sub, "aud": self.config.client_id, "iat": now, "exp": now + 600,
            "auth_time": now, "sid": sid, "name": display_name(&sub), "email": format!("{sub}@example.test"),
        });
        if let Some(nonce) = nonce {
            id_claims["nonce"] = json!(nonce);
        }
        let id_token = self.signer.sign("JWT", &id_claims).map_err(server_error)?;
        let refresh_token = random_token();
        let mut m = self.memory();
        m.refresh.insert(refresh_token.clone(), (grant_id, true));
        m.access.insert(access_token.clone(), grant_id);
        Ok(TokenResponse { access_token, token_type: "Bearer", expires_in: ttl, refresh_token, id_token, scope })
    }

    pub async fn backchannel_logout(&self, sub: Option<&str>, sid: Option<&str>) -> Result<u16, String> {
        let uri = self.config.backchannel_logout_uri.clone().ok_or("the client has no back-channel logout URI")?;
        let now = now_secs();
        let mut claims = json!({
            "iss": self.config.issuer, "aud": self.config.client_id, "iat": now, "exp": now + 120, "jti": random_token(),
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        });
        if let Some(sub) = sub {
            claims["sub"] = json!(sub);
        }
        if let Some(sid) = sid {
            claims["sid"] = json!(sid);
            self.end_provider_session(sid);
        }
        let token = self.signer.sign_logout(&claims)?;
        bump(&self.counters.backchannel_sent);
        let response = self.http.post(uri).form(&[("logout_token", token)]).send().await.map_err(|e| e.to_string())?;
        Ok(response.status().as_u16())
    }
}

/// "alice" → "Alice": the demo shows a name.
fn display_name(sub: &str) -> String {
    let mut chars = sub.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}
