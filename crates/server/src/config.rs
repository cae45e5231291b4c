//! Command-line flags and environment variables, and their validation.
//!
//! Owns turning `bff-session serve|demo` arguments into [`Settings`]. Every flag has a `BFF_SESSION_*`
//! variable and a documented default; a bad value fails at start with the setting's name and the reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bff_session_core::Policy;
use bff_session_core::client_ip::TrustedProxies;
use clap::{Args, Parser, Subcommand};

use crate::flags::err;
pub use crate::flags::{ClientArgs, ConfigError, PolicyArgs, parse_duration};

/// The reference Backend-for-Frontend session server.
#[derive(Debug, Parser)]
#[command(name = "bff-session", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "BFF_SESSION_LOG_JSON")]
    pub log_json: bool,
    /// Send OpenTelemetry traces (a span per request, session transitions as its events) to the OTLP/HTTP
    /// collector at this base URL, e.g. http://127.0.0.1:4318. Off when not given.
    #[arg(long, global = true, env = "BFF_SESSION_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<url::Url>,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at start; without `demo`, `serve` alone is large")]
pub enum Command {
    /// Serve in front of an external OpenID provider.
    Serve(ServeArgs),
    /// Serve the demo: embedded dev provider at /idp, sled in ./data, a demo page at / and an echo API.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Operator commands against the store `serve` uses: list, end, count, verify sessions, rotate the key.
    Admin(crate::admin::AdminArgs),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell) to standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (`bff-session.1` and one per subcommand) into DIR.
    Man {
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
}

