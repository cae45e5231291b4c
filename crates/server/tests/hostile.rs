//! Attacks and malformed input, black box over HTTP. Each case asserts the exact refusal and that the
//! victim's session record did not change; no response is a 5xx; and a sweep over every response body and
//! header and every log line of the suite finds no session ID, token, code or CSRF proof where it does not
//! belong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use bff_session_core::{RevocationReason, SessionId};
use reqwest::{Method, StatusCode};
use support::{Browser, Resp, Server};

/// Log lines of the whole test binary, for the sweep.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every response of the suite, and the secrets that must not leak.
#[derive(Default)]
struct Sweep {
    /// (what, status, headers and body as text, secrets this response may carry)
    responses: Vec<(String, String, Vec<String>)>,
    secrets: Vec<(String, String)>,
    cases: usize,
}

impl Sweep {
    fn record(&mut self, what: &str, r: &Resp, allowed: &[&str]) {
        assert!(r.status.as_u16() < 500, "{what}: {} {}", r.status, r.body);
        self.keep(what, r, allowed);
    }

    /// Keeps a response for the sweep for secrets.
    fn keep(&mut self, what: &str, r: &Resp, allowed: &[&str]) {
        let mut text = format!("{}\n", r.status);
        for (k, v) in &r.headers {
            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("")));
        }
        text.push_str(&r.body);
        self.responses.push((what.to_owned(), text, allowed.iter().map(|s| (*s).to_owned()).collect()));
    }

    /// One attack case: the exact refusal.
    fn expect(&mut self, what: &str, r: Resp, status: StatusCode, error: &str) {
        assert_eq!((r.status, r.error().as_str()), (status, error), "{what}: {}", r.body);
        self.record(what, &r, &[]);
        self.cases += 1;
    }

    /// One case whose fault is the upstream's, not the client's: a 502 or 504 is the right answer.
    fn expect_gateway(&mut self, what: &str, r: Resp, status: StatusCode, error: &str) {
        assert!(matches!(status, StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT));
        assert_eq!((r.status, r.error().as_str()), (status, error), "{what}: {}", r.body);
        self.keep(what, &r, &[]);
        self.cases += 1;
    }

    fn secret(&mut self, what: &str, value: &str) {
        if value.len() >= 8 {
            self.secrets.push((what.to_owned(), value.to_owned()));
        }
    }

    fn check(&self, logs: &str) {
        for (name, secret) in &self.secrets {
            assert!(!logs.contains(secret.as_str()), "a log line contains the {name}");
            for (what, text, allowed) in &self.responses {
                if allowed.contains(secret) {
                    continue;
                }
                assert!(!text.contains(secret.as_str()), "the response to {what} echoes the {name}");
            }
        }
    }
}

/// The victim's record version, read from the store: "nothing changed" means this is unchanged.
async fn version(server: &Server, b: &Browser) -> Option<u64> {
    let id = SessionId::decode(&b.session_cookie()?).ok()?;
    let s = server.running.as_ref()?.app.service.store.get(&id.key()).await.ok()??;
    Some(s.version())
}

async fn raw(b: &Browser, method: Method, path: &str, headers: &[(&str, String)]) -> Resp {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut req = http.request(method, format!("{}{path}", b.base));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    Resp { status: r.status(), headers: r.headers().clone(), body: r.text().await.unwrap() }
}

/// An API upstream that misbehaves by path: `/slow` never answers in time, `/huge` declares 17 MiB,
/// `/chunked` sends 17 MiB without a length; anything else answers `{}`.
async fn misbehaving_upstream(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            let mut head = vec![0u8; 8192];
            let n = stream.read(&mut head).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&head[..n]).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let mib = vec![b'x'; 1 << 20];
            match path.as_str() {
                "/slow" => tokio::time::sleep(std::time::Duration::from_secs(5)).await,
                "/huge" => {
                    let _ = stream
                        .write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 17 << 20).as_bytes())
                        .await;
                    for _ in 0..17 {
                        if stream.write_all(&mib).await.is_err() {
                            return;
                        }
                    }
                }
                "/leaky" => {
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/html\r\n\
                              set-cookie: bff-session=planted\r\naccess-control-allow-origin: *\r\n\
                              access-control-allow-credentials: true\r\n\r\n{}",
                        )
                        .await;
                }
                "/chunked" => {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                    for _ in 0..17 {
                        let chunk =
                            [format!("{:x}\r\n", mib.len()).into_bytes(), mib.clone(), b"\r\n".to_vec()].concat();
                        if stream.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                }
                _ => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}")
                        .await;
                }
            }
        });
    }
}

