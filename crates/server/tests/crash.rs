//! The server binary under a steady mixed load (sign-ins, API calls, logouts), killed with SIGKILL at
//! random moments and restarted on the same data folder. Afterwards every acknowledged logout is still in
//! force, every acknowledged sign-in still works, and no record is corrupt.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CYCLES: usize = 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Process {
    child: Child,
}

fn start(port: u16, data: &std::path::Path, log: &std::path::Path) -> Process {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_bff-session"))
        .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--public-url", &format!("http://127.0.0.1:{port}")])
        // Its load signs in from one address far faster than any person would.
        .args(["--access-token-ttl", "1h", "--login-rate", "0", "--metrics-listen", "off", "--data-dir"])
        .arg(data)
        .env("BFF_SESSION_LOG", "warn")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    Process { child }
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not come up");
}

/// A signed-in browser: its cookies.
#[derive(Clone, Debug)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn header(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }
    fn absorb(&mut self, r: &reqwest::Response) {
        for c in r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()) {
            if let Some((name, value)) = c.split(';').next().and_then(|p| p.split_once('=')) {
                if c.contains("Max-Age=0") {
                    self.0.remove(name);
                } else {
                    self.0.insert(name.to_owned(), value.to_owned());
                }
            }
        }
    }
}

/// Signs in; `Some` only when the callback acknowledged the session (a 302 with the cookie).
async fn login(http: &reqwest::Client, base: &str, user: &str) -> Option<Jar> {
    let mut jar = Jar(BTreeMap::new());
    let r = http.get(format!("{base}/auth/login?login_hint={user}")).send().await.ok()?;
    jar.absorb(&r);
    let authorize = r.headers().get("location")?.to_str().ok()?.to_owned();
    let r = http.get(&authorize).send().await.ok()?;
    let callback = r.headers().get("location")?.to_str().ok()?.to_owned();
    let r = http.get(&callback).header("cookie", jar.header()).send().await.ok()?;
    jar.absorb(&r);
    (r.status() == 302 && jar.0.contains_key("bff-session")).then_some(jar)
}

#[derive(Default)]
struct Ledger {
    /// Sessions whose sign-in was acknowledged and that were never logged out (as far as anyone was told).
    live: Vec<Jar>,
    /// Sessions whose logout was acknowledged.
    ended: Vec<Jar>,
    /// Sessions with a logout sent but not acknowledged: either outcome is right.
    unsure: Vec<Jar>,
    logins: usize,
    logouts: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_login_or_logout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for cycle in 0..CYCLES {
        let mut server = start(port, &data, &log);
        wait_ready(&http, &base).await;
        verify(&http, &base, &ledger, cycle).await;
        // Mixed load from four clients until the kill.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..4u64 {
            let (http, base, ledger, stop) = (http.clone(), base.clone(), ledger.clone(), stop.clone());
            clients.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    match (c + n) % 3 {
                        0 => {
                            if let Some(jar) = login(&http, &base, &format!("u{cycle}x{c}x{n}")).await {
                                let mut l = ledger.lock().unwrap();
                                l.live.push(jar);
                                l.logins += 1;
                            }
                        }
                        1 => {
                            let jar = ledger.lock().unwrap().live.last().cloned();
                            if let Some(jar) = jar {
                                let _ =
                                    http.get(format!("{base}/api/items")).header("cookie", jar.header()).send().await;
                            }
                        }
                        _ => {
                            let jar = {
                                let mut l = ledger.lock().unwrap();
                                if l.live.len() > 2 { Some(l.live.swap_remove(0)) } else { None }
                            };
                            let Some(jar) = jar else { continue };
                            let csrf = jar.0.get("bff-csrf").cloned().unwrap_or_default();
                            let r = http
                                .post(format!("{base}/auth/logout"))
                                .header("cookie", jar.header())
                                .header("x-csrf-token", csrf)
                                .send()
                                .await;
                            let mut l = ledger.lock().unwrap();
                            if r.is_ok_and(|r| r.status() == 200) {
                                l.ended.push(jar);
                                l.logouts += 1;
                            } else {
                                l.unsure.push(jar);
                            }
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + random(1200))).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
    }
    let mut server = start(port, &data, &log);
    wait_ready(&http, &base).await;
    verify(&http, &base, &ledger, CYCLES).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // Every record on disk decodes, tokens included.
    let sealer = bff_session_server::seal::TokenSealer::from_file(&data.join("token.key"), false).unwrap();
    let store = bff_session_server::store::SledStore::open(
        &data.join("sessions.sled"),
        sealer,
        bff_session_core::Policy::hardened(),
        16 << 20,
    )
    .unwrap();
    let keys = store.all_keys().unwrap();
    for key in &keys {
        assert!(store.get(key).unwrap().is_some(), "record {key} vanished");
    }
    println!("crash test: {} records on disk, all decode", keys.len());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("corrupt"), "a record was corrupt:\n{log}");
    assert!(!log.to_lowercase().contains("panic"), "the server panicked:\n{log}");
    let l = ledger.lock().unwrap();
    println!(
        "crash test: {CYCLES} SIGKILL cycles; {} acknowledged sign-ins and {} acknowledged logouts checked after every restart",
        l.logins, l.logouts
    );
    assert!(
        l.logins >= CYCLES && l.logouts >= CYCLES,
        "too little load to mean anything: {} / {}",
        l.logins,
        l.logouts
    );
}

/// Every acknowledged logout is in force and every acknowledged, not logged-out sign-in works.
async fn verify(http: &reqwest::Client, base: &str, ledger: &Mutex<Ledger>, cycle: usize) {
    let (live, ended) = {
        let l = ledger.lock().unwrap();
        (l.live.clone(), l.ended.clone())
    };
    for jar in &live {
        let r = http.get(format!("{base}/auth/session")).header("cookie", jar.header()).send().await.unwrap();
        assert_eq!(r.status(), 200, "cycle {cycle}: an acknowledged sign-in was lost");
    }
    for jar in &ended {
        let r = http.get(format!("{base}/auth/session")).header("cookie", jar.header()).send().await.unwrap();
        assert_eq!(r.status(), 401, "cycle {cycle}: an acknowledged logout was undone");
    }
}
