//! Active HTTP health checks (ApiPolicy `healthCheck.active`).
//!
//! One background task per (backend, endpoint, check settings) probes the
//! endpoint through the proxy's pooled upstream clients, so a mesh endpoint is
//! probed over mesh mTLS exactly as requests reach it. The states live in a
//! registry of weak references: a reload that keeps the same check finds the
//! state (and its task) the old snapshot uses, so health survives reloads, and
//! a task stops once no snapshot refers to its state any more.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use meshgate_crds::upstream::{ActiveHealthCheckType, HealthCheck as HealthCheckSpec};

use crate::backends::Backends;
use crate::state::UpstreamClient;

/// Defaults of Envoy Gateway's `healthCheck.active`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(3);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_UNHEALTHY: u32 = 3;
const DEFAULT_HEALTHY: u32 = 1;
/// Probes more often than this would load the endpoints more than they tell.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The most of a probe's response body read (so its connection can be reused).
const MAX_PROBE_BODY: usize = 64 * 1024;

/// Compiled `healthCheck.active` settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub expected_statuses: Vec<u16>,
}

impl CheckSettings {
    pub fn compile(spec: &HealthCheckSpec) -> Result<CheckSettings, String> {
        let active = &spec.active;
        let http = match active.kind {
            ActiveHealthCheckType::HTTP => active
                .http
                .as_ref()
                .ok_or("healthCheck.active.http is required for type HTTP")?,
        };
        if !http.path.starts_with('/') || http.path.parse::<Uri>().is_err() {
            return Err(format!(
                "healthCheck path {:?} must be a path starting with '/'",
                http.path
            ));
        }
        let duration = |d: Option<&meshgate_crds::Duration>, default: Duration| {
            d.map(|d| d.to_std().map_err(|e| e.to_string()))
                .transpose()
                .map(|d| d.unwrap_or(default))
        };
        let interval = duration(active.interval.as_ref(), DEFAULT_INTERVAL)?;
        if interval < MIN_INTERVAL {
            return Err(format!(
                "healthCheck interval must be at least {MIN_INTERVAL:?}"
            ));
        }
        let timeout = duration(active.timeout.as_ref(), DEFAULT_TIMEOUT)?;
        if timeout.is_zero() {
            return Err("healthCheck timeout must be above 0".to_string());
        }
        let threshold = |v: Option<i32>, default: u32| -> Result<u32, String> {
            match v {
                None => Ok(default),
                Some(n) if (1..=100).contains(&n) => Ok(n as u32),
                Some(n) => Err(format!("healthCheck threshold {n} is not in 1..=100")),
            }
        };
        let mut expected_statuses = Vec::with_capacity(http.expected_statuses.len().max(1));
        for s in &http.expected_statuses {
            match u16::try_from(*s).ok().filter(|s| (100..=599).contains(s)) {
                Some(s) => expected_statuses.push(s),
                None => {
                    return Err(format!(
                        "healthCheck expected status {s} is not in 100..=599"
                    ))
                }
            }
        }
        if expected_statuses.is_empty() {
            expected_statuses.push(200);
        }
        Ok(CheckSettings {
            path: http.path.clone(),
            interval,
            timeout,
            unhealthy_threshold: threshold(active.unhealthy_threshold, DEFAULT_UNHEALTHY)?,
            healthy_threshold: threshold(active.healthy_threshold, DEFAULT_HEALTHY)?,
            expected_statuses,
        })
    }
}

/// The health of one endpoint under one check. Only its checker task writes it.
#[derive(Debug)]
pub struct EndpointHealth {
    healthy: AtomicBool,
    /// Probes passed (while unhealthy) or failed (while healthy) in a row.
    passes: AtomicU32,
    failures: AtomicU32,
}

impl EndpointHealth {
    /// Endpoints start healthy; the first probe is sent at once.
    fn new() -> EndpointHealth {
        EndpointHealth {
            healthy: AtomicBool::new(true),
            passes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Records a probe; returns the new health when it changed.
    fn record(&self, passed: bool, settings: &CheckSettings) -> Option<bool> {
        let healthy = self.is_healthy();
        if passed {
            self.failures.store(0, Relaxed);
            if healthy {
                return None;
            }
            let passes = self.passes.fetch_add(1, Relaxed) + 1;
            if passes < settings.healthy_threshold {
                return None;
            }
            self.passes.store(0, Relaxed);
            self.healthy.store(true, Relaxed);
            Some(true)
        } else {
            self.passes.store(0, Relaxed);
            if !healthy {
                return None;
            }
            let failures = self.failures.fetch_add(1, Relaxed) + 1;
            if failures < settings.unhealthy_threshold {
                return None;
            }
            self.failures.store(0, Relaxed);
            self.healthy.store(false, Relaxed);
            Some(false)
        }
    }
}

/// Which endpoint a state belongs to, and under which check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    backend: String,
    addr: SocketAddr,
    h2: bool,
    settings: CheckSettings,
}

/// Counters of the checks.
#[derive(Debug, Default)]
pub struct HealthStats {
    /// Probes that failed (status not expected, connection failure, timeout).
    pub failures: AtomicU64,
}

/// Every endpoint health of the process, and the clients the probes use.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    states: Mutex<HashMap<Key, Weak<EndpointHealth>>>,
    clients: OnceLock<Clients>,
    stats: Arc<HealthStats>,
}

