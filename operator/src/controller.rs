//! The reconcilers: ApiGateway (dereference → validate → build → apply →
//! status) and ApiPolicy (status only), wired into kube-runtime Controllers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{future, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::DynamicObject;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use meshgate_crds::references;
use meshgate_crds::{ApiGateway, ApiPolicy};
use serde_json::json;

use crate::apply::{self, FIELD_MANAGER};
use crate::build::{self, BuildOptions, IdentityMode, MANAGED_BY, MANAGED_BY_LABEL};
use crate::conditions;
use crate::dereference;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::policy;
use crate::status::{self, Observed, Programmed};
use crate::validate;

/// How often a healthy object is looked at again without any event.
const RESYNC: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Shared by the reconciles of one watch scope (all namespaces, or one).
pub struct Context {
    pub client: Client,
    pub build: BuildOptions,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Where objects made in other namespaces may be (for their cleanup).
    pub scope: apply::Scope,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    fn backoff(&self, key: String) -> Duration {
        let Ok(mut f) = self.failures.lock() else {
            return MAX_BACKOFF;
        };
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n).min(9)).min(MAX_BACKOFF)
    }

    fn succeeded(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }
}

fn key_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

async fn publish_events<K>(ctx: &Context, obj: &K, events: Vec<status::Transition>)
where
    K: Resource<DynamicType = ()>,
{
    let reference = obj.object_ref(&());
    for t in events {
        let ev = Event {
            type_: if t.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason,
            note: Some(t.note.chars().take(1024).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, "publishing an event failed");
        }
    }
}

/// Reconciles one ApiGateway.
#[tracing::instrument(name = "reconcile ApiGateway", skip_all, fields(gateway = %gw.name_any(), namespace = gw.namespace().unwrap_or_default(), generation = gw.metadata.generation.unwrap_or_default(), trace_id = tracing::field::Empty))]
pub async fn reconcile_gateway(gw: Arc<ApiGateway>, ctx: Arc<Context>) -> Result<Action> {
    crate::telemetry::record_trace_id();
    let started = Instant::now();
    let result = reconcile_gateway_inner(&gw, &ctx).await;
    ctx.metrics.reconciled("ApiGateway", started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&key_of(gw.as_ref()));
    }
    result
}

