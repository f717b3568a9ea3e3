//! Manifests shared by the benchmarks: one ApiGateway with an HTTP listener and
//! `n` PathPrefix routes `/r0/` … `/r{n-1}/` to one Service, as in scenario 6 of
//! docs/performance.md, and the compiled snapshot of them.

// Each bench target compiles this module and uses only part of it.
#![allow(dead_code)]

use meshgate_crds::manifests::{load_str, Manifests};
use meshgate_proxy::metrics::Metrics;
use meshgate_proxy::policy::PolicyRuntime;
use meshgate_proxy::snapshot::{compile, Snapshot};

/// The listener every route attaches to.
pub const LISTENER: &str = "http";

/// YAML text of the gateway (`n` routes), its Service and EndpointSlice.
pub fn manifests_yaml(n: usize) -> String {
    let mut out = String::with_capacity(120 * n + 1024);
    out.push_str(
        "apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {name: bench, namespace: bench}
spec:
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
  routes:
",
    );
    for i in 0..n {
        out.push_str(&format!(
            "  - name: r{i}\n    matches: [{{path: {{type: PathPrefix, value: /r{i}/}}}}]\n    \
             backendRefs: [{{name: upstream, port: 80}}]\n"
        ));
    }
    out.push_str(
        "---
apiVersion: v1
kind: Service
metadata: {name: upstream, namespace: bench}
spec: {ports: [{name: http, port: 80, targetPort: 9000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: upstream-1, namespace: bench, labels: {kubernetes.io/service-name: upstream}}
addressType: IPv4
ports: [{name: http, port: 9000}]
endpoints: [{addresses: [\"127.0.0.1\"], conditions: {ready: true}}]
",
    );
    out
}

/// The parsed manifests of [`manifests_yaml`].
pub fn manifests(n: usize) -> Manifests {
    parse(&manifests_yaml(n))
}

/// Parses manifests text, panicking on any document error.
pub fn parse(text: &str) -> Manifests {
    let loaded = load_str("bench", text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.manifests
}

/// What a compile needs besides the manifests (a running proxy keeps these in `State`).
pub struct Runtime {
    pub metrics: Metrics,
    pub policy: PolicyRuntime,
}

impl Runtime {
    pub fn new() -> Runtime {
        meshgate_proxy::install_crypto_provider();
        Runtime {
            metrics: Metrics::default(),
            policy: PolicyRuntime::new(rustls::RootCertStore::empty()),
        }
    }

    /// Compiles `manifests` exactly as a reload does; panics if a route was dropped.
    pub fn compile(&self, manifests: &Manifests) -> Snapshot {
        let snapshot = compile(manifests, None, 1, &self.metrics, &self.policy).expect("compile");
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        snapshot
    }
}
