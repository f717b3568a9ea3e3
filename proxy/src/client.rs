//! A small HTTP/HTTPS client over real sockets, for `demo --check` and the tests.
//! Each call opens its own connection, so the TLS details (SNI, ALPN, the
//! certificate presented) of that connection can be reported.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::Error;

/// How long one request may take in total.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// HTTPS only: the leaf certificate the server presented.
    pub peer_certificate: Option<CertificateDer<'static>>,
    /// HTTPS only: the ALPN protocol agreed.
    pub alpn: Option<Vec<u8>>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Result<serde_json::Value, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Client(format!("response is not JSON: {e}")))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// TLS settings of a request.
#[derive(Clone, Debug)]
pub struct Tls {
    /// SNI, and the name the certificate is verified against.
    pub server_name: String,
    /// Trusted roots (the servers here use self-signed certificates).
    pub roots: Vec<CertificateDer<'static>>,
    /// ALPN protocols offered, e.g. `h2` and `http/1.1`.
    pub alpn: Vec<Vec<u8>>,
}

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::Client(format!("{what}: {e}"))
}

/// A GET with a `Host` header, over plain HTTP/1.1.
pub async fn get(addr: SocketAddr, host: &str, path_and_query: &str) -> Result<Reply, Error> {
    let request = Request::get(path_and_query)
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .map_err(|e| err("building request")(&e))?;
    send(addr, request, None).await
}

/// Sends `request` over a new connection to `addr`: plain HTTP/1.1, or TLS with
/// HTTP/2 when the server agrees to `h2` by ALPN and HTTP/1.1 otherwise.
pub async fn send(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
    tls: Option<&Tls>,
) -> Result<Reply, Error> {
    tokio::time::timeout(TIMEOUT, send_inner(addr, request, tls))
        .await
        .map_err(|_| Error::Client(format!("request to {addr} timed out")))?
}

async fn send_inner(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
    tls: Option<&Tls>,
) -> Result<Reply, Error> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| err("connect")(&e))?;
    let Some(tls) = tls else {
        return exchange(TokioIo::new(tcp), request, false, None, None).await;
    };
    let mut roots = rustls::RootCertStore::empty();
    for root in &tls.roots {
        roots
            .add(root.clone())
            .map_err(|e| err("root certificate")(&e))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("TLS config")(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = tls.alpn.clone();
    let name = ServerName::try_from(tls.server_name.clone()).map_err(|e| err("server name")(&e))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| err("TLS handshake")(&e))?;
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let h2 = alpn.as_deref() == Some(b"h2");
    exchange(TokioIo::new(stream), request, h2, peer, alpn).await
}

async fn exchange<I>(
    io: I,
    mut request: Request<Full<Bytes>>,
    h2: bool,
    peer_certificate: Option<CertificateDer<'static>>,
    alpn: Option<Vec<u8>>,
) -> Result<Reply, Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let response = if h2 {
        // HTTP/2 takes the authority from the URI.
        if request.uri().authority().is_none() {
            let host = request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost")
                .to_string();
            let pq = request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            *request.uri_mut() = format!("https://{host}{pq}")
                .parse()
                .map_err(|e| err("URI")(&e))?;
            request.headers_mut().remove(http::header::HOST);
        }
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| err("HTTP/2 handshake")(&e))?;
        tokio::spawn(connection);
        sender
            .send_request(request)
            .await
            .map_err(|e| err("request")(&e))?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| err("HTTP/1.1 handshake")(&e))?;
        tokio::spawn(connection);
        sender
            .send_request(request)
            .await
            .map_err(|e| err("request")(&e))?
    };
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| err("response body")(&e))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
        peer_certificate,
        alpn,
    })
}
