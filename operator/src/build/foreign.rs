//! Read access for the proxy in the *other* namespaces its gateway (and the
//! ApiPolicies attached to it) reference, where a ReferenceGrant permits the
//! reference: one Role + RoleBinding per namespace, granting the proxy's
//! ServiceAccount exactly what it watches there (see `meshgate_proxy::cluster`):
//!
//! - the referenced Secrets, by name (`resourceNames`; the proxy watches each
//!   with a `metadata.name` field selector, which RBAC matches against them),
//! - the referenced Services, by name, likewise,
//! - EndpointSlices: list/watch in the namespace. Slice names are generated, so
//!   `resourceNames` cannot name them; the proxy selects them by the
//!   `kubernetes.io/service-name` label, which RBAC cannot restrict.
//!
//! No `get` (the proxy only lists and watches), nothing writable.
//!
//! An owner reference cannot cross namespaces, so these objects are found by
//! their labels ([`foreign_selector`]) for cleanup instead of being garbage
//! collected with the gateway.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshgate_crds::references::{gateway_references, policy_references, targets};
use meshgate_crds::{ApiGateway, ApiPolicy};

use super::{Ctx, GATEWAY_LABEL, MANAGED_BY, MANAGED_BY_LABEL};
use crate::dereference::{From, Refs};
use crate::validate::FROM_GATEWAY;

/// Names the namespace of the ApiGateway an object in another namespace serves.
pub const GATEWAY_NAMESPACE_LABEL: &str = "meshgate.io/gateway-namespace";

/// What the proxy reads in one other namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForeignReads {
    pub secrets: BTreeSet<String>,
    pub services: BTreeSet<String>,
}

/// The Role and RoleBinding in one other namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct ForeignAccess {
    pub role: Role,
    pub role_binding: RoleBinding,
}

/// Per other namespace, the references of `gw` and of the `policies` that
/// target it that a ReferenceGrant permits. References that are not permitted
/// get no access: the proxy's watch there is refused and it serves without them.
pub fn foreign_reads(
    gw: &ApiGateway,
    policies: &[ApiPolicy],
    refs: &Refs,
) -> BTreeMap<String, ForeignReads> {
    let ns = gw.metadata.namespace.clone().unwrap_or_default();
    let mut out: BTreeMap<String, ForeignReads> = BTreeMap::new();
    let mut add = |kind: &str, from: From, keys: &BTreeSet<(String, String)>| {
        for key in keys.iter().filter(|k| k.0 != ns) {
            if refs.permitted(from, kind, key).is_ok() {
                let reads = out.entry(key.0.clone()).or_default();
                match kind {
                    "Secret" => reads.secrets.insert(key.1.clone()),
                    _ => reads.services.insert(key.1.clone()),
                };
            }
        }
    };
    let gateway_from = From {
        group: meshgate_crds::GROUP,
        kind: FROM_GATEWAY,
        namespace: &ns,
    };
    let own = gateway_references(gw);
    add("Secret", gateway_from, &own.secrets);
    add("Service", gateway_from, &own.services);
    let policy_from = From {
        kind: "ApiPolicy",
        ..gateway_from
    };
    for p in policies.iter().filter(|p| targets(p, gw)) {
        add("Secret", policy_from, &policy_references(p).secrets);
    }
    out
}

/// `<gateway>-meshgate.<gateway namespace>`: unique per gateway in the other
/// namespace (neither part can contain a dot).
pub fn foreign_name(gateway_namespace: &str, gateway: &str) -> String {
    format!("{}.{gateway_namespace}", super::object_name(gateway))
}

/// The label selector that finds the objects of one gateway in other namespaces.
pub fn foreign_selector(gateway_namespace: &str, gateway: &str) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY},{GATEWAY_LABEL}={gateway},{GATEWAY_NAMESPACE_LABEL}={gateway_namespace}"
    )
}

fn rule(group: &str, resource: &str, names: Option<&BTreeSet<String>>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        resource_names: names.map(|n| n.iter().cloned().collect()),
        verbs: vec!["list".into(), "watch".into()],
        ..PolicyRule::default()
    }
}

