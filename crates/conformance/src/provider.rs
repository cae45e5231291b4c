//! The harness's OpenID provider: `bff-session-dev-idp`, served on a local address.
//!
//! Owns starting the provider with the target's redirect and back-channel URIs registered, and stopping
//! it. The provider's counters and fault injection are what the oracle's refresh count is checked against.

use std::net::SocketAddr;
use std::time::Duration;

use bff_session_dev_idp::{Config, DevIdp};
use tokio::sync::oneshot;

use crate::mapping::Mapping;

/// The client the target must be registered as.
pub const CLIENT_ID: &str = "conformance";
pub const CLIENT_SECRET: &str = "conformance-secret";

/// A provider serving on 127.0.0.1 until dropped.
#[derive(Debug)]
pub struct Provider {
    pub idp: DevIdp,
    pub issuer: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

/// Why the provider could not start.
#[derive(Debug)]
pub enum ProviderError {
    Bind(std::io::Error),
    Key(String),
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bind(e) => write!(f, "cannot listen for the provider: {e}"),
            Self::Key(e) => write!(f, "cannot generate the provider's signing key: {e}"),
        }
    }
}

impl std::error::Error for ProviderError {}

impl Provider {
    /// Starts the provider on `listen` (port 0 picks one) for a target at `target` (an origin).
    pub async fn start(
        listen: SocketAddr,
        target: &str,
        mapping: &Mapping,
        token_ttl: Duration,
    ) -> Result<Self, ProviderError> {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(ProviderError::Bind)?;
        let addr = listener.local_addr().map_err(ProviderError::Bind)?;
        let issuer = format!("http://{addr}");
        let target = target.trim_end_matches('/');
        let idp = DevIdp::new(Config {
            issuer: issuer.clone(),
            client_id: CLIENT_ID.to_owned(),
            client_secret: CLIENT_SECRET.to_owned(),
            redirect_uris: vec![format!("{target}{}", mapping.callback)],
            post_logout_redirect_uris: vec![format!("{target}/")],
            backchannel_logout_uri: Some(format!("{target}{}", mapping.backchannel_logout)),
            access_token_ttl: token_ttl,
        })
        .map_err(|e| ProviderError::Key(e.to_string()))?;
        let (tx, rx) = oneshot::channel::<()>();
        let server = warp::serve(idp.routes()).incoming(listener).graceful(async move {
            let _ = rx.await;
        });
        tokio::spawn(server.run());
        Ok(Self { idp, issuer, addr, stop: Some(tx) })
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
