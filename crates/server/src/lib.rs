//! The reference Backend-for-Frontend session server: warp, sled and OpenID Connect around
//! `bff-session-core`.
//!
//! The server is a shell: `http` parses requests, `service` runs core's transitions on records from
//! `store` and carries out their effects, `oidc` talks to the provider. See ARCHITECTURE.md.

pub mod audit;
pub mod clock;
pub mod config;
pub mod demo;
pub mod http;
pub mod login;
pub mod metrics;
pub mod oidc;
pub mod proxy;
pub mod seal;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bff_session_core::cookie::Cookies;
use bff_session_dev_idp::DevIdp;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::Filter;

use crate::config::{Provider, Settings, Upstream};
use crate::http::App;
use crate::oidc::{Oidc, RpConfig};
use crate::service::Service;

/// Why the server could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A running server.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub public_url: String,
    pub app: Arc<App>,
    /// The embedded dev provider, when there is one.
    pub idp: Option<DevIdp>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting connections, lets requests in flight finish, stops the background tasks, flushes
    /// the store and waits, so the data folder can be opened again.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await;
    }

    /// Waits until the server stops (after a signal passed to [`start_with_shutdown`]), then winds down.
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
        self.app.service.stop_background();
        for t in self.background.drain(..) {
            let _ = t.await;
        }
        if let Err(e) = self.app.service.store.flush().await {
            tracing::warn!(error = %e, "final flush failed");
        }
    }
}

/// Whether cookies get `Secure` and the `__Host-` prefix.
fn secure_origin(public_url: &str) -> bool {
    url::Url::parse(public_url).is_ok_and(|u| u.scheme() == "https" || u.host_str() == Some("localhost"))
}

/// Starts the server; it stops with [`Running::stop`].
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    start_with_shutdown(settings, std::future::pending()).await
}

/// Starts the server; it also stops when `signal` completes.
pub async fn start_with_shutdown(
    settings: Settings,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| StartError(format!("{what}: {e}"));
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|e| fail(&format!("cannot create data folder {}", settings.data_dir.display()), &e))?;
    let key_file = settings.key_file.clone().unwrap_or_else(|| settings.data_dir.join("token.key"));
    let sealer =
        seal::TokenSealer::from_file(&key_file, settings.key_file.is_none()).map_err(|e| fail("token key", &e))?;
    let location =
        settings.store.clone().unwrap_or_else(|| store::Location::Sled(settings.data_dir.join("sessions.sled")));
    let store = store::Store::open(&location, sealer, settings.policy.clone(), settings.cache_bytes)
        .await
        .map_err(|e| fail("cannot open the session store", &e))?;

    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| fail(&format!("cannot listen on {}", settings.listen), &e))?;
    let addr = listener.local_addr().map_err(|e| fail("listener", &e))?;
    let public_url = settings.public_url.clone().unwrap_or_else(|| {
        if settings.demo { format!("http://localhost:{}", addr.port()) } else { format!("http://{addr}") }
    });

    let idp = match &settings.provider {
        Provider::Embedded { access_token_ttl } => {
            let mut secret = [0u8; 24];
            getrandom::fill(&mut secret).map_err(|e| fail("random", &e))?;
            let config = bff_session_dev_idp::Config {
                issuer: format!("{public_url}/idp"),
                client_id: "bff-session-demo".into(),
                client_secret: secret.iter().map(|b| format!("{b:02x}")).collect(),
                redirect_uris: vec![format!("{public_url}/auth/callback")],
                post_logout_redirect_uris: vec![format!("{public_url}/")],
                backchannel_logout_uri: Some(format!("http://{addr}/auth/backchannel-logout")),
                access_token_ttl: *access_token_ttl,
            };
            Some(DevIdp::new(config).map_err(|e| fail("dev provider", &e))?)
        }
        Provider::External { .. } => None,
    };

    // The app needs the provider's discovery document, which in the demo this very server serves: start
    // serving first and answer 503 until the app is ready.
    let cell: Arc<OnceLock<Arc<App>>> = Arc::new(OnceLock::new());
    let bff = http::routes(cell.clone());
    let routes = match &idp {
        Some(idp) => warp::path("idp").and(idp.routes()).or(bff).unify().boxed(),
        None => bff,
    };
    let (tx, rx) = oneshot::channel::<()>();
    let stop = async move {
        tokio::select! {
            _ = rx => {}
            () = signal => {}
        }
    };
    let task = tokio::spawn(warp::serve(routes).incoming(listener).graceful(stop).run());

    let (issuer, client_id, client_secret) = match (&settings.provider, &idp) {
        (Provider::External { issuer, client_id, client_secret }, _) => {
            (issuer.clone(), client_id.clone(), client_secret.clone())
        }
        (Provider::Embedded { .. }, Some(idp)) => {
            let c = idp.config();
            (c.issuer.clone(), c.client_id.clone(), c.client_secret.clone())
        }
        (Provider::Embedded { .. }, None) => return Err(StartError("embedded provider missing".into())),
    };
    let rp = RpConfig {
        issuer,
        client_id,
        client_secret,
        redirect_uri: format!("{public_url}/auth/callback"),
        scopes: settings.scopes.clone(),
        skew: settings.policy.clock_skew.max(Duration::from_secs(5)),
        timeout: settings.refresh_timeout,
    };
    let oidc = match Oidc::discover(&rp).await {
        Ok(o) => o,
        Err(e) => {
            task.abort();
            return Err(fail("OpenID provider", &e));
        }
    };
    let clock = clock::Clock::new(settings.test_clock);
    let mut service = Service::new(settings.policy.clone(), clock, store, oidc, settings.refresh_timeout);
    if let Some(path) = &settings.audit_log {
        match audit::AuditLog::open(path, &settings.policy) {
            Ok(log) => service.audit = Some(log),
            Err(e) => {
                task.abort();
                return Err(fail("audit log", &e));
            }
        }
    }
    let service = Arc::new(service);
    let upstream = match &settings.upstream {
        Upstream::None => None,
        Upstream::Url(u) => Some(u.clone()),
        Upstream::Echo => url::Url::parse(&format!("http://{addr}/__echo")).ok(),
    };
    let http_client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| fail("HTTP client", &e))?;
    let app = Arc::new(App {
        service: service.clone(),
        cookies: Cookies::new(secure_origin(&public_url)),
        public_url: public_url.clone(),
        trusted_proxies: settings.trusted_proxies.clone(),
        upstream,
        http: http_client,
        demo: settings.demo,
    });
    let _ = cell.set(app.clone());
    let background = service.spawn_background();
    tracing::info!(%addr, %public_url, "bff-session listening");
    Ok(Running { addr, public_url, app, idp, shutdown: Some(tx), task, background })
}
