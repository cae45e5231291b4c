//! Sign-ins for the unit tests, built as a browser's first request builds them: one OpenID Connect grant,
//! one new session. Test-only; the integration tests have their own model in `tests/support`.

use std::time::Duration;

use crate::lifecycle::{Login, NewSession};
use crate::refresh::TokenGrant;
use crate::session::{Device, OidcIdentity, UserId};
use crate::{Secret, SessionId};

/// Issuer `i`, subject `s`, no provider session.
pub(crate) fn identity() -> OidcIdentity {
    OidcIdentity { iss: "i".into(), sub: "s".into(), sid: None, name: None, email: None }
}

/// Access token `a` for ten minutes and refresh token `r`.
pub(crate) fn grant() -> TokenGrant {
    TokenGrant {
        access_token: Secret::new("a"),
        expires_in: Some(Duration::from_secs(600)),
        refresh_token: Some(Secret::new("r")),
        refresh_expires_in: None,
        id_token: None,
    }
}

/// User `u` signing in on a default device with an ID made of `id` repeated.
pub(crate) fn sign_in(id: u8, identity: OidcIdentity, grant: TokenGrant) -> NewSession {
    NewSession {
        id: SessionId::from_random_bytes([id; 32]),
        user: UserId::new("u"),
        login: Login::Oidc { identity, grant },
        device: Device::default(),
    }
}
