//! The proxy as it runs in a pod, against the real control plane: it reads its
//! configuration from the API server (cluster mode: ApiGateway, Service,
//! EndpointSlice), its workload certificate comes from the real istiod (CSR + a
//! real TokenRequest token for the gateway's ServiceAccount), and it routes a
//! request over mTLS to a sidecar fixture whose server certificate istiod issued
//! too, for a second service account. The fixture sees the gateway's SPIFFE ID.
//!
//! The API server refuses loopback addresses in EndpointSlices, so the slice
//! names a stand-in (192.0.2.1, TEST-NET-1) that the proxy's address map turns
//! into 127.0.0.1; nothing else is dialled.
//!
//! istiod: `MESHGATE_ISTIOD_ADDR` (default 127.0.0.1:15012).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::PostParams;
use kube::Api;
use meshgate_crds::ApiGateway;
use meshgate_kind_tests::{
    client, install_crds, istio_ca_token, istio_mesh_root, istiod_addr, TestNamespace,
};
use meshgate_mesh::fixtures::SidecarInbound;
use meshgate_mesh::{CaConfig, IdentityManager, IstioCaProvider, SpiffeId};
use meshgate_proxy::cluster::ClusterSource;
use meshgate_proxy::runtime::{Options, Running, Source};
use meshgate_proxy::snapshot::GatewayRef;

/// Stand-in endpoint address the proxy maps to 127.0.0.1.
const STAND_IN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// An identity for `sa` from istiod, kept fresh by the provider.
async fn istiod_identity(
    dir: &std::path::Path,
    client: &kube::Client,
    ns: &str,
    sa: &str,
    root_path: &std::path::Path,
) -> IdentityManager {
    let token_path = dir.join(format!("{sa}-token"));
    std::fs::write(
        &token_path,
        istio_ca_token(client, ns, sa)
            .await
            .expect("service-account token"),
    )
    .unwrap();
    let config = CaConfig {
        address: istiod_addr(),
        server_name: "istiod.istio-system.svc".into(),
        root_pem: String::new(),
        token_path,
        cluster_id: "Kubernetes".into(),
        ttl: Duration::from_secs(3600),
    };
    let id = SpiffeId::new("cluster.local", ns, sa).unwrap();
    let manager = IdentityManager::spawn(IstioCaProvider::new(
        config,
        Some(root_path.to_path_buf()),
        id.clone(),
    ));
    manager
        .ready(Duration::from_secs(30))
        .await
        .expect("istiod issues the identity");
    assert_eq!(manager.watch.borrow().as_ref().unwrap().id, id);
    manager
}

#[tokio::test]
async fn proxy_routes_over_mtls_with_istiod_issued_identities() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = client().await.expect("cluster");
    let ns = TestNamespace::create(&client, "mesh-istiod")
        .await
        .expect("namespace");
    let dir = std::env::temp_dir().join(format!("meshgate-mesh-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let root_path = dir.join("root-cert.pem");
    std::fs::write(
        &root_path,
        istio_mesh_root(&client, &ns.name).await.expect("mesh root"),
    )
    .unwrap();

    let gateway = istiod_identity(&dir, &client, &ns.name, "edge-gateway", &root_path).await;
    let backend = istiod_identity(&dir, &client, &ns.name, "web", &root_path).await;
    let sidecar = SidecarInbound::start(backend.watch.clone(), "cluster.local")
        .await
        .expect("sidecar fixture");

    let n = &ns.name;
    let port = sidecar.addr.port();
    let yaml = format!(
        r#"apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {{name: gw, namespace: {n}}}
spec:
  listeners: [{{name: http, port: 8080, protocol: HTTP}}]
  mesh:
    mode: Istio
    backends: [{{name: web, serviceAccounts: [web]}}]
  routes:
  - name: web
    backendRefs: [{{name: web, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {n}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: {n}, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [192.0.2.1]}}]
"#
    );
    let loaded = meshgate_crds::manifests::load_str("mesh-istiod", &yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    install_crds(&client).await.expect("CRDs");
    let pp = PostParams::default();
    let m = loaded.manifests;
    Api::<ApiGateway>::namespaced(client.clone(), n)
        .create(&pp, &m.gateways[0])
        .await
        .expect("ApiGateway");
    Api::<Service>::namespaced(client.clone(), n)
        .create(&pp, &m.services[0])
        .await
        .expect("Service");
    Api::<EndpointSlice>::namespaced(client.clone(), n)
        .create(&pp, &m.endpoint_slices[0])
        .await
        .expect("EndpointSlice");

    let gateway_ref: GatewayRef = format!("{n}/gw").parse().expect("gateway ref");
    let mut source = ClusterSource::new(client.clone(), &gateway_ref);
    source.address_map = Some(HashMap::from([(
        IpAddr::V4(STAND_IN),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )]));
    let mut options = Options::new(Source::Cluster(source));
    options.gateway = Some(gateway_ref);
    options.listen = HashMap::from([(
        "http".to_string(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )]);
    options.identity = Some(gateway);
    let running = Running::start(options).await.expect("proxy");
    let http = running.listener_addr("http").unwrap();

    let reply = meshgate_proxy::client::get(http, "gw.test", "/hello")
        .await
        .expect("request");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json().unwrap();
    let want = format!("spiffe://cluster.local/ns/{n}/sa/edge-gateway");
    assert_eq!(body["peer"]["spiffeId"], want.as_str());
    assert_eq!(body["peer"]["alpn"], "istio-http/1.1");
    let peers = sidecar.peers();
    assert_eq!(peers[0].id.as_ref().map(ToString::to_string), Some(want));
    assert!(running
        .state
        .metrics
        .render()
        .contains("meshgate_mesh_identity_loads_total{result=\"ok\"} 1"));

    running.shutdown(Duration::from_secs(2)).await;
    drop(backend);
    let _ = std::fs::remove_dir_all(&dir);
    ns.delete().await.expect("namespace deleted");
}
