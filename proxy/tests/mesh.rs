//! Mesh mTLS upstream: the proxy presents its workload identity to Istio-like
//! inbound fixtures on 127.0.0.1 and verifies theirs (local rcgen mesh CA).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use meshgate_mesh::fixtures::{
    echo_handler, Handler, HboneInbound, LocalCa, SidecarInbound, Validity,
};
use meshgate_mesh::identity::fixed;
use meshgate_mesh::{IdentityManager, IdentityWatch, SidecarFilesProvider, SpiffeId};
use meshgate_proxy::client;
use meshgate_proxy::runtime::{Options, Running, Source};

const GATEWAY: &str = "spiffe://cluster.local/ns/shop/sa/gateway";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

/// An ApiGateway `shop/gw` in mesh mode Istio with one route `/<svc>` per
/// service, each Service's endpoint at the given address.
fn manifests(mesh_backends: &str, services: &[(&str, SocketAddr)]) -> String {
    let mut routes = String::new();
    let mut objects = String::new();
    for (name, addr) in services {
        routes.push_str(&format!(
            "  - name: {name}\n    matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]\n    backendRefs: [{{name: {name}, port: 80}}]\n"
        ));
        objects.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n",
            port = addr.port()
        ));
    }
    format!(
        "apiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata: {{name: gw, namespace: shop}}\nspec:\n  listeners: [{{name: http, port: 8080, protocol: HTTP}}]\n  mesh:\n    mode: Istio\n    backends: {mesh_backends}\n  routes:\n{routes}{objects}"
    )
}

async fn start(
    yaml: &str,
    identity: Option<IdentityWatch>,
    manager: Option<IdentityManager>,
    hbone_port: Option<u16>,
) -> (Running, SocketAddr) {
    let loaded = meshgate_crds::manifests::load_str("mesh-test", yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut options = Options::new(Source::Manifests(Box::new(loaded.manifests)));
    options.listen = HashMap::from([(
        "http".to_string(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )]);
    options.mesh.identity = identity;
    options.identity = manager;
    if let Some(port) = hbone_port {
        options.mesh.hbone_port = port;
    }
    let running = Running::start(options).await.expect("proxy starts");
    let snapshot = running.state.snapshot.load();
    assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
    drop(snapshot);
    let http = running.listener_addr("http").unwrap();
    (running, http)
}

/// The echo, closing the connection after each answer when asked to
/// (`/…/close`), so that every request makes a new upstream connection.
fn closing_echo() -> Handler {
    Arc::new(|request, peer| {
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
    })
}

async fn sidecar(identity: IdentityWatch, td: &str) -> SidecarInbound {
    SidecarInbound::start_with(identity, td, "127.0.0.1:0".parse().unwrap(), closing_echo())
        .await
        .unwrap()
}

fn mi_failures(running: &Running) -> u64 {
    let text = running.state.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix("meshgate_upstream_mesh_identity_failures_total "))
        .and_then(|v| v.parse().ok())
        .expect("metric present")
}

#[tokio::test]
async fn request_reaches_the_sidecar_with_the_gateway_identity_and_istio_alpn() {
    meshgate_proxy::install_crypto_provider();
    let ca = LocalCa::new("cluster.local").unwrap();
    let (_g, gateway) = fixed(ca.identity(&id(GATEWAY)).unwrap());
    let (_w, web) = fixed(ca.identity(&id(WEB)).unwrap());
    let sidecar = sidecar(web, "cluster.local").await;
    let yaml = manifests(
        "[{name: web, serviceAccounts: [web]}]",
        &[("web", sidecar.addr)],
    );
    let (running, http) = start(&yaml, Some(gateway), None, None).await;
    let reply = client::get(http, "shop.test", "/web/hello").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json().unwrap();
    assert_eq!(body["peer"]["spiffeId"], GATEWAY);
    assert_eq!(body["peer"]["alpn"], "istio-http/1.1");
    assert_eq!(
        body["peer"]["sni"],
        "outbound_.80_._.web.shop.svc.cluster.local"
    );
    assert_eq!(body["path"], "/web/hello");
    let config = running.state.snapshot.load().summary(&[]);
    assert_eq!(config["mesh"]["backends"][0]["expected"], WEB);
    assert_eq!(mi_failures(&running), 0);
}

#[tokio::test]
async fn rotation_under_load_fails_no_request_and_new_connections_use_the_new_cert() {
    meshgate_proxy::install_crypto_provider();
    let ca = LocalCa::new("cluster.local").unwrap();
    let (tx, gateway) = fixed(ca.identity(&id(GATEWAY)).unwrap());
    let (_w, web) = fixed(ca.identity(&id(WEB)).unwrap());
    let sidecar = sidecar(web, "cluster.local").await;
    let yaml = manifests("[]", &[("web", sidecar.addr)]);
    let (_running, http) = start(&yaml, Some(gateway.clone()), None, None).await;

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for n in 0..4 {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        // Half the loops close their upstream connection after each request,
        // half reuse pooled connections across the rotations.
        let path = if n % 2 == 0 {
            "/web/close"
        } else {
            "/web/keep"
        };
        loops.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                match client::get(http, "shop.test", path).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Relaxed),
                    _ => failed.fetch_add(1, Relaxed),
                };
            }
        }));
    }
    // Rotate after every 10 successful requests (not after fixed sleeps, so a
    // loaded machine changes the pace, not the outcome).
    let served_ten_more = |ok: Arc<AtomicU64>| async move {
        let target = ok.load(Relaxed) + 10;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while ok.load(Relaxed) < target {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    };
    let mut leaves = Vec::new();
    for _ in 0..3 {
        assert!(served_ten_more(ok.clone()).await, "requests stalled");
        let next = ca.identity(&id(GATEWAY)).unwrap();
        leaves.push(next.chain()[0].clone());
        tx.send_replace(Some(Arc::new(next)));
    }
    assert!(served_ten_more(ok.clone()).await, "requests stalled");
    stop.store(true, Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Relaxed), failed.load(Relaxed));
    assert_eq!(
        failed, 0,
        "no request may fail during rotation ({ok} succeeded)"
    );
    assert!(ok >= 40, "the loop ran: {ok} requests");

    // A new upstream connection presents the newest certificate.
    // (Pooled connections made before the last rotation are used up first:
    // each `/close` answer ends the connection it came on.)
    let before = sidecar.peers().len();
    for _ in 0..6 {
        let reply = client::get(http, "shop.test", "/web/close").await.unwrap();
        assert_eq!(reply.status, 200);
    }
    let peers = sidecar.peers();
    let latest = leaves.last().unwrap();
    assert!(peers.len() > before);
    assert!(
        peers[before..]
            .iter()
            .all(|p| p.cert.as_ref() == Some(latest)),
        "new connections present the rotated certificate"
    );
    // Every certificate of the rotation was presented by some connection.
    for leaf in &leaves {
        assert!(peers.iter().any(|p| p.cert.as_ref() == Some(leaf)));
    }
}

