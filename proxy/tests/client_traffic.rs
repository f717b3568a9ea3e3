//! Client-facing settings (`clientTraffic`): the access log, X-Forwarded-For with
//! trusted hops, idle timeouts and the connection limit, over real sockets.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meshgate_proxy::access_log::AccessLog;
use meshgate_proxy::demo::spawn_echo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn echo_gateway(client_traffic: &str, echo: std::net::SocketAddr) -> String {
    let route = tagged_route(
        "echo",
        "[{path: {value: /}}]",
        "echo",
        "    hostnames: [a.test]\n",
    );
    gateway_yaml_with_client(&http_listener("http", 80), &route, client_traffic)
        + &service_yaml("echo", echo, true)
}

async fn start_logged(yaml: &str) -> (meshgate_proxy::runtime::Running, CaptureLog) {
    let log = CaptureLog::default();
    let sink = log.clone();
    let proxy = start_yaml_with(yaml, &["http"], move |o| {
        o.access_log = AccessLog::new(sink)
    })
    .await;
    (proxy, log)
}

async fn log_lines(log: &CaptureLog, n: usize) -> Vec<Value> {
    assert!(
        eventually(Duration::from_secs(5), || async { log.lines().len() >= n }).await,
        "expected {n} access log lines, got {:?}",
        log.lines()
    );
    log.lines()
        .iter()
        .map(|l| {
            assert!(l.ends_with('\n') && l.matches('\n').count() == 1, "{l:?}");
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))
        })
        .collect()
}

#[tokio::test]
async fn access_log_lines_have_the_fields_and_no_secrets() {
    let echo = spawn_echo("echo").await.unwrap();
    let (proxy, log) = start_logged(&echo_gateway("{}", echo)).await;
    let addr = proxy.listener_addr("http").unwrap();

    let reply = send(
        addr,
        request("POST", "a.test", "/items/1?token=s3cr3t-query")
            .header("authorization", "Bearer s3cr3t-bearer")
            .header("cookie", "session=s3cr3t-cookie")
            .header("x-api-key", "s3cr3t-key")
            .header("x-request-id", "req-123")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let missing = get(addr, "b.test", "/nothing").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let lines = log_lines(&log, 2).await;
    for line in log.lines() {
        assert!(!line.contains("s3cr3t"), "secret in the access log: {line}");
    }
    let ok = lines.iter().find(|l| l["status"] == 200).expect("200 line");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["authority"], "a.test");
    assert_eq!(ok["path"], "/items/1");
    assert_eq!(ok["route"], "echo");
    assert_eq!(ok["upstream"], echo.to_string());
    assert_eq!(ok["request_id"], "req-123");
    assert_eq!(ok["flags"], Value::Null);
    assert_eq!(ok["bytes_in"], 5);
    assert_eq!(ok["bytes_out"], reply.body.len() as u64);
    assert_eq!(ok["client"], "127.0.0.1");
    assert_eq!(ok["listener"], "http");
    assert!(ok["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(ok["total_ms"].as_f64().unwrap() >= ok["upstream_ms"].as_f64().unwrap());
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));

    let nr = lines.iter().find(|l| l["status"] == 404).expect("404 line");
    assert_eq!(nr["flags"], "NR");
    assert_eq!(nr["route"], Value::Null);
    assert_eq!(nr["upstream"], Value::Null);
    assert_eq!(nr["upstream_ms"], Value::Null);
    assert_eq!(nr["authority"], "b.test");
    assert_eq!(nr["request_id"].as_str().unwrap().len(), 32, "{nr}");
    assert_eq!(nr["bytes_out"], missing.body.len() as u64);
}

