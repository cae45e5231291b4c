//! `bff-session admin`, run as the binary an operator runs, against sled and PostgreSQL: listing, revoking
//! (durably, and at the provider), counting, verifying and repairing, and a key rotation killed half-way and
//! resumed. Sessions come from real sign-ins through a dev provider of their own, so the refresh tokens the
//! admin revokes are ones the provider issued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "postgres/mod.rs"]
mod postgres;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use bff_session_core::lifecycle::{self, Login, NewSession};
use bff_session_core::{Device, OidcIdentity, Policy, Secret, SessionId, Timestamp, TokenGrant, UserId};
use bff_session_dev_idp::{Config, DevIdp};
use bff_session_server::config::{Provider, Upstream};
use bff_session_server::seal::TokenSealer;
use bff_session_server::store::{self, Location, Store};
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;
use support::Browser;

const CLIENT_ID: &str = "admin-test";
const CLIENT_SECRET: &str = "admin-test-secret";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A dev provider on a port of its own, so it outlives the server it signs in for.
async fn provider(target: &str) -> (DevIdp, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let idp = DevIdp::new(Config {
        issuer: issuer.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uris: vec![format!("{target}/auth/callback")],
        post_logout_redirect_uris: vec![format!("{target}/")],
        backchannel_logout_uri: None,
        access_token_ttl: std::time::Duration::from_secs(300),
    })
    .unwrap();
    tokio::spawn(warp::serve(idp.routes()).incoming(listener).run());
    (idp, issuer)
}

/// What a test's admin commands run against.
struct Site {
    dir: tempfile::TempDir,
    store: Option<Location>,
    idp: DevIdp,
    issuer: String,
    port: u16,
}

impl Site {
    async fn new(store: Option<Location>) -> Self {
        let port = free_port();
        let (idp, issuer) = provider(&format!("http://127.0.0.1:{port}")).await;
        Self { dir: tempfile::tempdir().unwrap(), store, idp, issuer, port }
    }

    fn settings(&self) -> bff_session_server::config::Settings {
        let mut s = support::settings(self.dir.path(), self.port, Policy::hardened());
        s.provider = Provider::External {
            issuer: self.issuer.clone(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        };
        s.upstream = Upstream::None;
        s.test_clock = false;
        s.store = self.store.clone();
        s
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("token.key")
    }

    /// `bff-session admin ARGS` with this site's store, key and provider in the environment, as a unit file
    /// would give them.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bff-session"));
        c.arg("admin").args(args);
        c.env("BFF_SESSION_DATA_DIR", self.dir.path());
        c.env("BFF_SESSION_ISSUER", &self.issuer);
        c.env("BFF_SESSION_CLIENT_ID", CLIENT_ID);
        c.env("BFF_SESSION_CLIENT_SECRET", CLIENT_SECRET);
        c.env_remove("BFF_SESSION_KEY_FILE").env_remove("BFF_SESSION_PREVIOUS_KEY_FILES").env_remove("BFF_SESSION_LOG");
        match &self.store {
            Some(Location::Postgres(url)) => c.env("BFF_SESSION_STORE", url),
            _ => c.env_remove("BFF_SESSION_STORE"),
        };
        c
    }

    async fn admin(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
    }

