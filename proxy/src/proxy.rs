//! The request path: route, filter, pick an endpoint, forward, stream back.
//!
//! Everything that needs the configuration happens synchronously in [`plan`] with
//! one `ArcSwap` load; only the chosen route (an `Arc`) is kept across the upstream
//! call. Bodies are streamed both ways; only a route that retries or mirrors keeps
//! request bodies of known length up to 64 KiB (see [`crate::retry`]).

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme as UriScheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::access_log::{CountedBody, Entry};

use crate::backends::{Endpoint, Pick};
use crate::filters::{location, RedirectInput, Scheme};
use crate::h1pool::UpstreamIncoming;
use crate::load::{
    Admitted as Slot, BackendLoad, ConnectionSlot, ExchangeGuard, InFlight, NoConnection,
};
use crate::metrics::Flag;
use crate::policy::limits::{BodyFailure, BoxError, LimitedBody};
use crate::policy::{Admitted, PolicyRequest, Refused};
use crate::retry::{self, Failure, RetryPolicy};
use crate::routes::{Route, UpstreamSettings};
use crate::routing::{normalize_host, normalize_path, RequestView};
use crate::snapshot::Snapshot;
use crate::state::State;
use crate::state::{ClientBody, UpstreamBody};
use crate::telemetry::RequestTrace;
use crate::upstream::UpstreamError;
use crate::{grpc, upgrade};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

/// Response bodies: streamed from the upstream, or made here.
pub type ProxyBody = Either<UpstreamIncoming, Full<Bytes>>;

/// The response header that says why the proxy answered by itself.
pub const FLAGS_HEADER: &str = "x-meshgate-flags";
/// Request id header, added when absent.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
// Names parsed once: a `&str` name is parsed and validated on every lookup.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What a request needs to know about its connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub state: Arc<State>,
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub scheme: Scheme,
    /// The listener's port as clients see it (for redirects).
    pub listener_port: u16,
    /// The TLS server name the client asked for (HTTPS listeners).
    pub sni: Option<Arc<str>>,
    /// Requests in progress and when the connection last became idle.
    pub activity: crate::server::ConnActivity,
}

/// The client address of a request: the TCP peer, or with `numTrustedHops` N > 0
/// the Nth address from the right of X-Forwarded-For (as received). Later
/// policies (client CIDRs, rate limits) read it from the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Envoy's `xff_num_trusted_hops` with `use_remote_address`: with `trusted_hops`
/// 0 the peer is the client; else the `trusted_hops`th entry from the right of
/// the X-Forwarded-For values (all header lines, in order). Too few entries, or an
/// entry there that is not an IP address, mean the peer is the client.
pub fn client_addr(headers: &HeaderMap, peer: IpAddr, trusted_hops: usize) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    let mut seen = 0;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else {
            return peer;
        };
        for entry in value.rsplit(',') {
            seen += 1;
            if seen == trusted_hops {
                return parse_xff_entry(entry.trim()).unwrap_or(peer);
            }
        }
    }
    peer
}

/// An X-Forwarded-For entry: an IP address, also accepted with a port.
fn parse_xff_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// Headers that describe one connection and must not be forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those named in `Connection`, and
/// `Upgrade` (an upgrade request puts it back, see [`crate::upgrade`]).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names present, then a `remove` only for those
    // found: hashing all ten names for a `remove` each cost more than the rest
    // of the header handling.
    // The eight of HOP_BY_HOP and Upgrade.
    let mut found: [Option<HeaderName>; 9] = Default::default();
    let mut count = 0;
    for name in headers.keys() {
        if name == header::UPGRADE || HOP_BY_HOP.contains(name) {
            found[count] = Some(name.clone());
            count += 1;
            if count == found.len() {
                break;
            }
        }
    }
    if count == 0 {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in found.into_iter().flatten() {
        headers.remove(name);
    }
}

/// The text of a response made by the proxy, kept for gRPC's `grpc-message`.
#[derive(Clone, Copy, Debug)]
pub struct LocalMessage(pub &'static str);

/// A response made by the proxy itself.
pub fn local_response(
    status: StatusCode,
    flag: Option<Flag>,
    body: &'static str,
) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(flag) = flag {
        headers.insert(FLAGS_HEADER, HeaderValue::from_static(flag.code()));
    }
    response.extensions_mut().insert(LocalMessage(body));
    response
}

