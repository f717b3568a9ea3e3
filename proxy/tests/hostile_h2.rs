//! Hostile HTTP/2 clients over real sockets (h2c with prior knowledge, and one
//! case over TLS with ALPN h2): rapid reset, CONTINUATION flood, SETTINGS and
//! PING floods, more streams than `maxConcurrentStreams`, and an HPACK bomb.
//!
//! The proxy runs as a child process so that its CPU time, RSS and open file
//! descriptors can be read from `/proc/<pid>`. Every test also checks that
//! well-behaved clients (HTTP/1.1 and HTTP/2, on other connections) are served
//! with no error while or right after the attack runs. Lines starting with
//! `FIGURE` are the measurements docs/reliability.md records.

mod common;

/// One attack at a time: each test measures the proxy's CPU time and the time
/// it takes to close a connection, which parallel floods on a 2-core machine
/// would stretch.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::h2raw::*;
use common::hostile::*;
use common::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgate_proxy::demo::spawn_echo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

fn gateway(port: u16, client_traffic: &str, backend: SocketAddr) -> String {
    let route = tagged_route(
        "echo",
        "[{path: {value: /}}]",
        "echo",
        "    hostnames: [a.test]\n",
    );
    gateway_yaml_with_client(&http_listener("http", port), &route, client_traffic)
        + &service_yaml("echo", backend, true)
}

/// The proxy binary in front of `backend` (the echo server if `None`).
async fn child(
    name: &str,
    client_traffic: &str,
    backend: Option<SocketAddr>,
) -> (ChildProxy, SocketAddr) {
    let backend = match backend {
        Some(b) => b,
        None => spawn_echo("echo").await.unwrap(),
    };
    let addr = closed_port();
    let yaml = gateway(addr.port(), client_traffic, backend);
    let proxy = ChildProxy::start(name, &yaml, addr).await;
    // Warm up (upstream pool, first allocations) before any baseline.
    let warm = Probe::run(addr, "a.test", 20).await;
    assert_eq!(warm.errors, 0);
    assert_eq!(h2_probe(addr, 20).await, (20, 0));
    (proxy, addr)
}

/// `n` GETs on one well-behaved HTTP/2 (h2c) connection: (200s, errors).
async fn h2_probe(addr: SocketAddr, n: usize) -> (usize, usize) {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .ok()?;
        tokio::spawn(conn);
        let mut ok = 0;
        for _ in 0..n {
            let request = http::Request::get("http://a.test/h2probe")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let Ok(response) = sender.send_request(request).await else {
                break;
            };
            let status = response.status();
            if response.into_body().collect().await.is_ok() && status == 200 {
                ok += 1;
            }
        }
        Some(ok)
    };
    match tokio::time::timeout(Duration::from_secs(20), attempt).await {
        Ok(Some(ok)) => (ok, n - ok),
        _ => (0, n),
    }
}

/// Both kinds of well-behaved clients; asserts they all got 200.
async fn probes(addr: SocketAddr, what: &str) {
    let (h1, h2) = tokio::join!(Probe::run(addr, "a.test", 50), h2_probe(addr, 50));
    h1.report(&format!("{what}: HTTP/1.1 clients"));
    eprintln!("FIGURE {what}: HTTP/2 client {} ok, {} errors", h2.0, h2.1);
    assert_eq!(h1.errors, 0, "{what}: HTTP/1.1 errors");
    assert_eq!(h2, (50, 0), "{what}: HTTP/2 errors");
}

/// CPU time, RSS and fds of the proxy at one point.
struct Usage {
    cpu: Duration,
    rss_kib: u64,
    fds: usize,
}

impl Usage {
    fn of(proxy: &ChildProxy) -> Usage {
        Usage {
            cpu: proxy.cpu(),
            rss_kib: proxy.rss_kib(),
            fds: proxy.fds(),
        }
    }
}

