//! Requests in flight per endpoint (for least-request balancing) and per
//! backend (for circuit breaking), and the guards that count them.
//!
//! The counters of a route's backend are looked up by route, backend and
//! address in a registry of weak references when a snapshot is compiled, so a
//! reload (every EndpointSlice change in cluster mode) hands the new snapshot
//! the counters the old one's requests still hold: the counts stay exact while
//! requests drain, and a counter no snapshot uses is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;

/// Requests in flight to one endpoint of one route's backend.
#[derive(Debug, Default)]
pub struct EndpointLoad {
    pub in_flight: AtomicU32,
}

/// Requests and retries in flight to one route's backend, and its HTTP/1.1
/// connections in use with the requests waiting for one.
#[derive(Debug, Default)]
pub struct BackendLoad {
    pub requests: AtomicU32,
    pub retries: AtomicU32,
    pub connections: AtomicU32,
    pub pending: AtomicU32,
    /// Woken when a connection slot is given back.
    freed: Notify,
}

/// The counters of every compiled backend, by route and backend name.
#[derive(Debug, Default)]
pub struct LoadRegistry {
    /// Connection and ejection counts by backend Service port.
    pub pools: Arc<crate::pools::PoolRegistry>,
    backends: Mutex<Weaks<(String, String), BackendLoad>>,
    endpoints: Mutex<Weaks<(String, String, SocketAddr), EndpointLoad>>,
}

/// Weak references by key. Entries no snapshot uses any more are dropped once
/// the map has doubled since the last sweep, not on every lookup: a sweep per
/// lookup made compiling N routes O(N²) (70 % of a 5,000-route reload).
#[derive(Debug)]
struct Weaks<K, T> {
    map: HashMap<K, Weak<T>>,
    /// Entries left by the last sweep.
    swept: usize,
}

impl<K, T> Default for Weaks<K, T> {
    fn default() -> Self {
        Weaks {
            map: HashMap::new(),
            swept: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq, T: Default> Weaks<K, T> {
    fn shared(&mut self, key: K) -> Arc<T> {
        if let Some(existing) = self.map.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        if self.map.len() >= 2 * self.swept.max(64) {
            self.map.retain(|_, w| w.strong_count() > 0);
            self.swept = self.map.len();
        }
        let fresh = Arc::new(T::default());
        self.map.insert(key, Arc::downgrade(&fresh));
        fresh
    }
}

impl LoadRegistry {
    /// The counters of backend `backend` of route `route` and of its endpoints
    /// `addrs`, shared with the snapshot that used them last.
    pub fn get(
        &self,
        route: &str,
        backend: &str,
        addrs: &[SocketAddr],
    ) -> (Arc<BackendLoad>, Vec<Arc<EndpointLoad>>) {
        let load = self
            .backends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shared((route.to_string(), backend.to_string()));
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let loads = addrs
            .iter()
            .map(|addr| endpoints.shared((route.to_string(), backend.to_string(), *addr)))
            .collect();
        (load, loads)
    }
}

/// One request in flight to an endpoint; the count drops with the guard, when
/// the exchange ends however it ends (response body done, error, client gone).
#[derive(Debug)]
pub struct InFlight(Arc<EndpointLoad>);

impl InFlight {
    pub fn start(load: &Arc<EndpointLoad>) -> InFlight {
        load.in_flight.fetch_add(1, Relaxed);
        InFlight(load.clone())
    }

    /// The request moves to another endpoint (a retry).
    pub fn move_to(&mut self, load: &Arc<EndpointLoad>) {
        if !Arc::ptr_eq(&self.0, load) {
            *self = InFlight::start(load);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A slot under a circuit-breaker limit, released on drop.
#[derive(Debug)]
pub struct Admitted {
    load: Arc<BackendLoad>,
    retry: bool,
}

impl Admitted {
    /// A request slot of `load` if fewer than `limit` are in flight.
    pub fn request(load: &Arc<BackendLoad>, limit: u32) -> Option<Admitted> {
        claim(&load.requests, limit).then(|| Admitted {
            load: load.clone(),
            retry: false,
        })
    }

    /// A retry slot of `load` if fewer than `limit` retries are in flight.
    pub fn retry(load: &Arc<BackendLoad>, limit: u32) -> Option<Admitted> {
        claim(&load.retries, limit).then(|| Admitted {
            load: load.clone(),
            retry: true,
        })
    }
}

fn claim(counter: &AtomicU32, limit: u32) -> bool {
    counter
        .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
        .is_ok()
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let counter = if self.retry {
            &self.load.retries
        } else {
            &self.load.requests
        };
        counter.fetch_sub(1, Relaxed);
    }
}

/// Why no connection slot was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoConnection {
    /// `maxPendingRequests` requests were already waiting.
    PendingFull,
    /// None of `maxConnections` was freed within the wait.
    Timeout,
}

/// An HTTP/1.1 connection of a backend in use by one request (circuitBreaker
/// `maxConnections`), given back on drop.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<BackendLoad>);

impl ConnectionSlot {
    /// A slot of `load` if fewer than `limit` are in use; otherwise waits up to
    /// `wait` for one, as one of at most `max_pending` waiting requests.
    pub async fn acquire(
        load: &Arc<BackendLoad>,
        limit: u32,
        max_pending: u32,
        wait: Duration,
    ) -> Result<ConnectionSlot, NoConnection> {
        if claim(&load.connections, limit) {
            return Ok(ConnectionSlot(load.clone()));
        }
        if !claim(&load.pending, max_pending) {
            return Err(NoConnection::PendingFull);
        }
        let _waiting = Waiting(load);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so a slot freed in between wakes it.
            let freed = load.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if claim(&load.connections, limit) {
                return Ok(ConnectionSlot(load.clone()));
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(NoConnection::Timeout);
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
        // Every waiter checks again (a woken waiter that is cancelled must not
        // swallow the wake-up another one needed).
        self.0.freed.notify_waiters();
    }
}

/// A request counted as waiting for a connection slot.
struct Waiting<'a>(&'a BackendLoad);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Relaxed);
    }
}

/// What a forwarded request holds until its exchange ends.
#[derive(Debug, Default)]
pub struct ExchangeGuard {
    pub in_flight: Option<InFlight>,
    pub admitted: Option<Admitted>,
    pub connection: Option<ConnectionSlot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_counters_are_swept_as_the_registry_grows() {
        let registry = LoadRegistry::default();
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let kept = registry.get("kept", "ns/svc:80", &[addr]);
        // 50 recompiles of 100 routes, each dropped before the next.
        for n in 0..50 {
            let held: Vec<_> = (0..100)
                .map(|i| registry.get(&format!("r{n}-{i}"), "ns/svc:80", &[addr]))
                .collect();
            drop(held);
        }
        let backends = registry.backends.lock().unwrap().map.len();
        let endpoints = registry.endpoints.lock().unwrap().map.len();
        assert!(backends <= 256, "{backends} backend entries kept");
        assert!(endpoints <= 256, "{endpoints} endpoint entries kept");
        let again = registry.get("kept", "ns/svc:80", &[addr]);
        assert!(Arc::ptr_eq(&kept.0, &again.0));
        assert!(Arc::ptr_eq(&kept.1[0], &again.1[0]));
    }

