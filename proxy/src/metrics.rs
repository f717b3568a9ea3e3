//! Counters for `/metrics`, as plain atomics.
//!
//! Per-route counters live in a registry keyed by route name, so they survive
//! reloads: compiling a snapshot looks them up (the only place the registry's mutex
//! is taken) and each compiled route holds an `Arc` to its own, so the request path
//! only does an atomic add.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use http::StatusCode;

/// Response flags, the reason a response did not come from an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// No route matched.
    NoRoute,
    /// The chosen backend has no ready endpoint.
    NoHealthy,
    /// Connecting to the upstream failed.
    UpstreamConnect,
    /// The upstream connection failed after it was established (reset, bad response).
    UpstreamConnection,
    /// The route's timeout expired before the upstream answered.
    UpstreamTimeout,
    /// The request could not be proxied as it is (bad host or path).
    BadRequest,
    /// The mesh upstream's identity was refused (or the gateway has none yet).
    MeshIdentity,
    /// Refused by a policy: authentication, authorization, IP filter or CORS.
    Unauthorized,
    /// Refused by a rate limit.
    RateLimited,
    /// The global rate-limit store (Redis) was unreachable and the limit fails closed.
    RateLimitServiceError,
    /// The request's headers or body passed a size limit.
    RequestTooLarge,
    /// The route's policy is not valid; the route fails closed.
    PolicyError,
    /// The request's host needs another certificate than its TLS connection's (421).
    Misdirected,
    /// The client stopped sending its request body for `idleTimeout` (408).
    ClientTimeout,
    /// A circuit-breaker limit of the backend was reached (Envoy's upstream overflow).
    UpstreamOverflow,
    /// Every endpoint of the backend fails its active health check.
    NoHealthyUpstream,
}

impl Flag {
    pub const ALL: [Flag; 16] = [
        Flag::NoRoute,
        Flag::NoHealthy,
        Flag::UpstreamConnect,
        Flag::UpstreamConnection,
        Flag::UpstreamTimeout,
        Flag::BadRequest,
        Flag::MeshIdentity,
        Flag::Unauthorized,
        Flag::RateLimited,
        Flag::RateLimitServiceError,
        Flag::RequestTooLarge,
        Flag::PolicyError,
        Flag::Misdirected,
        Flag::ClientTimeout,
        Flag::UpstreamOverflow,
        Flag::NoHealthyUpstream,
    ];

    /// The short code sent in `x-meshgate-flags` (Envoy-style).
    pub fn code(self) -> &'static str {
        match self {
            Flag::NoRoute => "NR",
            Flag::NoHealthy => "NH",
            Flag::UpstreamConnect => "UF",
            Flag::UpstreamConnection => "UC",
            Flag::UpstreamTimeout => "UT",
            Flag::BadRequest => "BR",
            Flag::MeshIdentity => "MI",
            Flag::Unauthorized => "UAEX",
            Flag::RateLimited => "RL",
            Flag::RateLimitServiceError => "RLSE",
            Flag::RequestTooLarge => "RTL",
            Flag::PolicyError => "PE",
            Flag::Misdirected => "MR",
            Flag::ClientTimeout => "CT",
            Flag::UpstreamOverflow => "UO",
            Flag::NoHealthyUpstream => "UH",
        }
    }
}

/// Upper bounds (seconds) of the request duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Responses of one route by status class (1xx..5xx), and how long they took.
#[derive(Debug, Default)]
pub struct RouteCounters {
    by_class: [AtomicU64; 5],
    /// Non-cumulative bucket counts; the last one is +Inf.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl RouteCounters {
    pub fn record(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Relaxed);
    }

    /// Records a response and the time until its head was ready.
    pub fn record_timed(&self, status: StatusCode, elapsed: std::time::Duration) {
        self.record(status);
        let secs = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    pub fn get(&self, class: usize) -> u64 {
        self.by_class
            .get(class.wrapping_sub(1))
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Cumulative `(le, count)` pairs, +Inf last, and the sum in seconds.
    fn histogram(&self) -> (Vec<(String, u64)>, f64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(DURATION_BUCKETS.len() + 1);
        for (i, bucket) in self.buckets.iter().enumerate() {
            total += bucket.load(Relaxed);
            let le = DURATION_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            out.push((le, total));
        }
        (out, self.sum_micros.load(Relaxed) as f64 / 1e6)
    }
}

/// Every counter of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Arc<RouteCounters>>>,
    /// Requests that matched no route.
    pub unmatched: RouteCounters,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub config_version: AtomicU64,
    flags: [AtomicU64; Flag::ALL.len()],
    /// Client connections open now.
    pub connections_active: AtomicU64,
    /// Client connections closed at once because `maxConnections` were open.
    pub connections_rejected: AtomicU64,
    /// Idle HTTP/1.1 connections over TLS parked now (hyper's connection and
    /// its buffers dropped until the client sends again).
    pub connections_parked: AtomicU64,
    /// Listeners a reload added or changed whose port could not be bound.
    pub listener_bind_failures: AtomicU64,
    /// Requests refused (503 UO) by `circuitBreaker.maxParallelRequests`.
    pub overflow_requests: AtomicU64,
    /// Retries not made because of `circuitBreaker.maxParallelRetries`.
    pub overflow_retries: AtomicU64,
    /// Requests refused (503 UO) by `maxPendingRequests`, or after waiting in
    /// vain for one of `maxConnections`.
    pub overflow_pending: AtomicU64,
    pub overflow_connections: AtomicU64,
    /// Counters of the workload identity source, once one runs.
    pub identity: std::sync::OnceLock<Arc<meshgate_mesh::ProviderMetrics>>,
}