/// Asserts the proxy is alive, used at most `cpu` CPU time and `rss_mib` more
/// memory since `base`, and that its fds come back to the baseline (plus
/// `pooled` idle upstream connections); prints the figures.
async fn assert_bounded(
    proxy: &mut ChildProxy,
    base: &Usage,
    peak_rss_kib: u64,
    (cpu, rss_mib, pooled): (Duration, u64, usize),
    what: &str,
) {
    assert!(proxy.alive(), "{what}: the proxy died");
    let now = Usage::of(proxy);
    let peak_rss = peak_rss_kib.max(now.rss_kib);
    let used = now.cpu.saturating_sub(base.cpu);
    let p: &ChildProxy = proxy;
    let limit = base.fds + 2 + pooled;
    let fds_back = eventually(
        Duration::from_secs(5),
        move || async move { p.fds() <= limit },
    )
    .await;
    eprintln!(
        "FIGURE {what}: CPU {} ms, RSS {} -> {} KiB (+{} KiB), fds {} -> {}",
        used.as_millis(),
        base.rss_kib,
        peak_rss,
        peak_rss.saturating_sub(base.rss_kib),
        base.fds,
        proxy.fds()
    );
    assert!(used < cpu, "{what}: CPU {used:?}");
    assert!(
        peak_rss < base.rss_kib + rss_mib * 1024,
        "{what}: RSS {} -> {peak_rss} KiB",
        base.rss_kib
    );
    assert!(
        fds_back,
        "{what}: fds {} -> {} (not back)",
        base.fds,
        proxy.fds()
    );
}

/// Writes `bytes` in `chunk`-sized writes until done or the proxy closes;
/// returns the bytes written.
async fn write_until_closed<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], chunk: usize) -> usize {
    let mut written = 0;
    for part in bytes.chunks(chunk) {
        match tokio::time::timeout(Duration::from_secs(10), w.write_all(part)).await {
            Ok(Ok(())) => written += part.len(),
            _ => break,
        }
    }
    written
}

/// Sends the preface, empty SETTINGS and an ACK of the server's SETTINGS.
async fn open(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut out = handshake();
    out.extend(settings_ack());
    tcp.write_all(&out).await.unwrap();
    tcp
}

#[tokio::test]
async fn rapid_reset_is_cut_with_enhance_your_calm() {
    let _serial = SERIAL.lock().await;
    let (mut proxy, addr) = child("h2-rapid-reset", "{}", None).await;
    let base = Usage::of(&proxy);

    // 10,000 streams, each HEADERS (a complete GET) then RST_STREAM(CANCEL),
    // written back to back in batches of 100 pairs.
    const STREAMS: u32 = 10_000;
    let block = get_block("a.test", "/reset");
    let mut attack = Vec::new();
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        attack.extend(headers(id, &block, END_HEADERS | END_STREAM));
        attack.extend(rst_stream(id, CANCEL));
    }
    let pair = attack.len() / STREAMS as usize;
    let (mut r, mut w) = open(addr).await.into_split();
    let start = Instant::now();
    let (written, read) = tokio::join!(
        write_until_closed(&mut w, &attack, 100 * pair),
        read_frames(&mut r, Duration::from_secs(15), |f| f.kind == GOAWAY)
    );
    let elapsed = start.elapsed();
    let (last, code) = read.goaway().expect("no GOAWAY");
    assert_eq!(code, ENHANCE_YOUR_CALM);
    // Cut long before the end of the attack: the default limit is 20
    // remotely reset streams that the server had not accepted yet.
    assert!(last < 2 * STREAMS / 10, "last stream {last}");
    let closed = read_frames(&mut r, Duration::from_secs(5), |_| false).await;
    assert!(closed.closed, "connection left open after the GOAWAY");
    eprintln!(
        "FIGURE rapid reset: GOAWAY ENHANCE_YOUR_CALM after {elapsed:?}, last stream {last} ({} streams opened), {} of {} attack bytes written",
        last.div_ceil(2),
        written,
        attack.len()
    );
    let peak = proxy.rss_kib();
    probes(addr, "after rapid reset").await;
    assert_bounded(
        &mut proxy,
        &base,
        peak,
        (Duration::from_secs(2), 32, 0),
        "rapid reset",
    )
    .await;
}

/// A backend that answers the probes (`/probe`, `/h2probe`) at once and every
/// other request after `delay`, counting those.
async fn counting_slow_backend(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let addr = serve(move |request: http::Request<hyper::body::Incoming>| {
        let c = c.clone();
        async move {
            if !request.uri().path().contains("probe") {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
            }
            http::Response::new(Full::new(Bytes::from_static(b"slow")))
        }
    })
    .await;
    (addr, count)
}

