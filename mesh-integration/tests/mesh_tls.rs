//! The mesh TLS client against Istio-like inbound fixtures over real sockets on
//! 127.0.0.1, with a local rcgen mesh CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use meshgate_mesh::fixtures::{HboneInbound, LocalCa, SidecarInbound, Validity};
use meshgate_mesh::identity::fixed;
use meshgate_mesh::{
    hbone, mesh_client_config, tls_connect, Alpn, Error, ExpectedIdentity, IdentityManager,
    IdentityWatch, SidecarFilesProvider, SpiffeId,
};

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

const GATEWAY: &str = "spiffe://cluster.local/ns/edge/sa/gateway";
const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn shop() -> ExpectedIdentity {
    ExpectedIdentity::Namespace {
        trust_domain: "cluster.local".into(),
        namespace: "shop".into(),
    }
}

async fn get_over<I>(io: I) -> (http::StatusCode, serde_json::Value)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/hello")
        .header("host", "web")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

async fn call(
    gateway: IdentityWatch,
    expected: ExpectedIdentity,
    addr: SocketAddr,
) -> Result<(http::StatusCode, serde_json::Value), Error> {
    let config = Arc::new(mesh_client_config(gateway, expected, Alpn::Http11)?);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tls_connect(config, "outbound_.80_._.web.shop.svc.cluster.local", tcp).await?;
    Ok(get_over(TokioIo::new(tls)).await)
}

fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[tokio::test]
async fn mtls_round_trip_carries_spiffe_ids_alpn_and_sni() {
    init();
    let ca = LocalCa::new("cluster.local").unwrap();
    let (_g, gateway) = fixed(ca.identity(&id(GATEWAY)).unwrap());
    let (_b, backend) = fixed(ca.identity(&id(BACKEND)).unwrap());
    let sidecar = SidecarInbound::start(backend, "cluster.local")
        .await
        .unwrap();
    let (status, body) = call(gateway.clone(), shop(), sidecar.addr).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["peer"]["spiffeId"], GATEWAY);
    assert_eq!(body["peer"]["alpn"], "istio-http/1.1");
    assert_eq!(
        body["peer"]["sni"],
        "outbound_.80_._.web.shop.svc.cluster.local"
    );
    // Exact service accounts work too.
    let exact = ExpectedIdentity::Exact(vec![id(BACKEND)]);
    assert!(call(gateway, exact, sidecar.addr).await.is_ok());
}

#[tokio::test]
async fn bad_peers_are_refused_with_precise_errors() {
    init();
    let ca = LocalCa::new("cluster.local").unwrap();
    let (_g, gateway) = fixed(ca.identity(&id(GATEWAY)).unwrap());
    let cases: Vec<(&str, meshgate_mesh::WorkloadIdentity, ExpectedIdentity)> = {
        let other_ca = LocalCa::new("cluster.local").unwrap();
        vec![
            (
                "expired",
                ca.identity_with(&id(BACKEND), Validity::Expired, &[ca.root()])
                    .unwrap(),
                shop(),
            ),
            (
                "wrong root",
                // The impostor trusts both roots so that only our side refuses.
                other_ca
                    .identity_with(
                        &id(BACKEND),
                        Validity::Current,
                        &[ca.root(), other_ca.root()],
                    )
                    .unwrap(),
                shop(),
            ),
            (
                "wrong trust domain",
                ca.identity(&id("spiffe://evil.local/ns/shop/sa/web"))
                    .unwrap(),
                shop(),
            ),
            (
                "wrong namespace",
                ca.identity(&id("spiffe://cluster.local/ns/other/sa/web"))
                    .unwrap(),
                shop(),
            ),
            (
                "wrong service account",
                ca.identity(&id("spiffe://cluster.local/ns/shop/sa/db"))
                    .unwrap(),
                ExpectedIdentity::Exact(vec![id(BACKEND)]),
            ),
        ]
    };
    for (name, backend_identity, expected) in cases {
        let (_b, backend) = fixed(backend_identity);
        // The fixture's own trust-domain check is lenient here so that the
        // refusal is the client's.
        let td = backend
            .borrow()
            .as_ref()
            .unwrap()
            .id
            .trust_domain()
            .to_string();
        let sidecar = SidecarInbound::start(backend, &td).await.unwrap();
        let err = call(gateway.clone(), expected, sidecar.addr)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: must be refused"));
        assert!(err.is_identity(), "{name}: {err}");
        let ok = match name {
            "expired" => matches!(&err, Error::PeerVerification(m) if m.contains("Expired")),
            "wrong root" => {
                matches!(&err, Error::PeerVerification(m) if m.contains("UnknownIssuer") || m.contains("BadSignature"))
            }
            "wrong trust domain" => matches!(err, Error::WrongTrustDomain { .. }),
            "wrong namespace" => matches!(err, Error::WrongNamespace { .. }),
            _ => matches!(err, Error::UnexpectedIdentity { .. }),
        };
        assert!(ok, "{name}: unexpected error {err:?}");
        assert!(sidecar.peers().is_empty(), "{name}: nothing served");
    }
}

