//! Control-plane outages under load, against the real control plane: a
//! cluster-mode proxy (in-process, listener on 127.0.0.1) serves a constant
//! rate of requests (`meshgate_proxy::loadgen`) while kube-apiserver is
//! stopped for 60 s, while the operator is killed, and while istiod is down
//! past the proxy's certificate renewal point. Every failed request is counted;
//! the expected count is zero in all three.
//!
//! Components are stopped and started with `local-cluster.sh stop|start
//! STATE_DIR COMPONENT` (same flags as `up`), so these tests need the local
//! control plane (`MESHGATE_CLUSTER_DIR`, set by `local-cluster.sh env`). They
//! take the control plane down, so they run one at a time (`OUTAGE`), and no
//! other test binary runs while this one does (cargo runs test binaries in turn).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use meshgate_crds::ApiGateway;
use meshgate_kind_tests::{
    client, install_crds, istio_ca_token, istio_mesh_root, istiod_addr, repo, wait_for,
    TestNamespace,
};
use meshgate_mesh::{CaConfig, IdentityManager, IstioCaProvider, SpiffeId};
use meshgate_operator::{BuildOptions, LeaseConfig, Options as OperatorOptions};
use meshgate_proxy::cluster::ClusterSource;
use meshgate_proxy::loadgen::{Failure, Load, LoadSpec, Report};
use meshgate_proxy::runtime::{Options, Running, Source};
use meshgate_proxy::snapshot::GatewayRef;
use serde_json::json;
use tokio::task::JoinHandle;

/// One outage at a time: each takes a shared component down.
static OUTAGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const STAND_IN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const LEASE: &str = "meshgate-operator";
const WAIT: Duration = Duration::from_secs(60);

/// `local-cluster.sh ACTION STATE_DIR COMPONENT`.
async fn component(action: &str, name: &str) {
    let state = std::env::var("MESHGATE_CLUSTER_DIR").expect(
        "MESHGATE_CLUSTER_DIR must name the local control plane (eval \"$(local-cluster.sh env DIR)\"): \
         the outage tests stop and start its components",
    );
    let script = repo().join("kind-tests/scripts/local-cluster.sh");
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .args([action, &state, name])
        .output()
        .await
        .expect("local-cluster.sh runs");
    assert!(
        out.status.success(),
        "local-cluster.sh {action} {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gateway(route_path: &str) -> ApiGateway {
    serde_json::from_value(json!({
        "apiVersion": "meshgate.io/v1alpha1",
        "kind": "ApiGateway",
        "metadata": {"name": "edge"},
        "spec": {
            "mesh": {"mode": "None"},
            "listeners": [{"name": "http", "port": 18080, "protocol": "HTTP"}],
            "routes": [{
                "name": "echo",
                "matches": [{"path": {"type": "PathPrefix", "value": route_path}}],
                "backendRefs": [{"name": "echo", "port": 80}],
            }],
            "infrastructure": {"service": {"type": "ClusterIP"}},
        },
    }))
    .expect("ApiGateway")
}

/// ApiGateway `edge`, Service `echo` and its EndpointSlice (at the stand-in
/// address, dialled on 127.0.0.1:`port`).
async fn create_world(client: &Client, ns: &str, port: u16) {
    let pp = PostParams::default();
    Api::<ApiGateway>::namespaced(client.clone(), ns)
        .create(&pp, &gateway("/v1"))
        .await
        .expect("ApiGateway");
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&pp, &service)
        .await
        .expect("Service");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "echo-1", "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port}],
        "endpoints": [{"addresses": [STAND_IN.to_string()], "conditions": {"ready": true}}],
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&pp, &slice)
        .await
        .expect("EndpointSlice");
}

/// Drops access log lines (the load would flood the test output).
struct Discard;

impl meshgate_proxy::access_log::LogSink for Discard {
    fn write_line(&self, _line: &str) {}
}

