//! Backends: a route's weighted Services, resolved to ready endpoints through
//! EndpointSlices, and the choice of one endpoint per request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use meshgate_crds::manifests::Manifests;
use meshgate_crds::upstream::LoadBalancerType;

use crate::health::{EndpointHealth, RouteHealth};
use crate::load::{BackendLoad, EndpointLoad, LoadRegistry};
use crate::pools::PoolStats;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Consecutive failures (5xx, connect failures, resets, timeouts) that eject an endpoint.
pub const CONSECUTIVE_FAILURES: u32 = 5;
/// Ejection time per ejection of the same endpoint (10 s, 20 s, ...).
pub const BASE_EJECTION: Duration = Duration::from_secs(10);
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);
/// At most this share of a backend's endpoints is ejected at once.
pub const MAX_EJECTION_PERCENT: usize = 50;

/// Milliseconds on a process-wide monotonic clock (never 0, which means "not ejected").
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// Ejected endpoints of one backend, for the [`MAX_EJECTION_PERCENT`] cap.
#[derive(Debug, Default)]
struct Pool {
    ejected: AtomicUsize,
    size: usize,
}

/// Passive outlier detection state of one endpoint.
#[derive(Debug, Default)]
struct Outlier {
    consecutive: AtomicU32,
    /// [`now_ms`] when the ejection ends; 0 when not ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
}

/// One address a request can be sent to.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, made once so requests need not format it.
    pub authority: Authority,
    /// Requests in flight here, for least-request balancing.
    pub load: Arc<EndpointLoad>,
    outlier: Outlier,
    pool: Arc<Pool>,
    /// The backend's connection and ejection counters.
    pub stats: Arc<PoolStats>,
}

/// How an endpoint of a backend is chosen (ApiPolicy `loadBalancer.type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Power of two choices: of two endpoints drawn at random, the one with
    /// fewer requests in flight.
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
}

impl From<LoadBalancerType> for Balance {
    fn from(t: LoadBalancerType) -> Balance {
        match t {
            LoadBalancerType::LeastRequest => Balance::LeastRequest,
            LoadBalancerType::RoundRobin => Balance::RoundRobin,
            LoadBalancerType::Random => Balance::Random,
        }
    }
}

/// Why a backend gave no endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoPick {
    /// No ready endpoint.
    Empty,
    /// Every endpoint fails its active health check.
    Unhealthy,
}

impl Endpoint {
    /// Whether the endpoint is ejected at `now`; an expired ejection is lifted.
    pub fn ejected_at(&self, now: u64) -> bool {
        let until = self.outlier.ejected_until.load(Relaxed);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        if self
            .outlier
            .ejected_until
            .compare_exchange(until, 0, Relaxed, Relaxed)
            .is_ok()
        {
            self.pool.ejected.fetch_sub(1, Relaxed);
        }
        false
    }

    /// Records the outcome of a request sent here (`failed`: a 5xx or a
    /// connect/connection failure or timeout) and counts an ejection.
    pub fn report(&self, failed: bool) {
        if self.record(failed, now_ms()) {
            self.stats.ejections.fetch_add(1, Relaxed);
            tracing::warn!(endpoint = %self.addr, "endpoint ejected after consecutive failures");
        }
    }

    /// [`Endpoint::report`] at `now`; returns whether this ejected the endpoint.
    /// Expired ejections of other endpoints are lifted as picks come across them.
    pub fn record(&self, failed: bool, now: u64) -> bool {
        if !failed {
            if self.outlier.consecutive.load(Relaxed) != 0 {
                self.outlier.consecutive.store(0, Relaxed);
            }
            return false;
        }
        let failures = self.outlier.consecutive.fetch_add(1, Relaxed) + 1;
        if failures < CONSECUTIVE_FAILURES || self.ejected_at(now) {
            return false;
        }
        let cap = self.pool.size * MAX_EJECTION_PERCENT / 100;
        let claimed = self
            .pool
            .ejected
            .fetch_update(Relaxed, Relaxed, |n| (n < cap).then_some(n + 1))
            .is_ok();
        if !claimed {
            return false;
        }
        let count = self.outlier.ejections.fetch_add(1, Relaxed) + 1;
        let duration = BASE_EJECTION.saturating_mul(count).min(MAX_EJECTION);
        let until = now + u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.outlier.ejected_until.store(until, Relaxed);
        self.outlier.consecutive.store(0, Relaxed);
        true
    }
}

