//! Cluster mode: the proxy watches the objects it serves through kube-runtime
//! reflectors and compiles them with the same code as standalone mode.
//!
//! Watched: the one ApiGateway (by name), the ApiPolicies of its namespace, and the
//! Secrets, Services and EndpointSlices of its namespace. In every other namespace
//! its backendRefs, mirror backendRefs, certificateRefs and the Secret references
//! of the ApiPolicies attached to it name, only what they name ([`Reads::Named`]):
//! each Secret and Service by a `metadata.name` field selector, and the
//! EndpointSlices of those Services by label. That is exactly what the operator's
//! Role there grants, and only when a ReferenceGrant permits it; a watch there that
//! is refused (403) counts as empty, so the rest of the gateway keeps serving.
//! Any change wakes the builder, which waits for the burst to settle
//! ([`DEBOUNCE`], at most [`MAX_DELAY`]; only [`LONE_SETTLE`] for a change after
//! a calm), assembles a [`Manifests`] value from the stores and hands it to
//! [`compile`]. When the API server goes away the reflectors retry with backoff
//! ([`WatchBackoff`], at most [`WATCH_RETRY_MAX`] apart) and the last good
//! snapshot keeps serving.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use meshgate_crds::references;
use meshgate_crds::{ApiGateway, ApiPolicy};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::snapshot::{compile_next, GatewayRef};
use crate::state::State;
use crate::{reload, Error};

/// Quiet time that ends a burst of changes.
pub const DEBOUNCE: Duration = Duration::from_millis(75);
/// Quiet time before applying a change that comes after [`CALM`] without any:
/// a lone edit (a `kubectl apply` of one object) is not held back for a burst
/// that is not coming. A second change within it makes it a burst ([`DEBOUNCE`]).
pub const LONE_SETTLE: Duration = Duration::from_millis(10);
/// How long without changes makes the next one a lone change.
pub const CALM: Duration = Duration::from_secs(1);
/// Longest a change waits for a burst to end.
pub const MAX_DELAY: Duration = Duration::from_millis(300);
/// First retry of a failed watch or list.
pub const WATCH_RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between retries while the API server is away. kube-runtime's
/// default (client-go's: 30 s plus up to 100% jitter) left the proxy on a stale
/// configuration for up to a minute after a 60 s API server outage; a few
/// cheap requests per proxy every 5 s bring it back within seconds.
pub const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// Retry delays of one reflector: doubling from [`WATCH_RETRY_MIN`] up to
/// [`WATCH_RETRY_MAX`], each 50-100% of its nominal value so that proxies
/// coming back together do not retry in step; reset by every event received.
#[derive(Debug, Default)]
pub struct WatchBackoff {
    failures: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let nominal = WATCH_RETRY_MIN
            .saturating_mul(1u32 << self.failures.min(16))
            .min(WATCH_RETRY_MAX);
        self.failures = self.failures.saturating_add(1);
        Some(nominal.mul_f64(0.5 + fastrand::f64() * 0.5))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

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

/// The annotation `kubectl apply` writes: a whole copy of the object as last
/// applied (for a Secret, its data in clear).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the API server and kubectl keep for their own bookkeeping
/// before an object enters a watch store: `managedFields` and the
/// last-applied annotation. Nothing here reads them, and on a large object
/// they are most of it (a 5,000-route ApiGateway lists every route's key in
/// `managedFields`); the stores would hold them for the process's life.
fn drop_bookkeeping<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// One reflector: its store, whether its first list is complete, whether the
/// API server refuses it, and its task.
struct Watched<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    synced: Arc<AtomicBool>,
    denied: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// Whether a watch error is the API server refusing access (RBAC).
fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    }
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
        let denied = Arc::new(AtomicBool::new(false));
        let stream = reflector::reflector(
            writer,
            watcher::watcher(api, config)
                .backoff(WatchBackoff::default())
                .modify(drop_bookkeeping),
        );
        let (flag, refused) = (synced.clone(), denied.clone());
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut failing = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(Event::InitDone) => {
                        flag.store(true, Ordering::Release);
                        refused.store(false, Ordering::Release);
                        changed.notify_one();
                    }
                    Ok(Event::Apply(_) | Event::Delete(_)) => changed.notify_one(),
                    Ok(Event::Init | Event::InitApply(_)) => {}
                    Err(e) => {
                        // A refusal is worth a rebuild: what was read before
                        // must no longer be used (see `NamespaceWatch`).
                        if is_forbidden(&e) && !refused.swap(true, Ordering::AcqRel) {
                            changed.notify_one();
                        }
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
            denied,
            task,
        }
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn denied(&self) -> bool {
        self.denied.load(Ordering::Acquire)
    }

    fn objects(&self) -> Vec<K> {
        self.store.state().iter().map(|o| (**o).clone()).collect()
    }
}

