//! What every listener, the admin server and the reloader share.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::access_log::AccessLog;
use crate::mesh::MeshTargets;
use crate::metrics::Metrics;
use crate::policy::PolicyRuntime;
use crate::snapshot::Snapshot;
use crate::upstream::{MeshRuntime, UpstreamConnector};

/// Request bodies sent upstream: streamed from the client, or buffered (replayable
/// for retries and mirrors).
pub type UpstreamBody = Either<ClientBody, Full<Bytes>>;

/// A request body from a client, counted for the access log, and limited when a
/// policy sets `maxBodyBytes`.
pub type ClientBody = crate::policy::limits::LimitedBody<crate::access_log::CountedBody<Incoming>>;

/// A pooled upstream client: HTTP/1.1 with keep-alive, or HTTP/2; over plain TCP,
/// or mesh mTLS for the endpoints of an Istio-mode gateway (see [`crate::upstream`]).
pub type UpstreamClient = Client<UpstreamConnector, UpstreamBody>;

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
    /// HTTP/1.1 upstreams of health probes and mirrored requests.
    pub upstream: UpstreamClient,
    /// HTTP/2 (h2c, prior knowledge) upstreams for health probes.
    pub upstream_h2: UpstreamClient,
    /// HTTP/1.1 upstreams of requests: keep-alive connections by endpoint.
    pub h1: crate::h1pool::H1Pool,
    /// HTTP/2 upstreams of requests (gRPC, h2c Services): one connection per
    /// endpoint, `:authority` from the request's host.
    pub h2: crate::h2pool::H2Pool,
    /// True once listeners serve a snapshot, false again while shutting down.
    pub ready: AtomicBool,
    /// The listeners as bound now (see [`crate::listeners`]).
    pub bound: ArcSwap<Vec<BoundListener>>,
    /// The version of the last applied snapshot; listeners follow it.
    pub applied: tokio::sync::watch::Sender<u64>,
    /// The mesh targets of the active snapshot, read by the upstream connectors.
    pub mesh_targets: Arc<ArcSwap<MeshTargets>>,
    /// The workload identity used upstream.
    pub mesh: MeshRuntime,
    /// The HTTP/1.1 connector, for connections of their own (upgrades).
    pub connector: UpstreamConnector,
    /// Where access log lines go.
    pub access_log: AccessLog,
    /// `clientTraffic.maxConnections` of the first snapshot, over all listeners.
    pub connection_limit: OnceLock<Arc<tokio::sync::Semaphore>>,
    /// JWKS caches, rate-limit buckets and refusal counts, kept across reloads.
    pub policy: PolicyRuntime,
    /// The trace exporter of the current configuration.
    pub telemetry: crate::telemetry::Telemetry,
}

impl State {
    /// A state without a mesh identity (mesh endpoints then get 503 MI).
    pub fn new() -> Arc<State> {
        State::with_mesh(MeshRuntime::default())
    }

    pub fn with_mesh(mesh: MeshRuntime) -> Arc<State> {
        State::build(
            mesh,
            AccessLog::default(),
            PolicyRuntime::new(rustls::RootCertStore::empty()),
        )
    }

    pub fn build(mesh: MeshRuntime, access_log: AccessLog, policy: PolicyRuntime) -> Arc<State> {
        let mesh_targets = Arc::new(ArcSwap::from_pointee(MeshTargets::new()));
        let pools = policy.loads.pools.clone();
        let connector =
            UpstreamConnector::new(mesh_targets.clone(), mesh.clone(), false, pools.clone());
        let connector_h2 = UpstreamConnector::new(mesh_targets.clone(), mesh.clone(), true, pools);
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
            .build(connector_h2.clone());
        // Health checks go through the clients (and so the connectors) of requests.
        policy.health.bind(upstream.clone(), upstream_h2.clone());
        Arc::new(State {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            metrics: Metrics::default(),
            upstream,
            upstream_h2,
            h1: crate::h1pool::H1Pool::new(connector.clone()),
            h2: crate::h2pool::H2Pool::new(connector_h2),
            ready: AtomicBool::new(false),
            bound: ArcSwap::from_pointee(Vec::new()),
            applied: tokio::sync::watch::Sender::new(0),
            mesh_targets,
            mesh,
            connector,
            access_log,
            connection_limit: OnceLock::new(),
            policy,
            telemetry: Default::default(),
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
