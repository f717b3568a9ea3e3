//! The workload identity: the certificate chain and key the proxy presents, and
//! the trust bundle (mesh roots) peers are verified against. Identities are
//! published on a `tokio::sync::watch` channel: a handshake reads the current
//! value, so a rotation applies to the next connection while live connections
//! keep the credentials they were made with.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tokio::sync::watch;

use crate::{certs, crypto_provider, Error, SpiffeId};

/// The current identity, `None` until the first one is obtained.
pub type IdentityWatch = watch::Receiver<Option<Arc<WorkloadIdentity>>>;

/// One workload certificate with its key and trust bundle.
pub struct WorkloadIdentity {
    pub id: SpiffeId,
    /// Leaf first, then intermediates; ready for rustls.
    pub key: Arc<CertifiedKey>,
    /// The mesh roots; several during a root rotation.
    pub roots: Arc<RootCertStore>,
    root_ders: Vec<CertificateDer<'static>>,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

impl std::fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("id", &self.id.to_string())
            .field("roots", &self.root_ders.len())
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentity {
    /// Builds an identity from DER parts, checking that the key matches the leaf,
    /// that the leaf carries one SPIFFE ID, and that the bundle is not empty.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, Error> {
        let leaf = chain
            .first()
            .ok_or_else(|| Error::Certificate("empty certificate chain".into()))?;
        let id = certs::spiffe_id(leaf)?;
        let not_before_unix = certs::not_before_unix(leaf)?;
        let not_after_unix = certs::not_after_unix(leaf)?;
        if roots.is_empty() {
            return Err(Error::Certificate("empty trust bundle".into()));
        }
        let mut store = RootCertStore::empty();
        for root in &roots {
            store
                .add(root.clone())
                .map_err(|e| Error::Certificate(format!("trust bundle: {e}")))?;
        }
        let key = CertifiedKey::from_der(chain, key, &crypto_provider())
            .map_err(|e| Error::Certificate(format!("key and certificate: {e}")))?;
        Ok(WorkloadIdentity {
            id,
            key: Arc::new(key),
            roots: Arc::new(store),
            root_ders: roots,
            not_before_unix,
            not_after_unix,
        })
    }

    /// Builds an identity from PEM texts: the chain (leaf first), the private key
    /// (PKCS#8, SEC1 or PKCS#1) and the trust bundle.
    pub fn from_pem(chain_pem: &str, key_pem: &str, roots_pem: &str) -> Result<Self, Error> {
        let chain = certs::parse_pem_chain(chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("private key: {e}")))?;
        let roots = certs::parse_pem_chain(roots_pem)?;
        Self::new(chain, key, roots)
    }

    /// The chain presented (leaf first).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.key.cert
    }

    /// The trust bundle as DER.
    pub fn root_ders(&self) -> &[CertificateDer<'static>] {
        &self.root_ders
    }

    /// Whether `other` holds the same certificates and roots (keys follow certificates).
    pub fn same_as(&self, other: &WorkloadIdentity) -> bool {
        self.chain() == other.chain() && self.root_ders == other.root_ders
    }

    /// Seconds from now until the identity should be renewed: its half-life.
    pub fn half_life_from_now(&self, now_unix: i64) -> i64 {
        let lifetime = (self.not_after_unix - self.not_before_unix).max(0);
        self.not_before_unix + lifetime / 2 - now_unix
    }
}

/// A channel holding `identity`, for fixed identities (tests, the demo).
pub fn fixed(
    identity: WorkloadIdentity,
) -> (watch::Sender<Option<Arc<WorkloadIdentity>>>, IdentityWatch) {
    watch::channel(Some(Arc::new(identity)))
}
