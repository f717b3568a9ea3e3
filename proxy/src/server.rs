//! Listeners: one accept loop (tokio task) per listener, TLS termination for HTTPS,
//! and hyper's auto (HTTP/1.1 + HTTP/2) connection builder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use meshgate_crds::gateway::ListenerProtocol;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

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
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

/// The connection builder for the client settings of the first snapshot.
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

/// Starts the accept loop of one listener. It stops accepting when `shutdown`
/// changes, then waits for its connections to finish their requests.
pub fn spawn_listener(
    listener: TcpListener,
    spec: ListenerSpec,
    state: Arc<State>,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let client = state.snapshot.load().client.clone();
    let tls = match spec.protocol {
        ListenerProtocol::HTTP => None,
        ListenerProtocol::HTTPS => Some(TlsAcceptor::from(crate::tls::server_config(
            state.clone(),
            &spec.name,
            spec.tls13_only,
        )?)),
    };
    let listening = Arc::new(Listening {
        builder: connection_builder(&client),
        handshake_timeout: client.header_timeout,
        spec,
        state,
        tls,
    });
    Ok(tokio::spawn(accept_loop(listener, listening, shutdown)))
}

async fn accept_loop(
    listener: TcpListener,
    listening: Arc<Listening>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let name: Arc<str> = listening.spec.name.as_str().into();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let watcher = graceful.watcher();
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    listening.clone(),
                    name.clone(),
                    watcher,
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
    graceful.shutdown().await;
    tracing::debug!(listener = %name, "listener drained");
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listening: Arc<Listening>,
    name: Arc<str>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let scheme = if listening.tls.is_some() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let conn = Arc::new(ConnInfo {
        state: listening.state.clone(),
        listener: name,
        peer,
        scheme,
        listener_port: listening.spec.public_port,
    });
    let service = service_fn(move |request| proxy::serve(request, conn.clone()));
    let result = match &listening.tls {
        None => {
            let connection = listening
                .builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service);
            watcher.watch(connection).await
        }
        Some(acceptor) => {
            match tokio::time::timeout(listening.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let connection = listening
                        .builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service);
                    watcher.watch(connection).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
