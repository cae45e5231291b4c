//! The reference Backend-for-Frontend session server: warp, sled and OpenID Connect around
//! `bff-session-core`.
//!
//! The server is a shell: `http` parses requests, `service` runs core's transitions on records from
//! `store` and carries out their effects, `oidc` talks to the provider. The `demo` feature (on by default)
//! adds the embedded dev provider, the demo page and the echo upstream. See ARCHITECTURE.md.

pub mod admin;
pub mod audit;
pub mod clock;
pub mod config;
pub mod conn;
#[cfg(feature = "demo")]
pub mod demo;
pub mod flags;
pub mod http;
pub mod limit;
pub mod metrics;
pub mod oidc;
pub mod proxy;
pub mod request;
pub mod seal;
pub mod service;
pub mod store;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bff_session_core::cookie::Cookies;
#[cfg(feature = "demo")]
use bff_session_dev_idp::DevIdp;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
#[cfg(feature = "demo")]
use warp::Filter;

use crate::config::{Provider, Settings, Upstream};
use crate::http::App;
use crate::oidc::{Oidc, RpConfig};
use crate::service::Service;

/// Why the server could not start. Causes that are not comparable values (I/O errors) are kept as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartError {
    DataFolder {
        path: std::path::PathBuf,
        error: String,
    },
    TokenKey(seal::KeyFileError),
    Store(store::StoreError),
    Listen {
        addr: SocketAddr,
        error: String,
    },
    Random(getrandom::Error),
    /// The embedded dev provider would not start.
    DevProvider(String),
    Provider(oidc::OidcError),
    AuditLog {
        path: std::path::PathBuf,
        error: String,
    },
    HttpClient(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DataFolder { path, error } => write!(f, "cannot create data folder {}: {error}", path.display()),
            Self::TokenKey(e) => write!(f, "token key: {e}"),
            Self::Store(e) => write!(f, "cannot open the session store: {e}"),
            Self::Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            Self::Random(e) => write!(f, "OS random source failed: {e}"),
            Self::DevProvider(e) => write!(f, "dev provider: {e}"),
            Self::Provider(e) => write!(f, "OpenID provider: {e}"),
            Self::AuditLog { path, error } => write!(f, "audit log {}: {error}", path.display()),
            Self::HttpClient(e) => write!(f, "HTTP client: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running server.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    metrics_task: Option<JoinHandle<()>>,
    pub public_url: String,
    pub app: Arc<App>,
    /// The embedded dev provider, when there is one.
    #[cfg(feature = "demo")]
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
        if let Some(t) = self.metrics_task.take() {
            t.abort();
        }
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
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|e| StartError::DataFolder { path: settings.data_dir.clone(), error: e.to_string() })?;
    let key_file = settings.key_file.clone().unwrap_or_else(|| settings.data_dir.join("token.key"));
    let sealer = seal::TokenSealer::with_previous(&key_file, settings.key_file.is_none(), &settings.previous_key_files)
        .map_err(StartError::TokenKey)?;
    let location =
        settings.store.clone().unwrap_or_else(|| store::Location::Sled(settings.data_dir.join("sessions.sled")));
    let store: Arc<dyn store::Store> = match &location {
        store::Location::Postgres(url) if settings.postgres_cache => Arc::new(
            store::PgStore::connect(url, sealer, settings.policy.clone(), settings.cache_bytes)
                .await
                .map_err(StartError::Store)?
                .with_change_notices(),
        ),
        _ => store::open(&location, sealer, settings.policy.clone(), settings.cache_bytes)
            .await
            .map_err(StartError::Store)?,
    };

    let listen = settings.listen;
    let listener =
        TcpListener::bind(listen).await.map_err(|e| StartError::Listen { addr: listen, error: e.to_string() })?;
    let addr = listener.local_addr().map_err(|e| StartError::Listen { addr: listen, error: e.to_string() })?;
    let public_url = settings.public_url.clone().unwrap_or_else(|| {
        if settings.demo { format!("http://localhost:{}", addr.port()) } else { format!("http://{addr}") }
    });

    #[cfg(feature = "demo")]
    let idp = match &settings.provider {
        Provider::Embedded { access_token_ttl } => Some(demo::provider(&public_url, addr, *access_token_ttl)?),
        Provider::External { .. } => None,
    };

    // The app needs the provider's discovery document, which in the demo this very server serves: start
    // serving first and answer 503 until the app is ready.
    let cell: Arc<OnceLock<Arc<App>>> = Arc::new(OnceLock::new());
    let bff: conn::Handler = {
        let cell = cell.clone();
        Arc::new(move |req| {
            let cell = cell.clone();
            Box::pin(async move { http::handle(&cell, req).await })
        })
    };
    #[cfg(feature = "demo")]
    let bff: conn::Handler = match &idp {
        // The demo's provider lives under /idp on this very server.
        Some(idp) => {
            let provider = conn::filter(warp::path("idp").and(idp.routes()).boxed());
            Arc::new(move |req| {
                let path = req.uri().path();
                if path == "/idp" || path.starts_with("/idp/") { provider(req) } else { bff(req) }
            })
        }
        None => bff,
    };
    let (tx, rx) = oneshot::channel::<()>();
    let stop = async move {
        tokio::select! {
            _ = rx => {}
            () = signal => {}
        }
    };
    let task = tokio::spawn(conn::serve(listener, bff, settings.conn_limits, stop));

    let (issuer, client_id, client_secret) = match &settings.provider {
        Provider::External { issuer, client_id, client_secret } => {
            (issuer.clone(), client_id.clone(), client_secret.clone())
        }
        #[cfg(feature = "demo")]
        Provider::Embedded { .. } => {
            let c = idp.as_ref().map(DevIdp::config).ok_or_else(|| StartError::DevProvider("not started".into()))?;
            (c.issuer.clone(), c.client_id.clone(), c.client_secret.clone())
        }
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
        Ok(o) => Arc::new(o),
        Err(e) => {
            task.abort();
            return Err(StartError::Provider(e));
        }
    };
    if settings.test_clock {
        tracing::warn!(listen = %addr, "the test clock is on: POST /__test/clock moves this server's time; never in production");
    }
    let clock = clock::Clock::new(settings.test_clock);
    let mut service = Service::new(settings.policy.clone(), clock, store, oidc.clone(), settings.refresh_timeout);
    service.login_policy.capacity = settings.max_pending_logins;
    service.max_sessions_per_user = settings.max_sessions_per_user;
    service.limit_revocations(settings.revocation_queue);
    if settings.demo {
        service.timeline = Some(service::Timeline::default());
    }
    if let Some(path) = &settings.audit_log {
        match audit::AuditLog::open(path, &settings.policy) {
            Ok(log) => service.audit = Some(log),
            Err(e) => {
                task.abort();
                return Err(StartError::AuditLog { path: path.clone(), error: e.to_string() });
            }
        }
    }
    let service = Arc::new(service);
    let upstream = match &settings.upstream {
        Upstream::None => None,
        Upstream::Url(u) => Some(u.clone()),
        #[cfg(feature = "demo")]
        Upstream::Echo => url::Url::parse(&format!("http://{addr}/__echo")).ok(),
    };
    let http_client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.upstream_timeout)
        .build()
        .map_err(|e| StartError::HttpClient(e.to_string()))?;
    let app = Arc::new(App {
        service: service.clone(),
        oidc,
        cookies: Cookies::new(secure_origin(&public_url)),
        public_url: public_url.clone(),
        trusted_proxies: settings.trusted_proxies.clone(),
        upstream,
        http: http_client,
        demo: settings.demo,
        max_body: settings.max_body,
        max_upstream_answer: settings.max_upstream_answer,
        login_limiter: settings.login_limit.map(limit::LoginLimiter::new),
        allowed_origins: settings.allowed_origins.clone(),
    });
    let (metrics_addr, metrics_task) = match settings.metrics_listen {
        Some(listen) => {
            let bound = match TcpListener::bind(listen).await.and_then(|l| Ok((l.local_addr()?, l))) {
                Ok(bound) => bound,
                Err(e) => {
                    task.abort();
                    return Err(StartError::Listen { addr: listen, error: e.to_string() });
                }
            };
            let (metrics_addr, listener) = bound;
            let routes = http::metrics_routes(service.clone());
            let forever = std::future::pending();
            let routes = conn::filter(routes);
            (Some(metrics_addr), Some(tokio::spawn(conn::serve(listener, routes, settings.conn_limits, forever))))
        }
        None => (None, None),
    };
    let _ = cell.set(app.clone());
    let background = service.spawn_background();
    tracing::info!(%addr, %public_url, "bff-session listening");
    Ok(Running {
        addr,
        metrics_addr,
        metrics_task,
        public_url,
        app,
        #[cfg(feature = "demo")]
        idp,
        shutdown: Some(tx),
        task,
        background,
    })
}
