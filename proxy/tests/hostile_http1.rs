//! Hostile HTTP/1.1 clients over real sockets: slowloris (headers and bodies
//! dribbled), idle-connection floods, connections above `maxConnections`, and
//! request smuggling attempts against a backend that records what it receives.
//!
//! The resource tests run the proxy binary as a child process so that its own
//! file descriptors and memory can be read from `/proc/<pid>`. Lines starting
//! with `FIGURE` are the measurements docs/reliability.md records.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::hostile::*;
use common::*;
use meshgate_proxy::demo::spawn_echo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Generous bound for "closed by a timeout" (hang detection, not a timing test).
const HANG: Duration = Duration::from_secs(8);

fn gateway(port: u16, client_traffic: &str, route_extra: &str, backend: SocketAddr) -> String {
    let route = tagged_route(
        "echo",
        "[{path: {value: /}}]",
        "echo",
        &format!("    hostnames: [a.test]\n{route_extra}"),
    );
    gateway_yaml_with_client(&http_listener("http", port), &route, client_traffic)
        + &service_yaml("echo", backend, true)
}

async fn child(name: &str, client_traffic: &str, route_extra: &str) -> (ChildProxy, SocketAddr) {
    let echo = spawn_echo("echo").await.unwrap();
    let addr = closed_port();
    let yaml = gateway(addr.port(), client_traffic, route_extra, echo);
    (ChildProxy::start(name, &yaml, addr).await, addr)
}

/// Writes `chunks` one by one with `gap` between them until the proxy closes
/// the connection; returns when it was closed (from the first write) and what
/// came back, or `None` if all chunks went out without a close.
async fn dribble(addr: SocketAddr, head: &[u8], chunk: &[u8], gap: Duration) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    let start = Instant::now();
    let mut reply = RawReply {
        bytes: Vec::new(),
        closed: false,
        elapsed: Duration::ZERO,
    };
    while start.elapsed() < HANG {
        let got = read_until_closed(&mut stream, gap).await;
        reply.bytes.extend(got.bytes);
        if got.closed {
            reply.closed = true;
            break;
        }
        if stream.write_all(chunk).await.is_err() {
            reply.closed = true;
            break;
        }
    }
    reply.elapsed = start.elapsed();
    reply
}

#[tokio::test]
async fn slowloris_headers_are_cut_at_the_header_timeout() {
    let (proxy, addr) = child("slow-headers", "{requestHeaderTimeout: 1s}", "").await;
    // One header line every 200 ms: the connection is never idle, but the
    // headers never complete.
    let reply = dribble(
        addr,
        b"GET / HTTP/1.1\r\nhost: a.test\r\n",
        b"x-slow: 1\r\n",
        Duration::from_millis(200),
    )
    .await;
    assert!(reply.closed, "still open after {:?}", reply.elapsed);
    // Closed without a response (hyper sends no 408 for a header timeout).
    assert_eq!(reply.text(), "");
    assert!(reply.elapsed >= Duration::from_millis(900), "{reply:?}");
    eprintln!("FIGURE slowloris headers: closed after {:?}", reply.elapsed);

    // The h2 preface dribbled one byte at a time is cut too.
    let reply = dribble(addr, b"P", b"R", Duration::from_millis(200)).await;
    assert!(
        reply.closed,
        "h2 preface dribble still open after {:?}",
        reply.elapsed
    );
    eprintln!(
        "FIGURE slowloris h2 preface: closed after {:?}",
        reply.elapsed
    );
    drop(proxy);
}

