//! The upstream connector of the pooled clients: plain TCP for endpoints
//! outside the mesh, and for mesh endpoints mTLS with the workload identity —
//! straight to the pod's sidecar, or through an HBONE tunnel to ztunnel.
//!
//! The pools are keyed by endpoint address; the connector looks the address up
//! in the mesh targets of the current snapshot. Client configs read the
//! identity channel at every handshake, so a rotated certificate is used by the
//! next new connection while pooled connections live on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::upgrade::Upgraded;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use meshgate_mesh::{hbone, mesh_client_config, tls_connect, Alpn, IdentityWatch};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::mesh::{MeshTarget, MeshTargets};
use crate::pools::{OpenConnection, PoolRegistry};
use crate::Error;

/// How long connecting (TCP and handshakes) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's mesh identity, if it has one.
#[derive(Clone, Debug)]
pub struct MeshRuntime {
    /// The workload identity; `None` when no identity source is configured.
    pub identity: Option<IdentityWatch>,
    /// ztunnel's HBONE port (15008; tests use another).
    pub hbone_port: u16,
}

impl Default for MeshRuntime {
    fn default() -> Self {
        MeshRuntime {
            identity: None,
            hbone_port: hbone::HBONE_PORT,
        }
    }
}

/// A connection to an upstream, counted in its backend's pool series while open.
pub struct UpstreamStream {
    io: Io,
    _open: Option<OpenConnection>,
}

enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
    Tunnel(Upgraded),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match &self.io {
            Io::Plain(s) => s.connected(),
            _ => Connected::new(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().io {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Io::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Io::Tunnel($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl Read for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl Write for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// The connector of one pooled client (HTTP/1.1 or HTTP/2 upstreams).
#[derive(Clone)]
pub struct UpstreamConnector {
    plain: HttpConnector,
    targets: Arc<ArcSwap<MeshTargets>>,
    mesh: MeshRuntime,
    h2: bool,
    pools: Arc<PoolRegistry>,
}

impl UpstreamConnector {
    pub fn new(
        targets: Arc<ArcSwap<MeshTargets>>,
        mesh: MeshRuntime,
        h2: bool,
        pools: Arc<PoolRegistry>,
    ) -> Self {
        let mut plain = HttpConnector::new();
        plain.set_connect_timeout(Some(CONNECT_TIMEOUT));
        plain.set_nodelay(true);
        UpstreamConnector {
            plain,
            targets,
            mesh,
            h2,
            pools,
        }
    }
}

impl UpstreamConnector {
    /// A connection of its own to `addr` (upgrade requests).
    pub async fn connect_addr(&self, addr: SocketAddr) -> Result<UpstreamStream, Error> {
        let uri =
            Uri::try_from(format!("http://{addr}/")).map_err(|e| Error::Io(io::Error::other(e)))?;
        tower::ServiceExt::oneshot(self.clone(), uri).await
    }
}

impl tower::Service<Uri> for UpstreamConnector {
    type Response = UpstreamStream;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        tower::Service::<Uri>::poll_ready(&mut self.plain, cx)
            .map_err(|e| Error::Io(io::Error::other(e)))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let addr = endpoint_addr(&uri);
        let target = addr.and_then(|a| self.targets.load().get(&a).cloned());
        let stats = addr.and_then(|a| self.pools.for_addr(&a));
        let connect: Pin<Box<dyn Future<Output = Result<Io, Error>> + Send>> = match (addr, target)
        {
            (Some(addr), Some(target)) => {
                let mesh = self.mesh.clone();
                let h2 = self.h2;
                Box::pin(async move {
                    tokio::time::timeout(CONNECT_TIMEOUT, connect_mesh(addr, &target, &mesh, h2))
                        .await
                        .map_err(|_| {
                            Error::Io(io::Error::other(format!("connecting to {addr} timed out")))
                        })?
                })
            }
            _ => {
                let call = tower::Service::<Uri>::call(&mut self.plain, uri);
                Box::pin(async move {
                    call.await
                        .map(Io::Plain)
                        .map_err(|e| Error::Io(io::Error::other(e)))
                })
            }
        };
        Box::pin(async move {
            match connect.await {
                Ok(io) => Ok(UpstreamStream {
                    io,
                    _open: stats.map(OpenConnection::new),
                }),
                Err(e) => {
                    if let Some(stats) = stats {
                        stats.connect_failures.fetch_add(1, Relaxed);
                    }
                    Err(e)
                }
            }
        })
    }
}

async fn connect_mesh(
    addr: SocketAddr,
    target: &MeshTarget,
    mesh: &MeshRuntime,
    h2: bool,
) -> Result<Io, Error> {
    let identity = mesh
        .identity
        .clone()
        .ok_or(Error::Mesh(meshgate_mesh::Error::NoIdentity))?;
    if identity.borrow().is_none() {
        return Err(Error::Mesh(meshgate_mesh::Error::NoIdentity));
    }
    let (alpn, slot) = match (target.hbone, h2) {
        (true, _) => (Alpn::Hbone, 2),
        (false, true) => (Alpn::H2, 1),
        (false, false) => (Alpn::Http11, 0),
    };
    let config = match target.configs[slot].get() {
        Some(config) => config.clone(),
        None => {
            let config = Arc::new(mesh_client_config(identity, target.expected.clone(), alpn)?);
            target.configs[slot].get_or_init(|| config).clone()
        }
    };
    if target.hbone {
        let hbone_addr = SocketAddr::new(addr.ip(), mesh.hbone_port);
        let tunnel = hbone::connect(config, hbone_addr, addr).await?;
        return Ok(Io::Tunnel(tunnel));
    }
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let tls = tls_connect(config, &target.sni, tcp).await?;
    Ok(Io::Tls(Box::new(TokioIo::new(tls))))
}

/// The endpoint address an upstream request URI names (`http://ip:port/...`):
/// routing resolves backends to addresses before requests reach the pools.
pub fn endpoint_addr(uri: &Uri) -> Option<SocketAddr> {
    uri.authority().and_then(|a| a.as_str().parse().ok())
}

/// Why an upstream request got no response. The sources are kept, so the
/// chain can be searched (client body failures, mesh identity refusals).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting to the endpoint (TCP, TLS, HBONE) failed.
    #[error("connecting: {0}")]
    Connect(#[source] Error),
    /// The HTTP handshake with the endpoint failed.
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
    /// The request failed on its connection.
    #[error(transparent)]
    Request(hyper::Error),
    /// The request URI named no endpoint address.
    #[error("the upstream request names no endpoint address")]
    NoEndpoint,
}

impl UpstreamError {
    /// Whether no connection could be made (nothing was sent).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Handshake(_) | UpstreamError::NoEndpoint => {
                true
            }
            UpstreamError::Request(_) => false,
        }
    }
}

/// The mesh error behind a failed upstream request, if that is why it failed.
pub fn mesh_identity_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a meshgate_mesh::Error> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(Error::Mesh(mesh)) = err.downcast_ref::<Error>() {
            return mesh.is_identity().then_some(mesh);
        }
        current = err.source();
    }
    None
}