fn redirect_response(status: StatusCode, location: &str) -> Response<ProxyBody> {
    let mut response = local_response(status, None, "");
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The outcome of routing.
// Built once per request and moved, never stored: boxing `Forward` would cost an
// allocation per request to save stack space.
#[allow(clippy::large_enum_variant)]
enum Plan {
    /// Answer without an upstream.
    Local {
        response: Response<ProxyBody>,
        route: Option<Arc<Route>>,
        flag: Option<Flag>,
    },
    /// Send `request` (already rewritten) upstream.
    Forward {
        request: Request<ClientBody>,
        route: Arc<Route>,
        /// Timeouts and retries: the route's, or its policy's overrides.
        settings: Arc<UpstreamSettings>,
        /// What the route's policy adds to the response; `None` without a policy.
        admitted: Option<Box<Admitted>>,
        endpoint: Arc<Endpoint>,
        /// The counters of the chosen backend (circuit breaking).
        backend_load: Arc<BackendLoad>,
        /// Counts the request in flight until its exchange ends.
        guard: ExchangeGuard,
        /// Send over HTTP/2 (h2c).
        h2: bool,
    },
}

/// What a request is, as far as the forwarding protocol goes.
#[derive(Clone, Copy, Debug)]
struct Kind {
    grpc: bool,
    upgrade: bool,
}

impl Plan {
    fn local(
        status: StatusCode,
        flag: Flag,
        body: &'static str,
        route: Option<Arc<Route>>,
    ) -> Plan {
        Plan::Local {
            response: local_response(status, Some(flag), body),
            route,
            flag: Some(flag),
        }
    }
}

/// A request in progress on its connection; dropped with the response body.
struct Active(Arc<ConnInfo>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.activity.end();
    }
}

/// The response body sent to clients: counts bytes and writes the access log
/// line when it ends or is dropped (the client went away).
pub struct ResponseBody {
    inner: ProxyBody,
    bytes_out: u64,
    /// Boxed: hyper keeps a slot for the response body for the whole life of
    /// an HTTP/1 connection, idle or not (an `Entry` is 368 bytes, a box 8).
    log: Option<Box<Entry>>,
    active: Option<Active>,
    /// In-flight and circuit-breaker counts, released when the body ends.
    exchange: Option<ExchangeGuard>,
}

