//! Every violation `CONFORMANCE.md` reports against a third-party BFF, reproduced with plain HTTP calls: no
//! harness, no oracle, no generated steps. Each test starts the dev provider and the peer exactly as the
//! report does (`crates/conformance/targets/`), performs the reproducer's steps by hand and asserts what the
//! peer does wrong. When a peer fixes the behaviour, its test fails and the report is out of date.
//!
//! They need Apache httpd with mod_auth_openidc (Debian) and Node with the express target's packages, so
//! they are ignored by `cargo test`; `cargo xtask conformance-report` installs those and runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use bff_session_dev_idp::{Config, DevIdp, Fault};
use reqwest::StatusCode;

const CLIENT_ID: &str = "peer";
const CLIENT_SECRET: &str = "peer-secret";

fn targets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("targets")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A peer BFF process (and whatever its launch script started), stopped when dropped.
struct Peer {
    child: Child,
    origin: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", "--", &format!("-{pid}")]).status();
        let _ = self.child.wait();
    }
}

/// Which peer, and where its provider sends the browser back and the logout tokens.
#[derive(Clone, Copy)]
enum Kind {
    Apache,
    ExpressCookie,
    ExpressStore,
}

impl Kind {
    fn callback(self) -> &'static str {
        match self {
            Self::Apache => "/redirect_uri",
            Self::ExpressCookie | Self::ExpressStore => "/callback",
        }
    }

    fn backchannel(self) -> &'static str {
        match self {
            Self::Apache => "/redirect_uri?logout=backchannel",
            Self::ExpressCookie | Self::ExpressStore => "/backchannel-logout",
        }
    }

    fn login(self) -> &'static str {
        match self {
            Self::Apache => "/protected/",
            Self::ExpressCookie | Self::ExpressStore => "/login",
        }
    }

    fn session(self) -> &'static str {
        match self {
            Self::Apache => "/redirect_uri?info=json",
            Self::ExpressCookie | Self::ExpressStore => "/session",
        }
    }

    fn logout(self) -> &'static str {
        match self {
            Self::Apache => "/redirect_uri?logout=%2F",
            Self::ExpressCookie | Self::ExpressStore => "/logout",
        }
    }

    /// Access tokens short enough that a refresh is due within seconds. Apache's profile refreshes 5 s
    /// before expiry, so its tokens must live longer than that, as in its report.
    fn token_ttl(self) -> Duration {
        match self {
            Self::Apache => Duration::from_secs(10),
            Self::ExpressCookie | Self::ExpressStore => Duration::from_secs(3),
        }
    }

    fn session_cookie(self) -> &'static str {
        match self {
            Self::Apache => "mod_auth_openidc_session",
            Self::ExpressCookie | Self::ExpressStore => "appSession",
        }
    }
}

/// The dev provider on 127.0.0.1 and a peer registered with it.
struct World {
    idp: DevIdp,
    peer: Peer,
    kind: Kind,
    http: reqwest::Client,
}

