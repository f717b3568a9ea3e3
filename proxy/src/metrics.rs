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
}

impl Flag {
    pub const ALL: [Flag; 12] = [
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
        }
    }
}

/// Responses of one route by status class (1xx..5xx).
#[derive(Debug, Default)]
pub struct RouteCounters {
    by_class: [AtomicU64; 5],
}

impl RouteCounters {
    pub fn record(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Relaxed);
    }

    pub fn get(&self, class: usize) -> u64 {
        self.by_class
            .get(class.wrapping_sub(1))
            .map_or(0, |c| c.load(Relaxed))
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
    /// Endpoints ejected by passive outlier detection.
    pub outlier_ejections: AtomicU64,
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
        let singles: [(&str, &str, &str, i64); 5] = [
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
                "meshgate_connections_rejected_total",
                "counter",
                "Client connections closed on accept because clientTraffic.maxConnections were open.",
                load(&self.connections_rejected),
            ),
            (
                "meshgate_outlier_ejections_total",
                "counter",
                "Endpoints ejected after consecutive 5xx or connection failures.",
                load(&self.outlier_ejections),
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
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
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
}