/// The proxy in cluster mode for `ns/edge`.
async fn start_proxy(client: &Client, ns: &str) -> Running {
    let gateway_ref: GatewayRef = format!("{ns}/edge").parse().expect("ref");
    let mut source = ClusterSource::new(client.clone(), &gateway_ref);
    source.address_map = Some(HashMap::from([(
        IpAddr::V4(STAND_IN),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )]));
    let mut options = Options::new(Source::Cluster(source));
    options.gateway = Some(gateway_ref);
    options.access_log = meshgate_proxy::access_log::AccessLog::new(Discard);
    options.listen = HashMap::from([(
        "http".to_string(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )]);
    tokio::time::timeout(Duration::from_secs(30), Running::start(options))
        .await
        .expect("first snapshot within 30s")
        .expect("proxy starts")
}

/// The operator in-process, scoped to `ns` (its RBAC is proven by operator.rs;
/// here it runs as the admin).
fn start_operator(client: &Client, ns: &str) -> (JoinHandle<()>, String) {
    let opts = OperatorOptions {
        build: BuildOptions {
            proxy_image: "example.invalid/meshgate-proxy:conformance".into(),
            ..BuildOptions::default()
        },
        namespaces: vec![ns.to_string()],
        lease: LeaseConfig::new(ns, LEASE, &meshgate_operator::default_identity()),
        metrics_addr: None,
    };
    let identity = opts.lease.identity.clone();
    let client = client.clone();
    let handle = tokio::spawn(async move {
        let _ = meshgate_operator::run(client, opts, std::future::pending()).await;
    });
    (handle, identity)
}

/// The operator's managedFields entries (operation, subresource, time) on the
/// gateway and every object it owns: what it wrote, and when.
async fn operator_writes(client: &Client, ns: &str) -> BTreeMap<&'static str, String> {
    fn writes(meta: &ObjectMeta) -> String {
        meta.managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() == Some(meshgate_operator::apply::FIELD_MANAGER))
            .map(|m| {
                format!(
                    "{}:{}:{}",
                    m.operation.as_deref().unwrap_or_default(),
                    m.subresource.as_deref().unwrap_or_default(),
                    m.time.as_ref().map(|t| t.0.to_string()).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }
    async fn get<K>(client: &Client, ns: &str, name: &str) -> String
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        api.get_opt(name)
            .await
            .expect("get")
            .map(|o| writes(o.meta()))
            .unwrap_or_default()
    }
    let n = "edge-meshgate";
    BTreeMap::from([
        ("ApiGateway", get::<ApiGateway>(client, ns, "edge").await),
        ("Deployment", get::<Deployment>(client, ns, n).await),
        ("Service", get::<Service>(client, ns, n).await),
        ("ServiceAccount", get::<ServiceAccount>(client, ns, n).await),
        ("Role", get::<Role>(client, ns, n).await),
        ("RoleBinding", get::<RoleBinding>(client, ns, n).await),
        (
            "PodDisruptionBudget",
            get::<PodDisruptionBudget>(client, ns, n).await,
        ),
    ])
}

/// The operator's writes once they have not changed for 3 s.
async fn settled_writes(client: &Client, ns: &str) -> BTreeMap<&'static str, String> {
    let mut last = operator_writes(client, ns).await;
    let mut since = Instant::now();
    let deadline = since + WAIT;
    while since.elapsed() < Duration::from_secs(3) {
        assert!(
            Instant::now() < deadline,
            "the operator's writes never settled"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = operator_writes(client, ns).await;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

/// Whether the gateway's condition `type_` is True for its current generation.
async fn condition(client: &Client, ns: &str, type_: &str) -> bool {
    let gw = Api::<ApiGateway>::namespaced(client.clone(), ns)
        .get("edge")
        .await
        .ok();
    gw.and_then(|g| {
        let generation = g.metadata.generation;
        g.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_ && c.status == "True" && c.observed_generation == generation)
    })
    .is_some()
}

/// The lease's renewTime when `identity` holds it.
async fn renewed_by(client: &Client, ns: &str, identity: &str) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get(LEASE)
        .await
        .ok()?;
    let spec = lease.spec?;
    (spec.holder_identity.as_deref() == Some(identity)).then_some(())?;
    spec.renew_time.map(|t| t.0.to_string())
}

/// Points EndpointSlice `echo-1` at another local port.
async fn move_endpoint(client: &Client, ns: &str, port: u16) {
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .patch(
            "echo-1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"ports": [{"name": "http", "port": port}]})),
        )
        .await
        .expect("patch EndpointSlice");
}

fn describe(report: &Report) -> String {
    format!(
        "{} ok, {} failed (first: {:?})",
        report.ok,
        report.failures.len(),
        report.failures.iter().take(5).collect::<Vec<_>>()
    )
}

/// Waits until the proxy answers `path` with 200.
async fn serves(addr: SocketAddr, path: &str) -> Option<Duration> {
    let start = Instant::now();
    wait_for(Duration::from_secs(30), || async {
        let r = meshgate_proxy::client::get(addr, "a.test", path)
            .await
            .ok()?;
        (r.status == 200).then_some(())
    })
    .await
    .ok()
    .map(|_| start.elapsed())
}

#[tokio::test]
async fn apiserver_down_60s_the_proxy_serves_and_the_operator_writes_nothing_twice() {
    let _outage = OUTAGE.lock().await;
    let client = client().await.expect("cluster");
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::create(&client, "outage-api")
        .await
        .expect("namespace");
    let echo = meshgate_proxy::demo::spawn_echo("a").await.unwrap();
    let echo_b = meshgate_proxy::demo::spawn_echo("b").await.unwrap();
    create_world(&client, &ns.name, echo.port()).await;
    let (operator, identity) = start_operator(&client, &ns.name);
    wait_for(WAIT, || async {
        condition(&client, &ns.name, "Ready").await.then_some(())
    })
    .await
    .expect("the operator makes the gateway Ready");
    let proxy = start_proxy(&client, &ns.name).await;
    let addr = proxy.listener_addr("http").unwrap();
    let load = Load::start(LoadSpec::http1(addr, "a.test", "/v1/x", 50, 4));
    assert!(load.served(50, WAIT).await, "load never ran");
    let before = settled_writes(&client, &ns.name).await;

    component("stop", "kube-apiserver").await;
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let served_during = load.ok();
    component("start", "kube-apiserver").await;
    let outage = stopped.elapsed();

    // The proxy's watches come back: an endpoint change made right after the
    // restart reaches it (the operator has nothing to write for it).
    let restarted = Instant::now();
    move_endpoint(&client, &ns.name, echo_b.port()).await;
    let proxy_recovered = wait_for(WAIT, || async {
        let r = meshgate_proxy::client::get(addr, "a.test", "/v1/x")
            .await
            .ok()?;
        (r.json().ok()?["backend"] == "b").then_some(())
    })
    .await
    .map(|_| restarted.elapsed())
    .expect("the proxy's watches recover");
    eprintln!(
        "apiserver outage: the proxy's watches are back {proxy_recovered:?} after the restart"
    );

    // The operator re-acquires its lease (it stepped down after 10 s without
    // renewals) and reconciles everything again; that must write nothing.
    let back = Instant::now();
    let first_renewal = wait_for(WAIT, || renewed_by(&client, &ns.name, &identity))
        .await
        .expect("the operator leads again");
    wait_for(WAIT, || async {
        renewed_by(&client, &ns.name, &identity)
            .await
            .filter(|t| *t != first_renewal)
    })
    .await
    .expect("the operator keeps renewing");
    let leading_again = back.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = operator_writes(&client, &ns.name).await;
    assert_eq!(
        before, after,
        "after the outage the operator must not write anything again"
    );

    let report = load.stop().await;

    // Both watch again: a route change reaches the operator (Ready for the new
    // generation) and the proxy.
    let changed = Instant::now();
    Api::<ApiGateway>::namespaced(client.clone(), &ns.name)
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"routes": [{
                "name": "echo",
                "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                "backendRefs": [{"name": "echo", "port": 80}],
            }]}})),
        )
        .await
        .expect("patch");
    let proxy_follows = serves(addr, "/v2/x").await.expect("the proxy follows");
    // Programmed, not Ready: Ready also needs the (kwok) pods, whose nodes
    // missed their heartbeats during the outage too.
    wait_for(WAIT, || async {
        condition(&client, &ns.name, "Programmed")
            .await
            .then_some(())
    })
    .await
    .expect("the operator reconciles the change");
    let operator_follows = changed.elapsed();
    eprintln!(
        "apiserver down {outage:?}: load {} ({served_during} served before the restart); proxy watches back {proxy_recovered:?} after the restart; operator leading again {leading_again:?} after; route change seen by the proxy in {proxy_follows:?}, Programmed by the operator in {operator_follows:?}",
        describe(&report)
    );
    assert_eq!(report.failures, Vec::<Failure>::new());
    assert!(
        report.ok >= 60 * 40,
        "the load ran through the outage: {}",
        report.ok
    );

    operator.abort();
    proxy.shutdown(Duration::from_secs(2)).await;
    ns.delete().await.expect("namespace deleted");
}