/// What the proxy reads in one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reads {
    /// The gateway's own namespace: every Secret, Service and EndpointSlice (the
    /// proxy's Role there allows it).
    All,
    /// Another namespace: only the Secrets and Services named there, and those
    /// Services' EndpointSlices; what the operator's Role there grants.
    Named {
        secrets: BTreeSet<String>,
        services: BTreeSet<String>,
    },
}

/// The watches of one namespace.
struct NamespaceWatch {
    reads: Reads,
    secrets: Vec<Watched<Secret>>,
    services: Vec<Watched<Service>>,
    slices: Option<Watched<EndpointSlice>>,
}

impl NamespaceWatch {
    fn spawn(client: &Client, ns: &str, reads: &Reads, changed: &Arc<Notify>) -> NamespaceWatch {
        fn watch<K>(
            client: &Client,
            ns: &str,
            config: watcher::Config,
            what: String,
            changed: &Arc<Notify>,
        ) -> Watched<K>
        where
            K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
                + Clone
                + DeserializeOwned
                + Debug
                + Send
                + Sync
                + 'static,
            K::DynamicType: Eq + Hash + Clone + Default,
        {
            Watched::spawn(
                Api::namespaced(client.clone(), ns),
                config,
                what,
                changed.clone(),
            )
        }
        let all = watcher::Config::default;
        match reads {
            Reads::All => NamespaceWatch {
                reads: reads.clone(),
                secrets: vec![watch(client, ns, all(), format!("secrets/{ns}"), changed)],
                services: vec![watch(client, ns, all(), format!("services/{ns}"), changed)],
                slices: Some(watch(
                    client,
                    ns,
                    all(),
                    format!("endpointslices/{ns}"),
                    changed,
                )),
            },
            Reads::Named { secrets, services } => {
                // RBAC matches `resourceNames` on list/watch only through a
                // metadata.name field selector: one watch per object.
                let named = |n: &String| all().fields(&format!("metadata.name={n}"));
                let slices = (!services.is_empty()).then(|| {
                    let names: Vec<&str> = services.iter().map(String::as_str).collect();
                    let selector = format!("kubernetes.io/service-name in ({})", names.join(","));
                    watch(
                        client,
                        ns,
                        all().labels(&selector),
                        format!("endpointslices/{ns} ({selector})"),
                        changed,
                    )
                });
                NamespaceWatch {
                    reads: reads.clone(),
                    secrets: secrets
                        .iter()
                        .map(|n| watch(client, ns, named(n), format!("secrets/{ns}/{n}"), changed))
                        .collect(),
                    services: services
                        .iter()
                        .map(|n| watch(client, ns, named(n), format!("services/{ns}/{n}"), changed))
                        .collect(),
                    slices,
                }
            }
        }
    }

    /// In another namespace a refused watch counts as done and empty: without a
    /// ReferenceGrant the operator grants nothing there, and the rest of the
    /// gateway must not wait for it; once access is revoked, what was read
    /// before is dropped at the next refusal.
    fn tolerates_denial(&self) -> bool {
        matches!(self.reads, Reads::Named { .. })
    }

    fn ready<K>(&self, w: &Watched<K>) -> bool
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Default,
    {
        w.synced() || (self.tolerates_denial() && w.denied())
    }

    fn usable<'a, K>(&self, w: &'a [Watched<K>]) -> impl Iterator<Item = K> + 'a
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Default,
    {
        let tolerate = self.tolerates_denial();
        w.iter()
            .filter(move |w| !(tolerate && w.denied()))
            .flat_map(|w| w.objects())
    }

    fn synced(&self) -> bool {
        self.secrets.iter().all(|w| self.ready(w))
            && self.services.iter().all(|w| self.ready(w))
            && self.slices.iter().all(|w| self.ready(w))
    }

    fn add_to(&self, m: &mut Manifests) {
        m.secrets.extend(self.usable(&self.secrets));
        m.services.extend(self.usable(&self.services));
        m.endpoint_slices
            .extend(self.usable(self.slices.as_slice()));
    }
}

/// What the proxy of `gateway` (in namespace `own`) reads in each namespace: all
/// of its own; elsewhere only what the gateway and the `policies` attached to it
/// name (the same references the operator grants access to).
pub fn reads(gateway: &ApiGateway, policies: &[ApiPolicy], own: &str) -> BTreeMap<String, Reads> {
    let refs = references::gateway_and_policy_references(gateway, policies);
    let mut out = BTreeMap::from([(own.to_string(), Reads::All)]);
    for (ns, name) in &refs.secrets {
        if let Some(Reads::Named { secrets, .. }) = entry(&mut out, ns) {
            secrets.insert(name.clone());
        }
    }
    for (ns, name) in &refs.services {
        if let Some(Reads::Named { services, .. }) = entry(&mut out, ns) {
            services.insert(name.clone());
        }
    }
    out
}

