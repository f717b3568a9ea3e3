//! CR/LF and NUL injection through everything that puts client-controlled or
//! configured values into headers (redirect Location, URL rewrites, header
//! modifiers, X-Forwarded-Host), oversized headers, and invalid UTF-8 in the
//! path, query, header values and Host: each a 4xx (never a 5xx, never a
//! crash), and the proxy keeps serving.
//!
//! Oversized bodies (413 while streaming, with the requestLimits policy) are in
//! `proxy/tests/policies.rs` (`request_limits_413_while_streaming_and_431`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::h2raw;
use common::hostile::*;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgate_proxy::runtime::Running;
use tokio::io::AsyncWriteExt;

const DEADLINE: Duration = Duration::from_secs(3);

/// Good routes, and routes whose filters hold CR, LF or NUL (each must be left
/// out with a configuration error naming it; their paths then fall to `plain`).
const ROUTES: &str = r#"  - name: redirect
    matches: [{path: {value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - name: rewrite
    matches: [{path: {value: /v1}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}}
    backendRefs: [{name: rec, port: 80}]
  - name: keyed
    matches: [{path: {value: /key}}]
    backendRefs: [{name: rec, port: 80}]
  - name: plain
    matches: [{path: {value: /}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-static, value: "fixed value"}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-route, value: plain}]}
    backendRefs: [{name: rec, port: 80}]
  - name: bad-set
    matches: [{path: {value: /bad-set}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: "a\r\nSet-Cookie: injected=1"}]}
    backendRefs: [{name: rec, port: 80}]
  - name: bad-add
    matches: [{path: {value: /bad-add}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-a, value: "a\nb"}]}
    backendRefs: [{name: rec, port: 80}]
  - name: bad-nul
    matches: [{path: {value: /bad-nul}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: "a\0b"}]}
    backendRefs: [{name: rec, port: 80}]
  - name: bad-response
    matches: [{path: {value: /bad-response}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-a, value: "a\rb"}]}
    backendRefs: [{name: rec, port: 80}]
  - name: bad-redirect-host
    matches: [{path: {value: /bad-redirect-host}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: "b.example\r\nSet-Cookie: injected=1"}
  - name: bad-rewrite-host
    matches: [{path: {value: /bad-rewrite-host}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: "b.example\nx-injected: 1"}
    backendRefs: [{name: rec, port: 80}]
  - name: bad-rewrite-path
    matches: [{path: {value: /bad-rewrite-path}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: "/x\r\nx-injected: 1"}}
    backendRefs: [{name: rec, port: 80}]
"#;

async fn setup() -> (Running, SocketAddr, Recorder) {
    let recorder = Recorder::spawn().await;
    let policy = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: test}\nstringData: {ci: key-of-ci}\n---\napiVersion: meshgate.io/v1alpha1\nkind: ApiPolicy\nmetadata: {name: keys, namespace: test, creationTimestamp: \"2026-01-01T00:00:00Z\"}\nspec:\n  targetRefs: [{group: meshgate.io, kind: ApiGateway, name: gw, sectionName: keyed}]\n  authentication:\n    apiKey:\n      credentialRefs: [{name: keys}]\n      extractFrom: [{headers: [x-api-key]}]\n";
    let yaml = format!(
        "{}{}{policy}",
        gateway_yaml(&http_listener("http", 80), ROUTES),
        service_yaml("rec", recorder.addr, true)
    );
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    (proxy, addr, recorder)
}

/// The values of header `name` in the head of a raw response.
fn response_header(reply: &RawReply, name: &str) -> Vec<String> {
    let text = reply.text();
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

#[tokio::test]
async fn crlf_in_the_path_stays_encoded_in_redirects_and_rewrites() {
    let (_proxy, addr, recorder) = setup().await;
    let port = addr.port();
    // Redirect: the Location is built from the request path and query.
    for (target, location) in [
        (
            "/old/%0d%0aSet-Cookie:injected=1?q=%0D%0Ax-injected:1",
            format!("http://a.example:{port}/new/%0d%0aSet-Cookie:injected=1?q=%0D%0Ax-injected:1"),
        ),
        (
            "/old/%0aSet-Cookie:injected=1",
            format!("http://a.example:{port}/new/%0aSet-Cookie:injected=1"),
        ),
        (
            "/old/%00x",
            // An encoded NUL in the path is refused before any redirect.
            String::new(),
        ),
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: a.example\r\n\r\n");
        let reply = raw_exchange(addr, request.as_bytes(), DEADLINE).await;
        if location.is_empty() {
            assert_eq!(reply.statuses(), [400], "{target}: {}", reply.text());
            assert!(response_header(&reply, "location").is_empty());
            continue;
        }
        assert_eq!(reply.statuses(), [301], "{target}: {}", reply.text());
        assert_eq!(response_header(&reply, "location"), [location], "{target}");
        assert!(response_header(&reply, "set-cookie").is_empty());
        assert!(response_header(&reply, "x-injected").is_empty());
    }
    // The same over HTTP/2.
    let mut h2 = h2_connect(addr).await;
    let response = h2
        .send_request(
            Request::get("http://a.example/old/%0d%0aSet-Cookie:injected=1")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 301);
    assert_eq!(
        response
            .headers()
            .get_all("location")
            .iter()
            .collect::<Vec<_>>(),
        [format!("http://a.example:{port}/new/%0d%0aSet-Cookie:injected=1").as_str()]
    );
    assert!(response.headers().get("set-cookie").is_none());

    // URL rewrite: the backend gets the escapes as they were, no extra header.
    recorder.clear();
    let reply = raw_exchange(
        addr,
        b"GET /v1/%0d%0aSet-Cookie:injected=1?q=%0a HTTP/1.1\r\nHost: a.example\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/api/%0d%0aSet-Cookie:injected=1?q=%0a");
    assert!(seen[0].header("set-cookie").is_empty());
}

#[tokio::test]
async fn control_characters_in_configured_header_values_are_compile_errors() {
    let (proxy, addr, recorder) = setup().await;
    let errors = config(&proxy).await["errors"].clone();
    let errors: Vec<(String, String)> = errors
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["object"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("route/bad-set", "invalid value for header \"x-a\""),
        ("route/bad-add", "invalid value for header \"x-a\""),
        ("route/bad-nul", "invalid value for header \"x-a\""),
        ("route/bad-response", "invalid value for header \"x-a\""),
        (
            "route/bad-redirect-host",
            "invalid redirect hostname \"b.example\\r\\nSet-Cookie: injected=1\"",
        ),
        (
            "route/bad-rewrite-host",
            "invalid hostname \"b.example\\nx-injected: 1\"",
        ),
        (
            "route/bad-rewrite-path",
            "invalid replacement path \"/x\\r\\nx-injected: 1\"",
        ),
    ];
    for (object, message) in expected {
        assert!(
            errors
                .iter()
                .any(|(o, m)| o == object && m.contains(message)),
            "{object}: {message:?} not in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    // The routes are left out: their paths fall to `plain`, which sends only its
    // own configured header.
    for path in [
        "/bad-set",
        "/bad-add",
        "/bad-nul",
        "/bad-response",
        "/bad-redirect-host",
        "/bad-rewrite-host",
        "/bad-rewrite-path",
    ] {
        recorder.clear();
        let reply = get(addr, "a.example", path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("x-route"), Some("plain"), "{path}");
        let seen = recorder.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].target, path);
        assert_eq!(seen[0].header("x-static"), ["fixed value"]);
        assert!(seen[0].header("x-a").is_empty());
        assert!(seen[0].header("set-cookie").is_empty());
        assert!(seen[0].header("x-injected").is_empty());
    }
}

#[tokio::test]
async fn x_forwarded_host_is_the_host_the_client_sent() {
    let (_proxy, addr, recorder) = setup().await;
    recorder.clear();
    let reply = raw_exchange(
        addr,
        b"GET /xfh HTTP/1.1\r\nHost: a.example:8080\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Host: evil2.example\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert_eq!(reply.statuses(), [200]);
    let seen = recorder.seen();
    assert_eq!(seen[0].header("x-forwarded-host"), ["a.example:8080"]);
    assert_eq!(seen[0].header("host"), ["a.example:8080"]);
    // A Host that is not visible ASCII never becomes X-Forwarded-Host.
    for request in [
        &b"GET /xfh HTTP/1.1\r\nHost: a.ex\xe9mple\r\n\r\n"[..],
        b"GET /xfh HTTP/1.1\r\nHost: a.example\xff\r\n\r\n",
        b"GET /xfh HTTP/1.1\r\nHost: a.example\x01\r\n\r\n",
    ] {
        recorder.clear();
        let reply = raw_exchange(addr, request, DEADLINE).await;
        assert_eq!(reply.statuses(), [400], "{}", reply.text());
        assert!(recorder.seen().is_empty());
    }
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let (_proxy, addr, recorder) = setup().await;
    recorder.clear();
    // One header value above the 64 KiB head limit (clientTraffic default).
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.example\r\nx-big: {}\r\n\r\n",
        "v".repeat(70 * 1024)
    );
    let reply = raw_exchange(addr, big.as_bytes(), DEADLINE).await;
    assert_eq!(reply.statuses(), [431], "{}", reply.text());
    assert!(reply.closed);
    // 101 small headers: above hyper's 100 header lines.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a.example\r\n");
    for i in 0..100 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let reply = raw_exchange(addr, many.as_bytes(), DEADLINE).await;
    assert_eq!(reply.statuses(), [431], "{}", reply.text());
    assert!(recorder.seen().is_empty());
    // 90 lines pass (the proxy adds five before the backend, whose own limit
    // is 100 lines too).
    let mut hundred = String::from("GET /ok HTTP/1.1\r\nHost: a.example\r\n");
    for i in 0..89 {
        hundred.push_str(&format!("x-h{i}: v\r\n"));
    }
    hundred.push_str("\r\n");
    let reply = raw_exchange(addr, hundred.as_bytes(), DEADLINE).await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());

    // HTTP/2: a header block above the advertised 64 KiB header list size.
    recorder.clear();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&h2raw::handshake()).await.unwrap();
    let mut block = h2raw::get_block("a.example", "/h2big");
    h2raw::literal_new_name(b"x-big", &vec![b'v'; 70 * 1024], &mut block);
    let pieces: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    let mut frames = h2raw::headers(1, pieces[0], h2raw::END_STREAM);
    for (i, piece) in pieces[1..].iter().enumerate() {
        let flags = if i + 2 == pieces.len() {
            h2raw::END_HEADERS
        } else {
            0
        };
        frames.extend(h2raw::frame(h2raw::CONTINUATION, flags, 1, piece));
    }
    tcp.write_all(&frames).await.unwrap();
    let read = h2raw::read_frames(&mut tcp, DEADLINE, |f| {
        f.stream == 1 && (f.kind == h2raw::HEADERS || f.kind == h2raw::RST_STREAM)
            || f.goaway().is_some()
    })
    .await;
    let outcome: Vec<String> = read
        .frames
        .iter()
        .filter(|f| f.stream == 1 || f.kind == h2raw::GOAWAY)
        .map(|f| match (f.status(), f.rst_code(), f.goaway()) {
            (Some(s), _, _) => format!("status {s}"),
            (_, Some(c), _) => format!("rst {c}"),
            (_, _, Some((_, c))) => format!("goaway {c}"),
            _ => format!("frame {}", f.kind),
        })
        .collect();
    assert_eq!(outcome, ["status 431"], "{:?}", read.frames);
    assert!(recorder.seen().is_empty());
    // The proxy still serves.
    assert_eq!(get(addr, "a.example", "/after").await.status, 200);
}

#[tokio::test]
async fn invalid_utf8_is_a_4xx_and_the_proxy_keeps_serving() {
    let (_proxy, addr, recorder) = setup().await;
    // (request, status, target the backend received, if forwarded)
    let cases: &[(&str, &[u8], u16, Option<&str>)] = &[
        (
            "raw byte 0xE9 in the path",
            b"GET /caf\xe9 HTTP/1.1\r\nHost: a.example\r\n\r\n",
            400,
            None,
        ),
        (
            "raw overlong sequence in the path",
            b"GET /\xc0\xae\xc0\xae/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
            400,
            None,
        ),
        (
            "%E9 (Latin-1 e-acute) in the path",
            b"GET /caf%E9 HTTP/1.1\r\nHost: a.example\r\n\r\n",
            400,
            None,
        ),
        (
            "raw UTF-8 in the path (valid: forwarded as sent)",
            "GET /café HTTP/1.1\r\nHost: a.example\r\n\r\n".as_bytes(),
            200,
            Some("/café"),
        ),
        (
            "raw byte 0xFF in the query",
            b"GET /q?x=\xff HTTP/1.1\r\nHost: a.example\r\n\r\n",
            400,
            None,
        ),
        (
            "%FF in the query (opaque to the proxy: forwarded as sent)",
            b"GET /q?x=%FF HTTP/1.1\r\nHost: a.example\r\n\r\n",
            200,
            Some("/q?x=%FF"),
        ),
        (
            "0xFF in the Host",
            b"GET /h HTTP/1.1\r\nHost: \xffa.example\r\n\r\n",
            400,
            None,
        ),
        (
            "0xFF in the absolute-form authority",
            b"GET http://a.\xffexample/h HTTP/1.1\r\nHost: a.example\r\n\r\n",
            400,
            None,
        ),
        (
            "0xE9 0xFF in an ordinary header (obs-text: forwarded as bytes)",
            b"GET /hv HTTP/1.1\r\nHost: a.example\r\nX-Bin: \xe9\xff\r\n\r\n",
            200,
            Some("/hv"),
        ),
        (
            "0xFF in the API key header of a protected route",
            b"GET /key HTTP/1.1\r\nHost: a.example\r\nx-api-key: \xff\xfe\r\n\r\n",
            401,
            None,
        ),
        (
            "0xFF in X-Forwarded-For",
            b"GET /xff HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: \xff\r\n\r\n",
            200,
            Some("/xff"),
        ),
        (
            "0xFF in Connection",
            b"GET /conn HTTP/1.1\r\nHost: a.example\r\nConnection: \xff\r\n\r\n",
            200,
            Some("/conn"),
        ),
        (
            "0xFF in Content-Type and Accept-Encoding",
            b"GET /ct HTTP/1.1\r\nHost: a.example\r\nContent-Type: \xff\r\nAccept-Encoding: \xff\r\n\r\n",
            200,
            Some("/ct"),
        ),
    ];
    let mut failures = Vec::new();
    for (name, request, status, target) in cases {
        recorder.clear();
        let reply = raw_exchange(addr, request, DEADLINE).await;
        let seen = recorder.seen();
        let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
        let want: Vec<&str> = target.iter().copied().collect();
        if reply.statuses() != [*status] || targets != want {
            failures.push(format!(
                "{name}: {:?}, backend {targets:?}\n{}",
                reply.statuses(),
                reply.text()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // What the backend saw of the opaque header bytes and of X-Forwarded-For.
    recorder.clear();
    raw_exchange(
        addr,
        b"GET /hv HTTP/1.1\r\nHost: a.example\r\nX-Bin: \xe9\xff\r\nX-Forwarded-For: \xff\r\n\r\n",
        DEADLINE,
    )
    .await;
    let seen = recorder.seen();
    let bin: Vec<&[u8]> = seen[0]
        .headers
        .iter()
        .filter(|(n, _)| n == "x-bin")
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(bin, [&b"\xe9\xff"[..]]);
    assert_eq!(seen[0].header("x-forwarded-for"), ["127.0.0.1"]);

    // And the proxy is still serving, over both protocols.
    assert_eq!(get(addr, "a.example", "/after").await.status, 200);
    let mut h2 = h2_connect(addr).await;
    let response = h2
        .send_request(
            Request::get("http://a.example/after")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await;
}

async fn h2_connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}