impl ResponseBody {
    fn finish(&mut self) {
        if let (Some(entry), Some(active)) = (self.log.take(), &self.active) {
            active
                .0
                .state
                .access_log
                .0
                .write_line(&entry.line(self.bytes_out));
        }
        self.active = None;
        self.exchange = None;
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(_) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A random 128-bit request id as 32 lowercase hex digits, written without
/// the formatting machinery (it runs on every request). Public for the header
/// benchmark (`proxy/benches/headers.rs`).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = bytes::BytesMut::with_capacity(32);
    for byte in fastrand::u128(..).to_be_bytes() {
        id.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_maybe_shared(id.freeze()).unwrap_or(HeaderValue::from_static("0"))
}

/// The hyper service of a listener connection.
pub async fn serve(
    request: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Result<Response<ResponseBody>, Infallible> {
    conn.activity.start();
    let active = Active(conn.clone());
    let (response, log, exchange) = handle(request, &conn).await;
    let (parts, inner) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        ResponseBody {
            inner,
            bytes_out: 0,
            log: log.map(Box::new),
            active: Some(active),
            exchange,
        },
    ))
}

/// Proxies one request; with the access log on, also returns its entry. A
/// forwarded request also returns what counts it in flight, to be dropped when
/// its response body ends.
pub async fn handle(
    mut request: Request<Incoming>,
    conn: &ConnInfo,
) -> (Response<ProxyBody>, Option<Entry>, Option<ExchangeGuard>) {
    let start = Instant::now();
    let state = &*conn.state;
    let grpc = grpc::is_grpc(request.headers());
    let upgrade = upgrade::requested(request.version(), request.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let kind = Kind {
        grpc,
        upgrade: upgrade.is_some(),
    };
    if !request.headers().contains_key(&REQUEST_ID_HEADER) {
        request
            .headers_mut()
            .insert(REQUEST_ID_HEADER, new_request_id());
    }
    let trace = state.telemetry.start(request.headers(), "ingress");
    // The one snapshot load of this request. The guard lives until routing and
    // policy checks are done (a JWKS fetch or a Redis round trip may await).
    let (plan, log) = {
        let snapshot = state.snapshot.load();
        let client = client_addr(
            request.headers(),
            conn.peer.ip(),
            snapshot.client.num_trusted_hops,
        );
        request.extensions_mut().insert(ClientAddr(client));
        // The wall clock only for the log line: one clock read less per
        // request without it.
        let log = snapshot.client.access_log.then(|| Entry {
            time: SystemTime::now(),
            started: start,
            listener: conn.listener.clone(),
            client,
            method: request.method().clone(),
            authority: match request.uri().authority() {
                Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                None => request.headers().get(header::HOST).cloned(),
            },
            uri: request.uri().clone(),
            status: 0,
            route: None,
            upstream: None,
            upstream_ms: None,
            bytes_in: Some(Arc::new(AtomicU64::new(0))),
            request_id: request.headers().get(&REQUEST_ID_HEADER).cloned(),
            flag: None,
            trace_id: trace.as_ref().map(|t| t.trace_id),
        });
        let counter = log.as_ref().and_then(|l| l.bytes_in.clone());
        let stall = snapshot.client.idle_timeout;
        let request =
            request.map(|body| LimitedBody::client(CountedBody::new(body, counter), stall));
        (
            plan(request, conn, &snapshot, kind, upgrade, trace.as_ref()).await,
            log,
        )
    };

    let mut upstream_ms = None;
    let mut exchange = None;
    let (response, route, flag, upstream) = match plan {
        Plan::Local {
            response,
            route,
            flag,
        } => (response, route, flag, None),
        Plan::Forward {
            request,
            route,
            settings,
            admitted,
            endpoint,
            backend_load,
            mut guard,
            h2,
        } => {
            let upstream = endpoint.addr;
            let (mut response, mut flag, upstream) = match client_upgrade {
                Some(client) => {
                    let (response, flag) =
                        forward_upgrade(request, client, &route, upstream, &conn.state.connector)
                            .await;
                    (response, flag, upstream)
                }
                None => {
                    forward(
                        &conn.state,
                        request,
                        &route,
                        &settings,
                        Chosen {
                            endpoint,
                            backend_load,
                            guard: &mut guard,
                        },
                        h2,
                        trace.as_ref(),
                    )
                    .await
                }
            };
            if let Some(admitted) = &admitted {
                // The upstream call failed because the body passed its limit: the
                // client learns why (413), not a 502.
                if admitted.body_too_large() {
                    state
                        .policy
                        .refusals
                        .count("request_limits", "body_too_large");
                    flag = Some(Flag::RequestTooLarge);
                    response = local_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        flag,
                        "request body too large\n",
                    );
                }
                admitted.decorate(response.headers_mut());
            }
            upstream_ms = Some(start.elapsed().as_secs_f64() * 1000.0);
            exchange = Some(guard);
            (response, Some(route), flag, Some(upstream))
        }
    };
    let response = if grpc && flag.is_some() {
        grpc::error_response(response)
    } else {
        response
    };

    let status = response.status();
    if let Some(t) = trace.as_ref().filter(|t| t.sampled) {
        record_span(t, &route, flag, upstream, conn, status);
    }
    match &route {
        Some(route) => route.counters.record_timed(status, start.elapsed()),
        None => state
            .metrics
            .unmatched
            .record_timed(status, start.elapsed()),
    }
    if let Some(flag) = flag {
        state.metrics.flag(flag);
    }
    let log = log.map(|mut entry| {
        entry.status = status.as_u16();
        entry.route = route;
        entry.upstream = upstream;
        entry.upstream_ms = upstream_ms;
        entry.flag = flag;
        entry
    });
    (response, log, exchange)
}

/// Names the server span after the route and records what a trace reader needs.
fn record_span(
    t: &RequestTrace,
    route: &Option<Arc<Route>>,
    flag: Option<Flag>,
    upstream: Option<SocketAddr>,
    conn: &ConnInfo,
    status: StatusCode,
) {
    t.set_name(match route {
        Some(r) => format!("route {}", r.name),
        None => "no route".to_string(),
    });
    t.set(KeyValue::new(
        "meshgate.listener",
        conn.listener.to_string(),
    ));
    if let Some(r) = route {
        t.set(KeyValue::new("http.route", r.name.clone()));
    }
    if let Some(flag) = flag {
        t.set(KeyValue::new("meshgate.response_flags", flag.code()));
    }
    if let Some(u) = upstream {
        t.set(KeyValue::new("meshgate.upstream", u.to_string()));
    }
    t.finish(status.as_u16());
}

/// Routes the request, runs its route's policy, and applies the request filters.
/// Whether an HTTPS request names a host that its connection's TLS server name
/// would not have been given the same certificate for (RFC 9110 15.5.20). HTTP/2
/// clients reuse a connection for every host its certificate covers; a host
/// outside it must be retried on a connection of its own, so it gets 421.
fn misdirected(listener: &crate::snapshot::Listener, sni: Option<&str>, host: &str) -> bool {
    let (Some(sni), Some(tls)) = (sni, listener.tls.as_ref()) else {
        return false;
    };
    if sni.eq_ignore_ascii_case(host) {
        return false;
    }
    match (tls.certs.resolve(Some(sni)), tls.certs.resolve(Some(host))) {
        (Some(served), Some(wanted)) => !Arc::ptr_eq(&served, &wanted),
        _ => false,
    }
}

async fn plan(
    request: Request<ClientBody>,
    conn: &ConnInfo,
    snapshot: &Snapshot,
    kind: Kind,
    upgrade: Option<HeaderValue>,
    trace: Option<&RequestTrace>,
) -> Plan {
    let Some(listener) = snapshot.listener(&conn.listener) else {
        return Plan::local(StatusCode::NOT_FOUND, Flag::NoRoute, "no route\n", None);
    };
    let (mut parts, body) = request.into_parts();

    // Two Host lines (RFC 9112 3.2: 400): routing, policies and the upstream
    // could each read a different one.
    if parts.headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Plan::local(
            StatusCode::BAD_REQUEST,
            Flag::BadRequest,
            "duplicate host\n",
            None,
        );
    }
    // RFC 9112 3.2.2: the authority of an absolute-form target wins over Host.
    let raw_host = match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    let Some(raw_host) = raw_host else {
        return Plan::local(
            StatusCode::BAD_REQUEST,
            Flag::BadRequest,
            "missing host\n",
            None,
        );
    };
    let Some(host) = raw_host.to_str().ok().and_then(normalize_host) else {
        return Plan::local(
            StatusCode::BAD_REQUEST,
            Flag::BadRequest,
            "invalid host\n",
            None,
        );
    };
    let Some(path) = normalize_path(parts.uri.path()) else {
        return Plan::local(
            StatusCode::BAD_REQUEST,
            Flag::BadRequest,
            "invalid path\n",
            None,
        );
    };
    let query = parts.uri.query();

