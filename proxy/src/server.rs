//! Listeners: one accept loop (tokio task) per listener, TLS termination for HTTPS,
//! and hyper's auto (HTTP/1.1 + HTTP/2) connection builder.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshgate_crds::gateway::ListenerProtocol;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use crate::filters::Scheme;
use crate::proxy::{self, ConnInfo};
use crate::snapshot::ClientSettings;
use crate::state::State;
use crate::Error;

/// A listener as bound at start-up. Its port, protocol and TLS versions are fixed
/// until restart; routes and certificates follow the current snapshot.
#[derive(Clone, Debug)]
pub struct ListenerSpec {
    pub name: String,
    pub protocol: ListenerProtocol,
    /// The port clients use (for redirects).
    pub public_port: u16,
    pub tls13_only: bool,
}

/// Binds a TCP listener with `SO_REUSEADDR` (restarts do not wait for TIME_WAIT).
pub fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, Error> {
    let err = |source| Error::Bind {
        what: what.to_string(),
        addr,
        source,
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

struct Listening {
    spec: ListenerSpec,
    state: Arc<State>,
    /// Cleartext connections, and TLS ones that negotiated no ALPN protocol:
    /// the protocol is read from the connection preface.
    builder: auto::Builder<TokioExecutor>,
    /// TLS connections whose ALPN protocol is http/1.1 or h2: served as such,
    /// without sniffing the preface (RFC 9113 section 3.2 and RFC 7301: the
    /// negotiated protocol is the one spoken). The preface sniffing of `auto`
    /// costs an idle HTTP/1.1 connection 8 KiB: its 24 replayed bytes make the
    /// first read reserve past the 8 KiB read buffer, which doubles it to 16 KiB.
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    tls: Option<crate::tls::ServerTls>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

/// Whether a client connection has requests in progress, and since when it has
/// had none (for `idleTimeout`).
#[derive(Debug)]
pub struct ConnActivity {
    origin: Instant,
    active: AtomicUsize,
    /// Milliseconds after `origin` when the last request ended.
    idle_since_ms: AtomicU64,
    /// Whether a request has ended on this connection.
    served: AtomicBool,
}

/// Which of `ConnActivity::idle_for`'s delays passed first.
#[derive(Debug, PartialEq)]
pub enum Expired {
    /// The park delay, after at least one request was served.
    Park,
    /// The idle timeout.
    Idle,
}

impl Default for ConnActivity {
    fn default() -> Self {
        ConnActivity {
            origin: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
        }
    }
}

impl ConnActivity {
    /// A request started.
    pub fn start(&self) {
        self.active.fetch_add(1, SeqCst);
    }

    /// A request ended (its response was sent, or abandoned).
    pub fn end(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(now, SeqCst);
        self.served.store(true, SeqCst);
        self.active.fetch_sub(1, SeqCst);
    }

    /// Whether no request is in progress.
    pub fn is_idle(&self) -> bool {
        self.active.load(SeqCst) == 0
    }

    /// Resolves once the connection has had no request in progress for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        self.idle_for(timeout, None).await;
    }

    /// Resolves once the connection has had no request in progress for `park`
    /// (if given, shorter than `timeout`, and a request has been served: a
    /// connection that never sent one is left to the header timeout) or for
    /// `timeout`, saying which.
    pub async fn idle_for(&self, timeout: Duration, park: Option<Duration>) -> Expired {
        let park = park.filter(|park| *park < timeout);
        loop {
            if self.active.load(SeqCst) == 0 {
                let since = self.origin + Duration::from_millis(self.idle_since_ms.load(SeqCst));
                let parkable = park.filter(|_| self.served.load(SeqCst));
                let (deadline, expired) = match parkable {
                    Some(park) => (since + park, Expired::Park),
                    None => (since + timeout, Expired::Idle),
                };
                if Instant::now() >= deadline {
                    if self.active.load(SeqCst) == 0 {
                        return expired;
                    }
                    continue;
                }
                // Not yet served: a first request may end before `timeout`
                // and make the connection parkable; look again after `park`.
                let wake = match (parkable, park) {
                    (None, Some(park)) => deadline.min(Instant::now() + park),
                    _ => deadline,
                };
                tokio::time::sleep_until(wake.into()).await;
            } else {
                tokio::time::sleep(park.unwrap_or(timeout)).await;
            }
        }
    }
}

/// Held by each connection task: counts it as active, keeps its
/// `maxConnections` permit, and tells the listener when it is gone.
struct ConnGuard {
    state: Arc<State>,
    _permit: Option<OwnedSemaphorePermit>,
    _done: mpsc::Sender<()>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.state.metrics.connections_active.fetch_sub(1, SeqCst);
    }
}

/// The connection builder for the client settings of the first snapshot.
/// [`http1_builder`] and [`http2_builder`] must apply the same settings.
pub fn connection_builder(client: &ClientSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(client.header_timeout)
        .max_buf_size(client.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(client.max_concurrent_streams)
        .max_header_list_size(u32::try_from(client.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// The HTTP/1.1 half of [`connection_builder`], for TLS connections with ALPN http/1.1.
pub fn http1_builder(client: &ClientSettings) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(client.header_timeout)
        .max_buf_size(client.max_header_bytes.max(8192));
    builder
}

/// The HTTP/2 half of [`connection_builder`], for TLS connections with ALPN h2.
pub fn http2_builder(client: &ClientSettings) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(client.max_concurrent_streams)
        .max_header_list_size(u32::try_from(client.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// The accept loop of one listener, to be spawned. It stops accepting when
/// `stop` turns true, then waits for its connections to finish their requests.
pub fn accept_loop(
    listener: TcpListener,
    spec: ListenerSpec,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, Error> {
    let client = state.snapshot.load().client.clone();
    let tls = match spec.protocol {
        ListenerProtocol::HTTP => None,
        ListenerProtocol::HTTPS => Some(crate::tls::ServerTls::new(
            state.clone(),
            &spec.name,
            spec.tls13_only,
        )?),
    };
    let listening = Arc::new(Listening {
        builder: connection_builder(&client),
        http1: http1_builder(&client),
        http2: http2_builder(&client),
        handshake_timeout: client.header_timeout,
        idle_timeout: client.idle_timeout,
        spec,
        state,
        tls,
    });
    Ok(accept(listener, listening, stop))
}

async fn accept(
    listener: TcpListener,
    listening: Arc<Listening>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Every connection task holds a sender; `recv` ends once all are gone.
    let (done, mut drained) = mpsc::channel::<()>(1);
    let name: Arc<str> = listening.spec.name.as_str().into();
    let state = &listening.state;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let permit = match state.connection_limit.get() {
                    None => None,
                    Some(limit) => match limit.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => {
                            state.metrics.connections_rejected.fetch_add(1, SeqCst);
                            tracing::debug!(listener = %name, %peer, "maxConnections reached; connection closed");
                            drop(stream);
                            continue;
                        }
                    },
                };
                state.metrics.connections_active.fetch_add(1, SeqCst);
                let guard = ConnGuard {
                    state: state.clone(),
                    _permit: permit,
                    _done: done.clone(),
                };
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    listening.clone(),
                    name.clone(),
                    shutdown.clone(),
                    guard,
                ));
            }
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    drop(done);
    let _ = drained.recv().await;
    tracing::debug!(listener = %name, "listener drained");
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The protocol a TLS client chose by ALPN.
enum Version {
    Http1,
    Http2,
}

/// What the requests of one client connection see of it.
fn conn_info(
    listening: &Listening,
    name: Arc<str>,
    peer: SocketAddr,
    sni: Option<Arc<str>>,
) -> Arc<ConnInfo> {
    let scheme = if listening.tls.is_some() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    Arc::new(ConnInfo {
        state: listening.state.clone(),
        listener: name,
        peer,
        scheme,
        listener_port: listening.spec.public_port,
        sni,
        activity: ConnActivity::default(),
    })
}

/// The hyper service of a connection: each request is proxied with its [`ConnInfo`].
///
/// The request future is boxed: HTTP/1 keeps a slot sized for the service's
/// future for the whole life of a connection (allocated when it opens), so an
/// unboxed `proxy::serve` future would cost every idle keep-alive connection
/// its full size; boxed, the slot is one pointer and the future is allocated
/// only while a request is in progress.
macro_rules! service {
    ($conn:expr) => {{
        let conn = $conn.clone();
        service_fn(move |request| Box::pin(proxy::serve(request, conn.clone())))
    }};
}

/// Serves a connection until it ends; on shutdown, or after `idleTimeout`
/// without a request in progress, closes it gracefully (in-flight requests finish).
/// Evaluates to the connection's result and whether it was parked.
///
/// A graceful close needs the client's help: HTTP/2 sends GOAWAY and a PING and
/// waits for the answer, and a client that does not read (a PING or SETTINGS
/// flood fills the socket, so even the GOAWAY cannot be written) or never
/// answers would hold the connection forever. So once closing has begun, a
/// connection with no request in progress is dropped after `$grace` (the
/// listener's `requestHeaderTimeout`, 10 s by default).
///
/// `$park` (`Some(hold switch)` for HTTP/1.1 over TLS): after `PARK_AFTER`
/// without a request, the hold is set and hyper asked to finish; it then
/// hands the stream back without closing it (see `serve_http1_tls`).
macro_rules! drive {
    ($connection:ident, $activity:expr, $idle:expr, $grace:expr, $shutdown:expr, $park:expr) => {{
        // `$connection` is a `Pin<Box<_>>`: see `serve_connection`.
        let park: Option<&std::sync::atomic::AtomicBool> = $park;
        let mut closing = false;
        let mut parking = false;
        let give_up = tokio::time::sleep(Duration::MAX);
        tokio::pin!(give_up);
        loop {
            tokio::select! {
                result = $connection.as_mut() => break (result, parking),
                expired = $activity.idle_for($idle, park.map(|_| PARK_AFTER)), if !closing && !parking => {
                    if let (Expired::Park, Some(hold)) = (expired, park) {
                        parking = true;
                        hold.store(true, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        closing = true;
                        give_up.as_mut().reset(tokio::time::Instant::now() + $grace);
                    }
                    $connection.as_mut().graceful_shutdown();
                }
                _ = $shutdown.wait_for(|stop| *stop), if !closing => {
                    closing = true;
                    give_up.as_mut().reset(tokio::time::Instant::now() + $grace);
                    $connection.as_mut().graceful_shutdown();
                }
                _ = give_up.as_mut(), if closing => {
                    if $activity.is_idle() {
                        tracing::debug!("connection not closed by the client after GOAWAY; dropped");
                        break (Ok(()), false);
                    }
                    give_up.as_mut().reset(tokio::time::Instant::now() + $grace);
                }
            }
        }
    }};
}

/// How long an HTTP/1.1 connection over TLS waits without a request before it
/// is parked: hyper's connection, with its two 8 KiB buffers, is dropped, and
/// only the TLS stream (which holds no buffer while it waits) is kept until
/// the client sends again. nginx frees its buffers at once; a second spares a
/// busy connection the churn.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Serves HTTP/1.1 over TLS, parking the connection whenever it has been idle
/// for `PARK_AFTER` (see there). Parking is undone by the client's next bytes;
/// shutdown or `idleTimeout` close a parked connection with close_notify.
async fn serve_http1_tls(
    listening: &Listening,
    conn: &Arc<ConnInfo>,
    tls: crate::tls_stream::TlsStream,
    idle: Duration,
    grace: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), BoxError> {
    // Boxed: while parked the task holds a pointer, not the stream.
    let mut tls = Box::new(tls);
    loop {
        let hold = tls.hold_switch();
        let mut connection = Box::pin(
            listening
                .http1
                .serve_connection(TokioIo::new(tls), service!(conn))
                .with_upgrades(),
        );
        let (result, parked) = drive!(
            connection,
            conn.activity,
            idle,
            grace,
            shutdown,
            Some(&hold)
        );
        result?;
        // Not parked: the connection ended (closed, upgraded or dropped).
        let Some(parts) = parked
            .then(|| Pin::into_inner(connection).into_parts())
            .flatten()
        else {
            return Ok(());
        };
        // hyper's connection (service, dispatcher, buffers) is gone after this.
        tls = {
            let mut io = parts.io.into_inner();
            io.release_hold();
            io.unread(&parts.read_buf);
            io
        };
        let parked = &conn.state.metrics.connections_parked;
        parked.fetch_add(1, SeqCst);
        let woken = tokio::select! {
            ready = std::future::poll_fn(|cx| tls.poll_readable(cx)) => Some(ready),
            _ = conn.activity.idle(idle) => None,
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        parked.fetch_sub(1, SeqCst);
        let closing = match woken {
            Some(ready) => {
                ready?;
                false
            }
            None => true,
        };
        if closing {
            // close_notify and FIN; a client that does not read cannot hold us.
            let _ = tokio::time::timeout(grace, tokio::io::AsyncWriteExt::shutdown(&mut tls)).await;
            return Ok(());
        }
    }
}

/// What a finished TLS handshake hands to the HTTP layer.
struct Accepted {
    tls: crate::tls_stream::TlsStream,
    sni: Option<Arc<str>>,
    alpn: Option<Version>,
}

/// The TLS handshake of a client connection, within `timeout`. The config
/// (its cipher suite order) is chosen once the ClientHello is read.
async fn handshake(
    server_tls: &crate::tls::ServerTls,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<Accepted> {
    let accept =
        crate::tls_stream::accept(stream, |hello| server_tls.for_client(hello.cipher_suites()));
    let accepted = match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    let tls = accepted.stream;
    let sni = accepted.sni.map(Arc::from);
    let alpn = match tls.alpn_protocol() {
        Some(b"http/1.1") => Some(Version::Http1),
        Some(b"h2") => Some(Version::Http2),
        _ => None,
    };
    Some(Accepted { tls, sni, alpn })
}

/// Serves one client connection.
///
/// An idle keep-alive connection costs what this task holds, so the task
/// itself stays small (~1 KB): the handshake runs in its own box, freed once
/// it is done, and the hyper connection, which owns the TLS stream, lives in
/// another box of its exact size. Inline, the task was sized for the largest
/// of its states (measured in docs/performance.md: ~0.9 KiB per connection).
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listening: Arc<Listening>,
    name: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
    _guard: ConnGuard,
) {
    let _ = stream.set_nodelay(true);
    let idle = listening.idle_timeout;
    let grace = listening.handshake_timeout;
    let result: Result<(), BoxError> = match &listening.tls {
        None => {
            let conn = conn_info(&listening, name, peer, None);
            let mut connection = Box::pin(
                listening
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service!(conn)),
            );
            drive!(connection, conn.activity, idle, grace, shutdown, None).0
        }
        Some(server_tls) => {
            let Some(Accepted { tls, sni, alpn }) =
                Box::pin(handshake(server_tls, stream, peer, grace)).await
            else {
                return;
            };
            let conn = conn_info(&listening, name, peer, sni);
            match alpn {
                Some(Version::Http1) => {
                    serve_http1_tls(&listening, &conn, tls, idle, grace, &mut shutdown).await
                }
                Some(Version::Http2) => {
                    let mut connection = Box::pin(
                        listening
                            .http2
                            .serve_connection(TokioIo::new(tls), service!(conn)),
                    );
                    drive!(connection, conn.activity, idle, grace, shutdown, None)
                        .0
                        .map_err(Into::into)
                }
                None => {
                    let mut connection = Box::pin(
                        listening
                            .builder
                            .serve_connection_with_upgrades(TokioIo::new(tls), service!(conn)),
                    );
                    drive!(connection, conn.activity, idle, grace, shutdown, None).0
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