impl Metrics {
    /// The counters of route `name`, created on first use.
    pub fn route(&self, name: &str) -> Arc<RouteCounters> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.entry(name.to_string()).or_default().clone()
    }

    pub fn flag(&self, flag: Flag) {
        self.flags[flag as usize].fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str("# HELP meshgate_requests_total Requests answered, by route and status class (route=\"\": no route matched).\n");
        out.push_str("# TYPE meshgate_requests_total counter\n");
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let all = std::iter::once(("", &self.unmatched))
            .chain(routes.iter().map(|(name, c)| (name.as_str(), &**c)));
        for (name, counters) in all {
            let name = escape_label(name);
            for class in 1..=5 {
                let _ = writeln!(
                    out,
                    "meshgate_requests_total{{route=\"{name}\",code=\"{class}xx\"}} {}",
                    counters.get(class)
                );
            }
        }
        drop(routes);
        out.push_str("# HELP meshgate_request_duration_seconds Time from a request's arrival to its response head, by route (route=\"\": no route matched).\n");
        out.push_str("# TYPE meshgate_request_duration_seconds histogram\n");
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let all = std::iter::once(("", &self.unmatched))
            .chain(routes.iter().map(|(name, c)| (name.as_str(), &**c)));
        for (name, counters) in all {
            let name = escape_label(name);
            let (buckets, sum) = counters.histogram();
            let count = buckets.last().map_or(0, |b| b.1);
            for (le, n) in &buckets {
                let _ = writeln!(
                    out,
                    "meshgate_request_duration_seconds_bucket{{route=\"{name}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "meshgate_request_duration_seconds_sum{{route=\"{name}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "meshgate_request_duration_seconds_count{{route=\"{name}\"}} {count}"
            );
        }
        drop(routes);
        out.push_str(
            "# HELP meshgate_local_responses_total Responses made by the proxy itself, by flag.\n",
        );
        out.push_str("# TYPE meshgate_local_responses_total counter\n");
        for flag in Flag::ALL {
            let _ = writeln!(
                out,
                "meshgate_local_responses_total{{flag=\"{}\"}} {}",
                flag.code(),
                self.flags[flag as usize].load(Relaxed)
            );
        }
        let load = |a: &AtomicU64| a.load(Relaxed) as i64;
        family(
            &mut out,
            "meshgate_config_reloads_total",
            "counter",
            "Configuration reloads, by result.",
            &[
                ("result=\"ok\"", load(&self.reloads_ok)),
                ("result=\"failed\"", load(&self.reloads_failed)),
            ],
        );
        family(
            &mut out,
            "meshgate_circuit_breaker_overflows_total",
            "counter",
            "Requests refused with 503 UO (limit=\"parallel_requests\"; limit=\"pending_requests\": maxPendingRequests already waiting; limit=\"connections\": no one of maxConnections freed in time) and retries not made (limit=\"parallel_retries\") because a backend's circuitBreaker limit was reached.",
            &[
                ("limit=\"parallel_requests\"", load(&self.overflow_requests)),
                ("limit=\"parallel_retries\"", load(&self.overflow_retries)),
                ("limit=\"pending_requests\"", load(&self.overflow_pending)),
                ("limit=\"connections\"", load(&self.overflow_connections)),
            ],
        );
        let singles: [(&str, &str, &str, i64); 6] = [
            (
                "meshgate_config_version",
                "gauge",
                "Version of the active configuration snapshot.",
                load(&self.config_version),
            ),
            (
                "meshgate_upstream_mesh_identity_failures_total",
                "counter",
                "Requests answered 503 MI: the mesh upstream's certificate or SPIFFE ID was refused, or the gateway had no workload identity.",
                load(&self.flags[Flag::MeshIdentity as usize]),
            ),
            (
                "meshgate_active_connections",
                "gauge",
                "Client connections open.",
                load(&self.connections_active),
            ),
            (
                "meshgate_parked_connections",
                "gauge",
                "Idle HTTP/1.1 connections over TLS parked: only the TLS session is kept (no buffers) until the client sends again.",
                load(&self.connections_parked),
            ),
            (
                "meshgate_connections_rejected_total",
                "counter",
                "Client connections closed on accept because clientTraffic.maxConnections were open.",
                load(&self.connections_rejected),
            ),
            (
                "meshgate_listener_bind_failures_total",
                "counter",
                "Attempts to bind a listener added or changed by a reload that failed (retried every 5 s; the listener it replaces keeps serving).",
                load(&self.listener_bind_failures),
            ),
        ];
        for (name, kind, help, value) in singles {
            family(&mut out, name, kind, help, &[("", value)]);
        }
        if let Some(identity) = self.identity.get() {
            family(
                &mut out,
                "meshgate_mesh_identity_loads_total",
                "counter",
                "Workload identity loads (CA requests or file reads), by result.",
                &[
                    ("result=\"ok\"", load(&identity.loads_ok)),
                    ("result=\"failed\"", load(&identity.loads_failed)),
                ],
            );
            family(
                &mut out,
                "meshgate_mesh_identity_rotations_total",
                "counter",
                "Workload identities published.",
                &[("", load(&identity.rotations))],
            );
            family(
                &mut out,
                "meshgate_mesh_identity_expiry_seconds",
                "gauge",
                "Expiry of the workload certificate presented (Unix time).",
                &[("", identity.expiry_unix.load(Relaxed))],
            );
        }
        out
    }
}

/// `meshgate_certificate_expiry_timestamp_seconds` of the edge certificates served.
pub fn render_certificates(snapshot: &crate::snapshot::Snapshot) -> String {
    let mut out = String::new();
    let labels: Vec<(String, i64)> = snapshot
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().map(|t| (l, t)))
        .flat_map(|(l, t)| {
            t.certs.summary.iter().map(move |c| {
                (
                    format!(
                        "listener=\"{}\",secret=\"{}\"",
                        escape_label(&l.name),
                        escape_label(&c.secret)
                    ),
                    c.not_after,
                )
            })
        })
        .collect();
    let samples: Vec<(&str, i64)> = labels.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    family(
        &mut out,
        "meshgate_certificate_expiry_timestamp_seconds",
        "gauge",
        "End of validity (Unix time) of each edge certificate a listener serves.",
        &samples,
    );
    out
}

/// Writes one metric family: its HELP and TYPE lines, then one sample per
/// `(labels, value)`, where `labels` is already formatted (`result="ok"`) or empty.
pub(crate) fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(&str, i64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Escapes a Prometheus label value (route names are not validated by the loader).
pub(crate) fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_survive_lookups_and_render() {
        let m = Metrics::default();
        m.route("echo").record(StatusCode::OK);
        m.route("echo").record(StatusCode::BAD_GATEWAY);
        m.unmatched.record(StatusCode::NOT_FOUND);
        m.flag(Flag::NoRoute);
        let text = m.render();
        assert!(
            text.contains("meshgate_requests_total{route=\"echo\",code=\"2xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("meshgate_requests_total{route=\"echo\",code=\"5xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("meshgate_requests_total{route=\"\",code=\"4xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("meshgate_local_responses_total{flag=\"NR\"} 1"),
            "{text}"
        );
        assert_eq!(escape_label("a\"b\\c"), "a\\\"b\\\\c");
    }

    #[test]
    fn durations_render_as_a_cumulative_histogram() {
        let m = Metrics::default();
        let ms = std::time::Duration::from_millis;
        m.route("r").record_timed(StatusCode::OK, ms(3));
        m.route("r").record_timed(StatusCode::OK, ms(40));
        m.route("r").record_timed(StatusCode::OK, ms(60_000));
        let text = m.render();
        for line in [
            "meshgate_request_duration_seconds_bucket{route=\"r\",le=\"0.0025\"} 0",
            "meshgate_request_duration_seconds_bucket{route=\"r\",le=\"0.005\"} 1",
            "meshgate_request_duration_seconds_bucket{route=\"r\",le=\"0.05\"} 2",
            "meshgate_request_duration_seconds_bucket{route=\"r\",le=\"30\"} 2",
            "meshgate_request_duration_seconds_bucket{route=\"r\",le=\"+Inf\"} 3",
            "meshgate_request_duration_seconds_count{route=\"r\"} 3",
            "meshgate_request_duration_seconds_sum{route=\"r\"} 60.043",
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }
}