    if misdirected(listener, conn.sni.as_deref(), &host) {
        return Plan::local(
            StatusCode::MISDIRECTED_REQUEST,
            Flag::Misdirected,
            "misdirected request: the connection's certificate is not the one for this host\n",
            None,
        );
    }

    if let Some(redirect) = listener.https_redirect {
        let location = location(Scheme::Https, &host, redirect.port, &path, query);
        return Plan::Local {
            response: redirect_response(redirect.status, &location),
            route: None,
            flag: None,
        };
    }

    let view = RequestView {
        host: &host,
        path: &path,
        query,
        method: &parts.method,
        headers: &parts.headers,
    };
    let Some(found) = listener.routes.find(&view) else {
        return Plan::local(StatusCode::NOT_FOUND, Flag::NoRoute, "no route\n", None);
    };
    let route = found.route.clone();
    let prefix = found.prefix;

    let attached = listener.policy(&route);
    let mut admitted = None;
    let mut body = body;
    if let Some(attached) = attached {
        let client = parts
            .extensions
            .get::<ClientAddr>()
            .map_or(conn.peer.ip(), |c| c.0);
        let mut span = trace.map(|t| t.child("policy", SpanKind::Internal));
        let checked = attached
            .policy
            .check(
                PolicyRequest {
                    method: &parts.method,
                    headers: &mut parts.headers,
                    query,
                    body: &mut body,
                    client,
                },
                &conn.state.policy.refusals,
            )
            .await;
        if let (Some(span), Err(refused)) = (&mut span, &checked) {
            span.set(KeyValue::new(
                "http.response.status_code",
                i64::from(refused.response.status().as_u16()),
            ));
            if let Some(flag) = refused.flag {
                span.error(flag.code());
            }
        }
        drop(span);
        match checked {
            Ok(a) => admitted = Some(Box::new(a)),
            Err(Refused { response, flag }) => {
                return Plan::Local {
                    response,
                    route: Some(route),
                    flag,
                }
            }
        }
    }
    let settings = attached
        .and_then(|a| a.upstream.clone())
        .unwrap_or_else(|| route.upstream.clone());

    if let Some(redirect) = &route.redirect {
        let location = redirect.location(&RedirectInput {
            scheme: conn.scheme,
            host: &host,
            listener_port: conn.listener_port,
            path: &path,
            query,
            prefix,
        });
        let mut response = redirect_response(redirect.status, &location);
        if let Some(modifier) = &route.response_headers {
            modifier.apply(response.headers_mut());
        }
        return Plan::Local {
            response,
            route: Some(route),
            flag: None,
        };
    }

