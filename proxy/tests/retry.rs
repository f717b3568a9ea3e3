//! Retries and request mirroring, over real sockets.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use meshgate_proxy::demo::spawn_echo;

/// A backend that answers 503 to its first `failures` requests, then 200.
async fn spawn_flaky(failures: usize, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let addr = serve(move |request: http::Request<hyper::body::Incoming>| {
        let counter = counter.clone();
        async move {
            let _ = request.into_body().collect().await;
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            let mut response = Response::new(Full::new(Bytes::from(format!("hit {n}"))));
            if n < failures {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            response
        }
    })
    .await;
    (addr, hits)
}

fn retry_route(name: &str, backend: &str, retry: &str) -> String {
    format!(
        "  - name: {name}\n    matches: [{{path: {{value: /{name}}}}}]\n    retry: {retry}\n    backendRefs: [{{name: {backend}, port: 80}}]\n"
    )
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: &'static str) -> StatusCode {
    let request = request(method, "a.test", path)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    send(addr, request).await.status
}

#[tokio::test]
async fn failing_first_attempts_are_retried() {
    let (flaky, hits) = spawn_flaky(2, Duration::ZERO).await;
    let (short, short_hits) = spawn_flaky(2, Duration::ZERO).await;
    let routes = retry_route(
        "twice",
        "flaky",
        "{attempts: 2, backoff: {baseInterval: 1ms}}",
    ) + &retry_route(
        "once",
        "short",
        "{attempts: 1, backoff: {baseInterval: 1ms}}",
    );
    let yaml = gateway_yaml(&http_listener("http", 80), &routes)
        + &service_yaml("flaky", flaky, true)
        + &service_yaml("short", short, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let reply = get(addr, "a.test", "/twice").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hit 2");
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    // One retry is not enough for two failures: the last answer is passed on.
    assert_eq!(call(addr, "GET", "/once", "").await, 503);
    assert_eq!(short_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_endpoint() {
    let echo = spawn_echo("live").await.unwrap();
    let dead = closed_port();
    // One Service, two EndpointSlices: a dead endpoint and a live one.
    let services = service_yaml("mixed", echo, true)
        + &format!(
            r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: mixed-2, namespace: test, labels: {{kubernetes.io/service-name: mixed}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
"#,
            port = dead.port()
        );
    let routes = retry_route(
        "r",
        "mixed",
        "{attempts: 1, retryOn: {triggers: [connect-failure]}, backoff: {baseInterval: 1ms}}",
    );
    let proxy = start_yaml(
        &(gateway_yaml(&http_listener("http", 80), &routes) + &services),
        &["http"],
    )
    .await;
    let addr = proxy.listener_addr("http").unwrap();
    for i in 0..10 {
        // A POST too: a connect failure means nothing was sent.
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        assert_eq!(
            call(addr, method, "/r", "payload").await,
            200,
            "{method} {i}"
        );
    }
}

#[tokio::test]
async fn a_sent_body_is_retried_only_for_idempotent_methods() {
    let (backend, hits) = spawn_flaky(usize::MAX, Duration::ZERO).await;
    let routes = retry_route(
        "r",
        "b",
        "{attempts: 2, retryOn: {triggers: [5xx]}, backoff: {baseInterval: 1ms}}",
    );
    let yaml =
        gateway_yaml(&http_listener("http", 80), &routes) + &service_yaml("b", backend, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    assert_eq!(call(addr, "POST", "/r", "not twice").await, 503);
    assert_eq!(hits.swap(0, Ordering::SeqCst), 1, "POST sent once");
    assert_eq!(call(addr, "PUT", "/r", "idempotent").await, 503);
    assert_eq!(hits.swap(0, Ordering::SeqCst), 3, "PUT retried twice");

    // A body too large to keep is streamed and never retried, even for PUT.
    let big = Bytes::from(vec![b'x'; 100 * 1024]);
    let request = request("PUT", "a.test", "/r").body(Full::new(big)).unwrap();
    assert_eq!(send(addr, request).await.status, 503);
    assert_eq!(hits.swap(0, Ordering::SeqCst), 1, "large PUT sent once");
}

#[tokio::test]
async fn the_budget_caps_concurrent_retries() {
    let (backend, hits) = spawn_flaky(usize::MAX, Duration::from_millis(200)).await;
    let routes = retry_route(
        "r",
        "b",
        "{attempts: 3, retryOn: {triggers: [5xx]}, backoff: {baseInterval: 1ms}, budget: {percent: 0, minRetryConcurrency: 1}}",
    );
    let yaml =
        gateway_yaml(&http_listener("http", 80), &routes) + &service_yaml("b", backend, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let calls: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { call(addr, "GET", "/r", "").await }))
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), 503);
    }
    // 5 first attempts, and the retries of the one request holding the budget's
    // single permit; without the budget it would be 5 × 4 = 20.
    let n = hits.load(Ordering::SeqCst);
    assert!((6..=8).contains(&n), "{n} upstream attempts");
}

#[tokio::test]
async fn requests_are_mirrored() {
    let echo = spawn_echo("main").await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let shadow = serve(move |request: http::Request<hyper::body::Incoming>| {
        let record = record.clone();
        async move {
            let path = request.uri().path().to_string();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            record
                .lock()
                .unwrap()
                .push(format!("{path} {}", String::from_utf8_lossy(&body)));
            Response::new(Full::new(Bytes::from_static(b"ignored")))
        }
    })
    .await;
    let routes = "  - name: m\n    matches: [{path: {value: /m}}]\n    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}}}]\n    backendRefs: [{name: main, port: 80}]\n  - name: none\n    matches: [{path: {value: /none}}]\n    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, percent: 0}}]\n    backendRefs: [{name: main, port: 80}]\n";
    let yaml = gateway_yaml(&http_listener("http", 80), routes)
        + &service_yaml("main", echo, true)
        + &service_yaml("shadow", shadow, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    for i in 0..5 {
        let request = request("POST", "a.test", &format!("/m/{i}"))
            .body(Full::new(Bytes::from(format!("body {i}"))))
            .unwrap();
        let reply = send(addr, request).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json().unwrap()["backend"], "main");
        assert_eq!(call(addr, "POST", "/none", "x").await, 200);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            seen.lock().unwrap().len() >= 5
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let want: Vec<String> = (0..5).map(|i| format!("/m/{i} body {i}")).collect();
    assert_eq!(seen, want);
}
