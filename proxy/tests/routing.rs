//! Routing, filters, load balancing and error responses, over real sockets.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshgate_proxy::demo::spawn_echo;

const FLAGS: &str = "x-meshgate-flags";

/// (method, host, path and query, headers, route expected)
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
);

#[tokio::test]
async fn precedence_over_sockets() {
    let echo = spawn_echo("echo").await.unwrap();
    let routes = [
        tagged_route(
            "wild",
            "[{path: {value: /}}]",
            "echo",
            "    hostnames: [\"*.example.test\"]\n",
        ),
        tagged_route(
            "exact-host",
            "[{path: {value: /a}}]",
            "echo",
            "    hostnames: [api.example.test]\n",
        ),
        tagged_route("prefix", "[{path: {value: /p}}]", "echo", ""),
        tagged_route("prefix-long", "[{path: {value: /p/q}}]", "echo", ""),
        tagged_route(
            "exact",
            "[{path: {type: Exact, value: /p/q/r}}]",
            "echo",
            "",
        ),
        tagged_route(
            "regex",
            "[{path: {type: RegularExpression, value: \"/items/[0-9]+\"}}]",
            "echo",
            "",
        ),
        tagged_route("post", "[{path: {value: /m}, method: POST}]", "echo", ""),
        tagged_route(
            "header",
            "[{path: {value: /m}, headers: [{name: x-env, value: canary}]}]",
            "echo",
            "",
        ),
        tagged_route(
            "query",
            "[{path: {value: /m}, queryParams: [{name: v, value: \"2\"}]}]",
            "echo",
            "",
        ),
        tagged_route("plain", "[{path: {value: /m}}]", "echo", ""),
    ]
    .concat();
    let yaml =
        gateway_yaml(&http_listener("http", 80), &routes) + &service_yaml("echo", echo, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let cases: &[Case] = &[
        ("GET", "api.example.test", "/a/1", &[], Some("exact-host")),
        ("GET", "api.example.test", "/b", &[], Some("wild")),
        ("GET", "x.y.example.test", "/a", &[], Some("wild")),
        ("GET", "other.test", "/p/q/r", &[], Some("exact")),
        ("GET", "other.test", "/p/q/r/s", &[], Some("prefix-long")),
        ("GET", "other.test", "/p/qr", &[], Some("prefix")),
        ("GET", "other.test", "/items/42", &[], Some("regex")),
        (
            "POST",
            "other.test",
            "/m",
            &[("x-env", "canary")],
            Some("post"),
        ),
        (
            "GET",
            "other.test",
            "/m?v=2",
            &[("x-env", "canary")],
            Some("header"),
        ),
        ("GET", "other.test", "/m?v=2", &[], Some("query")),
        ("GET", "other.test", "/m", &[], Some("plain")),
        ("GET", "other.test", "/items/x", &[], None),
    ];
    for (method, host, target, headers, want) in cases {
        let mut builder = request(method, host, target);
        for (k, v) in *headers {
            builder = builder.header(*k, *v);
        }
        let reply = send(addr, builder.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(
            reply.header("x-route"),
            *want,
            "{method} {host}{target} {headers:?}"
        );
        let status = if want.is_some() {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(reply.status, status, "{method} {host}{target}");
    }
}

#[tokio::test]
async fn prefix_matches_on_segment_boundaries_only() {
    let echo = spawn_echo("echo").await.unwrap();
    let yaml = gateway_yaml(
        &http_listener("http", 80),
        &tagged_route("foo", "[{path: {value: /foo}}]", "echo", ""),
    ) + &service_yaml("echo", echo, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    for (target, matched) in [
        ("/foo", true),
        ("/foo/", true),
        ("/foo/bar", true),
        ("/foobar", false),
        ("/fo", false),
        ("/", false),
    ] {
        let reply = get(addr, "a.test", target).await;
        assert_eq!(
            reply.status == StatusCode::OK,
            matched,
            "{target}: {}",
            reply.status
        );
        if matched {
            assert_eq!(reply.json().unwrap()["path"], target);
        } else {
            assert_eq!(reply.header(FLAGS), Some("NR"));
        }
    }
}

#[tokio::test]
async fn filters() {
    let echo = spawn_echo("echo").await.unwrap();
    let routes = r#"
  - name: request-headers
    matches: [{path: {value: /rh}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: new}]
        add: [{name: x-add, value: added}]
        remove: [x-remove]
    backendRefs: [{name: echo, port: 80}]
  - name: response-headers
    matches: [{path: {value: /resp}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-resp, value: "yes"}]
        add: [{name: x-resp-add, value: "1"}]
        remove: [content-type]
    backendRefs: [{name: echo, port: 80}]
  - name: rewrite-prefix
    matches: [{path: {value: /v1/}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: internal.test
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /api/v1}
    backendRefs: [{name: echo, port: 80}]
  - name: rewrite-full
    matches: [{path: {type: Exact, value: /full}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}
    backendRefs: [{name: echo, port: 80}]
  - name: redirect
    matches: [{path: {value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: new.test
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
        statusCode: 308
  - name: redirect-defaults
    matches: [{path: {value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /here}}
"#;
    let yaml = gateway_yaml(&http_listener("http", 80), routes) + &service_yaml("echo", echo, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let reply = send(
        addr,
        request("GET", "a.test", "/rh")
            .header("x-set", "old")
            .header("x-add", "orig")
            .header("x-remove", "gone")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let seen = reply.json().unwrap();
    assert_eq!(seen["headers"]["x-set"], "new");
    assert_eq!(seen["headers"]["x-add"], "orig, added");
    assert!(seen["headers"].get("x-remove").is_none(), "{seen}");

    let reply = get(addr, "a.test", "/resp").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-resp"), Some("yes"));
    assert_eq!(reply.header("x-resp-add"), Some("1"));
    assert_eq!(reply.header("content-type"), None);

    let reply = get(addr, "a.test:8080", "/v1/users?id=7").await;
    let seen = reply.json().unwrap();
    assert_eq!(seen["path"], "/api/v1/users");
    assert_eq!(seen["query"], "id=7");
    assert_eq!(seen["headers"]["host"], "internal.test");
    assert_eq!(seen["headers"]["x-forwarded-host"], "a.test:8080");
    let reply = get(addr, "a.test", "/v1").await;
    assert_eq!(reply.json().unwrap()["path"], "/api/v1");

    let reply = get(addr, "a.test", "/full?keep=1").await;
    let seen = reply.json().unwrap();
    assert_eq!(
        (seen["path"].as_str(), seen["query"].as_str()),
        (Some("/replaced"), Some("keep=1"))
    );

    let reply = get(addr, "a.test", "/old/x/y?q=1").await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.header("location"),
        Some("https://new.test/new/x/y?q=1")
    );

    // No scheme or port given: the request's scheme and the listener's port.
    let reply = get(addr, "A.Test", "/moved/x").await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let want = format!("http://a.test:{}/here", addr.port());
    assert_eq!(reply.header("location"), Some(want.as_str()));
}

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop() {
    let echo = spawn_echo("echo").await.unwrap();
    let yaml = gateway_yaml(
        &http_listener("http", 80),
        &tagged_route("all", "[]", "echo", ""),
    ) + &service_yaml("echo", echo, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    let reply = send(
        addr,
        request("GET", "a.test", "/h")
            .header("connection", "x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic eA==")
            .header("x-forwarded-for", "203.0.113.7")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let headers = &reply.json().unwrap()["headers"];
    for gone in ["x-secret", "keep-alive", "proxy-authorization"] {
        assert!(headers.get(gone).is_none(), "{gone} forwarded: {headers}");
    }
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["host"], "a.test");
    let id = headers["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "{id}");

    let reply = send(
        addr,
        request("GET", "a.test", "/h")
            .header("x-request-id", "mine")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.json().unwrap()["headers"]["x-request-id"], "mine");

    // Request bodies are forwarded.
    let reply = send(
        addr,
        request("POST", "a.test", "/h")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.json().unwrap()["body"], "payload");
}

#[tokio::test]
async fn responses_are_streamed() {
    let backend = serve(|_request| async {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"first")).await;
            tokio::time::sleep(Duration::from_millis(800)).await;
            let _ = tx.send(Bytes::from_static(b"second")).await;
        });
        Response::new(ChannelBody(rx))
    })
    .await;
    let yaml = gateway_yaml(
        &http_listener("http", 80),
        &tagged_route("stream", "[]", "stream", ""),
    ) + &service_yaml("stream", backend, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let start = Instant::now();
    let response = client
        .get(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = start.elapsed();
    assert_eq!(first, Bytes::from_static(b"first"));
    assert!(
        first_at < Duration::from_millis(600),
        "first chunk after {first_at:?}: buffered?"
    );
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, Bytes::from_static(b"second"));
    assert!(start.elapsed() >= Duration::from_millis(700));
}

#[tokio::test]
async fn weighted_split_80_20() {
    let a = spawn_echo("a").await.unwrap();
    let b = spawn_echo("b").await.unwrap();
    let routes = "  - name: split\n    backendRefs: [{name: a, port: 80, weight: 80}, {name: b, port: 80, weight: 20}]\n";
    let yaml = gateway_yaml(&http_listener("http", 80), routes)
        + &service_yaml("a", a, true)
        + &service_yaml("b", b, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        let response = client
            .get(format!("http://{addr}/split").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        *counts
            .entry(json["backend"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let a = counts.get("a").copied().unwrap_or(0);
    let b = counts.get("b").copied().unwrap_or(0);
    assert_eq!(a + b, 1000);
    assert!(
        (750..=850).contains(&a),
        "a got {a} of 1000 (expected 800 ± 50), b got {b}"
    );
}

#[tokio::test]
async fn error_responses_carry_flags() {
    let slow = spawn_slow(Duration::from_secs(3)).await;
    let dead = closed_port();
    let echo = spawn_echo("echo").await.unwrap();
    let routes = [
        "  - {name: dead, matches: [{path: {value: /dead}}], backendRefs: [{name: dead, port: 80}]}\n",
        "  - {name: slow, matches: [{path: {value: /slow}}], timeouts: {request: 300ms}, backendRefs: [{name: slow, port: 80}]}\n",
        "  - {name: unready, matches: [{path: {value: /unready}}], backendRefs: [{name: unready, port: 80}]}\n",
        "  - {name: ok, matches: [{path: {value: /ok}}], backendRefs: [{name: echo, port: 80}]}\n",
    ]
    .concat();
    let yaml = gateway_yaml(&http_listener("http", 80), &routes)
        + &service_yaml("dead", dead, true)
        + &service_yaml("slow", slow, true)
        + &service_yaml("unready", echo, false)
        + &service_yaml("echo", echo, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let reply = get(addr, "a.test", "/nothing-here").await;
    assert_eq!(
        (reply.status, reply.header(FLAGS)),
        (StatusCode::NOT_FOUND, Some("NR"))
    );
    assert_eq!(reply.text(), "no route\n");

    let reply = get(addr, "a.test", "/dead").await;
    assert_eq!(
        (reply.status, reply.header(FLAGS)),
        (StatusCode::BAD_GATEWAY, Some("UF"))
    );

    let start = Instant::now();
    let reply = get(addr, "a.test", "/slow").await;
    assert_eq!(
        (reply.status, reply.header(FLAGS)),
        (StatusCode::GATEWAY_TIMEOUT, Some("UT"))
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "timed out after {:?}",
        start.elapsed()
    );

    let reply = get(addr, "a.test", "/unready").await;
    assert_eq!(
        (reply.status, reply.header(FLAGS)),
        (StatusCode::SERVICE_UNAVAILABLE, Some("NH"))
    );

    // Malformed requests get 4xx, and the proxy keeps serving.
    let reply = get(addr, "a.test", "/ok/%2e%2e/secret").await;
    assert_eq!(
        (reply.status, reply.header(FLAGS)),
        (StatusCode::BAD_REQUEST, Some("BR"))
    );
    let reply = get(addr, "", "/ok").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = get(addr, "a.test", "/ok/../ok/x").await;
    assert_eq!(
        (reply.status, reply.json().unwrap()["path"].as_str()),
        (StatusCode::OK, Some("/ok/x"))
    );

    let metrics = |series: &'static str| {
        let proxy = &proxy;
        async move { metric(proxy, series).await }
    };
    assert_eq!(
        metrics("meshgate_requests_total{route=\"dead\",code=\"5xx\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metrics("meshgate_requests_total{route=\"\",code=\"4xx\"}").await,
        Some(3.0)
    );
    assert_eq!(
        metrics("meshgate_local_responses_total{flag=\"UT\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn https_redirect_listener() {
    let yaml = gateway_yaml(
        "  - {name: http, port: 80, protocol: HTTP, httpsRedirect: {port: 8443}}",
        "    []",
    );
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    let reply = get(addr, "shop.test:80", "/cart?id=1").await;
    assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        reply.header("location"),
        Some("https://shop.test:8443/cart?id=1")
    );
}

#[tokio::test]
async fn slow_request_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = spawn_echo("echo").await.unwrap();
    let route = tagged_route("all", "[]", "echo", "");
    let gateway = gateway_yaml(&http_listener("http", 80), &route);
    let timeout = "spec:\n  clientTraffic: {requestHeaderTimeout: 300ms}\n";
    let yaml = gateway.replace("spec:\n", timeout) + &service_yaml("echo", echo, true);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    let closed_after = start.elapsed();
    assert!(
        closed_after < Duration::from_secs(2),
        "closed after {closed_after:?}"
    );
    // A complete request on a new connection is still served.
    assert_eq!(get(addr, "a.test", "/").await.status, StatusCode::OK);
}
