//! Counters and latencies in the OpenMetrics format at `/metrics` (on `--metrics-listen`), through the
//! `prometheus-client` crate.
//!
//! Owns the metric names, their help texts and labels: every transition in the audit trail's vocabulary,
//! refresh and provider-revocation outcomes, the revocation queue's depth, store and request latencies. It
//! never labels anything with a session, user or token: every label value is a `&'static str` from a fixed
//! vocabulary, so nothing a client sends can become one.

use std::time::Duration;

use bff_session_core::audit::Event;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const LATENCY_BUCKETS: [f64; 12] =
    [25e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 250e-3, 1.0];

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

/// The store operations whose latency is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    Get,
    Put,
    Delete,
    /// A pass's writes committed together ([`Store::write_all`](crate::store::Store::write_all)).
    Batch,
    Keys,
    Due,
    Flush,
    Logins,
    Jtis,
}

impl StoreOp {
    const ALL: [Self; 9] =
        [Self::Get, Self::Put, Self::Delete, Self::Batch, Self::Keys, Self::Due, Self::Flush, Self::Logins, Self::Jtis];

    const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Put => "put",
            Self::Delete => "delete",
            Self::Batch => "batch",
            Self::Keys => "keys",
            Self::Due => "due",
            Self::Flush => "flush",
            Self::Logins => "logins",
            Self::Jtis => "jtis",
        }
    }
}

/// The counters with one label, by their exposed name (with `_total`), registered name and help.
const COUNTERS: [(&str, &str, &str); 6] = [
    ("bff_sessions_created_total", "bff_sessions_created", "Sessions created, by provider kind."),
    ("bff_sessions_expired_total", "bff_sessions_expired", "Active sessions that expired, by deadline."),
    ("bff_sessions_revoked_total", "bff_sessions_revoked", "Active sessions that were ended, by reason."),
    ("bff_refreshes_total", "bff_refreshes", "Token refreshes at the provider, by outcome."),
    (
        "bff_provider_revocations_total",
        "bff_provider_revocations",
        "Refresh tokens sent to the provider's revocation endpoint (or dropped from a full queue), by outcome.",
    ),
    (
        "bff_pending_logins_evicted_total",
        "bff_pending_logins_evicted",
        "Pending logins forgotten before their callback, by reason.",
    ),
];

/// The store operations' latency histograms; clones share them.
#[derive(Clone, Debug)]
pub struct StoreTimes(Vec<Histogram>);

impl StoreTimes {
    pub fn observe(&self, op: StoreOp, elapsed: Duration) {
        if let Some(h) = StoreOp::ALL.iter().position(|o| *o == op).and_then(|i| self.0.get(i)) {
            h.observe(elapsed.as_secs_f64());
        }
    }
}

type Label = [(&'static str, &'static str); 1];
type Labels = [(&'static str, &'static str); 2];
type Histograms = Family<Label, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    counters: [Family<Label, Counter>; COUNTERS.len()],
    transitions: Family<Labels, Counter>,
    /// One per route and store operation, taken from their families once, so a request finds its
    /// histogram by index instead of by a lookup in the family's map.
    routes: Vec<Histogram>,
    store: StoreTimes,
    revocation_queue: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let counters: [Family<Label, Counter>; COUNTERS.len()] = std::array::from_fn(|_| Family::default());
        for ((_, name, help), family) in COUNTERS.iter().zip(&counters) {
            registry.register(*name, *help, family.clone());
        }
        let transitions = Family::<Labels, Counter>::default();
        registry.register(
            "bff_transitions",
            "Committed session transitions, in the audit trail's vocabulary (event, and its reason or error).",
            transitions.clone(),
        );
        let routes_family: Histograms = Family::new_with_constructor(latency_histogram);
        registry.register("bff_request_duration_seconds", "Time to answer a request, by route.", routes_family.clone());
        let store_family: Histograms = Family::new_with_constructor(latency_histogram);
        registry.register(
            "bff_store_operation_duration_seconds",
            "Time a session store operation took, by operation.",
            store_family.clone(),
        );
        let revocation_queue = Gauge::default();
        registry.register(
            "bff_revocation_queue_depth",
            "Refresh tokens waiting for revocation at the provider.",
            revocation_queue.clone(),
        );
        Self {
            routes: ROUTES.iter().map(|r| routes_family.get_or_create_owned(&[("route", *r)])).collect(),
            store: StoreTimes(
                StoreOp::ALL.iter().map(|op| store_family.get_or_create_owned(&[("op", op.as_str())])).collect(),
            ),
            registry,
            counters,
            transitions,
            revocation_queue,
        }
    }
}