/// Writes `request` to the server over a plain TCP connection (what a client library would not send) and
/// returns what it answers, up to the first 4 KiB or until it closes.
async fn raw_tcp(base: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before the whole body is written; that is the point.
    let _ = stream.write_all(request).await;
    let mut buf = vec![0u8; 4096];
    let mut read = 0;
    while read < buf.len() {
        match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf[read..])).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                read += n;
                if String::from_utf8_lossy(&buf[..read]).contains("}") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&buf[..read]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_refused_exactly_and_change_nothing() {
    let logs = Logs::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).try_init();
    let server = Server::start().await;
    let mut sweep = Sweep::default();

    let mut victim = server.browser();
    let login = victim.login("victim").await;
    let sid = victim.session_cookie().unwrap();
    let csrf = victim.csrf();
    sweep.secret("session ID", &sid);
    sweep.secret("CSRF proof", &csrf);
    let session = victim.get("/auth/session").await;
    sweep.record("the victim's login", &login, &[&sid, &csrf]);
    sweep.record("the victim's session", &session, &[&csrf]);
    let before = version(&server, &victim).await;
    let key = SessionId::decode(&sid).unwrap().key();
    let record = server.running.as_ref().unwrap().app.service.store.get(&key).await.unwrap().unwrap();
    let tokens = record.tokens().cloned().unwrap();
    sweep.secret("access token", tokens.access_token.expose());
    sweep.secret("refresh token", tokens.refresh_token.as_ref().unwrap().expose());
    sweep.secret("ID token", tokens.id_token.as_ref().unwrap().expose());

    // Refusals that must leave the victim's record alone.
    let cookie = |v: &str| vec![("cookie", v.to_owned())];

    // Malformed session cookies.
    for (what, value) in [
        ("a session cookie that is not base64", "bff-session=%%%not-base64%%%".to_owned()),
        ("a short session cookie", "bff-session=abc".to_owned()),
        ("a session cookie one byte short", format!("bff-session={}", &sid[..sid.len() - 2])),
    ] {
        let r = raw(&victim, Method::GET, "/auth/session", &cookie(&value)).await;
        sweep.expect(what, r, StatusCode::UNAUTHORIZED, "malformed_session");
    }
    // A Cookie header that is not visible ASCII is not read at all.
    let r = raw(&victim, Method::GET, "/auth/session", &cookie("bff-session=ünïcødé")).await;
    sweep.expect("a session cookie with unicode", r, StatusCode::UNAUTHORIZED, "no_session");
    // Oversized cookie headers.
    let pad = |n: usize| format!("bff-session={sid}; pad={}", "x".repeat(n));
    let r = raw(&victim, Method::GET, "/auth/session", &cookie(&pad(4 * 1024))).await;
    assert_eq!(r.status, StatusCode::OK, "4 KB of cookies is normal");
    sweep.record("4 KB cookie header", &r, &[&csrf]);
    let r = raw(&victim, Method::GET, "/auth/session", &cookie(&pad(20 * 1024))).await;
    sweep.expect("20 KB cookie header", r, StatusCode::BAD_REQUEST, "cookies_too_large");
    // Past --max-header-bytes hyper answers before any route runs: a bare 431, and the connection closes.
    for size in [64 * 1024, 1024 * 1024] {
        let r = raw(&victim, Method::GET, "/auth/session", &cookie(&pad(size))).await;
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{size} bytes of cookie header");
        sweep.record("an oversized cookie header", &r, &[]);
        sweep.cases += 1;
    }
    // Duplicates, in both orders, and split across two Cookie headers.
    let forged = "bff-session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (what, headers) in [
        ("duplicate session cookies, the victim's first", cookie(&format!("bff-session={sid}; {forged}"))),
        ("duplicate session cookies, the attacker's first", cookie(&format!("{forged}; bff-session={sid}"))),
        (
            "session cookies split across two Cookie headers",
            vec![("cookie", format!("bff-session={sid}")), ("cookie", forged.to_owned())],
        ),
    ] {
        let r = raw(&victim, Method::GET, "/auth/session", &headers).await;
        sweep.expect(what, r, StatusCode::BAD_REQUEST, "duplicate_cookie");
    }
    // Names that only look like the session cookie.
    for name in ["__host-bff-session", "__Host-bff-session", "BFF-SESSION", "bff_session"] {
        let r = raw(&victim, Method::GET, "/auth/session", &cookie(&format!("{name}={sid}"))).await;
        sweep.expect(&format!("a cookie named {name:?}"), r, StatusCode::UNAUTHORIZED, "no_session");
    }

    // CSRF: another session's proof, a previous session's proof, a chosen equal pair, none.
    let mut other = server.browser();
    other.login("mallory").await;
    let mut previous = server.browser();
    previous.login("victim").await;
    let old_proof = previous.csrf();
    assert_eq!(previous.unsafe_call(Method::POST, "/auth/logout").await.status, StatusCode::OK);
    sweep.secret("another user's session ID", &other.session_cookie().unwrap());
    for (what, proof, extra_cookie) in [
        ("another user's CSRF proof", other.csrf(), None),
        ("the proof of the user's previous session", old_proof, None),
        ("a CSRF cookie and header chosen by the client", "chosen".to_owned(), Some("bff-csrf=chosen")),
    ] {
        let mut c = format!("bff-session={sid}");
        if let Some(extra) = extra_cookie {
            c.push_str("; ");
            c.push_str(extra);
        }
        let r = raw(&victim, Method::POST, "/auth/logout", &[("cookie", c), ("x-csrf-token", proof)]).await;
        sweep.expect(what, r, StatusCode::FORBIDDEN, "csrf_mismatch");
    }
    // Method-override tricks do not turn an unsafe request into a safe one.
    let c = format!("bff-session={sid}");
    for (what, path, headers) in [
        ("X-HTTP-Method-Override: GET", "/auth/logout", vec![("x-http-method-override", "GET".to_owned())]),
        ("X-Method-Override: GET", "/auth/logout", vec![("x-method-override", "GET".to_owned())]),
        ("_method=GET in the query", "/auth/logout?_method=GET", vec![]),
    ] {
        let mut h = headers;
        h.push(("cookie", c.clone()));
        let r = raw(&victim, Method::POST, path, &h).await;
        sweep.expect(what, r, StatusCode::FORBIDDEN, "csrf_missing");
    }
    let r = raw(&victim, Method::GET, "/auth/logout", &cookie(&c)).await;
    sweep.expect("logout by GET", r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    // Open redirects in the return path.
    for bad in [
        "//evil.example",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "/\t/evil.example",
        "/%09/evil.example",
        "javascript:alert(1)",
        "https://evil.example/",
    ] {
        let q: String = url::form_urlencoded::byte_serialize(bad.as_bytes()).collect();
        let r = raw(&victim, Method::GET, &format!("/auth/login?return_to={q}"), &[]).await;
        sweep.expect(&format!("return path {bad:?}"), r, StatusCode::BAD_REQUEST, "invalid_return_to");
    }

    // Proxy paths that try to reach another host.
    for bad in [
        "/api//evil.example/x",
        "/api/..%2f..%2fadmin",
        "/api/%2e%2e%2fsecret",
        "/api/a%5cb",
        "/api/%2F%2Fevil.example",
        "/api/a;jsessionid=x",
        "/api/%252e%252e/admin",
        "/api/%c0%ae%c0%ae/admin",
    ] {
        let r = raw(&victim, Method::GET, bad, &cookie(&c)).await;
        sweep.expect(&format!("API path {bad:?}"), r, StatusCode::BAD_REQUEST, "invalid_api_path");
    }

    // Methods the proxy never forwards.
    for method in ["TRACE", "PROPFIND"] {
        let r = raw(&victim, Method::from_bytes(method.as_bytes()).unwrap(), "/api/x", &cookie(&c)).await;
        sweep.expect(&format!("API method {method}"), r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }

    // Forged back-channel logout tokens naming the victim.
    let iss = format!("{}/idp", server.base);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let event = serde_json::json!({ "http://schemas.openid.net/event/backchannel-logout": {} });
    let base = serde_json::json!({ "iss": iss, "aud": "bff-session-demo", "iat": now, "exp": now + 60, "jti": "j-1", "events": event, "sub": "victim" });
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let foreign = bff_session_dev_idp::Signer::generate().unwrap();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let signed = |c: &serde_json::Value| server.idp().sign_logout_token(c).unwrap();
    let valid = signed(&with(&|c| c["jti"] = "j-replayed".into()));
    let mut post_valid = server.browser();
    let form = [("content-type", "application/x-www-form-urlencoded")];
    // A valid token for another user, to see its jti replayed below.
    let other_user = signed(&with(&|c| {
        c["sub"] = "nobody".into();
        c["jti"] = "j-replayed".into();
    }));
    let first = post_valid
        .send(Method::POST, "/auth/backchannel-logout", &form, Some(format!("logout_token={other_user}")))
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let jwks_fetches = server.idp().counters().jwks_fetches;
    for (what, token) in [
        (
            "a logout token with alg none",
            format!("{}.{}.", b64(r#"{"alg":"none","typ":"logout+jwt"}"#), b64(&base.to_string())),
        ),
        ("a logout token signed with a foreign key", foreign.sign_logout(&base).unwrap()),
        ("a logout token from another issuer", signed(&with(&|c| c["iss"] = "https://evil.example".into()))),
        ("a logout token for another audience", signed(&with(&|c| c["aud"] = "someone-else".into()))),
        ("a logout token with a nonce", signed(&with(&|c| c["nonce"] = "n".into()))),
        (
            "a logout token without the events claim",
            signed(&with(&|c| drop(c.as_object_mut().unwrap().remove("events")))),
        ),
        ("a replayed logout token (jti seen)", valid),
        ("a logout token issued an hour ago", signed(&with(&|c| c["iat"] = (now - 3600).into()))),
        ("an ID token posted as a logout token (typ JWT)", server.idp().sign_with_typ("JWT", &base).unwrap()),
        ("another token naming an unknown key", foreign.sign_logout(&with(&|c| c["jti"] = "j-2".into())).unwrap()),
    ] {
        let r = server
            .browser()
            .send(Method::POST, "/auth/backchannel-logout", &form, Some(format!("logout_token={token}")))
            .await;
        sweep.expect(what, r, StatusCode::BAD_REQUEST, "invalid_logout_token");
    }
    let refetched = server.idp().counters().jwks_fetches - jwks_fetches;
    assert!(refetched <= 1, "two tokens naming an unknown key fetched the JWKS {refetched} times");

    assert_eq!(version(&server, &victim).await, before, "a refused request changed the victim's record");
    assert_eq!(victim.get("/auth/session").await.status, StatusCode::OK);

    // Callback attacks: missing, wrong, replayed and foreign state; a replayed code.
    let mut attacker = server.browser();
    let start = attacker.get("/auth/login?login_hint=attacker").await;
    let callback = attacker.get(&start.location().unwrap()).await.location().unwrap();
    let code = url::Url::parse(&callback).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    sweep.secret("authorization code", &code);
    let login_jar = attacker.jar.clone();
    let no_state = callback.split("&state=").next().unwrap().to_owned();
    let r = attacker.get(&no_state).await;
    sweep.expect("a callback without state", r, StatusCode::BAD_REQUEST, "state_mismatch");
    attacker.jar = login_jar.clone();
    let r = attacker.get(&format!("{no_state}&state=wrong")).await;
    sweep.expect("a callback with the wrong state", r, StatusCode::BAD_REQUEST, "login_expired");
    // The victim's browser gets the attacker's callback (login CSRF / a foreign state).
    let mut victim_tab = server.browser();
    let _ = victim_tab.get("/auth/login?login_hint=victim").await;
    let r = victim_tab.get(&callback).await;
    sweep.expect("a callback with a foreign state", r, StatusCode::BAD_REQUEST, "state_mismatch");
    let mut fresh = server.browser();
    fresh.jar = login_jar;
    let r = fresh.get(&callback).await;
    sweep.expect("a replayed state and code", r, StatusCode::BAD_REQUEST, "login_expired");

    // RFC 9207: a response that names another provider, or none, while ours advertises the parameter.
    for (what, rewrite) in [("another", Some("https://evil.example")), ("no", None)] {
        let mut mixed = server.browser();
        let start = mixed.get("/auth/login?login_hint=mixup").await;
        let callback = mixed.get(&start.location().unwrap()).await.location().unwrap();
        let mut url = url::Url::parse(&callback).unwrap();
        let pairs: Vec<(String, String)> =
            url.query_pairs().filter(|(k, _)| k != "iss").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        if let Some(iss) = rewrite {
            url.query_pairs_mut().append_pair("iss", iss);
        }
        let r = mixed.get(url.as_str()).await;
        sweep.expect(&format!("a login response naming {what} issuer"), r, StatusCode::BAD_REQUEST, "iss_mismatch");
        assert!(mixed.session_cookie().is_none());
    }

    // A nonce the BFF did not send: the browser rewrites it on its way to the provider.
    let mut tamper = server.browser();
    let start = tamper.get("/auth/login?login_hint=tamper").await;
    let authorize = start.location().unwrap();
    let mut url = url::Url::parse(&authorize).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "nonce" { "attacker-nonce".to_owned() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let callback = tamper.get(url.as_str()).await.location().unwrap();
    let r = tamper.get(&callback).await;
    sweep.expect("an ID token with another nonce", r, StatusCode::BAD_REQUEST, "login_rejected");
    assert!(tamper.session_cookie().is_none());
    // A code that already signed someone in, presented with a fresh login of the same browser.
    let mut once = server.browser();
    let start = once.get("/auth/login?login_hint=once").await;
    let used = once.get(&start.location().unwrap()).await.location().unwrap();
    assert_eq!(once.get(&used).await.status, StatusCode::FOUND);
    sweep.secret("the used browser's session ID", &once.session_cookie().unwrap());
    let used_code = url::Url::parse(&used).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    sweep.secret("used authorization code", &used_code);
    let fresh_start = once.get("/auth/login?login_hint=once").await;
    let fresh_state = url::Url::parse(&fresh_start.location().unwrap())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let iss: String = url::form_urlencoded::byte_serialize(format!("{}/idp", server.base).as_bytes()).collect();
    let r = once.get(&format!("/auth/callback?code={used_code}&state={fresh_state}&iss={iss}")).await;
    sweep.expect("a replayed code with a fresh state", r, StatusCode::BAD_REQUEST, "login_rejected");

    // Session fixation: a planted ID never becomes a session, and signing in replaces it.
    let planted = SessionId::from_random_bytes([0x42; 32]).encode();
    let mut fixated = server.browser();
    fixated.jar.insert("bff-session".into(), planted.clone());
    let r = fixated.get("/auth/session").await;
    sweep.expect("a planted session ID", r, StatusCode::UNAUTHORIZED, "unknown_session");
    fixated.jar.insert("bff-session".into(), planted.clone());
    fixated.login("victim").await;
    assert_ne!(fixated.session_cookie().unwrap(), planted);
    let r = raw(&fixated, Method::GET, "/auth/session", &cookie(&format!("bff-session={planted}"))).await;
    sweep.expect("the planted ID after a sign-in", r, StatusCode::UNAUTHORIZED, "unknown_session");
    sweep.secret("fixated browser's session ID", &fixated.session_cookie().unwrap());

    // Spoofed X-Forwarded-For from a peer that is not a trusted proxy.
    let untrusted =
        Server::start_with(|s| s.trusted_proxies = bff_session_core::client_ip::TrustedProxies::none()).await;
    let mut spoofer = untrusted.browser();
    spoofer.login("spoofer").await;
    let list = spoofer.send(Method::GET, "/auth/sessions", &[("x-forwarded-for", "203.0.113.9")], None).await;
    assert_eq!(list.json()["sessions"][0]["client_ip"], "127.0.0.1", "the spoofed address was believed");
    sweep.record("the device list with a spoofed X-Forwarded-For", &list, &[]);
    sweep.cases += 1;

    // Replays after logout, logout-all, back-channel logout and expiry.
    for how in ["logout", "logout-all", "backchannel", "expiry"] {
        let mut b = server.browser();
        b.login(&format!("replay-{how}")).await;
        let stolen = b.session_cookie().unwrap();
        sweep.secret(&format!("session ID ended by {how}"), &stolen);
        let (path, error) = match how {
            "logout" => (Some("/auth/logout"), "session_revoked"),
            "logout-all" => (Some("/auth/logout-all"), "session_revoked"),
            "backchannel" => {
                let sid = server.idp().latest_sid(&format!("replay-{how}")).unwrap();
                assert_eq!(server.idp().backchannel_logout(None, Some(&sid)).await.unwrap(), 200);
                (None, "session_revoked")
            }
            _ => {
                server.advance(std::time::Duration::from_secs(13 * 3600)).await;
                (None, "session_expired")
            }
        };
        if let Some(path) = path {
            assert_eq!(b.unsafe_call(Method::POST, path).await.status, StatusCode::OK);
        }
        let r = raw(&b, Method::GET, "/auth/session", &cookie(&format!("bff-session={stolen}"))).await;
        sweep.expect(&format!("a replay after {how}"), r, StatusCode::UNAUTHORIZED, error);
    }

    // Cross-site requests: Fetch Metadata and Origin refuse them before any session is read, even with the
    // right CSRF token; a client that sends neither is left to the CSRF check.
    let mut site = server.browser();
    site.login("cross-site").await;
    let jar = site.cookie_header().unwrap();
    let proof = site.csrf();
    let with = |extra: &[(&'static str, &str)]| {
        let mut h = vec![("cookie", jar.clone()), ("x-csrf-token", proof.clone())];
        h.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        h
    };
    let r = raw(&site, Method::GET, "/api/x", &with(&[("sec-fetch-site", "cross-site")])).await;
    sweep.expect("an API read from another site", r, StatusCode::FORBIDDEN, "cross_site_request");
    let r = raw(&site, Method::GET, "/auth/session", &with(&[("sec-fetch-site", "cross-site")])).await;
    sweep.expect("a session read from another site", r, StatusCode::FORBIDDEN, "cross_site_request");
    let r = raw(&site, Method::POST, "/api/x", &with(&[("origin", "https://evil.example")])).await;
    sweep.expect(
        "an API write from another origin with the CSRF token",
        r,
        StatusCode::FORBIDDEN,
        "cross_origin_request",
    );
    let r = raw(&site, Method::POST, "/auth/logout", &with(&[("sec-fetch-site", "same-site")])).await;
    sweep.expect("a logout from a sibling site with the CSRF token", r, StatusCode::FORBIDDEN, "cross_origin_request");
    let r = raw(&site, Method::POST, "/api/x", &with(&[("origin", "null")])).await;
    sweep.expect("an API write from an opaque origin", r, StatusCode::FORBIDDEN, "cross_origin_request");
    let same = [("origin", server.base.as_str()), ("sec-fetch-site", "same-origin")];
    assert_eq!(raw(&site, Method::POST, "/api/x", &with(&same)).await.status, StatusCode::OK, "this origin passes");
    assert_eq!(
        raw(&site, Method::POST, "/api/x", &with(&[])).await.status,
        StatusCode::OK,
        "no metadata: CSRF decides"
    );

    // An upstream that hangs gets 504, one that answers too much (declared, or chunked without a length) 502.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}/", upstream.local_addr().unwrap());
    tokio::spawn(misbehaving_upstream(upstream));
    let guarded = Server::start_with(|s| {
        s.upstream = bff_session_server::config::Upstream::Url(upstream_url.parse().unwrap());
        s.upstream_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let mut caller = guarded.browser();
    caller.login("upstream-caller").await;
    let r = caller.get("/api/slow").await;
    sweep.expect_gateway(
        "an upstream that does not answer in time",
        r,
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
    );
    let r = caller.get("/api/huge").await;
    sweep.expect_gateway("an upstream answer over the cap", r, StatusCode::BAD_GATEWAY, "upstream_too_large");
    let r = caller.get("/api/chunked").await;
    sweep.expect_gateway("a chunked upstream answer over the cap", r, StatusCode::BAD_GATEWAY, "upstream_too_large");
    assert_eq!(caller.get("/api/small").await.status, StatusCode::OK, "a well-behaved answer passes");
    // An upstream that tries to plant a cookie and open itself to other origins: the answer arrives without
    // either, and marked nosniff.
    let r = caller.get("/api/leaky").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookies().is_empty(), "the upstream's Set-Cookie is dropped: {:?}", r.headers);
    assert!(!r.headers.keys().any(|k| k.as_str().starts_with("access-control-")), "CORS dropped: {:?}", r.headers);
    assert_eq!(r.headers.get("x-content-type-options").map(|v| v.to_str().unwrap()), Some("nosniff"));
    sweep.cases += 1;

    // A sign-in flood from one address (read through the trusted proxy) is slowed down; others are not.
    let limited = Server::start_with(|s| {
        s.login_limit = Some(bff_session_server::limit::LoginLimit {
            per_minute: std::num::NonZeroU32::new(1).unwrap(),
            burst: std::num::NonZeroU32::new(2).unwrap(),
        })
    })
    .await;
    let flooder = limited.browser();
    let from = |ip: &str| vec![("x-forwarded-for", ip.to_owned())];
    for _ in 0..2 {
        let r = raw(&flooder, Method::GET, "/auth/login", &from("198.51.100.7")).await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    }
    let r = raw(&flooder, Method::GET, "/auth/callback?code=x&state=y", &from("198.51.100.7")).await;
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    sweep.expect("a sign-in flood from one address", r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let other = raw(&flooder, Method::GET, "/auth/login", &from("198.51.100.8")).await;
    assert_eq!(other.status, StatusCode::FOUND, "another address keeps its own allowance");

    // Bodies over the limit: refused from the declared length, or cut off while chunked, before any session
    // is looked at; `Expect: 100-continue` gets the 413 instead of a 100.
    let b = server.browser();
    let big = "x".repeat((1 << 20) + 1);
    let http = reqwest::Client::new();
    let r = http.post(format!("{}/api/x", b.base)).body(big.clone()).send().await.unwrap();
    let r = Resp { status: r.status(), headers: r.headers().clone(), body: r.text().await.unwrap() };
    sweep.expect("a proxied body over --max-body", r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let form = format!("logout_token={}", "x".repeat(70 << 10));
    let r = http.post(format!("{}/auth/backchannel-logout", b.base)).body(form).send().await.unwrap();
    let r = Resp { status: r.status(), headers: r.headers().clone(), body: r.text().await.unwrap() };
    sweep.expect("a back-channel logout body over 64 KiB", r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let head = raw_tcp(
        &b.base,
        "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 104857600\r\nExpect: 100-continue\r\n\r\n"
            .as_bytes(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 413"), "Expect: 100-continue over the limit: {head}");
    assert!(head.contains("body_too_large"), "{head}");
    sweep.cases += 1;
    let mut chunked = b"POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunked.extend(std::iter::repeat_n(b'x', 64 << 10));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = raw_tcp(&b.base, &chunked).await;
    assert!(
        head.starts_with("HTTP/1.1 413") && head.contains("body_too_large"),
        "a chunked body over the limit: {head}"
    );
    sweep.cases += 1;

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("signed in"), "the log capture works");
    sweep.check(&logs);
    println!(
        "hostile input: {} attack cases, {} responses swept, {} secrets",
        sweep.cases,
        sweep.responses.len(),
        sweep.secrets.len()
    );
    // Every case above, counted: a case that silently stops running fails here.
    assert_eq!(sweep.cases, 78);
}

/// A client that trickles its headers, or keeps a connection open without using it, is cut off at the
/// header-read timeout, so neither can hold a connection slot for long; a flood of unfinished sign-ins
/// holds at most --max-pending-logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_floods_are_bounded() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    let server = Server::start_with(|s| {
        s.conn_limits.header_read_timeout = Duration::from_secs(1);
        s.max_pending_logins = 2;
        s.max_sessions_per_user = std::num::NonZeroUsize::new(2);
    })
    .await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut cases = 0;

    // One header byte every 100 ms: the head would take 6 s to arrive.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(b"GET /auth/session HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
    let mut cut = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(n)) => panic!("a half-sent head got an answer: {}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
        if stream.write_all(b"x").await.is_err() {
            cut = true;
            break;
        }
    }
    assert!(cut, "a client trickling its headers for 6 s was never cut off");
    cases += 1;

    // A kept-alive connection gets its answer, then is closed once idle for the timeout.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(b"GET /auth/session HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    let closed = loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 401"), "the request on the kept-alive connection is answered: {seen}");
    assert!(closed, "an idle kept-alive connection stayed open 5 s past the 1 s timeout");
    cases += 1;

    // A flood of sign-ins begun and never finished: past --max-pending-logins the oldest is forgotten, so
    // its callback is refused while the newest still completes.
    let mut first = server.browser();
    let start = first.get("/auth/login?return_to=/&login_hint=flooded").await;
    let callback = first.get(&start.location().unwrap()).await.location().unwrap();
    for _ in 0..2 {
        let r = server.browser().get("/auth/login?return_to=/").await;
        assert_eq!(r.status, reqwest::StatusCode::FOUND, "{}", r.body);
    }
    let r = first.get(&callback).await;
    assert_eq!((r.status, r.error().as_str()), (reqwest::StatusCode::BAD_REQUEST, "login_expired"), "{}", r.body);
    cases += 1;
    let mut newest = server.browser();
    let r = newest.login("newest").await;
    assert_eq!(r.status, reqwest::StatusCode::FOUND, "the newest sign-in completes: {}", r.body);

    // One user signing in on a third device, past --max-sessions-per-user of 2: the least recently used
    // session ends, durably, and its refresh token is revoked at the provider; the other two stay.
    let mut devices = Vec::new();
    for _ in 0..3 {
        let mut device = server.browser();
        let r = device.login("many-devices").await;
        assert_eq!(r.status, reqwest::StatusCode::FOUND, "{}", r.body);
        devices.push(device);
    }
    let store = &server.running.as_ref().unwrap().app.service.store;
    let first = SessionId::decode(&devices[0].session_cookie().unwrap()).unwrap().key();
    let record = store.get(&first).await.unwrap().unwrap();
    assert!(
        matches!(record.state(), bff_session_core::State::Revoked { reason: RevocationReason::SessionLimit, .. }),
        "the least recently used session is ended in the store: {:?}",
        record.state()
    );
    let sid = record.oidc().and_then(|o| o.sid.clone()).unwrap();
    let r = devices[0].get("/auth/session").await;
    assert_eq!((r.status, r.error().as_str()), (reqwest::StatusCode::UNAUTHORIZED, "session_revoked"), "{}", r.body);
    cases += 1;
    let mut revoked = false;
    for _ in 0..50 {
        if server.idp().grant_active(&sid) == Some(false) {
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(revoked, "the pushed-out session's refresh token is revoked at the provider");
    for device in &mut devices[1..] {
        assert_eq!(device.get("/auth/session").await.status, reqwest::StatusCode::OK, "the two newest stay");
    }

    // Every case above, counted.
    assert_eq!(cases, 4);
}

/// Careless deployments are refused at start, naming the setting; `/metrics` is not on the public listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_deployments_are_refused_at_start() {
    use bff_session_server::config::Cli;
    use bff_session_server::seal::KeyFileError;
    use clap::Parser as _;

    let refused = |args: &[&str]| {
        let mut all = vec!["bff-session"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().command.settings().unwrap_err().setting
    };
    let serve = ["serve", "--issuer", "https://idp.example", "--client-id", "c", "--client-secret", "s"];
    let mut cases = 0;

    // A movable clock reachable from the network.
    let args = [&serve[..], &["--test-clock", "--listen", "0.0.0.0:8080", "--insecure-http"]].concat();
    assert_eq!(refused(&args), "--test-clock");
    cases += 1;
    // Cookies that would lose Secure and __Host- on a plain-HTTP public origin.
    assert_eq!(refused(&[&serve[..], &["--public-url", "http://app.example.com"]].concat()), "--public-url");
    cases += 1;
    // The demo's sign-anyone-in provider on a network address.
    assert_eq!(refused(&["demo", "--listen", "0.0.0.0:8080"]), "--listen");
    cases += 1;

    // A token key its group may read.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("token.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut settings = support::settings(dir.path(), port, bff_session_core::Policy::hardened());
    settings.key_file = Some(key.clone());
    match bff_session_server::start(settings).await {
        Err(bff_session_server::StartError::TokenKey(KeyFileError::Exposed { mode, .. })) => {
            assert_eq!(mode & 0o777, 0o640);
        }
        other => panic!("a group-readable key file was not refused: {:?}", other.map(|r| r.addr)),
    }
    cases += 1;

    // /metrics answers on its own listener only.
    let server = Server::start().await;
    let mut b = server.browser();
    let r = b.get("/metrics").await;
    assert_eq!((r.status, r.error().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    assert!(server.metrics().await.contains("bff_"), "the metrics listener serves them");
    cases += 1;

    // Every case above, counted.
    assert_eq!(cases, 5);
}