async fn start(kind: Kind) -> World {
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let idp = DevIdp::new(Config {
        issuer: issuer.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uris: vec![format!("{origin}{}", kind.callback())],
        post_logout_redirect_uris: vec![format!("{origin}/")],
        backchannel_logout_uri: Some(format!("{origin}{}", kind.backchannel())),
        access_token_ttl: kind.token_ttl(),
    })
    .unwrap();
    tokio::spawn(warp::serve(idp.routes()).incoming(listener).run());
    let (dir, script) = match kind {
        Kind::Apache => ("apache", "exec ./run.sh".to_owned()),
        Kind::ExpressCookie => ("express", "EOC_SESSION=cookie exec node app.js".to_owned()),
        Kind::ExpressStore => ("express", "EOC_SESSION=store exec node app.js".to_owned()),
    };
    let mut command = Command::new("sh");
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .args(["-c", &script])
        .current_dir(targets().join(dir))
        .env("BFF_CONFORMANCE_ISSUER", &issuer)
        .env("BFF_CONFORMANCE_CLIENT_ID", CLIENT_ID)
        .env("BFF_CONFORMANCE_CLIENT_SECRET", CLIENT_SECRET)
        .env("BFF_CONFORMANCE_UPSTREAM", &issuer)
        .env("BFF_CONFORMANCE_PORT", port.to_string())
        .env("PORT", port.to_string())
        .spawn()
        .expect("cannot start the peer: run `cargo xtask conformance-report`, which installs it");
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let peer = Peer { child, origin };
    for _ in 0..200 {
        if http.get(format!("{}/", peer.origin)).send().await.is_ok() {
            return World { idp, peer, kind, http };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the peer did not start at {}", peer.origin);
}

/// One browser's cookies.
#[derive(Clone, Default)]
struct Jar(BTreeMap<String, String>);

struct Answer {
    status: StatusCode,
    set_cookies: Vec<String>,
    location: Option<String>,
}

impl World {
    async fn get(&self, jar: &mut Jar, path_or_url: &str) -> Answer {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.peer.origin)
        };
        let cookie = jar.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let r = self.http.get(&url).header("cookie", cookie).send().await.unwrap();
        let set_cookies: Vec<String> =
            r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok().map(str::to_owned)).collect();
        for c in &set_cookies {
            let Some((name, value)) = c.split(';').next().and_then(|p| p.split_once('=')) else { continue };
            let lower = c.to_ascii_lowercase();
            if value.is_empty() || lower.contains("max-age=0") || lower.contains("expires=thu, 01 jan 1970") {
                jar.0.remove(name);
            } else {
                jar.0.insert(name.to_owned(), value.to_owned());
            }
        }
        let location = r.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Answer { status: r.status(), set_cookies, location }
    }

    /// Signs `user` in: the peer's login redirect, the provider (which signs the hinted user in at once),
    /// the peer's callback. Returns the jar and the answer that set the session cookie.
    async fn sign_in(&self, user: &str) -> (Jar, Answer) {
        let mut jar = Jar::default();
        let start = self.get(&mut jar, self.kind.login()).await;
        let authorize = start.location.expect("the peer redirects to the provider");
        let mut url = reqwest::Url::parse(&authorize).unwrap();
        url.query_pairs_mut().append_pair("login_hint", user);
        let approved = self.get(&mut Jar::default(), url.as_str()).await;
        let callback = approved.location.expect("the provider redirects back");
        let done = self.get(&mut jar, &callback).await;
        assert!(jar.0.contains_key(self.kind.session_cookie()), "signed in: {:?}", done.set_cookies);
        (jar, done)
    }

    async fn session(&self, jar: &mut Jar) -> StatusCode {
        self.get(jar, self.kind.session()).await.status
    }

    async fn api(&self, jar: &mut Jar) -> StatusCode {
        self.get(jar, "/api/userinfo").await.status
    }

    /// Concurrent API calls with the same cookies, all sent before any is answered; their statuses.
    async fn burst(&self, jar: &Jar, n: usize) -> Vec<StatusCode> {
        let cookie = jar.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..n {
            let request = self.http.get(format!("{}/api/userinfo", self.peer.origin)).header("cookie", cookie.clone());
            calls.spawn(async move { request.send().await.map(|r| r.status()) });
        }
        calls.join_all().await.into_iter().map(Result::unwrap).collect()
    }
}

impl World {
    async fn past_token_expiry(&self) {
        tokio::time::sleep(self.kind.token_ttl() + Duration::from_millis(1500)).await;
    }
}

/// A burst of API calls after the access token expired sends one refresh per call, all with the same
/// rotating refresh token: the provider's reuse detection revokes the grant, and the session is lost.
async fn burst_at_expiry_burns_the_grant(kind: Kind) {
    let w = start(kind).await;
    let (mut jar, _) = w.sign_in("alice").await;
    assert_eq!(w.api(&mut jar).await, StatusCode::OK);
    w.past_token_expiry().await;
    let before = w.idp.counters();
    let statuses = w.burst(&jar, 4).await;
    let refreshes = w.idp.refresh_requests_of("alice");
    assert!(
        refreshes > 1,
        "expected the peer to refresh more than once for one burst; it sent {refreshes} ({statuses:?})"
    );
    assert!(w.idp.counters().reuse_detected > before.reuse_detected, "the provider saw a rotated-out token reused");
    let sid = w.idp.latest_sid("alice").unwrap();
    assert_eq!(w.idp.grant_active(&sid), Some(false), "the grant is revoked: the user will be signed out");
}

#[tokio::test]
#[ignore = "needs Node and the express target's packages: cargo xtask conformance-report"]
async fn express_cookie_refreshes_once_per_call_in_a_burst_at_expiry() {
    burst_at_expiry_burns_the_grant(Kind::ExpressCookie).await;
}

#[tokio::test]
#[ignore = "needs Node and the express target's packages: cargo xtask conformance-report"]
async fn express_store_refreshes_once_per_call_in_a_burst_at_expiry() {
    burst_at_expiry_burns_the_grant(Kind::ExpressStore).await;
}

#[tokio::test]
#[ignore = "needs Apache httpd and mod_auth_openidc: cargo xtask conformance-report"]
async fn apache_refreshes_once_per_call_in_a_burst_at_expiry() {
    burst_at_expiry_burns_the_grant(Kind::Apache).await;
}

