//! *Dereference*: read everything an ApiGateway or ApiPolicy points at, so the
//! later steps are pure functions of what was read.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};
use meshgate_crds::{ApiGateway, ApiPolicy, SecretObjectReference};
use serde::Deserialize;

use crate::error::Result;

/// Namespace + name.
pub type Key = (String, String);

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

/// `(namespace, name)` of a Secret reference, defaulting to `ns`.
pub fn secret_key(r: &SecretObjectReference, ns: &str) -> Key {
    (
        r.namespace.clone().unwrap_or_else(|| ns.to_string()),
        r.name.clone(),
    )
}

/// The Secrets and Services an ApiGateway references, by key.
pub fn gateway_references(gw: &ApiGateway) -> (BTreeSet<Key>, BTreeSet<Key>) {
    let ns = gw.metadata.namespace.clone().unwrap_or_default();
    let mut secrets = BTreeSet::new();
    let mut services = BTreeSet::new();
    for l in &gw.spec.listeners {
        for c in l.tls.iter().flat_map(|t| &t.certificate_refs) {
            secrets.insert(secret_key(c, &ns));
        }
    }
    for r in &gw.spec.routes {
        for b in &r.backend_refs {
            services.insert((
                b.namespace.clone().unwrap_or_else(|| ns.clone()),
                b.name.clone(),
            ));
        }
        for f in &r.filters {
            if let Some(m) = &f.request_mirror {
                let b = &m.backend_ref;
                services.insert((
                    b.namespace.clone().unwrap_or_else(|| ns.clone()),
                    b.name.clone(),
                ));
            }
        }
    }
    (secrets, services)
}

/// The Secrets an ApiPolicy references (API key credentials, local JWKS).
pub fn policy_references(p: &ApiPolicy) -> BTreeSet<Key> {
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let mut secrets = BTreeSet::new();
    if let Some(a) = &p.spec.authentication {
        if let Some(k) = &a.api_key {
            for c in &k.credential_refs {
                secrets.insert(secret_key(c, &ns));
            }
        }
        if let Some(j) = &a.jwt {
            for prov in &j.providers {
                if let Some(v) = prov.local_jwks.as_ref().and_then(|l| l.value_ref.as_ref()) {
                    secrets.insert(secret_key(v, &ns));
                }
            }
        }
    }
    secrets
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
        let (secrets, services) = gateway_references(&gw);
        assert!(secrets.contains(&("shop".into(), "a".into())));
        assert!(secrets.contains(&("partners".into(), "b".into())));
        assert!(services.contains(&("shop".into(), "s".into())));
        assert!(services.contains(&("legacy".into(), "t".into())));
    }
}