    /// `admin ARGS --json`, which must succeed.
    async fn json(&self, args: &[&str]) -> Value {
        let out = self.admin(&[args, &["--json"]].concat()).await;
        assert!(out.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn handles_of(list: &Value, user: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["user"] == user)
        .map(|s| s["handle"].as_str().unwrap().to_owned())
        .collect()
}

/// Every admin command against one store: three real sign-ins, then list, stats, revoke by handle and by
/// user (checked at the provider and by the server afterwards), verify, damage, repair, and a key rotation
/// after which the surviving session still works with the new key alone.
async fn every_command(site: Site, damage: impl AsyncFnOnce(&Site)) {
    let running = bff_session_server::start(site.settings()).await.unwrap();
    let mut browsers = Vec::new();
    for user in ["alice", "alice", "bob"] {
        let mut b = Browser::new(&site.base());
        assert_eq!(b.login(user).await.status, StatusCode::FOUND);
        browsers.push(b);
    }
    if matches!(site.store, None | Some(Location::Sled(_))) {
        let out = site.admin(&["stats"]).await;
        assert!(!out.status.success(), "sled is held by the running server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("open in another process") && stderr.contains("PostgreSQL"), "{stderr}");
    }
    running.stop().await;

    let list = site.json(&["sessions", "list"]).await;
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert!(list.as_array().unwrap().iter().all(|s| s["state"] == "active" && s["user_agent"] == "test-browser/1"));
    let alice = handles_of(&site.json(&["sessions", "list", "--user", "alice"]).await, "alice");
    assert_eq!(alice.len(), 2);
    let stats = site.json(&["stats"]).await;
    assert_eq!((stats["active"].as_u64(), stats["revoked"].as_u64()), (Some(3), Some(0)), "{stats}");
    assert!(stats["size_on_disk_bytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["due_within"]["hour"], 3, "each access token is due for a background refresh: {stats}");

    let before = site.idp.counters().revocations;
    let ended = site.json(&["sessions", "revoke", "--handle", &alice[0]]).await;
    assert_eq!(ended["ended"].as_array().unwrap().len(), 1, "{ended}");
    assert_eq!(ended["refresh_tokens_revoked"], 1);
    let ended = site.json(&["sessions", "revoke", "--user", "bob"]).await;
    assert_eq!(ended["ended"].as_array().unwrap().len(), 1, "{ended}");
    assert_eq!(site.idp.counters().revocations, before + 2, "both refresh tokens revoked at the provider");
    let unknown = site.admin(&["sessions", "revoke", "--handle", "no-such-handle"]).await;
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no session has the handle"));

    let ended = site.json(&["sessions", "list", "--state", "ended"]).await;
    assert_eq!(ended.as_array().unwrap().len(), 2, "{ended}");
    assert!(ended.as_array().unwrap().iter().all(|s| s["state"] == "revoked" && s["reason"] == "admin"));
    let active = site.json(&["sessions", "list", "--state", "active"]).await;
    assert_eq!(handles_of(&active, "alice").len(), 1);
    let text = site.admin(&["sessions", "list"]).await;
    assert!(String::from_utf8_lossy(&text.stdout).contains("3 sessions"));

    assert_eq!(site.json(&["verify"]).await["clean"], true);
    damage(&site).await;
    let damaged = site.admin(&["verify", "--json"]).await;
    assert!(!damaged.status.success(), "a damaged store fails verify");
    let report: Value = serde_json::from_slice(&damaged.stdout).unwrap();
    assert_eq!(report["corrupt"].as_array().unwrap().len(), 1, "{report}");
    assert!(report["stray_entries"].as_u64().unwrap() >= 1, "{report}");
    let repaired = site.json(&["verify", "--repair"]).await;
    assert_eq!(repaired["repaired"], true);
    let again = site.json(&["verify"]).await;
    assert_eq!(again["clean"], true, "{again}");
    assert_eq!(again["records"], 3, "the corrupt record is gone, the others stay: {again}");

    // Rotation: the surviving session reads with the new key alone afterwards, and still signs its browser in.
    let new_key = site.dir.path().join("new.key");
    let rotated = site.json(&["key", "rotate", "--new-key", new_key.to_str().unwrap()]).await;
    assert_eq!(rotated["resealed"], 1, "one active session holds tokens: {rotated}");
    let new_key_only = ["--key-file", new_key.to_str().unwrap()];
    assert_eq!(site.json(&[&new_key_only[..], &["verify"]].concat()).await["clean"], true);
    let again = site.json(&["key", "rotate", "--new-key", new_key.to_str().unwrap()]).await;
    assert_eq!(again["resealed"], 0, "nothing left to do: {again}");
    let mut settings = site.settings();
    settings.key_file = Some(new_key.clone());
    let running = bff_session_server::start(settings).await.unwrap();
    let mut statuses = Vec::new();
    for b in &mut browsers {
        statuses.push(b.get("/auth/session").await.status);
    }
    statuses[..2].sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED],
        "alice's other browser only"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_command_against_sled() {
    let site = Site::new(None).await;
    every_command(site, async |site: &Site| {
        let db = sled::open(site.dir.path().join("sessions.sled")).unwrap();
        db.open_tree("sessions").unwrap().insert([7u8; 32], b"\0\0\0\0\0\0\0\x01not a record".as_slice()).unwrap();
        let mut stray = b"mallory\xff".to_vec();
        stray.extend_from_slice(&[9u8; 32]);
        db.open_tree("by_user").unwrap().insert(stray, b"").unwrap();
        db.flush().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_command_against_postgres() {
    let Some(url) = postgres::fresh_database("admin::every_command", "admin_every_command") else { return };
    let site = Site::new(Some(Location::Postgres(url.clone()))).await;
    every_command(site, async move |_: &Site| {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(
                "INSERT INTO bff_sessions (key, version, record, active, user_id)
                     VALUES ('\\x0707070707070707070707070707070707070707070707070707070707070707', 1, 'junk', true, 'x');
                 UPDATE bff_sessions SET user_id = 'mallory' WHERE key IN (SELECT key FROM bff_sessions WHERE active LIMIT 1);",
            )
            .await
            .unwrap();
    })
    .await;
}

/// `count` sessions with tokens, written straight into the store under the site's key.
async fn fill(site: &Site, count: usize) {
    let sealer = TokenSealer::from_file(&site.key_file(), true).unwrap();
    let location = site.store.clone().unwrap_or_else(|| Location::Sled(site.dir.path().join("sessions.sled")));
    let policy = Policy::hardened();
    let store: Arc<dyn Store> = store::open(&location, sealer, policy.clone(), 64 << 20).await.unwrap();
    let now = Timestamp::from_millis(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
    );
    let writes = (0..count).map(|i| {
        let store = store.clone();
        let policy = policy.clone();
        async move {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            id[8] = 1;
            let new = NewSession {
                id: SessionId::from_random_bytes(id),
                user: UserId::new(format!("user-{i}")),
                login: Login::Oidc {
                    identity: OidcIdentity {
                        iss: "https://idp.example".into(),
                        sub: format!("sub-{i}"),
                        sid: None,
                        name: None,
                        email: None,
                    },
                    grant: TokenGrant {
                        access_token: Secret::new(format!("access-{i}")),
                        expires_in: Some(std::time::Duration::from_secs(600)),
                        refresh_token: Some(Secret::new(format!("refresh-{i}"))),
                        refresh_expires_in: None,
                        id_token: None,
                    },
                },
                device: Device::default(),
            };
            store.put(None, &lifecycle::create(&new, now, &policy).outcome).await.unwrap();
        }
    });
    futures_util::stream::iter(writes).buffer_unordered(16).collect::<Vec<()>>().await;
    store.flush().await.unwrap();
}

/// Starts a rotation, kills it (SIGKILL) once its log says a page is durable, and runs it again: the second
/// run finishes the rest, and every record then reads with the new key alone.
async fn rotation_killed_and_resumed(site: Site, count: u64) {
    fill(&site, count as usize).await;
    let new_key = site.dir.path().join("new.key");
    let mut first = site.command(&["key", "rotate", "--new-key", new_key.to_str().unwrap()]);
    first.env("BFF_SESSION_LOG", "bff_session_server=debug").stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = first.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let saw_page = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr).lines().map_while(Result::ok).any(|line| line.contains("page durable"))
    });
    assert!(saw_page.await.unwrap(), "the first run logged a durable page");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed half-way, not finished: {status}");

    let resumed = site.json(&["key", "rotate", "--new-key", new_key.to_str().unwrap()]).await;
    let (resealed, current) = (resumed["resealed"].as_u64().unwrap(), resumed["already_current"].as_u64().unwrap());
    assert!(current >= 1000, "the first run's durable page was kept: {resumed}");
    assert!(resealed >= 1, "the kill came before the end: {resumed}");
    assert_eq!(resealed + current, count, "{resumed}");
    let new_key_only = ["--key-file", new_key.to_str().unwrap()];
    let report = site.json(&[&new_key_only[..], &["verify"]].concat()).await;
    assert_eq!((report["records"].as_u64(), report["clean"].as_bool()), (Some(count), Some(true)), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_killed_half_way_resumes_on_sled() {
    rotation_killed_and_resumed(Site::new(None).await, 5_000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_killed_half_way_resumes_on_postgres() {
    let Some(url) = postgres::fresh_database("admin::rotation", "admin_rotation") else { return };
    rotation_killed_and_resumed(Site::new(Some(Location::Postgres(url))).await, 8_000).await;
}
