//! Verifying a mesh peer: the chain must lead to a root of the trust bundle
//! (webpki path validation, validity dates, key usage) — with no DNS-name check,
//! since mesh workloads are named by SPIFFE IDs — and the leaf's one
//! `spiffe://` URI SAN must be one of the identities expected of that backend.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use crate::identity::IdentityWatch;
use crate::{certs, crypto_provider, Error, SpiffeId};

/// What a backend's pods may present.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedIdentity {
    /// One of these identities exactly (the backend's service accounts).
    Exact(Vec<SpiffeId>),
    /// Any identity of this namespace in this trust domain.
    Namespace {
        trust_domain: String,
        namespace: String,
    },
}

impl ExpectedIdentity {
    /// Checks a peer's identity, saying precisely what did not match.
    pub fn check(&self, got: &SpiffeId) -> Result<(), Error> {
        match self {
            ExpectedIdentity::Namespace {
                trust_domain,
                namespace,
            } => {
                if got.trust_domain() != trust_domain {
                    Err(Error::WrongTrustDomain {
                        got: got.clone(),
                        expected: trust_domain.clone(),
                    })
                } else if got.namespace() != namespace {
                    Err(Error::WrongNamespace {
                        got: got.clone(),
                        expected: namespace.clone(),
                    })
                } else {
                    Ok(())
                }
            }
            ExpectedIdentity::Exact(ids) => {
                if ids.contains(got) {
                    return Ok(());
                }
                let expected = ids
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                // The most telling mismatch first.
                if !ids.iter().any(|id| id.trust_domain() == got.trust_domain()) {
                    if let Some(first) = ids.first() {
                        return Err(Error::WrongTrustDomain {
                            got: got.clone(),
                            expected: first.trust_domain().to_string(),
                        });
                    }
                }
                if !ids.iter().any(|id| id.namespace() == got.namespace()) {
                    if let Some(first) = ids.first() {
                        return Err(Error::WrongNamespace {
                            got: got.clone(),
                            expected: first.namespace().to_string(),
                        });
                    }
                }
                Err(Error::UnexpectedIdentity {
                    got: got.clone(),
                    expected,
                })
            }
        }
    }
}

impl fmt::Display for ExpectedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedIdentity::Exact(ids) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                write!(f, "{}", ids.join(" | "))
            }
            ExpectedIdentity::Namespace {
                trust_domain,
                namespace,
            } => write!(f, "spiffe://{trust_domain}/ns/{namespace}/sa/*"),
        }
    }
}

/// A rustls server-certificate verifier for mesh peers. The trust bundle is
/// read from the current workload identity at each handshake, so bundle
/// changes (root rotation) apply to new connections at once.
pub struct SpiffeVerifier {
    identity: IdentityWatch,
    expected: ExpectedIdentity,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeVerifier")
            .field("expected", &self.expected.to_string())
            .finish_non_exhaustive()
    }
}

fn other(e: Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl SpiffeVerifier {
    pub fn new(identity: IdentityWatch, expected: ExpectedIdentity) -> Self {
        SpiffeVerifier {
            identity,
            expected,
            algorithms: crypto_provider().signature_verification_algorithms,
        }
    }

    /// The whole check, with our own error type (also used by the inbound fixtures).
    pub fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, rustls::Error> {
        let roots = self
            .identity
            .borrow()
            .as_ref()
            .map(|i| i.roots.clone())
            .ok_or_else(|| other(Error::NoIdentity))?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let id = certs::spiffe_id(end_entity).map_err(other)?;
        self.expected.check(&id).map_err(other)?;
        Ok(id)
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify_chain(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Turns a rustls handshake error into ours: certificate problems (ours or
/// webpki's) become identity errors, the rest handshake errors.
pub fn classify(e: &rustls::Error) -> Error {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            match inner.downcast_ref::<Error>() {
                Some(ours) => ours.clone(),
                None => Error::PeerVerification(inner.to_string()),
            }
        }
        rustls::Error::InvalidCertificate(c) => Error::PeerVerification(format!("{c:?}")),
        other => Error::Handshake(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn namespace_expectation_names_the_mismatch() {
        let e = ExpectedIdentity::Namespace {
            trust_domain: "cluster.local".into(),
            namespace: "shop".into(),
        };
        assert!(e
            .check(&id("spiffe://cluster.local/ns/shop/sa/any"))
            .is_ok());
        assert!(matches!(
            e.check(&id("spiffe://evil.local/ns/shop/sa/any")),
            Err(Error::WrongTrustDomain { .. })
        ));
        assert!(matches!(
            e.check(&id("spiffe://cluster.local/ns/other/sa/any")),
            Err(Error::WrongNamespace { .. })
        ));
    }

    #[test]
    fn exact_expectation_names_the_mismatch() {
        let e = ExpectedIdentity::Exact(vec![id("spiffe://cluster.local/ns/shop/sa/web")]);
        assert!(e
            .check(&id("spiffe://cluster.local/ns/shop/sa/web"))
            .is_ok());
        let err = e
            .check(&id("spiffe://cluster.local/ns/shop/sa/db"))
            .unwrap_err();
        assert!(matches!(err, Error::UnexpectedIdentity { .. }), "{err}");
        assert!(err.to_string().contains("sa/db"), "{err}");
        assert!(matches!(
            e.check(&id("spiffe://cluster.local/ns/x/sa/web")),
            Err(Error::WrongNamespace { .. })
        ));
        assert!(matches!(
            e.check(&id("spiffe://other/ns/shop/sa/web")),
            Err(Error::WrongTrustDomain { .. })
        ));
    }
}
