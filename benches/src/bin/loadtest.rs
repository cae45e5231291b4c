//! HTTP load and scale measurements for BENCHMARKS.md, all in one run on 127.0.0.1:
//!
//! - (a) a bare warp handler returning the same JSON as `/auth/session`, (b) `GET /auth/session` with a valid
//!   session, (c) `GET /api/...` through the proxy to an in-process upstream, (d) that upstream directly;
//!   each loaded with wrk for the same duration and connections.
//! - durable logout latency while (b) is under load.
//! - the server with 1,000 and 1,000,000 sessions loaded through the store: authenticate latency, resident
//!   memory, disk size, one background tick with 100 due sessions, and sweeping every session once expired.
//! - sled's floor at the large size: the same stored bytes under the same keys in one sled tree, with none of
//!   ours around them, so the scale targets can be set against what sled alone costs.
//!
//! Prints one JSON object; `cargo xtask bench` turns it into BENCHMARKS.md.

use std::path::Path;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};

use bff_session_core::Policy;
use bff_session_core::client_ip::TrustedProxies;
use bff_session_core::lifecycle::{self, AuthRequest, Method};
use bff_session_server::config::{Provider, Settings, Upstream};
use serde_json::{Value, json};
use warp::Filter;

use bff_session_benches::{SESSION_JSON, wrk};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn serve<F>(routes: F) -> std::net::SocketAddr
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    addr
}

