//! Helpers shared by the integration tests: manifest directories, backends, and a
//! proxy started on 127.0.0.1 with every listener on a free port.
#![allow(dead_code)]

pub mod h2raw;
pub mod hostile;
pub mod keys;
pub mod redis;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use meshgate_proxy::runtime::{Options, Running, Source};

pub const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A directory under cargo's per-target temporary directory, removed on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("meshgate-proxy-tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Replaces `file` atomically (write a temporary file, then rename), as
    /// configuration tools should.
    pub fn write(&self, file: &str, contents: &str) {
        let tmp = self.0.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, contents).expect("write manifest");
        std::fs::rename(&tmp, self.0.join(file)).expect("rename manifest");
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An ApiGateway `test/gw` with the given listener and route YAML (list items,
/// indented by two spaces).
pub fn gateway_yaml(listeners: &str, routes: &str) -> String {
    format!(
        "apiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata: {{name: gw, namespace: test}}\nspec:\n  listeners:\n{listeners}\n  routes:\n{routes}\n"
    )
}

/// `- {name: http, port: P, protocol: HTTP}`: a listener item for [`gateway_yaml`].
pub fn http_listener(name: &str, port: u16) -> String {
    format!("  - {{name: {name}, port: {port}, protocol: HTTP}}")
}

/// A Service `test/{name}` port 80 whose one EndpointSlice points at `addr`.
pub fn service_yaml(name: &str, addr: SocketAddr, ready: bool) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: test}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: test, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: ["{ip}"], conditions: {{ready: {ready}}}}}]
"#,
        port = addr.port(),
        ip = addr.ip(),
    )
}

/// A route item that sends everything it matches to Service `backend` and tags
/// responses with `x-route: NAME`. `extra` is more YAML at the route's indentation
/// (e.g. `    hostnames: [a.test]\n`).
pub fn tagged_route(name: &str, matches: &str, backend: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    matches: {matches}\n{extra}    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-route, value: {name}}}]}}}}]\n    backendRefs: [{{name: {backend}, port: 80}}]\n"
    )
}

fn options(source: Source, listeners: &[&str]) -> Options {
    let mut options = Options::new(source);
    options.admin = Some(SocketAddr::from((LOCALHOST, 0)));
    // Listeners a reload adds bind their manifest port on loopback only.
    options.bind_ip = LOCALHOST.into();
    // Keep test output readable; tests of the log capture it (`start_yaml_with`).
    options.access_log = meshgate_proxy::access_log::AccessLog::new(Discard);
    options.poll_interval = Duration::from_millis(100);
    options.listen = listeners
        .iter()
        .map(|name| (name.to_string(), SocketAddr::from((LOCALHOST, 0))))
        .collect::<HashMap<_, _>>();
    options
}

/// Starts a proxy on fixed manifests, each named listener on a free port.
pub async fn start_yaml(yaml: &str, listeners: &[&str]) -> Running {
    let loaded = meshgate_crds::manifests::load_str("test", yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    Running::start(options(
        Source::Manifests(Box::new(loaded.manifests)),
        listeners,
    ))
    .await
    .expect("proxy starts")
}

/// Starts a proxy on fixed manifests after `adjust` has changed the options
/// (e.g. to capture the access log).
pub async fn start_yaml_with(
    yaml: &str,
    listeners: &[&str],
    adjust: impl FnOnce(&mut Options),
) -> Running {
    let loaded = meshgate_crds::manifests::load_str("test", yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut options = options(Source::Manifests(Box::new(loaded.manifests)), listeners);
    adjust(&mut options);
    Running::start(options).await.expect("proxy starts")
}

/// An access log sink that drops every line.
pub struct Discard;

impl meshgate_proxy::access_log::LogSink for Discard {
    fn write_line(&self, _line: &str) {}
}

/// An access log sink that keeps the lines, for tests.
#[derive(Clone, Default)]
pub struct CaptureLog(pub std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl meshgate_proxy::access_log::LogSink for CaptureLog {
    fn write_line(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

impl CaptureLog {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// `gateway_yaml` with `clientTraffic` set to the flow mapping `client_traffic`
/// (e.g. `{numTrustedHops: 1}`).
pub fn gateway_yaml_with_client(listeners: &str, routes: &str, client_traffic: &str) -> String {
    gateway_yaml(listeners, routes).replacen(
        "spec:\n",
        &format!("spec:\n  clientTraffic: {client_traffic}\n"),
        1,
    )
}

/// Starts a proxy on a manifest directory (polled every 100 ms).
pub async fn start_dir(dir: &Path, listeners: &[&str]) -> Running {
    Running::start(options(Source::Dir(dir.to_path_buf()), listeners))
        .await
        .expect("proxy starts")
}

/// Starts a proxy on a manifest directory after `adjust` has changed the options.
pub async fn start_dir_with(
    dir: &Path,
    listeners: &[&str],
    adjust: impl FnOnce(&mut Options),
) -> Running {
    let mut options = options(Source::Dir(dir.to_path_buf()), listeners);
    adjust(&mut options);
    Running::start(options).await.expect("proxy starts")
}

/// A free port on 127.0.0.1 that nothing listens on (connections are refused).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

/// A backend that answers 200 `slow` after `delay`.
pub async fn spawn_slow(delay: Duration) -> SocketAddr {
    serve(move |_request| async move {
        tokio::time::sleep(delay).await;
        Response::new(Full::new(Bytes::from_static(b"slow")))
    })
    .await
}

/// Serves `handler` on 127.0.0.1 (any free port) until the test ends.
pub async fn serve<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind((LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A response body fed from a channel, to test streaming.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A GET through the proxy listener at `addr` with `Host: host`.
pub async fn get(addr: SocketAddr, host: &str, target: &str) -> meshgate_proxy::client::Reply {
    meshgate_proxy::client::get(addr, host, target)
        .await
        .unwrap_or_else(|e| panic!("GET {host}{target}: {e}"))
}

/// Sends `request` (plain HTTP) to `addr`.
pub async fn send(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> meshgate_proxy::client::Reply {
    meshgate_proxy::client::send(addr, request, None)
        .await
        .expect("request")
}

/// A request builder with a Host header.
pub fn request(method: &str, host: &str, target: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(target)
        .header(http::header::HOST, host)
}

/// The admin `/config` of a running proxy.
pub async fn config(running: &Running) -> serde_json::Value {
    let admin = running.admin_addr().expect("admin");
    get(admin, "admin", "/config")
        .await
        .json()
        .expect("config is JSON")
}

/// The value of metric line `series` (e.g. `meshgate_config_version`) in `/metrics`.
pub async fn metric(running: &Running, series: &str) -> Option<f64> {
    let admin = running.admin_addr().expect("admin");
    let text = get(admin, "admin", "/metrics").await.text();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}
