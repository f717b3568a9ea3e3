//! Upstream connections by backend (Service port): how many the pooled clients
//! opened, hold open now and failed to open, and how many endpoints passive
//! outlier detection ejected — the pool series of `/metrics`.
//!
//! The connectors see only an endpoint address, so each applied snapshot
//! publishes a map from address to its backend's counters. The counters live
//! in the registry by backend name across reloads; one that no snapshot uses
//! any more is dropped once none of its connections is open.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use crate::routes::Route;

/// The counters of one backend.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections opened (TCP, and TLS or HBONE for mesh endpoints).
    pub opened: AtomicU64,
    /// Connections open now, idle or busy.
    pub open: AtomicU64,
    /// Connection attempts that failed (refused, timed out, handshake refused).
    pub connect_failures: AtomicU64,
    /// Endpoints ejected by passive outlier detection.
    pub ejections: AtomicU64,
}

/// One open upstream connection; the open count drops with it.
#[derive(Debug)]
pub struct OpenConnection(Arc<PoolStats>);

impl OpenConnection {
    pub fn new(stats: Arc<PoolStats>) -> OpenConnection {
        stats.opened.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// The counters of every backend, by name and by endpoint address.
#[derive(Debug, Default)]
pub struct PoolRegistry {
    by_name: Mutex<BTreeMap<String, Arc<PoolStats>>>,
    by_addr: ArcSwap<HashMap<SocketAddr, Arc<PoolStats>>>,
}

impl PoolRegistry {
    /// The counters of backend `name` (`namespace/name:port`).
    pub fn stats(&self, name: &str) -> Arc<PoolStats> {
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        by_name.entry(name.to_string()).or_default().clone()
    }

    /// Makes the endpoints of `routes` find their backend's counters, and drops
    /// the counters of backends no snapshot holds and no connection uses. An
    /// address shared by two backends counts for the first route's.
    pub fn publish(&self, routes: &[Arc<Route>]) {
        let mut by_addr = HashMap::new();
        for route in routes {
            for backend in route.backends.iter() {
                for endpoint in &backend.endpoints {
                    by_addr
                        .entry(endpoint.addr)
                        .or_insert_with(|| endpoint.stats.clone());
                }
            }
        }
        self.by_addr.store(Arc::new(by_addr));
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        by_name.retain(|_, s| Arc::strong_count(s) > 1 || s.open.load(Relaxed) > 0);
    }

    /// The counters for connections to `addr`, if a backend has it.
    pub fn for_addr(&self, addr: &SocketAddr) -> Option<Arc<PoolStats>> {
        self.by_addr.load().get(addr).cloned()
    }

    /// The pool series in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        type Field = fn(&PoolStats) -> &AtomicU64;
        let series: [(&str, &str, &str, Field); 4] = [
            (
                "meshgate_upstream_connections_opened_total",
                "counter",
                "Upstream connections opened, by backend (Service port).",
                |s| &s.opened,
            ),
            (
                "meshgate_upstream_connections_open",
                "gauge",
                "Upstream connections open now (idle or busy), by backend.",
                |s| &s.open,
            ),
            (
                "meshgate_upstream_connect_failures_total",
                "counter",
                "Upstream connection attempts that failed (refused, timed out, TLS or HBONE refused), by backend.",
                |s| &s.connect_failures,
            ),
            (
                "meshgate_outlier_ejections_total",
                "counter",
                "Endpoints ejected by passive outlier detection, by backend.",
                |s| &s.ejections,
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (backend, stats) in by_name.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{backend=\"{}\"}} {}",
                    crate::metrics::escape_label(backend),
                    value(stats).load(Relaxed)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_connections_and_unused_backends_are_dropped() {
        let registry = PoolRegistry::default();
        let stats = registry.stats("ns/a:80");
        let conn = OpenConnection::new(stats.clone());
        assert_eq!(stats.opened.load(Relaxed), 1);
        assert_eq!(stats.open.load(Relaxed), 1);
        let mut text = String::new();
        registry.render(&mut text);
        assert!(text.contains("meshgate_upstream_connections_open{backend=\"ns/a:80\"} 1"));
        // No snapshot holds it, but a connection is open: kept.
        drop(stats);
        registry.publish(&[]);
        assert!(Arc::ptr_eq(&registry.stats("ns/a:80"), &conn.0));
        drop(conn);
        registry.publish(&[]);
        let mut text = String::new();
        registry.render(&mut text);
        assert!(!text.contains("ns/a:80"), "{text}");
    }
}
