//! What every listener, the admin server and the reloader share.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Request bodies sent upstream: streamed from the client, or buffered (replayable
/// for retries and mirrors).
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;

/// A pooled upstream client: plain HTTP/1.1 with keep-alive, or h2c.
///
/// Seam for mesh mTLS: an Istio-mode backend will get a connector that wraps this
/// one with rustls and the workload certificate; the request path does not change.
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// A listener socket as actually bound (its port can differ from the manifest's
/// when overridden, e.g. in tests and the demo).
#[derive(Clone, Debug, serde::Serialize)]
pub struct BoundListener {
    pub name: String,
    pub address: SocketAddr,
}

pub struct State {
    /// The active configuration; replaced whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    /// HTTP/1.1 upstreams.
    pub upstream: UpstreamClient,
    /// HTTP/2 (h2c, prior knowledge) upstreams: gRPC and h2c Services.
    pub upstream_h2: UpstreamClient,
    /// True once listeners serve a snapshot, false again while shutting down.
    pub ready: AtomicBool,
    pub bound: OnceLock<Vec<BoundListener>>,
}

impl State {
    pub fn new() -> Arc<State> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let upstream = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector.clone());
        let upstream_h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .build(connector);
        Arc::new(State {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            metrics: Metrics::default(),
            upstream,
            upstream_h2,
            ready: AtomicBool::new(false),
            bound: OnceLock::new(),
        })
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("version", &self.snapshot.load().version)
            .finish_non_exhaustive()
    }
}
