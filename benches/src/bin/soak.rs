//! The soak: the release binary, as `demo` runs it, under a mixed load for a while (`cargo xtask soak`).
//!
//! Legitimate users sign in through the embedded provider, use the session and the API proxy and sign out,
//! each from an address of their own (sent in `X-Forwarded-For`, which the server trusts from 127.0.0.1).
//! Meanwhile a sign-in flood comes from one address (which the rate limit stops) and from many (which the
//! pending-login bound absorbs), oversized bodies and headers arrive, and slow clients trickle their
//! headers. Prints one JSON object: peak RSS, store size at the start and end, the count of 5xx and of
//! requests left unanswered for 10 s (both must be 0), and the latency of the legitimate requests, all made
//! during the flood.
//!
//! `soak --server PATH [--seconds N]`

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    server_errors: AtomicU64,
    sign_ins: AtomicU64,
    logouts: AtomicU64,
    flood: AtomicU64,
    flood_limited: AtomicU64,
    oversized_refused: AtomicU64,
    slow_cut_off: AtomicU64,
    slow_held: AtomicU64,
    /// Legitimate or flood requests that got no answer within the client's timeout: a hung server.
    unanswered: AtomicU64,
}

impl Counts {
    fn saw(&self, status: StatusCode) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        })
        .unwrap_or(0)
}

/// Cookies as a browser keeps them for one origin: name to value, the latest `Set-Cookie` winning.
#[derive(Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn take(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all(SET_COOKIE) {
            let pair = v.to_str().unwrap_or_default().split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else { continue };
            self.0.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.0.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    fn header(&self) -> String {
        self.0.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// The cookie `name`, with or without the `__Host-` prefix the demo sets on localhost.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.strip_prefix("__Host-").unwrap_or(n) == name).map(|(_, v)| v.as_str())
    }
}

