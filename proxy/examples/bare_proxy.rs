//! The floor of issue #7: a bare hyper + rustls proxy with no routing, policies,
//! metrics or access log, in the role every proxy of `proxy/bench/compare.sh`
//! plays (TLS on the edge, HTTP/1.1 to one upstream over mesh mTLS through
//! hyper-util's keep-alive pool). The harness runs it as the peer `bare`, so a
//! run shows what meshgate-proxy costs on top of the stack it is built on.
//! Not a product: it forwards every request to the one upstream, as it is.
//!
//! Environment (all required, files in PEM): `BARE_LISTEN` (ip:port),
//! `BARE_CERT`/`BARE_KEY` (edge certificate), `BARE_UPSTREAM` (ip:port),
//! `BARE_UPSTREAM_NAME` (the name the upstream's certificate carries),
//! `BARE_MESH_CA`, `BARE_CLIENT_CERT`/`BARE_CLIENT_KEY` (the workload identity).
//! One runtime thread unless `BARE_THREADS` says more (tokio's current-thread
//! runtime for one, as meshgate-proxy; `BARE_RUNTIME=multi` takes the
//! multi-thread runtime even for one).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, TlsAcceptor, TlsConnector};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    Ok(CertificateDer::pem_file_iter(path)?.collect::<Result<_, _>>()?)
}

/// The upstream connection: mTLS over TCP, as hyper-util's pool wants it.
struct MeshConn(TokioIo<client::TlsStream<TcpStream>>);

impl Connection for MeshConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for MeshConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MeshConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connects every pooled connection to the one upstream, whatever the URI.
#[derive(Clone)]
struct MeshConnector {
    upstream: SocketAddr,
    name: ServerName<'static>,
    tls: TlsConnector,
}

impl tower::Service<Uri> for MeshConnector {
    type Response = MeshConn;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<MeshConn, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.upstream).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.name, tcp).await?;
            Ok(MeshConn(TokioIo::new(tls)))
        })
    }
}

async fn run() -> Result<(), Error> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            certs(&env("BARE_CERT")?)?,
            PrivateKeyDer::from_pem_file(env("BARE_KEY")?)?,
        )?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(server));

    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs(&env("BARE_MESH_CA")?)?);
    let mut client_tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            certs(&env("BARE_CLIENT_CERT")?)?,
            PrivateKeyDer::from_pem_file(env("BARE_CLIENT_KEY")?)?,
        )?;
    client_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = MeshConnector {
        upstream: env("BARE_UPSTREAM")?.parse()?,
        name: ServerName::try_from(env("BARE_UPSTREAM_NAME")?)?,
        tls: TlsConnector::from(Arc::new(client_tls)),
    };
    let client: Client<MeshConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);

    let listener = TcpListener::bind(env("BARE_LISTEN")?.parse::<SocketAddr>()?).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (acceptor, client) = (acceptor.clone(), client.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    // A concrete error type: hyper's bound on the service error
                    // is not met by a boxed trait object here.
                    let uri = Uri::try_from(format!("http://upstream{path}"));
                    *req.uri_mut() = uri.map_err(std::io::Error::other)?;
                    *req.version_mut() = hyper::Version::HTTP_11;
                    client.request(req).await.map_err(std::io::Error::other)
                }
            });
            let io = TokioIo::new(tls);
            let _ = if h2 {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
            };
        });
    }
}

fn main() {
    let threads = std::env::var("BARE_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1usize);
    let multi = std::env::var("BARE_RUNTIME").is_ok_and(|r| r == "multi");
    let mut builder = if threads <= 1 && !multi {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let result = builder.enable_all().build().map_err(Error::from);
    if let Err(e) = result.and_then(|rt| rt.block_on(run())) {
        eprintln!("bare_proxy: {e}");
        std::process::exit(1);
    }
}
