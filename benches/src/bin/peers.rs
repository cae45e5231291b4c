//! The session check of bff-session against the BFFs people choose instead, in one run with one load
//! generator: a bare warp handler (the ceiling), bff-session, axum with tower-sessions' memory store,
//! express-openid-connect (cookie and server-side sessions) and Apache httpd with mod_auth_openidc (a static
//! file behind its session check).
//!
//! Each target runs as a process of its own, started from its conformance profile by
//! `bff-session-conformance hold`, which signs one user in through the dev provider; wrk then asks the
//! target's session endpoint with that cookie. Targets take turns, in an order that alternates between
//! rounds. Per run: requests/s, p50 and p99, the server's CPU time per request (user + system time of every
//! process in its process group, from `/proc`) and its peak RSS (`VmHWM`, summed over the group).
//!
//! `peers --serve-bare` is the bare handler itself, and `peers --serve-axum` the axum application: a session
//! library rather than a BFF, so it signs its user in with a local route, not through a provider. Prints one
//! JSON object for `cargo xtask bench`.

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bff_session_benches::{SESSION_JSON, wrk};
use serde_json::{Value, json};
use warp::Filter as _;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn number(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The peers, by their conformance profile; `bare` is this binary.
const TARGETS: [(&str, &str); 6] = [
    ("bare", "bare warp handler (the ceiling)"),
    ("bff-session", "bff-session"),
    ("axum", "axum + tower-sessions, memory store"),
    ("express-cookie", "express-openid-connect, cookie session"),
    ("express-store", "express-openid-connect, server-side session"),
    ("apache", "Apache httpd + mod_auth_openidc"),
];

/// A started target: where to send load, and which processes to measure.
struct Running {
    child: Child,
    url: String,
    cookie: Option<String>,
    /// The process group whose CPU and memory are the target's.
    pgid: u32,
    versions: Vec<String>,
    body_bytes: usize,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Closing `hold`'s standard input stops the target it launched; give it a moment, then make sure.
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(pgid) = i32::try_from(self.pgid) {
            // Usually gone already; `kill` then only complains.
            let _ = Command::new("kill").args(["-TERM", "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
        }
    }
}

fn start(name: &str, harness: &Path, profiles: &Path) -> Result<Running, String> {
    if name == "bare" || name == "axum" {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg(format!("--serve-{name}"))
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the {name} handler: {e}"))?;
        let port = first_line(&mut child)?;
        let origin = format!("http://127.0.0.1:{}", port.trim());
        let (cookie, versions) = if name == "axum" {
            (Some(sign_in_locally(&format!("{origin}/auth/sign-in"))?), AXUM_VERSIONS)
        } else {
            (None, "warp 0.4, the JSON of /auth/session")
        };
        let url = format!("{origin}/auth/session");
        let body_bytes = check(&url, cookie.as_deref())?;
        let pgid = child.id();
        return Ok(Running { url, cookie, pgid, versions: vec![versions.into()], body_bytes, child });
    }
    let profile = profiles.join(name).join("profile.toml");
    // bff-session's profile runs `bff-session` from the PATH: the one built beside the harness.
    let dir =
        harness.parent().unwrap_or(Path::new(".")).canonicalize().map_err(|e| format!("{}: {e}", harness.display()))?;
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new(harness)
        .env("PATH", path)
        .args(["hold", "--profile", &profile.display().to_string(), "--token-ttl", "3600"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", harness.display()))?;
    let line = first_line(&mut child)?;
    let held: Value = serde_json::from_str(&line).map_err(|e| format!("{name}: `hold` printed {line:?}: {e}"))?;
    let url =
        format!("{}{}", held["origin"].as_str().unwrap_or_default(), held["session_path"].as_str().unwrap_or_default());
    let cookie = held["cookie"].as_str().map(str::to_owned);
    let body = check(&url, cookie.as_deref())?;
    Ok(Running {
        url,
        cookie,
        pgid: held["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).ok_or("no pid")?,
        versions: held["versions"]
            .as_array()
            .map(|v| v.iter().filter_map(|l| l.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        body_bytes: body,
        child,
    })
}

/// The versions the benches crate builds the axum peer with (kept equal to `benches/Cargo.toml`).
const AXUM_VERSIONS: &str = "axum 0.8, tower-sessions 0.15 (MemoryStore, expiry on 12 h of inactivity)";

/// The session cookie the axum peer sets on its sign-in route.
fn sign_in_locally(url: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", url])
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    let headers = String::from_utf8_lossy(&out.stdout);
    headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie").then(|| value.trim().split(';').next().unwrap_or("").to_owned())
        })
        .ok_or_else(|| format!("{url} set no session cookie"))
}

fn first_line(child: &mut Child) -> Result<String, String> {
    let out = child.stdout.take().ok_or("no standard output")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Err("the target exited before it was ready".into());
    }
    Ok(line)
}

/// The signed-in answer's size; an error unless the session check succeeds with the cookie.
fn check(url: &str, cookie: Option<&str>) -> Result<usize, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/stdout", "-w", "\n%{http_code}"]);
    if let Some(c) = cookie {
        cmd.args(["-H", &format!("Cookie: {c}")]);
    }
    let out = cmd.arg(url).output().map_err(|e| format!("curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", ""));
    if status.trim() != "200" {
        return Err(format!("{url} answered {status} to the signed-in cookie"));
    }
    Ok(body.len())
}

/// User + system CPU ticks of every process in the group, and the sum of their peak RSS in KiB.
fn group_usage(pgid: u32) -> (u64, u64) {
    let mut ticks = 0;
    let mut hwm_kib = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command name is in parentheses and may hold spaces: fields start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state(0) ppid(1) pgrp(2) … utime(11) stime(12).
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) != Some(pgid) {
            continue;
        }
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += field(11) + field(12);
        hwm_kib += std::fs::read_to_string(entry.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.split_whitespace().next()?.parse::<u64>().ok())
            })
            .unwrap_or(0);
    }
    (ticks, hwm_kib)
}

fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn measure(target: &Running, secs: u64, connections: u64) -> Value {
    // A short warm-up: JITs, caches and connection pools settle before the measured run.
    wrk(&target.url, target.cookie.as_deref(), 1, connections);
    let (before, _) = group_usage(target.pgid);
    let run = wrk(&target.url, target.cookie.as_deref(), secs, connections);
    let (after, hwm_kib) = group_usage(target.pgid);
    let requests = run["rps"].as_f64().unwrap_or(0.0) * secs as f64;
    let cpu_us = after.saturating_sub(before) as f64 / ticks_per_second() * 1e6;
    json!({
        "rps": run["rps"], "p50_ms": run["p50_ms"], "p99_ms": run["p99_ms"], "non_2xx": run["non_2xx"],
        "cpu_us_per_request": if requests > 0.0 { cpu_us / requests } else { f64::NAN },
        "peak_rss_mib": hwm_kib as f64 / 1024.0,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn serve_bare() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        println!("{}", listener.local_addr().expect("an address").port());
        let routes = warp::path!("auth" / "session")
            .map(|| warp::reply::with_header(SESSION_JSON, "content-type", "application/json"));
        warp::serve(routes).incoming(listener).run().await;
    });
}

/// axum with tower-sessions, configured as its documentation shows: the session layer over a `MemoryStore`,
/// a sign-in route that stores the user, and the session route that answers for a signed-in user only.
fn serve_axum() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;
    use tower_sessions::cookie::time::Duration as Span;
    use tower_sessions::{Expiry, MemoryStore, Session, SessionManagerLayer};

    async fn sign_in(session: Session) -> StatusCode {
        match session.insert("user", "alice").await {
            Ok(()) => StatusCode::NO_CONTENT,
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    async fn check(session: Session) -> axum::response::Response {
        match session.get::<String>("user").await {
            Ok(Some(_)) => ([("content-type", "application/json")], SESSION_JSON).into_response(),
            Ok(None) => StatusCode::UNAUTHORIZED.into_response(),
            Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        let sessions = SessionManagerLayer::new(MemoryStore::default())
            .with_secure(false)
            .with_expiry(Expiry::OnInactivity(Span::hours(12)));
        let app = axum::Router::new()
            .route("/auth/sign-in", axum::routing::get(sign_in))
            .route("/auth/session", axum::routing::get(check))
            .layer(sessions);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        println!("{}", listener.local_addr().expect("an address").port());
        axum::serve(listener, app).await.expect("the axum peer serves");
    });
}

fn main() {
    if std::env::args().any(|a| a == "--serve-bare") {
        return serve_bare();
    }
    if std::env::args().any(|a| a == "--serve-axum") {
        return serve_axum();
    }
    let secs = number("--seconds", 10);
    let connections = number("--connections", 32);
    let rounds = number("--rounds", 2);
    let harness = PathBuf::from(arg("--harness").unwrap_or_else(|| "target/release/bff-session-conformance".into()));
    let profiles = PathBuf::from(arg("--profiles").unwrap_or_else(|| "crates/conformance/targets".into()));
    let only: Option<Vec<String>> = arg("--only").map(|o| o.split(',').map(str::to_owned).collect());
    let targets: Vec<(&str, &str)> =
        TARGETS.into_iter().filter(|(n, _)| only.as_ref().is_none_or(|o| o.iter().any(|x| x == n))).collect();
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); targets.len()];
    let mut about: Vec<(Vec<String>, usize)> = vec![(Vec::new(), 0); targets.len()];
    for round in 0..rounds {
        // Alternate the order, so no target always runs first (or last) on a warming machine.
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (name, title) = targets[i];
            eprintln!("peers: round {} of {rounds}: {title}", round + 1);
            match start(name, &harness, &profiles) {
                Ok(target) => {
                    std::thread::sleep(Duration::from_millis(300));
                    runs[i].push(measure(&target, secs, connections));
                    about[i] = (target.versions.clone(), target.body_bytes);
                }
                Err(e) => {
                    eprintln!("peers: {title} could not be measured: {e}");
                    runs[i].push(json!({ "error": e }));
                }
            }
        }
    }
    let rows: Vec<Value> = targets
        .iter()
        .zip(&runs)
        .zip(&about)
        .map(|(((name, title), runs), (versions, body))| {
            let pick = |key: &str| median(&mut runs.iter().filter_map(|r| r[key].as_f64()).collect::<Vec<_>>());
            json!({
                "name": name, "title": title, "versions": versions, "body_bytes": body,
                "rps": pick("rps"), "p50_ms": pick("p50_ms"), "p99_ms": pick("p99_ms"),
                "cpu_us_per_request": pick("cpu_us_per_request"), "peak_rss_mib": pick("peak_rss_mib"),
                "runs": runs,
            })
        })
        .collect();
    let out = json!({ "seconds": secs, "connections": connections, "rounds": rounds, "targets": rows });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}
