//! Fixtures shared by the criterion benchmarks (`benches/`) and the load test (`src/bin/loadtest.rs`).

use std::time::Duration;

use bff_session_core::{Device, Login, NewSession, OidcIdentity, Secret, SessionId, TokenGrant, UserId};

/// A session ID derived from `n` and a tag, so different benchmarks never share IDs.
pub fn id(tag: u8, n: u64) -> SessionId {
    let mut bytes = [tag; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    SessionId::from_random_bytes(bytes)
}

/// A session as a real login leaves it: OIDC, an 800-byte access token, a refresh token and a 900-byte ID
/// token (about 1.8 KB sealed), spread over `users` users.
pub fn oidc_session(tag: u8, n: u64, users: u64, expires_in: Duration) -> NewSession {
    let sub = format!("user{}", n % users.max(1));
    NewSession {
        id: id(tag, n),
        user: UserId::new(sub.clone()),
        login: Login::Oidc {
            identity: OidcIdentity {
                iss: "https://idp.example".into(),
                sub,
                sid: Some(format!("sid{n}")),
                name: None,
                email: None,
            },
            grant: TokenGrant {
                access_token: Secret::new("a".repeat(800)),
                expires_in: Some(expires_in),
                refresh_token: Some(Secret::new("r".repeat(43))),
                refresh_expires_in: None,
                id_token: Some(Secret::new("i".repeat(900))),
            },
        },
        device: Device {
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) bench".into(),
            client_ip: Some([10, 1, 2, 3].into()),
        },
    }
}
