//! WebSocket (HTTP/1.1 Upgrade) through the proxy, over real sockets.

mod common;

use std::net::SocketAddr;

use common::*;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server on 127.0.0.1 that echoes every message, prefixed.
async fn spawn_ws_echo() -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    let reply = match message {
                        Message::Text(t) => Message::text(format!("echo: {t}")),
                        Message::Binary(b) => Message::binary(b),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_messages_flow_both_ways() {
    let backend = spawn_ws_echo().await;
    let yaml = gateway_yaml(
        &http_listener("http", 80),
        &tagged_route("ws", "[{path: {value: /ws}}]", "ws", ""),
    ) + &service_yaml("ws", backend, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let tcp = TcpStream::connect(addr).await.unwrap();
    let request = "ws://chat.test/ws/room".into_client_request().unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(response.status(), 101);
    assert_eq!(
        response.headers().get("x-route").map(|v| v.as_bytes()),
        Some(&b"ws"[..])
    );

    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let reply = ws.next().await.expect("reply").expect("frame");
        assert_eq!(reply, Message::text(format!("echo: hello {i}")));
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let reply = ws.next().await.expect("reply").expect("frame");
    assert_eq!(reply.into_data().as_ref(), &big[..]);
    ws.close(None).await.unwrap();

    // Plain requests on the same route still work, and an upgrade to a dead
    // endpoint fails cleanly.
    let dead = closed_port();
    let yaml = gateway_yaml(
        &http_listener("http", 80),
        &tagged_route("ws", "[{path: {value: /ws}}]", "ws", ""),
    ) + &service_yaml("ws", dead, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let request = "ws://chat.test/ws".into_client_request().unwrap();
    let err = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect_err("no upstream");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 502);
            assert_eq!(
                response
                    .headers()
                    .get("x-meshgate-flags")
                    .map(|v| v.as_bytes()),
                Some(&b"UF"[..])
            );
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}