/// One legitimate user's visit: sign in, twenty rounds of session, API read and API write, sign out.
async fn visit(http: &reqwest::Client, base: &str, user: u64, counts: &Counts, latencies: &mut Vec<u32>) {
    let addr = format!("192.168.{}.{}", (user / 250) % 250, user % 250 + 1);
    let mut jar = Jar::default();
    let mut timed =
        async |method: reqwest::Method, url: String, jar: &mut Jar, csrf: bool, body: Option<&'static str>| {
            let mut req = http.request(method, &url).header("x-forwarded-for", &addr).header(COOKIE, jar.header());
            if csrf && let Some(proof) = jar.get("bff-csrf") {
                req = req.header("x-csrf-token", proof.to_owned());
            }
            if let Some(body) = body {
                req = req.header("content-type", "application/json").body(body);
            }
            let started = Instant::now();
            let r = req.send().await.ok()?;
            let status = r.status();
            jar.take(&r);
            let location = r.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let _ = r.bytes().await;
            latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
            counts.saw(status);
            Some((status, location))
        };
    // The demo names itself `localhost`, which may resolve to ::1 first; the server listens on 127.0.0.1.
    let absolute = |l: String| {
        if l.starts_with('/') { format!("{base}{l}") } else { l.replacen("//localhost:", "//127.0.0.1:", 1) }
    };
    let mut next = Some(format!("{base}/auth/login?return_to=/&login_hint=soak{user}"));
    for _ in 0..4 {
        let Some(url) = next.take() else { break };
        let Some((status, location)) = timed(reqwest::Method::GET, url, &mut jar, false, None).await else { return };
        if status != StatusCode::FOUND {
            break;
        }
        next = location.map(absolute).filter(|l| !l.ends_with("/"));
    }
    if jar.get("bff-session").is_none() {
        return;
    }
    counts.sign_ins.fetch_add(1, Ordering::Relaxed);
    for _ in 0..20 {
        timed(reqwest::Method::GET, format!("{base}/auth/session"), &mut jar, false, None).await;
        timed(reqwest::Method::GET, format!("{base}/api/things"), &mut jar, false, None).await;
        timed(reqwest::Method::POST, format!("{base}/api/things"), &mut jar, true, Some(r#"{"n":1}"#)).await;
    }
    if let Some((StatusCode::OK | StatusCode::NO_CONTENT, _)) =
        timed(reqwest::Method::POST, format!("{base}/auth/logout"), &mut jar, true, None).await
    {
        counts.logouts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sign-ins begun and never finished: from one address when `spread` is false, else from many.
async fn flood(http: reqwest::Client, base: String, spread: bool, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        n = n.wrapping_add(1);
        let addr = if spread {
            format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
        } else {
            "10.255.255.1".to_owned()
        };
        let Ok(r) = http.get(format!("{base}/auth/login?return_to=/")).header("x-forwarded-for", addr).send().await
        else {
            continue;
        };
        counts.saw(r.status());
        counts.flood.fetch_add(1, Ordering::Relaxed);
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            counts.flood_limited.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A 2 MiB body and a 64 KiB header, five times a second.
async fn oversized(http: reqwest::Client, base: String, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let body = vec![b'x'; 2 << 20];
    while !stop.load(Ordering::Relaxed) {
        if let Ok(r) = http.post(format!("{base}/api/upload")).body(body.clone()).send().await {
            counts.saw(r.status());
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                counts.oversized_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Ok(r) = http.get(format!("{base}/auth/session")).header("x-pad", "p".repeat(64 << 10)).send().await {
            counts.saw(r.status());
            if r.status() == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
                counts.oversized_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client that sends one header byte every half second: it should be cut off, not held.
async fn slow_client(addr: String, counts: Arc<Counts>) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else { return };
    let _ = stream.write_all(b"GET /auth/session HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            counts.slow_cut_off.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if stream.write_all(b"x").await.is_err() {
            counts.slow_cut_off.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    counts.slow_held.fetch_add(1, Ordering::Relaxed);
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let server = PathBuf::from(arg(&args, "--server").expect("--server PATH to the bff-session binary"));
    let seconds: u64 = arg(&args, "--seconds").and_then(|s| s.parse().ok()).unwrap_or(600);
    let data = tempfile::tempdir().expect("a temporary folder");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(&server)
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            "off",
            "--trusted-proxies",
            "127.0.0.1",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the server starts");
    let pid = child.id().unwrap_or(0);
    // A server that hangs shows up as unanswered requests rather than as a soak that never ends.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let ready = Instant::now();
    while !http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status() == StatusCode::OK) {
        assert!(ready.elapsed() < Duration::from_secs(30), "the server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store_start = dir_size(data.path());

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut background = Vec::new();
    for spread in [false, true] {
        background.push(tokio::spawn(flood(http.clone(), base.clone(), spread, stop.clone(), counts.clone())));
    }
    background.push(tokio::spawn(oversized(http.clone(), base.clone(), stop.clone(), counts.clone())));
    let slow = {
        let (stop, counts, addr) = (stop.clone(), counts.clone(), format!("127.0.0.1:{port}"));
        tokio::spawn(async move {
            let mut clients = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..5 {
                    clients.push(tokio::spawn(slow_client(addr.clone(), counts.clone())));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            for c in clients {
                let _ = c.await;
            }
        })
    };
    let users = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut legit = Vec::new();
    for _ in 0..8 {
        let (http, base, users, counts) = (http.clone(), base.clone(), users.clone(), counts.clone());
        legit.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let user = users.fetch_add(1, Ordering::Relaxed);
                visit(&http, &base, user, &counts, &mut latencies).await;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for l in legit {
        latencies.extend(l.await.unwrap_or_default());
    }
    stop.store(true, Ordering::Relaxed);
    for b in background {
        let _ = b.await;
    }
    let _ = slow.await;
    let peak_rss = peak_rss_kib(pid);
    let store_end = dir_size(data.path());
    let _ = child.kill().await;
    latencies.sort_unstable();
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "seconds": seconds,
        "requests": c(&counts.requests),
        "server_errors": c(&counts.server_errors),
        "unanswered": c(&counts.unanswered),
        "legit_requests": latencies.len(),
        "legit_p50_us": percentile(&latencies, 0.50),
        "legit_p99_us": percentile(&latencies, 0.99),
        "sign_ins": c(&counts.sign_ins),
        "logouts": c(&counts.logouts),
        "flood_requests": c(&counts.flood),
        "flood_rate_limited": c(&counts.flood_limited),
        "oversized_refused": c(&counts.oversized_refused),
        "slow_clients_cut_off": c(&counts.slow_cut_off),
        "slow_clients_held_a_minute": c(&counts.slow_held),
        "peak_rss_kib": peak_rss,
        "store_start_bytes": store_start,
        "store_end_bytes": store_end,
    });
    println!("{report}");
    if c(&counts.server_errors) > 0 || c(&counts.unanswered) > 0 {
        eprintln!(
            "soak: {} responses were 5xx, {} requests got no answer in 10 s",
            c(&counts.server_errors),
            c(&counts.unanswered)
        );
        std::process::exit(1);
    }
}
