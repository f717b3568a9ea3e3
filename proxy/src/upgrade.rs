//! HTTP/1.1 protocol upgrades (WebSocket): the upgrade request is forwarded on a
//! connection of its own and, once the upstream answers 101, the two upgraded
//! connections are spliced together in both directions.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::proxy::ProxyBody;
use crate::state::UpstreamBody;
use crate::upstream::UpstreamConnector;

/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `Upgrade` value of an HTTP/1.1 upgrade request, if it is one.
pub fn requested(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Why an upgrade could not be forwarded.
#[derive(Debug)]
pub enum Failure {
    Connect(String),
    Connection(String),
}

/// Sends `request` to `upstream` on a new connection. A 101 answer is returned to
/// the client as is and the connections are spliced once both sides switched.
pub async fn forward(
    mut request: Request<UpstreamBody>,
    client: OnUpgrade,
    upstream: SocketAddr,
    connector: &UpstreamConnector,
) -> Result<Response<ProxyBody>, Failure> {
    // Plain TCP, or mesh mTLS / HBONE for mesh endpoints.
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect_addr(upstream))
        .await
        .map_err(|_| Failure::Connect("connect timeout".into()))?
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(stream)
        .await
        .map_err(|e| Failure::Connection(e.to_string()))?;
    tokio::spawn(connection.with_upgrades());
    // Origin form on a connection of our own.
    if let Some(pq) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = pq.as_str().parse().unwrap_or_default();
    }
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::Connection(e.to_string()))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_side = hyper::upgrade::on(&mut response);
        let upstream_addr = upstream;
        tokio::spawn(async move {
            match tokio::join!(client, upstream_side) {
                (Ok(client), Ok(upstream)) => {
                    let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
                    match tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        Ok((up, down)) => {
                            tracing::debug!(%upstream_addr, up, down, "upgraded connection closed")
                        }
                        Err(e) => {
                            tracing::debug!(%upstream_addr, error = %e, "upgraded connection ended")
                        }
                    }
                }
                (c, u) => {
                    tracing::debug!(
                        client = c.is_ok(),
                        upstream = u.is_ok(),
                        "upgrade not completed"
                    )
                }
            }
        });
    } else {
        crate::proxy::strip_hop_by_hop(response.headers_mut());
    }
    Ok(response.map(|body| Either::Left(body.into())))
}