/// One weighted Service port of a route.
#[derive(Debug)]
pub struct Backend {
    /// `namespace/name:port`.
    pub name: String,
    pub weight: u32,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The Service port speaks HTTP/2 without TLS (h2c): `appProtocol:
    /// kubernetes.io/h2c` (or `grpc`, `http2`), or a port name starting with
    /// `grpc` or `http2`.
    pub h2: bool,
    /// Requests and retries in flight, for circuit breaking.
    pub load: Arc<BackendLoad>,
    next: AtomicUsize,
}

/// A copy shares the endpoints and counters; the round-robin cursor starts
/// where the original's is.
impl Clone for Backend {
    fn clone(&self) -> Backend {
        Backend {
            name: self.name.clone(),
            weight: self.weight,
            endpoints: self.endpoints.clone(),
            h2: self.h2,
            load: self.load.clone(),
            next: AtomicUsize::new(self.next.load(Relaxed)),
        }
    }
}

impl Backend {
    /// A backend with counters of its own (mirrors, tests).
    pub fn new(name: String, weight: u32, addrs: Vec<SocketAddr>) -> Backend {
        let loads = (
            Arc::default(),
            addrs.iter().map(|_| Arc::default()).collect(),
        );
        Backend::with_loads(name, weight, addrs, loads, Arc::default())
    }

    /// A backend of route `route` whose in-flight counters are shared through
    /// `registry` with the snapshots before and after this one.
    pub fn shared(
        route: &str,
        name: String,
        weight: u32,
        addrs: Vec<SocketAddr>,
        registry: &LoadRegistry,
    ) -> Backend {
        let loads = registry.get(route, &name, &addrs);
        let stats = registry.pools.stats(&name);
        Backend::with_loads(name, weight, addrs, loads, stats)
    }

    fn with_loads(
        name: String,
        weight: u32,
        addrs: Vec<SocketAddr>,
        (load, endpoint_loads): (Arc<BackendLoad>, Vec<Arc<EndpointLoad>>),
        stats: Arc<PoolStats>,
    ) -> Backend {
        let pool = Arc::new(Pool {
            ejected: AtomicUsize::new(0),
            size: addrs.len(),
        });
        let endpoints = addrs
            .into_iter()
            .zip(endpoint_loads)
            .filter_map(|(addr, load)| {
                let authority = Authority::try_from(addr.to_string()).ok()?;
                Some(Arc::new(Endpoint {
                    addr,
                    authority,
                    load,
                    outlier: Outlier::default(),
                    pool: pool.clone(),
                    stats: stats.clone(),
                }))
            })
            .collect();
        Backend {
            name,
            weight,
            endpoints,
            h2: false,
            load,
            next: AtomicUsize::new(0),
        }
    }

    /// Marks the backend as HTTP/2 (h2c).
    pub fn with_h2(mut self, h2: bool) -> Backend {
        self.h2 = h2;
        self
    }

    /// An endpoint by `balance` among those that pass their health check
    /// (`health`, by endpoint index) and are not ejected. When every healthy
    /// endpoint is ejected, a healthy one is used all the same.
    fn pick(
        &self,
        balance: Balance,
        health: Option<&[Arc<EndpointHealth>]>,
    ) -> Result<&Arc<Endpoint>, NoPick> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(NoPick::Empty);
        }
        let healthy = |i: usize| health.and_then(|h| h.get(i)).is_none_or(|h| h.is_healthy());
        let ejections = self.endpoints[0].pool.ejected.load(Relaxed) > 0;
        let now = if ejections { now_ms() } else { 0 };
        let usable = |i: usize| healthy(i) && !(ejections && self.endpoints[i].ejected_at(now));
        if n == 1 {
            return if healthy(0) {
                Ok(&self.endpoints[0])
            } else {
                Err(NoPick::Unhealthy)
            };
        }
        let start = match balance {
            Balance::RoundRobin => self.next.fetch_add(1, Relaxed) % n,
            Balance::Random => fastrand::usize(..n),
            Balance::LeastRequest => {
                // Two distinct endpoints at random; the less loaded wins.
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
                match (usable(a), usable(b)) {
                    (true, true) => {
                        let lighter =
                            eb.load.in_flight.load(Relaxed) < ea.load.in_flight.load(Relaxed);
                        return Ok(if lighter { eb } else { ea });
                    }
                    (true, false) => return Ok(ea),
                    (false, true) => return Ok(eb),
                    (false, false) => a,
                }
            }
        };
        let order = (0..n).map(|i| (start + i) % n);
        order
            .clone()
            .find(|&i| usable(i))
            .or_else(|| order.clone().find(|&i| healthy(i)))
            .map(|i| &self.endpoints[i])
            .ok_or(NoPick::Unhealthy)
    }
}

