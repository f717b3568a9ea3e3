//! How requests are spread over, and kept off, a route's backend endpoints:
//! load balancing, circuit breaking and active health checks (the shape of
//! Envoy Gateway's BackendTrafficPolicy `loadBalancer`, `circuitBreaker` and
//! `healthCheck.active`). They are ApiPolicy fields, so they attach to a
//! gateway, a listener or a route and merge like the other policies.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Duration;

/// Load-balancing algorithms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum LoadBalancerType {
    /// Power of two choices: of two endpoints drawn at random, the one with fewer
    /// requests in flight (the default).
    #[default]
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
    /// An endpoint drawn at random.
    Random,
}

/// How an endpoint of a backend is chosen. The weighted choice between a
/// route's backendRefs comes first and is not changed by this.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// The algorithm; `LeastRequest` when no policy sets one.
    #[serde(rename = "type")]
    pub kind: LoadBalancerType,
}

/// Limits per backend (each backendRef of each route). A request over a limit is
/// answered 503 with the response flag `UO` (upstream overflow).
///
/// `maxConnections` and `maxPendingRequests` apply to HTTP/1.1 backends, where
/// each request in flight holds a connection of its own: a request finding
/// `maxConnections` in use waits for one to be freed (as one of at most
/// `maxPendingRequests` waiting) up to the connect timeout, 5 s. HTTP/2
/// backends multiplex every request over one connection per endpoint, so only
/// `maxParallelRequests` bounds them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// HTTP/1.1 connections in use at once by the backend's requests; default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295_i64))]
    pub max_connections: Option<i64>,
    /// Requests waiting for one of `maxConnections` at once; default 1024. Over
    /// it a request is refused at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4294967295_i64))]
    pub max_pending_requests: Option<i64>,
    /// Requests in flight to the backend at once; default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295_i64))]
    pub max_parallel_requests: Option<i64>,
    /// Retries in flight to the backend at once; default 1024. A retry over the
    /// limit is not made: the client gets the last attempt's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295_i64))]
    pub max_parallel_retries: Option<i64>,
}

/// Health checking of the endpoints of each backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Probes sent by the proxy to every endpoint.
    pub active: ActiveHealthCheck,
}

/// Kinds of active health check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ActiveHealthCheckType {
    /// An HTTP request whose response status must be one of `expectedStatuses`.
    #[default]
    HTTP,
}

/// Active health checks: each endpoint is probed every `interval`, over the same
/// connections (plain, or mesh mTLS) as requests. An endpoint that fails
/// `unhealthyThreshold` probes in a row gets no requests until it passes
/// `healthyThreshold` in a row; when no endpoint of a backend is healthy its
/// requests get 503 with the response flag `UH`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.type == 'HTTP') == has(self.http)").message("http must be set exactly when type is HTTP"))]
pub struct ActiveHealthCheck {
    /// The kind of probe.
    #[serde(rename = "type")]
    pub kind: ActiveHealthCheckType,
    /// The HTTP probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpActiveHealthCheck>,
    /// Time between probes of one endpoint; default 3s, at least 10ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How long a probe may take; default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Failed probes in a row that make an endpoint unhealthy; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<i32>,
    /// Passed probes in a row that make an unhealthy endpoint healthy; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<i32>,
}

/// An HTTP health probe: `GET path`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpActiveHealthCheck {
    /// The path (and query) requested.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("health check path must start with '/'"))]
    pub path: String,
    /// Statuses that pass the probe; default [200].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 100, max = 599)))]
    pub expected_statuses: Vec<i32>,
}
