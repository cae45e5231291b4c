//! The HTTP API end to end: a real server on 127.0.0.1 with its dev provider, a cookie-keeping client,
//! and the test clock to cross deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bff_session_core::Policy;
use bff_session_dev_idp::Fault;
use reqwest::{Method, StatusCode};
use support::{Browser, Server};

const MIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn login_flow_creates_a_session_with_cookies_and_a_csrf_proof() {
    let server = Server::start().await;
    let mut b = server.browser();
    let callback = b.login("alice").await;
    assert_eq!(callback.status, StatusCode::FOUND);
    assert_eq!(callback.location().as_deref(), Some(format!("{}/after", server.base).as_str()));
    let cookies = callback.set_cookies();
    let session = cookies.iter().find(|c| c.starts_with("bff-session=")).expect("session cookie");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Lax") && session.contains("Path=/"));
    let csrf = cookies.iter().find(|c| c.starts_with("bff-csrf=")).expect("csrf cookie");
    assert!(!csrf.contains("HttpOnly"));
    assert_eq!(callback.headers.get("cache-control").unwrap(), "no-store");

    let s = b.get("/auth/session").await;
    assert_eq!(s.status, StatusCode::OK);
    let body = s.json();
    assert_eq!(body["user"]["sub"], "alice");
    assert_eq!(body["user"]["name"], "Alice");
    assert_eq!(body["user"]["email"], "alice@example.test");
    assert_eq!(body["csrf_token"].as_str().unwrap(), b.csrf());
    assert!(body["session"]["absolute_deadline"].as_u64() > body["session"]["created_at"].as_u64());
    assert!(!s.body.contains(&b.session_cookie().unwrap()), "the session ID never appears in a body");
    assert_eq!(server.idp().counters().code_exchanges, 1);
}

#[tokio::test]
async fn requests_without_a_valid_session_get_401_with_the_reason() {
    let server = Server::start().await;
    let mut b = server.browser();
    assert_eq!(b.get("/auth/session").await.error(), "no_session");
    b.jar.insert("bff-session".into(), "not-a-session".into());
    let r = b.get("/auth/session").await;
    assert_eq!((r.status, r.error().as_str()), (StatusCode::UNAUTHORIZED, "malformed_session"));
    assert!(r.set_cookies().iter().any(|c| c.starts_with("bff-session=;") && c.contains("Max-Age=0")));
    b.jar.insert("bff-session".into(), "A".repeat(43));
    assert_eq!(b.get("/auth/session").await.error(), "unknown_session");
    assert_eq!(b.get("/api/x").await.status, StatusCode::UNAUTHORIZED);
    b.jar.clear();
    for (method, path) in [
        (Method::GET, "/auth/sessions"),
        (Method::POST, "/auth/logout"),
        (Method::POST, "/auth/logout-all"),
        (Method::DELETE, "/auth/sessions/x"),
    ] {
        let r = b.send(method, path, &[], None).await;
        assert_eq!((r.status, r.error().as_str()), (StatusCode::UNAUTHORIZED, "no_session"), "{path}");
        assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    }
}

#[tokio::test]
async fn unsafe_requests_need_this_sessions_csrf_proof() {
    let server = Server::start().await;
    let mut a = server.browser();
    a.login("alice").await;
    let mut other = server.browser();
    other.login("alice").await;
    let r = a.send(Method::POST, "/auth/logout", &[], None).await;
    assert_eq!((r.status, r.error().as_str()), (StatusCode::FORBIDDEN, "csrf_missing"));
    let foreign = other.csrf();
    let r = a.send(Method::POST, "/auth/logout", &[("x-csrf-token", &foreign)], None).await;
    assert_eq!((r.status, r.error().as_str()), (StatusCode::FORBIDDEN, "csrf_mismatch"));
    // An equal cookie/header pair of the client's choosing is not a proof.
    a.jar.insert("bff-csrf".into(), "chosen".into());
    let r = a.send(Method::POST, "/auth/logout", &[("x-csrf-token", "chosen")], None).await;
    assert_eq!(r.error(), "csrf_mismatch");
    assert_eq!(a.get("/auth/session").await.status, StatusCode::OK, "refused requests changed nothing");
}

