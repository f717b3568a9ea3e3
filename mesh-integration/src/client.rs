//! The rustls client config for mesh upstreams: the workload certificate read
//! from the identity channel at each handshake, the SPIFFE verifier, Istio's
//! ALPN values, and Envoy-style SNI.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::identity::IdentityWatch;
use crate::verify::{classify, ExpectedIdentity, SpiffeVerifier};
use crate::{crypto_provider, Error};

/// The ALPN a mesh connection offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// An HTTP/1.1 upstream behind a sidecar: `istio-http/1.1, istio, http/1.1`.
    Http11,
    /// An HTTP/2 upstream behind a sidecar: `istio-h2, istio, h2`.
    H2,
    /// An HBONE tunnel to ztunnel: `h2`.
    Hbone,
}

impl Alpn {
    /// The protocols offered, most specific first. Never `istio-peer-exchange`
    /// (that is Envoy's metadata exchange, which meshgate does not speak).
    pub fn protocols(self) -> Vec<Vec<u8>> {
        let list: &[&[u8]] = match self {
            Alpn::Http11 => &[b"istio-http/1.1", b"istio", b"http/1.1"],
            Alpn::H2 => &[b"istio-h2", b"istio", b"h2"],
            Alpn::Hbone => &[b"h2"],
        };
        list.iter().map(|p| p.to_vec()).collect()
    }
}

/// The SNI Envoy sends to a sidecar: `outbound_.<port>_._.<svc>.<ns>.svc.cluster.local`.
pub fn outbound_sni(port: u16, service: &str, namespace: &str) -> String {
    format!("outbound_.{port}_._.{service}.{namespace}.svc.cluster.local")
}

/// Presents the current workload certificate; none while there is no identity
/// (the server then refuses the handshake).
#[derive(Debug)]
struct IdentityResolver(IdentityWatch);

impl ResolvesClientCert for IdentityResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().as_ref().map(|i| i.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client config for one kind of mesh upstream: TLS 1.2 or 1.3, the workload
/// certificate of `identity` (re-read at every handshake), peers verified by
/// [`SpiffeVerifier`] against `expected`, and the ALPN of `alpn`. Session
/// resumption is off, so every connection authenticates both sides afresh with
/// the current certificates.
pub fn mesh_client_config(
    identity: IdentityWatch,
    expected: ExpectedIdentity,
    alpn: Alpn,
) -> Result<ClientConfig, Error> {
    let verifier = Arc::new(SpiffeVerifier::new(identity.clone(), expected));
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Handshake(format!("TLS config: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(IdentityResolver(identity)));
    config.alpn_protocols = alpn.protocols();
    config.resumption = rustls::client::Resumption::disabled();
    if alpn == Alpn::Hbone {
        config.enable_sni = false;
    }
    Ok(config)
}

/// A TLS handshake over `tcp` whose errors say whether the peer's identity was
/// the problem ([`Error::is_identity`]).
pub async fn tls_connect(
    config: Arc<ClientConfig>,
    server_name: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, Error> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| Error::Handshake(format!("invalid server name {server_name:?}")))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => classify(tls),
                None => Error::Handshake(e.to_string()),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_and_sni_follow_istio() {
        assert_eq!(
            Alpn::Http11.protocols(),
            vec![
                b"istio-http/1.1".to_vec(),
                b"istio".to_vec(),
                b"http/1.1".to_vec()
            ]
        );
        assert_eq!(
            Alpn::H2.protocols(),
            vec![b"istio-h2".to_vec(), b"istio".to_vec(), b"h2".to_vec()]
        );
        for alpn in [Alpn::Http11, Alpn::H2, Alpn::Hbone] {
            assert!(!alpn.protocols().contains(&b"istio-peer-exchange".to_vec()));
        }
        assert_eq!(
            outbound_sni(8080, "reviews", "bookinfo"),
            "outbound_.8080_._.reviews.bookinfo.svc.cluster.local"
        );
    }
}