    let (backend, endpoint) = match route
        .backends
        .pick(settings.balance, settings.health.as_ref())
    {
        Pick::Endpoint(backend, endpoint) => (backend, endpoint),
        Pick::NoEndpoint(_) | Pick::NoBackend => {
            return Plan::local(
                StatusCode::SERVICE_UNAVAILABLE,
                Flag::NoHealthy,
                "no healthy upstream\n",
                Some(route.clone()),
            );
        }
        Pick::Unhealthy(_) => {
            return Plan::local(
                StatusCode::SERVICE_UNAVAILABLE,
                Flag::NoHealthyUpstream,
                "no healthy upstream\n",
                Some(route.clone()),
            );
        }
    };
    // Circuit breaking: over the backend's limit the request is refused at once.
    let slot = match settings.circuit {
        None => None,
        Some(limits) => match Slot::request(&backend.load, limits.max_requests) {
            Some(slot) => Some(slot),
            None => {
                conn.state
                    .metrics
                    .overflow_requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Plan::local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Flag::UpstreamOverflow,
                    "upstream overflow\n",
                    Some(route.clone()),
                );
            }
        },
    };

    // The upstream target: the rewritten or normalised path, the query unchanged.
    let rewrite = route.rewrite.as_ref().and_then(|r| r.path.as_ref());
    let new_path = match (rewrite, path) {
        (Some(modifier), path) => Some(modifier.apply(&path, prefix)),
        (None, Cow::Owned(normalised)) => Some(normalised),
        (None, Cow::Borrowed(_)) => None,
    };
    let path_and_query = match new_path {
        Some(path) => PathAndQuery::try_from(match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        })
        .ok(),
        None => parts.uri.path_and_query().cloned(),
    };
    let uri = path_and_query.and_then(|path_and_query| {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(UriScheme::HTTP);
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query = Some(path_and_query);
        Uri::from_parts(uri).ok()
    });
    let Some(uri) = uri else {
        return Plan::local(
            StatusCode::BAD_REQUEST,
            Flag::BadRequest,
            "invalid path\n",
            Some(route.clone()),
        );
    };
    // HTTP/2 upstream: h2c Services, and gRPC from HTTP/2 clients.
    let h2 = !kind.upgrade && (backend.h2 || (kind.grpc && parts.version == Version::HTTP_2));
    // HTTP/1.1: each request holds a connection; over maxConnections it waits.
    let connection = match settings.circuit {
        Some(limits) if !h2 => {
            let wait = crate::upstream::CONNECT_TIMEOUT;
            match ConnectionSlot::acquire(
                &backend.load,
                limits.max_connections,
                limits.max_pending,
                wait,
            )
            .await
            {
                Ok(slot) => Some(slot),
                Err(why) => {
                    let metrics = &conn.state.metrics;
                    let counter = match why {
                        NoConnection::PendingFull => &metrics.overflow_pending,
                        NoConnection::Timeout => &metrics.overflow_connections,
                    };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Plan::local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Flag::UpstreamOverflow,
                        "upstream overflow\n",
                        Some(route.clone()),
                    );
                }
            }
        }
        _ => None,
    };
    let guard = ExchangeGuard {
        in_flight: Some(InFlight::start(&endpoint.load)),
        admitted: slot,
        connection,
    };
    let backend_load = backend.load.clone();
    let endpoint = endpoint.clone();
    parts.uri = uri;
    parts.version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if kind.grpc {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    set_forwarded_headers(headers, conn.peer.ip(), conn.scheme, &raw_host);
    let upstream_host = route
        .rewrite
        .as_ref()
        .and_then(|r| r.hostname.clone())
        .unwrap_or(raw_host);
    // HTTP/2 upstreams get it as `:authority` (crate::h2pool), not as a header.
    headers.insert(header::HOST, upstream_host);
    if let Some(modifier) = &route.request_headers {
        modifier.apply(headers);
    }
    Plan::Forward {
        request: Request::from_parts(parts, body),
        route,
        settings,
        admitted,
        endpoint,
        backend_load,
        guard,
        h2,
    }
}

/// X-Forwarded-For (the peer appended), X-Forwarded-Proto and X-Forwarded-Host
/// (x-request-id is set in [`handle`]). Public for the header benchmark
/// (`proxy/benches/headers.rs`); `peer` is the TCP peer, `scheme` the listener's.
pub fn set_forwarded_headers(
    headers: &mut HeaderMap,
    peer: IpAddr,
    scheme: Scheme,
    host: &HeaderValue,
) {
    use std::fmt::Write as _;
    // One buffer for the whole value: the usual request has no X-Forwarded-For
    // and gets only the peer's address.
    let mut xff = String::with_capacity(64);
    for value in headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        xff.push_str(value);
        xff.push_str(", ");
    }
    let _ = write!(xff, "{peer}");
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme.as_str()));
    headers.insert(X_FORWARDED_HOST, host.clone());
}

/// Forwards an upgrade request; see [`crate::upgrade`].
async fn forward_upgrade(
    request: Request<ClientBody>,
    client: hyper::upgrade::OnUpgrade,
    route: &Route,
    upstream: SocketAddr,
    connector: &crate::upstream::UpstreamConnector,
) -> (Response<ProxyBody>, Option<Flag>) {
    match upgrade::forward(request.map(Either::Left), client, upstream, connector).await {
        Ok(mut response) => {
            if let Some(modifier) = &route.response_headers {
                modifier.apply(response.headers_mut());
            }
            (response, None)
        }
        Err(failure) => {
            let (flag, body, error) = match failure {
                upgrade::Failure::Connect(e) => {
                    (Flag::UpstreamConnect, "upstream connect failure\n", e)
                }
                upgrade::Failure::Connection(e) => {
                    (Flag::UpstreamConnection, "upstream connection failure\n", e)
                }
            };
            tracing::warn!(route = %route.name, %upstream, %error, flag = flag.code(), "upgrade request failed");
            (
                local_response(StatusCode::BAD_GATEWAY, Some(flag), body),
                Some(flag),
            )
        }
    }
}