#[tokio::test]
async fn paced_rapid_reset_costs_one_cancelled_request_per_stream() {
    let _serial = SERIAL.lock().await;
    // The variant the h2 limit does not see: each stream is accepted (and its
    // request sent upstream) before the client resets it. A PING after each
    // HEADERS, answered before the RST_STREAM is written, makes that so.
    let (backend, upstream_requests) = counting_slow_backend(Duration::from_secs(30)).await;
    let (mut proxy, addr) = child("h2-paced-reset", "{}", Some(backend)).await;
    let base = Usage::of(&proxy);
    const STREAMS: u32 = 2_000;
    let block = get_block("a.test", "/reset");
    let (mut r, mut w) = open(addr).await.into_split();
    let start = Instant::now();
    let mut goaway = None;
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        let mut out = headers(id, &block, END_HEADERS | END_STREAM);
        out.extend(ping((i as u64).to_be_bytes()));
        w.write_all(&out).await.unwrap();
        let read = read_frames(&mut r, Duration::from_secs(5), |f| {
            (f.kind == PING && f.flags & ACK != 0) || f.kind == GOAWAY
        })
        .await;
        if let Some(g) = read.goaway() {
            goaway = Some(g);
            break;
        }
        assert!(!read.closed, "closed at stream {id}");
        w.write_all(&rst_stream(id, CANCEL)).await.unwrap();
    }
    let elapsed = start.elapsed();
    // Not cut: every stream was a legitimate request while it lasted.
    assert_eq!(goaway, None);
    // Each reset request was dropped at once: the proxy's connections to the
    // backend (one per started request) are gone once the probes have run.
    let started = upstream_requests.load(Ordering::SeqCst);
    eprintln!(
        "FIGURE paced rapid reset: {STREAMS} streams in {elapsed:?}, {started} reached the backend, no GOAWAY"
    );
    assert!(started <= STREAMS as usize, "{started}");
    drop((r, w));
    let peak = proxy.rss_kib();
    probes(addr, "after paced rapid reset").await;
    assert_bounded(
        &mut proxy,
        &base,
        peak,
        // A debug build: under 1 ms per stream (a request started
        // upstream, then cancelled).
        (Duration::from_secs(10), 32, 0),
        "paced rapid reset (2000 streams)",
    )
    .await;
}

#[tokio::test]
async fn continuation_flood_is_cut_with_enhance_your_calm() {
    let _serial = SERIAL.lock().await;
    let (mut proxy, addr) = child("h2-continuation", "{}", None).await;
    let base = Usage::of(&proxy);
    // HEADERS without END_HEADERS, then CONTINUATION frames without it, each
    // with one more 1 KiB header, 100,000 frames (about 100 MiB) if nothing stops it.
    const FRAMES: usize = 100_000;
    let (mut r, mut w) = open(addr).await.into_split();
    let mut first = Vec::new();
    first.extend(headers(1, &get_block("a.test", "/"), 0));
    let mut field = Vec::new();
    literal_new_name(b"x-flood", &[b'f'; 1024], &mut field);
    let continuation = frame(CONTINUATION, 0, 1, &field);
    let mut attack = first.clone();
    for _ in 0..FRAMES {
        attack.extend_from_slice(&continuation);
    }
    let start = Instant::now();
    let (written, read) = tokio::join!(
        write_until_closed(&mut w, &attack, 64 * 1024),
        read_frames(&mut r, Duration::from_secs(15), |f| f.kind == GOAWAY)
    );
    let (last, code) = read.goaway().expect("no GOAWAY");
    assert_eq!((last, code), (0, ENHANCE_YOUR_CALM));
    eprintln!(
        "FIGURE CONTINUATION flood: GOAWAY ENHANCE_YOUR_CALM after {:?}, {} of {} attack bytes written",
        start.elapsed(),
        written,
        attack.len()
    );

    // Empty CONTINUATION frames (no header growth at all) are cut as well.
    let (mut r, mut w) = open(addr).await.into_split();
    let mut attack = first;
    let empty = frame(CONTINUATION, 0, 1, &[]);
    for _ in 0..FRAMES {
        attack.extend_from_slice(&empty);
    }
    let (_, read) = tokio::join!(
        write_until_closed(&mut w, &attack, 64 * 1024),
        read_frames(&mut r, Duration::from_secs(15), |f| f.kind == GOAWAY)
    );
    assert_eq!(read.goaway(), Some((0, ENHANCE_YOUR_CALM)));
    let peak = proxy.rss_kib();
    probes(addr, "after CONTINUATION flood").await;
    assert_bounded(
        &mut proxy,
        &base,
        peak,
        (Duration::from_secs(2), 32, 0),
        "CONTINUATION flood",
    )
    .await;
}

