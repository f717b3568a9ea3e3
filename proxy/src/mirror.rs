//! RequestMirror: a fire-and-forget copy of a share of a route's requests, sent to
//! another backend; its answer is read and dropped.

use std::time::Duration;

use bytes::Bytes;
use http::uri::Uri;
use http::{Request, Version};
use http_body_util::{BodyExt, Either, Full};

use crate::backends::{Backend, Backends, Balance, Pick};
use crate::state::State;

/// How long a mirrored request may take.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// A compiled RequestMirror filter.
#[derive(Clone, Debug)]
pub struct Mirror {
    pub backend: Backends,
    /// Share of requests mirrored, 0-100.
    pub percent: u32,
}

impl Mirror {
    pub fn new(backend: Backend, percent: u32) -> Mirror {
        Mirror {
            backend: Backends::new(vec![backend]),
            percent: percent.min(100),
        }
    }

    /// Whether this request is drawn for mirroring.
    pub fn drawn(&self) -> bool {
        self.percent >= 100 || (self.percent > 0 && fastrand::u32(0..100) < self.percent)
    }

    /// Sends a copy of the request (`parts` as forwarded, `body` kept in full) to a
    /// mirror endpoint, in the background.
    pub fn send(&self, state: &std::sync::Arc<State>, parts: &http::request::Parts, body: Bytes) {
        let Pick::Endpoint(_, endpoint) = self.backend.pick(Balance::RoundRobin, None) else {
            return;
        };
        let uri = Uri::builder()
            .scheme("http")
            .authority(endpoint.authority.clone())
            .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
            .build();
        let Ok(uri) = uri else { return };
        let mut builder = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .version(Version::HTTP_11);
        if let Some(headers) = builder.headers_mut() {
            *headers = parts.headers.clone();
        }
        let Ok(request) = builder.body(Either::Right(Full::new(body))) else {
            return;
        };
        let state = state.clone();
        let target = endpoint.addr;
        tokio::spawn(async move {
            let call = async {
                let response = state.upstream.request(request).await?;
                // Drain the answer so the connection can be reused.
                let _ = response.into_body().collect().await;
                Ok::<_, hyper_util::client::legacy::Error>(())
            };
            match tokio::time::timeout(MIRROR_TIMEOUT, call).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%target, error = %e, "mirror request failed"),
                Err(_) => tracing::debug!(%target, "mirror request timed out"),
            }
        });
    }
}
