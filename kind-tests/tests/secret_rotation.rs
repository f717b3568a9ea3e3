//! Certificate rotation through the API: replacing the data of a
//! kubernetes.io/tls Secret makes a proxy in cluster mode serve the new
//! certificate on the next handshake, with no restart, while connections
//! keep being accepted throughout.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use meshgate_crds::ApiGateway;
use meshgate_kind_tests::{client, install_crds, TestNamespace};
use meshgate_proxy::cluster::ClusterSource;
use meshgate_proxy::runtime::{Options, Running, Source};
use meshgate_proxy::snapshot::GatewayRef;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};

const HOST: &str = "shop.example.test";

struct EdgeCa {
    root: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl EdgeCa {
    fn new() -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("CA");
        EdgeCa {
            root: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for HOST: (certificate DER, cert PEM, key PEM).
    fn leaf(&self) -> (CertificateDer<'static>, String, String) {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![HOST.to_string()]).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        (cert.der().clone(), cert.pem(), key.serialize_pem())
    }
}

fn tls_secret(ns: &str, cert_pem: &str, key_pem: &str) -> Secret {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "edge-cert", "namespace": ns},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert_pem, "tls.key": key_pem},
    }))
    .expect("Secret")
}

/// Completes a TLS handshake and returns the leaf the proxy presented.
async fn served_leaf(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<CertificateDer<'static>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(HOST).expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or_else(|| std::io::Error::other("no certificate"))
}

#[tokio::test]
async fn secret_rotation_reaches_the_proxy_without_restart() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = client().await.expect("cluster");
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::create(&client, "rotate")
        .await
        .expect("namespace");
    let n = ns.name.clone();
    let ca = EdgeCa::new();
    let (first_der, first_pem, first_key) = ca.leaf();
    let (second_der, second_pem, second_key) = ca.leaf();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &n);
    secrets
        .create(
            &PostParams::default(),
            &tls_secret(&n, &first_pem, &first_key),
        )
        .await
        .expect("Secret");
    let gw: ApiGateway = serde_json::from_value(serde_json::json!({
        "apiVersion": "meshgate.io/v1alpha1", "kind": "ApiGateway",
        "metadata": {"name": "edge", "namespace": n},
        "spec": {
            "listeners": [{"name": "https", "port": 8443, "protocol": "HTTPS",
                           "tls": {"certificateRefs": [{"name": "edge-cert"}]}}],
            "routes": [{"name": "moved", "filters": [{"type": "RequestRedirect",
                        "requestRedirect": {"hostname": "elsewhere.example.test"}}]}]
        }
    }))
    .expect("ApiGateway");
    Api::<ApiGateway>::namespaced(client.clone(), &n)
        .create(&PostParams::default(), &gw)
        .await
        .expect("ApiGateway");

    let gateway_ref: GatewayRef = format!("{n}/edge").parse().expect("ref");
    let mut options = Options::new(Source::Cluster(ClusterSource::new(
        client.clone(),
        &gateway_ref,
    )));
    options.gateway = Some(gateway_ref);
    options.listen = HashMap::from([(
        "https".to_string(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )]);
    let running = tokio::time::timeout(Duration::from_secs(30), Running::start(options))
        .await
        .expect("first snapshot within 30s")
        .expect("proxy starts");
    let addr = running.listener_addr("https").expect("bound");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root.clone()).expect("root");
    let config = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    assert_eq!(
        served_leaf(addr, config.clone()).await.expect("handshake"),
        first_der
    );

    // Rotate: replace the Secret's data in place, as cert-manager does.
    let patch = serde_json::json!({"stringData": {"tls.crt": second_pem, "tls.key": second_key}});
    secrets
        .patch("edge-cert", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("rotate Secret");
    let start = Instant::now();
    let mut failures = 0;
    let mut handshakes = 0;
    let rotated = loop {
        match served_leaf(addr, config.clone()).await {
            Ok(leaf) if leaf == second_der => break Some(start.elapsed()),
            Ok(leaf) => assert_eq!(leaf, first_der, "only the two certificates are served"),
            Err(_) => failures += 1,
        }
        handshakes += 1;
        if start.elapsed() > Duration::from_secs(5) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = rotated.expect("the new certificate is served within 5 s");
    eprintln!("new certificate served {took:?} after the Secret update ({handshakes} handshakes before it)");
    assert!(took < Duration::from_secs(1), "rotation took {took:?}");
    assert_eq!(
        failures, 0,
        "{failures} of {handshakes} handshakes failed during rotation"
    );

    running.shutdown(Duration::from_secs(2)).await;
    ns.delete().await.expect("namespace deleted");
}
