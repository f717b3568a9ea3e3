//! A constant-rate load generator for the outage tests and the soak script:
//! `rate` requests per second spread over a few connections (keep-alive, or a
//! new connection — and TLS handshake — every `per_connection` requests), with
//! every failed request recorded: its status and `x-meshgate-flags`, or the
//! connection/body error, and when it happened.
//!
//! A request succeeds when it gets a 2xx and its whole body arrives in time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::client::Tls;
use crate::proxy::FLAGS_HEADER;

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: String,
    pub path: String,
    /// Requests per second, all connections together.
    pub rate: u32,
    pub connections: usize,
    /// `HTTP_11` or `HTTP_2` (prior knowledge on plain TCP, ALPN `h2` with TLS).
    pub version: Version,
    pub tls: Option<Tls>,
    /// Open a new connection after this many requests (`None`: keep it).
    pub per_connection: Option<u32>,
    /// Longest time a request (and its body) may take.
    pub timeout: Duration,
}

impl LoadSpec {
    /// Plain HTTP/1.1 keep-alive load, 5 s timeout.
    pub fn http1(addr: SocketAddr, host: &str, path: &str, rate: u32, connections: usize) -> Self {
        LoadSpec {
            addr,
            host: host.to_string(),
            path: path.to_string(),
            rate,
            connections,
            version: Version::HTTP_11,
            tls: None,
            per_connection: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// One failed request.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// Since the load started.
    pub at: Duration,
    /// `503 NH`, `connect: ...`, `timeout`, ...
    pub what: String,
    /// How long the request took to fail (connecting included).
    pub took: Duration,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    pub ok: u64,
    pub failures: Vec<Failure>,
    pub elapsed: Duration,
}

impl Report {
    /// The failures whose description starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.failures
            .iter()
            .filter(|f| f.what.starts_with(prefix))
            .count()
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    ok: AtomicU64,
    failures: Mutex<Vec<Failure>>,
}

/// A running load; [`Load::stop`] ends it and reports.
pub struct Load {
    shared: Arc<Shared>,
    started: Instant,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(spec: LoadSpec) -> Load {
        let shared = Arc::new(Shared::default());
        let started = Instant::now();
        let connections = spec.connections.max(1);
        // Each connection sends at its share of the rate.
        let every = Duration::from_secs_f64(connections as f64 / f64::from(spec.rate.max(1)));
        let spec = Arc::new(spec);
        let tasks = (0..connections)
            .map(|n| {
                let (spec, shared) = (spec.clone(), shared.clone());
                // Spread the connections' ticks over one period.
                let offset = every.mul_f64(n as f64 / connections as f64);
                tokio::spawn(run_connection(spec, shared, started, every, offset))
            })
            .collect();
        Load {
            shared,
            started,
            tasks,
        }
    }

    /// Successful requests so far.
    pub fn ok(&self) -> u64 {
        self.shared.ok.load(Relaxed)
    }

    /// Failed requests so far.
    pub fn failures(&self) -> Vec<Failure> {
        lock(&self.shared.failures).clone()
    }

    /// Waits until `n` more requests have succeeded (false after `limit`).
    pub async fn served(&self, n: u64, limit: Duration) -> bool {
        let target = self.ok() + n;
        let deadline = Instant::now() + limit;
        while self.ok() < target {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops sending, lets requests in flight finish and reports.
    pub async fn stop(self) -> Report {
        self.shared.stop.store(true, Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        Report {
            ok: self.shared.ok.load(Relaxed),
            failures: lock(&self.shared.failures).clone(),
            elapsed: self.started.elapsed(),
        }
    }
}

fn lock(m: &Mutex<Vec<Failure>>) -> std::sync::MutexGuard<'_, Vec<Failure>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn run_connection(
    spec: Arc<LoadSpec>,
    shared: Arc<Shared>,
    started: Instant,
    every: Duration,
    offset: Duration,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    // A stalled request delays the next ones rather than bursting after it.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender: Option<Sender> = None;
    let mut used = 0u32;
    let failed = |what: String, since: Instant| {
        lock(&shared.failures).push(Failure {
            at: started.elapsed(),
            what,
            took: since.elapsed(),
        });
    };
    while !shared.stop.load(Relaxed) {
        ticks.tick().await;
        if shared.stop.load(Relaxed) {
            break;
        }
        let t0 = Instant::now();
        if spec.per_connection.is_some_and(|n| used >= n) {
            sender = None;
        }
        let current = match sender.take() {
            Some(s) if is_open(&s) => s,
            _ => {
                used = 0;
                match tokio::time::timeout(spec.timeout, connect(&spec)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        failed(e, t0);
                        continue;
                    }
                    Err(_) => {
                        failed("timeout: connect".into(), t0);
                        continue;
                    }
                }
            }
        };
        used += 1;
        let (result, current) =
            match tokio::time::timeout(spec.timeout, request(&spec, current)).await {
                Ok(r) => r,
                Err(_) => (Err("timeout".to_string()), None),
            };
        match result {
            Ok(()) => {
                shared.ok.fetch_add(1, Relaxed);
            }
            Err(what) => failed(what, t0),
        }
        sender = current;
    }
}

fn is_open(s: &Sender) -> bool {
    match s {
        Sender::H1(s) => !s.is_closed(),
        Sender::H2(s) => !s.is_closed(),
    }
}

async fn connect(spec: &LoadSpec) -> Result<Sender, String> {
    let tcp = TcpStream::connect(spec.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &spec.tls else {
        return handshake(TokioIo::new(tcp), spec.version == Version::HTTP_2).await;
    };
    let mut roots = rustls::RootCertStore::empty();
    for root in &tls.roots {
        roots.add(root.clone()).map_err(|e| format!("root: {e}"))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS config: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = tls.alpn.clone();
    let name =
        ServerName::try_from(tls.server_name.clone()).map_err(|e| format!("server name: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    handshake(TokioIo::new(stream), h2).await
}

async fn handshake<I>(io: I, h2: bool) -> Result<Sender, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if h2 {
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(connection);
        Ok(Sender::H2(sender))
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(connection);
        Ok(Sender::H1(sender))
    }
}

/// One request on `sender`; the sender back when the connection can be reused.
async fn request(spec: &LoadSpec, mut sender: Sender) -> (Result<(), String>, Option<Sender>) {
    let response = match &mut sender {
        Sender::H1(s) => {
            if s.ready().await.is_err() {
                return (Err("connection closed".into()), None);
            }
            let request = Request::get(spec.path.as_str())
                .header(http::header::HOST, spec.host.as_str())
                .body(Empty::new());
            match request {
                Ok(r) => s.send_request(r).await,
                Err(e) => return (Err(format!("request: {e}")), None),
            }
        }
        Sender::H2(s) => {
            if s.ready().await.is_err() {
                return (Err("connection closed".into()), None);
            }
            let scheme = if spec.tls.is_some() { "https" } else { "http" };
            let request = Request::get(format!("{scheme}://{}{}", spec.host, spec.path))
                .version(Version::HTTP_2)
                .body(Empty::new());
            match request {
                Ok(r) => s.send_request(r).await,
                Err(e) => return (Err(format!("request: {e}")), None),
            }
        }
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => return (Err(format!("request: {e}")), None),
    };
    let status = response.status();
    let flag = response
        .headers()
        .get(FLAGS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.into_body().collect().await;
    let result = match (status.is_success(), body) {
        (true, Ok(_)) => Ok(()),
        (false, _) => Err(format!(
            "{} {}",
            status.as_u16(),
            flag.as_deref().unwrap_or("-")
        )),
        (true, Err(e)) => Err(format!("body: {e}")),
    };
    let reusable = result.is_ok() || !status.is_success();
    (result, reusable.then_some(sender))
}
