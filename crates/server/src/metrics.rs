//! Counters and latencies, exposed in the Prometheus text format at `/metrics` (on `--metrics-listen`).
//!
//! Owns the numbers only; it never labels anything with a session ID, user or token.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS_US: [u64; 10] = [500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

/// The routes latencies are kept for; `observe` on any other name counts as "other".
pub const ROUTES: [&str; 19] = [
    "healthz",
    "openapi",
    "rate_limited",
    "cross_site",
    "login",
    "callback",
    "session",
    "logout",
    "logout_all",
    "sessions",
    "end_session",
    "backchannel",
    "api",
    "test_clock",
    "test_tick",
    "demo",
    "echo",
    "other",
    "starting",
];

/// A latency histogram of atomics: every request records one, so it must not take a lock.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    /// Rare events (sessions created and ended, refreshes): a lock is fine.
    counters: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    latencies: [Histogram; ROUTES.len()],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Adds one to `name{label="value"}`.
    pub fn inc(&self, name: &'static str, label: &'static str, value: &'static str) {
        self.add(name, label, value, 1);
    }

    /// Adds `n` to `name{label="value"}`.
    pub fn add(&self, name: &'static str, label: &'static str, value: &'static str, n: u64) {
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((name, label, value)).or_default() += n;
        }
    }

    pub fn observe(&self, route: &'static str, elapsed: Duration) {
        let index = ROUTES.iter().position(|r| *r == route).unwrap_or(ROUTES.len() - 2);
        let h = &self.latencies[index];
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_us.fetch_add(us, Ordering::Relaxed);
        // Buckets are cumulative in the exposition; store the first bucket that holds it.
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            h.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads one counter, for tests.
    pub fn get(&self, name: &'static str, label: &'static str, value: &'static str) -> u64 {
        self.counters.lock().map_or(0, |c| c.get(&(name, label, value)).copied().unwrap_or(0))
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(c) = self.counters.lock() {
            let mut last = "";
            for ((name, label, value), n) in c.iter() {
                if *name != last {
                    let _ = writeln!(out, "# TYPE {name} counter");
                    last = name;
                }
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# TYPE bff_request_duration_seconds histogram");
        for (route, h) in ROUTES.iter().zip(&self.latencies) {
            let count = h.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (bound, n) in BUCKETS_US.iter().zip(&h.buckets) {
                cumulative += n.load(Ordering::Relaxed);
                let le = *bound as f64 / 1e6;
                let _ =
                    writeln!(out, "bff_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "bff_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}");
            let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "bff_request_duration_seconds_sum{{route=\"{route}\"}} {sum}");
            let _ = writeln!(out, "bff_request_duration_seconds_count{{route=\"{route}\"}} {count}");
        }
        out
    }
}
