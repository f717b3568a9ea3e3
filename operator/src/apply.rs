//! *Apply*: server-side apply of the built objects under one field manager,
//! refusing to take over objects the operator did not create, and deleting
//! objects it created that are no longer wanted.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use meshgate_crds::ApiGateway;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::build::{foreign_selector, is_managed, managed_selector, Desired, ForeignAccess};
use crate::error::{Error, Result};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "meshgate-operator";

/// The outcome of applying one object.
#[derive(Debug)]
pub enum Applied<K> {
    /// Applied; the object as the API server returned it (with status).
    Applied(K),
    /// An object of that name exists without our managed-by label: left alone.
    Conflict(String),
}

trait Namespaced:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
{
}
impl<K> Namespaced for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
{
}

fn describe<K: Namespaced>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

async fn apply_one<K: Namespaced>(client: &Client, obj: &K) -> Result<Applied<K>> {
    let ns = obj
        .meta()
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    if let Some(existing) = api.get_metadata_opt(&name).await? {
        if !is_managed(&existing) {
            return Ok(Applied::Conflict(describe(obj)));
        }
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let out = api.patch(&name, &pp, &Patch::Apply(obj)).await?;
    Ok(Applied::Applied(out))
}

/// Deletes every object of kind `K` labelled as ours for `gateway` except `keep`.
async fn delete_unwanted<K: Namespaced>(
    client: &Client,
    ns: &str,
    gateway: &str,
    keep: Option<&str>,
) -> Result<()> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&managed_selector(gateway));
    for obj in api.list_metadata(&lp).await? {
        let name = obj.name_any();
        if Some(name.as_str()) != keep {
            tracing::info!(kind = %K::kind(&()), %ns, %name, "deleting object no longer wanted");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// What apply did, for status.
#[derive(Debug, Default)]
pub struct Outcome {
    pub deployment: Option<Deployment>,
    pub service: Option<Service>,
    /// Objects that exist without our label ("Kind ns/name").
    pub conflicts: Vec<String>,
}

/// Applies `desired` for the gateway `gateway` in `ns`, then removes the
/// optional objects (HPA, PDB) it no longer wants.
pub async fn apply_all(client: &Client, ns: &str, gateway: &str, d: &Desired) -> Result<Outcome> {
    let mut out = Outcome::default();
    macro_rules! apply {
        ($obj:expr) => {
            match apply_one(client, $obj).await? {
                Applied::Applied(o) => Some(o),
                Applied::Conflict(what) => {
                    out.conflicts.push(what);
                    None
                }
            }
        };
    }
    apply!(&d.service_account);
    apply!(&d.role);
    apply!(&d.role_binding);
    out.service = apply!(&d.service);
    out.deployment = apply!(&d.deployment);
    match &d.hpa {
        Some(h) => {
            apply!(h);
        }
        None => delete_unwanted::<HorizontalPodAutoscaler>(client, ns, gateway, None).await?,
    }
    match &d.pdb {
        Some(p) => {
            apply!(p);
        }
        None => delete_unwanted::<PodDisruptionBudget>(client, ns, gateway, None).await?,
    }
    Ok(out)
}

/// Reads the current Deployment and Service (for status when nothing is applied).
pub async fn observe(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<(Option<Deployment>, Option<Service>)> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    let s = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    Ok((d.filter(is_managed), s.filter(is_managed)))
}

/// Holds an ApiGateway that has objects in other namespaces until they are
/// deleted (owner references cannot cross namespaces, so garbage collection
/// would not find them).
pub const FINALIZER: &str = "meshgate.io/cleanup";

/// Where the operator may look for the objects it made in other namespaces:
/// everywhere, or only in the namespaces it watches (its RBAC covers no more).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespaces(Vec<String>),
}

/// Whether `gw` carries [`FINALIZER`].
pub fn has_finalizer(gw: &ApiGateway) -> bool {
    gw.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER)
}

/// A JSON patch that adds [`FINALIZER`] to `current`, refused by the API server
/// if the finalizers changed since they were read (no lost update).
pub fn add_finalizer_patch(current: Option<&[String]>) -> Value {
    match current {
        None | Some([]) => json!([
            // The API server stores no empty list: absent reads as null.
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]),
        Some(list) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ]),
    }
}

