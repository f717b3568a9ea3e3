//! Cluster mode: the proxy watches the objects it serves through kube-runtime
//! reflectors and compiles them with the same code as standalone mode.
//!
//! Watched: the one ApiGateway (by name), the ApiPolicies of its namespace, and the
//! Secrets, Services and EndpointSlices of its namespace plus every namespace its
//! backendRefs, mirror backendRefs and certificateRefs name. Any change wakes the
//! builder, which waits for the burst to settle ([`DEBOUNCE`], at most
//! [`MAX_DELAY`]), assembles a [`Manifests`] value from the stores and hands it to
//! [`compile`]. When the API server goes away the reflectors retry with backoff and
//! the last good snapshot keeps serving.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use meshgate_crds::manifests::Manifests;
use meshgate_crds::{ApiGateway, ApiPolicy};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::snapshot::{compile, GatewayRef};
use crate::state::State;
use crate::{reload, Error};

/// Quiet time that ends a burst of changes.
pub const DEBOUNCE: Duration = Duration::from_millis(75);
/// Longest a change waits for a burst to end.
pub const MAX_DELAY: Duration = Duration::from_millis(300);

/// Where cluster mode reads from.
#[derive(Clone)]
pub struct ClusterSource {
    pub client: Client,
    /// Namespace and name of the ApiGateway.
    pub namespace: String,
    pub name: String,
    /// Endpoint address translation, for tests and local development: the API
    /// server refuses loopback addresses in EndpointSlices, so a test writes a
    /// stand-in address and maps it to 127.0.0.1. When set, endpoints whose address
    /// is not in the map are dropped, so nothing else is ever dialled.
    pub address_map: Option<HashMap<IpAddr, IpAddr>>,
}

impl Debug for ClusterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSource({}/{})", self.namespace, self.name)
    }
}

impl ClusterSource {
    /// The ApiGateway `gateway` (its namespace defaulting to the client's).
    pub fn new(client: Client, gateway: &GatewayRef) -> ClusterSource {
        let namespace = gateway
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        ClusterSource {
            client,
            namespace,
            name: gateway.name.clone(),
            address_map: None,
        }
    }

    /// A client from `KUBECONFIG` or the in-cluster service account.
    pub async fn connect(gateway: &GatewayRef) -> Result<ClusterSource, Error> {
        let client = Client::try_default()
            .await
            .map_err(|e| Error::Kube(format!("connecting to the API server: {e}")))?;
        Ok(ClusterSource::new(client, gateway))
    }

    pub fn gateway_ref(&self) -> GatewayRef {
        GatewayRef {
            namespace: Some(self.namespace.clone()),
            name: self.name.clone(),
        }
    }
}

/// One reflector: its store, whether its first list is complete, and its task.
struct Watched<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    synced: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl<K: Resource + 'static> Drop for Watched<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K> Watched<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    fn spawn(api: Api<K>, config: watcher::Config, what: String, changed: Arc<Notify>) -> Self {
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff());
        let flag = synced.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut failing = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(Event::InitDone) => {
                        flag.store(true, Ordering::Release);
                        changed.notify_one();
                    }
                    Ok(Event::Apply(_) | Event::Delete(_)) => changed.notify_one(),
                    Ok(Event::Init | Event::InitApply(_)) => {}
                    Err(e) => {
                        // Logged once per outage; the watcher retries with backoff.
                        if !failing {
                            tracing::warn!(watch = %what, error = %e, "watch failed; retrying, still serving the last configuration");
                        }
                        failing = true;
                        continue;
                    }
                }
                if failing {
                    tracing::info!(watch = %what, "watch recovered");
                    failing = false;
                }
            }
        });
        Watched {
            store,
            synced,
            task,
        }
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn objects(&self) -> Vec<K> {
        self.store.state().iter().map(|o| (**o).clone()).collect()
    }
}

/// The Secrets, Services and EndpointSlices of one namespace.
struct NamespaceWatch {
    secrets: Watched<Secret>,
    services: Watched<Service>,
    slices: Watched<EndpointSlice>,
}

impl NamespaceWatch {
    fn spawn(client: &Client, ns: &str, changed: &Arc<Notify>) -> NamespaceWatch {
        let config = watcher::Config::default;
        NamespaceWatch {
            secrets: Watched::spawn(
                Api::namespaced(client.clone(), ns),
                config(),
                format!("secrets/{ns}"),
                changed.clone(),
            ),
            services: Watched::spawn(
                Api::namespaced(client.clone(), ns),
                config(),
                format!("services/{ns}"),
                changed.clone(),
            ),
            slices: Watched::spawn(
                Api::namespaced(client.clone(), ns),
                config(),
                format!("endpointslices/{ns}"),
                changed.clone(),
            ),
        }
    }

    fn synced(&self) -> bool {
        self.secrets.synced() && self.services.synced() && self.slices.synced()
    }
}

/// The namespaces whose Secrets, Services and EndpointSlices `gateway` needs.
pub fn referenced_namespaces(gateway: &ApiGateway, own: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::from([own.to_string()]);
    let spec = &gateway.spec;
    for l in &spec.listeners {
        for r in l.tls.iter().flat_map(|t| &t.certificate_refs) {
            out.extend(r.namespace.clone());
        }
    }
    for r in &spec.routes {
        for b in &r.backend_refs {
            out.extend(b.namespace.clone());
        }
        for f in &r.filters {
            if let Some(m) = &f.request_mirror {
                out.extend(m.backend_ref.namespace.clone());
            }
        }
    }
    out
}

