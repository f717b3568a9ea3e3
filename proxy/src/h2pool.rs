//! HTTP/2 upstream connections of our own: one per endpoint, every request to
//! it a stream on that connection.
//!
//! hyper-util's pool keys connections by the request URI's authority, which
//! therefore has to be the endpoint address; an HTTP/2 request would then carry
//! that address in `:authority`. Here the endpoint comes from the URI too (so
//! retries and the rest of the proxy build requests the same way for both
//! protocols), but the request leaves with `:authority` set from its `Host`
//! header — the client's host or the route's hostname rewrite — as Envoy sends
//! it and as gRPC servers and authority-routing backends expect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, Scheme};
use http::{header, Request, Response, Uri};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::h1pool::UpstreamIncoming;
use crate::state::UpstreamBody;
use crate::upstream::{endpoint_addr, UpstreamConnector, UpstreamError};

/// Keep-alive pings on idle upstream connections (as the pooled clients do).
const KEEP_ALIVE: Duration = Duration::from_secs(30);

type Sender = SendRequest<UpstreamBody>;

/// The connection to one endpoint, made on first use and again after it closes.
#[derive(Default)]
struct EndpointConn {
    current: ArcSwapOption<Sender>,
    /// Held while connecting, so concurrent requests share one new connection.
    connecting: tokio::sync::Mutex<()>,
}

/// The HTTP/2 connections, by endpoint address.
pub struct H2Pool {
    connector: UpstreamConnector,
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointConn>>>,
}

impl H2Pool {
    /// `connector` must be the HTTP/2 one (ALPN `h2` to mesh sidecars).
    pub fn new(connector: UpstreamConnector) -> H2Pool {
        H2Pool {
            connector,
            endpoints: Mutex::default(),
        }
    }

    /// Sends `request`, whose URI names the endpoint (`http://ip:port/path`),
    /// with `:authority` from its `Host` header when it has a valid one.
    pub async fn request(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let (mut parts, body) = request.into_parts();
        let addr = endpoint_addr(&parts.uri).ok_or(UpstreamError::NoEndpoint)?;
        let authority = parts
            .headers
            .remove(header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok());
        if let Some(authority) = authority {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(authority);
            uri.path_and_query = parts.uri.path_and_query().cloned();
            if let Ok(uri) = Uri::from_parts(uri) {
                parts.uri = uri;
            }
        }
        let mut request = Request::from_parts(parts, body);
        let endpoint = self.endpoint(addr);
        // A request refused before it was sent (the connection was closing) is
        // sent once more, on a new connection if the old one is gone.
        for attempt in 0..2 {
            let (sender, reused) = self.sender(&endpoint, addr).await?;
            let mut stream = (*sender).clone();
            match stream.try_send_request(request).await {
                Ok(response) => return Ok(response.map(UpstreamIncoming::from)),
                Err(mut e) => {
                    if sender.is_closed() {
                        endpoint
                            .current
                            .compare_and_swap(&sender, None::<Arc<Sender>>);
                    }
                    match e.take_message() {
                        Some(unsent) if reused && attempt == 0 => request = unsent,
                        _ => return Err(UpstreamError::Request(e.into_error())),
                    }
                }
            }
        }
        Err(UpstreamError::NoEndpoint)
    }

    fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointConn> {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        endpoints.entry(addr).or_default().clone()
    }

    /// The endpoint's open connection, or a new one; and whether it was open before.
    async fn sender(
        &self,
        endpoint: &EndpointConn,
        addr: SocketAddr,
    ) -> Result<(Arc<Sender>, bool), UpstreamError> {
        if let Some(sender) = endpoint.current.load_full().filter(|s| !s.is_closed()) {
            return Ok((sender, true));
        }
        let _connecting = endpoint.connecting.lock().await;
        // Someone else may have connected while this request waited.
        if let Some(sender) = endpoint.current.load_full().filter(|s| !s.is_closed()) {
            return Ok((sender, true));
        }
        let io = self
            .connector
            .connect_addr(addr)
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE)
            .handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        let sender = Arc::new(sender);
        endpoint.current.store(Some(sender.clone()));
        Ok((sender, false))
    }

    /// Drops the connections of endpoints not in `keep` (they close once their
    /// streams end).
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        endpoints.retain(|addr, _| keep(addr));
    }
}