/// A JSON patch that removes [`FINALIZER`] from `current` (None if absent),
/// guarded the same way.
pub fn remove_finalizer_patch(current: &[String]) -> Option<Value> {
    let i = current.iter().position(|f| f == FINALIZER)?;
    Some(json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ]))
}

async fn patch_finalizers(client: &Client, gw: &ApiGateway, patch: Value) -> Result<()> {
    let ns = gw
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let patch =
        serde_json::from_value(patch).map_err(|e| Error::serialize("finalizer patch", e))?;
    let api: Api<ApiGateway> = Api::namespaced(client.clone(), &ns);
    match api
        .patch(
            &gw.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: nothing to hold.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Adds [`FINALIZER`] to `gw` (before anything is created in another namespace).
pub async fn add_finalizer(client: &Client, gw: &ApiGateway) -> Result<()> {
    if has_finalizer(gw) {
        return Ok(());
    }
    let patch = add_finalizer_patch(gw.metadata.finalizers.as_deref());
    patch_finalizers(client, gw, patch).await
}

/// Removes [`FINALIZER`] from `gw` (after its objects in other namespaces are gone).
pub async fn remove_finalizer(client: &Client, gw: &ApiGateway) -> Result<()> {
    match remove_finalizer_patch(gw.metadata.finalizers.as_deref().unwrap_or_default()) {
        Some(patch) => patch_finalizers(client, gw, patch).await,
        None => Ok(()),
    }
}

/// Deletes every `K` labelled as the gateway's in another namespace, except `keep`.
async fn delete_foreign<K: Namespaced>(
    client: &Client,
    scope: &Scope,
    selector: &str,
    keep: &[(String, String)],
) -> Result<()> {
    let lp = ListParams::default().labels(selector);
    let apis: Vec<Api<K>> = match scope {
        Scope::All => vec![Api::all(client.clone())],
        Scope::Namespaces(list) => list
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect(),
    };
    for api in apis {
        for obj in api.list_metadata(&lp).await? {
            let ns = obj.namespace().unwrap_or_default();
            let name = obj.name_any();
            if keep.iter().any(|(n, m)| *n == ns && *m == name) {
                continue;
            }
            tracing::info!(kind = %K::kind(&()), %ns, %name, "deleting access no longer wanted");
            match Api::<K>::namespaced(client.clone(), &ns)
                .delete(&name, &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Applies the Roles and RoleBindings of gateway `ns/gateway` in other
/// namespaces, then deletes those it made before that are no longer wanted.
/// Returns the objects left alone because someone else owns the name.
pub async fn apply_foreign(
    client: &Client,
    scope: &Scope,
    ns: &str,
    gateway: &str,
    desired: &[ForeignAccess],
) -> Result<Vec<String>> {
    let mut conflicts = Vec::new();
    let mut keep = Vec::new();
    for a in desired {
        // The binding only after its Role, and never to someone else's Role.
        match apply_one(client, &a.role).await? {
            Applied::Conflict(what) => conflicts.push(what),
            Applied::Applied(_) => match apply_one(client, &a.role_binding).await? {
                Applied::Conflict(what) => conflicts.push(what),
                Applied::Applied(_) => {}
            },
        }
        keep.push((a.role.namespace().unwrap_or_default(), a.role.name_any()));
    }
    let selector = foreign_selector(ns, gateway);
    delete_foreign::<RoleBinding>(client, scope, &selector, &keep).await?;
    delete_foreign::<Role>(client, scope, &selector, &keep).await?;
    Ok(conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizer_patches_are_guarded() {
        assert_eq!(
            add_finalizer_patch(None),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["meshgate.io/cleanup"]},
            ])
        );
        let theirs = vec!["example.com/keep".to_string()];
        assert_eq!(
            add_finalizer_patch(Some(&theirs)),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/keep"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": "meshgate.io/cleanup"},
            ])
        );
        let both = vec!["example.com/keep".to_string(), FINALIZER.to_string()];
        assert_eq!(
            remove_finalizer_patch(&both),
            Some(json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": "meshgate.io/cleanup"},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ]))
        );
        assert_eq!(remove_finalizer_patch(&theirs), None);
        // The patches parse as JSON patches.
        let _: kube::api::Patch<()> =
            Patch::Json(serde_json::from_value(add_finalizer_patch(Some(&theirs))).unwrap());
    }
}
