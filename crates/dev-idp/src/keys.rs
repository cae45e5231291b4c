//! The provider's signing key and its JWKS.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::json;

/// Why a key could not be made.
#[derive(Debug)]
pub struct KeyError(String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot create the provider's signing key: {}", self.0)
    }
}

impl std::error::Error for KeyError {}

/// An RS256 signer and the JWKS that verifies it.
#[derive(Clone)]
pub struct Signer {
    kid: String,
    key: EncodingKey,
    jwks: serde_json::Value,
    /// PKCS#1 PEM of the private key, for tests that need to forge with a *foreign* key.
    pem: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({})", self.kid)
    }
}

impl Signer {
    /// A new 2048-bit RSA key from the OS random source.
    pub fn generate() -> Result<Self, KeyError> {
        let private = RsaPrivateKey::new(&mut rand_core_06::OsRng, 2048).map_err(|e| KeyError(e.to_string()))?;
        let pem = private.to_pkcs1_pem(LineEnding::LF).map_err(|e| KeyError(e.to_string()))?.to_string();
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| KeyError(e.to_string()))?;
        let public = RsaPublicKey::from(&private);
        let n = URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
        let kid = URL_SAFE_NO_PAD.encode(&sha2_digest(n.as_bytes())[..12]);
        let jwks = json!({ "keys": [{ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e }] });
        Ok(Self { kid, key, jwks, pem })
    }

    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    pub fn private_key_pem(&self) -> &str {
        &self.pem
    }

    /// Signs `claims` as a JWT with `typ`.
    pub fn sign(&self, typ: &str, claims: &serde_json::Value) -> Result<String, String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| e.to_string())
    }

    pub fn sign_logout(&self, claims: &serde_json::Value) -> Result<String, String> {
        self.sign("logout+jwt", claims)
    }
}

fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

impl Signer {
    /// The public half, for verifying what this signer signed.
    pub fn decoding_key(&self) -> Option<jsonwebtoken::DecodingKey> {
        let key = &self.jwks["keys"][0];
        jsonwebtoken::DecodingKey::from_rsa_components(key["n"].as_str()?, key["e"].as_str()?).ok()
    }
}
