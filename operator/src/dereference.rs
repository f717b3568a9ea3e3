//! *Dereference*: read everything an ApiGateway or ApiPolicy points at, so the
//! later steps are pure functions of what was read.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};
use serde::Deserialize;

use crate::error::Result;

pub use meshgate_crds::references::{gateway_references, policy_references, secret_key, Key};

/// The result of looking one object up.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup<T> {
    Found(T),
    Missing,
    /// The API refused (403, say, when the operator does not watch that namespace).
    Unreadable(String),
}

/// What an object references, resolved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Refs {
    pub secrets: BTreeMap<Key, Lookup<Secret>>,
    pub services: BTreeMap<Key, Lookup<Service>>,
    /// ReferenceGrants by namespace, for every namespace referenced from another.
    pub grants: BTreeMap<String, Lookup<Vec<ReferenceGrant>>>,
}

/// The parts of a Gateway API ReferenceGrant (`gateway.networking.k8s.io/v1beta1`) we use.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ReferenceGrantSpec {
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct GrantFrom {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct GrantTo {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// A ReferenceGrant living in `namespace`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReferenceGrant {
    pub namespace: String,
    pub spec: ReferenceGrantSpec,
}

/// Who refers: group, kind and namespace of the referring object.
#[derive(Clone, Copy, Debug)]
pub struct From<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

impl Refs {
    /// Whether a reference from `from` to `kind` `to` (core group) is allowed:
    /// always within a namespace, otherwise only with a matching ReferenceGrant
    /// in the target's namespace.
    pub fn permitted(&self, from: From, kind: &str, to: &Key) -> Result<(), String> {
        if from.namespace == to.0 {
            return Ok(());
        }
        match self.grants.get(&to.0) {
            Some(Lookup::Found(grants)) => {
                let ok = grants.iter().any(|g| {
                    g.spec.from.iter().any(|f| {
                        f.group == from.group
                            && f.kind == from.kind
                            && f.namespace == from.namespace
                    }) && g.spec.to.iter().any(|t| {
                        t.group.is_empty()
                            && t.kind == kind
                            && t.name.as_deref().is_none_or(|n| n == to.1)
                    })
                });
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "{kind} {}/{} is in another namespace and no ReferenceGrant in {:?} permits {} references from namespace {:?}",
                        to.0, to.1, to.0, from.kind, from.namespace
                    ))
                }
            }
            Some(Lookup::Unreadable(why)) => Err(format!(
                "{kind} {}/{}: cannot read ReferenceGrants in {:?}: {why}",
                to.0, to.1, to.0
            )),
            Some(Lookup::Missing) | None => Err(format!(
                "{kind} {}/{} is in another namespace and no ReferenceGrant in {:?} permits it",
                to.0, to.1, to.0
            )),
        }
    }
}

fn lookup_err<T>(e: kube::Error) -> Result<Lookup<T>> {
    match e {
        kube::Error::Api(s) if s.code == 403 => Ok(Lookup::Unreadable(s.message)),
        e => Err(e.into()),
    }
}

async fn get<K>(client: &Client, key: &Key) -> Result<Lookup<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &key.0);
    match api.get_opt(&key.1).await {
        Ok(Some(o)) => Ok(Lookup::Found(o)),
        Ok(None) => Ok(Lookup::Missing),
        Err(e) => lookup_err(e),
    }
}

/// The ApiResource of Gateway API ReferenceGrants.
pub fn reference_grant_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1beta1", "ReferenceGrant"),
        "referencegrants",
    )
}

/// ReferenceGrants in `ns`; none when the Gateway API CRDs are not installed.
async fn grants(client: &Client, ns: &str) -> Result<Lookup<Vec<ReferenceGrant>>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &reference_grant_resource());
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(Lookup::Found(
            list.items
                .into_iter()
                .filter_map(|o| {
                    let spec = o.data.get("spec")?.clone();
                    Some(ReferenceGrant {
                        namespace: ns.to_string(),
                        spec: serde_json::from_value(spec).ok()?,
                    })
                })
                .collect(),
        )),
        // No such resource: the CRD is absent, so no grants.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Lookup::Found(Vec::new())),
        Err(e) => lookup_err(e),
    }
}

/// Reads the given Secrets and Services, and the ReferenceGrants of every
/// namespace other than `home` they live in.
pub async fn resolve(
    client: &Client,
    home: &str,
    secrets: BTreeSet<Key>,
    services: BTreeSet<Key>,
) -> Result<Refs> {
    let mut refs = Refs::default();
    for key in secrets {
        let v = get::<Secret>(client, &key).await?;
        refs.secrets.insert(key, v);
    }
    for key in services {
        let v = get::<Service>(client, &key).await?;
        refs.services.insert(key, v);
    }
    let foreign: BTreeSet<String> = refs
        .secrets
        .keys()
        .chain(refs.services.keys())
        .map(|k| k.0.clone())
        .filter(|ns| ns != home)
        .collect();
    for ns in foreign {
        let g = grants(client, &ns).await?;
        refs.grants.insert(ns, g);
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_crds::ApiGateway;

    fn grant(ns: &str, from_ns: &str, kind: &str, name: Option<&str>) -> ReferenceGrant {
        ReferenceGrant {
            namespace: ns.into(),
            spec: ReferenceGrantSpec {
                from: vec![GrantFrom {
                    group: "meshgate.io".into(),
                    kind: "ApiGateway".into(),
                    namespace: from_ns.into(),
                }],
                to: vec![GrantTo {
                    group: String::new(),
                    kind: kind.into(),
                    name: name.map(Into::into),
                }],
            },
        }
    }

    const FROM: From = From {
        group: "meshgate.io",
        kind: "ApiGateway",
        namespace: "shop",
    };

    #[test]
    fn same_namespace_needs_no_grant() {
        let refs = Refs::default();
        assert!(refs
            .permitted(FROM, "Secret", &("shop".into(), "x".into()))
            .is_ok());
    }

    #[test]
    fn grants_are_matched_on_from_kind_and_name() {
        let mut refs = Refs::default();
        refs.grants.insert(
            "partners".into(),
            Lookup::Found(vec![grant("partners", "shop", "Secret", Some("cert"))]),
        );
        let key = |n: &str| ("partners".to_string(), n.to_string());
        assert!(refs.permitted(FROM, "Secret", &key("cert")).is_ok());
        assert!(refs.permitted(FROM, "Secret", &key("other")).is_err());
        assert!(refs.permitted(FROM, "Service", &key("cert")).is_err());
        let other_ns = From {
            namespace: "elsewhere",
            ..FROM
        };
        assert!(refs.permitted(other_ns, "Secret", &key("cert")).is_err());
    }

    #[test]
    fn references_default_to_the_gateway_namespace() {
        let gw: ApiGateway = serde_yaml_ng::from_str(
            r#"
apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {name: g, namespace: shop}
spec:
  listeners:
    - name: https
      port: 8443
      protocol: HTTPS
      tls: {certificateRefs: [{name: a}, {name: b, namespace: partners}]}
  routes:
    - name: r
      backendRefs: [{name: s, port: 80}, {name: t, namespace: legacy, port: 80}]
"#,
        )
        .unwrap();
        let refs = gateway_references(&gw);
        assert!(refs.secrets.contains(&("shop".into(), "a".into())));
        assert!(refs.secrets.contains(&("partners".into(), "b".into())));
        assert!(refs.services.contains(&("shop".into(), "s".into())));
        assert!(refs.services.contains(&("legacy".into(), "t".into())));
    }
}
