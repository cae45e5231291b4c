//! The demo in a real browser (Debian's chromium through chromium-driver and WebDriver): sign-in through
//! the dev provider's pages, what the page's script can see of the cookies, an API call, sign-out with the
//! back button, sign-out everywhere across two browser profiles, and the demo's lifecycle page: its timeline,
//! countdown bars, device list and the buttons that provoke each transition. Run with `cargo xtask browser`,
//! which installs chromium and chromium-driver; saves screenshots under `target/browser/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use support::Server;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn browser(driver: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-dev-shm-usage", "--window-size=1100,900"] }),
    );
    for _ in 0..50 {
        // chromium-driver is on 127.0.0.1 over plain HTTP: no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        if let Ok(c) = ClientBuilder::new(connector).capabilities(caps.clone()).connect(driver).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("chromium-driver did not start a browser");
}

async fn visible(c: &Client, id: &str) {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(&format!("#{id}:not([hidden])")))
        .await
        .unwrap_or_else(|e| panic!("#{id} never showed: {e}"));
}

async fn sign_in(c: &Client, base: &str, user: &str) {
    c.goto(&format!("{base}/")).await.unwrap();
    visible(c, "signed-out").await;
    c.find(Locator::Css("#signin button")).await.unwrap().click().await.unwrap();
    let name = c.wait().for_element(Locator::Id("username")).await.unwrap();
    name.send_keys(user).await.unwrap();
    c.find(Locator::Css("button#signin")).await.unwrap().click().await.unwrap();
    visible(c, "signed-in").await;
}