/// The stateless cookie session outlives its logout: the cookie copied before logout is still served.
#[tokio::test]
#[ignore = "needs Node and the express target's packages: cargo xtask conformance-report"]
async fn express_cookie_session_is_served_again_after_logout() {
    let w = start(Kind::ExpressCookie).await;
    let (mut jar, _) = w.sign_in("alice").await;
    let copied = jar.clone();
    let logout = w.get(&mut jar, w.kind.logout()).await;
    assert!(logout.status.is_redirection());
    assert!(!jar.0.contains_key("appSession"), "the logout clears the cookie in the browser");
    assert_eq!(w.session(&mut jar).await, StatusCode::UNAUTHORIZED);
    let mut attacker = copied;
    assert_eq!(w.session(&mut attacker).await, StatusCode::OK, "the copied cookie is still a session");
}

/// `invalid_grant` on refresh leaves the session signed in: the API call fails, the session lives on.
async fn invalid_grant_keeps_the_session(kind: Kind) {
    let w = start(kind).await;
    let (mut jar, _) = w.sign_in("alice").await;
    let sid = w.idp.latest_sid("alice").unwrap();
    w.idp.fail_next_refresh_of(&sid, Fault::InvalidGrant);
    w.past_token_expiry().await;
    let call = w.api(&mut jar).await;
    assert!(!call.is_success(), "the failed refresh fails the call: {call}");
    assert_eq!(w.idp.grant_active(&sid), Some(false), "the provider ended the grant");
    assert_eq!(w.session(&mut jar).await, StatusCode::OK, "the session still says signed in");
}

#[tokio::test]
#[ignore = "needs Node and the express target's packages: cargo xtask conformance-report"]
async fn express_cookie_keeps_the_session_after_invalid_grant() {
    invalid_grant_keeps_the_session(Kind::ExpressCookie).await;
}

#[tokio::test]
#[ignore = "needs Node and the express target's packages: cargo xtask conformance-report"]
async fn express_store_keeps_the_session_after_invalid_grant() {
    invalid_grant_keeps_the_session(Kind::ExpressStore).await;
}

#[tokio::test]
#[ignore = "needs Apache httpd and mod_auth_openidc: cargo xtask conformance-report"]
async fn apache_keeps_the_session_after_invalid_grant() {
    invalid_grant_keeps_the_session(Kind::Apache).await;
}

/// Logout leaves the refresh token valid at the provider (no RFC 7009 revocation) unless the browser
/// completes the redirect to the provider's end-session endpoint.
async fn logout_leaves_the_refresh_token_valid(kind: Kind) {
    let w = start(kind).await;
    let (mut jar, _) = w.sign_in("alice").await;
    let sid = w.idp.latest_sid("alice").unwrap();
    let revocations = w.idp.counters().revocations;
    let logout = w.get(&mut jar, w.kind.logout()).await;
    assert!(logout.status.is_redirection());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(w.idp.counters().revocations, revocations, "no revocation request reached the provider");
    assert_eq!(w.idp.grant_active(&sid), Some(true), "the refresh token still works");
}

#[tokio::test]
#[ignore = "needs Node and the express target's packages: cargo xtask conformance-report"]
async fn express_cookie_logout_does_not_revoke_the_refresh_token() {
    logout_leaves_the_refresh_token_valid(Kind::ExpressCookie).await;
}

#[tokio::test]
#[ignore = "needs Node and the express target's packages: cargo xtask conformance-report"]
async fn express_store_logout_does_not_revoke_the_refresh_token() {
    logout_leaves_the_refresh_token_valid(Kind::ExpressStore).await;
}

/// A back-channel logout token that names only the user (`sub`) leaves the user's session signed in.
#[tokio::test]
#[ignore = "needs Apache httpd and mod_auth_openidc: cargo xtask conformance-report"]
async fn apache_ignores_a_backchannel_logout_by_sub() {
    let w = start(Kind::Apache).await;
    let (mut jar, _) = w.sign_in("alice").await;
    assert_eq!(w.session(&mut jar).await, StatusCode::OK);
    let answered = w.idp.backchannel_logout(Some("alice"), None).await.unwrap();
    assert_eq!(w.session(&mut jar).await, StatusCode::OK, "still signed in (the logout endpoint answered {answered})");
}

/// The session cookie is set without `SameSite` under the module's default `OIDCCookieSameSite Off`.
#[tokio::test]
#[ignore = "needs Apache httpd and mod_auth_openidc: cargo xtask conformance-report"]
async fn apache_sets_the_session_cookie_without_samesite() {
    let w = start(Kind::Apache).await;
    let (_, done) = w.sign_in("alice").await;
    let cookie = done.set_cookies.iter().find(|c| c.starts_with("mod_auth_openidc_session=")).unwrap();
    let lower = cookie.to_ascii_lowercase();
    assert!(lower.contains("httponly"));
    assert!(!lower.contains("samesite"), "the session cookie has no SameSite attribute");
}
