//! Client of the Istio CA: `istio.v1.auth.IstioCertificateService/CreateCertificate`
//! (istio/api `security/v1alpha1/ca.proto`) over gRPC + TLS, authenticated with
//! a projected service-account token (audience `istio-ca`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tonic::metadata::MetadataValue;

use crate::{certs, csr, Error, SpiffeId};

/// `IstioCertificateRequest`. Field 4 (`metadata`, for impersonation by
/// trusted callers) is not used by workloads and is left out.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    #[prost(string, tag = "1")]
    pub csr: String,
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
}

/// `IstioCertificateResponse`: the chain, leaf first and root last.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// Where the CA is and how to talk to it.
#[derive(Clone, Debug)]
pub struct CaConfig {
    /// `host:port` to connect to, e.g. `istiod.istio-system.svc:15012`.
    pub address: String,
    /// Name the CA's serving certificate must carry (istiod: `istiod.istio-system.svc`).
    pub server_name: String,
    /// PEM roots the CA's serving certificate chains to (ConfigMap `istio-ca-root-cert`).
    pub root_pem: String,
    /// Projected service-account token file; re-read on every request because
    /// the kubelet rotates it.
    pub token_path: PathBuf,
    /// Istio cluster id sent as the `clusterid` header.
    pub cluster_id: String,
    /// Requested certificate lifetime.
    pub ttl: Duration,
}

/// A workload certificate issued by the CA.
pub struct WorkloadCertificate {
    pub identity: SpiffeId,
    /// Leaf first, then intermediates; the root is kept out of the chain we present.
    pub chain: Vec<CertificateDer<'static>>,
    /// The mesh root the CA returned last in the chain.
    pub root: CertificateDer<'static>,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    pub not_after_unix: i64,
}

/// Talks to one Istio CA.
pub struct IstioCaClient {
    config: CaConfig,
    tls: Arc<rustls::ClientConfig>,
}

impl IstioCaClient {
    pub fn new(config: CaConfig) -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs::parse_pem_chain(&config.root_pem)? {
            roots
                .add(cert)
                .map_err(|e| Error::Certificate(format!("CA root: {e}")))?;
        }
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(IstioCaClient {
            config,
            tls: Arc::new(tls),
        })
    }

    /// Generates a key, asks the CA to certify `identity`, and checks the answer
    /// really is for that identity.
    pub async fn issue(&self, identity: &SpiffeId) -> Result<WorkloadCertificate, Error> {
        let csr = csr::generate(identity)?;
        let chain_pem = self.create_certificate(&csr.csr_pem).await?;
        let mut chain = Vec::with_capacity(chain_pem.len());
        for pem in &chain_pem {
            chain.extend(certs::parse_pem_chain(pem)?);
        }
        if chain.len() < 2 {
            return Err(Error::Ca(format!(
                "CA returned {} certificate(s); expected leaf and root",
                chain.len()
            )));
        }
        let got = certs::spiffe_id(&chain[0])?;
        if &got != identity {
            return Err(Error::Ca(format!("CA issued {got}, asked for {identity}")));
        }
        let not_after_unix = certs::not_after_unix(&chain[0])?;
        let root = chain.pop().ok_or_else(|| Error::Ca("empty chain".into()))?;
        Ok(WorkloadCertificate {
            identity: got,
            chain,
            root,
            key_pem: csr.key_pem,
            not_after_unix,
        })
    }

    /// One `CreateCertificate` call; returns the PEM chain as the CA sent it.
    pub async fn create_certificate(&self, csr_pem: &str) -> Result<Vec<String>, Error> {
        let token = std::fs::read_to_string(&self.config.token_path).map_err(|e| {
            Error::Ca(format!(
                "reading token {}: {e}",
                self.config.token_path.display()
            ))
        })?;
        let channel = self.connect().await?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Error::Ca(format!("CA not ready: {e}")))?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_string(),
            validity_duration: self.config.ttl.as_secs() as i64,
        });
        let bearer = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| Error::Ca("token is not a valid header value".into()))?;
        request.metadata_mut().insert("authorization", bearer);
        let cluster = MetadataValue::try_from(self.config.cluster_id.as_str())
            .map_err(|_| Error::Ca("cluster id is not a valid header value".into()))?;
        request.metadata_mut().insert("clusterid", cluster);
        let codec =
            tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
        let response = grpc
            .unary(
                request,
                PathAndQuery::from_static(CREATE_CERTIFICATE),
                codec,
            )
            .await
            .map_err(|status| {
                Error::Ca(format!(
                    "CreateCertificate: {:?}: {}",
                    status.code(),
                    status.message()
                ))
            })?;
        Ok(response.into_inner().cert_chain)
    }

    /// A gRPC channel over our own rustls connection, so the CA's certificate is
    /// checked against the mesh root and the expected name, whatever address we dial.
    async fn connect(&self) -> Result<tonic::transport::Channel, Error> {
        let server_name = ServerName::try_from(self.config.server_name.clone())
            .map_err(|_| Error::Ca(format!("bad server name {}", self.config.server_name)))?;
        let address = self.config.address.clone();
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let make = tower::service_fn(move |_: http::Uri| {
            let address = address.clone();
            let server_name = server_name.clone();
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(&address).await?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        // The URI only names the authority for HTTP/2; the connector decides where we connect.
        tonic::transport::Endpoint::from_shared(format!("https://{}", self.config.server_name))
            .map_err(|e| Error::Ca(format!("endpoint: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .connect_with_connector(make)
            .await
            .map_err(|e| Error::Ca(format!("connecting to {}: {e}", self.config.address)))
    }
}