#[tokio::test]
async fn refused_upstream_identities_get_503_mi_and_are_counted() {
    meshgate_proxy::install_crypto_provider();
    let ca = LocalCa::new("cluster.local").unwrap();
    let other = LocalCa::new("cluster.local").unwrap();
    let (_g, gateway) = fixed(ca.identity(&id(GATEWAY)).unwrap());
    let bad: Vec<(&str, meshgate_mesh::WorkloadIdentity)> = vec![
        (
            "expired",
            ca.identity_with(&id(WEB), Validity::Expired, &[ca.root()])
                .unwrap(),
        ),
        (
            "wrongroot",
            other
                .identity_with(&id(WEB), Validity::Current, &[ca.root(), other.root()])
                .unwrap(),
        ),
        (
            "wrongtd",
            ca.identity(&id("spiffe://evil.local/ns/shop/sa/web"))
                .unwrap(),
        ),
        (
            "wrongns",
            ca.identity(&id("spiffe://cluster.local/ns/other/sa/web"))
                .unwrap(),
        ),
        (
            "wrongsa",
            ca.identity(&id("spiffe://cluster.local/ns/shop/sa/db"))
                .unwrap(),
        ),
    ];
    let mut sidecars = Vec::new();
    let mut keep = Vec::new();
    for (name, identity) in bad {
        let td = identity.id.trust_domain().to_string();
        let (tx, rx) = fixed(identity);
        keep.push(tx);
        sidecars.push((name, sidecar(rx, &td).await));
    }
    let services: Vec<(&str, SocketAddr)> = sidecars.iter().map(|(n, s)| (*n, s.addr)).collect();
    let yaml = manifests("[{name: wrongsa, serviceAccounts: [web]}]", &services);
    let (running, http) = start(&yaml, Some(gateway), None, None).await;
    for (n, (name, sidecar)) in sidecars.iter().enumerate() {
        let reply = client::get(http, "shop.test", &format!("/{name}/x"))
            .await
            .unwrap();
        assert_eq!(reply.status, 503, "{name}: {}", reply.text());
        assert_eq!(reply.header("x-meshgate-flags"), Some("MI"), "{name}");
        assert_eq!(mi_failures(&running), n as u64 + 1, "{name}: counted");
        assert!(
            sidecar.peers().is_empty(),
            "{name}: nothing reached the backend"
        );
        // A refused handshake is a failed connection attempt of that backend.
        assert_eq!(
            pool_metric(&running, "meshgate_upstream_connect_failures_total", name),
            1,
            "{name}"
        );
        assert_eq!(
            pool_metric(&running, "meshgate_upstream_connections_opened_total", name),
            0,
            "{name}"
        );
    }
}