#[tokio::test]
async fn root_rotation_with_two_roots_in_the_bundle() {
    init();
    let old = LocalCa::new("cluster.local").unwrap();
    let new = LocalCa::new("cluster.local").unwrap();
    let bundle = [old.root(), new.root()];
    // The gateway still has a certificate from the old root; the backend
    // already has one from the new root. Both trust both roots.
    let (_g, gateway) = fixed(
        old.identity_with(&id(GATEWAY), Validity::Current, &bundle)
            .unwrap(),
    );
    let (_b, backend) = fixed(
        new.identity_with(&id(BACKEND), Validity::Current, &bundle)
            .unwrap(),
    );
    let sidecar = SidecarInbound::start(backend, "cluster.local")
        .await
        .unwrap();
    let (status, body) = call(gateway, shop(), sidecar.addr).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["peer"]["spiffeId"], GATEWAY);
    // With only the old root, the new backend is refused.
    let (_g2, old_only) = fixed(old.identity(&id(GATEWAY)).unwrap());
    assert!(call(old_only, shop(), sidecar.addr).await.is_err());
}

#[tokio::test]
async fn rotation_applies_to_the_next_handshake() {
    init();
    let ca = LocalCa::new("cluster.local").unwrap();
    let (tx, gateway) = fixed(ca.identity(&id(GATEWAY)).unwrap());
    let (_b, backend) = fixed(ca.identity(&id(BACKEND)).unwrap());
    let sidecar = SidecarInbound::start(backend, "cluster.local")
        .await
        .unwrap();
    let config = Arc::new(mesh_client_config(gateway.clone(), shop(), Alpn::Http11).unwrap());
    let first = gateway.borrow().as_ref().unwrap().chain()[0].clone();
    let tcp = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    let tls = tls_connect(config.clone(), "web", tcp).await.unwrap();
    tx.send_replace(Some(Arc::new(ca.identity(&id(GATEWAY)).unwrap())));
    let second = gateway.borrow().as_ref().unwrap().chain()[0].clone();
    assert_ne!(first, second);
    // The same config, a new connection: the new certificate.
    let tcp = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    let tls2 = tls_connect(config, "web", tcp).await.unwrap();
    // The live first connection still works (and with the old certificate).
    let (status, _) = get_over(TokioIo::new(tls)).await;
    assert_eq!(status, 200);
    let (status, _) = get_over(TokioIo::new(tls2)).await;
    assert_eq!(status, 200);
    let peers = sidecar.peers();
    assert_eq!(peers.len(), 2);
    assert!(peers.iter().all(|p| p.id == Some(id(GATEWAY))));
    let certs: Vec<_> = peers.iter().map(|p| p.cert.clone().unwrap()).collect();
    assert!(
        certs.contains(&first) && certs.contains(&second),
        "old and new certificates seen"
    );
}

#[tokio::test]
async fn hbone_round_trip() {
    init();
    let ca = LocalCa::new("cluster.local").unwrap();
    let (_g, gateway) = fixed(ca.identity(&id(GATEWAY)).unwrap());
    let (_b, backend) = fixed(ca.identity(&id(BACKEND)).unwrap());
    // The application behind ztunnel: plain HTTP, here the echo of a sidecar
    // fixture is not usable (it needs TLS), so a tiny plain server.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = app.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"{\"app\":true}")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    let ztunnel = HboneInbound::start(backend, "cluster.local", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = Arc::new(mesh_client_config(gateway, shop(), Alpn::Hbone).unwrap());
    let tunnel = hbone::connect(config, ztunnel.addr, app_addr)
        .await
        .unwrap();
    let (status, body) = get_over(tunnel).await;
    assert_eq!(status, 200);
    assert_eq!(body["app"], true);
    let tunnels = ztunnel.tunnels();
    assert_eq!(tunnels.len(), 1);
    assert_eq!(tunnels[0].peer, Some(id(GATEWAY)));
    assert_eq!(tunnels[0].authority, app_addr.to_string());
}

#[tokio::test]
async fn sidecar_files_reload_and_ignore_partial_writes() {
    init();
    let ca = LocalCa::new("cluster.local").unwrap();
    let dir = std::env::temp_dir().join(format!("meshgate-certs-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |issued: &meshgate_mesh::fixtures::Issued| {
        std::fs::write(dir.join("cert-chain.pem"), &issued.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &issued.key_pem).unwrap();
        std::fs::write(dir.join("root-cert.pem"), ca.root_pem()).unwrap();
    };
    let first = ca.issue(&id(GATEWAY), Validity::Current).unwrap();
    write(&first);
    let manager =
        IdentityManager::spawn(SidecarFilesProvider::new(&dir, Duration::from_millis(50)));
    manager.ready(Duration::from_secs(5)).await.unwrap();
    let current = || manager.watch.borrow().as_ref().unwrap().chain()[0].clone();
    assert_eq!(current(), first.cert);

    // A half-done rotation: the new chain but still the old key.
    let second = ca.issue(&id(GATEWAY), Validity::Current).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), &second.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(current(), first.cert, "a mismatched key is not published");
    let failed = manager
        .metrics
        .loads_failed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(failed > 0);

    // The key arrives: the new identity is published.
    std::fs::write(dir.join("key.pem"), &second.key_pem).unwrap();
    let mut rx = manager.watch.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|i| i.as_ref().is_some_and(|i| i.chain()[0] == second.cert)),
    )
    .await
    .expect("new files published")
    .unwrap();
    assert_eq!(
        manager
            .metrics
            .rotations
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let _ = std::fs::remove_dir_all(&dir);
}