#[derive(Clone)]
struct Clients {
    http1: UpstreamClient,
    h2: UpstreamClient,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clients")
    }
}

impl HealthRegistry {
    pub fn new() -> Arc<HealthRegistry> {
        Arc::new(HealthRegistry::default())
    }

    /// The pooled clients probes go through (those of requests).
    pub fn bind(&self, http1: UpstreamClient, h2: UpstreamClient) {
        let _ = self.clients.set(Clients { http1, h2 });
    }

    pub fn stats(&self) -> &HealthStats {
        &self.stats
    }

    /// The health of `addr` of `backend` under `settings`: the one in use if
    /// any, else a new one whose checker starts now (when there is a runtime
    /// and clients; without them, as in compile-only tests, it stays healthy).
    fn state(
        &self,
        backend: &str,
        addr: SocketAddr,
        h2: bool,
        settings: &CheckSettings,
    ) -> Arc<EndpointHealth> {
        let key = Key {
            backend: backend.to_string(),
            addr,
            h2,
            settings: settings.clone(),
        };
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.retain(|_, w| w.strong_count() > 0);
        if let Some(state) = states.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(EndpointHealth::new());
        states.insert(key.clone(), Arc::downgrade(&state));
        drop(states);
        let clients = self.clients.get().cloned();
        if let (Ok(runtime), Some(clients)) = (tokio::runtime::Handle::try_current(), clients) {
            let client = if h2 { clients.h2 } else { clients.http1 };
            runtime.spawn(check_loop(
                Arc::downgrade(&state),
                key,
                client,
                self.stats.clone(),
            ));
        }
        state
    }

    /// `meshgate_upstream_healthy_endpoints` and `meshgate_upstream_checked_endpoints`
    /// by backend, and `meshgate_health_check_failures_total`. An endpoint
    /// checked under two settings counts as healthy when both find it so.
    pub fn render(&self, out: &mut String) {
        let mut endpoints: BTreeMap<(String, SocketAddr), bool> = BTreeMap::new();
        {
            let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, weak) in states.iter() {
                if let Some(state) = weak.upgrade() {
                    *endpoints
                        .entry((key.backend.clone(), key.addr))
                        .or_insert(true) &= state.is_healthy();
                }
            }
        }
        let mut backends: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for ((backend, _), healthy) in &endpoints {
            let entry = backends.entry(backend.as_str()).or_default();
            entry.0 += i64::from(*healthy);
            entry.1 += 1;
        }
        let labels: Vec<(String, i64, i64)> = backends
            .iter()
            .map(|(b, (h, t))| {
                (
                    format!("backend=\"{}\"", crate::metrics::escape_label(b)),
                    *h,
                    *t,
                )
            })
            .collect();
        let healthy: Vec<(&str, i64)> = labels.iter().map(|(l, h, _)| (l.as_str(), *h)).collect();
        let checked: Vec<(&str, i64)> = labels.iter().map(|(l, _, t)| (l.as_str(), *t)).collect();
        crate::metrics::family(
            out,
            "meshgate_upstream_healthy_endpoints",
            "gauge",
            "Endpoints passing their active health check, by backend (namespace/service:port).",
            &healthy,
        );
        crate::metrics::family(
            out,
            "meshgate_upstream_checked_endpoints",
            "gauge",
            "Endpoints under an active health check, by backend (namespace/service:port).",
            &checked,
        );
        crate::metrics::family(
            out,
            "meshgate_health_check_failures_total",
            "counter",
            "Active health check probes that failed (unexpected status, connection failure or timeout).",
            &[(
                "",
                i64::try_from(self.stats.failures.load(Relaxed)).unwrap_or(i64::MAX),
            )],
        );
    }
}

