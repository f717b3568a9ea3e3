//! Large bodies are streamed through the proxy with bounded memory: 100 MB up to
//! a sink and 100 MB down from a generator, while the process RSS (proxy, backends
//! and client all live in this test process) grows by less than 48 MiB.
//!
//! The only test of its binary, so no other test's allocations blur the numbers.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const TOTAL: u64 = 100 * 1000 * 1000;
const CHUNK: usize = 64 * 1024;
const LIMIT: u64 = 48 * 1024 * 1024;

/// `total` bytes in chunks that share one buffer (no allocation per chunk).
struct Generated {
    chunk: Bytes,
    left: u64,
}

impl Generated {
    fn new(total: u64) -> Generated {
        Generated {
            chunk: Bytes::from(vec![b'x'; CHUNK]),
            left: total,
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Samples the RSS every 10 ms, keeping the highest value, until dropped.
struct PeakRss {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    fn start() -> PeakRss {
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        PeakRss { peak, task }
    }

    fn peak(&self) -> u64 {
        self.peak
            .fetch_max(rss_bytes(), Ordering::Relaxed)
            .max(rss_bytes())
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<Generated> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

/// Reads a response body frame by frame, counting its bytes.
async fn drain(mut body: hyper::body::Incoming) -> u64 {
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("response body").into_data() {
            n += data.len() as u64;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_up_and_down_in_bounded_memory() {
    // The sink counts what it receives without keeping it.
    let sink = serve(|request: http::Request<hyper::body::Incoming>| async move {
        let n = drain(request.into_body()).await;
        Response::new(http_body_util::Full::new(Bytes::from(n.to_string())))
    })
    .await;
    let source = serve(|_request| async move { Response::new(Generated::new(TOTAL)) }).await;
    let routes = [
        tagged_route("up", "[{path: {value: /upload}}]", "sink", ""),
        tagged_route("down", "[{path: {value: /download}}]", "source", ""),
    ]
    .concat();
    let yaml = gateway_yaml(&http_listener("http", 80), &routes)
        + &service_yaml("sink", sink, true)
        + &service_yaml("source", source, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let run = async {
        // Warm up: connections, pools and buffers exist before measuring.
        let mut client = connect(addr).await;
        let warm = client
            .send_request(
                request("POST", "a.test", "/upload")
                    .body(Generated::new(1 << 20))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(drain(warm.into_body()).await, 7);

        let before = rss_bytes();
        let peak = PeakRss::start();

        client.ready().await.unwrap();
        let up = client
            .send_request(
                request("POST", "a.test", "/upload")
                    .body(Generated::new(TOTAL))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(up.status(), StatusCode::OK);
        let received = up.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(received, TOTAL.to_string().as_bytes());

        client.ready().await.unwrap();
        let down = client
            .send_request(
                request("GET", "a.test", "/download")
                    .body(Generated::new(0))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(down.status(), StatusCode::OK);
        assert_eq!(drain(down.into_body()).await, TOTAL);

        let (after, peak) = (rss_bytes(), peak.peak());
        let growth = peak.saturating_sub(before);
        eprintln!(
            "RSS before {} KiB, after {} KiB, peak {} KiB",
            before / 1024,
            after / 1024,
            peak / 1024
        );
        assert!(
            growth < LIMIT,
            "RSS grew by {} KiB while streaming 2 × 100 MB",
            growth / 1024
        );
    };
    tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("streaming finished in time");
}
