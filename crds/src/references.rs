//! What an ApiGateway and its ApiPolicies point at: the Secrets and Services,
//! by namespace and name.
//!
//! The operator (to validate them and to grant the proxy read access in other
//! namespaces) and the proxy (to watch them) both use these functions, so what
//! the proxy watches is exactly what the operator grants.

use std::collections::BTreeSet;

use crate::{ApiGateway, ApiPolicy, SecretObjectReference};

/// Namespace + name.
pub type Key = (String, String);

/// The Secrets and Services an object references.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    pub secrets: BTreeSet<Key>,
    pub services: BTreeSet<Key>,
}

impl References {
    /// Every namespace referenced.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.secrets
            .iter()
            .chain(&self.services)
            .map(|k| k.0.clone())
            .collect()
    }

    /// Adds everything in `other`.
    pub fn extend(&mut self, other: References) {
        self.secrets.extend(other.secrets);
        self.services.extend(other.services);
    }
}

/// `(namespace, name)` of a Secret reference, defaulting to `ns`.
pub fn secret_key(r: &SecretObjectReference, ns: &str) -> Key {
    (
        r.namespace.clone().unwrap_or_else(|| ns.to_string()),
        r.name.clone(),
    )
}

/// Listener certificates, route backends and mirror backends of `gw`.
pub fn gateway_references(gw: &ApiGateway) -> References {
    let ns = gw.metadata.namespace.clone().unwrap_or_default();
    let mut out = References::default();
    for l in &gw.spec.listeners {
        for c in l.tls.iter().flat_map(|t| &t.certificate_refs) {
            out.secrets.insert(secret_key(c, &ns));
        }
    }
    let service = |name: &str, namespace: &Option<String>| {
        (
            namespace.clone().unwrap_or_else(|| ns.clone()),
            name.to_string(),
        )
    };
    for r in &gw.spec.routes {
        for b in &r.backend_refs {
            out.services.insert(service(&b.name, &b.namespace));
        }
        for f in &r.filters {
            if let Some(m) = &f.request_mirror {
                out.services
                    .insert(service(&m.backend_ref.name, &m.backend_ref.namespace));
            }
        }
    }
    out
}

/// The Secrets an ApiPolicy references (API key credentials, local JWKS).
pub fn policy_references(p: &ApiPolicy) -> References {
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let mut out = References::default();
    if let Some(a) = &p.spec.authentication {
        if let Some(k) = &a.api_key {
            for c in &k.credential_refs {
                out.secrets.insert(secret_key(c, &ns));
            }
        }
        if let Some(j) = &a.jwt {
            for prov in &j.providers {
                if let Some(v) = prov.local_jwks.as_ref().and_then(|l| l.value_ref.as_ref()) {
                    out.secrets.insert(secret_key(v, &ns));
                }
            }
        }
    }
    out
}

/// Whether `p` targets the ApiGateway `gateway` of its own namespace (policies
/// attach only within their namespace).
pub fn targets(p: &ApiPolicy, gateway: &ApiGateway) -> bool {
    p.metadata.namespace == gateway.metadata.namespace
        && gateway
            .metadata
            .name
            .as_ref()
            .is_some_and(|n| p.spec.target_refs.iter().any(|r| &r.name == n))
}

/// Everything `gw` and the policies among `policies` that target it reference.
pub fn gateway_and_policy_references(gw: &ApiGateway, policies: &[ApiPolicy]) -> References {
    let mut out = gateway_references(gw);
    for p in policies.iter().filter(|p| targets(p, gw)) {
        out.extend(policy_references(p));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_of_a_gateway_and_the_policies_that_target_it() {
        let loaded = crate::manifests::load_str(
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
      credentialRefs: [{name: k, namespace: vault}]
      extractFrom: [{headers: [x-api-key]}]
---
apiVersion: meshgate.io/v1alpha1
kind: ApiPolicy
metadata: {name: other, namespace: edge}
spec:
  targetRefs: [{group: meshgate.io, kind: ApiGateway, name: not-gw}]
  authentication:
    apiKey:
      credentialRefs: [{name: x, namespace: elsewhere}]
      extractFrom: [{headers: [x-api-key]}]
"#,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let m = &loaded.manifests;
        let refs = gateway_and_policy_references(&m.gateways[0], &m.policies);
        let key = |ns: &str, n: &str| (ns.to_string(), n.to_string());
        assert_eq!(
            refs.secrets,
            BTreeSet::from([key("certs", "c"), key("edge", "own"), key("vault", "k")])
        );
        assert_eq!(
            refs.services,
            BTreeSet::from([key("edge", "t"), key("shadow", "m"), key("shop", "s")])
        );
        let ns: Vec<String> = refs.namespaces().into_iter().collect();
        assert_eq!(ns, ["certs", "edge", "shadow", "shop", "vault"]);
    }
}