    #[test]
    fn counters_survive_a_recompile_and_guards_release_them() {
        let registry = LoadRegistry::default();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (backend, endpoints) = registry.get("r", "ns/svc:80", &[addr]);
        let guard = InFlight::start(&endpoints[0]);
        let slot = Admitted::request(&backend, 1).unwrap();
        assert!(Admitted::request(&backend, 1).is_none());
        // A new snapshot gets the same counters while the old one lives.
        let (again, endpoints_again) = registry.get("r", "ns/svc:80", &[addr]);
        assert!(Arc::ptr_eq(&backend, &again));
        assert_eq!(endpoints_again[0].in_flight.load(Relaxed), 1);
        drop((guard, slot));
        assert_eq!(endpoints_again[0].in_flight.load(Relaxed), 0);
        assert_eq!(again.requests.load(Relaxed), 0);
        // Another route has counters of its own.
        let (other, _) = registry.get("r2", "ns/svc:80", &[addr]);
        assert!(!Arc::ptr_eq(&backend, &other));
    }

    #[tokio::test]
    async fn connection_slots_queue_up_to_the_pending_limit() {
        let load = Arc::new(BackendLoad::default());
        let wait = Duration::from_secs(10);
        let first = ConnectionSlot::acquire(&load, 1, 1, wait).await.unwrap();
        // The second waits for the first; a third finds the queue full.
        let waiter = tokio::spawn({
            let load = load.clone();
            async move { ConnectionSlot::acquire(&load, 1, 1, wait).await }
        });
        while load.pending.load(Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            ConnectionSlot::acquire(&load, 1, 1, wait).await.err(),
            Some(NoConnection::PendingFull)
        );
        drop(first);
        let second = waiter.await.unwrap().unwrap();
        assert_eq!(load.connections.load(Relaxed), 1);
        assert_eq!(load.pending.load(Relaxed), 0);
        // Nothing is freed within a short wait: refused, and no longer pending.
        assert_eq!(
            ConnectionSlot::acquire(&load, 1, 1, Duration::from_millis(20))
                .await
                .err(),
            Some(NoConnection::Timeout)
        );
        assert_eq!(load.pending.load(Relaxed), 0);
        drop(second);
        assert_eq!(load.connections.load(Relaxed), 0);
    }
}