/// A request body as forwarded: kept in full (replayable), or streamed.
enum RequestBody {
    Kept(Bytes),
    Streamed(ClientBody),
}

/// Keeps the body when it is known to be at most [`retry::MAX_BUFFERED_BODY`] bytes.
async fn keep_body(body: ClientBody) -> Result<RequestBody, BoxError> {
    if body.is_end_stream() {
        return Ok(RequestBody::Kept(Bytes::new()));
    }
    match body.size_hint().exact() {
        Some(len) if len <= retry::MAX_BUFFERED_BODY => {
            Ok(RequestBody::Kept(body.collect().await?.to_bytes()))
        }
        _ => Ok(RequestBody::Streamed(body)),
    }
}

/// Where upstream requests go: the pooled HTTP/1.1 client, or the HTTP/2 connections.
#[derive(Clone, Copy)]
enum Upstream<'a> {
    Http1(&'a crate::h1pool::H1Pool),
    Http2(&'a crate::h2pool::H2Pool),
}

impl Upstream<'_> {
    async fn request(
        self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        match self {
            Upstream::Http1(pool) => pool.request(request).await,
            Upstream::Http2(pool) => pool.request(request).await,
        }
    }
}

/// How one upstream attempt ended.
enum Attempt {
    Response(Response<UpstreamIncoming>),
    Timeout,
    Failed(UpstreamError),
}

impl Attempt {
    /// Whether outlier detection counts this as a failure of the endpoint.
    fn failed(&self) -> bool {
        match self {
            Attempt::Response(r) => r.status().is_server_error(),
            Attempt::Timeout => true,
            // The client's own body failing says nothing about the endpoint.
            Attempt::Failed(e) => BodyFailure::of(e).is_none(),
        }
    }

    fn failure(&self) -> Failure {
        match self {
            Attempt::Response(r) => Failure::Status(r.status()),
            Attempt::Timeout => Failure::Timeout,
            Attempt::Failed(e) if e.is_connect() => Failure::Connect,
            Attempt::Failed(_) => Failure::Reset,
        }
    }
}

async fn attempt(
    client: Upstream<'_>,
    mut request: Request<UpstreamBody>,
    timeout: Option<Duration>,
    trace: Option<&RequestTrace>,
) -> Attempt {
    let mut span = trace.map(|t| {
        let mut span = t.child("upstream", SpanKind::Client);
        t.inject(&span, request.headers_mut());
        if t.sampled {
            if let Some(a) = request.uri().authority() {
                span.set(KeyValue::new("server.address", a.to_string()));
            }
        }
        span
    });
    let outcome = attempt_inner(client, request, timeout).await;
    if let Some(span) = &mut span {
        match &outcome {
            Attempt::Response(r) => {
                span.set(KeyValue::new(
                    "http.response.status_code",
                    i64::from(r.status().as_u16()),
                ));
                if r.status().is_server_error() {
                    span.error("upstream 5xx");
                }
            }
            Attempt::Timeout => span.error("upstream timeout"),
            Attempt::Failed(_) => span.error("upstream failure"),
        }
    }
    outcome
}

async fn attempt_inner(
    client: Upstream<'_>,
    request: Request<UpstreamBody>,
    timeout: Option<Duration>,
) -> Attempt {
    let call = client.request(request);
    let result = match timeout {
        Some(timeout) => match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => return Attempt::Timeout,
        },
        None => call.await,
    };
    match result {
        Ok(response) => Attempt::Response(response),
        Err(e) => Attempt::Failed(e),
    }
}

fn timeout_response() -> (Response<ProxyBody>, Option<Flag>) {
    (
        local_response(
            StatusCode::GATEWAY_TIMEOUT,
            Some(Flag::UpstreamTimeout),
            "upstream timeout\n",
        ),
        Some(Flag::UpstreamTimeout),
    )
}

/// The answer when the client's request body failed: 408 when it stalled, else
/// 400 (a malformed body, e.g. an invalid chunk size).
fn client_body_response(failure: Option<BodyFailure>) -> (Response<ProxyBody>, Option<Flag>) {
    let (status, flag, body) = match failure {
        Some(BodyFailure::Stalled) => (
            StatusCode::REQUEST_TIMEOUT,
            Flag::ClientTimeout,
            "request body timeout\n",
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            Flag::BadRequest,
            "request body failed\n",
        ),
    };
    (local_response(status, Some(flag), body), Some(flag))
}

