//! OpenTelemetry traces, received by a collector in this process: with an OTLP endpoint, each request is a
//! span named by its route and status, and the session transitions it commits are its events, in the audit
//! trail's words. Nothing in a span names the user, the session or a token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use reqwest::{Method, StatusCode};
use support::Server;
use tracing_subscriber::layer::SubscriberExt as _;
use warp::Filter as _;

/// An OTLP/HTTP collector on 127.0.0.1 keeping every span it is sent.
async fn collector() -> (url::Url, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let route = warp::path!("v1" / "traces").and(warp::post()).and(warp::body::bytes()).map(move |body: Bytes| {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
        let mut kept = kept.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                kept.extend(scope.spans);
            }
        }
        warp::reply()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (url, spans)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn string(value: Option<&AnyValue>) -> Option<&str> {
    match value {
        Some(AnyValue::StringValue(s)) => Some(s),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_is_a_span_with_its_transitions_as_events() {
    let (endpoint, spans) = collector().await;
    let (layer, provider) = bff_session_server::telemetry::otel_layer(&endpoint).unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();

    let server = Server::start().await;
    let mut b = server.browser();
    assert_eq!(b.login("alice").await.status, StatusCode::FOUND);
    assert_eq!(b.get("/auth/session").await.status, StatusCode::OK);
    let cookie = b.session_cookie().unwrap();
    b.unsafe_call(Method::POST, "/auth/logout").await;
    tokio::task::spawn_blocking(move || provider.shutdown().unwrap()).await.unwrap();

    let spans = spans.lock().unwrap();
    let requests: Vec<&Span> = spans.iter().filter(|s| s.name == "request").collect();
    let route = |r: &str| requests.iter().find(|s| string(attribute(&s.attributes, "http.route")) == Some(r)).copied();
    let callback = route("callback").expect("a span for the callback");
    let status = attribute(&callback.attributes, "http.response.status_code");
    let status = match status {
        Some(AnyValue::IntValue(n)) => n.to_string(),
        other => string(other).unwrap_or_default().to_owned(),
    };
    assert_eq!(status, "302");
    let events = |span: &Span| -> Vec<(String, String)> {
        span.events
            .iter()
            .filter(|e| e.name == "transition")
            .map(|e| {
                let field = |k| string(attribute(&e.attributes, k)).unwrap_or_default().to_owned();
                (field("event"), field("detail"))
            })
            .collect()
    };
    assert_eq!(events(callback), [("created".to_owned(), String::new())]);
    assert_eq!(events(route("logout").expect("a span for the logout")), [("revoked".to_owned(), "logout".to_owned())]);
    let session = route("session").expect("a span for the session check");
    assert_eq!(string(attribute(&session.attributes, "http.request.method")), Some("GET"));
    let everything = format!("{spans:?}");
    assert!(!everything.contains("alice") && !everything.contains(&cookie), "no user or session in a trace");
}
