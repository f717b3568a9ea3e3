//! Outages under load, standalone: a constant-rate load
//! (`meshgate_proxy::loadgen`) runs through each scenario and every failed
//! request is counted. Each test asserts the exact failures: none, or only
//! those the scenario makes inevitable, each accounted for (docs/reliability.md).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshgate_proxy::client::Tls;
use meshgate_proxy::demo::spawn_echo;
use meshgate_proxy::loadgen::{Failure, Load, LoadSpec, Report};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::CertificateDer;
use tokio::task::{JoinHandle, JoinSet};

const WAIT: Duration = Duration::from_secs(20);
/// Hang detection: a local answer takes milliseconds; a hang takes seconds.
const FAST: Duration = Duration::from_millis(500);

/// A backend on a fixed port that can be killed — its listener and every
/// connection dropped at once, as when a process dies — and started again on
/// the same port. `/stream` streams `tick\n` every 20 ms until the client
/// goes; anything else answers its name.
struct Killable {
    addr: SocketAddr,
    name: &'static str,
    served: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl Killable {
    async fn start(name: &'static str) -> Killable {
        let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let mut k = Killable {
            addr: listener.local_addr().unwrap(),
            name,
            served: Arc::new(AtomicU64::new(0)),
            task: None,
        };
        k.run(listener);
        k
    }

    fn run(&mut self, listener: tokio::net::TcpListener) {
        let (name, served) = (self.name, self.served.clone());
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let served = served.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |r: http::Request<Incoming>| {
                        let served = served.clone();
                        async move {
                            let body = if r.uri().path() == "/stream" {
                                let (tx, rx) = tokio::sync::mpsc::channel(1);
                                tokio::spawn(async move {
                                    while tx.send(Bytes::from_static(b"tick\n")).await.is_ok() {
                                        tokio::time::sleep(Duration::from_millis(20)).await;
                                    }
                                });
                                http_body_util::Either::Left(ChannelBody(rx))
                            } else {
                                served.fetch_add(1, Relaxed);
                                http_body_util::Either::Right(Full::new(Bytes::from(name)))
                            };
                            Ok::<_, std::convert::Infallible>(Response::new(body))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restart(&mut self) {
        // The aborted task (and its listener) may take a moment to go.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebinding {}: {e}", self.addr),
            }
        };
        self.run(listener);
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Service `test/{name}` port 80 with one EndpointSlice per address.
fn pool_yaml(name: &str, addrs: &[SocketAddr]) -> String {
    let mut yaml = format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: test}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n");
    for (i, addr) in addrs.iter().enumerate() {
        yaml += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{i}, namespace: test, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
            addr.port(),
            addr.ip()
        );
    }
    yaml
}

/// Connections `load` spreads its requests over.
const LOAD_CONNECTIONS: usize = 4;

fn load(addr: SocketAddr, path: &str, rate: u32) -> Load {
    Load::start(LoadSpec::http1(
        addr,
        "a.test",
        path,
        rate,
        LOAD_CONNECTIONS,
    ))
}

fn describe(report: &Report) -> String {
    format!(
        "{} ok, {} failed (first: {:?})",
        report.ok,
        report.failures.len(),
        report.failures.iter().take(5).collect::<Vec<_>>()
    )
}

#[tokio::test]
async fn upstream_killed_mid_stream_fails_only_the_stream_and_comes_back() {
    let mut a = Killable::start("a").await;
    let b = Killable::start("b").await;
    // `/` is balanced over a and b with retries of connect failures and resets;
    // `/stream` has only a.
    let retry = "    retry: {attempts: 2, retryOn: {triggers: [connect-failure, reset, gateway-error]}, backoff: {baseInterval: 1ms}}\n";
    let routes = tagged_route("stream", "[{path: {value: /stream}}]", "streamer", "")
        + &tagged_route(
            "pool",
            "[{path: {type: PathPrefix, value: /}}]",
            "pool",
            retry,
        );
    let yaml = gateway_yaml(&http_listener("http", 80), &routes)
        + &pool_yaml("pool", &[a.addr, b.addr])
        + &pool_yaml("streamer", &[a.addr]);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let load = load(addr, "/", 100);
    assert!(load.served(50, WAIT).await, "load never ran");

    // A streaming response from a, cut when a dies.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            request("GET", "a.test", "/stream")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    for _ in 0..3 {
        let frame = body.frame().await.expect("a chunk").expect("chunk ok");
        assert_eq!(frame.into_data().unwrap(), "tick\n");
    }
    let a_before_kill = a.served.load(Relaxed);
    assert!(a_before_kill > 0, "a took part in the load");
    a.kill();
    let killed = Instant::now();
    // The client sees the truncation: an error, never a clean end of body.
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(e.to_string()),
                None => break Ok(()),
            }
        }
    })
    .await
    .expect("the cut stream ends, it does not hang");
    let cut_after = killed.elapsed();
    assert!(
        end.is_err(),
        "a stream cut upstream must not look complete to the client"
    );

    // While a is down the load goes on (retried to b, then a is ejected).
    assert!(load.served(100, WAIT).await);
    let ejected = metric(
        &proxy,
        "meshgate_outlier_ejections_total{backend=\"test/pool:80\"}",
    )
    .await;
    a.restart().await;
    let restarted = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || async {
            a.served.load(Relaxed) > a_before_kill
        })
        .await,
        "a never got traffic again"
    );
    let recovered = restarted.elapsed();
    // A new stream from a works again.
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = sender
            .send_request(
                request("GET", "a.test", "/stream")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let first = response.into_body().frame().await;
        (
            status,
            first.and_then(|f| f.ok()).and_then(|f| f.into_data().ok()),
        )
    })
    .await
    .unwrap();
    assert_eq!(reply, (StatusCode::OK, Some(Bytes::from_static(b"tick\n"))));

    let report = load.stop().await;
    eprintln!(
        "mid-stream kill: stream cut after {cut_after:?} ({:?}); load {}; ejections {ejected:?}; a back in traffic {recovered:?} after restart",
        end.unwrap_err(),
        describe(&report)
    );
    assert_eq!(
        report.failures,
        Vec::<Failure>::new(),
        "retries hide the dead endpoint from the load"
    );
}