#[tokio::test]
async fn slowloris_body_is_cut_by_the_body_idle_timeout() {
    // No route timeout: only the client-side timeouts protect the proxy.
    let (proxy, addr) = child(
        "slow-body",
        "{requestHeaderTimeout: 1s, idleTimeout: 1s}",
        "",
    )
    .await;
    // A body byte every 1.5 s: each gap is longer than the idle timeout.
    let reply = dribble(
        addr,
        b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 100\r\n\r\nx",
        b"x",
        Duration::from_millis(1500),
    )
    .await;
    assert!(reply.closed, "still open after {:?}", reply.elapsed);
    assert_eq!(reply.statuses(), vec![408], "{}", reply.text());
    eprintln!(
        "FIGURE slowloris body (stalled): 408 after {:?}",
        reply.elapsed
    );

    // A body that keeps trickling (a byte every 200 ms) is bounded by the
    // route's request timeout.
    drop(proxy);
    let (proxy, addr) = child(
        "slow-body-2",
        "{requestHeaderTimeout: 1s, idleTimeout: 1s}",
        "    timeouts: {request: 2s}\n",
    )
    .await;
    let reply = dribble(
        addr,
        b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 100\r\n\r\nx",
        b"x",
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(reply.statuses(), vec![504], "{}", reply.text());
    eprintln!(
        "FIGURE slowloris body (trickle): 504 after {:?}",
        reply.elapsed
    );
    drop(proxy);
}

#[tokio::test]
async fn idle_connection_flood_is_bounded_and_others_are_served() {
    let (proxy, addr) = child(
        "idle-flood",
        "{requestHeaderTimeout: 1s, idleTimeout: 1s}",
        "",
    )
    .await;
    // Warm up (upstream pool, first allocations), then take the baseline.
    let _ = Probe::run(addr, "a.test", 20).await;
    let base_fds = proxy.fds();
    let base_rss = proxy.rss_kib();

    const FLOOD: usize = 1000;
    let mut idle = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Half say nothing, half send an incomplete request line.
        if i % 2 == 0 {
            let _ = s.write_all(b"GET /").await;
        }
        idle.push(s);
    }
    let peak_fds = proxy.fds();
    let peak_rss = proxy.rss_kib();
    let probe = Probe::run(addr, "a.test", 200).await;
    probe.report("idle flood (1000 idle connections): other clients");
    assert_eq!(probe.errors, 0, "other clients failed during the flood");

    // Every idle connection is closed by the proxy.
    let start = Instant::now();
    let closed = futures::future::join_all(
        idle.iter_mut()
            .map(|s| async move { read_until_closed(s, HANG).await.closed }),
    )
    .await;
    assert!(closed.iter().all(|c| *c), "an idle connection stayed open");
    let all_closed = start.elapsed();
    drop(idle);
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.fds() <= base_fds + 5
        })
        .await,
        "fds did not come back: {} (baseline {base_fds})",
        proxy.fds()
    );
    eprintln!(
        "FIGURE idle flood: fds {base_fds} -> {peak_fds} (peak) -> {} ; RSS {base_rss} KiB -> {peak_rss} KiB; all closed within {all_closed:?} after the probe",
        proxy.fds()
    );
    assert!(peak_fds <= base_fds + FLOOD + 10, "{peak_fds}");
    assert!(
        peak_rss < base_rss + 64 * 1024,
        "{base_rss} -> {peak_rss} KiB"
    );
}

#[tokio::test]
async fn connections_above_the_limit_keep_fds_bounded() {
    let (proxy, addr) = child(
        "conn-limit",
        "{requestHeaderTimeout: 1s, idleTimeout: 1s, maxConnections: 50}",
        "",
    )
    .await;
    let _ = Probe::run(addr, "a.test", 10).await;
    let base_fds = proxy.fds();

    // 400 connections at once, each sending the start of a request.
    let mut attack = Vec::new();
    for _ in 0..400 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\n").await;
        attack.push(s);
    }
    let peak_fds = proxy.fds();
    // Of those, at most 50 are being served; the rest are closed at once.
    assert!(peak_fds <= base_fds + 50 + 5, "{base_fds} -> {peak_fds}");
    // Clients arriving while the attack holds every slot are refused too: the
    // limit protects the process, not fairness (measured, not asserted).
    let during = Probe::run(addr, "a.test", 20).await;
    during.report("maxConnections 50 while 400 attack connections are open");
    let closed = futures::future::join_all(
        attack
            .iter_mut()
            .map(|s| async move { read_until_closed(s, HANG).await }),
    )
    .await;
    let at_once = closed
        .iter()
        .filter(|r| r.closed && r.elapsed < Duration::from_millis(500))
        .count();
    assert!(
        closed.iter().all(|r| r.closed),
        "an attack connection stayed open"
    );
    assert!(at_once >= 350, "only {at_once} of 400 closed at once");
    eprintln!("FIGURE maxConnections 50, 400 attack connections: fds {base_fds} -> {peak_fds}, {at_once} closed at accept, the rest by the header timeout");

    // Once the header timeout has cut the held ones, other clients get in.
    let probe = Probe::run(addr, "a.test", 100).await;
    probe.report("after the connection-limit attack");
    assert_eq!(probe.errors, 0);
    drop(attack);
    let rejected = proxy_metric(&proxy, "meshgate_connections_rejected_total").await;
    assert!(rejected >= 350.0, "{rejected}");
}

async fn proxy_metric(proxy: &ChildProxy, series: &str) -> f64 {
    let text = get(proxy.admin, "admin", "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics"))
}

#[tokio::test]
async fn malformed_chunked_body_is_400_not_an_upstream_failure() {
    let recorder = Recorder::spawn().await;
    let route = tagged_route(
        "all",
        "[{path: {value: /}}]",
        "rec",
        "    hostnames: [a.test]\n",
    );
    let yaml = gateway_yaml(&http_listener("http", 80), &route)
        + &service_yaml("rec", recorder.addr, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    let reply = raw_exchange(
        addr,
        b"POST /x HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(reply.statuses(), vec![400], "{}", reply.text());
    assert!(
        reply.text().contains("x-meshgate-flags: BR"),
        "{}",
        reply.text()
    );
    assert!(reply.closed);
    assert!(
        recorder.seen().iter().all(|s| s.body.is_err()),
        "{:?}",
        recorder.seen()
    );
    assert_eq!(
        metric(&proxy, "meshgate_local_responses_total{flag=\"UC\"}").await,
        Some(0.0)
    );
}