#[tokio::test]
async fn operator_killed_traffic_is_unaffected() {
    let _outage = OUTAGE.lock().await;
    let client = client().await.expect("cluster");
    install_crds(&client).await.expect("CRDs");
    let ns = TestNamespace::create(&client, "outage-op")
        .await
        .expect("namespace");
    let echo = meshgate_proxy::demo::spawn_echo("echo").await.unwrap();
    create_world(&client, &ns.name, echo.port()).await;
    let (operator, _) = start_operator(&client, &ns.name);
    // Programmed: the operator is at work. (Ready would also wait for the kwok
    // pods, whose nodes may still be recovering from the API server outage.)
    wait_for(WAIT, || async {
        condition(&client, &ns.name, "Programmed")
            .await
            .then_some(())
    })
    .await
    .expect("the operator programs the gateway");
    let proxy = start_proxy(&client, &ns.name).await;
    let addr = proxy.listener_addr("http").unwrap();
    let load = Load::start(LoadSpec::http1(addr, "a.test", "/v1/x", 50, 4));
    assert!(load.served(50, WAIT).await);

    // Killed, not stopped: no shutdown, no lease release.
    operator.abort();
    let _ = operator.await;
    assert!(load.served(150, WAIT).await, "traffic stalled");
    // The proxy reads the cluster itself: changes still reach it.
    let other = meshgate_proxy::demo::spawn_echo("other").await.unwrap();
    move_endpoint(&client, &ns.name, other.port()).await;
    let moved = wait_for(Duration::from_secs(10), || async {
        let r = meshgate_proxy::client::get(addr, "a.test", "/v1/x")
            .await
            .ok()?;
        (r.json().ok()?["backend"] == "other").then_some(())
    })
    .await;
    assert!(
        moved.is_ok(),
        "the proxy follows the cluster without the operator"
    );
    assert!(load.served(50, WAIT).await);
    let report = load.stop().await;
    eprintln!("operator killed: load {}", describe(&report));
    assert_eq!(report.failures, Vec::<Failure>::new());

    proxy.shutdown(Duration::from_secs(2)).await;
    ns.delete().await.expect("namespace deleted");
}