/// The Role + RoleBinding of every namespace in `reads`, in namespace order.
pub fn foreign_access(ctx: &Ctx, reads: &BTreeMap<String, ForeignReads>) -> Vec<ForeignAccess> {
    let name = foreign_name(&ctx.namespace, &ctx.name);
    let mut labels = ctx.labels();
    labels.insert(GATEWAY_NAMESPACE_LABEL.into(), ctx.namespace.clone());
    reads
        .iter()
        .filter(|(_, r)| !r.secrets.is_empty() || !r.services.is_empty())
        .map(|(ns, r)| {
            let meta = ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            };
            let mut rules = Vec::new();
            if !r.secrets.is_empty() {
                rules.push(rule("", "secrets", Some(&r.secrets)));
            }
            if !r.services.is_empty() {
                rules.push(rule("", "services", Some(&r.services)));
                rules.push(rule("discovery.k8s.io", "endpointslices", None));
            }
            ForeignAccess {
                role: Role {
                    metadata: meta.clone(),
                    rules: Some(rules),
                },
                role_binding: RoleBinding {
                    metadata: meta,
                    role_ref: RoleRef {
                        api_group: "rbac.authorization.k8s.io".into(),
                        kind: "Role".into(),
                        name: name.clone(),
                    },
                    subjects: Some(vec![Subject {
                        kind: "ServiceAccount".into(),
                        name: ctx.object_name.clone(),
                        namespace: Some(ctx.namespace.clone()),
                        ..Subject::default()
                    }]),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::BuildOptions;
    use crate::dereference::{GrantFrom, GrantTo, Lookup, ReferenceGrant, ReferenceGrantSpec};

    fn load(yaml: &str) -> (ApiGateway, Vec<ApiPolicy>) {
        let loaded = meshgate_crds::manifests::load_str("t", yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let mut gw = loaded.manifests.gateways[0].clone();
        gw.metadata.uid = Some("uid-1".into());
        (gw, loaded.manifests.policies)
    }

    const WORLD: &str = r#"
apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {name: edge, namespace: shop}
spec:
  listeners:
  - {name: https, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: cert, namespace: certs}, {name: local}]}}
  routes:
  - name: a
    backendRefs: [{name: api, namespace: backends, port: 80}, {name: web, port: 80}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, namespace: backends, port: 80}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: ApiPolicy
metadata: {name: keys, namespace: shop}
spec:
  targetRefs: [{group: meshgate.io, kind: ApiGateway, name: edge}]
  authentication:
    apiKey:
      credentialRefs: [{name: partner-keys, namespace: certs}]
      extractFrom: [{headers: [x-api-key]}]
"#;

    fn grant(ns: &str, from_kind: &str, kind: &str, name: Option<&str>) -> ReferenceGrant {
        ReferenceGrant {
            namespace: ns.into(),
            spec: ReferenceGrantSpec {
                from: vec![GrantFrom {
                    group: "meshgate.io".into(),
                    kind: from_kind.into(),
                    namespace: "shop".into(),
                }],
                to: vec![GrantTo {
                    group: String::new(),
                    kind: kind.into(),
                    name: name.map(Into::into),
                }],
            },
        }
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_permitted_references_in_other_namespaces_are_granted() {
        let (gw, policies) = load(WORLD);
        let mut refs = Refs::default();
        // No grants at all: nothing outside the gateway's namespace.
        assert!(foreign_reads(&gw, &policies, &refs).is_empty());

        // Backends: every Service. Certificates: only "cert", and only from
        // gateways; the policy's Secret needs its own grant.
        refs.grants.insert(
            "backends".into(),
            Lookup::Found(vec![grant("backends", "ApiGateway", "Service", None)]),
        );
        refs.grants.insert(
            "certs".into(),
            Lookup::Found(vec![grant("certs", "ApiGateway", "Secret", Some("cert"))]),
        );
        let reads = foreign_reads(&gw, &policies, &refs);
        assert_eq!(
            reads,
            BTreeMap::from([
                (
                    "backends".to_string(),
                    ForeignReads {
                        secrets: BTreeSet::new(),
                        services: names(&["api", "shadow"]),
                    }
                ),
                (
                    "certs".to_string(),
                    ForeignReads {
                        secrets: names(&["cert"]),
                        services: BTreeSet::new(),
                    }
                ),
            ])
        );

        let Some(Lookup::Found(certs)) = refs.grants.get_mut("certs") else {
            unreachable!()
        };
        certs.push(grant("certs", "ApiPolicy", "Secret", Some("partner-keys")));
        let reads = foreign_reads(&gw, &policies, &refs);
        assert_eq!(reads["certs"].secrets, names(&["cert", "partner-keys"]));
        // A policy that targets another gateway contributes nothing.
        let mut other = policies.clone();
        other[0].spec.target_refs[0].name = "other".into();
        let reads = foreign_reads(&gw, &other, &refs);
        assert_eq!(reads["certs"].secrets, names(&["cert"]));
    }

    #[test]
    fn unreadable_grants_permit_nothing() {
        let (gw, policies) = load(WORLD);
        let mut refs = Refs::default();
        refs.grants
            .insert("backends".into(), Lookup::Unreadable("forbidden".into()));
        assert!(foreign_reads(&gw, &policies, &refs).is_empty());
    }

    #[test]
    fn roles_grant_exactly_the_reads_golden() {
        let (gw, _) = load(WORLD);
        let opts = BuildOptions::default();
        let ctx = Ctx::new(&gw, &opts).unwrap();
        let reads = BTreeMap::from([
            (
                "backends".to_string(),
                ForeignReads {
                    secrets: BTreeSet::new(),
                    services: names(&["shadow", "api"]),
                },
            ),
            (
                "certs".to_string(),
                ForeignReads {
                    secrets: names(&["partner-keys", "cert"]),
                    services: BTreeSet::new(),
                },
            ),
            ("empty".to_string(), ForeignReads::default()),
        ]);
        let access = foreign_access(&ctx, &reads);
        let yaml = crate::build::Desired::foreign_yaml(&access).unwrap();
        assert_eq!(
            yaml,
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  labels:
    app.kubernetes.io/managed-by: meshgate-operator
    app.kubernetes.io/name: meshgate-proxy
    meshgate.io/gateway: edge
    meshgate.io/gateway-namespace: shop
  name: edge-meshgate.shop
  namespace: backends
rules:
- apiGroups:
  - ''
  resourceNames:
  - api
  - shadow
  resources:
  - services
  verbs:
  - list
  - watch
- apiGroups:
  - discovery.k8s.io
  resources:
  - endpointslices
  verbs:
  - list
  - watch
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  labels:
    app.kubernetes.io/managed-by: meshgate-operator
    app.kubernetes.io/name: meshgate-proxy
    meshgate.io/gateway: edge
    meshgate.io/gateway-namespace: shop
  name: edge-meshgate.shop
  namespace: backends
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: edge-meshgate.shop
subjects:
- kind: ServiceAccount
  name: edge-meshgate
  namespace: shop
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  labels:
    app.kubernetes.io/managed-by: meshgate-operator
    app.kubernetes.io/name: meshgate-proxy
    meshgate.io/gateway: edge
    meshgate.io/gateway-namespace: shop
  name: edge-meshgate.shop
  namespace: certs
rules:
- apiGroups:
  - ''
  resourceNames:
  - cert
  - partner-keys
  resources:
  - secrets
  verbs:
  - list
  - watch
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  labels:
    app.kubernetes.io/managed-by: meshgate-operator
    app.kubernetes.io/name: meshgate-proxy
    meshgate.io/gateway: edge
    meshgate.io/gateway-namespace: shop
  name: edge-meshgate.shop
  namespace: certs
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: edge-meshgate.shop
subjects:
- kind: ServiceAccount
  name: edge-meshgate
  namespace: shop
"#
        );
        // No owner reference: it could not cross namespaces.
        assert!(access[0].role.metadata.owner_references.is_none());
    }

    #[test]
    fn the_selector_matches_the_labels() {
        let (gw, _) = load(WORLD);
        let opts = BuildOptions::default();
        let ctx = Ctx::new(&gw, &opts).unwrap();
        let reads = BTreeMap::from([(
            "certs".to_string(),
            ForeignReads {
                secrets: names(&["cert"]),
                services: BTreeSet::new(),
            },
        )]);
        let access = foreign_access(&ctx, &reads);
        let labels = access[0].role.metadata.labels.clone().unwrap();
        for pair in foreign_selector("shop", "edge").split(',') {
            let (k, v) = pair.split_once('=').unwrap();
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
    }
}
