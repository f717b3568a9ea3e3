//! Compiles one ApiGateway route into the form the request path uses. A route that
//! does not compile is reported and left out; it never affects the other routes.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;
use meshgate_crds::route::{self as api, PathMatchType, RouteFilterType, ValueMatchType};
use regex::{Regex, RegexBuilder};

use crate::backends::{Backend, Backends, Balance, ServiceIndex};
use crate::filters::{HeaderModifier, PathModifier, Redirect, UrlRewrite};
use crate::health::{HealthRegistry, RouteHealth};
use crate::load::LoadRegistry;
use crate::metrics::{Metrics, RouteCounters};
use crate::mirror::Mirror;
use crate::retry::RetryPolicy;
use crate::routing::{HeaderRule, MatchRule, PathRule, QueryRule, ValueRule};

/// A compiled route.
#[derive(Clone, Debug)]
pub struct Route {
    /// Position in the ApiGateway's `routes` (indexes per-listener policies).
    pub id: usize,
    /// [`fingerprint`] of the ApiGateway route it was compiled from.
    pub source: u64,
    pub name: String,
    /// Listener names; empty means all.
    pub listeners: Vec<String>,
    /// Lower case; empty means those of the listener.
    pub hostnames: Vec<String>,
    /// Exactly as long as the route's matches: a `Vec` collected from the
    /// fallible compile would reserve room for four (336 bytes more per route).
    pub matches: Box<[MatchRule]>,
    // Filters are the exception: boxed, a route without them is ~300 bytes
    // smaller, which at thousands of routes is megabytes (docs/performance.md).
    pub request_headers: Option<Box<HeaderModifier>>,
    pub response_headers: Option<Box<HeaderModifier>>,
    pub rewrite: Option<Box<UrlRewrite>>,
    pub redirect: Option<Box<Redirect>>,
    pub backends: Backends,
    /// Timeouts and retries (an ApiPolicy may override them per listener).
    /// Routes without `timeouts` and `retry` share one [`default_upstream`].
    pub upstream: Arc<UpstreamSettings>,
    pub mirror: Option<Box<Mirror>>,
    pub counters: Arc<RouteCounters>,
    /// Filter kinds in use, for `/config`.
    pub filters: Vec<&'static str>,
}

/// Envoy's default circuit-breaker thresholds (`max_requests`, `max_retries`
/// as Envoy Gateway sets them).
pub const DEFAULT_CIRCUIT_LIMIT: u32 = 1024;

/// Circuit-breaker limits per backend (ApiPolicy `circuitBreaker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitLimits {
    pub max_requests: u32,
    pub max_retries: u32,
    /// HTTP/1.1 backends: connections in use at once, and requests waiting for one.
    pub max_connections: u32,
    pub max_pending: u32,
}

impl CircuitLimits {
    pub fn compile(
        spec: &meshgate_crds::upstream::CircuitBreaker,
    ) -> Result<CircuitLimits, String> {
        let limit = |v: Option<i64>, field: &str| match v {
            None => Ok(DEFAULT_CIRCUIT_LIMIT),
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("circuitBreaker.{field} {n} is not in 1..=4294967295")),
        };
        let max_pending = match spec.max_pending_requests {
            None => DEFAULT_CIRCUIT_LIMIT,
            Some(n) => u32::try_from(n).map_err(|_| {
                format!("circuitBreaker.maxPendingRequests {n} is not in 0..=4294967295")
            })?,
        };
        Ok(CircuitLimits {
            max_requests: limit(spec.max_parallel_requests, "maxParallelRequests")?,
            max_retries: limit(spec.max_parallel_retries, "maxParallelRetries")?,
            max_connections: limit(spec.max_connections, "maxConnections")?,
            max_pending,
        })
    }
}

/// Timeouts, retries, balancing, circuit breaking and health checks of
/// requests sent upstream.
#[derive(Debug, Default)]
pub struct UpstreamSettings {
    /// The shorter of `timeouts.request` and `timeouts.backendRequest`: the timeout
    /// of a request that is not retried.
    pub timeout: Option<Duration>,
    /// `timeouts.request`: the whole request, retries included.
    pub request_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    /// How an endpoint of a backend is chosen.
    pub balance: Balance,
    /// Limits per backend; `None`: none.
    pub circuit: Option<CircuitLimits>,
    /// Active health of the route's endpoints; `None`: not checked.
    pub health: Option<RouteHealth>,
}

/// The settings of a route without `timeouts` and `retry` (what
/// `UpstreamSettings::compile(None, None)` gives), shared by all such routes
/// of every snapshot instead of one copy per route.
pub fn default_upstream() -> Arc<UpstreamSettings> {
    static DEFAULT: std::sync::LazyLock<Arc<UpstreamSettings>> =
        std::sync::LazyLock::new(|| Arc::new(UpstreamSettings::default()));
    DEFAULT.clone()
}

