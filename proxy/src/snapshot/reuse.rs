//! Routes a new snapshot takes over from the one it replaces.
//!
//! A reload changes a route or two, yet compiling all of them (regexes,
//! backends, counters looked up by name) was about half of a 5,000-route
//! standalone reload. A compiled route is shared with the previous snapshot
//! (the same `Arc`) when everything it was compiled from is unchanged:
//! - its ApiGateway entry (compared by [`routes::fingerprint`]); a route
//!   that only moved (its `id` indexes per-listener policies) is copied with
//!   its new position;
//! - the gateway's namespace and listener names;
//! - the endpoints each backend and mirror resolves to now, and whether each
//!   backend speaks h2c.
//!
//! Everything else `routes::compile` reads (route counters, in-flight
//! counters) is looked up by name and would come back the same. Sharing also
//! keeps a backend's outlier ejections and round-robin position.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshgate_crds::route::{self as api, RouteFilterType};

use crate::backends::Backend;
use crate::routes::{self, Route};

use super::Snapshot;

/// The previous snapshot's routes by name, when its gateway context matches.
pub struct Reuse<'a> {
    routes: HashMap<&'a str, &'a Arc<Route>>,
}

impl<'a> Reuse<'a> {
    pub fn new(previous: &'a Snapshot, namespace: &str, listener_names: &[String]) -> Reuse<'a> {
        let same_context = previous.namespace == namespace
            && previous
                .listeners
                .iter()
                .map(|l| &l.name)
                .eq(listener_names.iter());
        let routes = if same_context {
            previous
                .routes
                .iter()
                .map(|r| (r.name.as_str(), r))
                .collect()
        } else {
            HashMap::new()
        };
        Reuse { routes }
    }

    /// The previous compilation of `spec`, if it still holds.
    pub fn route(
        &self,
        id: usize,
        spec: &api::Route,
        cx: &routes::Context<'_>,
    ) -> Option<Arc<Route>> {
        // Hashed only when there is a route to compare with: `routes::compile`
        // hashes the routes it compiles itself.
        let old = self.routes.get(spec.name.as_str())?;
        if old.source != routes::fingerprint(spec) {
            return None;
        }
        // What each compiled backend was resolved from, in compile order:
        // `(namespace, name, port, h2 counts)`.
        let backends = spec
            .backend_refs
            .iter()
            .map(|b| (b.namespace.as_deref(), b.name.as_str(), b.port, true));
        let mirrors = spec
            .filters
            .iter()
            .filter(|f| f.kind == RouteFilterType::RequestMirror)
            .filter_map(|f| f.request_mirror.as_ref())
            .map(|m| {
                let b = &m.backend_ref;
                (b.namespace.as_deref(), b.name.as_str(), b.port, false)
            });
        let compiled = old
            .backends
            .iter()
            .chain(old.mirror.iter().flat_map(|m| m.backend.iter()));
        let mut wanted = backends.chain(mirrors);
        for backend in compiled {
            let (namespace, name, port, check_h2) = wanted.next()?;
            let namespace = namespace.unwrap_or(cx.namespace);
            let addrs = cx.services.resolve(namespace, name, port).ok()?;
            if !same_endpoints(backend, &addrs)
                || (check_h2 && backend.h2 != cx.services.is_h2(namespace, name, port))
            {
                return None;
            }
        }
        // As many compiled backends as references (a new one means a new compile).
        if wanted.next().is_some() {
            return None;
        }
        Some(if old.id == id {
            Arc::clone(old)
        } else {
            // Moved (a route added or removed before it): a copy with the new
            // position, sharing the counters and endpoints.
            let mut moved = Route::clone(old);
            moved.id = id;
            Arc::new(moved)
        })
    }
}

fn same_endpoints(backend: &Backend, addrs: &[SocketAddr]) -> bool {
    backend
        .endpoints
        .iter()
        .map(|e| e.addr)
        .eq(addrs.iter().copied())
}
