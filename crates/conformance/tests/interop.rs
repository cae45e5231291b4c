//! The reference server against panva's oidc-provider (OpenID Certified), not against our own provider.
//! Needs Node and `interop/node_modules`: run with `cargo xtask interop`, which installs them first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bff_session_core::{Policy, SessionId};
use reqwest::Method;
use support::cluster::{self, Client};

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A browser at the provider: its own cookie jar, relative redirects resolved, forms submitted.
struct Browser {
    http: reqwest::Client,
    jar: BTreeMap<String, String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    body: String,
    url: String,
}

impl Browser {
    fn new() -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { http, jar: BTreeMap::new() }
    }

    async fn send(&mut self, method: Method, url: &str, form: Option<&[(String, String)]>) -> Page {
        let cookie = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let mut req = self.http.request(method, url).header("cookie", cookie);
        if let Some(form) = form {
            req = req.form(form);
        }
        let r = req.send().await.unwrap();
        for c in r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()) {
            if let Some((name, value)) = c.split(';').next().and_then(|p| p.split_once('=')) {
                self.jar.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| reqwest::Url::parse(url).unwrap().join(l).unwrap().to_string());
        Page { status, location, body: r.text().await.unwrap_or_default(), url: url.to_owned() }
    }

    /// Follows redirects and submits the provider's forms (login, consent, logout confirmation) until a
    /// redirect leaves the provider or a page has no form; returns that URL.
    async fn walk(&mut self, start: &str, provider: &str, user: &str) -> String {
        let mut page = self.send(Method::GET, start, None).await;
        for _ in 0..20 {
            if let Some(next) = page.location.clone() {
                if !next.starts_with(provider) {
                    return next;
                }
                page = self.send(Method::GET, &next, None).await;
                continue;
            }
            assert_eq!(page.status, 200, "{}: {}", page.url, page.body);
            // A page without a form is where the walk ends (the provider's "signed out" page).
            let Some((action, mut fields)) = form(&page.body) else { return page.url };
            if page.body.contains("name=\"login\"") {
                fields.push(("login".into(), user.into()));
                fields.push(("password".into(), "any".into()));
            }
            if page.body.contains("name=\"logout\"") {
                fields.push(("logout".into(), "yes".into()));
            }
            let action = reqwest::Url::parse(&page.url).unwrap().join(&action).unwrap().to_string();
            page = self.send(Method::POST, &action, Some(&fields)).await;
        }
        panic!("too many steps at the provider");
    }
}

/// The first form's action and its hidden inputs.
fn form(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let attr = |tag: &str, name: &str| {
        let key = format!("{name}=\"");
        let start = tag.find(&key)? + key.len();
        Some(tag[start..].split('"').next()?.replace("&amp;", "&"))
    };
    let f = html.find("<form")?;
    let tag_end = html[f..].find('>')? + f;
    let action = attr(&html[f..tag_end], "action")?;
    let end = html[f..].find("</form>").map_or(html.len(), |e| e + f);
    let mut fields = Vec::new();
    for input in html[f..end].split("<input").skip(1) {
        let tag = input.split('>').next().unwrap_or_default();
        if tag.contains("type=\"hidden\"")
            && let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value"))
        {
            fields.push((n, v));
        }
    }
    Some((action, fields))
}

