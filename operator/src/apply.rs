//! *Apply*: server-side apply of the built objects under one field manager,
//! refusing to take over objects the operator did not create, and deleting
//! objects it created that are no longer wanted.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::build::{is_managed, managed_selector, Desired};
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