#[tokio::test]
async fn duplicate_and_oversized_cookies_are_refused() {
    let server = Server::start().await;
    let mut b = server.browser();
    b.login("alice").await;
    let good = b.session_cookie().unwrap();
    for header in [format!("bff-session={good}; bff-session=evil"), format!("bff-session=evil; bff-session={good}")] {
        let r = b.send(Method::GET, "/auth/session", &[("cookie", &header)], None).await;
        assert_eq!((r.status, r.error().as_str()), (StatusCode::BAD_REQUEST, "duplicate_cookie"), "{header}");
    }
    let jar = b.jar.clone();
    b.jar.clear();
    let r = b
        .send(
            Method::GET,
            "/auth/session",
            &[("cookie", &format!("bff-session={good}")), ("cookie", "bff-session=evil")],
            None,
        )
        .await;
    assert_eq!(r.error(), "duplicate_cookie");
    let big = format!("pad={}", "x".repeat(20_000));
    let r = b.send(Method::GET, "/auth/session", &[("cookie", &big)], None).await;
    assert_eq!((r.status, r.error().as_str()), (StatusCode::BAD_REQUEST, "cookies_too_large"));
    b.jar = jar;
    assert_eq!(b.get("/auth/session").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_proxy_attaches_the_access_token_and_refreshes_it_when_due() {
    let server = Server::start().await;
    let mut b = server.browser();
    b.login("alice").await;
    let first = b.get("/api/hello?x=1").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let echo = first.json();
    assert_eq!(echo["token"]["sub"], "alice");
    assert_eq!(echo["cookies_forwarded"], false);
    assert_eq!(echo["path"], "/hello");
    assert_eq!(first.headers["x-content-type-options"], "nosniff");
    assert_eq!(server.idp().counters().refresh_grants, 0);
    // The dev provider's tokens live 5 minutes; the default policy refreshes in the last 90 s.
    server.advance(4 * MIN).await;
    let second = b.get("/api/hello").await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(server.idp().counters().refresh_grants, 1);
    assert_eq!(b.get("/api/hello").await.status, StatusCode::OK);
    assert_eq!(server.idp().counters().refresh_grants, 1, "a fresh token is not refreshed again");
    let metrics = server.metrics().await;
    assert_eq!(b.get("/metrics").await.status, StatusCode::NOT_FOUND, "never on the public listener");
    assert!(metrics.contains("bff_refreshes_total{outcome=\"success\"} 1"), "{metrics}");
}

#[tokio::test]
async fn concurrent_requests_at_expiry_cause_exactly_one_refresh() {
    let server = Server::start().await;
    let mut b = server.browser();
    b.login("alice").await;
    server.advance(4 * MIN).await;
    // Every request waits for the one refresh, which the provider makes slow.
    server.idp().fail_next_refresh(Fault::Delay(Duration::from_millis(300)));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let mut b = b.clone();
            tokio::spawn(async move { b.get("/api/burst").await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let c = server.idp().counters();
    assert_eq!((c.refresh_requests, c.refresh_grants, c.invalid_grant), (1, 1, 0));
}

#[tokio::test]
async fn invalid_grant_ends_the_session() {
    let server = Server::start().await;
    let mut b = server.browser();
    b.login("alice").await;
    server.advance(4 * MIN).await;
    server.idp().fail_next_refresh(Fault::InvalidGrant);
    let r = b.get("/api/x").await;
    assert_eq!((r.status, r.error().as_str()), (StatusCode::UNAUTHORIZED, "session_revoked"));
    assert!(b.session_cookie().is_none(), "cookies cleared");
    let mut replay = server.browser();
    replay.jar = b.jar.clone();
    assert_eq!(b.get("/auth/session").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_transient_refresh_failure_keeps_the_session() {
    let server = Server::start().await;
    let mut b = server.browser();
    b.login("alice").await;
    server.advance(4 * MIN).await;
    server.idp().fail_next_refresh(Fault::ServerError);
    // The token is still valid for a minute: the request goes through with it.
    assert_eq!(b.get("/api/x").await.status, StatusCode::OK);
    assert_eq!(b.get("/auth/session").await.status, StatusCode::OK);
    server.advance(Duration::from_secs(5)).await;
    assert_eq!(b.get("/api/x").await.status, StatusCode::OK);
    assert_eq!(server.idp().counters().refresh_grants, 1, "recovered after the back-off");
}

#[tokio::test]
async fn logout_revokes_clears_cookies_and_cannot_be_replayed() {
    let server = Server::start().await;
    let mut b = server.browser();
    b.login("alice").await;
    let stolen = b.jar.clone();
    let r = b.unsafe_call(Method::POST, "/auth/logout").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let url = r.json()["end_session_url"].as_str().unwrap().to_owned();
    assert!(
        url.contains("id_token_hint=")
            && url.contains("client_id=")
            && url.contains("post_logout_redirect_uri=")
            && url.contains("state=")
    );
    let set = r.set_cookies();
    assert_eq!(set.len(), 2);
    assert!(set.iter().any(|c| c == "bff-session=; Path=/; Max-Age=0; SameSite=Lax; HttpOnly"), "{set:?}");
    assert!(set.iter().any(|c| c == "bff-csrf=; Path=/; Max-Age=0; SameSite=Lax"), "{set:?}");
    assert_eq!(r.headers.get("clear-site-data").unwrap(), "\"cookies\"");
    // The provider accepts the RP-initiated logout.
    let end = b.get(&url).await;
    assert_eq!(end.status, StatusCode::FOUND);
    assert_eq!(server.idp().counters().end_sessions, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.idp().counters().revocations, 1, "refresh token revoked at the provider");
    let mut thief = server.browser();
    thief.jar = stolen;
    assert_eq!(thief.get("/auth/session").await.error(), "session_revoked");
    assert_eq!(thief.get("/api/x").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_all_ends_every_device_of_the_user_only() {
    let server = Server::start().await;
    let (mut laptop, mut phone, mut bob) = (server.browser(), server.browser(), server.browser());
    laptop.login("alice").await;
    phone.login("alice").await;
    bob.login("bob").await;
    let r = laptop.unsafe_call(Method::POST, "/auth/logout-all").await;
    assert_eq!(r.json()["ended"], 2);
    assert_eq!(r.headers.get("clear-site-data").unwrap(), "\"cookies\"");
    assert_eq!(phone.get("/auth/session").await.error(), "session_revoked");
    assert_eq!(laptop.get("/auth/session").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bob.get("/auth/session").await.status, StatusCode::OK);
}

#[tokio::test]
async fn devices_are_listed_and_one_can_be_ended_from_another() {
    let server = Server::start().await;
    let (mut laptop, mut phone) = (server.browser(), server.browser());
    phone.user_agent = "phone/2".into();
    laptop.login("alice").await;
    phone.login("alice").await;
    let list = laptop.get("/auth/sessions").await.json();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let phone_entry = sessions.iter().find(|s| s["user_agent"] == "phone/2").unwrap();
    assert_eq!(phone_entry["current"], false);
    assert_eq!(phone_entry["client_ip"], "127.0.0.1");
    let handle = phone_entry["handle"].as_str().unwrap();
    assert_eq!(
        laptop.send(Method::DELETE, &format!("/auth/sessions/{handle}"), &[], None).await.error(),
        "csrf_missing"
    );
    let r = laptop.unsafe_call(Method::DELETE, &format!("/auth/sessions/{handle}")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(phone.get("/auth/session").await.error(), "session_revoked");
    assert_eq!(laptop.get("/auth/sessions").await.json()["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(
        laptop.unsafe_call(Method::DELETE, &format!("/auth/sessions/{handle}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(laptop.unsafe_call(Method::DELETE, "/auth/sessions/garbage").await.status, StatusCode::NOT_FOUND);
    // Another user's handle is unknown to this one.
    let mut bob = server.browser();
    bob.login("bob").await;
    let bobs = bob.get("/auth/sessions").await.json()["sessions"][0]["handle"].as_str().unwrap().to_owned();
    assert_eq!(
        laptop.unsafe_call(Method::DELETE, &format!("/auth/sessions/{bobs}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(bob.get("/auth/session").await.status, StatusCode::OK);
}

#[tokio::test]
async fn backchannel_logout_by_sid_and_by_sub() {
    let server = Server::start().await;
    let (mut one, mut two, mut three) = (server.browser(), server.browser(), server.browser());
    one.login("alice").await;
    let sid = server.idp().latest_sid("alice").unwrap();
    two.login("alice").await;
    three.login("carol").await;
    assert_eq!(server.idp().backchannel_logout(None, Some(&sid)).await, Ok(200));
    assert_eq!(one.get("/auth/session").await.error(), "session_revoked");
    assert_eq!(two.get("/auth/session").await.status, StatusCode::OK, "another provider session stays");
    assert_eq!(server.idp().backchannel_logout(Some("alice"), None).await, Ok(200));
    assert_eq!(two.get("/auth/session").await.error(), "session_revoked");
    assert_eq!(three.get("/auth/session").await.status, StatusCode::OK);
}

#[tokio::test]
async fn backchannel_logout_refuses_invalid_and_replayed_tokens() {
    let server = Server::start().await;
    let mut b = server.browser();
    b.login("alice").await;
    let iss = format!("{}/idp", server.base);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let event = serde_json::json!({ "http://schemas.openid.net/event/backchannel-logout": {} });
    let claims = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = serde_json::json!({ "iss": iss, "aud": "bff-session-demo", "iat": now, "exp": now + 60, "jti": format!("j{}", rand_id()), "events": event, "sub": "alice" });
        f(&mut c);
        server.idp().sign_logout_token(&c).unwrap()
    };
    let post = |token: String| {
        let mut b = server.browser();
        async move {
            b.send(
                Method::POST,
                "/auth/backchannel-logout",
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(format!("logout_token={token}")),
            )
            .await
        }
    };
    for (what, token) in [
        ("wrong iss", claims(&|c| c["iss"] = "https://evil".into())),
        ("wrong aud", claims(&|c| c["aud"] = "someone-else".into())),
        ("nonce present", claims(&|c| c["nonce"] = "n".into())),
        ("no events", claims(&|c| c.as_object_mut().unwrap().remove("events").map(|_| ()).unwrap_or(()))),
        ("no sub or sid", claims(&|c| c.as_object_mut().unwrap().remove("sub").map(|_| ()).unwrap_or(()))),
        ("expired", claims(&|c| c["exp"] = (now - 600).into())),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none"}"#),
                b64(&serde_json::json!({"iss": iss, "aud": "bff-session-demo", "sub": "alice"}).to_string())
            ),
        ),
        ("garbage", "abc".into()),
    ] {
        let r = post(token).await;
        assert_eq!((r.status, r.error().as_str()), (StatusCode::BAD_REQUEST, "invalid_logout_token"), "{what}");
        assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
    }
    assert_eq!(b.get("/auth/session").await.status, StatusCode::OK, "no refused token ended the session");
    let valid = claims(&|_| {});
    assert_eq!(post(valid.clone()).await.status, StatusCode::OK);
    let replay = post(valid).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert!(replay.json()["message"].as_str().unwrap().contains("replayed"));
    assert_eq!(b.get("/auth/session").await.error(), "session_revoked");
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn rand_id() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[tokio::test]
async fn deadlines_on_the_test_clock_end_sessions() {
    let server = Server::with_policy(Policy::asvs_l2()).await;
    let mut idle = server.browser();
    idle.login("alice").await;
    let mut busy = server.browser();
    busy.login("bob").await;
    for _ in 0..5 {
        server.advance(10 * MIN).await;
        assert_eq!(busy.get("/auth/session").await.status, StatusCode::OK);
    }
    assert_eq!(idle.get("/auth/session").await.error(), "session_expired");
    let mut r = busy.get("/auth/session").await;
    for _ in 0..(12 * 6) {
        server.advance(10 * MIN).await;
        r = busy.get("/auth/session").await;
        if r.status != StatusCode::OK {
            break;
        }
    }
    assert_eq!(r.error(), "session_expired");
    assert!(r.json()["message"].as_str().unwrap().contains("absolute"));
}

#[tokio::test]
async fn a_restarted_server_keeps_its_sessions_and_logouts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), Policy::hardened()).await;
    let (mut kept, mut ended) = (server.browser(), server.browser());
    kept.login("alice").await;
    ended.login("bob").await;
    assert_eq!(ended.unsafe_call(Method::POST, "/auth/logout").await.status, StatusCode::OK);
    let ended_jar = {
        let mut e = server.browser();
        e.login("bob").await;
        let jar = e.jar.clone();
        e.unsafe_call(Method::POST, "/auth/logout").await;
        jar
    };
    server.stop().await;
    let server = Server::start_in(dir.path(), Policy::hardened()).await;
    let mut kept2 = server.browser();
    kept2.jar = kept.jar.clone();
    assert_eq!(kept2.get("/auth/session").await.status, StatusCode::OK);
    let mut ended2 = server.browser();
    ended2.jar = ended_jar;
    assert_eq!(ended2.get("/auth/session").await.error(), "session_revoked");
}

#[tokio::test]
async fn login_refuses_bad_return_paths_and_bad_callbacks() {
    let server = Server::start().await;
    let mut b = server.browser();
    for bad in ["//evil.com", "/%2F%2Fevil.com", "https://evil.com", "/%09/evil", "javascript:alert(1)"] {
        let r = b.get(&format!("/auth/login?return_to={}", urlencode(bad))).await;
        assert_eq!((r.status, r.error().as_str()), (StatusCode::BAD_REQUEST, "invalid_return_to"), "{bad}");
    }
    assert_eq!(b.get("/auth/callback?code=x&state=y").await.error(), "login_not_started");
    let start = b.get("/auth/login?login_hint=alice").await;
    let authorize = b.get(&start.location().unwrap()).await;
    let callback = authorize.location().unwrap();
    let wrong_state = callback.replace("state=", "state=x");
    let jar = b.jar.clone();
    let r = b.get(&wrong_state).await;
    assert_eq!(r.error(), "state_mismatch");
    assert!(r.set_cookies().iter().any(|c| c.starts_with("bff-login=;")), "the failed attempt's cookie is cleared");
    // The pending login was single use: even the right state fails now.
    b.jar = jar;
    assert_eq!(b.get(&callback).await.error(), "login_expired");
    assert!(b.session_cookie().is_none());
    // A failed callback clears the login cookie.
    assert_eq!(b.get("/auth/callback?error=access_denied&state=x").await.error(), "login_not_started");
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn a_code_cannot_be_replayed() {
    let server = Server::start().await;
    let mut b = server.browser();
    let start = b.get("/auth/login?login_hint=alice").await;
    let login_jar = b.jar.clone();
    let callback = b.get(&start.location().unwrap()).await.location().unwrap();
    assert_eq!(b.get(&callback).await.status, StatusCode::FOUND);
    let mut again = server.browser();
    again.jar = login_jar;
    assert_eq!(again.get(&callback).await.error(), "login_expired");
}

#[tokio::test]
async fn the_proxy_refuses_paths_that_leave_the_upstream() {
    let server = Server::start().await;
    let mut b = server.browser();
    b.login("alice").await;
    // (The client's URL parser already resolves a bare `%2e%2e` segment, so these are the forms that arrive.)
    for bad in ["/api/..%2f..%2fadmin", "/api//evil.com/x", "/api/%2e%2e%2fsecret", "/api/a%5cb"] {
        let r = b.get(bad).await;
        assert_eq!((r.status, r.error().as_str()), (StatusCode::BAD_REQUEST, "invalid_api_path"), "{bad}");
    }
    let r = b.unsafe_call(Method::POST, "/api/items").await;
    assert_eq!(r.json()["method"], "POST");
    assert_eq!(b.send(Method::POST, "/api/items", &[], None).await.error(), "csrf_missing");
}

#[tokio::test]
async fn health_metrics_and_unknown_routes() {
    let server = Server::start().await;
    let mut b = server.browser();
    assert_eq!(b.get("/healthz").await.json()["status"], "ok");
    b.login("alice").await;
    let m = server.metrics().await;
    assert!(m.contains("bff_sessions_created_total{provider=\"oidc\"} 1"), "{m}");
    assert!(m.contains("bff_request_duration_seconds_count{route=\"callback\"} 1"), "{m}");
    assert!(m.contains("bff_transitions_total{event=\"created\",detail=\"\"} 1"), "{m}");
    b.unsafe_call(Method::POST, "/auth/logout").await;
    let m = server.metrics().await;
    assert!(m.contains("bff_transitions_total{event=\"revoked\",detail=\"logout\"} 1"), "{m}");
    for op in ["get", "put", "flush", "logins"] {
        let count = format!("bff_store_operation_duration_seconds_count{{op=\"{op}\"}} ");
        let n: u64 = m.lines().find_map(|l| l.strip_prefix(&count)).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(n >= 1, "store {op} timed: {m}");
    }
    assert!(m.contains("bff_revocation_queue_depth "), "{m}");
    assert!(m.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // Labels are `&'static str`s from fixed vocabularies; the user's name is the one thing a client chose here.
    assert!(!m.contains("alice"), "no label carries a user: {m}");
    let addr = server.running.as_ref().and_then(|r| r.metrics_addr).unwrap();
    let r = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(r.headers()["content-type"], bff_session_server::metrics::CONTENT_TYPE);
    assert_eq!(b.get("/nope").await.error(), "not_found");
    assert_eq!(b.send(Method::PUT, "/auth/session", &[], None).await.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_test_clock_can_be_set_and_refuses_bad_bodies() {
    let server = Server::start().await;
    let mut b = server.browser();
    let r = b.send(Method::POST, "/__test/clock", &[], Some(r#"{"set_ms": 4102444800000}"#.into())).await;
    assert_eq!(r.json()["now_ms"].as_u64().unwrap() / 1000, 4_102_444_800);
    for bad in ["", "{}", r#"{"advance_ms": "soon"}"#, r#"{"advance_ms": 1, "set_ms": 2}"#] {
        let r = b.send(Method::POST, "/__test/clock", &[], Some(bad.into())).await;
        assert_eq!((r.status, r.error().as_str()), (StatusCode::BAD_REQUEST, "invalid_body"), "{bad}");
    }
}

#[tokio::test]
async fn the_test_clock_exists_only_in_test_mode() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut settings = support::settings(dir.path(), port, Policy::hardened());
    settings.test_clock = false;
    let running = bff_session_server::start(settings).await.unwrap();
    let mut b = Browser::new(&format!("http://127.0.0.1:{port}"));
    let r = b.send(Method::POST, "/__test/clock", &[], Some(r#"{"advance_ms": 1}"#.into())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = b.send(Method::POST, "/__test/clock", &[], Some(r#"{"set_ms": 1}"#.into())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    running.stop().await;
}

#[tokio::test]
async fn the_openapi_document_is_served_and_names_every_public_route() {
    let server = Server::start().await;
    let mut b = server.browser();
    let r = b.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/healthz",
        "/auth/login",
        "/auth/callback",
        "/auth/session",
        "/auth/logout",
        "/auth/logout-all",
        "/auth/sessions",
        "/auth/sessions/{handle}",
        "/auth/backchannel-logout",
        "/api/{path}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
}