/// Probes `key.addr` every interval while its state is in use.
async fn check_loop(
    state: Weak<EndpointHealth>,
    key: Key,
    client: UpstreamClient,
    stats: Arc<HealthStats>,
) {
    let Ok(uri) = Uri::try_from(format!("http://{}{}", key.addr, key.settings.path)) else {
        return;
    };
    loop {
        let Some(health) = state.upgrade() else {
            tracing::debug!(backend = %key.backend, endpoint = %key.addr, "health check stopped");
            return;
        };
        let passed = probe(&client, &uri, key.h2, &key.settings).await;
        if !passed {
            stats.failures.fetch_add(1, Relaxed);
        }
        match health.record(passed, &key.settings) {
            Some(true) => {
                tracing::info!(backend = %key.backend, endpoint = %key.addr, "endpoint healthy again")
            }
            Some(false) => {
                tracing::warn!(backend = %key.backend, endpoint = %key.addr, "endpoint unhealthy: health checks failed")
            }
            None => {}
        }
        drop(health);
        tokio::time::sleep(key.settings.interval).await;
    }
}

/// One probe: `GET path` within the timeout, passing on an expected status.
async fn probe(client: &UpstreamClient, uri: &Uri, h2: bool, settings: &CheckSettings) -> bool {
    let mut request = Request::new(Either::Right(Full::new(Bytes::new())));
    *request.uri_mut() = uri.clone();
    *request.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    request.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("meshgate-health-check"),
    );
    let exchange = async {
        let response = client.request(request).await.ok()?;
        let passed = settings
            .expected_statuses
            .contains(&response.status().as_u16());
        // Read the body so the pooled connection can be reused.
        let _ = Limited::new(response.into_body(), MAX_PROBE_BODY)
            .collect()
            .await;
        Some(passed)
    };
    matches!(
        tokio::time::timeout(settings.timeout, exchange).await,
        Ok(Some(true))
    )
}

/// The endpoint healths of one route's backends under one check, by backend
/// and endpoint index (as in [`Backends`]).
#[derive(Debug)]
pub struct RouteHealth {
    backends: Vec<Vec<Arc<EndpointHealth>>>,
}

impl RouteHealth {
    pub fn compile(
        spec: &HealthCheckSpec,
        backends: &Backends,
        registry: &HealthRegistry,
    ) -> Result<RouteHealth, String> {
        let settings = CheckSettings::compile(spec)?;
        Ok(RouteHealth {
            backends: backends
                .iter()
                .map(|b| {
                    b.endpoints
                        .iter()
                        .map(|e| registry.state(&b.name, e.addr, b.h2, &settings))
                        .collect()
                })
                .collect(),
        })
    }

    /// The healths of the endpoints of backend `index`.
    pub fn backend(&self, index: usize) -> Option<&[Arc<EndpointHealth>]> {
        self.backends.get(index).map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(unhealthy: u32, healthy: u32) -> CheckSettings {
        CheckSettings {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            expected_statuses: vec![200],
        }
    }

    #[test]
    fn thresholds_flip_the_health() {
        let s = settings(3, 2);
        let h = EndpointHealth::new();
        assert!(h.is_healthy());
        assert_eq!(h.record(false, &s), None);
        assert_eq!(h.record(false, &s), None);
        // A pass in between starts the count again.
        assert_eq!(h.record(true, &s), None);
        assert_eq!(h.record(false, &s), None);
        assert_eq!(h.record(false, &s), None);
        assert_eq!(h.record(false, &s), Some(false));
        assert!(!h.is_healthy());
        assert_eq!(h.record(true, &s), None);
        assert_eq!(h.record(false, &s), None);
        assert_eq!(h.record(true, &s), None);
        assert_eq!(h.record(true, &s), Some(true));
        assert!(h.is_healthy());
    }

    #[test]
    fn settings_compile_with_defaults_and_refuse_bad_values() {
        let parse = |json: &str| -> HealthCheckSpec { serde_json::from_str(json).unwrap() };
        let spec = parse(r#"{"active": {"type": "HTTP", "http": {"path": "/healthz"}}}"#);
        let s = CheckSettings::compile(&spec).unwrap();
        assert_eq!(s.interval, DEFAULT_INTERVAL);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!((s.unhealthy_threshold, s.healthy_threshold), (3, 1));
        assert_eq!(s.expected_statuses, vec![200]);
        for (json, error) in [
            (r#"{"active": {"type": "HTTP"}}"#, "http is required"),
            (
                r#"{"active": {"type": "HTTP", "http": {"path": "healthz"}}}"#,
                "must be a path",
            ),
            (
                r#"{"active": {"type": "HTTP", "http": {"path": "/h"}, "interval": "0s"}}"#,
                "at least",
            ),
            (
                r#"{"active": {"type": "HTTP", "http": {"path": "/h"}, "unhealthyThreshold": 0}}"#,
                "not in 1..=100",
            ),
            (
                r#"{"active": {"type": "HTTP", "http": {"path": "/h", "expectedStatuses": [700]}}}"#,
                "not in 100..=599",
            ),
        ] {
            let spec = parse(json);
            let e = CheckSettings::compile(&spec).unwrap_err();
            assert!(e.contains(error), "{json}: {e}");
        }
    }
}