/// Writes `frames` copies of `one` without reading what comes back, until
/// the proxy stops reading (a write makes no progress for 2 s) or all are out.
async fn flood_without_reading(stream: &mut TcpStream, one: &[u8], frames: usize) -> usize {
    let batch: Vec<u8> = one.repeat(1000);
    let mut sent = 0;
    while sent < frames {
        match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&batch)).await {
            Ok(Ok(())) => sent += 1000,
            _ => break,
        }
    }
    sent
}

/// SETTINGS and PING floods: h2 answers each frame before reading the next, so
/// a client that never reads stalls its own connection (TCP backpressure)
/// instead of growing the proxy's buffers. Idle connections are closed at
/// `idleTimeout` even then.
async fn control_frame_flood(name: &str, what: &str, one: Vec<u8>, ack_kind: u8) {
    let (mut proxy, addr) = child(name, "{idleTimeout: 2s}", None).await;
    let base = Usage::of(&proxy);
    const FRAMES: usize = 1_000_000;
    let mut stream = open(addr).await;
    let start = Instant::now();
    let probes_during = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        probes(addr, &format!("during {what} flood")).await;
    };
    let (sent, ()) = tokio::join!(
        flood_without_reading(&mut stream, &one, FRAMES),
        probes_during
    );
    let flood_time = start.elapsed();
    let peak = proxy.rss_kib();
    let cpu = proxy.cpu().saturating_sub(base.cpu);
    eprintln!(
        "FIGURE {what} flood: {sent} frames written in {flood_time:?} before the proxy stopped reading (of {FRAMES}); CPU {} ms",
        cpu.as_millis()
    );
    assert!(sent < FRAMES, "the proxy read all {FRAMES} frames");
    // Still not reading: the proxy closes the connection (idle, no request)
    // although it cannot even write its GOAWAY.
    let closed = eventually(Duration::from_secs(60), || async {
        proxy.fds() <= base.fds
    })
    .await;
    let close_time = start.elapsed();
    // Now read what came back: the acks still in the socket buffers (the
    // proxy's own unsent ones, and its GOAWAY, were dropped with the connection).
    let read = read_frames(&mut stream, Duration::from_secs(5), |_| false).await;
    let acks = read
        .frames
        .iter()
        .filter(|f| f.kind == ack_kind && f.flags & ACK != 0)
        .count();
    eprintln!(
        "FIGURE {what} flood: connection closed by the proxy {close_time:?} after the start: {closed}; {acks} acks read afterwards, GOAWAY {:?}, EOF {}",
        read.goaway(),
        read.closed
    );
    assert!(
        closed,
        "{what} flood: connection still open after {close_time:?}"
    );
    // idleTimeout (2 s), then the 10 s grace for the client to close.
    assert!(
        close_time >= Duration::from_millis(11_500),
        "{close_time:?}"
    );
    assert!(read.closed);
    assert_bounded(
        &mut proxy,
        &base,
        peak,
        (Duration::from_secs(5), 32, 0),
        &format!("{what} flood"),
    )
    .await;
}

#[tokio::test]
async fn settings_flood_is_backpressured_and_closed_when_idle() {
    let _serial = SERIAL.lock().await;
    control_frame_flood(
        "h2-settings-flood",
        "SETTINGS",
        settings(&[(0x4, 65535)]),
        SETTINGS,
    )
    .await;
}

#[tokio::test]
async fn ping_flood_is_backpressured_and_closed_when_idle() {
    let _serial = SERIAL.lock().await;
    control_frame_flood("h2-ping-flood", "PING", ping(*b"pingpong"), PING).await;
}

