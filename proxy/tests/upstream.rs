//! Load balancing, circuit breaking and active health checks (ApiPolicy
//! `loadBalancer`, `circuitBreaker`, `healthCheck`), over real sockets.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::Full;

const WAIT: Duration = Duration::from_secs(10);

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

/// An ApiPolicy `test/NAME` on the whole gateway with `body` (spec fields,
/// indented by two spaces).
fn policy_yaml(name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: meshgate.io/v1alpha1\nkind: ApiPolicy\nmetadata: {{name: {name}, namespace: test}}\nspec:\n  targetRefs: [{{group: meshgate.io, kind: ApiGateway, name: gw}}]\n{body}"
    )
}

fn gateway() -> String {
    gateway_yaml(
        &http_listener("http", 80),
        &tagged_route("r", "[{path: {value: /}}]", "pool", ""),
    )
}

/// A backend answering its name after `delay`.
async fn named(name: &'static str, delay: Duration) -> SocketAddr {
    serve(move |_request| async move {
        tokio::time::sleep(delay).await;
        Response::new(Full::new(Bytes::from_static(name.as_bytes())))
    })
    .await
}

/// `workers` clients each sending `each` requests one after another; returns
/// how many answers came from the endpoint named `slow`.
async fn load(addr: SocketAddr, workers: usize, each: usize) -> (usize, usize) {
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            tokio::spawn(async move {
                let mut slow = 0;
                for _ in 0..each {
                    let reply = get(addr, "a.test", "/").await;
                    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                    slow += usize::from(reply.body.as_ref() == b"slow");
                }
                slow
            })
        })
        .collect();
    let mut slow = 0;
    for task in tasks {
        slow += task.await.unwrap();
    }
    (slow, workers * each - slow)
}

#[tokio::test]
async fn least_request_sends_less_to_a_slow_endpoint_than_round_robin() {
    let slow = named("slow", Duration::from_millis(150)).await;
    let fast = named("fast", Duration::ZERO).await;
    let pool = pool_yaml(&[slow, fast]);

    // The default: least request (power of two choices).
    let proxy = start_yaml(&(gateway() + &pool), &["http"]).await;
    let (lr_slow, lr_fast) = load(proxy.listener_addr("http").unwrap(), 8, 10).await;

    let round_robin = policy_yaml("lb", "  loadBalancer: {type: RoundRobin}\n");
    let proxy = start_yaml(&(gateway() + &pool + &round_robin), &["http"]).await;
    let (rr_slow, rr_fast) = load(proxy.listener_addr("http").unwrap(), 8, 10).await;

    eprintln!("least request: slow {lr_slow}, fast {lr_fast}; round robin: slow {rr_slow}, fast {rr_fast}");
    // Round robin alternates strictly, whatever the endpoints' speed.
    assert_eq!((rr_slow, rr_fast), (40, 40));
    // Least request keeps most requests off the endpoint that holds them long.
    assert!(
        lr_slow < 20,
        "least request sent {lr_slow} of 80 to the slow endpoint"
    );
    assert!(lr_slow < rr_slow);
}

#[tokio::test]
async fn random_balancing_reaches_every_endpoint() {
    let a = named("a", Duration::ZERO).await;
    let b = named("b", Duration::ZERO).await;
    let yaml =
        gateway() + &pool_yaml(&[a, b]) + &policy_yaml("lb", "  loadBalancer: {type: Random}\n");
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    let mut seen = (0, 0);
    for _ in 0..60 {
        match get(addr, "a.test", "/").await.text().as_str() {
            "a" => seen.0 += 1,
            "b" => seen.1 += 1,
            other => panic!("unexpected body {other:?}"),
        }
    }
    // P(one endpoint never drawn in 60 fair draws) is 2^-59.
    assert!(seen.0 > 0 && seen.1 > 0, "{seen:?}");
}

