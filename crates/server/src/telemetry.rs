//! Logs, and optional OpenTelemetry traces.
//!
//! Owns the `tracing` subscriber the binary installs: log lines (text or JSON) filtered by
//! `BFF_SESSION_LOG`, and with `--otlp-endpoint`, a span per request exported over OTLP/HTTP, carrying the
//! route, method and status, with one `transition` event per committed session change named in the audit
//! trail's vocabulary. Traces are off by default, and while they are off no request builds a span at all. It
//! never records a session ID, cookie, token or user: the request span's fields are fixed vocabularies.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer, Registry};

/// Whether requests build spans: only while an OpenTelemetry layer is installed.
static REQUEST_SPANS: AtomicBool = AtomicBool::new(false);

/// Whether a request should build its span (see the module docs).
pub fn request_spans() -> bool {
    REQUEST_SPANS.load(Ordering::Relaxed)
}

/// Why tracing could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelemetryError {
    /// The OTLP exporter refused its configuration.
    Exporter(String),
    /// A subscriber was installed already.
    AlreadyInstalled,
}

impl fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exporter(e) => write!(f, "the OTLP exporter cannot start: {e}"),
            Self::AlreadyInstalled => f.write_str("a tracing subscriber is installed already"),
        }
    }
}

impl std::error::Error for TelemetryError {}

/// The installed subscriber's exporter, flushed by [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the process's subscriber: logs at `default_level` unless `BFF_SESSION_LOG` says otherwise,
    /// as JSON lines with `json`, to standard error with `stderr` (else standard output), and traces to the OTLP/HTTP collector at `otlp` (its base URL, as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: `/v1/traces` is added) when one is given.
    pub fn install(
        default_level: &str,
        json: bool,
        stderr: bool,
        otlp: Option<&url::Url>,
    ) -> Result<Self, TelemetryError> {
        let filter = EnvFilter::try_from_env("BFF_SESSION_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
        let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout);
        let writer = if stderr { tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr) } else { writer };
        let logs = if json {
            tracing_subscriber::fmt::layer().json().with_writer(writer).with_filter(filter).boxed()
        } else {
            tracing_subscriber::fmt::layer().with_writer(writer).with_filter(filter).boxed()
        };
        let (traces, provider) = match otlp {
            Some(endpoint) => {
                let (layer, provider) = otel_layer(endpoint)?;
                (Some(layer), Some(provider))
            }
            None => (None, None),
        };
        Registry::default().with(logs).with(traces).try_init().map_err(|_| TelemetryError::AlreadyInstalled)?;
        Ok(Self { provider })
    }

    /// Sends the spans still buffered; at exit.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("bff-session: traces not all sent: {e}");
        }
    }
}

/// A layer exporting this crate's spans and events at debug level and above to the OTLP/HTTP collector at
/// `endpoint`, and its provider (shut it down to flush). Turns request spans on.
pub fn otel_layer<S>(
    endpoint: &url::Url,
) -> Result<(Box<dyn Layer<S> + Send + Sync>, SdkTracerProvider), TelemetryError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    let traces = format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("bff-session").build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("bff-session");
    // The transitions are debug events, so log lines at the default level do not repeat the audit trail.
    let only_ours = Targets::new().with_target("bff_session_server", LevelFilter::DEBUG);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_ours).boxed();
    REQUEST_SPANS.store(true, Ordering::Relaxed);
    Ok((layer, provider))
}