#[tokio::test]
async fn streams_above_max_concurrent_streams_are_refused() {
    let _serial = SERIAL.lock().await;
    // Slow answers keep the first streams open.
    let (backend, _) = counting_slow_backend(Duration::from_millis(1500)).await;
    let (mut proxy, addr) = child("h2-streams", "{maxConcurrentStreams: 10}", Some(backend)).await;
    let base = Usage::of(&proxy);
    let block = get_block("a.test", "/many");
    // 50 complete GETs at once on one connection that allows 10.
    let mut stream = open(addr).await;
    let mut out = Vec::new();
    for i in 0..50u32 {
        out.extend(headers(2 * i + 1, &block, END_HEADERS | END_STREAM));
    }
    stream.write_all(&out).await.unwrap();
    let mut answered = std::collections::BTreeMap::new();
    let read = read_frames(&mut stream, Duration::from_secs(10), |f| {
        if f.kind == HEADERS || f.kind == RST_STREAM {
            answered.insert(f.stream, f.clone());
        }
        answered.len() == 50
    })
    .await;
    assert_eq!(read.goaway(), None);
    let ok: Vec<u32> = answered
        .values()
        .filter(|f| f.status() == Some(200))
        .map(|f| f.stream)
        .collect();
    let refused: Vec<u32> = answered
        .values()
        .filter(|f| f.rst_code() == Some(REFUSED_STREAM))
        .map(|f| f.stream)
        .collect();
    // The first 10 are served, the 40 above the limit refused (a client may
    // retry those: REFUSED_STREAM means "not processed").
    assert_eq!(ok, (0..10).map(|i| 2 * i + 1).collect::<Vec<_>>());
    assert_eq!(refused, (10..50).map(|i| 2 * i + 1).collect::<Vec<_>>());
    eprintln!("FIGURE max streams 10, 50 opened: 10 x 200, 40 x RST_STREAM(REFUSED_STREAM)");

    // A client that keeps opening streams over the limit is cut once 1024
    // refusals (hyper's max_local_error_reset_streams) have piled up.
    let mut stream = open(addr).await;
    let mut out = Vec::new();
    for i in 0..2000u32 {
        out.extend(headers(2 * i + 1, &block, END_HEADERS | END_STREAM));
    }
    let (mut r, mut w) = stream.split();
    let start = Instant::now();
    let (_, read) = tokio::join!(
        write_until_closed(&mut w, &out, 64 * 1024),
        read_frames(&mut r, Duration::from_secs(10), |f| f.kind == GOAWAY)
    );
    let refusals = read
        .frames
        .iter()
        .filter(|f| f.rst_code() == Some(REFUSED_STREAM))
        .count();
    let (_, code) = read.goaway().expect("no GOAWAY");
    assert_eq!(code, ENHANCE_YOUR_CALM);
    assert_eq!(refusals, 1024);
    eprintln!(
        "FIGURE max streams 10, 2000 opened: {refusals} x REFUSED_STREAM then GOAWAY ENHANCE_YOUR_CALM after {:?}",
        start.elapsed()
    );
    drop(stream);
    let peak = proxy.rss_kib();
    probes(addr, "after stream-count abuse").await;
    assert_bounded(
        &mut proxy,
        &base,
        peak,
        // The 10 slow requests served at once left 10 idle upstream
        // connections in the pool.
        (Duration::from_secs(2), 32, 10),
        "stream-count abuse",
    )
    .await;
}

/// A header block that adds one ~4 KiB header to the HPACK dynamic table,
/// then refers to it `refs` more times with one byte each (index 62).
fn hpack_bomb(refs: usize) -> Vec<u8> {
    let mut block = get_block("a.test", "/bomb");
    literal_new_name_indexed(b"x-bomb", &[b'b'; 4000], &mut block);
    block.extend(std::iter::repeat_n(0x80 | 62, refs));
    block
}

