//! The soak driver behind `proxy/bench/soak.sh`: a `meshgate-proxy` process
//! (standalone, a manifest directory) under a steady mixed load for a long
//! time — HTTP/1.1, HTTP/2 (h2c), gRPC unary calls and WebSocket messages,
//! with the manifests rewritten (a real reload) every `RELOAD_EVERY` seconds —
//! sampling the proxy's RSS and open file descriptors. Prints one line per
//! sample, then start/end/max and every error; exits 1 on any error.
//!
//! Environment: `PROXY_BIN` (the meshgate-proxy binary, required),
//! `DURATION` (s, default 1800), `RATE` (requests/s per protocol, default 20),
//! `RELOAD_EVERY` (s, default 10), `SAMPLE_EVERY` (s, default 30).
//! Everything listens on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use meshgate_proxy::loadgen::{Load, LoadSpec};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tonic::Status;
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
}

#[derive(Clone)]
struct Echo;

impl tonic::server::UnaryService<SayRequest> for Echo {
    type Response = SayReply;
    type Future = std::future::Ready<Result<tonic::Response<SayReply>, Status>>;

    fn call(&mut self, request: tonic::Request<SayRequest>) -> Self::Future {
        let message = format!("hello {}", request.into_inner().message);
        std::future::ready(Ok(tonic::Response::new(SayReply { message })))
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Serves `handler` (HTTP/1.1 and h2c) on a free port of 127.0.0.1.
async fn serve<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler(r).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    addr
}

async fn spawn_ws_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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

fn manifests(generation: u64, echo: SocketAddr, grpc: SocketAddr, ws: SocketAddr) -> String {
    let service = |name: &str, addr: SocketAddr, app: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: soak}}\nspec: {{ports: [{{name: p, port: 80{app}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: soak, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: p, port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
            addr.port()
        )
    };
    format!(
        "apiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata: {{name: gw, namespace: soak}}\nspec:\n  listeners: [{{name: http, port: 8080, protocol: HTTP}}]\n  routes:\n  - name: http\n    matches: [{{path: {{type: PathPrefix, value: /h}}}}]\n    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-generation, value: \"{generation}\"}}]}}}}]\n    backendRefs: [{{name: echo, port: 80}}]\n  - name: grpc\n    matches: [{{path: {{type: PathPrefix, value: /soak.Echo}}}}]\n    backendRefs: [{{name: grpc, port: 80}}]\n  - name: ws\n    matches: [{{path: {{type: PathPrefix, value: /ws}}}}]\n    backendRefs: [{{name: ws, port: 80}}]\n{}{}{}",
        service("echo", echo, ""),
        service("grpc", grpc, ", appProtocol: kubernetes.io/h2c"),
        service("ws", ws, "")
    )
}

fn write_atomically(dir: &std::path::Path, file: &str, contents: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, contents).expect("write manifests");
    std::fs::rename(&tmp, dir.join(file)).expect("rename manifests");
}

/// (RSS in KiB, open fds) of `pid`.
fn sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn fail(&self, what: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(what)
            .or_default() += 1;
    }
    fn failed(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum()
    }
}

/// gRPC unary calls at `rate`/s on one channel (HTTP/2, multiplexed).
async fn grpc_load(addr: SocketAddr, rate: u64, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    while !stop.load(Relaxed) {
        ticks.tick().await;
        let mut client = tonic::client::Grpc::new(channel.clone());
        let tally = tally.clone();
        tokio::spawn(async move {
            if let Err(e) = client.ready().await {
                return tally.fail(format!("grpc ready: {e}"));
            }
            let path = http::uri::PathAndQuery::from_static("/soak.Echo/Say");
            let request = tonic::Request::new(SayRequest {
                message: "soak".into(),
            });
            let reply: Result<tonic::Response<SayReply>, Status> =
                client.unary(request, path, ProstCodec::default()).await;
            match reply {
                Ok(r) if r.get_ref().message == "hello soak" => {
                    tally.ok.fetch_add(1, Relaxed);
                }
                Ok(r) => tally.fail(format!("grpc reply {:?}", r.get_ref().message)),
                Err(s) => tally.fail(format!("grpc {:?}", s.code())),
            }
        });
    }
}

/// WebSocket clients: each sends a message and waits for its echo, `rate`/s in
/// total, and reconnects (a new upgrade) every 50 messages.
async fn ws_load(addr: SocketAddr, rate: u64, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    const CLIENTS: u64 = 4;
    let every = Duration::from_secs_f64(CLIENTS as f64 / rate.max(1) as f64);
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let (stop, tally) = (stop.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            'connections: while !stop.load(Relaxed) {
                let request = format!("ws://soak.test/ws/{n}")
                    .into_client_request()
                    .expect("request");
                let tcp = match tokio::net::TcpStream::connect(addr).await {
                    Ok(t) => t,
                    Err(e) => {
                        tally.fail(format!("ws connect: {e}"));
                        ticks.tick().await;
                        continue;
                    }
                };
                let mut ws = match tokio_tungstenite::client_async(request, tcp).await {
                    Ok((ws, _)) => ws,
                    Err(e) => {
                        tally.fail(format!("ws upgrade: {e}"));
                        ticks.tick().await;
                        continue;
                    }
                };
                for i in 0..50 {
                    ticks.tick().await;
                    if stop.load(Relaxed) {
                        break;
                    }
                    let text = format!("m{i}");
                    if let Err(e) = ws.send(Message::text(text.clone())).await {
                        tally.fail(format!("ws send: {e}"));
                        continue 'connections;
                    }
                    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == format!("echo: {text}") => {
                            tally.ok.fetch_add(1, Relaxed);
                        }
                        other => {
                            tally.fail(format!("ws echo: {other:?}"));
                            continue 'connections;
                        }
                    }
                }
                let _ = ws.close(None).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::main]
