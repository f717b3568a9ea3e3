//! Mesh settings of a snapshot: for every upstream endpoint of an Istio-mode
//! gateway, the identities its pods must present, the SNI to send, and whether
//! it is reached through HBONE (ambient) or straight to its sidecar.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use meshgate_crds::gateway::{DataplaneMode, Mesh, MeshMode};
use meshgate_mesh::{outbound_sni, ExpectedIdentity, SpiffeId};
use rustls::ClientConfig;
use serde_json::{json, Value};

use crate::backends::Backend;
use crate::routes::Route;

/// The trust domain when the ApiGateway names none.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// How to reach one upstream endpoint in the mesh.
#[derive(Debug)]
pub struct MeshTarget {
    /// `namespace/name:port` of the Service.
    pub service: String,
    pub expected: ExpectedIdentity,
    /// Envoy-style SNI for the sidecar.
    pub sni: String,
    /// Reach the pod through ztunnel's HBONE port.
    pub hbone: bool,
    /// Client configs, made on first use by the connector (per ALPN).
    pub(crate) configs: [OnceLock<Arc<ClientConfig>>; 3],
}

/// Mesh targets by endpoint address.
pub type MeshTargets = HashMap<SocketAddr, Arc<MeshTarget>>;

/// The mesh part of a snapshot.
#[derive(Debug, Default)]
pub struct MeshPlan {
    pub trust_domain: String,
    pub targets: Arc<MeshTargets>,
}

impl MeshPlan {
    /// What `/config` shows.
    pub fn summary(&self) -> Value {
        let mut services: Vec<(&str, String, bool)> = self
            .targets
            .values()
            .map(|t| (t.service.as_str(), t.expected.to_string(), t.hbone))
            .collect();
        services.sort();
        services.dedup();
        json!({
            "mode": "Istio",
            "trustDomain": self.trust_domain,
            "backends": services.iter().map(|(s, e, h)| json!({
                "service": s,
                "expected": e,
                "dataplaneMode": if *h { "Ambient" } else { "Sidecar" },
            })).collect::<Vec<_>>(),
        })
    }
}

/// `namespace/name:port` back into its parts.
fn service_of(backend: &Backend) -> Option<(&str, &str, u16)> {
    let (ns_name, port) = backend.name.rsplit_once(':')?;
    let (ns, name) = ns_name.split_once('/')?;
    Some((ns, name, port.parse().ok()?))
}

/// The mesh plan of a gateway in namespace `gateway_ns`; `None` for mode None
/// or no mesh section. Problems are returned as messages (the backend then
/// accepts no identity, so requests to it are refused rather than trusted).
pub fn compile(
    mesh: Option<&Mesh>,
    gateway_ns: &str,
    routes: &[Arc<Route>],
) -> (Option<MeshPlan>, Vec<String>) {
    let Some(mesh) = mesh.filter(|m| m.mode == MeshMode::Istio) else {
        return (None, Vec::new());
    };
    let trust_domain = mesh
        .trust_domain
        .clone()
        .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string());
    let mut errors = Vec::new();
    let mut targets = MeshTargets::new();
    let backends = routes.iter().flat_map(|r| {
        r.backends
            .iter()
            .chain(r.mirror.iter().flat_map(|m| m.backend.iter()))
    });
    for backend in backends {
        // Routes share backends (5,000 routes to one Service are 5,000 backends
        // with the same endpoints): the first one decides, as `or_insert` below would.
        if !backend.endpoints.is_empty()
            && backend
                .endpoints
                .iter()
                .all(|e| targets.contains_key(&e.addr))
        {
            continue;
        }
        let Some((ns, name, port)) = service_of(backend) else {
            continue;
        };
        let declared = mesh
            .backends
            .iter()
            .find(|b| b.name == name && b.namespace.as_deref().unwrap_or(gateway_ns) == ns);
        let accounts = declared
            .map(|b| b.service_accounts.as_slice())
            .unwrap_or(&[]);
        let expected = if accounts.is_empty() {
            ExpectedIdentity::Namespace {
                trust_domain: trust_domain.clone(),
                namespace: ns.to_string(),
            }
        } else {
            let mut ids = Vec::new();
            for sa in accounts {
                match SpiffeId::new(&trust_domain, ns, sa) {
                    Ok(id) => ids.push(id),
                    Err(e) => errors.push(format!("mesh backend {ns}/{name}: {e}")),
                }
            }
            ExpectedIdentity::Exact(ids)
        };
        let hbone = declared.and_then(|b| b.dataplane_mode) == Some(DataplaneMode::Ambient);
        let target = Arc::new(MeshTarget {
            service: backend.name.clone(),
            expected,
            sni: outbound_sni(port, name, ns),
            hbone,
            configs: Default::default(),
        });
        for endpoint in &backend.endpoints {
            targets
                .entry(endpoint.addr)
                .or_insert_with(|| target.clone());
        }
    }
    (
        Some(MeshPlan {
            trust_domain,
            targets: Arc::new(targets),
        }),
        errors,
    )
}
