//! HTTP/1.1 upstream connections of our own: per endpoint, a stack of idle
//! keep-alive connections.
//!
//! hyper-util's pooled client spawned a task for every request to hand the
//! connection back once the response body had been read, hashed its pool key
//! on checkout, drop and put, and moved a large future. That was ~15 % of a
//! proxied request's instructions (callgrind, docs/performance.md). Here the
//! response body ([`UpstreamIncoming`]) hands its connection back when it ends:
//! no task on the common path and one short lock on each side.
//!
//! A connection goes back only when its response body was read to the end.
//! A body dropped early (the client went away) drops the connection with it,
//! since its remaining bytes would otherwise be read as the next response.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};

use crate::state::UpstreamBody;
use crate::upstream::{endpoint_addr, UpstreamConnector, UpstreamError};

/// How long a connection may wait unused before it is closed (as the pooled
/// clients' `pool_idle_timeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per endpoint; more are closed when they come back.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// How often idle connections past [`IDLE_TIMEOUT`] are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Idle connections tried for one request before it gets a new connection: an
/// idle connection the upstream closed at the moment it was taken gives the
/// request back unsent.
const REUSE_TRIES: usize = 2;

type Sender = SendRequest<UpstreamBody>;

struct Idle {
    sender: Sender,
    since: Instant,
}

struct Inner {
    connector: UpstreamConnector,
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    /// Whether the sweeping task runs (started with the first idle connection).
    sweeping: AtomicBool,
}

/// The HTTP/1.1 keep-alive connections of requests, by endpoint address.
pub struct H1Pool {
    inner: Arc<Inner>,
}

impl H1Pool {
    /// `connector` must be the HTTP/1.1 one (ALPN `http/1.1` to mesh sidecars).
    pub fn new(connector: UpstreamConnector) -> H1Pool {
        H1Pool {
            inner: Arc::new(Inner {
                connector,
                idle: Mutex::default(),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `request`, whose URI names the endpoint (`http://ip:port/path`), in
    /// origin form (`/path`) on an idle connection to that endpoint or a new one.
    pub async fn request(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let (mut parts, body) = request.into_parts();
        let addr = endpoint_addr(&parts.uri).ok_or(UpstreamError::NoEndpoint)?;
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
                parts.headers.insert(header::HOST, host);
            }
        }
        parts.uri = match parts.uri.path_and_query() {
            Some(path) if path.as_str() != "" => Uri::from(path.clone()),
            _ => Uri::from_static("/"),
        };
        let mut request = Request::from_parts(parts, body);
        let mut reuse = REUSE_TRIES;
        loop {
            let idle = if reuse > 0 {
                self.inner.checkout(addr)
            } else {
                None
            };
            let reused = idle.is_some();
            let mut sender = match idle {
                Some(sender) => sender,
                None => self.connect(addr).await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let inner = self.inner.clone();
                    return Ok(response.map(move |body| UpstreamIncoming {
                        body,
                        reuse: Some(Reuse {
                            pool: inner,
                            addr,
                            sender,
                        }),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        reuse -= 1;
                        request = unsent;
                    }
                    _ => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, UpstreamError> {
        let io = self
            .inner
            .connector
            .connect_addr(addr)
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    /// Closes the idle connections of endpoints not in `keep`.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        let removed: Vec<Vec<Idle>> = {
            let mut idle = self.inner.lock();
            let gone: Vec<SocketAddr> = idle.keys().filter(|a| !keep(a)).copied().collect();
            gone.iter().filter_map(|a| idle.remove(a)).collect()
        };
        drop(removed);
    }

    /// Idle connections now, over all endpoints.
    pub fn idle_count(&self) -> usize {
        self.inner.lock().values().map(Vec::len).sum()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection to `addr` that can take a request.
    fn checkout(&self, addr: SocketAddr) -> Option<Sender> {
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.lock();
            let list = idle.get_mut(&addr)?;
            loop {
                match list.pop() {
                    Some(entry)
                        if entry.sender.is_ready() && entry.since.elapsed() < IDLE_TIMEOUT =>
                    {
                        break Some(entry.sender)
                    }
                    Some(entry) => stale.push(entry),
                    None => break None,
                }
            }
        };
        // Closed outside the lock.
        drop(stale);
        found
    }

    /// Takes `sender` back once its connection can carry the next request.
    fn give_back(self: Arc<Self>, addr: SocketAddr, mut sender: Sender) {
        if sender.is_ready() {
            self.put(addr, sender);
        } else if !sender.is_closed() {
            // Still busy, e.g. sending a request body the upstream answered
            // early: it comes back when done.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if sender.ready().await.is_ok() {
                        self.put(addr, sender);
                    }
                });
            }
        }
    }

    fn put(self: Arc<Self>, addr: SocketAddr, sender: Sender) {
        let refused = {
            let mut idle = self.lock();
            let list = idle.entry(addr).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(Idle {
                    sender,
                    since: Instant::now(),
                });
                None
            } else {
                Some(sender)
            }
        };
        drop(refused);
        if !self.sweeping.load(Ordering::Relaxed) && !self.sweeping.swap(true, Ordering::Relaxed) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(sweep(Arc::downgrade(&self)))),
                Err(_) => self.sweeping.store(false, Ordering::Relaxed),
            }
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] or closed by the upstream.
    fn expire(&self) {
        let mut expired = Vec::new();
        {
            let mut idle = self.lock();
            idle.retain(|_, list| {
                let (keep, old): (Vec<Idle>, Vec<Idle>) = list
                    .drain(..)
                    .partition(|e| !e.sender.is_closed() && e.since.elapsed() < IDLE_TIMEOUT);
                *list = keep;
                expired.extend(old);
                !list.is_empty()
            });
        }
        drop(expired);
    }
}

async fn sweep(pool: Weak<Inner>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.expire(),
            None => return,
        }
    }
}

/// What a response body needs to hand its connection back.
struct Reuse {
    pool: Arc<Inner>,
    addr: SocketAddr,
    sender: Sender,
}

/// A response body from upstream. From the HTTP/1.1 pool, it hands its
/// connection back once read to the end.
pub struct UpstreamIncoming {
    body: Incoming,
    reuse: Option<Reuse>,
}

impl From<Incoming> for UpstreamIncoming {
    /// A body whose connection is not pooled here (HTTP/2 streams, upgrades).
    fn from(body: Incoming) -> Self {
        UpstreamIncoming { body, reuse: None }
    }
}

impl UpstreamIncoming {
    fn release(&mut self) {
        if let Some(reuse) = self.reuse.take() {
            reuse.pool.give_back(reuse.addr, reuse.sender);
        }
    }
}

impl Drop for UpstreamIncoming {
    fn drop(&mut self) {
        // An empty body (204, HEAD, `Content-Length: 0`) may never be polled.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            // hyper's server stops polling a body once it says it has ended.
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // The connection is unusable: dropping its sender closes it.
            Poll::Ready(Some(Err(_))) => this.reuse = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
