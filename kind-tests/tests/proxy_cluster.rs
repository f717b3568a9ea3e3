//! The proxy in cluster mode against a real API server: it serves an ApiGateway
//! read through watches, applies a route change within a second, and follows
//! EndpointSlice changes. The proxy runs in-process; its listener is bound to
//! 127.0.0.1 on a free port and its upstreams are echo servers on 127.0.0.1.
//!
//! The API server refuses loopback addresses in EndpointSlices, so the slices hold
//! a stand-in address (192.0.2.1, TEST-NET-1) that the proxy's address map turns
//! into 127.0.0.1; endpoints outside the map are dropped, so nothing else is dialled.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use meshgate_crds::{ApiGateway, ApiPolicy};
use meshgate_kind_tests::{client, install_crds, TestNamespace, FIELD_MANAGER};
use meshgate_proxy::cluster::ClusterSource;
use meshgate_proxy::demo::spawn_echo;
use meshgate_proxy::runtime::{Options, Running, Source};
use meshgate_proxy::snapshot::GatewayRef;

const STAND_IN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn gateway(ns: &str, route_path: &str) -> ApiGateway {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "meshgate.io/v1alpha1",
        "kind": "ApiGateway",
        "metadata": {"name": "edge", "namespace": ns},
        "spec": {
            "mesh": {"mode": "None"},
            "listeners": [{"name": "http", "port": 18080, "protocol": "HTTP"}],
            "routes": [{
                "name": "echo",
                "matches": [{"path": {"type": "PathPrefix", "value": route_path}}],
                "backendRefs": [{"name": "echo", "port": 80}],
            }],
        },
    }))
    .expect("ApiGateway")
}

fn service(ns: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }))
    .expect("Service")
}

fn slice(ns: &str, port: u16, addresses: &[Ipv4Addr]) -> EndpointSlice {
    let endpoints: Vec<_> = addresses
        .iter()
        .map(|a| serde_json::json!({"addresses": [a.to_string()], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "echo-1", "namespace": ns, "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port}],
        "endpoints": endpoints,
    }))
    .expect("EndpointSlice")
}

