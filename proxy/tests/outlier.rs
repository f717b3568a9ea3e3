//! Passive outlier detection: an endpoint that keeps failing is ejected.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::Full;

/// Service `test/pool` port 80 with one EndpointSlice per address.
fn pool_yaml(addrs: &[SocketAddr]) -> String {
    let mut yaml = "---\napiVersion: v1\nkind: Service\nmetadata: {name: pool, namespace: test}\nspec: {ports: [{name: http, port: 80}]}\n".to_string();
    for (i, addr) in addrs.iter().enumerate() {
        yaml += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: pool-{i}, namespace: test, labels: {{kubernetes.io/service-name: pool}}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
            addr.port(),
            addr.ip()
        );
    }
    yaml
}

#[tokio::test]
async fn five_consecutive_failures_eject_an_endpoint() {
    let bad = serve(|_request| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"bad")));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
    .await;
    let good =
        serve(|_request| async { Response::new(Full::new(Bytes::from_static(b"good"))) }).await;
    let yaml = gateway_yaml(
        &http_listener("http", 80),
        &tagged_route("r", "[{path: {value: /}}]", "pool", ""),
    ) + &pool_yaml(&[bad, good]);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    // Least-request between two idle endpoints is a coin toss per request, so
    // when the bad one has had its five is random; what must hold is that it
    // gets none after its fifth. (Asserting "the last 15 all succeed" failed
    // about 6 % of runs: five bad draws within 15 tosses is not certain.)
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(get(addr, "a.test", "/").await.status.as_u16());
    }
    let failures = statuses.iter().filter(|s| **s == 500).count();
    assert_eq!(failures, 5, "{statuses:?}");
    let fifth = statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == 500)
        .nth(4)
        .map(|(i, _)| i)
        .expect("five failures");
    assert!(
        fifth < 30,
        "ejection not exercised: the fifth failure came at request {fifth}: {statuses:?}"
    );
    assert!(
        statuses[fifth + 1..].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    assert_eq!(
        metric(
            &proxy,
            "meshgate_outlier_ejections_total{backend=\"test/pool:80\"}"
        )
        .await,
        Some(1.0)
    );
    // Sequential requests over keep-alive: one pooled connection per endpoint,
    // both still open, none failed.
    let series = |name: &str| format!("{name}{{backend=\"test/pool:80\"}}");
    assert_eq!(
        metric(
            &proxy,
            &series("meshgate_upstream_connections_opened_total")
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        metric(&proxy, &series("meshgate_upstream_connections_open")).await,
        Some(2.0)
    );
    assert_eq!(
        metric(&proxy, &series("meshgate_upstream_connect_failures_total")).await,
        Some(0.0)
    );
}

#[tokio::test]
async fn the_ejection_cap_keeps_half_the_endpoints() {
    // Both endpoints fail: only one may be ejected, so requests still reach one.
    let refused = [closed_port(), closed_port()];
    let yaml = gateway_yaml(
        &http_listener("http", 80),
        &tagged_route("r", "[{path: {value: /}}]", "pool", ""),
    ) + &pool_yaml(&refused);
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    for _ in 0..30 {
        let reply = get(addr, "a.test", "/").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(reply.header("x-meshgate-flags"), Some("UF"));
    }
    assert_eq!(
        metric(
            &proxy,
            "meshgate_outlier_ejections_total{backend=\"test/pool:80\"}"
        )
        .await,
        Some(1.0)
    );
    // The pool series: every attempt was refused, none opened.
    assert_eq!(
        metric(
            &proxy,
            "meshgate_upstream_connect_failures_total{backend=\"test/pool:80\"}"
        )
        .await,
        Some(30.0)
    );
    assert_eq!(
        metric(
            &proxy,
            "meshgate_upstream_connections_opened_total{backend=\"test/pool:80\"}"
        )
        .await,
        Some(0.0)
    );
}
