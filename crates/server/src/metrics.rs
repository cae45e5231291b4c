//! Counters and latencies, exposed in the Prometheus text format at `/metrics`.
//!
//! Owns the numbers only; it never labels anything with a session ID, user or token.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS_MS: [f64; 10] = [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0];

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS_MS.len()],
    count: u64,
    sum_ms: f64,
}

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    latencies: Mutex<BTreeMap<&'static str, Histogram>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Adds one to `name{label="value"}`.
    pub fn inc(&self, name: &'static str, label: &'static str, value: &'static str) {
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((name, label, value)).or_default() += 1;
        }
    }

    pub fn observe(&self, route: &'static str, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        if let Ok(mut l) = self.latencies.lock() {
            let h = l.entry(route).or_default();
            h.count += 1;
            h.sum_ms += ms;
            for (i, bound) in BUCKETS_MS.iter().enumerate() {
                if ms <= *bound {
                    h.buckets[i] += 1;
                }
            }
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
        if let Ok(l) = self.latencies.lock() {
            let _ = writeln!(out, "# TYPE bff_request_duration_seconds histogram");
            for (route, h) in l.iter() {
                for (bound, n) in BUCKETS_MS.iter().zip(h.buckets) {
                    let _ = writeln!(
                        out,
                        "bff_request_duration_seconds_bucket{{route=\"{route}\",le=\"{}\"}} {n}",
                        bound / 1000.0
                    );
                }
                let _ =
                    writeln!(out, "bff_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "bff_request_duration_seconds_sum{{route=\"{route}\"}} {}", h.sum_ms / 1000.0);
                let _ = writeln!(out, "bff_request_duration_seconds_count{{route=\"{route}\"}} {}", h.count);
            }
        }
        out
    }
}
