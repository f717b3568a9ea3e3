//! gRPC and HTTP/2 upstreams over real sockets: a tonic service behind the proxy,
//! trailers end to end, `te: trailers`, gRPC-shaped proxy errors, and h2c chosen by
//! the Service's appProtocol.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::uri::PathAndQuery;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgate_proxy::demo::spawn_echo;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct SayRequest {
    #[prost(string, tag = "1")]
    message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SayReply {
    #[prost(string, tag = "1")]
    message: String,
    /// The `te` header the service received.
    #[prost(string, tag = "2")]
    te: String,
}

#[derive(Clone)]
struct Echo;

impl tonic::server::UnaryService<SayRequest> for Echo {
    type Response = SayReply;
    type Future = std::future::Ready<Result<tonic::Response<SayReply>, Status>>;

    fn call(&mut self, request: tonic::Request<SayRequest>) -> Self::Future {
        let te = request
            .metadata()
            .get("te")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let message = request.into_inner().message;
        std::future::ready(if message == "fail" {
            Err(Status::failed_precondition("told to fail"))
        } else {
            Ok(tonic::Response::new(SayReply {
                message: format!("hello {message}"),
                te,
            }))
        })
    }
}

const SAY: &str = "/test.Echo/Say";

/// A tonic gRPC service on 127.0.0.1 (h2c), answering `Say`.
async fn spawn_grpc() -> SocketAddr {
    serve(|request: Request<hyper::body::Incoming>| async move {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<SayReply, SayRequest>::default());
        grpc.unary(Echo, request).await
    })
    .await
}

async fn say(proxy: SocketAddr, path: &'static str, message: &str) -> Result<SayReply, Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{proxy}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect to the proxy");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("ready");
    client
        .unary(
            tonic::Request::new(SayRequest {
                message: message.to_string(),
            }),
            PathAndQuery::from_static(path),
            ProstCodec::<SayRequest, SayReply>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

fn grpc_gateway(extra_routes: &str, services: &str) -> String {
    gateway_yaml(
        &http_listener("http", 80),
        &format!(
            "  - name: grpc\n    matches: [{{path: {{value: /test.Echo}}}}]\n    backendRefs: [{{name: grpc, port: 80}}]\n{extra_routes}"
        ),
    ) + services
}

#[tokio::test]
async fn unary_call_through_the_proxy_keeps_trailers() {
    let backend = spawn_grpc().await;
    let yaml = grpc_gateway("", &service_yaml("grpc", backend, true));
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let reply = say(addr, SAY, "world").await.expect("call succeeds");
    assert_eq!(reply.message, "hello world");
    assert_eq!(reply.te, "trailers", "te: trailers is forwarded for gRPC");

    // An application error travels back with its status and message.
    let status = say(addr, SAY, "fail").await.expect_err("fails");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "told to fail");

    // At the HTTP/2 level: the body ends with a trailers frame holding grpc-status.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    // One length-prefixed message: SayRequest { message: "x" }.
    let frame = Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 1, b'x']);
    let request = Request::post(format!("http://{addr}{SAY}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("grpc-status").is_none());
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers frame");
    assert_eq!(trailers["grpc-status"], "0");
    assert!(!collected.to_bytes().is_empty());
}

#[tokio::test]
async fn proxy_errors_are_grpc_statuses() {
    let slow = spawn_slow(Duration::from_secs(2)).await;
    let dead = closed_port();
    let extra = "  - name: dead\n    matches: [{path: {value: /dead.Svc}}]\n    backendRefs: [{name: dead, port: 80}]\n  - name: slow\n    matches: [{path: {value: /slow.Svc}}]\n    timeouts: {request: 200ms}\n    backendRefs: [{name: slow, port: 80}]\n  - name: empty\n    matches: [{path: {value: /empty.Svc}}]\n    backendRefs: [{name: empty, port: 80}]\n";
    let services = service_yaml("grpc", dead, true)
        + &service_yaml("dead", dead, true)
        + &service_yaml("slow", slow, true)
        + &service_yaml("empty", dead, false);
    let proxy = start_yaml(&grpc_gateway(extra, &services), &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    for (path, code) in [
        ("/nothing.Here/Say", Code::Unimplemented),
        ("/dead.Svc/Say", Code::Unavailable),
        ("/empty.Svc/Say", Code::Unavailable),
        ("/slow.Svc/Say", Code::DeadlineExceeded),
    ] {
        let status = say(addr, path, "x").await.expect_err(path);
        assert_eq!(status.code(), code, "{path}: {status:?}");
        assert!(!status.message().is_empty(), "{path}: grpc-message set");
    }

    // The same failure for a non-gRPC client stays plain HTTP.
    let reply = get(addr, "a.test", "/nothing").await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn h2c_upstream_by_app_protocol() {
    let echo = spawn_echo("echo").await.unwrap();
    let services = format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: h2, namespace: test}}
spec: {{ports: [{{name: web, port: 80, appProtocol: kubernetes.io/h2c}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: h2-1, namespace: test, labels: {{kubernetes.io/service-name: h2}}}}
addressType: IPv4
ports: [{{name: web, port: {port}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
"#,
        port = echo.port()
    ) + &service_yaml("h1", echo, true);
    let routes = "  - name: h2\n    matches: [{path: {value: /h2}}]\n    backendRefs: [{name: h2, port: 80}]\n  - name: h2r\n    matches: [{path: {value: /h2r}}]\n    filters: [{type: URLRewrite, urlRewrite: {hostname: inner.test}}]\n    backendRefs: [{name: h2, port: 80}]\n  - name: h1\n    matches: [{path: {value: /h1}}]\n    backendRefs: [{name: h1, port: 80}]\n";
    let proxy = start_yaml(
        &(gateway_yaml(&http_listener("http", 80), routes) + &services),
        &["http"],
    )
    .await;
    let addr = proxy.listener_addr("http").unwrap();
    let h2 = get(addr, "a.test", "/h2").await.json().unwrap();
    assert_eq!(h2["version"], "HTTP/2.0", "{h2}");
    // HTTP/2 upstream: the client's host is the request's :authority (as Envoy
    // sends it), not the endpoint address; no Host header beside it, which
    // would be a malformed request if it differed (RFC 9113 8.3.1).
    assert_eq!(h2["authority"], "a.test", "{h2}");
    assert!(h2["headers"].get("host").is_none(), "{h2}");
    assert_eq!(h2["headers"]["x-forwarded-host"], "a.test", "{h2}");
    // A route's hostname rewrite reaches HTTP/2 backends too.
    let rewritten = get(addr, "a.test", "/h2r").await.json().unwrap();
    assert_eq!(rewritten["authority"], "inner.test", "{rewritten}");
    let h1 = get(addr, "a.test", "/h1").await.json().unwrap();
    assert_eq!(h1["version"], "HTTP/1.1", "{h1}");
    assert_eq!(h1["headers"]["host"], "a.test", "{h1}");
}
