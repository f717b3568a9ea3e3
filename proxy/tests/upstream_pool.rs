//! The HTTP/1.1 upstream pool (`h1pool`): keep-alive connections are reused
//! after every kind of response body, never after a body left unread, and a
//! connection the upstream closed while idle costs no request.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn backend_yaml(addr: SocketAddr) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: b, namespace: test}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: b-0, namespace: test, labels: {{kubernetes.io/service-name: b}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        addr.port(),
        addr.ip()
    )
}

async fn proxy_to(upstream: SocketAddr) -> meshgate_proxy::runtime::Running {
    let yaml = gateway_yaml(
        &http_listener("http", 80),
        &tagged_route("r", "[{path: {value: /}}]", "b", ""),
    ) + &backend_yaml(upstream);
    start_yaml(&yaml, &["http"]).await
}

/// An HTTP/1.1 upstream counting the connections it accepted. `/fixed` has a
/// `Content-Length`, `/chunked` is sent chunked, `/empty` is a 204, `/slow`
/// streams a chunk and then waits a long time for the rest.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service =
                    service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                        let response = match request.uri().path() {
                            "/chunked" => {
                                let (tx, rx) = tokio::sync::mpsc::channel(2);
                                tx.send(Bytes::from_static(b"chunk-1,")).await.ok();
                                tx.send(Bytes::from_static(b"chunk-2")).await.ok();
                                drop(tx);
                                Response::new(Either::Right(ChannelBody(rx)))
                            }
                            "/slow" => {
                                let (tx, rx) = tokio::sync::mpsc::channel(2);
                                tokio::spawn(async move {
                                    tx.send(Bytes::from(vec![b's'; 1000])).await.ok();
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                    tx.send(Bytes::from_static(b"late")).await.ok();
                                });
                                Response::new(Either::Right(ChannelBody(rx)))
                            }
                            "/empty" => {
                                let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
                                *r.status_mut() = StatusCode::NO_CONTENT;
                                r
                            }
                            path => Response::new(Either::Left(Full::new(Bytes::from(format!(
                                "fixed {path}"
                            ))))),
                        };
                        Ok::<_, Infallible>(response)
                    });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn one_connection_carries_every_kind_of_response_in_turn() {
    let (upstream, accepted) = counting_upstream().await;
    let running = proxy_to(upstream).await;
    let addr = running.listener_addr("http").expect("listener");
    for round in 0..5 {
        let reply = get(addr, "a.test", "/fixed").await;
        assert_eq!(reply.status, StatusCode::OK, "round {round}");
        assert_eq!(reply.text(), "fixed /fixed");
        let reply = get(addr, "a.test", "/chunked").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "chunk-1,chunk-2");
        let reply = get(addr, "a.test", "/empty").await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        assert_eq!(reply.text(), "");
        let reply = send(
            addr,
            request("HEAD", "a.test", "/fixed")
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "");
    }
    // Twenty requests, one after another, one upstream connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_open_connections_that_are_then_reused() {
    let (upstream, accepted) = counting_upstream().await;
    let running = proxy_to(upstream).await;
    let addr = running.listener_addr("http").expect("listener");
    for _ in 0..3 {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                tokio::spawn(async move {
                    let path = format!("/fixed-{i}");
                    let reply = get(addr, "a.test", &path).await;
                    assert_eq!(reply.status, StatusCode::OK);
                    assert_eq!(reply.text(), format!("fixed {path}"));
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("request task");
        }
    }
    // At most one connection per request in flight; later rounds reuse them.
    let opened = accepted.load(Ordering::SeqCst);
    assert!((1..=8).contains(&opened), "{opened} upstream connections");
}

#[tokio::test]
async fn a_body_left_unread_closes_its_connection_and_the_next_request_is_clean() {
    let (upstream, accepted) = counting_upstream().await;
    let running = proxy_to(upstream).await;
    let addr = running.listener_addr("http").expect("listener");
    // Read the head and the first chunk of /slow, then hang up.
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"ssss") {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("first chunk in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(client);
    // The rest of /slow must not become the next response.
    for _ in 0..3 {
        let reply = get(addr, "a.test", "/fixed").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "fixed /fixed");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// An upstream that answers one request per connection without saying so
/// (no `Connection: close`) and closes the connection 50 ms later, as a server
/// with a short keep-alive timeout does.
async fn closing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let body = format!("connection {n}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_costs_no_request() {
    let (upstream, accepted) = closing_upstream().await;
    let running = proxy_to(upstream).await;
    let addr = running.listener_addr("http").expect("listener");
    for i in 1..=4 {
        let reply = get(addr, "a.test", "/").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), format!("connection {i}"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_request_body_is_sent_in_full_on_a_reused_connection() {
    let upstream = serve(|request: http::Request<hyper::body::Incoming>| async move {
        let body = request.into_body().collect().await.map(|b| b.to_bytes());
        let len = body.map(|b| b.len()).unwrap_or(0);
        Response::new(Full::new(Bytes::from(len.to_string())))
    })
    .await;
    let running = proxy_to(upstream).await;
    let addr = running.listener_addr("http").expect("listener");
    for size in [0usize, 10, 100_000, 3] {
        let reply = send(
            addr,
            request("POST", "a.test", "/upload")
                .body(Full::new(Bytes::from(vec![b'x'; size])))
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), size.to_string());
    }
}
