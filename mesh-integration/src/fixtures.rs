//! Test and demo fixtures (feature `test-fixtures`): a local mesh CA made with
//! rcgen, and Istio-like inbound servers on 127.0.0.1 —
//!
//! - [`SidecarInbound`]: what an istio-proxy sidecar in STRICT mode accepts: TLS
//!   that requires a client certificate chained to the mesh root with a SPIFFE
//!   ID in the trust domain; it records each peer's SPIFFE ID, ALPN and SNI, and
//!   answers HTTP (JSON echo by default);
//! - [`HboneInbound`]: what ztunnel accepts on 15008: mTLS with ALPN h2, then
//!   HTTP/2 CONNECT to `<ip>:<port>`, bridged to that address.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::identity::{IdentityWatch, WorkloadIdentity};
use crate::{certs, crypto_provider, Error, SpiffeId};

fn rc(e: rcgen::Error) -> Error {
    Error::Certificate(format!("rcgen: {e}"))
}

/// When a certificate made by [`LocalCa`] is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// 2024-01-01 to 2099-01-01.
    Current,
    /// 2001-01-01 to 2002-01-01.
    Expired,
}

/// A certificate issued by [`LocalCa`].
pub struct Issued {
    pub cert: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Issued {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A mesh CA on the spot: a self-signed root issuing Istio-shaped workload
/// certificates (empty subject, one URI SAN, server and client auth).
pub struct LocalCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    root_pem: String,
}

impl LocalCa {
    pub fn new(trust_domain: &str) -> Result<LocalCa, Error> {
        let key = KeyPair::generate().map_err(rc)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "meshgate local mesh CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params.self_signed(&key).map_err(rc)?;
        Ok(LocalCa {
            trust_domain: trust_domain.to_string(),
            issuer: Issuer::new(params, key),
            root: cert.der().clone(),
            root_pem: cert.pem(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn root(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A workload certificate for `id` (which may be of another trust domain:
    /// tests use that to make impostors).
    pub fn issue(&self, id: &SpiffeId, validity: Validity) -> Result<Issued, Error> {
        let key = KeyPair::generate().map_err(rc)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = id.to_string().try_into().map_err(rc)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = match validity {
            Validity::Current => (
                rcgen::date_time_ymd(2024, 1, 1),
                rcgen::date_time_ymd(2099, 1, 1),
            ),
            Validity::Expired => (
                rcgen::date_time_ymd(2001, 1, 1),
                rcgen::date_time_ymd(2002, 1, 1),
            ),
        };
        let cert = params.signed_by(&key, &self.issuer).map_err(rc)?;
        Ok(Issued {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }

    /// A current identity for `id` trusting this CA's root only.
    pub fn identity(&self, id: &SpiffeId) -> Result<WorkloadIdentity, Error> {
        self.identity_with(id, Validity::Current, &[self.root()])
    }

    /// An identity for `id` with the given validity and trust bundle.
    pub fn identity_with(
        &self,
        id: &SpiffeId,
        validity: Validity,
        bundle: &[CertificateDer<'static>],
    ) -> Result<WorkloadIdentity, Error> {
        let issued = self.issue(id, validity)?;
        WorkloadIdentity::new(vec![issued.cert.clone()], issued.key(), bundle.to_vec())
    }
}

/// What an inbound fixture saw of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's SPIFFE ID.
    pub id: Option<SpiffeId>,
    /// The ALPN protocol agreed.
    pub alpn: Option<String>,
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The client's leaf certificate.
    pub cert: Option<CertificateDer<'static>>,
}

/// Answers a request made over an accepted connection.
pub type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
            PeerInfo,
        ) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server config requiring a client certificate chained to the bundle of
/// the current identity, presenting that identity.
fn server_config(identity: &IdentityWatch, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, Error> {
    let current = identity.borrow().clone().ok_or(Error::NoIdentity)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(current.roots.clone(), crypto_provider())
            .build()
            .map_err(|e| Error::Handshake(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Handshake(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(FixedCert(current.key.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Accepts mTLS, checks the client's trust domain and reports what it saw.
async fn accept_mesh(
    tcp: TcpStream,
    identity: &IdentityWatch,
    alpn: &[&[u8]],
    trust_domain: &str,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, PeerInfo), Error> {
    let config = server_config(identity, alpn)?;
    let tls = tokio_rustls::TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(|e| Error::Handshake(e.to_string()))?;
    let (_, conn) = tls.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let id = cert.as_ref().map(certs::spiffe_id).transpose()?;
    let info = PeerInfo {
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        sni: conn.server_name().map(str::to_string),
        id,
        cert,
    };
    match &info.id {
        Some(id) if id.trust_domain() == trust_domain => Ok((tls, info)),
        Some(id) => Err(Error::WrongTrustDomain {
            got: id.clone(),
            expected: trust_domain.to_string(),
        }),
        None => Err(Error::PeerVerification("no client certificate".into())),
    }
}

/// The inbound side of an Istio sidecar in STRICT mode.
pub struct SidecarInbound {
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<PeerInfo>>>,
    rejected: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SidecarInbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarInbound")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for SidecarInbound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The ALPN values Envoy's inbound listener accepts.
const SIDECAR_ALPN: [&[u8]; 5] = [b"istio-http/1.1", b"istio-h2", b"istio", b"h2", b"http/1.1"];

impl SidecarInbound {
    /// Serves the JSON echo on a free port of 127.0.0.1, presenting `identity`.
    pub async fn start(identity: IdentityWatch, trust_domain: &str) -> Result<Self, Error> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self::start_with(identity, trust_domain, addr, Arc::new(echo_handler)).await
    }

    /// Serves `handler` on `addr`.
    pub async fn start_with(
        identity: IdentityWatch,
        trust_domain: &str,
        addr: SocketAddr,
        handler: Handler,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Io(format!("binding {addr}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Io(e.to_string()))?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let rejected = Arc::new(AtomicU64::new(0));
        let (p, r, td) = (peers.clone(), rejected.clone(), trust_domain.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (identity, peers, rejected, td, handler) = (
                    identity.clone(),
                    p.clone(),
                    r.clone(),
                    td.clone(),
                    handler.clone(),
                );
                tokio::spawn(async move {
                    let (tls, info) = match accept_mesh(tcp, &identity, &SIDECAR_ALPN, &td).await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            rejected.fetch_add(1, Relaxed);
                            tracing::debug!(error = %e, "sidecar fixture refused a connection");
                            return;
                        }
                    };
                    if let Ok(mut peers) = peers.lock() {
                        peers.push(info.clone());
                    }
                    let service = service_fn(move |request| {
                        let (handler, info) = (handler.clone(), info.clone());
                        async move { Ok::<_, Infallible>(handler(request, info).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(SidecarInbound {
            addr,
            peers,
            rejected,
            task,
        })
    }

    /// Every accepted connection, in order.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Connections refused (handshake failed, or a peer outside the trust domain).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Relaxed)
    }
}

/// Answers with JSON describing the request and the peer; the peer's SPIFFE ID
/// is also sent in `x-peer-spiffe-id`.
pub fn echo_handler(
    request: Request<Incoming>,
    peer: PeerInfo,
) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> {
    Box::pin(async move {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let headers: BTreeMap<String, String> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let peer_id = peer.id.as_ref().map(ToString::to_string);
        let reply = serde_json::json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
            "peer": {"spiffeId": peer_id, "alpn": peer.alpn, "sni": peer.sni},
        });
        let mut response = Response::new(Full::new(Bytes::from(reply.to_string())));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(id) = peer_id.and_then(|id| http::HeaderValue::from_str(&id).ok()) {
            response.headers_mut().insert("x-peer-spiffe-id", id);
        }
        response
    })
}

/// One CONNECT an [`HboneInbound`] accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunnel {
    pub peer: Option<SpiffeId>,
    /// The CONNECT authority, `<ip>:<port>`.
    pub authority: String,
}

/// ztunnel's inbound HBONE listener, in miniature.
pub struct HboneInbound {
    pub addr: SocketAddr,
    tunnels: Arc<Mutex<Vec<Tunnel>>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for HboneInbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneInbound")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for HboneInbound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HboneInbound {
    /// Listens on `addr` (port 0: any free port) presenting `identity`.
    pub async fn start(
        identity: IdentityWatch,
        trust_domain: &str,
        addr: SocketAddr,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Io(format!("binding {addr}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Io(e.to_string()))?;
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let (t, td) = (tunnels.clone(), trust_domain.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (identity, tunnels, td) = (identity.clone(), t.clone(), td.clone());
                tokio::spawn(async move {
                    let (tls, info) = match accept_mesh(tcp, &identity, &[b"h2"], &td).await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::debug!(error = %e, "HBONE fixture refused a connection");
                            return;
                        }
                    };
                    let service = service_fn(move |request| {
                        connect(request, info.id.clone(), tunnels.clone())
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(HboneInbound {
            addr,
            tunnels,
            task,
        })
    }

    /// Every CONNECT accepted, in order.
    pub fn tunnels(&self) -> Vec<Tunnel> {
        self.tunnels.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    response
}

async fn connect(
    mut request: Request<Incoming>,
    peer: Option<SpiffeId>,
    tunnels: Arc<Mutex<Vec<Tunnel>>>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    if request.method() != Method::CONNECT {
        return Ok(status(StatusCode::METHOD_NOT_ALLOWED));
    }
    let Some(authority) = request.uri().authority().map(|a| a.to_string()) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let Ok(target) = authority.parse::<SocketAddr>() else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return Ok(status(StatusCode::SERVICE_UNAVAILABLE));
    };
    if let Ok(mut tunnels) = tunnels.lock() {
        tunnels.push(Tunnel { peer, authority });
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let mut tunnel = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut tunnel, &mut upstream).await;
        }
    });
    Ok(status(StatusCode::OK))
}