impl UpstreamSettings {
    /// Compiles route (or ApiPolicy) `timeouts` and `retry`.
    pub fn compile(
        timeouts: Option<&api::RouteTimeouts>,
        retry: Option<&api::Retry>,
    ) -> Result<UpstreamSettings, String> {
        // A zero duration disables the timeout (Gateway API).
        let timeout_of = |d: Option<&meshgate_crds::Duration>| -> Result<Option<Duration>, String> {
            Ok(d.map(|d| d.to_std().map_err(|e| e.to_string()))
                .transpose()?
                .filter(|d| !d.is_zero()))
        };
        let request_timeout = timeout_of(timeouts.and_then(|t| t.request.as_ref()))?;
        let backend_timeout = timeout_of(timeouts.and_then(|t| t.backend_request.as_ref()))?;
        let timeout = match (request_timeout, backend_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let retry = retry
            .map(|r| RetryPolicy::compile(r, backend_timeout))
            .transpose()
            .map_err(|e| format!("retry: {e}"))?;
        Ok(UpstreamSettings {
            timeout,
            request_timeout,
            retry,
            ..UpstreamSettings::default()
        })
    }

    /// Adds an ApiPolicy's `loadBalancer`, `circuitBreaker` and `healthCheck`
    /// for a route with `backends`.
    pub fn with_backend_policy(
        mut self,
        spec: &meshgate_crds::ApiPolicySpec,
        backends: &Backends,
        health: &HealthRegistry,
    ) -> Result<UpstreamSettings, String> {
        if let Some(lb) = &spec.load_balancer {
            self.balance = lb.kind.into();
        }
        self.circuit = spec
            .circuit_breaker
            .as_ref()
            .map(CircuitLimits::compile)
            .transpose()?;
        self.health = spec
            .health_check
            .as_ref()
            .map(|h| RouteHealth::compile(h, backends, health))
            .transpose()?;
        Ok(self)
    }
}

/// What compiling a route needs from the rest of the gateway.
pub struct Context<'a> {
    pub namespace: &'a str,
    pub listener_names: &'a [String],
    pub services: &'a ServiceIndex<'a>,
    pub metrics: &'a Metrics,
    /// In-flight counters shared across snapshots.
    pub loads: &'a LoadRegistry,
}

/// Largest compiled size of a user regular expression.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn anchored_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
}

fn value_rule(kind: ValueMatchType, value: &str) -> Result<ValueRule, String> {
    Ok(match kind {
        ValueMatchType::Exact => ValueRule::Exact(value.to_string()),
        ValueMatchType::RegularExpression => ValueRule::Regex(anchored_regex(value)?),
    })
}

fn path_rule(path: Option<&api::PathMatch>) -> Result<PathRule, String> {
    let Some(path) = path else {
        return Ok(PathRule::Prefix(String::new()));
    };
    let value = path.value.as_str();
    if path.kind != PathMatchType::RegularExpression {
        if !value.starts_with('/') {
            return Err(format!("path {value:?} must start with '/'"));
        }
        if value.split('/').any(|s| s == "." || s == "..") {
            return Err(format!(
                "path {value:?} must not contain '.' or '..' segments"
            ));
        }
    }
    Ok(match path.kind {
        PathMatchType::Exact => PathRule::Exact(value.to_string()),
        PathMatchType::PathPrefix => PathRule::Prefix(value.trim_end_matches('/').to_string()),
        PathMatchType::RegularExpression => PathRule::Regex(anchored_regex(value)?),
    })
}

fn method(m: api::HttpMethod) -> Method {
    use api::HttpMethod::*;
    match m {
        GET => Method::GET,
        HEAD => Method::HEAD,
        POST => Method::POST,
        PUT => Method::PUT,
        DELETE => Method::DELETE,
        CONNECT => Method::CONNECT,
        OPTIONS => Method::OPTIONS,
        TRACE => Method::TRACE,
        PATCH => Method::PATCH,
    }
}

fn match_rule(m: &api::RouteMatch) -> Result<MatchRule, String> {
    // Gateway API: of several conditions on one name, only the first counts.
    let mut headers: Vec<HeaderRule> = Vec::with_capacity(m.headers.len());
    for h in &m.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", h.name))?;
        if !headers.iter().any(|r| r.name == name) {
            headers.push(HeaderRule {
                name,
                value: value_rule(h.kind, &h.value)?,
            });
        }
    }
    let mut query: Vec<QueryRule> = Vec::with_capacity(m.query_params.len());
    for q in &m.query_params {
        if !query.iter().any(|r| r.name == q.name) {
            query.push(QueryRule {
                name: q.name.clone(),
                value: value_rule(q.kind, &q.value)?,
            });
        }
    }
    Ok(MatchRule {
        path: path_rule(m.path.as_ref())?,
        method: m.method.map(method),
        headers,
        query,
    })
}

fn setting<T>(value: &Option<T>, kind: RouteFilterType) -> Result<&T, String> {
    value
        .as_ref()
        .ok_or_else(|| format!("filter {kind:?} is missing its settings"))
}

/// A hash of everything in `route`: equal fingerprints mean an unchanged route
/// to [`crate::snapshot::reuse`] (64 bits: a chance collision is negligible).
pub fn fingerprint(route: &api::Route) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    route.hash(&mut hasher);
    hasher.finish()
}