/// Istio backdates workload certificates by 2 minutes (ClockSkewGracePeriod),
/// and the provider renews at half the lifetime less up to 10% of it: a
/// requested TTL of 200 s puts the renewal point 8-40 s after issuance and
/// the expiry 200 s after it.
const SHORT_TTL: Duration = Duration::from_secs(200);

async fn istiod_identity(
    dir: &std::path::Path,
    client: &Client,
    ns: &str,
    sa: &str,
    ttl: Duration,
) -> IdentityManager {
    let token_path = dir.join(format!("{sa}-token"));
    std::fs::write(
        &token_path,
        istio_ca_token(client, ns, sa).await.expect("token"),
    )
    .unwrap();
    let root_path = dir.join("root-cert.pem");
    let config = CaConfig {
        address: istiod_addr(),
        server_name: "istiod.istio-system.svc".into(),
        root_pem: String::new(),
        token_path,
        cluster_id: "Kubernetes".into(),
        ttl,
    };
    let id = SpiffeId::new("cluster.local", ns, sa).unwrap();
    let manager = IdentityManager::spawn(IstioCaProvider::new(config, Some(root_path), id));
    manager
        .ready(Duration::from_secs(30))
        .await
        .expect("istiod issues the identity");
    manager
}

fn leaf(manager: &IdentityManager) -> (Vec<u8>, i64, i64) {
    let current = manager.watch.borrow().clone().expect("identity");
    (
        current.key.cert[0].as_ref().to_vec(),
        current.not_before_unix,
        current.not_after_unix,
    )
}