/// The response for the client from the last attempt.
fn finish(
    outcome: Attempt,
    route: &Route,
    upstream: SocketAddr,
) -> (Response<ProxyBody>, Option<Flag>) {
    match outcome {
        Attempt::Response(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(modifier) = &route.response_headers {
                modifier.apply(&mut parts.headers);
            }
            (Response::from_parts(parts, Either::Left(body)), None)
        }
        Attempt::Timeout => timeout_response(),
        Attempt::Failed(e) if BodyFailure::of(&e).is_some() => {
            tracing::debug!(route = %route.name, error = %error_chain(&e), "client request body failed");
            client_body_response(BodyFailure::of(&e))
        }
        Attempt::Failed(e) => {
            if let Some(mesh) = crate::upstream::mesh_identity_error(&e) {
                tracing::warn!(route = %route.name, %upstream, error = %mesh, flag = Flag::MeshIdentity.code(), "mesh identity refused");
                let flag = Flag::MeshIdentity;
                return (
                    local_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Some(flag),
                        "upstream mesh identity refused\n",
                    ),
                    Some(flag),
                );
            }
            let flag = if e.is_connect() {
                Flag::UpstreamConnect
            } else {
                Flag::UpstreamConnection
            };
            tracing::warn!(route = %route.name, %upstream, error = %error_chain(&e), flag = flag.code(), "upstream request failed");
            let body = if e.is_connect() {
                "upstream connect failure\n"
            } else {
                "upstream connection failure\n"
            };
            (
                local_response(StatusCode::BAD_GATEWAY, Some(flag), body),
                Some(flag),
            )
        }
    }
}

/// A request for another attempt at `endpoint`.
fn rebuild(
    parts: &http::request::Parts,
    endpoint: &Endpoint,
    body: Bytes,
) -> Option<Request<UpstreamBody>> {
    let uri = Uri::builder()
        .scheme(UriScheme::HTTP)
        .authority(endpoint.authority.clone())
        .path_and_query(parts.uri.path_and_query()?.clone())
        .build()
        .ok()?;
    let mut request = Request::new(Either::Right(Full::new(body)));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    Some(request)
}

/// The endpoint a request goes to first, its backend's counters, and the guard
/// that counts the request in flight (moved along with retries).
struct Chosen<'a> {
    endpoint: Arc<Endpoint>,
    backend_load: Arc<BackendLoad>,
    guard: &'a mut ExchangeGuard,
}