/// What `completions` and `man` write: the command line as clap describes it, never a server.
impl Command {
    /// `Ok(true)` when this was `completions` or `man` and is done; `Ok(false)` for a command that serves.
    pub fn write_docs(&self, out: &mut dyn std::io::Write) -> std::io::Result<bool> {
        use clap::CommandFactory as _;
        match self {
            Self::Completions { shell } => {
                // clap_complete panics when its writer fails (a closed pipe); a buffer cannot fail.
                let mut script = Vec::new();
                clap_complete::generate(*shell, &mut Cli::command(), "bff-session", &mut script);
                out.write_all(&script)?;
                Ok(true)
            }
            Self::Man { out_dir } => {
                std::fs::create_dir_all(out_dir)?;
                let cli = Cli::command();
                let mut pages = vec![("bff-session".to_owned(), cli.clone())];
                for sub in cli.get_subcommands() {
                    let name = format!("bff-session-{}", sub.get_name());
                    pages.push((name.clone(), sub.clone().name(name)));
                }
                for (name, page) in pages {
                    let path = out_dir.join(format!("{name}.1"));
                    let mut file = std::fs::File::create(&path)?;
                    clap_mangen::Man::new(page).render(&mut file)?;
                    writeln!(out, "{}", path.display())?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Settings shared by `serve` and `demo`.
#[derive(Debug, Args)]
pub struct Common {
    /// Address to listen on.
    #[arg(long, env = "BFF_SESSION_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The origin browsers use (https://… in production). Cookies are `__Host-` and Secure when it is https
    /// or localhost. Default: http://localhost:PORT for the demo, http://LISTEN otherwise.
    #[arg(long, env = "BFF_SESSION_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Where sessions are stored: sled:PATH (default: sled in DATA_DIR) or postgres://USER:PASSWORD@HOST/DB,
    /// shared by every replica (give them all the same --key-file).
    #[arg(long, env = "BFF_SESSION_STORE", value_parser = crate::store::Location::parse)]
    pub store: Option<crate::store::Location>,
    /// With a PostgreSQL store: answer session checks from this replica's copy of the records, kept true by
    /// the database's change notices (LISTEN/NOTIFY). Faster, but a session ended on another replica is
    /// still served here until the notice arrives (milliseconds; BENCHMARKS.md measures it). Off: every
    /// request reads the database.
    #[arg(long, env = "BFF_SESSION_POSTGRES_CACHE")]
    pub postgres_cache: bool,
    /// Folder for the sled database and, unless --key-file is given, the token encryption key.
    #[arg(long, env = "BFF_SESSION_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// 32-byte key file for encrypting tokens at rest. Default: DATA_DIR/token.key, created (0600) on first start.
    #[arg(long, env = "BFF_SESSION_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Earlier key files, comma-separated: tokens they sealed are still read (and re-sealed under --key-file
    /// when next written) while `bff-session admin key rotate` re-seals the rest. See deploy/README.md.
    #[arg(long, env = "BFF_SESSION_PREVIOUS_KEY_FILES", value_delimiter = ',')]
    pub previous_key_files: Vec<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Comma-separated addresses or CIDRs of reverse proxies whose Forwarded/X-Forwarded-For are believed.
    #[arg(long, env = "BFF_SESSION_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Time limit of one call to the API upstream through /api/*; past it the call gets 504.
    #[arg(long, env = "BFF_SESSION_UPSTREAM_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub upstream_timeout: Duration,
    /// Time limit of one call to the provider's token endpoint; must be shorter than the refresh lease.
    #[arg(long, env = "BFF_SESSION_REFRESH_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub refresh_timeout: Duration,
    /// Enable POST /__test/clock to move the server's clock: refused unless --listen is a loopback address,
    /// since any client could then age every session. Never in production.
    #[arg(long, env = "BFF_SESSION_TEST_CLOCK")]
    pub test_clock: bool,
    /// Append an audit trail of every session transition to this file, as JSON lines (see the conformance
    /// crate's README for the format; `bff-session-conformance check-trace` checks it).
    #[arg(long, env = "BFF_SESSION_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Memory for the store's caches, in MiB: with sled, half for its page cache and half for the decoded
    /// records reads are answered from; with PostgreSQL, the decoded records (shared with `--postgres-cache`'s
    /// copy).
    #[arg(long, env = "BFF_SESSION_CACHE_MB", default_value_t = 256)]
    pub cache_mb: u64,
    /// Largest request body the API proxy forwards, in bytes; larger ones get 413 before they are read.
    /// Every other route takes at most 64 KiB.
    #[arg(long, env = "BFF_SESSION_MAX_BODY", default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Largest answer of the API upstream the proxy passes back, in bytes (it is held in memory); a larger one
    /// gets 502.
    #[arg(long, env = "BFF_SESSION_MAX_UPSTREAM_ANSWER", default_value_t = 16 << 20)]
    pub max_upstream_answer: usize,
    /// Refresh tokens waiting for revocation at the provider, at most; one user may hold a tenth of them.
    /// Beyond it a token is left to expire at the provider, and counted.
    #[arg(long, env = "BFF_SESSION_REVOCATION_QUEUE", default_value_t = 10_000)]
    pub revocation_queue: usize,
    /// Sessions one user may hold at once; a sign-in past it ends their least recently used session and
    /// revokes its refresh token. 0: no limit.
    #[arg(long, env = "BFF_SESSION_MAX_SESSIONS_PER_USER", default_value_t = 50)]
    pub max_sessions_per_user: usize,
    /// Sign-ins begun and not yet back from the provider, held at most; beyond it the oldest is forgotten.
    #[arg(long, env = "BFF_SESSION_MAX_PENDING_LOGINS", default_value_t = 100_000)]
    pub max_pending_logins: usize,
    /// Largest request line plus headers, in bytes; beyond it 431.
    #[arg(long, env = "BFF_SESSION_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers; also how long an idle kept-alive connection stays open.
    #[arg(long, env = "BFF_SESSION_HEADER_READ_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub header_read_timeout: Duration,
    /// Sign-ins (GET /auth/login and /auth/callback) allowed per minute from one client address, read
    /// through --trusted-proxies; more get 429 with Retry-After. 0 turns the limit off (for load tests).
    #[arg(long, env = "BFF_SESSION_LOGIN_RATE", default_value_t = 60)]
    pub login_rate: u32,
    /// How many sign-ins one address may make at once before the rate applies.
    #[arg(long, env = "BFF_SESSION_LOGIN_BURST", default_value_t = 20)]
    pub login_burst: u32,
    /// Where GET /metrics is served, apart from the public listener (loopback by default); `off` for nowhere.
    #[arg(long, env = "BFF_SESSION_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = parse_listen)]
    pub metrics_listen: Listen,
    /// Comma-separated origins besides the public URL whose pages may make unsafe requests (checked against
    /// the `Origin` header), e.g. `https://admin.example.com`.
    #[arg(long, env = "BFF_SESSION_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Scopes to request, space-separated.
    #[arg(long, env = "BFF_SESSION_SCOPES", default_value = "openid profile email offline_access")]
    pub scopes: String,
    /// The API that /api/* forwards to, with the access token attached.
    #[arg(long, env = "BFF_SESSION_UPSTREAM")]
    pub upstream: Option<url::Url>,
    /// Allow an http:// public URL other than localhost. Without TLS the cookies lose `Secure` and the
    /// `__Host-` prefix, and anyone on the path can take a session.
    #[arg(long, env = "BFF_SESSION_INSECURE_HTTP")]
    pub insecure_http: bool,
}

#[cfg(feature = "demo")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Access-token lifetime of the embedded provider; short so refreshes are visible.
    #[arg(long, env = "BFF_SESSION_DEMO_TOKEN_TTL", value_parser = parse_duration, default_value = "2m")]
    pub access_token_ttl: Duration,
    /// Let the demo listen on a non-loopback address. Its provider signs in anyone who types a name, and its
    /// /idp/admin endpoints (fail the next refresh, send logout tokens) are open to every client.
    #[arg(long, env = "BFF_SESSION_DEMO_EXPOSE_TO_THE_NETWORK")]
    pub expose_demo_to_the_network: bool,
}

/// Where the OpenID provider is.
#[derive(Debug, Clone)]
pub enum Provider {
    External {
        issuer: String,
        client_id: String,
        client_secret: String,
    },
    /// The dev provider, mounted at `/idp` in this process.
    #[cfg(feature = "demo")]
    Embedded {
        access_token_ttl: Duration,
    },
}

/// Where `/api/*` goes.
#[derive(Debug, Clone)]
pub enum Upstream {
    None,
    Url(url::Url),
    /// The demo's echo API in this process.
    #[cfg(feature = "demo")]
    Echo,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub data_dir: PathBuf,
    pub key_file: Option<PathBuf>,
    /// Keys rotated out, still accepted for reading.
    pub previous_key_files: Vec<PathBuf>,
    pub policy: Policy,
    pub trusted_proxies: TrustedProxies,
    pub refresh_timeout: Duration,
    pub test_clock: bool,
    pub provider: Provider,
    pub scopes: Vec<String>,
    pub upstream: Upstream,
    pub demo: bool,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Where the audit trail goes, if anywhere.
    pub audit_log: Option<PathBuf>,
    /// Where sessions live; `None`: sled in `data_dir`.
    pub store: Option<crate::store::Location>,
    /// PostgreSQL's cached mode (`--postgres-cache`): checks answered from memory kept true by notices.
    pub postgres_cache: bool,
    /// Largest request body the proxy forwards, in bytes.
    pub max_body: usize,
    /// Sign-ins per client address; `None`: unlimited.
    pub login_limit: Option<crate::limit::LoginLimit>,
    /// Origins besides the public one allowed to make unsafe requests.
    pub allowed_origins: Vec<String>,
    /// Where `/metrics` is served; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Time limit of one upstream call through the proxy.
    pub upstream_timeout: Duration,
    /// What one client connection may cost.
    pub conn_limits: crate::conn::ConnLimits,
    /// Pending logins held at most (core's `LoginPolicy::capacity`).
    pub max_pending_logins: usize,
    /// Sessions one user may hold at once; `None`: no limit.
    pub max_sessions_per_user: Option<std::num::NonZeroUsize>,
    /// Largest upstream answer the proxy passes back, in bytes.
    pub max_upstream_answer: usize,
    /// Places in the revocation queue.
    pub revocation_queue: usize,
}

/// An address to listen on, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Listen(None));
    }
    s.parse().map(|a| Listen(Some(a))).map_err(|e| format!("{s:?} is not an address like 127.0.0.1:9464 or off: {e}"))
}

impl Common {
    fn settings(
        self,
        provider: Provider,
        scopes: Vec<String>,
        upstream: Upstream,
        demo: bool,
    ) -> Result<Settings, ConfigError> {
        let policy = self.policy.policy()?;
        if self.refresh_timeout >= policy.refresh_lease {
            return Err(err(
                "--refresh-timeout",
                format!("must be shorter than the refresh lease ({}s)", policy.refresh_lease.as_secs()),
            ));
        }
        if self.test_clock && !self.listen.ip().is_loopback() {
            return Err(err(
                "--test-clock",
                format!(
                    "refused on {}: any client could move the clock and age every session; use it only on a loopback address",
                    self.listen
                ),
            ));
        }
        if self.postgres_cache && !matches!(self.store, Some(crate::store::Location::Postgres(_))) {
            return Err(err("--postgres-cache", "needs a PostgreSQL store (--store postgres://…)"));
        }
        if self.revocation_queue < 10 {
            return Err(err("--revocation-queue", "must be at least 10, so that each user's tenth is a place"));
        }
        if self.max_pending_logins == 0 {
            return Err(err("--max-pending-logins", "must be at least 1, or nobody could sign in"));
        }
        if self.max_header_bytes < 1024 {
            return Err(err("--max-header-bytes", "must be at least 1024: a browser's own headers take that much"));
        }
        if self.header_read_timeout.is_zero() {
            return Err(err("--header-read-timeout", "must be at least 1s"));
        }
        let trusted_proxies =
            TrustedProxies::parse(&self.trusted_proxies).map_err(|e| err("--trusted-proxies", e.to_string()))?;
        if let Some(url) = &self.public_url {
            let parsed = url::Url::parse(url).map_err(|e| err("--public-url", e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.path() != "/" || parsed.query().is_some() {
                return Err(err("--public-url", "must be an origin like https://app.example.com, without a path"));
            }
        }
        let login_limit =
            match (std::num::NonZeroU32::new(self.login_rate), std::num::NonZeroU32::new(self.login_burst)) {
                (None, _) => None,
                (Some(_), None) => return Err(err("--login-burst", "must be at least 1 while --login-rate is on")),
                (Some(per_minute), Some(burst)) => Some(crate::limit::LoginLimit { per_minute, burst }),
            };
        let mut allowed_origins = Vec::new();
        for origin in self.allowed_origins.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let url = url::Url::parse(origin).map_err(|e| err("--allowed-origins", format!("{origin:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.path() != "/" || url.query().is_some() {
                return Err(err(
                    "--allowed-origins",
                    format!("{origin:?} is not an origin like https://app.example.com"),
                ));
            }
            allowed_origins.push(url.origin().ascii_serialization());
        }
        Ok(Settings {
            listen: self.listen,
            public_url: self.public_url.map(|u| u.trim_end_matches('/').to_owned()),
            data_dir: self.data_dir,
            key_file: self.key_file,
            previous_key_files: self.previous_key_files,
            policy,
            trusted_proxies,
            refresh_timeout: self.refresh_timeout,
            test_clock: self.test_clock,
            provider,
            scopes,
            upstream,
            demo,
            cache_bytes: self.cache_mb.saturating_mul(1 << 20),
            audit_log: self.audit_log,
            store: self.store,
            postgres_cache: self.postgres_cache,
            max_body: self.max_body,
            login_limit,
            allowed_origins,
            metrics_listen: self.metrics_listen.0,
            upstream_timeout: self.upstream_timeout,
            max_pending_logins: self.max_pending_logins,
            max_sessions_per_user: std::num::NonZeroUsize::new(self.max_sessions_per_user),
            max_upstream_answer: self.max_upstream_answer,
            revocation_queue: self.revocation_queue,
            conn_limits: crate::conn::ConnLimits {
                max_header_bytes: self.max_header_bytes,
                header_read_timeout: self.header_read_timeout,
            },
        })
    }
}

impl Command {
    pub fn settings(self) -> Result<Settings, ConfigError> {
        match self {
            Self::Serve(a) => {
                if a.client.issuer.ends_with('/') {
                    return Err(err(
                        "--issuer",
                        "must not end with a slash: it is compared with the provider's issuer exactly",
                    ));
                }
                let upstream = match a.upstream {
                    Some(u) if matches!(u.scheme(), "http" | "https") => Upstream::Url(u),
                    Some(u) => return Err(err("--upstream", format!("scheme {} is not http or https", u.scheme()))),
                    None => Upstream::None,
                };
                let provider = Provider::External {
                    issuer: a.client.issuer,
                    client_id: a.client.client_id,
                    client_secret: a.client.client_secret,
                };
                let scopes = a.scopes.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
                if !scopes.iter().any(|s| s == "openid") {
                    return Err(err("--scopes", "must include openid"));
                }
                if !a.insecure_http {
                    refuse_plain_http(a.common.public_url.as_deref(), a.common.listen)?;
                }
                a.common.settings(provider, scopes, upstream, false)
            }
            Self::Completions { .. } | Self::Man { .. } | Self::Admin(_) => {
                Err(err("command", "`admin`, `completions` and `man` start no server"))
            }
            #[cfg(feature = "demo")]
            Self::Demo(a) => {
                if !a.common.listen.ip().is_loopback() && !a.expose_demo_to_the_network {
                    return Err(err(
                        "--listen",
                        format!(
                            "the demo refuses {}: its provider signs in anyone and its /idp/admin endpoints are open; \
                             listen on a loopback address, or pass --expose-demo-to-the-network",
                            a.common.listen
                        ),
                    ));
                }
                let scopes = ["openid", "profile", "email", "offline_access"].map(str::to_owned).to_vec();
                a.common.settings(
                    Provider::Embedded { access_token_ttl: a.access_token_ttl },
                    scopes,
                    Upstream::Echo,
                    true,
                )
            }
        }
    }
}

/// `serve` speaks plain HTTP to browsers only on this machine: elsewhere the cookies would lose `Secure`
/// and `__Host-`. The public URL defaults to `http://LISTEN`.
fn refuse_plain_http(public_url: Option<&str>, listen: SocketAddr) -> Result<(), ConfigError> {
    let origin = public_url.map_or_else(|| format!("http://{listen}"), str::to_owned);
    let Ok(url) = url::Url::parse(&origin) else { return Ok(()) };
    let local = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() == "http" && !local {
        return Err(err(
            "--public-url",
            format!(
                "{origin} is plain HTTP on a non-local host: the cookies would lose Secure and the __Host- prefix; \
                 serve https (behind a TLS proxy) or pass --insecure-http"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[cfg(feature = "demo")]
    fn demo(extra: &[&str]) -> Result<Settings, ConfigError> {
        let mut args = vec!["bff-session", "demo"];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).map_err(|e| err("args", e.to_string()))?.command.settings()
    }

    #[cfg(feature = "demo")]
    #[test]
    fn bad_settings_name_the_setting() {
        assert_eq!(demo(&["--policy", "lax"]).unwrap_err().setting, "--policy");
        assert_eq!(demo(&["--trusted-proxies", "proxy.local"]).unwrap_err().setting, "--trusted-proxies");
        assert_eq!(demo(&["--public-url", "https://x.example/app"]).unwrap_err().setting, "--public-url");
        assert_eq!(demo(&["--refresh-timeout", "60s"]).unwrap_err().setting, "--refresh-timeout");
        assert_eq!(demo(&["--touch-interval", "30d"]).unwrap_err().setting, "--policy and its overrides");
        assert!(demo(&[]).is_ok());
    }

    fn serve(extra: &[&str]) -> Result<Settings, ConfigError> {
        let mut args = vec!["bff-session", "serve", "--issuer", "https://idp.example", "--client-id", "c"];
        args.extend_from_slice(&["--client-secret", "s"]);
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).map_err(|e| err("args", e.to_string()))?.command.settings()
    }

    /// The flood and connection limits have defaults, take their flags, and refuse values that would lock
    /// everyone out.
    #[test]
    fn flood_and_connection_limits_default_and_refuse_what_locks_everyone_out() {
        let s = serve(&[]).unwrap();
        assert_eq!(s.max_pending_logins, 100_000);
        assert_eq!((s.max_upstream_answer, s.revocation_queue), (16 << 20, 10_000));
        assert_eq!(s.max_sessions_per_user.map(std::num::NonZeroUsize::get), Some(50));
        assert_eq!(s.conn_limits, crate::conn::ConnLimits::default());
        let s = serve(&["--max-sessions-per-user", "0", "--max-header-bytes", "8192", "--header-read-timeout", "3s"])
            .unwrap();
        assert_eq!(s.max_sessions_per_user, None, "0 turns the limit off");
        assert_eq!(s.conn_limits.max_header_bytes, 8192);
        assert_eq!(s.conn_limits.header_read_timeout, Duration::from_secs(3));
        assert_eq!(serve(&["--max-pending-logins", "0"]).unwrap_err().setting, "--max-pending-logins");
        assert_eq!(serve(&["--revocation-queue", "9"]).unwrap_err().setting, "--revocation-queue");
        let s = serve(&["--max-upstream-answer", "1024", "--revocation-queue", "50"]).unwrap();
        assert_eq!((s.max_upstream_answer, s.revocation_queue), (1024, 50));
        assert_eq!(serve(&["--max-header-bytes", "100"]).unwrap_err().setting, "--max-header-bytes");
        assert_eq!(serve(&["--header-read-timeout", "0"]).unwrap_err().setting, "--header-read-timeout");
    }

    /// `completions` prints a script naming every subcommand; `man` writes a page for the binary and one per
    /// subcommand; neither is a server.
    #[test]
    fn completions_and_man_pages_come_from_the_command_line() {
        let docs = |args: &[&str]| {
            let mut all = vec!["bff-session"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().command
        };
        let mut script = Vec::new();
        assert!(docs(&["completions", "bash"]).write_docs(&mut script).unwrap());
        let script = String::from_utf8(script).unwrap();
        assert!(["serve", "demo", "--max-sessions-per-user"].iter().all(|w| script.contains(w)), "{script}");
        let dir = tempfile::tempdir().unwrap();
        let mut listed = Vec::new();
        let out_dir = dir.path().to_str().unwrap();
        assert!(docs(&["man", "--out-dir", out_dir]).write_docs(&mut listed).unwrap());
        let serve = std::fs::read_to_string(dir.path().join("bff-session-serve.1")).unwrap();
        assert!(serve.contains("max\\-pending\\-logins"), "{serve}");
        let pages = 1 + <Cli as clap::CommandFactory>::command().get_subcommands().count();
        assert_eq!(String::from_utf8(listed).unwrap().lines().count(), pages);
        assert_eq!(docs(&["man"]).settings().unwrap_err().setting, "command");
        let serve = docs(&["serve", "--issuer", "https://idp.example", "--client-id", "c", "--client-secret", "s"]);
        assert!(!serve.write_docs(&mut Vec::new()).unwrap(), "serve is not documentation");
    }

    #[test]
    fn the_postgres_cache_needs_a_postgres_store() {
        assert_eq!(serve(&["--postgres-cache"]).unwrap_err().setting, "--postgres-cache");
        assert_eq!(serve(&["--postgres-cache", "--store", "sled:/tmp/s"]).unwrap_err().setting, "--postgres-cache");
        let s = serve(&["--postgres-cache", "--store", "postgres://bff@127.0.0.1/bff"]).unwrap();
        assert!(s.postgres_cache);
        assert!(!serve(&["--store", "postgres://bff@127.0.0.1/bff"]).unwrap().postgres_cache);
    }

    #[test]
    fn the_test_clock_is_refused_off_loopback() {
        let e = serve(&["--test-clock", "--listen", "0.0.0.0:8080", "--insecure-http"]).unwrap_err();
        assert_eq!(e.setting, "--test-clock");
        assert!(e.reason.contains("0.0.0.0:8080"), "{}", e.reason);
        assert!(serve(&["--test-clock", "--listen", "127.0.0.1:8080"]).is_ok_and(|s| s.test_clock));
        assert!(serve(&["--test-clock", "--listen", "[::1]:8080"]).is_ok());
    }

    #[test]
    fn plain_http_is_refused_off_this_machine_unless_insecure_http() {
        let e = serve(&["--public-url", "http://app.example.com"]).unwrap_err();
        assert_eq!(e.setting, "--public-url");
        assert!(e.reason.contains("Secure") && e.reason.contains("--insecure-http"), "{}", e.reason);
        // The default public URL is http://LISTEN.
        assert_eq!(serve(&["--listen", "0.0.0.0:8080"]).unwrap_err().setting, "--public-url");
        assert!(serve(&["--listen", "0.0.0.0:8080", "--public-url", "https://app.example.com"]).is_ok());
        assert!(serve(&["--public-url", "http://app.example.com", "--insecure-http"]).is_ok());
        for local in ["http://localhost:8080", "http://127.0.0.1:8080", "http://[::1]:8080"] {
            assert!(serve(&["--public-url", local]).is_ok(), "{local}");
        }
    }

    #[test]
    fn metrics_listen_on_loopback_by_default_or_off() {
        assert_eq!(serve(&[]).unwrap().metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(serve(&["--metrics-listen", "off"]).unwrap().metrics_listen, None);
        assert!(serve(&["--metrics-listen", "metrics.local"]).is_err());
    }

    #[test]
    fn allowed_origins_are_origins() {
        let s = serve(&["--allowed-origins", "https://admin.example.com, http://localhost:3000/"]).unwrap();
        assert_eq!(s.allowed_origins, ["https://admin.example.com", "http://localhost:3000"]);
        assert_eq!(serve(&["--allowed-origins", "https://a.example/x"]).unwrap_err().setting, "--allowed-origins");
        assert_eq!(serve(&["--allowed-origins", "admin.example"]).unwrap_err().setting, "--allowed-origins");
    }

    #[test]
    fn the_login_rate_is_on_by_default_and_zero_turns_it_off() {
        let on = serve(&[]).unwrap().login_limit.unwrap();
        assert_eq!((on.per_minute.get(), on.burst.get()), (60, 20));
        assert_eq!(serve(&["--login-rate", "0"]).unwrap().login_limit, None);
        assert_eq!(serve(&["--login-burst", "0"]).unwrap_err().setting, "--login-burst");
    }

    #[cfg(feature = "demo")]
    #[test]
    fn the_demo_stays_on_loopback_unless_told_otherwise() {
        let e = demo(&["--listen", "0.0.0.0:8080"]).unwrap_err();
        assert_eq!(e.setting, "--listen");
        assert!(e.reason.contains("--expose-demo-to-the-network"), "{}", e.reason);
        assert!(demo(&["--listen", "0.0.0.0:8080", "--expose-demo-to-the-network"]).is_ok());
    }
}
