//! Istio workload identity for meshgate: SPIFFE identities, CSRs, the Istio CA
//! client, certificate inspection, and the mesh TLS client the proxy uses to
//! reach meshed pods:
//!
//! - [`identity`]: the workload identity (certificate, key, trust bundle) published
//!   on a `watch` channel, so rotation reaches new handshakes at once;
//! - [`verify`]: the SPIFFE server-certificate verifier (chain to the trust bundle,
//!   then the one `spiffe://` URI SAN against the expected identities);
//! - [`client`]: the rustls client config (ALPN, SNI, the workload certificate);
//! - [`provider`]: where identities come from (the Istio CA, or files an
//!   istio-proxy sidecar writes) and the refresh loop;
//! - [`hbone`]: HTTP/2 CONNECT tunnels to ztunnel (ambient mode);
//! - `fixtures` (feature `test-fixtures`): a local mesh CA and Istio-like inbound servers.

pub mod ca_client;
pub mod certs;
pub mod client;
pub mod csr;
pub mod hbone;
pub mod identity;
pub mod provider;
mod spiffe;
pub mod verify;

#[cfg(feature = "test-fixtures")]
pub mod fixtures;

pub use ca_client::{CaConfig, IstioCaClient, WorkloadCertificate};
pub use client::{mesh_client_config, outbound_sni, tls_connect, Alpn};
pub use identity::{IdentityWatch, WorkloadIdentity};
pub use provider::{
    IdentityManager, IdentityProvider, IstioCaProvider, ProviderMetrics, SidecarFilesProvider,
};
pub use spiffe::SpiffeId;
pub use verify::{ExpectedIdentity, SpiffeVerifier};

/// Errors of this crate.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId { id: String, reason: &'static str },
    #[error("generating key or CSR: {0}")]
    Csr(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("Istio CA: {0}")]
    Ca(String),
    /// The peer presented an identity in another trust domain.
    #[error("peer identity {got} is not in trust domain {expected}")]
    WrongTrustDomain { got: SpiffeId, expected: String },
    /// The peer presented an identity in another namespace.
    #[error("peer identity {got} is not in namespace {expected}")]
    WrongNamespace { got: SpiffeId, expected: String },
    /// The peer's identity is not one of the service accounts expected.
    #[error("peer identity {got} is not one of the expected identities [{expected}]")]
    UnexpectedIdentity { got: SpiffeId, expected: String },
    /// The peer's certificate failed verification (chain, validity, SAN); the
    /// message says why.
    #[error("peer certificate rejected: {0}")]
    PeerVerification(String),
    /// No workload identity (certificate and trust bundle) is available yet.
    #[error("no workload identity available yet")]
    NoIdentity,
    /// A TLS handshake failed for another reason than the peer's certificate.
    #[error("TLS handshake: {0}")]
    Handshake(String),
    /// An HBONE tunnel could not be opened.
    #[error("HBONE: {0}")]
    Hbone(String),
    /// Reading identity files.
    #[error("{path}: {message}")]
    Files { path: String, message: String },
    #[error("I/O: {0}")]
    Io(String),
}

impl Error {
    fn from_rcgen(e: rcgen::Error) -> Self {
        Error::Csr(e.to_string())
    }

    /// Whether the error is about identities: a peer certificate that failed
    /// verification or did not match, or no identity of our own.
    pub fn is_identity(&self) -> bool {
        matches!(
            self,
            Error::WrongTrustDomain { .. }
                | Error::WrongNamespace { .. }
                | Error::UnexpectedIdentity { .. }
                | Error::PeerVerification(_)
                | Error::NoIdentity
        )
    }
}

/// The crypto provider: the process default, or aws-lc-rs.
pub(crate) fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
