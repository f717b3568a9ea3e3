//! Request size limits: header count and size (431), body size (413). A body
//! limit is enforced while the body streams, never by buffering it: the body
//! fails once it passes the limit, the upstream request is aborted, and the
//! proxy answers 413 instead of the resulting 502.
//!
//! The same wrapper guards every client request body against stalls (no data
//! for `idleTimeout`: a slowloris body, answered 408) and marks the client's
//! own body errors (e.g. an invalid chunk size, answered 400), so that neither
//! is reported as an upstream failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Compiled `requestLimits`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLimits {
    pub max_body_bytes: Option<u64>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
}

/// Why a request was refused before it was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// 413: Content-Length above the body limit.
    Body,
    /// 431: too many header fields, or too many header bytes.
    Headers,
}

impl RequestLimits {
    pub fn compile(spec: &meshgate_crds::policy::RequestLimits) -> RequestLimits {
        RequestLimits {
            max_body_bytes: spec.max_body_bytes.and_then(|n| u64::try_from(n).ok()),
            max_header_bytes: spec.max_header_bytes.and_then(|n| usize::try_from(n).ok()),
            max_headers: spec.max_headers.and_then(|n| usize::try_from(n).ok()),
        }
    }

    /// Checks what is known before the body: headers, and a declared length.
    /// Header bytes are counted as HTTP/1.1 would send them (`name: value\r\n`).
    pub fn check_head(
        &self,
        headers: &HeaderMap,
        declared: Option<u64>,
    ) -> Result<(), LimitExceeded> {
        if let Some(max) = self.max_headers {
            if headers.len() > max {
                return Err(LimitExceeded::Headers);
            }
        }
        if let Some(max) = self.max_header_bytes {
            let bytes: usize = headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum();
            if bytes > max {
                return Err(LimitExceeded::Headers);
            }
        }
        match (self.max_body_bytes, declared) {
            (Some(max), Some(len)) if len > max => Err(LimitExceeded::Body),
            _ => Ok(()),
        }
    }
}

/// Set when a body passed its limit; read after the upstream call to turn its
/// failure into a 413.
#[derive(Debug, Clone, Default)]
pub struct Tripped(Arc<AtomicBool>);

impl Tripped {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The error a body yields once past its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The error a client body yields after no data arrived for the stall timeout.
#[derive(Debug, thiserror::Error)]
#[error("no request body data from the client for {0:?}")]
pub struct BodyStalled(pub Duration);

/// An error of the client's body itself (malformed chunked encoding, the client
/// went away), as opposed to a failure of the upstream.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(pub BoxError);

/// Why a client request body failed, found in an error's source chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// No data for the stall timeout (408).
    Stalled,
    /// The client sent a malformed body (400).
    Client,
}

impl BodyFailure {
    /// Finds a client body failure in `error` or its sources.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<BodyFailure> {
        let mut current = Some(error);
        while let Some(e) = current {
            if e.is::<BodyStalled>() {
                return Some(BodyFailure::Stalled);
            }
            if e.is::<ClientBodyError>() {
                return Some(BodyFailure::Client);
            }
            current = e.source();
        }
        None
    }
}

/// A request body with an optional size limit and an optional stall timeout.
pub struct LimitedBody<B> {
    inner: B,
    limit: Option<(u64, Tripped)>,
    seen: u64,
    stall: Option<Duration>,
    /// Armed while the body waits for data; allocated only for a body that waits.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl<B> LimitedBody<B> {
    pub fn unlimited(inner: B) -> LimitedBody<B> {
        LimitedBody {
            inner,
            limit: None,
            seen: 0,
            stall: None,
            sleep: None,
            waiting: false,
        }
    }

    /// A client body that fails with [`BodyStalled`] when no data arrives for
    /// `stall`, and whose own errors become [`ClientBodyError`].
    pub fn client(inner: B, stall: Duration) -> LimitedBody<B> {
        LimitedBody {
            stall: Some(stall),
            ..LimitedBody::unlimited(inner)
        }
    }

    /// Limits the body to `max` bytes; the returned flag tells whether it tripped.
    pub fn limit(&mut self, max: u64) -> Tripped {
        let tripped = Tripped::default();
        self.limit = Some((max, tripped.clone()));
        tripped
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(stall) = this.stall {
            if polled.is_pending() {
                if !this.waiting {
                    // A new wait for data starts its stall period.
                    this.waiting = true;
                    let deadline = tokio::time::Instant::now() + stall;
                    match &mut this.sleep {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                if let Some(sleep) = &mut this.sleep {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(Box::new(BodyStalled(stall)))));
                    }
                }
            } else {
                this.waiting = false;
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some((max, tripped)), Some(data)) = (&this.limit, frame.data_ref()) {
                    this.seen += data.len() as u64;
                    if this.seen > *max {
                        tripped.0.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*max)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if this.stall.is_some() => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e.into())))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::{BodyExt, StreamBody};

    #[test]
    fn head_limits() {
        let limits = RequestLimits {
            max_body_bytes: Some(10),
            max_header_bytes: Some(20),
            max_headers: Some(2),
        };
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("1"));
        assert_eq!(limits.check_head(&h, Some(10)), Ok(()));
        assert_eq!(limits.check_head(&h, Some(11)), Err(LimitExceeded::Body));
        h.insert("b", HeaderValue::from_static("0123456789"));
        // a: 1 (6) + b: 0123456789 (15) = 21 bytes
        assert_eq!(limits.check_head(&h, None), Err(LimitExceeded::Headers));
        h.insert("b", HeaderValue::from_static("2"));
        h.insert("c", HeaderValue::from_static("3"));
        assert_eq!(limits.check_head(&h, None), Err(LimitExceeded::Headers));
    }

    #[tokio::test]
    async fn streamed_body_trips_past_the_limit() {
        let chunks = vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"12345"))),
            Ok(Frame::data(Bytes::from_static(b"67890"))),
            Ok(Frame::data(Bytes::from_static(b"X"))),
        ];
        let mut body = LimitedBody::unlimited(StreamBody::new(futures::stream::iter(chunks)));
        let tripped = body.limit(10);
        let Err(err) = body.collect().await else {
            panic!("the 11th byte must fail the body");
        };
        assert!(err.to_string().contains("larger than 10"));
        assert!(tripped.is_set());

        let chunks = vec![Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(
            b"1234567890",
        )))];
        let mut body = LimitedBody::unlimited(StreamBody::new(futures::stream::iter(chunks)));
        let tripped = body.limit(10);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!tripped.is_set());
    }
}