#[tokio::test]
async fn access_log_can_be_turned_off() {
    let echo = spawn_echo("echo").await.unwrap();
    let (proxy, log) = start_logged(&echo_gateway("{accessLog: false}", echo)).await;
    let addr = proxy.listener_addr("http").unwrap();
    assert_eq!(get(addr, "a.test", "/").await.status, StatusCode::OK);
    assert_eq!(get(addr, "b.test", "/").await.status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(log.lines().is_empty(), "{:?}", log.lines());
}

#[tokio::test]
async fn trusted_hops_pick_the_client_and_the_peer_is_appended() {
    let echo = spawn_echo("echo").await.unwrap();
    // (numTrustedHops, X-Forwarded-For sent, client address expected)
    let cases: &[(u32, Option<&str>, &str)] = &[
        (0, Some("203.0.113.9, 198.51.100.7"), "127.0.0.1"),
        (1, Some("203.0.113.9, 198.51.100.7"), "198.51.100.7"),
        (2, Some("203.0.113.9, 198.51.100.7"), "203.0.113.9"),
        (2, Some("198.51.100.7"), "127.0.0.1"),
        (1, None, "127.0.0.1"),
        (1, Some("203.0.113.9, not-an-ip"), "127.0.0.1"),
    ];
    for &(hops, xff, expected) in cases {
        let (proxy, log) =
            start_logged(&echo_gateway(&format!("{{numTrustedHops: {hops}}}"), echo)).await;
        let addr = proxy.listener_addr("http").unwrap();
        let mut builder = request("GET", "a.test", "/");
        if let Some(xff) = xff {
            builder = builder.header("x-forwarded-for", xff);
        }
        let reply = send(addr, builder.body(Full::new(Bytes::new())).unwrap()).await;
        let seen: Value = reply.json().unwrap();
        let forwarded = seen["headers"]["x-forwarded-for"].as_str().unwrap();
        let appended = match xff {
            Some(xff) => format!("{xff}, 127.0.0.1"),
            None => "127.0.0.1".to_string(),
        };
        assert_eq!(forwarded, appended, "hops {hops}, xff {xff:?}");
        let line = &log_lines(&log, 1).await[0];
        assert_eq!(line["client"], expected, "hops {hops}, xff {xff:?}");
        proxy.shutdown(Duration::from_secs(1)).await;
    }
}

/// Sends one GET over an open HTTP/1.1 connection and returns the status.
async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
) -> Result<StatusCode, hyper::Error> {
    let response = sender
        .send_request(
            request("GET", host, "/")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

async fn open(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let echo = spawn_echo("echo").await.unwrap();
    let proxy = start_yaml(&echo_gateway("{idleTimeout: 300ms}", echo), &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    // A keep-alive connection stays usable while requests keep coming...
    let (mut sender, closed) = open(addr).await;
    for _ in 0..3 {
        assert_eq!(get_on(&mut sender, "a.test").await.unwrap(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and is closed by the proxy once idle for the timeout.
    tokio::time::timeout(Duration::from_secs(3), closed)
        .await
        .expect("idle connection closed by the proxy")
        .unwrap();

    // A connection that never sends a request is closed too.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut buf))
        .await
        .expect("silent connection closed by the proxy");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn max_connections_refuses_the_third_connection() {
    let echo = spawn_echo("echo").await.unwrap();
    let proxy = start_yaml(&echo_gateway("{maxConnections: 2}", echo), &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let (mut first, _t1) = open(addr).await;
    let (mut second, _t2) = open(addr).await;
    assert_eq!(get_on(&mut first, "a.test").await.unwrap(), StatusCode::OK);
    assert_eq!(get_on(&mut second, "a.test").await.unwrap(), StatusCode::OK);
    assert_eq!(
        metric(&proxy, "meshgate_active_connections").await,
        Some(2.0)
    );

    // The third is accepted and closed at once.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf))
        .await
        .expect("third connection closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(
        metric(&proxy, "meshgate_connections_rejected_total").await,
        Some(1.0)
    );

    // The first two keep working.
    assert_eq!(get_on(&mut first, "a.test").await.unwrap(), StatusCode::OK);
    assert_eq!(get_on(&mut second, "a.test").await.unwrap(), StatusCode::OK);

    // Once one closes, a new connection is served.
    drop(first);
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(&proxy, "meshgate_active_connections").await == Some(1.0)
        })
        .await
    );
    assert_eq!(get(addr, "a.test", "/").await.status, StatusCode::OK);
}