/// Sends the request upstream: mirrored if the route says so, retried if its
/// policy allows, within the route's timeouts. Returns the endpoint of the last attempt.
async fn forward(
    state: &Arc<State>,
    request: Request<ClientBody>,
    route: &Route,
    settings: &UpstreamSettings,
    chosen: Chosen<'_>,
    h2: bool,
    trace: Option<&RequestTrace>,
) -> (Response<ProxyBody>, Option<Flag>, SocketAddr) {
    let Chosen {
        endpoint,
        backend_load,
        guard,
    } = chosen;
    let upstream = endpoint.addr;
    let client = if h2 {
        Upstream::Http2(&state.h2)
    } else {
        Upstream::Http1(&state.h1)
    };
    let policy = settings.retry.as_ref().filter(|p| p.attempts > 0);
    let mirror = route.mirror.as_ref().filter(|m| m.drawn());
    if policy.is_none() && mirror.is_none() {
        let outcome = attempt(client, request.map(Either::Left), settings.timeout, trace).await;
        endpoint.report(outcome.failed());
        let (response, flag) = finish(outcome, route, upstream);
        return (response, flag, upstream);
    }
    let (parts, body) = request.into_parts();
    let body = match keep_body(body).await {
        Ok(body) => body,
        Err(e) => {
            tracing::debug!(route = %route.name, error = %e, "reading the request body failed");
            let (response, flag) = client_body_response(BodyFailure::of(&*e));
            return (response, flag, upstream);
        }
    };
    if let Some(mirror) = mirror {
        match &body {
            RequestBody::Kept(bytes) => mirror.send(state, &parts, bytes.clone()),
            RequestBody::Streamed(_) => {
                tracing::debug!(route = %route.name, "body too large or of unknown length; not mirrored")
            }
        }
    }
    let (policy, bytes) = match (policy, body) {
        (Some(policy), RequestBody::Kept(bytes)) => (policy, bytes),
        (_, body) => {
            let body = match body {
                RequestBody::Kept(bytes) => Either::Right(Full::new(bytes)),
                RequestBody::Streamed(incoming) => Either::Left(incoming),
            };
            let outcome = attempt(
                client,
                Request::from_parts(parts, body),
                settings.timeout,
                trace,
            )
            .await;
            endpoint.report(outcome.failed());
            let (response, flag) = finish(outcome, route, upstream);
            return (response, flag, upstream);
        }
    };

    let _active = policy.start();
    let mut endpoint_addr = upstream;
    let mut current = endpoint;
    let mut current_load = backend_load;
    let attempts = async {
        let mut permit = None;
        let mut retry_slot: Option<Slot> = None; // held while the retry is in flight
        let mut request = Request::from_parts(parts, Either::Right(Full::new(bytes.clone())));
        let mut retries = 0;
        loop {
            let (parts_now, body_now) = request.into_parts();
            let outcome = attempt(
                client,
                Request::from_parts(clone_parts(&parts_now), body_now),
                policy.per_attempt_timeout,
                trace,
            )
            .await;
            current.report(outcome.failed());
            let failure = outcome.failure();
            let retry = retries < policy.attempts
                && policy.retriable(failure)
                && RetryPolicy::may_resend(failure, true, &parts_now.method);
            if !retry {
                return (outcome, retries);
            }
            permit = permit.or_else(|| policy.permit());
            if permit.is_none() {
                tracing::debug!(route = %route.name, "retry budget exhausted");
                return (outcome, retries);
            }
            if let Some(limits) = settings.circuit {
                // The slot of the retry before is given back first.
                drop(retry_slot.take());
                retry_slot = Slot::retry(&current_load, limits.max_retries);
                if retry_slot.is_none() {
                    state
                        .metrics
                        .overflow_retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(route = %route.name, "circuit breaker: maxParallelRetries reached; not retried");
                    return (outcome, retries);
                }
            }
            retries += 1;
            drop(outcome);
            tokio::time::sleep(policy.backoff(retries)).await;
            let Some((backend, endpoint)) = route.backends.pick_other(
                endpoint_addr,
                settings.balance,
                settings.health.as_ref(),
            ) else {
                return (Attempt::Timeout, retries);
            };
            endpoint_addr = endpoint.addr;
            current = endpoint.clone();
            current_load = backend.load.clone();
            if let Some(in_flight) = &mut guard.in_flight {
                in_flight.move_to(&endpoint.load);
            }
            let Some(next) = rebuild(&parts_now, endpoint, bytes.clone()) else {
                return (Attempt::Timeout, retries);
            };
            request = next;
        }
    };
    let result = match settings.request_timeout {
        Some(limit) => tokio::time::timeout(limit, attempts).await.ok(),
        None => Some(attempts.await),
    };
    match result {
        Some((outcome, retries)) => {
            if retries > 0 {
                tracing::debug!(route = %route.name, retries, "request retried");
            }
            let (response, flag) = finish(outcome, route, endpoint_addr);
            (response, flag, endpoint_addr)
        }
        None => {
            let (response, flag) = timeout_response();
            (response, flag, endpoint_addr)
        }
    }
}

/// Request parts without extensions (they are not `Clone`).
fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let (mut out, ()) = Request::new(()).into_parts();
    out.method = parts.method.clone();
    out.uri = parts.uri.clone();
    out.version = parts.version;
    out.headers = parts.headers.clone();
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn client_address_from_trusted_hops() {
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        // (hops, X-Forwarded-For header lines, client expected)
        let cases: &[(usize, &[&str], &str)] = &[
            (
                0,
                &["203.0.113.128, 203.0.113.10, 203.0.113.1"],
                "192.0.2.1",
            ),
            (
                1,
                &["203.0.113.128, 203.0.113.10, 203.0.113.1"],
                "203.0.113.1",
            ),
            (
                2,
                &["203.0.113.128, 203.0.113.10, 203.0.113.1"],
                "203.0.113.10",
            ),
            (
                2,
                &["203.0.113.128", "203.0.113.10,203.0.113.1"],
                "203.0.113.10",
            ),
            (
                3,
                &["203.0.113.128", "203.0.113.10, 203.0.113.1"],
                "203.0.113.128",
            ),
            (4, &["203.0.113.10, 203.0.113.1"], "192.0.2.1"),
            (1, &[], "192.0.2.1"),
            (1, &[""], "192.0.2.1"),
            (1, &["203.0.113.10, garbage"], "192.0.2.1"),
            (2, &["garbage, 203.0.113.1"], "192.0.2.1"),
            (1, &["203.0.113.10,"], "192.0.2.1"),
            (1, &["2001:db8::1"], "2001:db8::1"),
            (1, &["[2001:db8::1]:443"], "2001:db8::1"),
            (1, &["203.0.113.7:8080"], "203.0.113.7"),
            (2, &["  203.0.113.10 ,203.0.113.1"], "203.0.113.10"),
        ];
        for &(hops, lines, expected) in cases {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
            }
            let got = client_addr(&headers, peer, hops);
            assert_eq!(got.to_string(), expected, "hops {hops}, xff {lines:?}");
        }
    }

    #[test]
    fn local_responses_carry_the_flag() {
        let r = local_response(StatusCode::NOT_FOUND, Some(Flag::NoRoute), "no route\n");
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()[FLAGS_HEADER], "NR");
    }
}