async fn events(http: &reqwest::Client, issuer: &str) -> serde_json::Value {
    http.get(format!("{issuer}/__interop/events")).send().await.unwrap().json().await.unwrap()
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Signs `user` in at the BFF through the provider's real authorize, login and consent pages.
async fn sign_in(bff: &mut Client, provider: &mut Browser, base: &str, issuer: &str, user: &str) {
    let start = bff.send(Method::GET, &format!("{base}/auth/login?return_to=/"), false).await;
    assert_eq!(start.status, 302, "{}", start.body);
    let authorize = start.headers["location"].to_str().unwrap().to_owned();
    let callback = provider.walk(&authorize, issuer, user).await;
    assert!(callback.starts_with(&format!("{base}/auth/callback")), "{callback}");
    let done = bff.send(Method::GET, &callback, false).await;
    assert_eq!(done.status, 302, "{}", done.body);
    assert!(bff.jar.contains_key("bff-session"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node and interop/node_modules: run `cargo xtask interop`"]
async fn the_server_interoperates_with_oidc_provider() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop");
    let (pport, sport) = (cluster::free_port(), cluster::free_port());
    let issuer = format!("http://127.0.0.1:{pport}");
    let base = format!("http://127.0.0.1:{sport}");
    let _node =
        Node(Command::new("node").arg(root.join("provider.mjs")).arg(pport.to_string()).arg(&base).spawn().unwrap());
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("{issuer}/.well-known/openid-configuration")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = cluster::shared_key(dir.path());
    let mut settings = cluster::replica_settings(sport, &base, &issuer, "", &key, dir.path(), Policy::hardened());
    settings.store = None;
    let server = bff_session_server::start(settings).await.unwrap();
    let store = &server.app.service.store;

    // Sign-in through the real authorize, login and consent pages; the session; a proxied call to /me.
    let mut alice = Client::new();
    let mut alice_at_idp = Browser::new();
    sign_in(&mut alice, &mut alice_at_idp, &base, &issuer, "alice").await;
    let session = alice.send(Method::GET, &format!("{base}/auth/session"), false).await;
    assert_eq!(session.status, 200, "{}", session.body);
    assert!(session.body.contains("\"sub\":\"alice\""), "{}", session.body);
    let me = alice.send(Method::GET, &format!("{base}/api/me"), false).await;
    assert_eq!(me.status, 200, "the provider accepted the proxied access token: {}", me.body);

    // Refresh with rotation, twice: the second presents the token the first rotated in, or the provider
    // would answer invalid_grant and revoke the grant.
    let mut now = wall_ms();
    for round in 0..2 {
        now += 61_000;
        cluster::freeze(&base, now).await;
        let r = alice.send(Method::GET, &format!("{base}/api/me"), false).await;
        assert_eq!(r.status, 200, "refresh {round}: {}", r.body);
    }
    let e = events(&http, &issuer).await;
    assert_eq!(e["refresh_grants"], 2, "{e}");
    assert_eq!(e["grant_errors"], serde_json::json!([]), "{e}");

    // Twenty concurrent calls at expiry: one refresh grant, no invalid_grant.
    now += 61_000;
    cluster::freeze(&base, now).await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (h, c, u) = (alice.http.clone(), alice.cookies(), format!("{base}/api/me"));
        calls.spawn(async move { h.get(u).header("cookie", c).send().await.unwrap().status().as_u16() });
    }
    while let Some(s) = calls.join_next().await {
        assert_eq!(s.unwrap(), 200);
    }
    let e = events(&http, &issuer).await;
    assert_eq!(e["refresh_grants"], 3, "one grant for twenty calls: {e}");
    assert_eq!(e["grant_errors"], serde_json::json!([]), "{e}");

    // Logout revokes the refresh token at the provider (introspection says inactive), and the
    // RP-initiated logout with id_token_hint is accepted.
    let key_of = |c: &Client| SessionId::decode(&c.jar["bff-session"]).unwrap().key();
    let record = store.get(&key_of(&alice)).await.unwrap().unwrap();
    let refresh_token = record.tokens().unwrap().refresh_token.clone().unwrap();
    let logout = alice.send(Method::POST, &format!("{base}/auth/logout"), true).await;
    assert_eq!(logout.status, 200, "{}", logout.body);
    let end_session: serde_json::Value = serde_json::from_str(&logout.body).unwrap();
    let end_session = end_session["end_session_url"].as_str().unwrap().to_owned();
    assert!(end_session.contains("id_token_hint="), "{end_session}");
    let mut active = true;
    for _ in 0..50 {
        let r: serde_json::Value = http
            .post(format!("{issuer}/token/introspection"))
            .basic_auth("conformance", Some("conformance-secret"))
            .form(&[("token", refresh_token.expose())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        active = r["active"].as_bool().unwrap_or(true);
        if !active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!active, "the refresh token is still active at the provider after logout");
    let back = alice_at_idp.walk(&end_session, &issuer, "alice").await;
    assert!(
        back.starts_with(&format!("{base}/?state=")),
        "the provider did not accept the RP-initiated logout: {back}"
    );

    // A back-channel logout sent by the provider ends the session: bob signs out at the provider itself.
    let mut bob = Client::new();
    let mut bob_at_idp = Browser::new();
    sign_in(&mut bob, &mut bob_at_idp, &base, &issuer, "bob").await;
    assert_eq!(bob.send(Method::GET, &format!("{base}/auth/session"), false).await.status, 200);
    let id_token = store.get(&key_of(&bob)).await.unwrap().unwrap().tokens().unwrap().id_token.clone().unwrap();
    let sent_before = events(&http, &issuer).await["backchannel_ok"].as_u64().unwrap();
    let end = format!("{issuer}/session/end?id_token_hint={}", id_token.expose());
    bob_at_idp.walk(&end, &issuer, "bob").await;
    let mut ended = false;
    for _ in 0..50 {
        if bob.send(Method::GET, &format!("{base}/auth/session"), false).await.status == 401 {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = events(&http, &issuer).await;
    assert!(e["backchannel_ok"].as_u64().unwrap() > sent_before, "{e}");
    assert!(ended, "the provider's back-channel logout did not end bob's session: {e}");
    println!("interop with oidc-provider: {e}");
    server.stop().await;
}