fn settings(data: &Path, port: u16, upstream: Upstream) -> Settings {
    Settings {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        public_url: Some(format!("http://127.0.0.1:{port}")),
        data_dir: data.to_owned(),
        key_file: None,
        previous_key_files: Vec::new(),
        policy: Policy::hardened(),
        trusted_proxies: TrustedProxies::none(),
        refresh_timeout: Duration::from_secs(10),
        test_clock: true,
        provider: Provider::Embedded { access_token_ttl: Duration::from_secs(3600) },
        scopes: ["openid", "profile", "email", "offline_access"].map(String::from).to_vec(),
        upstream,
        demo: false,
        cache_bytes: 256 << 20,
        audit_log: None,
        store: None,
        postgres_cache: false,
        max_body: 1 << 20,
        login_limit: None,
        allowed_origins: Vec::new(),
        metrics_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        upstream_timeout: Duration::from_secs(30),
        conn_limits: bff_session_server::conn::ConnLimits::default(),
        max_pending_logins: 100_000,
        max_sessions_per_user: None,
        max_upstream_answer: 16 << 20,
        revocation_queue: 10_000,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Signs in through the embedded provider; returns the `Cookie` header and the CSRF proof.
async fn login(base: &str, user: &str) -> (String, String) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let cookies = |r: &reqwest::Response| -> Vec<(String, String)> {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| {
                v.to_str().ok()?.split(';').next()?.split_once('=').map(|(a, b)| (a.to_owned(), b.to_owned()))
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    };
    let start = http.get(format!("{base}/auth/login?login_hint={user}")).send().await.unwrap();
    let login_cookie = cookies(&start).into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
    let authorize = http.get(start.headers()["location"].to_str().unwrap()).send().await.unwrap();
    let callback = http
        .get(authorize.headers()["location"].to_str().unwrap())
        .header("cookie", login_cookie)
        .send()
        .await
        .unwrap();
    let set = cookies(&callback);
    let csrf = set.iter().find(|(k, _)| k.ends_with("bff-csrf")).map(|(_, v)| v.clone()).unwrap_or_default();
    let header =
        set.iter().filter(|(k, _)| k.contains("bff-")).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
    (header, csrf)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn disk_mib(dir: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

fn id(n: u64) -> bff_session_core::SessionId {
    bff_session_benches::id(0x42, n)
}

fn new_session(n: u64) -> bff_session_core::NewSession {
    bff_session_benches::oidc_session(0x42, n, 100_000, Duration::from_secs(3600))
}

async fn scale(n: u64) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let running = bff_session_server::start(settings(dir.path(), port, Upstream::None)).await.unwrap();
    let service = running.app.service.clone();
    let policy = Policy::hardened();
    // A stopped clock keeps the server's own background pass out of what is measured here; the ticks below
    // are the only passes.
    let now = service.clock.now();
    service.clock.freeze(now);
    // 100 sessions created 7 days minus 10 minutes ago are due (absolute deadline) 10 minutes from now.
    let early = now.saturating_sub(policy.absolute_lifetime - Duration::from_secs(600));
    let started = Instant::now();
    // Loading goes straight to the server's store on two threads (sled does the work synchronously).
    let store = &service.store;
    let shared = &policy;
    let rt = tokio::runtime::Handle::current();
    // On a terminal only: indicatif hides the bar when standard error is not one.
    let bar = indicatif::ProgressBar::new(n).with_message(format!("loading {n} sessions"));
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} ({eta})") {
        bar.set_style(style);
    }
    std::thread::scope(|scope| {
        for part in 0..2u64 {
            let (rt, bar) = (rt.clone(), bar.clone());
            scope.spawn(move || {
                for i in (part..n).step_by(2) {
                    rt.block_on(store.put(None, &lifecycle::create(&new_session(i), now, shared).outcome)).unwrap();
                    // Each thread takes every other session: 512 of every 1024, counted once per block.
                    if i % 1024 < 2 {
                        bar.inc(512);
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    for i in n..n + 100 {
        store.put(None, &lifecycle::create(&new_session(i), early, &policy).outcome).await.unwrap();
    }
    store.flush().await.unwrap();
    let load_s = started.elapsed().as_secs_f64();

    // Authenticate, in process, one request at a time: (1) the traffic of 1,000 active users, the same
    // working set whatever the number stored; (2) uniformly random over every stored session (the worst
    // case: every read misses every cache).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut measure = |space: u64| {
        let service = service.clone();
        let mut lat = Vec::with_capacity(20_000);
        let ids: Vec<u64> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % space
            })
            .collect();
        async move {
            for i in ids {
                let cookie = id(i).encode();
                let req = AuthRequest { cookie: Some(&cookie), method: Method::Safe, csrf_proof: None };
                let t = Instant::now();
                let applied = service.authenticate(&req).await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                assert!(applied.outcome.is_ok());
            }
            lat.sort_by(f64::total_cmp);
            lat
        }
    };
    let _warm = measure(1_000.min(n)).await;
    let lat = measure(1_000.min(n)).await;
    let cold = measure(n).await;
    let rss = rss_mib();
    let disk = disk_mib(dir.path());

    // One background tick (refresher pass + sweeper pass) with the 100 early sessions due.
    service.clock.advance(601_000);
    let t = Instant::now();
    let swept = service.tick(8).await.unwrap();
    let tick_ms = t.elapsed().as_secs_f64() * 1e3;

    // Everything expires: sweep until nothing is due.
    service.clock.advance(policy.absolute_lifetime.as_millis() as i64);
    let t = Instant::now();
    let mut expired = 0;
    loop {
        let done = service.tick(8).await.unwrap();
        if done == 0 {
            break;
        }
        expired += done;
    }
    let sweep_s = t.elapsed().as_secs_f64();
    running.stop().await;
    json!({
        "sessions": n, "load_s": load_s,
        "auth_p50_us": percentile(&lat, 0.5), "auth_p99_us": percentile(&lat, 0.99),
        "auth_uniform_p50_us": percentile(&cold, 0.5), "auth_uniform_p99_us": percentile(&cold, 0.99),
        "rss_mib": rss, "disk_mib": disk,
        "tick_ms": tick_ms, "tick_handled": swept,
        "sweep_all_s": sweep_s, "sweep_all_expired": expired,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = arg("--seconds", 10);
    let connections = arg("--connections", 32);
    let big = arg("--sessions", 1_000_000);
    // One point of the scaling table, for profiling the store at scale without the HTTP runs.
    if std::env::args().any(|a| a == "--scale-only") {
        println!("{}", serde_json::to_string_pretty(&scale(big).await).unwrap());
        return;
    }
    if std::env::args().any(|a| a == "--floor-only") {
        let floors = [sled_floor(big, false), sled_floor(big, true)];
        println!("{}", serde_json::to_string_pretty(&floors).unwrap());
        return;
    }
    if std::env::args().any(|a| a == "--stores-only") {
        println!("{}", serde_json::to_string_pretty(&stores(secs, connections).await).unwrap());
        return;
    }

    let upstream = serve(warp::any().map(|| warp::reply::json(&json!({ "ok": true, "items": [1, 2, 3] })))).await;
    let bare = serve(warp::path!("auth" / "session").map(|| {
        warp::reply::with_header(
            warp::reply::with_header(SESSION_JSON, "content-type", "application/json"),
            "cache-control",
            "no-store",
        )
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let upstream_url = url_of(&format!("http://{upstream}/v1"));
    let running = bff_session_server::start(settings(dir.path(), port, Upstream::Url(upstream_url))).await.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let (cookie, csrf) = login(&base, "bench").await;

    let a = wrk(&format!("http://{bare}/auth/session"), None, secs, connections);
    let b = wrk(&format!("{base}/auth/session"), Some(&cookie), secs, connections);
    let c = wrk(&format!("{base}/api/items"), Some(&cookie), secs, connections);
    let d = wrk(&format!("http://{upstream}/v1/items"), None, secs, connections);

    // Durable logouts while /auth/session is under load.
    let load = {
        let (url, cookie) = (format!("{base}/auth/session"), cookie.clone());
        tokio::task::spawn_blocking(move || wrk(&url, Some(&cookie), secs, connections))
    };
    let http = reqwest::Client::new();
    let mut logout_ms = Vec::new();
    let until = Instant::now() + Duration::from_secs(secs.saturating_sub(1));
    let mut k = 0;
    while Instant::now() < until {
        k += 1;
        let (c2, p2) = login(&base, &format!("u{k}")).await;
        let t = Instant::now();
        let r = http
            .post(format!("{base}/auth/logout"))
            .header("cookie", c2)
            .header("x-csrf-token", p2)
            .send()
            .await
            .unwrap();
        logout_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(r.status().is_success());
    }
    let under_load = load.await.unwrap();
    logout_ms.sort_by(f64::total_cmp);
    let _ = csrf;
    running.stop().await;

    let small = scale(1_000).await;
    // The scaling curve's middle points; the last is the large run itself.
    let mut curve = Vec::new();
    for n in [10_000, 100_000].into_iter().filter(|n| *n < big) {
        curve.push(scale(n).await);
    }
    let large = scale(big).await;
    curve.push(large.clone());
    let floor = sled_floor(big, false);
    let floor_entries = sled_floor(big, true);
    let ratio = |x: &Value, y: &Value| x["rps"].as_f64().zip(y["rps"].as_f64()).map(|(x, y)| x / y);
    let out = json!({
        "wrk": { "seconds": secs, "connections": connections, "threads": 2 },
        "bare": a, "session": b, "proxy": c, "upstream": d,
        "ratio_session_to_bare": ratio(&b, &a),
        "ratio_proxy_to_upstream": ratio(&c, &d),
        "logout_under_load": { "count": logout_ms.len(), "p50_ms": percentile(&logout_ms, 0.5), "p99_ms": percentile(&logout_ms, 0.99), "load": under_load },
        "scale_small": small, "scale_large": large, "scale_curve": curve, "sled_floor": floor, "sled_floor_entries": floor_entries,
        "auth_p99_ratio": large["auth_p99_us"].as_f64().zip(small["auth_p99_us"].as_f64()).map(|(l, s)| l / s),
        "stores": stores(secs, connections).await,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}

/// sled with nothing of ours: `n` records of the size the store writes for the scale run's sessions (the
/// version, then the record with its sealed tokens), under the same keys (SHA-256 of the session IDs), with
/// the page cache the store gets from the scale run's `--cache-mb`. It measures what the scale targets cannot
/// go below on sled: loading on two threads, reads of uniformly random keys, 100 read-and-rewrites of random
/// records (what a pass does to each due record), and the bytes on disk. Each write is a single-key
/// operation, never a transaction. With `entries`, each record also gets the store's four other entries (its
/// schedule entry and its user, `sid` and `sub` index entries, keys shaped as the store's), added before the
/// record on load, and moved (schedule) or removed (indexes) on a rewrite, as an expiry does.
fn sled_floor(n: u64, entries: bool) -> Value {
    const SEP: u8 = 0xff;
    let dir = tempfile::tempdir().unwrap();
    let (pages, _) = bff_session_server::store::halves(256 << 20);
    let db = sled::Config::new().path(dir.path()).cache_capacity(pages).flush_every_ms(None).open().unwrap();
    let trees: Vec<sled::Tree> =
        ["sessions", "schedule", "by_user", "by_sid", "by_sub"].iter().map(|t| db.open_tree(t).unwrap()).collect();
    let policy = Policy::hardened();
    let now = bff_session_core::Timestamp::from_millis(1_800_000_000_000);
    let sealer = bff_session_server::seal::TokenSealer::from_key([7; 32]);
    let session = lifecycle::create(&new_session(0), now, &policy).outcome;
    let mut value = session.version().to_be_bytes().to_vec();
    value.extend_from_slice(&bff_session_core::record::encode(&session, &sealer));
    let key = |i: u64| id(i).key();
    let joined = |parts: &[&str], key: &[u8]| {
        let mut k = Vec::new();
        for p in parts {
            k.extend_from_slice(p.as_bytes());
            k.push(SEP);
        }
        k.extend_from_slice(key);
        k
    };
    let at = |ms: u64, key: &[u8]| [ms.to_be_bytes().as_slice(), key].concat();
    // (tree, entry) of record `i`, as the store's `index_entries` and `schedule_key` shape them.
    let entries_of = |i: u64| {
        let k = key(i);
        let k = k.as_bytes();
        let (user, sid) = (format!("user{}", i % 100_000), format!("sid{i}"));
        vec![
            (1, at(now.as_millis() + 3_600_000, k)),
            (2, joined(&[&user], k)),
            (3, joined(&["https://idp.example", &sid], k)),
            (4, joined(&["https://idp.example", &user], k)),
        ]
    };

    let started = Instant::now();
    std::thread::scope(|scope| {
        for part in 0..2u64 {
            let (trees, value, entries_of) = (&trees, &value, &entries_of);
            scope.spawn(move || {
                for i in (part..n).step_by(2) {
                    if entries {
                        for (tree, entry) in entries_of(i) {
                            trees[tree].insert(entry, &[]).unwrap();
                        }
                    }
                    trees[0].insert(key(i).as_bytes(), value.as_slice()).unwrap();
                }
            });
        }
    });
    db.flush().unwrap();
    let load_s = started.elapsed().as_secs_f64();

    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut random = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut lat: Vec<f64> = (0..20_000)
        .map(|_| {
            let k = key(random());
            let t = Instant::now();
            assert!(trees[0].get(k.as_bytes()).unwrap().is_some());
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let t = Instant::now();
    for _ in 0..100 {
        let i = random();
        let k = key(i);
        let old = trees[0].get(k.as_bytes()).unwrap();
        if entries {
            for (tree, entry) in entries_of(i) {
                trees[tree].remove(entry).unwrap();
            }
            trees[1].insert(at(now.as_millis() + 86_400_000, k.as_bytes()), &[]).unwrap();
        }
        trees[0].compare_and_swap(k.as_bytes(), old, Some(value.as_slice())).unwrap().unwrap();
    }
    let rewrite_ms = t.elapsed().as_secs_f64() * 1e3;
    db.flush().unwrap();
    json!({
        "sessions": n, "value_bytes": value.len(), "entries": entries, "load_s": load_s,
        "get_uniform_p50_us": percentile(&lat, 0.5), "get_uniform_p99_us": percentile(&lat, 0.99),
        "rewrite_100_ms": rewrite_ms, "disk_mib": disk_mib(dir.path()),
    })
}

/// `GET /auth/session` with a valid session on sled, on PostgreSQL (`BFF_BENCH_POSTGRES`, else
/// `BFF_TEST_POSTGRES`) in strict mode, and on PostgreSQL in cached mode, one after the other in this run;
/// then the cached mode's staleness. `null` for PostgreSQL when neither variable is set.
async fn stores(secs: u64, connections: u64) -> Value {
    let pg = std::env::var("BFF_BENCH_POSTGRES").or_else(|_| std::env::var("BFF_TEST_POSTGRES")).ok();
    let mut out = serde_json::Map::new();
    let location = |name: &str| match (name, &pg) {
        ("sled", _) => Some(None),
        (_, Some(url)) => Some(Some(bff_session_server::store::Location::Postgres(url.clone()))),
        (_, None) => None,
    };
    for name in ["sled", "postgres", "postgres_cached"] {
        let Some(location) = location(name) else {
            out.insert(name.into(), Value::Null);
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut s = settings(dir.path(), port, Upstream::None);
        s.store = location;
        s.postgres_cache = name == "postgres_cached";
        let running = bff_session_server::start(s).await.unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let (cookie, _) = login(&base, &format!("bench-{name}")).await;
        let url = format!("{base}/auth/session");
        let result = tokio::task::spawn_blocking(move || wrk(&url, Some(&cookie), secs, connections)).await.unwrap();
        out.insert(name.into(), result);
        running.stop().await;
    }
    let ratio = |name: &str| out[name]["rps"].as_f64().zip(out["sled"]["rps"].as_f64()).map(|(p, s)| p / s);
    let (strict, cached) = (ratio("postgres"), ratio("postgres_cached"));
    out.insert("ratio_postgres_to_sled".into(), json!(strict));
    out.insert("ratio_postgres_cached_to_sled".into(), json!(cached));
    let staleness = match &pg {
        Some(url) => staleness(url, secs, connections).await,
        None => Value::Null,
    };
    out.insert("staleness".into(), staleness);
    Value::Object(out)
}

/// The cached mode's staleness under load: replica A (strict) and replica B (cached) share one database
/// and one token key; wrk loads B's session check while, again and again, a user signs in on A, B checks the
/// session (so its copy is cached), A signs the user out, and B is asked until it refuses the cookie. Each
/// sample is the time from A's acknowledgement of the logout (its commit comes just before) until B's
/// first refusal, to within one request to B.
async fn staleness(url: &str, secs: u64, connections: u64) -> Value {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = dirs.0.path().join("token.key");
    drop(bff_session_server::seal::TokenSealer::from_file(&key, true).unwrap());
    let replica = |dir: &Path, cached: bool| {
        let port = free_port();
        let mut s = settings(dir, port, Upstream::None);
        s.store = Some(bff_session_server::store::Location::Postgres(url.to_owned()));
        s.postgres_cache = cached;
        s.key_file = Some(key.clone());
        (port, s)
    };
    let (port_a, a) = replica(dirs.0.path(), false);
    let (port_b, b) = replica(dirs.1.path(), true);
    let (a, b) = (bff_session_server::start(a).await.unwrap(), bff_session_server::start(b).await.unwrap());
    let (base_a, base_b) = (format!("http://127.0.0.1:{port_a}"), format!("http://127.0.0.1:{port_b}"));
    let (load_cookie, _) = login(&base_a, "staleness-load").await;
    let load = {
        let url = format!("{base_b}/auth/session");
        tokio::task::spawn_blocking(move || wrk(&url, Some(&load_cookie), secs, connections))
    };
    let http = reqwest::Client::new();
    let mut samples = Vec::new();
    let mut served_after_logout = 0u64;
    let until = Instant::now() + Duration::from_secs(secs.saturating_sub(1));
    let mut k = 0;
    while Instant::now() < until {
        k += 1;
        let (cookie, csrf) = login(&base_a, &format!("stale{k}")).await;
        let check = || http.get(format!("{base_b}/auth/session")).header("cookie", &cookie).send();
        assert!(check().await.unwrap().status().is_success(), "B does not serve a session made on A");
        let out = http
            .post(format!("{base_a}/auth/logout"))
            .header("cookie", &cookie)
            .header("x-csrf-token", csrf)
            .send()
            .await
            .unwrap();
        let acknowledged = Instant::now();
        assert!(out.status().is_success());
        loop {
            let status = check().await.unwrap().status();
            if status == reqwest::StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(status.is_success(), "B answered {status}");
            served_after_logout += 1;
            assert!(acknowledged.elapsed() < Duration::from_secs(10), "B still serves a session ended 10 s ago");
        }
        samples.push(acknowledged.elapsed().as_secs_f64() * 1e3);
    }
    let load = load.await.unwrap();
    a.stop().await;
    b.stop().await;
    samples.sort_by(f64::total_cmp);
    json!({
        "count": samples.len(),
        "p50_ms": percentile(&samples, 0.5),
        "p99_ms": percentile(&samples, 0.99),
        "max_ms": samples.last().copied().unwrap_or(f64::NAN),
        "served_after_logout": served_after_logout,
        "load": load,
    })
}

fn url_of(s: &str) -> reqwest::Url {
    reqwest::Url::parse(s).unwrap()
}