/// The entry of `ns`, a new `Named` one if absent.
fn entry<'a>(out: &'a mut BTreeMap<String, Reads>, ns: &str) -> Option<&'a mut Reads> {
    Some(out.entry(ns.to_string()).or_insert_with(|| Reads::Named {
        secrets: BTreeSet::new(),
        services: BTreeSet::new(),
    }))
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

/// Waits for the next change and for its burst to settle: [`LONE_SETTLE`] after
/// a change that follows a calm, [`DEBOUNCE`] after the last change of a burst,
/// at most [`MAX_DELAY`]. `last` is when the previous change was seen.
async fn settled(
    changed: &Notify,
    shutdown: &mut watch::Receiver<bool>,
    last: &mut Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    tokio::select! {
        _ = changed.notified() => {}
        _ = shutdown.changed() => return None,
    }
    let first = tokio::time::Instant::now();
    let deadline = first + MAX_DELAY;
    let calm = last.is_none_or(|t| first.duration_since(t) >= CALM);
    let mut quiet = if calm { LONE_SETTLE } else { DEBOUNCE };
    *last = Some(first);
    loop {
        tokio::select! {
            _ = changed.notified() => {
                let now = tokio::time::Instant::now();
                *last = Some(now);
                quiet = DEBOUNCE;
                if now >= deadline {
                    return Some(first);
                }
            }
            _ = tokio::time::sleep(quiet) => return Some(first),
            _ = tokio::time::sleep_until(deadline) => return Some(first),
            _ = shutdown.changed() => return None,
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
    namespaces.insert(
        own.clone(),
        NamespaceWatch::spawn(client, &own, &Reads::All, &changed),
    );
    let selector = source.gateway_ref();
    let mut last: Option<Vec<(String, String)>> = None;
    let mut waiting_logged = false;

    let mut last_change = None;
    while let Some(first_change) = settled(&changed, &mut shutdown, &mut last_change).await {
        let assembling = tokio::time::Instant::now();
        let gateway_objects = gateways.objects();
        let policy_objects = policies.objects();
        // Follow what the gateway and its policies refer to.
        let wanted = gateway_objects
            .first()
            .map(|gw| reads(gw, &policy_objects, &own))
            .unwrap_or_else(|| BTreeMap::from([(own.clone(), Reads::All)]));
        namespaces.retain(|ns, w| wanted.get(ns) == Some(&w.reads));
        for (ns, r) in &wanted {
            if !namespaces.contains_key(ns) {
                tracing::info!(namespace = %ns, reads = ?r, "watching Secrets, Services and EndpointSlices");
                namespaces.insert(ns.clone(), NamespaceWatch::spawn(client, ns, r, &changed));
            }
        }
        if !(gateways.synced() && policies.synced() && namespaces.values().all(|n| n.synced())) {
            continue;
        }
        let mut manifests = Manifests {
            gateways: gateway_objects,
            policies: policy_objects,
            ..Manifests::default()
        };
        for watch in namespaces.values() {
            watch.add_to(&mut manifests);
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
        let compiling = tokio::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let started = tokio::time::Instant::now();
            let result = compile_next(
                &compile_state.snapshot.load(),
                &manifests,
                Some(&compile_selector),
                version,
                &compile_state.metrics,
                &compile_state.policy,
            );
            (result, started.elapsed())
        })
        .await
        .unwrap_or_else(|e| {
            let failed = Err(Error::Config(format!("compile task failed: {e}")));
            (failed, Duration::ZERO)
        });
        // Compile, plus waiting for a blocking thread and dropping the manifests.
        let blocking_time = compiling.elapsed();
        let (result, compile_time) = result;
        last = Some(fp);
        match result {
            Ok(snapshot) => {
                if version > 1 {
                    state.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                }
                let applying = tokio::time::Instant::now();
                reload::apply(&state, snapshot);
                applied.send_replace(version);
                // Where a change's propagation time goes (proxy/bench/propagation_cluster.py).
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                tracing::debug!(
                    version,
                    debounce_ms = ms(assembling - first_change),
                    assemble_ms = ms(compiling - assembling),
                    compile_ms = ms(compile_time),
                    blocking_task_ms = ms(blocking_time),
                    apply_ms = ms(applying.elapsed()),
                    "reload timing"
                );
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

    /// When each call of [`settled`] returns, in ms after the start, for changes
    /// notified at `at` (ms after the start). Tokio's clock is paused: exact.
    async fn settle_times(at: &[u64]) -> Vec<u64> {
        let changed = Arc::new(Notify::new());
        let start = tokio::time::Instant::now();
        let notifier = {
            let (changed, at) = (changed.clone(), at.to_vec());
            tokio::spawn(async move {
                for ms in at {
                    tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
                    changed.notify_one();
                }
            })
        };
        let (_stop, mut shutdown) = watch::channel(false);
        let mut last = None;
        let mut out = Vec::new();
        while !notifier.is_finished() || out.is_empty() {
            let Ok(Some(_)) = tokio::time::timeout(
                Duration::from_secs(10),
                settled(&changed, &mut shutdown, &mut last),
            )
            .await
            else {
                break;
            };
            out.push(start.elapsed().as_millis() as u64);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn lone_changes_settle_fast_and_bursts_wait_for_quiet() {
        // A lone change; another 200 ms later (no calm yet: a burst's pace);
        // one after 2 s of calm; then a burst of three 5 ms apart.
        let times = settle_times(&[0, 200, 2275, 5000, 5005, 5010]).await;
        assert_eq!(times, vec![10, 275, 2285, 5085]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_of_changes_is_applied_every_max_delay() {
        // A change every 40 ms for 1.16 s: the first is lone; the rest never
        // fall quiet for DEBOUNCE, so each rebuild waits MAX_DELAY, until the end.
        let every_40_ms: Vec<u64> = (0..30).map(|i| i * 40).collect();
        let times = settle_times(&every_40_ms).await;
        assert_eq!(times, vec![10, 340, 660, 980, 1235]);
    }

    #[test]
    fn watch_stores_keep_no_managed_fields_and_no_last_applied_copy() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
        let mut secret = Secret::default();
        secret.metadata.name = Some("tls".into());
        secret.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:data": {".": {}}}))),
            ..Default::default()
        }]);
        secret.metadata.annotations = Some(
            [
                (
                    LAST_APPLIED.to_string(),
                    r#"{"data":{"tls.key":"..."}}"#.to_string(),
                ),
                ("team".to_string(), "edge".to_string()),
            ]
            .into(),
        );
        drop_bookkeeping(&mut secret);
        assert_eq!(secret.metadata.managed_fields, None);
        assert_eq!(
            secret.metadata.annotations,
            Some([("team".to_string(), "edge".to_string())].into())
        );
        assert_eq!(secret.metadata.name.as_deref(), Some("tls"));

        // The only annotation gone: no empty map left behind.
        let mut service = Service::default();
        service.metadata.annotations = Some([(LAST_APPLIED.to_string(), "{}".to_string())].into());
        drop_bookkeeping(&mut service);
        assert_eq!(service.metadata.annotations, None);
    }

    #[test]
    fn watch_backoff_doubles_to_the_cap_with_jitter_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| b.next().unwrap()).collect();
        let nominal = [500, 1000, 2000, 4000, 5000, 5000, 5000, 5000];
        for (d, n) in delays.iter().zip(nominal) {
            let n = Duration::from_millis(n);
            assert!(*d >= n / 2 && *d <= n, "{d:?} not within 50-100% of {n:?}");
        }
        b.reset();
        assert!(b.next().unwrap() <= WATCH_RETRY_MIN);
    }

    #[test]
    fn reads_name_what_is_referenced_in_other_namespaces() {
        let loaded = meshgate_crds::manifests::load_str(
            "t",
            r#"
apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {name: gw, namespace: edge}
spec:
  listeners:
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: c, namespace: certs}, {name: own}]}}
  routes:
  - name: a
    backendRefs: [{name: s, namespace: shop, port: 80}, {name: t, port: 80}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, namespace: shadow, port: 80}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: ApiPolicy
metadata: {name: keys, namespace: edge}
spec:
  targetRefs: [{group: meshgate.io, kind: ApiGateway, name: gw}]
  authentication:
    apiKey:
      credentialRefs: [{name: k, namespace: certs}]
      extractFrom: [{headers: [x-api-key]}]
"#,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let m = &loaded.manifests;
        let got = reads(&m.gateways[0], &m.policies, "edge");
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let named = |secrets: &[&str], services: &[&str]| Reads::Named {
            secrets: set(secrets),
            services: set(services),
        };
        assert_eq!(
            got,
            BTreeMap::from([
                ("certs".to_string(), named(&["c", "k"], &[])),
                ("edge".to_string(), Reads::All),
                ("shadow".to_string(), named(&[], &["m"])),
                ("shop".to_string(), named(&[], &["s"])),
            ])
        );
    }

    #[test]
    fn refusals_are_recognised() {
        let status =
            |code| Box::new(kube::core::Status::failure("no", "Forbidden").with_code(code));
        assert!(is_forbidden(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(403))
        )));
        assert!(is_forbidden(&watcher::Error::WatchError(status(403))));
        assert!(!is_forbidden(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(500))
        )));
        assert!(!is_forbidden(&watcher::Error::NoResourceVersion));
    }
}