async fn main() {
    let proxy_bin = std::env::var("PROXY_BIN").expect("PROXY_BIN: the meshgate-proxy binary");
    let duration = Duration::from_secs(env_u64("DURATION", 1800));
    let rate = env_u64("RATE", 20);
    let reload_every = Duration::from_secs(env_u64("RELOAD_EVERY", 10).max(1));
    let sample_every = Duration::from_secs(env_u64("SAMPLE_EVERY", 30).max(1));

    let echo = meshgate_proxy::demo::spawn_echo("soak")
        .await
        .expect("echo");
    let grpc = serve(|request: http::Request<hyper::body::Incoming>| async move {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<SayReply, SayRequest>::default());
        grpc.unary(Echo, request).await
    })
    .await;
    let ws = spawn_ws_echo().await;

    let dir = std::env::temp_dir().join(format!("meshgate-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("manifest dir");
    write_atomically(&dir, "soak.yaml", &manifests(0, echo, grpc, ws));
    let (listen, admin) = (free_addr(), free_addr());
    let mut proxy = tokio::process::Command::new(&proxy_bin)
        .arg("--manifests")
        .arg(&dir)
        .args(["--admin", &admin.to_string()])
        .args(["--listen", &format!("http={listen}")])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start meshgate-proxy");
    let pid = proxy.id().expect("pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        assert!(Instant::now() < deadline, "the proxy never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "soak: proxy pid {pid} on {listen}, {rate} req/s each of h1, h2, gRPC, WebSocket, reload every {reload_every:?}, for {duration:?}"
    );

    let h1 = Load::start(LoadSpec::http1(listen, "soak.test", "/h/1", rate as u32, 2));
    let h2 = Load::start(LoadSpec {
        version: http::Version::HTTP_2,
        ..LoadSpec::http1(listen, "soak.test", "/h/2", rate as u32, 2)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (grpc_tally, ws_tally) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let grpc_task = tokio::spawn(grpc_load(listen, rate, stop.clone(), grpc_tally.clone()));
    let ws_task = tokio::spawn(ws_load(listen, rate, stop.clone(), ws_tally.clone()));

    let started = Instant::now();
    let (mut next_reload, mut next_sample) = (started + reload_every, started);
    let (mut generation, mut samples) = (0u64, Vec::new());
    while started.elapsed() < duration {
        let now = Instant::now();
        if now >= next_reload {
            generation += 1;
            write_atomically(&dir, "soak.yaml", &manifests(generation, echo, grpc, ws));
            next_reload += reload_every;
        }
        if now >= next_sample {
            let (rss, fds) = sample(pid).expect("the proxy is running");
            println!(
                "t={:>5}s rss={rss} KiB fds={fds} ok h1={} h2={} grpc={} ws={} failed h1={} h2={} grpc={} ws={}",
                started.elapsed().as_secs(),
                h1.ok(),
                h2.ok(),
                grpc_tally.ok.load(Relaxed),
                ws_tally.ok.load(Relaxed),
                h1.failures().len(),
                h2.failures().len(),
                grpc_tally.failed(),
                ws_tally.failed()
            );
            samples.push((rss, fds));
            next_sample += sample_every;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = sample(pid).expect("the proxy is running");
    samples.push(last);
    stop.store(true, Relaxed);
    let (h1, h2) = (h1.stop().await, h2.stop().await);
    let _ = grpc_task.await;
    let _ = ws_task.await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let metrics = meshgate_proxy::client::get(admin, "admin", "/metrics")
        .await
        .map(|r| r.text())
        .unwrap_or_default();
    let metric = |series: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or("?")
            .to_string()
    };
    // The first sample is the idle proxy; "start" is the first one under load.
    let (idle, first, max_rss, max_fds) = (
        samples[0],
        samples[1.min(samples.len() - 1)],
        samples.iter().map(|s| s.0).max().unwrap_or(0),
        samples.iter().map(|s| s.1).max().unwrap_or(0),
    );
    println!("--- soak summary ({:?}) ---", started.elapsed());
    println!(
        "rss KiB: idle {} start {} end {} max {max_rss}; fds: idle {} start {} end {} max {max_fds}",
        idle.0, first.0, last.0, idle.1, first.1, last.1
    );
    println!(
        "reloads: {generation} rewrites, applied ok {}, failed {}; config version {}",
        metric("meshgate_config_reloads_total{result=\"ok\"}"),
        metric("meshgate_config_reloads_total{result=\"failed\"}"),
        metric("meshgate_config_version")
    );
    let mut errors = 0u64;
    for (name, ok, failures) in [("h1", h1.ok, h1.failures), ("h2", h2.ok, h2.failures)] {
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        for f in &failures {
            *kinds.entry(f.what.clone()).or_default() += 1;
        }
        println!("{name}: ok {ok}, failed {} {kinds:?}", failures.len());
        errors += failures.len() as u64;
    }
    for (name, tally) in [("grpc", &grpc_tally), ("ws", &ws_tally)] {
        let kinds = tally
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        println!(
            "{name}: ok {}, failed {} {kinds:?}",
            tally.ok.load(Relaxed),
            tally.failed()
        );
        errors += tally.failed();
    }
    let _ = proxy.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    if errors > 0 {
        println!("soak: {errors} errors");
        std::process::exit(1);
    }
    println!("soak: no errors");
}
