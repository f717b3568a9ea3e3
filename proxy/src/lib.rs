//! meshgate edge proxy: the data plane of an ApiGateway.
//!
//! Configuration flows one way: Kubernetes objects ([`meshgate_crds::manifests::Manifests`])
//! are compiled into an immutable [`snapshot::Snapshot`], which is published through an
//! `ArcSwap` in [`state::State`]. Every request loads the current snapshot once and never
//! takes a lock; a reload builds a whole new snapshot and swaps it in.

pub mod access_log;
pub mod admin;
pub mod backends;
pub mod client;
pub mod cluster;
pub mod demo;
pub mod filters;
pub mod grpc;
pub mod h1pool;
pub mod h2pool;
pub mod health;
pub mod identity_source;
pub mod listeners;
pub mod load;
pub mod loadgen;
pub mod mesh;
pub mod metrics;
pub mod mirror;
pub mod policy;
pub mod pools;
pub mod proxy;
pub mod reload;
pub mod retry;
pub mod routes;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod tls_stream;
pub mod upgrade;
pub mod upstream;

/// Errors of the proxy. Per-route and per-listener problems are not errors of this
/// kind: they are recorded in [`snapshot::Snapshot::errors`] and the rest still runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifests could not be read (a directory or a document).
    #[error("loading manifests: {0}")]
    Load(String),
    /// The manifests were read but no usable snapshot could be compiled from them.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The Kubernetes API could not be used (cluster mode).
    #[error("kubernetes: {0}")]
    Kube(String),
    /// A listening socket could not be opened.
    #[error("binding {addr} ({what}): {source}")]
    Bind {
        what: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// TLS set-up failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// An outgoing request (demo check, tests) failed.
    #[error("client: {0}")]
    Client(String),
    /// The demo could not be set up.
    #[error("demo: {0}")]
    Demo(String),
    /// Mesh identity or mesh TLS (the workload certificate, a peer's identity, HBONE).
    #[error("mesh: {0}")]
    Mesh(#[from] meshgate_mesh::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Installs aws-lc-rs as rustls' process-wide crypto provider. Idempotent: a provider
/// installed earlier (by a test, or by a previous call) is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The crypto provider used for keys and TLS configs: the installed default, or aws-lc-rs.
pub(crate) fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}