#[tokio::test]
async fn hpack_bomb_gets_431_or_goaway_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let (mut proxy, addr) = child("h2-hpack", "{}", None).await;
    let base = Usage::of(&proxy);

    // 20 references: about 80 KiB decoded from a 4 KiB block, over the 64 KiB
    // maxHeaderBytes. The stream gets 431 and the connection stays usable.
    let mut stream = open(addr).await;
    stream
        .write_all(&headers(1, &hpack_bomb(20), END_HEADERS | END_STREAM))
        .await
        .unwrap();
    let read = read_frames(&mut stream, Duration::from_secs(5), |f| {
        f.stream == 1 && (f.kind == HEADERS || f.kind == RST_STREAM)
    })
    .await;
    let answer = read.frames.last().expect("no answer").clone();
    assert_eq!(answer.status(), Some(431), "{answer:?}");
    // Then the stream is reset, and another request on the connection is served.
    stream
        .write_all(&headers(
            3,
            &get_block("a.test", "/after"),
            END_HEADERS | END_STREAM,
        ))
        .await
        .unwrap();
    let read = read_frames(&mut stream, Duration::from_secs(5), |f| {
        f.stream == 3 && f.kind == HEADERS
    })
    .await;
    assert_eq!(read.goaway(), None);
    let rst: Vec<Option<u32>> = read
        .frames
        .iter()
        .filter(|f| f.stream == 1 && f.kind == RST_STREAM)
        .map(Frame::rst_code)
        .collect();
    eprintln!("FIGURE HPACK bomb (80 KiB decoded): 431 then RST_STREAM {rst:?} on stream 1");
    assert!(
        read.frames
            .iter()
            .any(|f| f.stream == 3 && f.kind == HEADERS),
        "{:?}",
        read.frames
    );

    // 12,000 references: about 48 MiB decoded from a 16 KiB frame. Decoding
    // stops at 4 x maxHeaderBytes and the connection is closed.
    let mut stream = open(addr).await;
    let start = Instant::now();
    stream
        .write_all(&headers(1, &hpack_bomb(12_000), END_HEADERS | END_STREAM))
        .await
        .unwrap();
    let read = read_frames(&mut stream, Duration::from_secs(5), |f| f.kind == GOAWAY).await;
    assert_eq!(read.goaway(), Some((0, ENHANCE_YOUR_CALM)));
    eprintln!(
        "FIGURE HPACK bomb (48 MiB decoded): GOAWAY ENHANCE_YOUR_CALM after {:?}",
        start.elapsed()
    );

    // 200 connections doing the same at once.
    let bomb = headers(1, &hpack_bomb(12_000), END_HEADERS | END_STREAM);
    let results = futures::future::join_all((0..200).map(|_| {
        let bomb = bomb.clone();
        async move {
            let mut stream = open(addr).await;
            let _ = stream.write_all(&bomb).await;
            read_frames(&mut stream, Duration::from_secs(10), |f| f.kind == GOAWAY)
                .await
                .goaway()
        }
    }))
    .await;
    assert!(
        results.iter().all(|g| *g == Some((0, ENHANCE_YOUR_CALM))),
        "{results:?}"
    );
    let peak = proxy.rss_kib();
    probes(addr, "after HPACK bombs").await;
    assert_bounded(
        &mut proxy,
        &base,
        peak,
        (Duration::from_secs(2), 32, 0),
        "HPACK bombs (1 + 200 connections)",
    )
    .await;
}

#[tokio::test]
async fn rapid_reset_over_tls_with_alpn_h2_is_cut_too() {
    let _serial = SERIAL.lock().await;
    meshgate_proxy::install_crypto_provider();
    let echo = spawn_echo("echo").await.unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let addr = closed_port();
    let listeners = format!(
        "  - name: https\n    port: {}\n    protocol: HTTPS\n    tls: {{certificateRefs: [{{name: cert}}]}}",
        addr.port()
    );
    let route = tagged_route("echo", "[]", "echo", "    hostnames: [a.test]\n");
    let yaml = gateway_yaml(&listeners, &route)
        + &service_yaml("echo", echo, true)
        + &format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: cert, namespace: test}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {:?}\n  tls.key: {:?}\n",
            generated.cert.pem(),
            generated.signing_key.serialize_pem()
        );
    let mut proxy = ChildProxy::start("h2-tls-reset", &yaml, addr).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connect = || async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        connector
            .connect(
                rustls::pki_types::ServerName::try_from("a.test").unwrap(),
                tcp,
            )
            .await
            .unwrap()
    };
    // Warm up with one TLS connection, then take the baseline.
    drop(connect().await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = Usage::of(&proxy);

    let tls = connect().await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut r, mut w) = tokio::io::split(tls);
    const STREAMS: u32 = 10_000;
    let block = get_block("a.test", "/reset");
    let mut attack = handshake();
    attack.extend(settings_ack());
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        attack.extend(headers(id, &block, END_HEADERS | END_STREAM));
        attack.extend(rst_stream(id, CANCEL));
    }
    let start = Instant::now();
    let (_, read) = tokio::join!(
        write_until_closed(&mut w, &attack, 4096),
        read_frames(&mut r, Duration::from_secs(15), |f| f.kind == GOAWAY)
    );
    let (last, code) = read.goaway().expect("no GOAWAY");
    assert_eq!(code, ENHANCE_YOUR_CALM);
    assert!(last < 2 * STREAMS / 10, "last stream {last}");
    eprintln!(
        "FIGURE rapid reset over TLS (ALPN h2): GOAWAY ENHANCE_YOUR_CALM after {:?}, last stream {last}",
        start.elapsed()
    );
    drop((r, w));
    let peak = proxy.rss_kib();
    assert_bounded(
        &mut proxy,
        &base,
        peak,
        (Duration::from_secs(2), 32, 0),
        "rapid reset over TLS",
    )
    .await;
}