/// A pool series of backend `shop/<service>:80`.
fn pool_metric(running: &Running, series: &str, service: &str) -> u64 {
    let text = running.state.policy.render_metrics();
    let prefix = format!("{series}{{backend=\"shop/{service}:80\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{prefix} in\n{text}"))
}

#[tokio::test]
async fn active_health_checks_probe_mesh_backends_over_mtls() {
    meshgate_proxy::install_crypto_provider();
    let ca = LocalCa::new("cluster.local").unwrap();
    let (_g, gateway) = fixed(ca.identity(&id(GATEWAY)).unwrap());
    let (_w, web) = fixed(ca.identity(&id(WEB)).unwrap());
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probes = Arc::new(AtomicU64::new(0));
    let handler: Handler = {
        let healthy = healthy.clone();
        let probes = probes.clone();
        Arc::new(move |request, peer| {
            let healthy = healthy.clone();
            let probes = probes.clone();
            Box::pin(async move {
                if request.uri().path() == "/healthz" {
                    probes.fetch_add(1, Relaxed);
                    let status = if healthy.load(Relaxed) { 200 } else { 503 };
                    let mut response = http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(peer.id.map(|i| i.to_string()).unwrap_or_default()),
                    ));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    return response;
                }
                echo_handler(request, peer).await
            })
        })
    };
    let sidecar = SidecarInbound::start_with(
        web,
        "cluster.local",
        "127.0.0.1:0".parse().unwrap(),
        handler,
    )
    .await
    .unwrap();
    let yaml = manifests(
        "[{name: web, serviceAccounts: [web]}]",
        &[("web", sidecar.addr)],
    ) + "---\napiVersion: meshgate.io/v1alpha1\nkind: ApiPolicy\nmetadata: {name: hc, namespace: shop}\nspec:\n  targetRefs: [{group: meshgate.io, kind: ApiGateway, name: gw}]\n  healthCheck:\n    active: {type: HTTP, http: {path: /healthz}, interval: 100ms, unhealthyThreshold: 1, healthyThreshold: 1}\n";
    let (running, http) = start(&yaml, Some(gateway), None, None).await;
    let wait = Duration::from_secs(10);
    let status =
        |path: &'static str| async move { client::get(http, "shop.test", path).await.unwrap() };

    // Probes arrive over the mesh connection: mTLS with the gateway's identity.
    let deadline = tokio::time::Instant::now() + wait;
    while probes.load(Relaxed) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no probes arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peers = sidecar.peers();
    assert!(!peers.is_empty());
    for peer in &peers {
        assert_eq!(
            peer.id.as_ref().map(|i| i.to_string()).as_deref(),
            Some(GATEWAY)
        );
        assert_eq!(peer.alpn.as_deref(), Some("istio-http/1.1"));
    }
    assert_eq!(status("/web/a").await.status, 200);

    // The backend fails its probe: no healthy endpoint, 503 UH.
    healthy.store(false, Relaxed);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let reply = status("/web/b").await;
        if reply.status == 503 {
            assert_eq!(reply.header("x-meshgate-flags"), Some("UH"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never marked unhealthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It passes again: served again.
    healthy.store(true, Relaxed);
    let deadline = tokio::time::Instant::now() + wait;
    while status("/web/c").await.status != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never healthy again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Probes and requests shared the pooled mesh connection(s); none failed.
    assert!(
        pool_metric(
            &running,
            "meshgate_upstream_connections_opened_total",
            "web"
        ) >= 1
    );
    assert_eq!(
        pool_metric(&running, "meshgate_upstream_connect_failures_total", "web"),
        0
    );
    assert_eq!(mi_failures(&running), 0);
}

#[tokio::test]
async fn root_rotation_with_two_roots_in_the_bundle() {
    meshgate_proxy::install_crypto_provider();
    let old = LocalCa::new("cluster.local").unwrap();
    let new = LocalCa::new("cluster.local").unwrap();
    let bundle = [old.root(), new.root()];
    let (_g, gateway) = fixed(
        old.identity_with(&id(GATEWAY), Validity::Current, &bundle)
            .unwrap(),
    );
    let (_w, web) = fixed(
        new.identity_with(&id(WEB), Validity::Current, &bundle)
            .unwrap(),
    );
    let sidecar = sidecar(web, "cluster.local").await;
    let yaml = manifests("[]", &[("web", sidecar.addr)]);
    let (_running, http) = start(&yaml, Some(gateway), None, None).await;
    let reply = client::get(http, "shop.test", "/web").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json().unwrap()["peer"]["spiffeId"], GATEWAY);
}

#[tokio::test]
async fn ambient_backends_are_reached_through_hbone() {
    meshgate_proxy::install_crypto_provider();
    let ca = LocalCa::new("cluster.local").unwrap();
    let (_g, gateway) = fixed(ca.identity(&id(GATEWAY)).unwrap());
    let (_w, web) = fixed(ca.identity(&id(WEB)).unwrap());
    // The pod's application speaks plain HTTP; ztunnel terminates the mesh.
    let app = meshgate_proxy::demo::spawn_echo("ambient-app")
        .await
        .unwrap();
    let ztunnel = HboneInbound::start(web, "cluster.local", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let yaml = manifests(
        "[{name: amb, serviceAccounts: [web], dataplaneMode: Ambient}]",
        &[("amb", app)],
    );
    let (_running, http) = start(&yaml, Some(gateway), None, Some(ztunnel.addr.port())).await;
    let reply = client::get(http, "shop.test", "/amb/x").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json().unwrap()["backend"], "ambient-app");
    let tunnels = ztunnel.tunnels();
    assert_eq!(tunnels.len(), 1);
    assert_eq!(tunnels[0].peer, Some(id(GATEWAY)));
    assert_eq!(tunnels[0].authority, app.to_string());
}

#[tokio::test]
async fn sidecar_files_identity_is_used_and_reloaded() {
    meshgate_proxy::install_crypto_provider();
    let ca = LocalCa::new("cluster.local").unwrap();
    let (_w, web) = fixed(ca.identity(&id(WEB)).unwrap());
    let sidecar = sidecar(web, "cluster.local").await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("mesh-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |who: &str| {
        let issued = ca.issue(&id(who), Validity::Current).unwrap();
        // Istio writes the files one by one; the provider only publishes a
        // consistent set.
        std::fs::write(dir.join("cert-chain.pem"), &issued.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &issued.key_pem).unwrap();
        std::fs::write(dir.join("root-cert.pem"), ca.root_pem()).unwrap();
    };
    write(GATEWAY);
    let manager =
        IdentityManager::spawn(SidecarFilesProvider::new(&dir, Duration::from_millis(50)));
    manager.ready(Duration::from_secs(5)).await.unwrap();
    let yaml = manifests("[]", &[("web", sidecar.addr)]);
    let (running, http) = start(&yaml, None, Some(manager), None).await;
    let reply = client::get(http, "shop.test", "/web/close").await.unwrap();
    assert_eq!(reply.json().unwrap()["peer"]["spiffeId"], GATEWAY);

    const SECOND: &str = "spiffe://cluster.local/ns/shop/sa/gateway-2";
    write(SECOND);
    let mut seen = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reply = client::get(http, "shop.test", "/web/close").await.unwrap();
        assert_eq!(reply.status, 200);
        let peer = reply.json().unwrap()["peer"]["spiffeId"].clone();
        if peer == SECOND {
            seen = Some(peer);
            break;
        }
    }
    assert!(
        seen.is_some(),
        "the reloaded identity reaches new connections"
    );
    assert!(running
        .state
        .metrics
        .render()
        .contains("meshgate_mesh_identity_rotations_total 2"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_an_identity_mesh_backends_get_503_mi() {
    meshgate_proxy::install_crypto_provider();
    let app = meshgate_proxy::demo::spawn_echo("plain").await.unwrap();
    let yaml = manifests("[]", &[("web", app)]);
    let (running, http) = start(&yaml, None, None, None).await;
    let reply = client::get(http, "shop.test", "/web").await.unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-meshgate-flags"), Some("MI"));
    assert_eq!(mi_failures(&running), 1);
    // mode None: the same backend in plaintext.
    let plain = yaml.replace("mode: Istio\n    backends: []", "mode: None");
    let (_running, http) = start(&plain, None, None, None).await;
    let reply = client::get(http, "shop.test", "/web").await.unwrap();
    assert_eq!(reply.status, 200);
}