/// Compiles `route`. Warnings are returned for parts that are accepted but not
/// implemented yet; an `Err` means the route must be left out.
pub fn compile(route: &api::Route, cx: &Context<'_>) -> Result<(Route, Vec<String>), String> {
    let warnings = Vec::new();
    for listener in &route.listeners {
        if !cx.listener_names.contains(listener) {
            return Err(format!("listener {listener:?} does not exist"));
        }
    }
    let matches: Box<[MatchRule]> = if route.matches.is_empty() {
        Box::new([match_rule(&api::RouteMatch::default())?])
    } else {
        route
            .matches
            .iter()
            .map(match_rule)
            .collect::<Result<_, _>>()?
    };

    let (mut request_headers, mut response_headers, mut rewrite, mut redirect, mut mirror) =
        (None, None, None, None, None);
    let mut filters = Vec::new();
    for f in &route.filters {
        let kind = f.kind;
        let duplicate = match kind {
            RouteFilterType::RequestHeaderModifier => request_headers
                .replace(Box::new(HeaderModifier::compile(setting(
                    &f.request_header_modifier,
                    kind,
                )?)?))
                .is_some(),
            RouteFilterType::ResponseHeaderModifier => response_headers
                .replace(Box::new(HeaderModifier::compile(setting(
                    &f.response_header_modifier,
                    kind,
                )?)?))
                .is_some(),
            RouteFilterType::URLRewrite => rewrite
                .replace(Box::new(UrlRewrite::compile(setting(
                    &f.url_rewrite,
                    kind,
                )?)?))
                .is_some(),
            RouteFilterType::RequestRedirect => redirect
                .replace(Box::new(Redirect::compile(setting(
                    &f.request_redirect,
                    kind,
                )?)?))
                .is_some(),
            RouteFilterType::RequestMirror => {
                let m = setting(&f.request_mirror, kind)?;
                let b = &m.backend_ref;
                let namespace = b.namespace.as_deref().unwrap_or(cx.namespace);
                let endpoints = cx.services.resolve(namespace, &b.name, b.port)?;
                let backend =
                    Backend::new(format!("{namespace}/{}:{}", b.name, b.port), 1, endpoints);
                let percent = u32::try_from(m.percent.unwrap_or(100)).unwrap_or(0);
                mirror
                    .replace(Box::new(Mirror::new(backend, percent)))
                    .is_some()
            }
        };
        if duplicate {
            return Err(format!("filter {kind:?} is given more than once"));
        }
        filters.push(match kind {
            RouteFilterType::RequestHeaderModifier => "RequestHeaderModifier",
            RouteFilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
            RouteFilterType::URLRewrite => "URLRewrite",
            RouteFilterType::RequestRedirect => "RequestRedirect",
            RouteFilterType::RequestMirror => "RequestMirror",
        });
    }
    if redirect.is_some() && rewrite.is_some() {
        return Err("RequestRedirect and URLRewrite cannot be used together".to_string());
    }
    if redirect.is_some() && !route.backend_refs.is_empty() {
        return Err(
            "a route with a RequestRedirect filter cannot also have backendRefs".to_string(),
        );
    }
    if redirect.is_none() && route.backend_refs.is_empty() {
        return Err("a route needs backendRefs or a RequestRedirect filter".to_string());
    }
    let prefix_rewrite = [
        rewrite.as_ref().and_then(|r| r.path.as_ref()),
        redirect.as_ref().and_then(|r| r.path.as_ref()),
    ]
    .into_iter()
    .flatten()
    .any(|p| matches!(p, PathModifier::Prefix(_)));
    if prefix_rewrite
        && !matches
            .iter()
            .all(|m| matches!(m.path, PathRule::Prefix(_)))
    {
        return Err("ReplacePrefixMatch needs every match to be a PathPrefix match".to_string());
    }

    let mut backends = Vec::with_capacity(route.backend_refs.len());
    for b in &route.backend_refs {
        let namespace = b.namespace.as_deref().unwrap_or(cx.namespace);
        let endpoints = cx.services.resolve(namespace, &b.name, b.port)?;
        backends.push(
            Backend::shared(
                &route.name,
                format!("{namespace}/{}:{}", b.name, b.port),
                b.weight(),
                endpoints,
                cx.loads,
            )
            .with_h2(cx.services.is_h2(namespace, &b.name, b.port)),
        );
    }
    let backends = Backends::new(backends);
    if redirect.is_none() && backends.total_weight() == 0 {
        return Err("every backendRef has weight 0".to_string());
    }

    let upstream = if route.timeouts.is_none() && route.retry.is_none() {
        default_upstream()
    } else {
        Arc::new(UpstreamSettings::compile(
            route.timeouts.as_ref(),
            route.retry.as_ref(),
        )?)
    };

    let compiled = Route {
        id: 0,
        source: fingerprint(route),
        name: route.name.clone(),
        listeners: route.listeners.clone(),
        hostnames: route
            .hostnames
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        matches,
        request_headers,
        response_headers,
        rewrite,
        redirect,
        backends,
        upstream,
        mirror,
        counters: cx.metrics.route(&route.name),
        filters,
    };
    Ok((compiled, warnings))
}