#[tokio::test]
async fn circuit_breaker_refuses_the_excess_with_uo() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let backend = {
        let arrived = arrived.clone();
        serve(move |_request| {
            let arrived = arrived.clone();
            let mut released = released.clone();
            async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                Response::new(Full::new(Bytes::from_static(b"done")))
            }
        })
        .await
    };
    let yaml = gateway()
        + &pool_yaml(&[backend])
        + &policy_yaml("cb", "  circuitBreaker: {maxParallelRequests: 3}\n");
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();

    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, "a.test", "/").await }))
        .collect();
    // Three are held by the backend; the other two are refused at once.
    assert!(eventually(WAIT, || async { arrived.load(Ordering::SeqCst) == 3 }).await);
    assert!(
        eventually(WAIT, || async {
            requests.iter().filter(|r| r.is_finished()).count() == 2
        })
        .await
    );
    release.send(true).unwrap();
    let mut ok = 0;
    let mut overflow = 0;
    for request in requests {
        let reply = request.await.unwrap();
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.header("x-meshgate-flags"), Some("UO"));
                overflow += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, overflow), (3, 2));
    assert_eq!(arrived.load(Ordering::SeqCst), 3);
    assert_eq!(
        metric(
            &proxy,
            "meshgate_circuit_breaker_overflows_total{limit=\"parallel_requests\"}"
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        metric(&proxy, "meshgate_local_responses_total{flag=\"UO\"}").await,
        Some(2.0)
    );
    // The slots were given back when the exchanges ended.
    let replies: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(addr, "a.test", "/").await.status }))
        .collect();
    for reply in replies {
        assert_eq!(reply.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn max_connections_queue_up_to_max_pending_then_refuse() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let backend = {
        let arrived = arrived.clone();
        serve(move |_request| {
            let arrived = arrived.clone();
            let mut released = released.clone();
            async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                Response::new(Full::new(Bytes::from_static(b"done")))
            }
        })
        .await
    };
    let yaml = gateway()
        + &pool_yaml(&[backend])
        + &policy_yaml(
            "cb",
            "  circuitBreaker: {maxConnections: 2, maxPendingRequests: 1}\n",
        );
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    let series = |name: &str| format!("{name}{{backend=\"test/pool:80\"}}");

    let requests: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(addr, "a.test", "/").await }))
        .collect();
    // Two hold the two connections, one waits for a connection, one is refused at once.
    assert!(eventually(WAIT, || async { arrived.load(Ordering::SeqCst) == 2 }).await);
    assert!(
        eventually(WAIT, || async {
            requests.iter().filter(|r| r.is_finished()).count() == 1
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived.load(Ordering::SeqCst), 2, "the third request waits");
    assert_eq!(
        metric(&proxy, &series("meshgate_upstream_connections_open")).await,
        Some(2.0)
    );
    assert_eq!(
        metric(
            &proxy,
            "meshgate_circuit_breaker_overflows_total{limit=\"pending_requests\"}"
        )
        .await,
        Some(1.0)
    );
    release.send(true).unwrap();
    let mut ok = 0;
    let mut overflow = 0;
    for request in requests {
        let reply = request.await.unwrap();
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.header("x-meshgate-flags"), Some("UO"));
                overflow += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // The waiting request was served once a connection was given back.
    assert_eq!((ok, overflow), (3, 1));
    assert_eq!(arrived.load(Ordering::SeqCst), 3);
    assert_eq!(
        metric(
            &proxy,
            "meshgate_circuit_breaker_overflows_total{limit=\"connections\"}"
        )
        .await,
        Some(0.0)
    );
    let opened = metric(
        &proxy,
        &series("meshgate_upstream_connections_opened_total"),
    )
    .await
    .unwrap();
    // The waiting request normally reuses a freed connection; at most it opens
    // one after the first two are back in the pool.
    assert!((2.0..=3.0).contains(&opened), "{opened} connections opened");
}

/// A backend answering `name` on `/` and 200 on `/healthz` while `healthy`
/// holds (503 otherwise); counts its health probes.
async fn checked(
    name: &'static str,
    healthy: Arc<AtomicBool>,
    probes: Arc<AtomicUsize>,
) -> SocketAddr {
    serve(move |request: http::Request<hyper::body::Incoming>| {
        let healthy = healthy.clone();
        let probes = probes.clone();
        async move {
            if request.uri().path() == "/healthz" {
                probes.fetch_add(1, Ordering::SeqCst);
                let mut response = Response::new(Full::new(Bytes::new()));
                if !healthy.load(Ordering::SeqCst) {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                return response;
            }
            Response::new(Full::new(Bytes::from_static(name.as_bytes())))
        }
    })
    .await
}

/// The bodies of `n` requests, one after another.
async fn bodies(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let reply = get(addr, "a.test", "/").await;
        out.push(match reply.status {
            StatusCode::OK => reply.text(),
            status => format!(
                "{status} {}",
                reply.header("x-meshgate-flags").unwrap_or("")
            ),
        });
    }
    out
}

#[tokio::test]
async fn health_checks_steer_traffic_and_survive_reloads() {
    let a_ok = Arc::new(AtomicBool::new(true));
    let b_ok = Arc::new(AtomicBool::new(true));
    let a_probes = Arc::new(AtomicUsize::new(0));
    let a = checked("a", a_ok.clone(), a_probes.clone()).await;
    let b = checked("b", b_ok.clone(), Arc::new(AtomicUsize::new(0))).await;
    let dir = TestDir::new("health");
    dir.write("pool.yaml", &pool_yaml(&[a, b]));
    dir.write(
        "policy.yaml",
        &policy_yaml(
            "hc",
            "  healthCheck:\n    active: {type: HTTP, http: {path: /healthz}, interval: 300ms, timeout: 1s, unhealthyThreshold: 3, healthyThreshold: 2}\n",
        ),
    );
    dir.write("gateway.yaml", &gateway());
    let proxy = start_dir(dir.path(), &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    let healthy_series = "meshgate_upstream_healthy_endpoints{backend=\"test/pool:80\"}";
    assert!(
        eventually(WAIT, || async {
            metric(&proxy, healthy_series).await == Some(2.0)
        })
        .await,
        "both endpoints are checked and healthy"
    );
    let seen = bodies(addr, 30).await;
    assert!(
        seen.iter().any(|b| b == "a") && seen.iter().any(|b| b == "b"),
        "{seen:?}"
    );

    // A fails its health path: after unhealthyThreshold probes, all goes to b.
    a_ok.store(false, Ordering::SeqCst);
    assert!(
        eventually(WAIT, || async {
            metric(&proxy, healthy_series).await == Some(1.0)
        })
        .await
    );
    let seen = bodies(addr, 30).await;
    assert!(seen.iter().all(|b| b == "b"), "{seen:?}");
    assert!(metric(&proxy, "meshgate_health_check_failures_total").await >= Some(3.0));

    // A reload (another route) keeps a's state: a fresh state would start
    // healthy and need three failed probes (about 600 ms) to leave again.
    let version = metric(&proxy, "meshgate_config_version").await;
    dir.write(
        "gateway.yaml",
        &gateway_yaml(
            &http_listener("http", 80),
            &(tagged_route("r", "[{path: {value: /}}]", "pool", "")
                + &tagged_route("other", "[{path: {value: /other}}]", "pool", "")),
        ),
    );
    assert!(
        eventually(WAIT, || async {
            metric(&proxy, "meshgate_config_version").await > version
        })
        .await
    );
    let probes_before = a_probes.load(Ordering::SeqCst);
    let seen = bodies(addr, 30).await;
    assert!(seen.iter().all(|b| b == "b"), "after reload: {seen:?}");
    assert_eq!(metric(&proxy, healthy_series).await, Some(1.0));

    // a recovers after healthyThreshold passes.
    a_ok.store(true, Ordering::SeqCst);
    assert!(
        eventually(WAIT, || async {
            metric(&proxy, healthy_series).await == Some(2.0)
        })
        .await
    );
    assert!(a_probes.load(Ordering::SeqCst) >= probes_before + 2);
    let seen = bodies(addr, 30).await;
    assert!(seen.iter().any(|b| b == "a"), "{seen:?}");

    // No healthy endpoint: 503 UH.
    a_ok.store(false, Ordering::SeqCst);
    b_ok.store(false, Ordering::SeqCst);
    assert!(
        eventually(WAIT, || async {
            metric(&proxy, healthy_series).await == Some(0.0)
        })
        .await
    );
    let reply = get(addr, "a.test", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("x-meshgate-flags"), Some("UH"));
    assert!(metric(&proxy, "meshgate_local_responses_total{flag=\"UH\"}").await >= Some(1.0));
}