#[tokio::test]
async fn all_endpoints_gone_answer_fast_and_serving_resumes() {
    let dir = TestDir::new("endpoints-gone");
    let mut backend = Killable::start("only").await;
    dir.write("backend.yaml", &service_yaml("web", backend.addr, true));
    dir.write(
        "gateway.yaml",
        &gateway_yaml(
            &http_listener("http", 80),
            &tagged_route("web", "[]", "web", ""),
        ),
    );
    let proxy = start_dir(dir.path(), &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    let load = load(addr, "/", 100);
    assert!(load.served(50, WAIT).await);

    // 1. The endpoint leaves the EndpointSlice (not ready): 503 NH at once.
    let removed = load.failures().len();
    dir.write("backend.yaml", &service_yaml("web", backend.addr, false));
    assert!(
        eventually(WAIT, || async {
            get(addr, "a.test", "/").await.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await
    );
    let mut probes = 1;
    for _ in 0..10 {
        let t0 = Instant::now();
        let reply = get(addr, "a.test", "/").await;
        probes += 1;
        assert_eq!(
            (reply.status, reply.header("x-meshgate-flags")),
            (StatusCode::SERVICE_UNAVAILABLE, Some("NH"))
        );
        assert!(t0.elapsed() < FAST, "503 took {:?}", t0.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    dir.write("backend.yaml", &service_yaml("web", backend.addr, true));
    assert!(load.served(50, WAIT).await, "serving did not resume");
    let nh = load.failures()[removed..].to_vec();

    // 2. The endpoint stays listed but its process dies: 502 UF at once
    // (refused connections; one endpoint of one is never ejected).
    let before = load.failures().len();
    backend.kill();
    assert!(eventually(WAIT, || async { load.failures().len() > before + 20 }).await);
    let down_for = Instant::now();
    backend.restart().await;
    assert!(load.served(50, WAIT).await, "serving did not resume");
    let report = load.stop().await;
    // A request in flight when the process dies, or sent on a pooled connection
    // the kill has just closed, fails on that connection (502 UC): at most one
    // per load connection. Every later request is refused at connect (502 UF).
    let (uc, uf): (Vec<Failure>, Vec<Failure>) = report.failures[before..]
        .iter()
        .cloned()
        .partition(|f| f.what == "502 UC");

    let nh_metric = metric(&proxy, "meshgate_local_responses_total{flag=\"NH\"}")
        .await
        .unwrap_or(0.0) as usize;
    let uf_metric = metric(&proxy, "meshgate_local_responses_total{flag=\"UF\"}")
        .await
        .unwrap_or(0.0) as usize;
    let uc_metric = metric(&proxy, "meshgate_local_responses_total{flag=\"UC\"}")
        .await
        .unwrap_or(0.0) as usize;
    eprintln!(
        "endpoints gone: {} x 503 NH, {} x 502 UF, {} x 502 UC (restart {:?} after the kill was seen); slowest {:?}; load {} ok",
        nh.len(),
        uf.len(),
        uc.len(),
        down_for.elapsed(),
        report.failures.iter().map(|f| f.took).max(),
        report.ok
    );
    // Every failure is one of the inevitable kinds, each counted by the proxy
    // too, and none of them hung.
    assert_eq!(report.failures.len(), nh.len() + uf.len() + uc.len());
    assert!(nh.iter().all(|f| f.what == "503 NH"), "{nh:?}");
    assert!(uf.iter().all(|f| f.what == "502 UF"), "{uf:?}");
    assert!(uc.len() <= LOAD_CONNECTIONS, "{uc:?}");
    assert_eq!(nh.len() + probes, nh_metric, "every NH counted");
    assert_eq!(uf.len(), uf_metric, "every UF counted");
    assert_eq!(uc.len(), uc_metric, "every UC counted");
    assert!(
        report.failures.iter().all(|f| f.took < FAST),
        "{:?}",
        report.failures
    );
}

/// Route `one` with response header `x-gen: gen`, and route `two` when `two`.
fn storm_routes(generation: usize, two: bool) -> String {
    let mut routes = format!(
        "  - name: one\n    matches: [{{path: {{value: /one}}}}]\n    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-gen, value: \"{generation}\"}}]}}}}]\n    backendRefs: [{{name: echo, port: 80}}]\n"
    );
    if two {
        routes += &tagged_route("two", "[{path: {value: /two}}]", "echo", "");
    }
    routes
}

#[tokio::test]
async fn reload_storm_under_load_fails_nothing_and_the_last_config_serves() {
    let dir = TestDir::new("reload-storm");
    let echoes = [
        spawn_echo("echo-1").await.unwrap(),
        spawn_echo("echo-2").await.unwrap(),
    ];
    dir.write("backend.yaml", &service_yaml("echo", echoes[0], true));
    dir.write(
        "gateway.yaml",
        &gateway_yaml(&http_listener("http", 80), &storm_routes(0, false)),
    );
    // The directory watch applies a change after 15 ms without events, so every
    // rewrite below (50 ms apart) becomes a reload; the safety-net poll is off.
    let proxy = start_dir_with(dir.path(), &["http"], |o| {
        o.poll_interval = Duration::from_secs(3600)
    })
    .await;
    let addr = proxy.listener_addr("http").unwrap();
    let load = load(addr, "/one", 100);
    assert!(load.served(50, WAIT).await);

    // 20 rewrites a second for 4 s: routes, headers and endpoints all change.
    let mut generation = 0;
    let storm = Instant::now();
    while storm.elapsed() < Duration::from_secs(4) {
        generation += 1;
        dir.write(
            "gateway.yaml",
            &gateway_yaml(
                &http_listener("http", 80),
                &storm_routes(generation, generation % 2 == 0),
            ),
        );
        dir.write(
            "backend.yaml",
            &service_yaml("echo", echoes[generation % 2], true),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = generation.to_string();
    assert!(
        eventually(WAIT, || async {
            get(addr, "a.test", "/one").await.header("x-gen") == Some(last.as_str())
        })
        .await,
        "the last configuration never served"
    );
    let report = load.stop().await;
    let reply = get(addr, "a.test", "/one").await;
    assert_eq!(
        reply.json().unwrap()["backend"],
        format!("echo-{}", generation % 2 + 1)
    );
    assert_eq!(
        get(addr, "a.test", "/two").await.status,
        if generation % 2 == 0 {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        }
    );
    let reloads = metric(&proxy, "meshgate_config_reloads_total{result=\"ok\"}")
        .await
        .unwrap_or(0.0);
    eprintln!(
        "reload storm: {generation} rewrites, {reloads} reloads applied; load {}",
        describe(&report)
    );
    assert!(reloads >= 10.0, "only {reloads} reloads happened");
    assert_eq!(
        metric(&proxy, "meshgate_config_reloads_total{result=\"failed\"}").await,
        Some(0.0)
    );
    assert_eq!(report.failures, Vec::<Failure>::new());
}

/// A CA issuing leaves for the listener.
struct Ca {
    root: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            root: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A Secret `edge-cert` with a new leaf for `shop.test`, and the leaf.
    fn secret(&self) -> (String, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["shop.test".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let yaml = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: edge-cert, namespace: test}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {:?}\n  tls.key: {:?}\n",
            cert.pem(),
            key.serialize_pem()
        );
        (yaml, cert.der().clone())
    }
}

#[tokio::test]
async fn listener_certificate_and_root_rotation_under_load_fail_no_handshake() {
    meshgate_proxy::install_crypto_provider();
    let dir = TestDir::new("cert-rotation");
    let echo = spawn_echo("echo").await.unwrap();
    let (old, new) = (Ca::new(), Ca::new());
    let (secret, first) = old.secret();
    dir.write("secret.yaml", &secret);
    dir.write("backend.yaml", &service_yaml("echo", echo, true));
    let listener = "  - name: https\n    port: 443\n    protocol: HTTPS\n    tls: {certificateRefs: [{name: edge-cert}]}";
    dir.write(
        "gateway.yaml",
        &gateway_yaml(listener, &tagged_route("all", "[]", "echo", "")),
    );
    let proxy = start_dir(dir.path(), &["https"]).await;
    let addr = proxy.listener_addr("https").unwrap();
    // Clients trust both roots (the overlap bundle of a root rotation).
    let tls = |alpn: &[u8]| Tls {
        server_name: "shop.test".into(),
        roots: vec![old.root.clone(), new.root.clone()],
        alpn: vec![alpn.to_vec()],
    };
    let spec = |alpn: &[u8], per_connection| LoadSpec {
        tls: Some(tls(alpn)),
        per_connection,
        ..LoadSpec::http1(addr, "shop.test", "/", 60, 2)
    };
    // A new handshake for every request (h1), and long-lived h2 connections.
    let handshakes = Load::start(spec(b"http/1.1", Some(1)));
    let kept = Load::start(LoadSpec {
        version: http::Version::HTTP_2,
        ..spec(b"h2", None)
    });
    assert!(handshakes.served(30, WAIT).await && kept.served(30, WAIT).await);

    let presented = || async {
        let request = request("GET", "shop.test", "/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        meshgate_proxy::client::send(addr, request, Some(&tls(b"http/1.1")))
            .await
            .unwrap()
            .peer_certificate
            .unwrap()
    };
    assert_eq!(presented().await, first);
    // Three leaves from the old root, then the move to the new root.
    let mut leaves = Vec::new();
    for ca in [&old, &old, &new, &new] {
        let (secret, leaf) = ca.secret();
        dir.write("secret.yaml", &secret);
        assert!(
            eventually(WAIT, || async { presented().await == leaf }).await,
            "the rotated certificate never served"
        );
        leaves.push(leaf);
        assert!(handshakes.served(30, WAIT).await && kept.served(30, WAIT).await);
    }
    let (handshakes, kept) = (handshakes.stop().await, kept.stop().await);
    eprintln!(
        "listener rotation: per-request handshakes {}; kept h2 {}",
        describe(&handshakes),
        describe(&kept)
    );
    assert_eq!(handshakes.failures, Vec::<Failure>::new());
    assert_eq!(kept.failures, Vec::<Failure>::new());
    assert!(handshakes.ok >= 150, "{} handshakes", handshakes.ok);
}

#[tokio::test]
async fn mesh_trust_root_rotation_under_load_fails_nothing() {
    use meshgate_mesh::fixtures::{echo_handler, LocalCa, SidecarInbound, Validity};
    use meshgate_mesh::identity::fixed;
    use meshgate_mesh::SpiffeId;
    const GATEWAY: &str = "spiffe://cluster.local/ns/shop/sa/gateway";
    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    let id = |s: &str| -> SpiffeId { s.parse().unwrap() };
    meshgate_proxy::install_crypto_provider();

    let old = LocalCa::new("cluster.local").unwrap();
    let new = LocalCa::new("cluster.local").unwrap();
    let issue = |ca: &LocalCa, who: &str, bundle: &[&LocalCa]| {
        let roots: Vec<_> = bundle.iter().map(|c| c.root()).collect();
        Some(Arc::new(
            ca.identity_with(&id(who), Validity::Current, &roots)
                .unwrap(),
        ))
    };
    let (gateway_tx, gateway) = fixed(
        old.identity_with(&id(GATEWAY), Validity::Current, &[old.root()])
            .unwrap(),
    );
    let (web_tx, web) = fixed(
        old.identity_with(&id(WEB), Validity::Current, &[old.root()])
            .unwrap(),
    );
    // The sidecar closes the connection after `/…/close` answers, so those
    // requests make a new mTLS handshake each.
    let handler: meshgate_mesh::fixtures::Handler = Arc::new(|request, peer| {
        let close = request.uri().path().ends_with("/close");
        Box::pin(async move {
            let mut response = echo_handler(request, peer).await;
            if close {
                response
                    .headers_mut()
                    .insert("connection", http::HeaderValue::from_static("close"));
            }
            response
        })
    });
    let sidecar = SidecarInbound::start_with(
        web,
        "cluster.local",
        "127.0.0.1:0".parse().unwrap(),
        handler,
    )
    .await
    .unwrap();
    let yaml = format!(
        "apiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata: {{name: gw, namespace: shop}}\nspec:\n  listeners: [{{name: http, port: 8080, protocol: HTTP}}]\n  mesh: {{mode: Istio, backends: []}}\n  routes:\n  - {{name: web, backendRefs: [{{name: web, port: 80}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n",
        sidecar.addr.port()
    );
    let proxy = start_yaml_with(&yaml, &["http"], |o| o.mesh.identity = Some(gateway)).await;
    let addr = proxy.listener_addr("http").unwrap();
    let fresh = Load::start(LoadSpec::http1(addr, "shop.test", "/web/close", 60, 2));
    let pooled = Load::start(LoadSpec::http1(addr, "shop.test", "/web/keep", 60, 2));
    let served = || async { fresh.served(20, WAIT).await && pooled.served(20, WAIT).await };
    assert!(served().await);

    // 1. Both sides trust old and new; 2. the backend moves to the new root;
    // 3. the gateway does too; 4. both drop the old root.
    gateway_tx.send_replace(issue(&old, GATEWAY, &[&old, &new]));
    web_tx.send_replace(issue(&old, WEB, &[&old, &new]));
    assert!(served().await, "stalled after step 1");
    web_tx.send_replace(issue(&new, WEB, &[&old, &new]));
    assert!(served().await, "stalled after step 2");
    gateway_tx.send_replace(issue(&new, GATEWAY, &[&old, &new]));
    assert!(served().await, "stalled after step 3");
    let gateway_final = issue(&new, GATEWAY, &[&new]);
    let final_leaf = gateway_final.as_ref().unwrap().chain()[0].clone();
    gateway_tx.send_replace(gateway_final);
    web_tx.send_replace(issue(&new, WEB, &[&new]));
    assert!(served().await, "stalled after step 4");
    let (fresh, pooled) = (fresh.stop().await, pooled.stop().await);
    eprintln!(
        "mesh root rotation: new handshakes {}; pooled {}",
        describe(&fresh),
        describe(&pooled)
    );
    assert_eq!(fresh.failures, Vec::<Failure>::new());
    assert_eq!(pooled.failures, Vec::<Failure>::new());
    // The newest handshakes present the gateway's leaf under the new root only.
    let peers = sidecar.peers();
    assert_eq!(peers.last().unwrap().cert.as_ref(), Some(&final_leaf));
}

fn global_policy(name: &str, route: &str, redis_port: u16, mode: &str) -> String {
    format!(
        "---\napiVersion: meshgate.io/v1alpha1\nkind: ApiPolicy\nmetadata: {{name: {name}, namespace: test}}\nspec:\n  targetRefs: [{{group: meshgate.io, kind: ApiGateway, name: gw, sectionName: {route}}}]\n  rateLimit:\n    type: Global\n    global: {{redisUrl: \"redis://127.0.0.1:{redis_port}\", failureMode: {mode}}}\n    rules:\n    - {{key: {{type: Route}}, limit: {{requests: 100000, unit: Hour}}}}\n"
    )
}

#[tokio::test]
async fn redis_outage_under_load_fails_open_or_closed_and_recovers() {
    let mut redis = common::redis::Redis::start();
    let echo = spawn_echo("echo").await.unwrap();
    let routes = tagged_route("open", "[{path: {value: /open}}]", "echo", "")
        + &tagged_route("closed", "[{path: {value: /closed}}]", "echo", "");
    let yaml = gateway_yaml(&http_listener("http", 80), &routes)
        + &service_yaml("echo", echo, true)
        + &global_policy("fail-open", "open", redis.port, "FailOpen")
        + &global_policy("fail-closed", "closed", redis.port, "FailClosed");
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    let open = load(addr, "/open", 50);
    let closed = load(addr, "/closed", 50);
    assert!(
        open.served(25, WAIT).await && closed.served(25, WAIT).await,
        "{:?} {:?}",
        open.failures().first(),
        closed.failures().first()
    );
    assert_eq!(closed.failures(), Vec::<Failure>::new());

    redis.kill();
    let killed = Instant::now();
    assert!(
        eventually(WAIT, || async { closed.failures().len() >= 50 }).await,
        "FailClosed kept passing without Redis"
    );
    assert!(open.served(50, WAIT).await, "FailOpen stopped passing");
    let outage = killed.elapsed();
    redis.restart();
    let restarted = Instant::now();
    let failed_at_restart = closed.failures().len();
    assert!(closed.served(1, WAIT).await, "FailClosed never recovered");
    let recovered = restarted.elapsed();
    assert!(closed.served(50, WAIT).await);
    let (open, closed) = (open.stop().await, closed.stop().await);

    let fail_closed = metric(
        &proxy,
        "meshgate_rate_limit_decisions_total{decision=\"fail_closed\"}",
    )
    .await
    .unwrap_or(0.0) as usize;
    let fail_open = metric(
        &proxy,
        "meshgate_rate_limit_decisions_total{decision=\"fail_open\"}",
    )
    .await
    .unwrap_or(0.0) as usize;
    eprintln!(
        "redis outage {outage:?}: FailOpen {} ({fail_open} passed without Redis); FailClosed {} x 503 RLSE of {} ok, recovered {recovered:?} after the restart ({} failures at restart)",
        describe(&open),
        closed.failures.len(),
        closed.ok,
        failed_at_restart
    );
    assert_eq!(open.failures, Vec::<Failure>::new());
    assert!(fail_open > 0, "FailOpen requests passed without Redis");
    assert!(
        closed
            .failures
            .iter()
            .all(|f| f.what == "503 RLSE" && f.took < FAST),
        "{:?}",
        closed.failures
    );
    assert_eq!(closed.failures.len(), fail_closed, "every refusal counted");
}