/// What [`Backends::pick`] chose.
#[derive(Debug)]
pub enum Pick<'a> {
    Endpoint(&'a Backend, &'a Arc<Endpoint>),
    /// The backend drawn has no ready endpoint.
    NoEndpoint(&'a Backend),
    /// Every endpoint of the backend drawn fails its active health check.
    Unhealthy(&'a Backend),
    /// The route has no backend with a weight above 0.
    NoBackend,
}

/// A route's backends with cumulative weights for a weighted random draw.
#[derive(Clone, Debug, Default)]
pub struct Backends {
    items: Vec<Backend>,
    cumulative: Vec<u64>,
}

impl Backends {
    pub fn new(items: Vec<Backend>) -> Backends {
        let mut total = 0u64;
        let cumulative = items
            .iter()
            .map(|b| {
                total += u64::from(b.weight);
                total
            })
            .collect();
        Backends { items, cumulative }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.items.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// An endpoint for a retry: a fresh draw, preferring one other than `avoid`.
    pub fn pick_other(
        &self,
        avoid: SocketAddr,
        balance: Balance,
        health: Option<&RouteHealth>,
    ) -> Option<(&Backend, &Arc<Endpoint>)> {
        let mut last = None;
        for _ in 0..4 {
            if let Pick::Endpoint(backend, endpoint) = self.pick(balance, health) {
                if endpoint.addr != avoid {
                    return Some((backend, endpoint));
                }
                last = Some((backend, endpoint));
            }
        }
        last
    }

    /// Draws a backend by weight, then an endpoint of it by `balance`, skipping
    /// endpoints `health` finds unhealthy.
    pub fn pick(&self, balance: Balance, health: Option<&RouteHealth>) -> Pick<'_> {
        let total = self.total_weight();
        if total == 0 {
            return Pick::NoBackend;
        }
        let draw = fastrand::u64(0..total);
        let index = self.cumulative.partition_point(|&c| c <= draw);
        let Some(backend) = self.items.get(index) else {
            return Pick::NoBackend;
        };
        match backend.pick(balance, health.and_then(|h| h.backend(index))) {
            Ok(endpoint) => Pick::Endpoint(backend, endpoint),
            Err(NoPick::Empty) => Pick::NoEndpoint(backend),
            Err(NoPick::Unhealthy) => Pick::Unhealthy(backend),
        }
    }
}

/// Services and their EndpointSlices from a set of manifests, by namespace and name.
pub struct ServiceIndex<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

/// The namespace of an object; `default` when the manifest leaves it out.
pub fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

impl<'a> ServiceIndex<'a> {
    pub fn new(manifests: &'a Manifests) -> ServiceIndex<'a> {
        let mut services = HashMap::new();
        for svc in &manifests.services {
            if let Some(name) = svc.metadata.name.as_deref() {
                services.insert((namespace_of(&svc.metadata), name), svc);
            }
        }
        let mut slices: HashMap<_, Vec<_>> = HashMap::new();
        for slice in &manifests.endpoint_slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                slices
                    .entry((namespace_of(&slice.metadata), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        ServiceIndex { services, slices }
    }

    /// Whether Service `namespace/name` port `port` speaks h2c (see [`Backend::h2`]).
    pub fn is_h2(&self, namespace: &str, name: &str, port: i32) -> bool {
        let Some(service_port) = self
            .services
            .get(&(namespace, name))
            .and_then(|svc| svc.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == port))
        else {
            return false;
        };
        let app = service_port.app_protocol.as_deref().unwrap_or("");
        let port_name = service_port.name.as_deref().unwrap_or("");
        matches!(app, "kubernetes.io/h2c" | "grpc" | "http2" | "h2c")
            || port_name.starts_with("grpc")
            || port_name.starts_with("http2")
    }

    /// The ready endpoint addresses of Service `namespace/name` port `port`.
    ///
    /// Errors when the Service or its port does not exist; a Service without ready
    /// endpoints is not an error (requests get 503 until endpoints appear).
    pub fn resolve(
        &self,
        namespace: &str,
        name: &str,
        port: i32,
    ) -> Result<Vec<SocketAddr>, String> {
        let svc = self
            .services
            .get(&(namespace, name))
            .ok_or_else(|| format!("backend Service {namespace}/{name} not found"))?;
        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(format!(
                "backend Service {namespace}/{name} is of type ExternalName, which is not supported"
            ));
        }
        let service_port = spec
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == port))
            .ok_or_else(|| format!("backend Service {namespace}/{name} has no port {port}"))?;
        let port_name = service_port.name.as_deref().unwrap_or("");
        let mut addrs = Vec::new();
        for slice in self.slices.get(&(namespace, name)).into_iter().flatten() {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let target = slice.ports.iter().flatten().find_map(|p| {
                (p.name.as_deref().unwrap_or("") == port_name)
                    .then_some(p.port)
                    .flatten()
            });
            let Some(target) = target.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for endpoint in &slice.endpoints {
                // Kubernetes: a nil `ready` is to be read as ready.
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                let ip = endpoint
                    .addresses
                    .first()
                    .and_then(|a| a.parse::<IpAddr>().ok());
                if let (true, Some(ip)) = (ready, ip) {
                    addrs.push(SocketAddr::new(ip, target));
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifests(yaml: &str) -> Manifests {
        let loaded = meshgate_crds::manifests::load_str("test", yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.manifests
    }

    const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 9901}]
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
- addresses: [10.0.0.2]
  conditions: {ready: false}
- addresses: [10.0.0.3]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: shop, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
ports: [{name: http, port: 1}]
endpoints: [{addresses: [10.9.9.9]}]
"#;

    #[test]
    fn resolves_ready_endpoints_by_port_name() {
        let m = manifests(SVC);
        let index = ServiceIndex::new(&m);
        let http = index.resolve("shop", "web", 80).unwrap();
        assert_eq!(
            http,
            vec![
                "10.0.0.1:8080".parse().unwrap(),
                "10.0.0.3:8080".parse().unwrap()
            ]
        );
        let admin = index.resolve("shop", "web", 9000).unwrap();
        assert_eq!(admin[0], "10.0.0.1:9901".parse().unwrap());
        assert!(!index.is_h2("shop", "web", 80));
    }

    #[test]
    fn h2c_by_app_protocol_or_port_name() {
        let m = manifests(
            "apiVersion: v1\nkind: Service\nmetadata: {name: g, namespace: s}\nspec:\n  ports: [{name: grpc-api, port: 1}, {name: web, port: 2, appProtocol: kubernetes.io/h2c}, {name: web2, port: 3}]\n",
        );
        let index = ServiceIndex::new(&m);
        assert!(index.is_h2("s", "g", 1));
        assert!(index.is_h2("s", "g", 2));
        assert!(!index.is_h2("s", "g", 3));
    }

    #[test]
    fn missing_service_or_port_is_an_error() {
        let m = manifests(SVC);
        let index = ServiceIndex::new(&m);
        assert!(index
            .resolve("shop", "nope", 80)
            .unwrap_err()
            .contains("not found"));
        assert!(index
            .resolve("default", "web", 80)
            .unwrap_err()
            .contains("not found"));
        assert!(index
            .resolve("shop", "web", 81)
            .unwrap_err()
            .contains("no port 81"));
    }

    #[test]
    fn weighted_pick_follows_weights_and_skips_zero() {
        let a = Backend::new("a".into(), 3, vec!["127.0.0.1:1".parse().unwrap()]);
        let zero = Backend::new("z".into(), 0, vec!["127.0.0.1:2".parse().unwrap()]);
        let b = Backend::new("b".into(), 1, vec!["127.0.0.1:3".parse().unwrap()]);
        let backends = Backends::new(vec![a, zero, b]);
        let mut counts = HashMap::new();
        for _ in 0..4000 {
            match backends.pick(Balance::RoundRobin, None) {
                Pick::Endpoint(backend, _) => *counts.entry(backend.name.clone()).or_insert(0) += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(counts.get("z"), None);
        let a = counts["a"] as f64 / 4000.0;
        assert!((a - 0.75).abs() < 0.05, "share of a: {a}");
    }

    #[test]
    fn no_endpoints_and_no_weight() {
        let empty = Backends::new(vec![Backend::new("e".into(), 1, vec![])]);
        assert!(
            matches!(empty.pick(Balance::LeastRequest, None), Pick::NoEndpoint(b) if b.name == "e")
        );
        let zero = Backends::new(vec![Backend::new("z".into(), 0, vec![])]);
        assert!(matches!(
            zero.pick(Balance::LeastRequest, None),
            Pick::NoBackend
        ));
    }

    #[test]
    fn consecutive_failures_eject_up_to_half_the_endpoints() {
        let b = Backend::new(
            "o".into(),
            1,
            (1..=4)
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                .collect(),
        );
        let [e1, e2, e3, _] = [0, 1, 2, 3].map(|i| b.endpoints[i].clone());
        let now = 1_000;
        // Four failures and a success: not ejected.
        for _ in 0..4 {
            assert!(!e1.record(true, now));
        }
        assert!(!e1.record(false, now));
        for _ in 0..4 {
            assert!(!e1.record(true, now));
        }
        assert!(e1.record(true, now), "fifth failure ejects");
        assert!(e1.ejected_at(now + 9_999));
        for _ in 0..5 {
            e2.record(true, now);
        }
        assert!(e2.ejected_at(now));
        // Two of four are ejected: the cap keeps the third.
        for _ in 0..10 {
            assert!(!e3.record(true, now));
        }
        assert!(!e3.ejected_at(now));
        // Picks avoid the ejected endpoints.
        let picks: Vec<u16> = (0..8)
            .map(|_| b.pick(Balance::RoundRobin, None).unwrap().addr.port())
            .collect();
        assert!(picks.iter().all(|p| *p == 3 || *p == 4), "{picks:?}");
        // The first ejection lasts 10 s; the second of the same endpoint 20 s.
        assert!(!e1.ejected_at(now + 10_000));
        for _ in 0..5 {
            e1.record(true, now + 10_000);
        }
        assert!(e1.ejected_at(now + 29_999));
        assert!(!e1.ejected_at(now + 30_000));
    }

    #[test]
    fn a_single_endpoint_is_never_ejected() {
        let b = Backend::new("one".into(), 1, vec!["127.0.0.1:1".parse().unwrap()]);
        for _ in 0..20 {
            assert!(!b.endpoints[0].record(true, 1));
        }
        assert!(b.pick(Balance::LeastRequest, None).is_ok());
    }

    #[test]
    fn round_robin_over_endpoints() {
        let b = Backend::new(
            "rr".into(),
            1,
            vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
        );
        let picks: Vec<u16> = (0..4)
            .map(|_| b.pick(Balance::RoundRobin, None).unwrap().addr.port())
            .collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
    }

    fn three() -> Backend {
        Backend::new(
            "three".into(),
            1,
            (1..=3)
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                .collect(),
        )
    }

    #[test]
    fn least_request_avoids_the_busiest_endpoint() {
        let b = three();
        // Endpoint 1 has many requests in flight: of any two drawn, it loses.
        b.endpoints[0].load.in_flight.store(10, Relaxed);
        for _ in 0..200 {
            let e = b.pick(Balance::LeastRequest, None).unwrap();
            assert_ne!(e.addr.port(), 1);
        }
        // With equal load every endpoint is chosen.
        b.endpoints[0].load.in_flight.store(0, Relaxed);
        let mut seen = [false; 3];
        for _ in 0..200 {
            let e = b.pick(Balance::LeastRequest, None).unwrap();
            seen[usize::from(e.addr.port()) - 1] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn in_flight_guards_count_requests() {
        let b = three();
        let e = &b.endpoints[1];
        let mut guard = crate::load::InFlight::start(&e.load);
        assert_eq!(e.load.in_flight.load(Relaxed), 1);
        guard.move_to(&b.endpoints[2].load);
        assert_eq!(e.load.in_flight.load(Relaxed), 0);
        assert_eq!(b.endpoints[2].load.in_flight.load(Relaxed), 1);
        drop(guard);
        assert_eq!(b.endpoints[2].load.in_flight.load(Relaxed), 0);
    }
}