/// Polls `path` through the proxy every 10 ms until `want` holds; the time it took.
async fn time_until(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
    want: impl Fn(&meshgate_proxy::client::Reply) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(reply) = meshgate_proxy::client::get(addr, "a.test", path).await {
            if want(&reply) {
                return Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The proxy in cluster mode for ApiGateway `ns/edge`, listener `http` on a free
/// loopback port, endpoints at the stand-in address dialled on 127.0.0.1.
async fn start_proxy(client: &kube::Client, ns: &str) -> Running {
    let gateway_ref: GatewayRef = format!("{ns}/edge").parse().expect("ref");
    let mut source = ClusterSource::new(client.clone(), &gateway_ref);
    source.address_map = Some(HashMap::from([(
        IpAddr::V4(STAND_IN),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )]));
    let mut options = Options::new(Source::Cluster(source));
    options.gateway = Some(gateway_ref);
    options.admin = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    options.listen = HashMap::from([(
        "http".to_string(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )]);
    tokio::time::timeout(Duration::from_secs(30), Running::start(options))
        .await
        .expect("first snapshot within 30s")
        .expect("proxy starts")
}

#[tokio::test]
async fn proxy_follows_the_cluster() {
    let client = client().await.expect("cluster");
    install_crds(&client).await.expect("CRDs install");
    let ns = TestNamespace::create(&client, "proxy")
        .await
        .expect("namespace");
    let echo_a = spawn_echo("a").await.expect("echo a");
    let echo_b = spawn_echo("b").await.expect("echo b");
    let pp = PostParams::default();
    let gateways: Api<ApiGateway> = Api::namespaced(client.clone(), &ns.name);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns.name);
    gateways
        .create(&pp, &gateway(&ns.name, "/v1"))
        .await
        .expect("create ApiGateway");
    Api::<Service>::namespaced(client.clone(), &ns.name)
        .create(&pp, &service(&ns.name))
        .await
        .expect("create Service");
    slices
        .create(&pp, &slice(&ns.name, echo_a.port(), &[STAND_IN]))
        .await
        .expect("create EndpointSlice");

    let running = start_proxy(&client, &ns.name).await;
    let addr = running.listener_addr("http").expect("bound");
    let admin = running.admin_addr().expect("admin");
    let ready = meshgate_proxy::client::get(admin, "admin", "/ready")
        .await
        .expect("ready");
    assert_eq!(ready.status, 200);

    // The first configuration serves.
    let reply = meshgate_proxy::client::get(addr, "a.test", "/v1/x")
        .await
        .expect("request");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json().expect("echo JSON")["backend"], "a");
    let reply = meshgate_proxy::client::get(addr, "a.test", "/v2/x")
        .await
        .expect("request");
    assert_eq!(reply.status, 404);

    // A route change through the API reaches the proxy within a second.
    let patch = serde_json::json!({"spec": {"routes": [{
        "name": "echo",
        "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
        "backendRefs": [{"name": "echo", "port": 80}],
    }]}});
    let changed = Instant::now();
    gateways
        .patch("edge", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch ApiGateway");
    let took = time_until(addr, "/v2/x", Duration::from_secs(5), |r| r.status == 200)
        .await
        .expect("new route answers");
    let total = changed.elapsed();
    eprintln!("route change applied after {took:?} ({total:?} including the API call)");
    assert!(took < Duration::from_secs(1), "route change took {took:?}");
    assert_eq!(
        meshgate_proxy::client::get(addr, "a.test", "/v1/x")
            .await
            .expect("request")
            .status,
        404
    );

    // EndpointSlice changes: another endpoint, then none (503), then back.
    let pp_apply = PatchParams::apply(FIELD_MANAGER).force();
    slices
        .patch(
            "echo-1",
            &pp_apply,
            &Patch::Apply(&slice(&ns.name, echo_b.port(), &[STAND_IN])),
        )
        .await
        .expect("move endpoints");
    let took = time_until(addr, "/v2/x", Duration::from_secs(5), |r| {
        r.json().is_ok_and(|j| j["backend"] == "b")
    })
    .await
    .expect("new endpoint used");
    assert!(
        took < Duration::from_secs(1),
        "endpoint change took {took:?}"
    );

    slices
        .patch(
            "echo-1",
            &pp_apply,
            &Patch::Apply(&slice(&ns.name, echo_b.port(), &[])),
        )
        .await
        .expect("empty endpoints");
    time_until(addr, "/v2/x", Duration::from_secs(5), |r| r.status == 503)
        .await
        .expect("no endpoints: 503");

    slices
        .delete("echo-1", &Default::default())
        .await
        .expect("delete slice");
    slices
        .create(&pp, &slice(&ns.name, echo_a.port(), &[STAND_IN]))
        .await
        .expect("recreate slice");
    time_until(addr, "/v2/x", Duration::from_secs(5), |r| {
        r.json().is_ok_and(|j| j["backend"] == "a")
    })
    .await
    .expect("recreated slice used");

    // A route whose Service does not exist is left out and reported in /config.
    let bad = serde_json::json!({"spec": {"routes": [{
        "name": "echo",
        "matches": [{"path": {"type": "PathPrefix", "value": "/v3"}}],
        "backendRefs": [{"name": "missing", "port": 80}],
    }]}});
    gateways
        .patch("edge", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .expect("patch ApiGateway");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let config = meshgate_proxy::client::get(admin, "admin", "/config")
        .await
        .expect("config")
        .json()
        .expect("JSON");
    let errors = config["errors"].to_string();
    assert!(errors.contains("missing"), "{errors}");

    running.shutdown(Duration::from_secs(5)).await;
    ns.delete().await.expect("delete namespace");
}

/// An ApiPolicy with API keys from a Secret, enforced by the proxy in cluster
/// mode: a rotated key is picked up live, a deleted Secret fails the route closed.
#[tokio::test]
async fn proxy_enforces_policies_from_the_cluster() {
    let client = client().await.expect("cluster");
    install_crds(&client).await.expect("CRDs install");
    let ns = TestNamespace::create(&client, "policy")
        .await
        .expect("namespace");
    let echo = spawn_echo("a").await.expect("echo");
    let pp = PostParams::default();
    Api::<ApiGateway>::namespaced(client.clone(), &ns.name)
        .create(&pp, &gateway(&ns.name, "/v1"))
        .await
        .expect("create ApiGateway");
    Api::<Service>::namespaced(client.clone(), &ns.name)
        .create(&pp, &service(&ns.name))
        .await
        .expect("create Service");
    Api::<EndpointSlice>::namespaced(client.clone(), &ns.name)
        .create(&pp, &slice(&ns.name, echo.port(), &[STAND_IN]))
        .await
        .expect("create EndpointSlice");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let keys = |key: &str| -> Secret {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "keys", "namespace": ns.name},
            "stringData": {"acme": key},
        }))
        .expect("Secret")
    };
    secrets
        .create(&pp, &keys("first-key"))
        .await
        .expect("create Secret");
    let policy: ApiPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "meshgate.io/v1alpha1", "kind": "ApiPolicy",
        "metadata": {"name": "keys", "namespace": ns.name},
        "spec": {
            "targetRefs": [{"group": "meshgate.io", "kind": "ApiGateway", "name": "edge", "sectionName": "echo"}],
            "authentication": {"apiKey": {
                "credentialRefs": [{"name": "keys"}],
                "extractFrom": [{"headers": ["x-api-key"]}],
                "forwardClientIDHeader": "x-consumer",
            }},
        },
    }))
    .expect("ApiPolicy");
    Api::<ApiPolicy>::namespaced(client.clone(), &ns.name)
        .create(&pp, &policy)
        .await
        .expect("create ApiPolicy");

    let running = start_proxy(&client, &ns.name).await;
    let addr = running.listener_addr("http").expect("bound");
    let with_key = |key: &'static str| async move {
        let request = http::Request::get("/v1/x")
            .header("host", "a.test")
            .header("x-api-key", key)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        meshgate_proxy::client::send(addr, request, None).await
    };
    // The policy may arrive a moment after the gateway: wait for the first 401.
    time_until(addr, "/v1/x", Duration::from_secs(5), |r| r.status == 401)
        .await
        .expect("requests without a key are refused");
    let reply = with_key("first-key").await.expect("request");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json().expect("echo JSON")["headers"]["x-consumer"],
        "acme"
    );

    // Rotating the key in the Secret takes effect without a restart.
    let rotated = Instant::now();
    secrets
        .patch(
            "keys",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&keys("second-key")),
        )
        .await
        .expect("rotate key");
    let mut took = None;
    while rotated.elapsed() < Duration::from_secs(5) {
        if with_key("second-key").await.is_ok_and(|r| r.status == 200) {
            took = Some(rotated.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = took.expect("the new key is accepted");
    eprintln!("API key rotation applied after {took:?}");
    assert_eq!(with_key("first-key").await.expect("request").status, 401);

    // Without its Secret the policy cannot be applied: the route fails closed.
    secrets
        .delete("keys", &Default::default())
        .await
        .expect("delete Secret");
    time_until(addr, "/v1/x", Duration::from_secs(5), |r| r.status == 500)
        .await
        .expect("route fails closed without the Secret");
    assert_eq!(with_key("second-key").await.expect("request").status, 500);

    running.shutdown(Duration::from_secs(5)).await;
    ns.delete().await.expect("delete namespace");
}