async fn reconcile_gateway_inner(gw: &ApiGateway, ctx: &Context) -> Result<Action> {
    let ns = gw
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = gw.name_any();
    if gw.metadata.deletion_timestamp.is_some() {
        // Owned objects go with it (ownerReferences + garbage collection); the
        // ones in other namespaces carry no owner reference and are deleted here.
        if apply::has_finalizer(gw) {
            apply::apply_foreign(&ctx.client, &ctx.scope, &ns, &name, &[]).await?;
            apply::remove_finalizer(&ctx.client, gw).await?;
            tracing::info!("access in other namespaces deleted; finalizer released");
        }
        return Ok(Action::await_change());
    }
    let mode = IdentityMode::of(gw, &ctx.build);

    // Dereference: the gateway's references and those of the policies attached
    // to it (the proxy reads their Secrets too).
    let policies: Vec<ApiPolicy> = Api::<ApiPolicy>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| references::targets(p, gw))
        .collect();
    let wanted = references::gateway_and_policy_references(gw, &policies);
    let refs = dereference::resolve(&ctx.client, &ns, wanted.secrets, wanted.services).await?;
    // Validate.
    let v = validate::validate(gw, &refs, mode);
    // Build + apply (only a valid spec is applied; running proxies are left as they are).
    let (programmed, deployment, service) = if v.accepted() {
        let desired = build::build(gw, &ctx.build)?;
        let foreign = build::foreign_access(
            &build::Ctx::new(gw, &ctx.build)?,
            &build::foreign_reads(gw, &policies, &refs),
        );
        // The finalizer first: an object in another namespace must never
        // outlive a gateway deleted while the operator was away.
        if !foreign.is_empty() {
            apply::add_finalizer(&ctx.client, gw).await?;
        }
        let mut out = apply::apply_all(&ctx.client, &ns, &name, &desired).await?;
        if !foreign.is_empty() || apply::has_finalizer(gw) {
            let conflicts =
                apply::apply_foreign(&ctx.client, &ctx.scope, &ns, &name, &foreign).await?;
            out.conflicts.extend(conflicts);
            if foreign.is_empty() {
                // Nothing left elsewhere: nothing to hold the gateway for.
                apply::remove_finalizer(&ctx.client, gw).await?;
            }
        }
        let programmed = if out.conflicts.is_empty() {
            Programmed::Applied
        } else {
            Programmed::Conflict(out.conflicts)
        };
        (programmed, out.deployment, out.service)
    } else {
        let (d, s) = apply::observe(&ctx.client, &ns, &build::object_name(&name)).await?;
        (Programmed::NotApplied, d, s)
    };
    // Status.
    let new = status::gateway_status(
        gw,
        &v,
        &programmed,
        &Observed {
            deployment: deployment.as_ref(),
            service: service.as_ref(),
        },
        &conditions::now(),
    );
    if let Some(st) = status::changed(gw.status.as_ref(), &new) {
        // What the cached object showed, for telling a real change from a write
        // made against a cache that had not seen the previous write yet.
        tracing::debug!(
            gateway = %name,
            resource_version = gw.metadata.resource_version.as_deref().unwrap_or_default(),
            old = ?gw.status,
            new = ?st,
            "writing ApiGateway status"
        );
        let patch = json!({
            "apiVersion": ApiGateway::api_version(&()),
            "kind": ApiGateway::kind(&()),
            "status": st,
        });
        Api::<ApiGateway>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        let old = gw.status.clone().unwrap_or_default();
        let events = status::transitions(&old.conditions, &st.conditions);
        tracing::info!(
            accepted = v.accepted(),
            programmed = matches!(programmed, Programmed::Applied),
            "status updated"
        );
        publish_events(ctx, gw, events).await;
    }
    Ok(Action::requeue(RESYNC))
}

/// Reconciles the status of one ApiPolicy.
#[tracing::instrument(name = "reconcile ApiPolicy", skip_all, fields(policy = %p.name_any(), namespace = p.namespace().unwrap_or_default(), generation = p.metadata.generation.unwrap_or_default(), trace_id = tracing::field::Empty))]
pub async fn reconcile_policy(p: Arc<ApiPolicy>, ctx: Arc<Context>) -> Result<Action> {
    crate::telemetry::record_trace_id();
    let started = Instant::now();
    let result = reconcile_policy_inner(&p, &ctx).await;
    ctx.metrics.reconciled("ApiPolicy", started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&key_of(p.as_ref()));
    }
    result
}

async fn reconcile_policy_inner(p: &ApiPolicy, ctx: &Context) -> Result<Action> {
    if p.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = p
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = p.name_any();
    // Read from the API, not the caches: the event that brought us here may
    // come from a watch the caches have not caught up with yet.
    let policies = Api::<ApiPolicy>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let gw_api = Api::<ApiGateway>::namespaced(ctx.client.clone(), &ns);
    let mut gateways = Vec::new();
    for target in policy::target_gateways(p) {
        if let Some(gw) = gw_api.get_opt(&target).await? {
            gateways.push(gw);
        }
    }
    let refs = dereference::resolve(
        &ctx.client,
        &ns,
        dereference::policy_references(p).secrets,
        Default::default(),
    )
    .await?;
    let new = policy::policy_status(p, &policies, &gateways, &refs, &conditions::now());
    if let Some(st) = status::changed(p.status.as_ref(), &new) {
        let patch = json!({
            "apiVersion": ApiPolicy::api_version(&()),
            "kind": ApiPolicy::kind(&()),
            "status": st,
        });
        Api::<ApiPolicy>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        // One event per newly Conflicted / TargetNotFound / Accepted ancestor.
        let old = p.status.clone().unwrap_or_default();
        let mut events = Vec::new();
        for a in &st.ancestors {
            let prev = old
                .ancestors
                .iter()
                .find(|o| o.ancestor_ref == a.ancestor_ref)
                .map(|o| o.conditions.clone())
                .unwrap_or_default();
            events.extend(status::transitions(&prev, &a.conditions));
        }
        publish_events(ctx, p, events).await;
    }
    Ok(Action::requeue(RESYNC))
}

fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let label = if K::kind(&()) == "ApiGateway" {
        "ApiGateway"
    } else {
        "ApiPolicy"
    };
    ctx.metrics.failed(label, err.metric_label());
    let delay = ctx.backoff(key_of(obj.as_ref()));
    tracing::warn!(
        object = %key_of(obj.as_ref()),
        error = %err,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = ()>,
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Gateways in `store` that reference Secret or Service `(ns, name)`.
fn gateways_referencing(
    store: &Store<ApiGateway>,
    ns: &str,
    name: &str,
    secret: bool,
) -> Vec<ObjectRef<ApiGateway>> {
    let key = (ns.to_string(), name.to_string());
    store
        .state()
        .iter()
        .filter(|gw| {
            let refs = dereference::gateway_references(gw);
            if secret {
                refs.secrets.contains(&key)
            } else {
                refs.services.contains(&key)
            }
        })
        .map(|gw| ObjectRef::from_obj(gw.as_ref()))
        .collect()
}

fn owner_gateway<K: Resource>(obj: &K) -> Option<ObjectRef<ApiGateway>> {
    let ns = obj.meta().namespace.clone()?;
    obj.owner_references()
        .iter()
        .find(|o| o.kind == "ApiGateway" && o.controller == Some(true))
        .map(|o| ObjectRef::new(&o.name).within(&ns))
}

/// The gateway of an object, by owner reference or, for the Roles and
/// RoleBindings in other namespaces (which cannot have one), by labels.
fn gateway_of<K: Resource>(obj: &K) -> Option<ObjectRef<ApiGateway>> {
    owner_gateway(obj).or_else(|| {
        let labels = obj.meta().labels.as_ref()?;
        let name = labels.get(build::GATEWAY_LABEL)?;
        let ns = labels.get(build::GATEWAY_NAMESPACE_LABEL)?;
        Some(ObjectRef::new(name).within(ns))
    })
}

/// Gateways whose references (their own or their policies') point into `ns`:
/// a ReferenceGrant there can change what they may use.
fn gateways_referencing_namespace(
    gateways: &Store<ApiGateway>,
    policies: &Store<ApiPolicy>,
    ns: &str,
) -> Vec<ObjectRef<ApiGateway>> {
    let policies: Vec<ApiPolicy> = policies.state().iter().map(|p| (**p).clone()).collect();
    gateways
        .state()
        .iter()
        .filter(|gw| {
            references::gateway_and_policy_references(gw, &policies)
                .namespaces()
                .contains(ns)
        })
        .map(|gw| ObjectRef::from_obj(gw.as_ref()))
        .collect()
}

/// Secrets as metadata only: no Secret data is transferred or kept in memory.
fn secret_metadata(client: &Client, ns: Option<&str>) -> Api<PartialObjectMeta<Secret>> {
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs both controllers for one watch scope until `stop` resolves. `all` is
/// every namespace the operator watches (all of them for [`apply::Scope::All`]):
/// ReferenceGrants there can concern this scope's gateways.
pub async fn run_scope(
    client: Client,
    ns: Option<String>,
    all: apply::Scope,
    build: BuildOptions,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let ns = ns.as_deref();
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));

    let gw_ctrl = Controller::new(api::<ApiGateway>(&client, ns), watcher::Config::default());
    let gw_store = gw_ctrl.store();
    let pol_ctrl = Controller::new(api::<ApiPolicy>(&client, ns), watcher::Config::default());
    let pol_store = pol_ctrl.store();

    let ctx = Arc::new(Context {
        client: client.clone(),
        build,
        recorder,
        metrics,
        scope: all.clone(),
        failures: Mutex::new(HashMap::new()),
    });

    let services_store = gw_store.clone();
    let secrets_store = gw_store.clone();
    let policy_targets_store = gw_store.clone();
    let mut gw_ctrl = gw_ctrl
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<ServiceAccount>(&client, ns), owned.clone())
        // Our Roles and RoleBindings: owned in the gateway's namespace, labelled in others.
        .watches(api::<Role>(&client, ns), owned.clone(), |r| gateway_of(&r))
        .watches(api::<RoleBinding>(&client, ns), owned.clone(), |r| {
            gateway_of(&r)
        })
        // Attached policies decide which Secrets in other namespaces the proxy reads.
        .watches(
            api::<ApiPolicy>(&client, ns),
            watcher::Config::default(),
            move |p| {
                policy_targets_store
                    .state()
                    .iter()
                    .filter(|gw| references::targets(&p, gw))
                    .map(|gw| ObjectRef::from_obj(gw.as_ref()))
                    .collect::<Vec<_>>()
            },
        );
    // ReferenceGrants live in the namespaces referenced, which may be outside
    // this scope: watch them wherever the operator may read them.
    let grant_resource = dereference::reference_grant_resource();
    let grant_apis: Vec<Api<DynamicObject>> = match &all {
        apply::Scope::All => vec![Api::all_with(client.clone(), &grant_resource)],
        apply::Scope::Namespaces(list) => list
            .iter()
            .map(|n| Api::namespaced_with(client.clone(), n, &grant_resource))
            .collect(),
    };
    for grants in grant_apis {
        let (gateways, policies) = (gw_store.clone(), pol_store.clone());
        gw_ctrl = gw_ctrl.watches_with(
            grants,
            grant_resource.clone(),
            watcher::Config::default(),
            move |g| {
                let ns = g.namespace().unwrap_or_default();
                gateways_referencing_namespace(&gateways, &policies, &ns)
            },
        );
    }
    let gateways = gw_ctrl
        .owns(api::<HorizontalPodAutoscaler>(&client, ns), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), owned.clone())
        // Our own Service (addresses) and backend Services (ResolvedRefs).
        .watches(
            api::<Service>(&client, ns),
            watcher::Config::default(),
            move |svc| {
                let ns = svc.namespace().unwrap_or_default();
                let mut refs = gateways_referencing(&services_store, &ns, &svc.name_any(), false);
                refs.extend(owner_gateway(&svc));
                refs
            },
        )
        .watches(
            secret_metadata(&client, ns),
            watcher::Config::default(),
            move |s| {
                let ns = s.namespace().unwrap_or_default();
                gateways_referencing(&secrets_store, &ns, &s.name_any(), true)
            },
        )
        .graceful_shutdown_on(stop.clone())
        .run(reconcile_gateway, error_policy::<ApiGateway>, ctx.clone())
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "gateway controller event");
            }
            future::ready(())
        });

    let policies_store = pol_store.clone();
    let policies_store2 = pol_store.clone();
    let policies_store3 = pol_store.clone();
    let policies = pol_ctrl
        .watches(
            api::<ApiGateway>(&client, ns),
            watcher::Config::default(),
            move |gw| {
                let ns = gw.namespace();
                let name = gw.name_any();
                policies_store
                    .state()
                    .iter()
                    .filter(|p| p.namespace() == ns && policy::target_gateways(p).contains(&name))
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            secret_metadata(&client, ns),
            watcher::Config::default(),
            move |s| {
                let key = (s.namespace().unwrap_or_default(), s.name_any());
                policies_store2
                    .state()
                    .iter()
                    .filter(|p| dereference::policy_references(p).secrets.contains(&key))
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        // A policy appearing, changing or going away can change which of the
        // policies sharing its targets wins.
        .watches(
            api::<ApiPolicy>(&client, ns),
            watcher::Config::default(),
            move |changed| {
                let ns = changed.namespace();
                let name = changed.name_any();
                let targets = policy::target_gateways(&changed);
                policies_store3
                    .state()
                    .iter()
                    .filter(|p| p.namespace() == ns && p.name_any() != name)
                    .filter(|p| !policy::target_gateways(p).is_disjoint(&targets))
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop)
        .run(reconcile_policy, error_policy::<ApiPolicy>, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "policy controller event");
            }
            future::ready(())
        });

    future::join(gateways, policies).await;
}
