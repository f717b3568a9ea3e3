//! Istio workload identity for meshgate: SPIFFE identities, and (as the mesh
//! work lands) the Istio CA client, certificate rotation and the
//! SPIFFE-verifying TLS client the proxy uses to reach meshed pods.

mod spiffe;

pub use spiffe::SpiffeId;

/// Errors of this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId { id: String, reason: &'static str },
}
