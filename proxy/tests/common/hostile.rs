//! Helpers of the hostile-client tests: raw TCP exchanges, the proxy binary as a
//! child process (so its own file descriptors, RSS and CPU time can be read from
//! `/proc`), a backend that records what it receives, and latency probes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{closed_port, eventually, TestDir, LOCALHOST};

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// The proxy closed the connection (EOF or reset) before the deadline.
    pub closed: bool,
    /// Time from the end of the write to the close (or the deadline).
    pub elapsed: Duration,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status codes of every response in the bytes, in order.
    pub fn statuses(&self) -> Vec<u16> {
        let text = self.text();
        text.match_indices("HTTP/1.1 ")
            .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
            .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }
}

/// Writes `request` on a new connection to `addr`, then reads until the proxy
/// closes the connection or `deadline` passes; once one whole response (with a
/// Content-Length) has arrived, waits at most 300 ms more for the close.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], deadline: Duration) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let mut limit = deadline;
    let closed = loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&buf[..n]);
                if response_complete(&bytes) {
                    limit = limit.min(start.elapsed() + Duration::from_millis(300));
                }
            }
            Err(_) => break false,
        }
    };
    RawReply {
        bytes,
        closed,
        elapsed: start.elapsed(),
    }
}

/// Whether `bytes` hold a response head and the Content-Length bytes after it.
fn response_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..end].lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|len| bytes.len() >= end + 4 + len)
}

/// Reads from `stream` until EOF/reset or `deadline`.
pub async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> RawReply {
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        let left = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    RawReply {
        bytes,
        closed,
        elapsed: start.elapsed(),
    }
}

/// The `meshgate-proxy` binary serving a manifest directory, each listener on
/// the port its manifest names (free ports picked by the caller).
pub struct ChildProxy {
    child: tokio::process::Child,
    pub admin: SocketAddr,
    _dir: TestDir,
}

impl ChildProxy {
    /// Starts the binary on `yaml` and waits until `listen` accepts connections.
    pub async fn start(name: &str, yaml: &str, listen: SocketAddr) -> ChildProxy {
        let dir = TestDir::new(name);
        dir.write("all.yaml", yaml);
        let admin = closed_port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshgate-proxy"))
            .args([
                "--manifests",
                dir.path().to_str().expect("utf-8 path"),
                "--admin",
                &admin.to_string(),
                "--bind-ip",
                "127.0.0.1",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn meshgate-proxy");
        let up = eventually(Duration::from_secs(15), || async {
            TcpStream::connect(listen).await.is_ok()
        })
        .await;
        assert!(up, "proxy did not start listening on {listen}");
        ChildProxy {
            child,
            admin,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("proxy running")
    }

    /// Open file descriptors of the proxy process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// Resident set size of the proxy process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// CPU time (user + system) the proxy process has used.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the command name (which is in parentheses).
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    /// Whether the process is still running (did not crash).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A request as the recording backend parsed it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// `Err` when the body did not arrive complete.
    pub body: Result<Vec<u8>, String>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
}

/// A backend that records every request it receives (after reading the whole
/// body) and answers 200 with the request target as body.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl Recorder {
    pub async fn spawn() -> Recorder {
        let listener = tokio::net::TcpListener::bind((LOCALHOST, 0))
            .await
            .expect("bind");
        let recorder = Recorder {
            addr: listener.local_addr().expect("addr"),
            seen: Arc::default(),
            connections: Arc::default(),
        };
        let r = recorder.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                r.connections.fetch_add(1, Ordering::SeqCst);
                let seen = r.seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .map_err(|e| e.to_string());
                            let target = parts
                                .uri
                                .path_and_query()
                                .map_or(String::new(), |p| p.to_string());
                            seen.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                target: target.clone(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                                    .collect(),
                                body,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(target))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        recorder
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Latencies of `n` sequential GETs (each on a new connection) while an attack
/// runs; a request that fails counts as an error.
pub struct Probe {
    pub latencies: Vec<Duration>,
    pub errors: usize,
}

impl Probe {
    pub async fn run(addr: SocketAddr, host: &str, n: usize) -> Probe {
        let mut latencies = Vec::with_capacity(n);
        let mut errors = 0;
        for _ in 0..n {
            let start = Instant::now();
            let ok = tokio::time::timeout(
                Duration::from_secs(10),
                meshgate_proxy::client::get(addr, host, "/probe"),
            )
            .await;
            match ok {
                Ok(Ok(reply)) if reply.status == 200 => latencies.push(start.elapsed()),
                _ => errors += 1,
            }
        }
        Probe { latencies, errors }
    }

    /// The `q` quantile (0..=1) of the successful requests.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(i).copied().unwrap_or_default()
    }

    /// One line for the test output (the figures docs/reliability.md records).
    pub fn report(&self, what: &str) {
        eprintln!(
            "FIGURE {what}: {} ok, {} errors, p50 {:?}, p99 {:?}",
            self.latencies.len(),
            self.errors,
            self.quantile(0.5),
            self.quantile(0.99)
        );
    }
}
