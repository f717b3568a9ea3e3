//! Listeners follow reloads without a restart: added, moved to another port,
//! switched to HTTPS on the same port, removed — while the other listeners keep
//! serving — and a port that cannot be bound is retried while the old one serves.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::Full;
use meshgate_proxy::client::{self, Tls};
use meshgate_proxy::demo::spawn_echo;

const WAIT: Duration = Duration::from_secs(15);

fn route() -> String {
    tagged_route("all", "[]", "echo", "")
}

/// Whether `GET /` over plain HTTP to 127.0.0.1:`port` answers 200.
async fn serves(port: u16) -> bool {
    let addr = std::net::SocketAddr::from((LOCALHOST, port));
    let request = request("GET", "a.test", "/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    matches!(client::send(addr, request, None).await, Ok(r) if r.status == StatusCode::OK)
}

/// Whether nothing accepts connections on 127.0.0.1:`port`.
async fn refused(port: u16) -> bool {
    tokio::net::TcpStream::connect((LOCALHOST, port))
        .await
        .is_err()
}

#[tokio::test]
async fn listeners_are_added_moved_switched_and_removed_live() {
    meshgate_proxy::install_crypto_provider();
    let dir = TestDir::new("listeners-live");
    let echo = spawn_echo("echo").await.unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: cert, namespace: test}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {:?}\n  tls.key: {:?}\n",
        cert.cert.pem(),
        cert.signing_key.serialize_pem()
    );
    dir.write("backend.yaml", &service_yaml("echo", echo, true));
    dir.write("secret.yaml", &secret);
    let write = |extra: &str| {
        let listeners = format!("{}\n{extra}", http_listener("http", 80));
        dir.write("gateway.yaml", &gateway_yaml(&listeners, &route()));
    };
    write("");
    let proxy = start_dir(dir.path(), &["http"]).await;
    let main = proxy.listener_addr("http").unwrap();

    // Requests on the untouched listener run throughout; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if !serves(main.port()).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Added.
    let p = closed_port().port();
    write(&http_listener("extra", p));
    assert!(
        eventually(WAIT, || serves(p)).await,
        "added listener not bound"
    );
    assert!(config(&proxy)
        .await
        .to_string()
        .contains(&format!("127.0.0.1:{p}")));

    // Moved to another port: the new one serves, the old one is closed.
    let q = closed_port().port();
    write(&http_listener("extra", q));
    assert!(
        eventually(WAIT, || serves(q)).await,
        "moved listener not bound"
    );
    assert!(eventually(WAIT, || refused(p)).await, "old port still open");

    // Switched to HTTPS on the same port.
    write(&format!(
        "  - {{name: extra, port: {q}, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}"
    ));
    let tls = Tls {
        server_name: "a.test".to_string(),
        roots: vec![cert.cert.der().clone()],
        alpn: vec![b"h2".to_vec()],
    };
    let https_ok = || async {
        let request = request("GET", "a.test", "/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let addr = std::net::SocketAddr::from((LOCALHOST, q));
        matches!(client::send(addr, request, Some(&tls)).await, Ok(r) if r.status == StatusCode::OK)
    };
    assert!(
        eventually(WAIT, https_ok).await,
        "HTTPS not served on the same port"
    );
    assert!(
        !serves(q).await,
        "plain HTTP still served on a port switched to HTTPS"
    );

    // Removed.
    write("");
    assert!(
        eventually(WAIT, || refused(q)).await,
        "removed listener still open"
    );

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(
        sent.load(Ordering::Relaxed) > 20,
        "too little load to mean anything"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed on the untouched listener"
    );
}

#[tokio::test]
async fn a_port_in_use_is_retried_while_the_old_listener_serves() {
    let dir = TestDir::new("listeners-busy");
    let echo = spawn_echo("echo").await.unwrap();
    dir.write("backend.yaml", &service_yaml("echo", echo, true));
    let p = closed_port().port();
    let write = |port: u16| {
        let listeners = format!(
            "{}\n{}",
            http_listener("http", 80),
            http_listener("extra", port)
        );
        dir.write("gateway.yaml", &gateway_yaml(&listeners, &route()));
    };
    write(p);
    let proxy = start_dir(dir.path(), &["http"]).await;
    assert!(serves(p).await);

    // Another process holds the new port: the move fails, is counted, and the
    // listener keeps serving on its old port.
    let squatter = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let q = squatter.local_addr().unwrap().port();
    write(q);
    let counted =
        || async { metric(&proxy, "meshgate_listener_bind_failures_total").await >= Some(1.0) };
    assert!(eventually(WAIT, counted).await, "bind failure not counted");
    assert!(
        serves(p).await,
        "old listener stopped although the new port failed"
    );

    // Once the port is free, the retry binds it and the old port closes.
    drop(squatter);
    assert!(
        eventually(WAIT, || serves(q)).await,
        "port not bound after it was freed"
    );
    assert!(eventually(WAIT, || refused(p)).await, "old port still open");
}
