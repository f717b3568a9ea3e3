//! Request traces end to end: the proxy exports spans over OTLP (gRPC and HTTP)
//! to a real Jaeger (v2, an OpenTelemetry Collector distribution built from Go
//! modules by kind-tests/scripts/build-tools.sh), and the spans are read back
//! through Jaeger's query API. Everything listens on 127.0.0.1.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use meshgate_kind_tests::jaeger::Jaeger;
use meshgate_proxy::access_log::{AccessLog, LogSink};
use meshgate_proxy::demo::spawn_echo;
use meshgate_proxy::runtime::{Options, Running, Source};
use serde_json::Value;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl LogSink for Capture {
    fn write_line(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

fn yaml(echo: SocketAddr, endpoint: &str, protocol: &str, trust: bool) -> String {
    format!(
        r#"apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {{name: gw, namespace: test}}
spec:
  telemetry:
    tracing: {{endpoint: "{endpoint}", protocol: {protocol}, samplingPercent: 100, trustClientTraceContext: {trust}}}
  listeners: [{{name: http, port: 80, protocol: HTTP}}]
  routes:
  - name: api
    matches: [{{path: {{value: /api}}}}]
    backendRefs: [{{name: echo, port: 80}}]
---
apiVersion: meshgate.io/v1alpha1
kind: ApiPolicy
metadata: {{name: ip, namespace: test}}
spec:
  targetRefs: [{{group: meshgate.io, kind: ApiGateway, name: gw, sectionName: api}}]
  ipFilter: {{allow: [127.0.0.0/8]}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: test}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: test, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: true}}}}]
"#,
        port = echo.port()
    )
}

async fn start(yaml: &str, log: Capture) -> Running {
    let loaded = meshgate_crds::manifests::load_str("test", yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut options = Options::new(Source::Manifests(Box::new(loaded.manifests)));
    options.admin = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    options.access_log = AccessLog::new(log);
    options.listen = HashMap::from([(
        "http".to_string(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )]);
    Running::start(options).await.expect("proxy starts")
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

fn parent_of(span: &Value) -> Option<String> {
    span["references"]
        .as_array()?
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")
        .and_then(|r| r["spanID"].as_str())
        .map(str::to_string)
}

/// Sends GET /api with `traceparent`; returns the echo's view of the request.
async fn request(addr: SocketAddr, traceparent: Option<&str>) -> Value {
    let mut builder = http::Request::get("/api").header("host", "a.test");
    if let Some(tp) = traceparent {
        builder = builder.header("traceparent", tp);
    }
    let reply =
        meshgate_proxy::client::send(addr, builder.body(Full::new(Bytes::new())).unwrap(), None)
            .await
            .expect("request");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json().expect("echo JSON")
}

async fn continues_the_client_trace(protocol: &str) {
    let jaeger = Jaeger::start(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")));
    let echo = spawn_echo("echo").await.expect("echo");
    let endpoint = match protocol {
        "Grpc" => format!("http://127.0.0.1:{}", jaeger.otlp_grpc),
        _ => format!("http://127.0.0.1:{}/v1/traces", jaeger.otlp_http),
    };
    let log = Capture::default();
    let proxy = start(&yaml(echo, &endpoint, protocol, true), log.clone()).await;
    let addr = proxy.listener_addr("http").expect("bound");

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let seen = request(addr, Some(&format!("00-{trace}-{client_span}-01"))).await;

    // Upstream got a traceparent continuing the client's trace, from a new span.
    let upstream_tp = seen["headers"]["traceparent"]
        .as_str()
        .expect("traceparent upstream");
    let parts: Vec<&str> = upstream_tp.split('-').collect();
    assert_eq!(parts[1], trace, "{upstream_tp}");
    assert_ne!(parts[2], client_span);
    assert_eq!(parts[3], "01");

    // Jaeger has the server span (child of the client's span), and the policy
    // and upstream spans as its children; the upstream span is the one whose
    // id went upstream.
    let spans = jaeger.spans(trace, 3).await;
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|s| s["operationName"] == name)
            .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
    };
    let server = by_name("route api");
    let policy = by_name("policy");
    let upstream = by_name("upstream");
    let server_id = server["spanID"].as_str().unwrap().to_string();
    assert_eq!(parent_of(server).as_deref(), Some(client_span));
    assert_eq!(parent_of(policy).as_deref(), Some(server_id.as_str()));
    assert_eq!(parent_of(upstream).as_deref(), Some(server_id.as_str()));
    assert_eq!(upstream["spanID"].as_str(), Some(parts[2]));
    assert_eq!(tag(server, "http.route"), Some(&Value::from("api")));
    assert_eq!(
        tag(server, "http.response.status_code"),
        Some(&Value::from(200))
    );
    assert_eq!(tag(server, "span.kind"), Some(&Value::from("server")));
    assert_eq!(tag(upstream, "span.kind"), Some(&Value::from("client")));
    assert_eq!(
        tag(upstream, "http.response.status_code"),
        Some(&Value::from(200))
    );
    // The trace id is in the access log line.
    assert!(
        log.0
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(&format!("\"trace_id\":\"{trace}\""))),
        "{:?}",
        log.0.lock().unwrap()
    );
    proxy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn spans_reach_jaeger_over_otlp_grpc() {
    continues_the_client_trace("Grpc").await;
}

#[tokio::test]
async fn spans_reach_jaeger_over_otlp_http() {
    continues_the_client_trace("HttpProtobuf").await;
}

#[tokio::test]
async fn an_untrusted_client_context_starts_a_new_trace() {
    let jaeger = Jaeger::start(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")));
    let echo = spawn_echo("echo").await.expect("echo");
    let endpoint = format!("http://127.0.0.1:{}", jaeger.otlp_grpc);
    let proxy = start(&yaml(echo, &endpoint, "Grpc", false), Capture::default()).await;
    let addr = proxy.listener_addr("http").expect("bound");
    let forged = "4bf92f3577b34da6a3ce929d0e0e4736";
    let seen = request(addr, Some(&format!("00-{forged}-00f067aa0ba902b7-01"))).await;
    let tp = seen["headers"]["traceparent"]
        .as_str()
        .expect("traceparent upstream");
    let trace = tp.split('-').nth(1).unwrap().to_string();
    assert_ne!(
        trace, forged,
        "a client's trace context must not be trusted by default"
    );
    let spans = jaeger.spans(&trace, 3).await;
    let server = spans
        .iter()
        .find(|s| s["operationName"] == "route api")
        .expect("server span");
    assert_eq!(parent_of(server), None, "the server span is a root");
    proxy.shutdown(Duration::from_secs(5)).await;
}