/// Identity of every object version, to skip rebuilding an unchanged world (e.g.
/// after a watch restarts and re-lists).
fn fingerprint(m: &Manifests) -> Vec<(String, String)> {
    fn id<K: Resource>(o: &K) -> (String, String) {
        let meta = o.meta();
        (
            meta.uid.clone().unwrap_or_default(),
            meta.resource_version.clone().unwrap_or_default(),
        )
    }
    let mut all: Vec<_> = m
        .gateways
        .iter()
        .map(id)
        .chain(m.policies.iter().map(id))
        .chain(m.secrets.iter().map(id))
        .chain(m.services.iter().map(id))
        .chain(m.endpoint_slices.iter().map(id))
        .collect();
    all.sort();
    all
}

/// Applies [`ClusterSource::address_map`] to every EndpointSlice.
fn translate_addresses(slices: &mut [EndpointSlice], map: &HashMap<IpAddr, IpAddr>) {
    for slice in slices {
        for endpoint in &mut slice.endpoints {
            endpoint.addresses = endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .filter_map(|ip| map.get(&ip))
                .map(ToString::to_string)
                .collect();
        }
        slice.endpoints.retain(|e| !e.addresses.is_empty());
    }
}

/// Waits for the next change and for its burst to settle.
async fn settled(changed: &Notify, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = changed.notified() => {}
        _ = shutdown.changed() => return false,
    }
    let deadline = tokio::time::Instant::now() + MAX_DELAY;
    loop {
        tokio::select! {
            _ = changed.notified() => {
                if tokio::time::Instant::now() >= deadline {
                    return true;
                }
            }
            _ = tokio::time::sleep(DEBOUNCE) => return true,
            _ = tokio::time::sleep_until(deadline) => return true,
            _ = shutdown.changed() => return false,
        }
    }
}

/// Watches the cluster and publishes snapshots into `state` until `shutdown`
/// changes. `applied` receives the version of every snapshot published.
pub async fn run(
    source: ClusterSource,
    state: Arc<State>,
    applied: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let changed = Arc::new(Notify::new());
    let client = &source.client;
    let own = source.namespace.clone();
    let gateways = Watched::<ApiGateway>::spawn(
        Api::namespaced(client.clone(), &own),
        watcher::Config::default().fields(&format!("metadata.name={}", source.name)),
        format!("apigateways/{own}/{}", source.name),
        changed.clone(),
    );
    let policies = Watched::<ApiPolicy>::spawn(
        Api::namespaced(client.clone(), &own),
        watcher::Config::default(),
        format!("apipolicies/{own}"),
        changed.clone(),
    );
    let mut namespaces: HashMap<String, NamespaceWatch> = HashMap::new();
    namespaces.insert(own.clone(), NamespaceWatch::spawn(client, &own, &changed));
    let selector = source.gateway_ref();
    let mut last: Option<Vec<(String, String)>> = None;
    let mut waiting_logged = false;

    while settled(&changed, &mut shutdown).await {
        let gateway_objects = gateways.objects();
        // Follow the namespaces the gateway refers to.
        let wanted = gateway_objects
            .first()
            .map(|gw| referenced_namespaces(gw, &own))
            .unwrap_or_else(|| BTreeSet::from([own.clone()]));
        namespaces.retain(|ns, _| wanted.contains(ns));
        for ns in &wanted {
            if !namespaces.contains_key(ns) {
                tracing::info!(namespace = %ns, "watching Secrets, Services and EndpointSlices");
                namespaces.insert(ns.clone(), NamespaceWatch::spawn(client, ns, &changed));
            }
        }
        if !(gateways.synced() && policies.synced() && namespaces.values().all(|n| n.synced())) {
            continue;
        }
        let mut manifests = Manifests {
            gateways: gateway_objects,
            policies: policies.objects(),
            ..Manifests::default()
        };
        for watch in namespaces.values() {
            manifests.secrets.extend(watch.secrets.objects());
            manifests.services.extend(watch.services.objects());
            manifests.endpoint_slices.extend(watch.slices.objects());
        }
        if let Some(map) = &source.address_map {
            translate_addresses(&mut manifests.endpoint_slices, map);
        }
        let fp = fingerprint(&manifests);
        if last.as_ref() == Some(&fp) {
            continue;
        }
        if manifests.gateways.is_empty() {
            if !waiting_logged {
                tracing::warn!(gateway = %format!("{own}/{}", source.name), "ApiGateway not found; waiting for it");
                waiting_logged = true;
            }
            last = Some(fp);
            continue;
        }
        waiting_logged = false;
        let version = state.snapshot.load().version + 1;
        let (compile_state, compile_selector) = (state.clone(), selector.clone());
        let result = tokio::task::spawn_blocking(move || {
            compile(
                &manifests,
                Some(&compile_selector),
                version,
                &compile_state.metrics,
                &compile_state.policy,
            )
        })
        .await
        .unwrap_or_else(|e| Err(Error::Config(format!("compile task failed: {e}"))));
        last = Some(fp);
        match result {
            Ok(snapshot) => {
                if version > 1 {
                    state.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                }
                reload::apply(&state, snapshot);
                applied.send_replace(version);
            }
            Err(e) => {
                state.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    error = %e,
                    keeping_version = state.snapshot.load().version,
                    "configuration change rejected; still serving the last good configuration"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_namespaces_follow_cross_namespace_refs() {
        let loaded = meshgate_crds::manifests::load_str(
            "t",
            r#"
apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {name: gw, namespace: edge}
spec:
  listeners:
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: c, namespace: certs}]}}
  routes:
  - name: a
    backendRefs: [{name: s, namespace: shop, port: 80}, {name: t, port: 80}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, namespace: shadow, port: 80}}}]
"#,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let ns = referenced_namespaces(&loaded.manifests.gateways[0], "edge");
        let ns: Vec<&str> = ns.iter().map(String::as_str).collect();
        assert_eq!(ns, ["certs", "edge", "shadow", "shop"]);
    }
}
