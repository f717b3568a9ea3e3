//! Istio workload identity for meshgate: SPIFFE identities, CSRs, the Istio CA
//! client and certificate inspection. (Rotation, the sidecar-files source and
//! the SPIFFE-verifying upstream TLS client come with the mesh work.)

pub mod ca_client;
pub mod certs;
pub mod csr;
mod spiffe;

pub use ca_client::{CaConfig, IstioCaClient, WorkloadCertificate};
pub use spiffe::SpiffeId;

/// Errors of this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId { id: String, reason: &'static str },
    #[error("generating key or CSR: {0}")]
    Csr(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("Istio CA: {0}")]
    Ca(String),
}

impl Error {
    fn from_rcgen(e: rcgen::Error) -> Self {
        Error::Csr(e.to_string())
    }
}