impl Metrics {
    /// Adds one to `name{label="value"}`.
    pub fn inc(&self, name: &'static str, label: &'static str, value: &'static str) {
        self.add(name, label, value, 1);
    }

    /// Adds `n` to `name{label="value"}`; `name` is one of the counters listed in this module.
    pub fn add(&self, name: &'static str, label: &'static str, value: &'static str, n: u64) {
        match COUNTERS.iter().position(|(exposed, _, _)| *exposed == name) {
            Some(i) => {
                self.counters[i].get_or_create(&[(label, value)]).inc_by(n);
            }
            None => debug_assert!(false, "unknown counter {name}"),
        }
    }

    /// Counts a committed transition under its audit event's name.
    pub fn transition(&self, event: &Event) {
        self.transitions.get_or_create(&[("event", event.name()), ("detail", event.detail())]).inc();
    }

    pub fn observe(&self, route: &'static str, elapsed: Duration) {
        let index = ROUTES.iter().position(|r| *r == route).unwrap_or(ROUTES.len() - 2);
        self.routes[index].observe(elapsed.as_secs_f64());
    }

    /// The store latency histograms, for the store's timing wrapper.
    pub fn store_times(&self) -> StoreTimes {
        self.store.clone()
    }

    pub fn set_revocation_queue(&self, depth: usize) {
        self.revocation_queue.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Reads one counter, for tests.
    pub fn get(&self, name: &'static str, label: &'static str, value: &'static str) -> u64 {
        COUNTERS
            .iter()
            .position(|(exposed, _, _)| *exposed == name)
            .and_then(|i| self.counters[i].get(&[(label, value)]).map(|c| c.get()))
            .unwrap_or(0)
    }

    /// Reads one transition counter, for tests.
    pub fn transitions(&self, event: &'static str, detail: &'static str) -> u64 {
        self.transitions.get(&[("event", event), ("detail", detail)]).map_or(0, |c| c.get())
    }

    /// The OpenMetrics text, `# EOF` included.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_openmetrics_with_fixed_labels() {
        let m = Metrics::default();
        m.inc("bff_refreshes_total", "outcome", "success");
        m.add("bff_pending_logins_evicted_total", "reason", "capacity", 3);
        m.transition(&Event::Touched);
        m.observe("session", Duration::from_micros(40));
        m.store_times().observe(StoreOp::Get, Duration::from_micros(5));
        m.set_revocation_queue(2);
        let text = m.render();
        for expected in [
            "# TYPE bff_refreshes counter",
            "bff_refreshes_total{outcome=\"success\"} 1",
            "bff_pending_logins_evicted_total{reason=\"capacity\"} 3",
            "bff_transitions_total{event=\"touched\",detail=\"\"} 1",
            "bff_request_duration_seconds_count{route=\"session\"} 1",
            "bff_request_duration_seconds_bucket{le=\"0.0001\",route=\"session\"} 1",
            "bff_store_operation_duration_seconds_count{op=\"get\"} 1",
            "bff_revocation_queue_depth 2",
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(m.get("bff_refreshes_total", "outcome", "success"), 1);
        assert_eq!(m.transitions("touched", ""), 1);
    }
}
