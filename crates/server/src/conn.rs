//! Connections: accepting TCP connections and serving HTTP/1.1 on each, within limits a slow or oversized
//! client cannot get around.
//!
//! Owns the per-connection limits (header bytes, the header-read timeout) and the graceful stop, and hands
//! each request the client's address. It never looks at what a request means: that is `http`'s.
//!
//! warp's own `serve` sets no timer, so hyper's header-read timeout never fires there and a client that
//! trickles its headers holds a connection for ever; this loop is warp's, with the limits switched on. The
//! BFF's requests go straight to `http::handle`; warp's filters serve only the metrics and the demo's
//! provider.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower_service::Service as _;
use warp::filters::BoxedFilter;
use warp::http;
use warp::reply::Response;

/// What one connection may cost the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// The request line and headers together, in bytes; beyond it hyper answers 431 and closes.
    pub max_header_bytes: usize,
    /// From when the server starts waiting for a request's head until all of it has arrived. hyper starts
    /// this clock as soon as it waits, so it is also how long an idle kept-alive connection stays open.
    pub header_read_timeout: Duration,
}

impl Default for ConnLimits {
    /// 32 KiB of headers, twice core's limit on cookies so that an oversized cookie still gets its own
    /// error; 10 seconds to send them.
    fn default() -> Self {
        Self { max_header_bytes: 32 * 1024, header_read_timeout: Duration::from_secs(10) }
    }
}

/// The address of the client at the other end of the TCP connection, in every request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// What answers the requests of a listener: a function of the request (its [`Peer`] among the extensions).
pub type Handler = Arc<dyn Fn(http::Request<Incoming>) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// A warp filter as a [`Handler`] (the metrics listener, the demo's provider).
pub fn filter(routes: BoxedFilter<(Response,)>) -> Handler {
    let service = warp::service(routes);
    Arc::new(move |req| {
        let call = service.clone().call(req);
        Box::pin(async move {
            match call.await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    })
}

/// hyper refuses a read buffer smaller than this.
const MIN_BUFFER: usize = 8192;

/// Serves `handler` on every connection `listener` accepts until `stop` completes, then lets the requests in
/// flight finish.
pub async fn serve(listener: TcpListener, handler: Handler, limits: ConnLimits, stop: impl Future<Output = ()> + Send) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUFFER) * 2);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors, most likely: pause rather than spin on the error.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            let answer = handler(req);
            async move { Ok::<_, std::convert::Infallible>(answer.await) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
