//! The real Istio CA: a workload with a real service-account token (TokenRequest,
//! audience istio-ca) from the real API server gets a certificate from istiod,
//! and the SPIFFE ID in it is that workload's.

use std::time::Duration;

use meshgate_kind_tests::{client, istio_ca_token, istio_mesh_root, istiod_addr, TestNamespace};
use meshgate_mesh::{certs, CaConfig, IstioCaClient, SpiffeId};

#[tokio::test]
async fn istiod_issues_the_workloads_spiffe_identity() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = client().await.expect("cluster");
    let ns = TestNamespace::create(&client, "istio-ca")
        .await
        .expect("namespace");
    let token = istio_ca_token(&client, &ns.name, "edge-gateway")
        .await
        .expect("service-account token");
    let root_pem = istio_mesh_root(&client, &ns.name).await.expect("mesh root");

    let dir = std::env::temp_dir().join(format!("meshgate-token-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let token_path = dir.join("istio-token");
    std::fs::write(&token_path, &token).unwrap();

    let ca = IstioCaClient::new(CaConfig {
        address: istiod_addr(),
        server_name: "istiod.istio-system.svc".into(),
        root_pem: root_pem.clone(),
        token_path: token_path.clone(),
        cluster_id: "Kubernetes".into(),
        ttl: Duration::from_secs(3600),
    })
    .expect("CA client");
    let want = SpiffeId::new("cluster.local", &ns.name, "edge-gateway").unwrap();
    let issued = ca.issue(&want).await.expect("istiod signs the CSR");
    assert_eq!(issued.identity, want);
    assert_eq!(certs::spiffe_id(&issued.chain[0]).unwrap(), want);
    let published_root = certs::parse_pem_chain(&root_pem).unwrap();
    assert!(
        published_root.contains(&issued.root),
        "the chain's root is the root istiod publishes in istio-ca-root-cert"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let lifetime = issued.not_after_unix - now;
    assert!(
        (3000..=3700).contains(&lifetime),
        "requested 1h, got {lifetime}s"
    );

    // Asking for somebody else's identity with this token never yields it:
    // istiod issues the token's identity whatever the CSR says, and `issue`
    // refuses a certificate that is not for the identity it asked for.
    let other = SpiffeId::new("cluster.local", &ns.name, "someone-else").unwrap();
    let err = ca
        .issue(&other)
        .await
        .err()
        .expect("another identity is refused");
    assert!(err.to_string().contains("asked for"), "{err}");

    // A token with the wrong audience is refused too.
    std::fs::write(&token_path, "not-a-token").unwrap();
    assert!(
        ca.issue(&want).await.is_err(),
        "a bad token must be refused"
    );

    let _ = std::fs::remove_dir_all(&dir);
    ns.delete().await.expect("namespace deleted");
}
