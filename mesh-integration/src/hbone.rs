//! HBONE, as ztunnel speaks it: mTLS to the pod's port 15008 with ALPN `h2`,
//! then an HTTP/2 `CONNECT` whose authority is `<podIP>:<targetPort>`; the
//! application's bytes flow inside the CONNECT stream.
//!
//! One HTTP/2 connection carries one tunnel here (ztunnel multiplexes several);
//! the proxy's connection pool keeps the tunnels, so this costs one handshake
//! per pooled upstream connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use tokio::net::TcpStream;

use crate::client::tls_connect;
use crate::Error;

/// ztunnel's inbound HBONE port.
pub const HBONE_PORT: u16 = 15008;

/// Opens a tunnel to `target` through the HBONE endpoint at `hbone`, with a
/// client config made by [`crate::mesh_client_config`] with [`crate::Alpn::Hbone`].
pub async fn connect(
    config: Arc<ClientConfig>,
    hbone: SocketAddr,
    target: SocketAddr,
) -> Result<Upgraded, Error> {
    let tcp = TcpStream::connect(hbone)
        .await
        .map_err(|e| Error::Hbone(format!("connecting to {hbone}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    // SNI is off for HBONE configs; the name is only needed by the API.
    let tls = tls_connect(config, "hbone.invalid", tcp).await?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(Error::Hbone(format!("{hbone} did not agree to h2")));
    }
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| Error::Hbone(format!("HTTP/2 handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HBONE connection ended");
        }
    });
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| Error::Hbone(format!("CONNECT request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Error::Hbone(format!("CONNECT {target}: {e}")))?;
    if response.status() != StatusCode::OK {
        return Err(Error::Hbone(format!(
            "CONNECT {target}: status {}",
            response.status()
        )));
    }
    hyper::upgrade::on(response)
        .await
        .map_err(|e| Error::Hbone(format!("CONNECT {target}: {e}")))
}