fn save_screenshot(name: &str, png: &[u8]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/browser");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

/// Waits for the timeline to show `event` (with `detail`, if given).
async fn timeline_shows(c: &Client, event: &str, detail: Option<&str>, within: Duration) {
    let text = match detail {
        Some(d) => format!(" and contains(., '{event} · {d}')"),
        None => String::new(),
    };
    let xpath = format!("//ul[@id='timeline']/li[@data-event='{event}'{text}]");
    c.wait().at_most(within).for_element(Locator::XPath(&xpath)).await.unwrap_or_else(|e| {
        panic!("the timeline never showed {event} {detail:?}: {e}");
    });
}

async fn cookie_names(c: &Client) -> Vec<String> {
    c.get_all_cookies().await.unwrap().iter().map(|k| k.name().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver: run `cargo xtask browser`"]
async fn the_demo_works_in_a_real_browser() {
    let port = free_port();
    // The demo's own origin: localhost, where the cookies are __Host- and Secure.
    let base = format!("http://localhost:{port}");
    let server = Server::start_with(|s| {
        s.listen = format!("127.0.0.1:{port}").parse().unwrap();
        s.public_url = Some(base.clone());
    })
    .await;
    let dport = free_port();
    let _driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={dport}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver is installed"),
    );
    let driver = format!("http://127.0.0.1:{dport}");

    let c = browser(&driver).await;
    eprintln!("browser: started");
    sign_in(&c, &base, "alice").await;
    eprintln!("browser: signed in");
    let who = c.find(Locator::Id("who")).await.unwrap().text().await.unwrap();
    assert!(who.contains("Alice"), "{who}");
    // The page's script sees the CSRF cookie and never the session cookie.
    let visible_cookies = c.execute("return document.cookie", vec![]).await.unwrap();
    let visible_cookies = visible_cookies.as_str().unwrap().to_owned();
    assert!(visible_cookies.contains("__Host-bff-csrf="), "{visible_cookies}");
    assert!(!visible_cookies.contains("bff-session"), "the session cookie is readable by script: {visible_cookies}");
    assert!(cookie_names(&c).await.contains(&"__Host-bff-session".to_owned()));
    // An API call through the page.
    c.find(Locator::Id("call-api")).await.unwrap().click().await.unwrap();
    c.wait()
        .for_element(Locator::XPath("//pre[@id='api'][starts-with(normalize-space(.), '200')]"))
        .await
        .expect("the API call answered 200");
    save_screenshot("signed-in.png", &c.screenshot().await.unwrap());

    eprintln!("browser: API called");
    // Sign out: through the provider's end-session and back; both cookies gone from the jar.
    c.find(Locator::Id("signout")).await.unwrap().click().await.unwrap();
    // The provider's end-session redirects back to the demo (with its state parameter).
    for _ in 0..100 {
        if c.current_url().await.unwrap().as_str().starts_with(&format!("{base}/")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    visible(&c, "signed-out").await;
    let names = cookie_names(&c).await;
    assert!(!names.iter().any(|n| n.contains("bff-session") || n.contains("bff-csrf")), "{names:?}");
    eprintln!("browser: signed out");
    // Going back does not bring the session back.
    c.back().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = c
        .execute_async(
            "const done = arguments[0]; fetch('/auth/session').then((r) => done(r.status)).catch(() => done(0));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(401));
    c.goto(&format!("{base}/")).await.unwrap();
    visible(&c, "signed-out").await;
    c.close().await.unwrap();

    // Two browser profiles signed in as the same user; sign-out everywhere from one ends the other.
    let (one, two) = (browser(&driver).await, browser(&driver).await);
    sign_in(&one, &base, "bob").await;
    sign_in(&two, &base, "bob").await;
    one.find(Locator::Id("signout-all")).await.unwrap().click().await.unwrap();
    visible(&one, "signed-out").await;
    two.refresh().await.unwrap();
    visible(&two, "signed-out").await;
    one.close().await.unwrap();
    two.close().await.unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver: run `cargo xtask browser`"]
async fn the_demo_shows_the_session_lifecycle_as_it_happens() {
    let port = free_port();
    let base = format!("http://localhost:{port}");
    // Access tokens of a few seconds, so a refresh comes within the test.
    let server = Server::start_with(|s| {
        s.listen = format!("127.0.0.1:{port}").parse().unwrap();
        s.public_url = Some(base.clone());
        s.provider = bff_session_server::config::Provider::Embedded { access_token_ttl: Duration::from_secs(6) };
    })
    .await;
    let dport = free_port();
    let _driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={dport}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver is installed"),
    );
    let c = browser(&format!("http://127.0.0.1:{dport}")).await;
    sign_in(&c, &base, "carol").await;
    timeline_shows(&c, "created", None, Duration::from_secs(10)).await;
    let badge = c.wait().for_element(Locator::Css("#devices .badge")).await.unwrap().text().await.unwrap();
    assert_eq!(badge, "this device");
    let width = |id: &'static str| {
        let c = c.clone();
        async move {
            let script = format!("return document.querySelector('#{id} .fill').style.width");
            for _ in 0..50 {
                let width = c.execute(&script, vec![]).await.unwrap();
                if let Ok(w) = width.as_str().unwrap_or_default().trim_end_matches('%').parse::<f64>() {
                    return w;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let page = c.source().await.unwrap_or_default();
            panic!("#{id} never got a width: {page}");
        }
    };
    let first = width("bar-access").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = width("bar-access").await;
    assert!(later < first, "the access-token bar counts down: {first}% then {later}%");
    assert!(width("bar-absolute").await > 99.0, "the absolute deadline is hours away");

    // Let the token expire; the API call (or the background pass before it) refreshes it.
    c.find(Locator::Id("expire-then-call")).await.unwrap().click().await.unwrap();
    timeline_shows(&c, "refresh_succeeded", None, Duration::from_secs(30)).await;
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath("//pre[@id='api'][starts-with(normalize-space(.), '200')]"))
        .await
        .expect("the API answered 200 after the expiry");
    save_screenshot("lifecycle-refreshed.png", &c.screenshot().await.unwrap());

    // The provider fails the next refresh: a transient failure keeps the session.
    c.find(Locator::Id("fail-refresh")).await.unwrap().click().await.unwrap();
    c.find(Locator::Id("expire-then-call")).await.unwrap().click().await.unwrap();
    timeline_shows(&c, "refresh_failed", Some("transient"), Duration::from_secs(30)).await;
    visible(&c, "signed-in").await;
    // docs/demo.png is this one.
    save_screenshot("lifecycle-refresh-failed.png", &c.screenshot().await.unwrap());

    // A back-channel logout from the provider ends it; the page notices from the timeline.
    c.find(Locator::Id("backchannel")).await.unwrap().click().await.unwrap();
    timeline_shows(&c, "revoked", Some("backchannel_logout"), Duration::from_secs(10)).await;
    visible(&c, "signed-out").await;
    save_screenshot("lifecycle-ended.png", &c.screenshot().await.unwrap());
    c.close().await.unwrap();
    drop(server);
}