fn serial(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    cert.raw_serial_as_string()
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn istiod_down_past_the_renewal_point_the_cert_serves_and_renewal_resumes() {
    use meshgate_mesh::fixtures::{echo_handler, Handler, SidecarInbound};
    use std::sync::atomic::Ordering::Relaxed;
    let _outage = OUTAGE.lock().await;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = client().await.expect("cluster");
    let ns = TestNamespace::create(&client, "outage-istiod")
        .await
        .expect("namespace");
    let dir = std::env::temp_dir().join(format!("meshgate-outage-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    // The mesh root is cluster-wide; it is read from `default` (published when the
    // control plane came up) rather than waited for in the new namespace: istiod's
    // namespace controller can still be catching up after the API-server outage
    // test, which is not what this test is about.
    std::fs::write(
        dir.join("root-cert.pem"),
        istio_mesh_root(&client, "default")
            .await
            .expect("mesh root"),
    )
    .unwrap();
    let backend = istiod_identity(&dir, &client, &ns.name, "web", Duration::from_secs(3600)).await;
    // `/close` answers end the connection, so each makes a new mTLS handshake
    // with the gateway's current certificate.
    let handler: Handler = Arc::new(|request, peer| {
        Box::pin(async move {
            let mut response = echo_handler(request, peer).await;
            response
                .headers_mut()
                .insert("connection", http::HeaderValue::from_static("close"));
            response
        })
    });
    let sidecar = SidecarInbound::start_with(
        backend.watch.clone(),
        "cluster.local",
        "127.0.0.1:0".parse().unwrap(),
        handler,
    )
    .await
    .expect("sidecar");
    let gateway = istiod_identity(&dir, &client, &ns.name, "edge-gateway", SHORT_TTL).await;
    let (first, first_nb, first_na) = leaf(&gateway);
    let n = &ns.name;
    let yaml = format!(
        "apiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata: {{name: gw, namespace: {n}}}\nspec:\n  listeners: [{{name: http, port: 8080, protocol: HTTP}}]\n  mesh: {{mode: Istio, backends: [{{name: web, serviceAccounts: [web]}}]}}\n  routes:\n  - {{name: web, backendRefs: [{{name: web, port: 80}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {n}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: {n}, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n",
        sidecar.addr.port()
    );
    let loaded = meshgate_crds::manifests::load_str("outage-istiod", &yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut options = Options::new(Source::Manifests(Box::new(loaded.manifests)));
    options.access_log = meshgate_proxy::access_log::AccessLog::new(Discard);
    options.listen = HashMap::from([(
        "http".to_string(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )]);
    let metrics = gateway.metrics.clone();
    let watch = gateway.watch.clone();
    options.identity = Some(gateway);
    let proxy = Running::start(options).await.expect("proxy");
    let addr = proxy.listener_addr("http").unwrap();
    let load = Load::start(LoadSpec::http1(addr, "gw.test", "/close", 40, 2));
    assert!(load.served(40, WAIT).await, "load never ran");

    component("stop", "istiod").await;
    let stopped = Instant::now();
    // The renewal point passes during the outage: the renewal fails and the
    // still-valid certificate keeps serving.
    wait_for(Duration::from_secs(60), || async {
        (metrics.loads_failed.load(Relaxed) > 0).then_some(())
    })
    .await
    .expect("the renewal point came during the outage");
    let renewal_failed_after = stopped.elapsed();
    assert!(load.served(80, WAIT).await, "traffic stalled");
    let current = watch.borrow().clone().expect("identity");
    assert_eq!(current.key.cert[0].as_ref(), first.as_slice());
    assert!(
        now_unix() < first_na,
        "the first certificate is still valid"
    );
    component("start", "istiod").await;
    let outage = stopped.elapsed();

    let restarted = Instant::now();
    let mut rx = watch.clone();
    tokio::time::timeout(
        Duration::from_secs(90),
        rx.wait_for(|i| {
            i.as_ref()
                .is_some_and(|i| i.key.cert[0].as_ref() != first.as_slice())
        }),
    )
    .await
    .expect("renewal resumed after istiod came back")
    .expect("identity channel open");
    let renewed_after = restarted.elapsed();
    let (second, second_nb, _) = {
        let current = watch.borrow().clone().expect("identity");
        (
            current.key.cert[0].as_ref().to_vec(),
            current.not_before_unix,
            current.not_after_unix,
        )
    };
    assert_ne!(serial(&second), serial(&first), "a new certificate");
    assert!(
        second_nb >= first_nb + outage.as_secs() as i64 - 1,
        "issued after the outage: notBefore {first_nb} -> {second_nb}"
    );
    // New connections present it.
    assert!(load.served(40, WAIT).await);
    let last = sidecar.peers().last().and_then(|p| p.cert.clone());
    assert_eq!(last.as_ref().map(|c| c.as_ref()), Some(second.as_slice()));
    let report = load.stop().await;
    eprintln!(
        "istiod down {outage:?} (renewal failed {renewal_failed_after:?} in, {} failed loads); renewed {renewed_after:?} after the restart, serial {} -> {}; load {}",
        metrics.loads_failed.load(Relaxed),
        serial(&first),
        serial(&second),
        describe(&report)
    );
    assert_eq!(report.failures, Vec::<Failure>::new());

    proxy.shutdown(Duration::from_secs(2)).await;
    drop(backend);
    let _ = std::fs::remove_dir_all(&dir);
    ns.delete().await.expect("namespace deleted");
}
