//! ApiPolicy: which policy wins a target, and the policy status, as pure functions.
//!
//! The conflict rule (the older policy wins a target) lives in
//! [`meshgate_crds::attachment`], shared with the proxy, so status and behaviour agree.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use meshgate_crds::policy::PolicyAncestorStatus;
use meshgate_crds::{ApiGateway, ApiPolicy, ApiPolicyStatus};

use crate::conditions::{merge, reasons, types, Cond};
use crate::dereference::{secret_key, From, Lookup, Refs};

/// `controllerName` in policy ancestor status.
pub const CONTROLLER_NAME: &str = "meshgate.io/operator";

pub use meshgate_crds::attachment::{target_of, winner, Target};

/// Why `section` does not exist on `gw`, if it does not.
fn section_missing(gw: &ApiGateway, section: &str) -> bool {
    !gw.spec.listeners.iter().any(|l| l.name == section)
        && !gw.spec.routes.iter().any(|r| r.name == section)
}

/// Problems with the Secrets a policy references.
pub fn unresolved_refs(p: &ApiPolicy, refs: &Refs) -> Vec<String> {
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let from = From {
        group: meshgate_crds::GROUP,
        kind: "ApiPolicy",
        namespace: &ns,
    };
    let mut out = Vec::new();
    let mut check =
        |r: &meshgate_crds::SecretObjectReference, need_key: Option<&str>, what: &str| {
            let key = secret_key(r, &ns);
            let label = format!("{what} {}/{}", key.0, key.1);
            if let Err(m) = refs.permitted(from, "Secret", &key) {
                out.push(format!("{label}: {m}"));
                return;
            }
            match refs.secrets.get(&key) {
                Some(Lookup::Found(s)) => {
                    let data = s.data.clone().unwrap_or_default();
                    match need_key {
                        Some(k) if !data.contains_key(k) => {
                            out.push(format!("{label}: Secret has no key {k:?}"))
                        }
                        None if data.is_empty() => out.push(format!("{label}: Secret has no keys")),
                        _ => {}
                    }
                }
                Some(Lookup::Unreadable(why)) => {
                    out.push(format!("{label}: cannot read the Secret: {why}"))
                }
                Some(Lookup::Missing) | None => out.push(format!("{label}: Secret not found")),
            }
        };
    if let Some(a) = &p.spec.authentication {
        if let Some(k) = &a.api_key {
            for c in &k.credential_refs {
                check(c, None, "apiKey credentialRef");
            }
        }
        if let Some(j) = &a.jwt {
            for prov in &j.providers {
                if let Some(v) = prov.local_jwks.as_ref().and_then(|l| l.value_ref.as_ref()) {
                    check(
                        v,
                        Some("jwks"),
                        &format!("jwt provider {} localJWKS", prov.name),
                    );
                }
            }
        }
    }
    out
}

/// The full status of `p`: one ancestor per distinct target.
/// `policies` and `gateways` are everything in `p`'s namespace.
pub fn policy_status(
    p: &ApiPolicy,
    policies: &[ApiPolicy],
    gateways: &[ApiGateway],
    refs: &Refs,
    now: &Time,
) -> ApiPolicyStatus {
    let old = p.status.clone().unwrap_or_default();
    let generation = p.metadata.generation;
    let name = p.metadata.name.clone().unwrap_or_default();
    let unresolved = unresolved_refs(p, refs);
    let resolved = if unresolved.is_empty() {
        Cond::ok(
            types::RESOLVED_REFS,
            reasons::RESOLVED_REFS,
            "All references resolved",
        )
    } else {
        Cond::fail(
            types::RESOLVED_REFS,
            reasons::INVALID_REF,
            unresolved.join("; "),
        )
    };

    let mut seen = BTreeSet::new();
    let mut ancestors = Vec::new();
    for r in &p.spec.target_refs {
        let target = target_of(r);
        if !seen.insert(target.clone()) {
            continue;
        }
        let where_ = match &target.1 {
            Some(s) => format!("ApiGateway {} section {s}", target.0),
            None => format!("ApiGateway {}", target.0),
        };
        let gw = gateways
            .iter()
            .find(|g| g.metadata.name.as_deref() == Some(target.0.as_str()));
        let accepted = match gw {
            None => Cond::fail(
                types::ACCEPTED,
                reasons::TARGET_NOT_FOUND,
                format!("ApiGateway {} not found in this namespace", target.0),
            ),
            Some(g) if target.1.as_deref().is_some_and(|s| section_missing(g, s)) => Cond::fail(
                types::ACCEPTED,
                reasons::TARGET_NOT_FOUND,
                format!(
                    "ApiGateway {} has no listener or route named {:?}",
                    target.0,
                    target.1.as_deref().unwrap_or_default()
                ),
            ),
            Some(_) => match winner(policies, &target) {
                Some(w) if w.metadata.name.as_deref() != Some(name.as_str()) => Cond::fail(
                    types::ACCEPTED,
                    reasons::CONFLICTED,
                    format!(
                        "ApiPolicy {} is older and already attached to {where_}; only one policy applies per target",
                        w.metadata.name.as_deref().unwrap_or_default()
                    ),
                ),
                _ => Cond::ok(types::ACCEPTED, reasons::ACCEPTED, format!("Attached to {where_}")),
            },
        };
        let prev = old
            .ancestors
            .iter()
            .find(|a| target_of(&a.ancestor_ref) == target)
            .map(|a| a.conditions.as_slice())
            .unwrap_or_default();
        ancestors.push(PolicyAncestorStatus {
            ancestor_ref: r.clone(),
            controller_name: CONTROLLER_NAME.into(),
            conditions: merge(prev, vec![accepted, resolved.clone()], generation, now),
        });
    }
    ApiPolicyStatus { ancestors }
}

/// Gateway names a policy targets.
pub fn target_gateways(p: &ApiPolicy) -> BTreeSet<String> {
    p.spec.target_refs.iter().map(|r| r.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn policy(name: &str, created: i64, target: &str, section: Option<&str>) -> ApiPolicy {
        let mut p: ApiPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "meshgate.io/v1alpha1",
            "kind": "ApiPolicy",
            "metadata": {"name": name, "namespace": "shop", "generation": 1},
            "spec": {
                "targetRefs": [{"group": "meshgate.io", "kind": "ApiGateway", "name": target, "sectionName": section}],
                "cors": {"allowOrigins": ["https://a.example"]}
            }
        }))
        .unwrap();
        p.metadata.creation_timestamp = Some(t(created));
        p
    }

    fn gateway() -> ApiGateway {
        serde_yaml_ng::from_str(
            r#"
apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {name: edge, namespace: shop}
spec:
  listeners: [{name: https, port: 8443, protocol: HTTP}]
  routes: [{name: api, backendRefs: [{name: api, port: 80}]}]
"#,
        )
        .unwrap()
    }

    fn accepted(st: &ApiPolicyStatus) -> (String, String) {
        let c = &st.ancestors[0].conditions[0];
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn the_older_policy_wins_a_target() {
        let older = policy("b-older", 10, "edge", Some("api"));
        let newer = policy("a-newer", 20, "edge", Some("api"));
        let all = vec![newer.clone(), older.clone()];
        let gws = vec![gateway()];
        let refs = Refs::default();
        let s_old = policy_status(&older, &all, &gws, &refs, &t(100));
        let s_new = policy_status(&newer, &all, &gws, &refs, &t(100));
        assert_eq!(accepted(&s_old), ("True".into(), "Accepted".into()));
        assert_eq!(accepted(&s_new), ("False".into(), "Conflicted".into()));
        assert!(s_new.ancestors[0].conditions[0].message.contains("b-older"));
        assert_eq!(s_new.ancestors[0].controller_name, CONTROLLER_NAME);
    }

    #[test]
    fn same_age_breaks_ties_by_name() {
        let a = policy("a", 10, "edge", None);
        let b = policy("b", 10, "edge", None);
        let all = vec![b.clone(), a.clone()];
        assert_eq!(
            winner(&all, &("edge".into(), None)).and_then(|p| p.metadata.name.clone()),
            Some("a".into())
        );
    }

    #[test]
    fn different_sections_do_not_conflict() {
        let a = policy("a", 10, "edge", None);
        let b = policy("b", 20, "edge", Some("https"));
        let all = vec![a, b.clone()];
        let st = policy_status(&b, &all, &[gateway()], &Refs::default(), &t(1));
        assert_eq!(accepted(&st), ("True".into(), "Accepted".into()));
    }

    #[test]
    fn missing_targets_and_sections() {
        let p = policy("p", 1, "nope", None);
        let st = policy_status(
            &p,
            std::slice::from_ref(&p),
            &[gateway()],
            &Refs::default(),
            &t(1),
        );
        assert_eq!(accepted(&st), ("False".into(), "TargetNotFound".into()));
        let p = policy("p", 1, "edge", Some("missing"));
        let st = policy_status(
            &p,
            std::slice::from_ref(&p),
            &[gateway()],
            &Refs::default(),
            &t(1),
        );
        assert_eq!(accepted(&st), ("False".into(), "TargetNotFound".into()));
        assert!(st.ancestors[0].conditions[0]
            .message
            .contains("\"missing\""));
    }

    #[test]
    fn unchanged_policy_status_is_stable() {
        let mut p = policy("p", 1, "edge", None);
        let all = vec![p.clone()];
        let first = policy_status(&p, &all, &[gateway()], &Refs::default(), &t(1));
        p.status = Some(first.clone());
        let again = policy_status(&p, &all, &[gateway()], &Refs::default(), &t(99));
        assert_eq!(first, again);
    }

    #[test]
    fn missing_credential_secrets_are_reported() {
        let mut p = policy("p", 1, "edge", None);
        p.spec.authentication = Some(
            serde_json::from_value(serde_json::json!({
                "apiKey": {"credentialRefs": [{"name": "keys"}], "extractFrom": [{"headers": ["x-api-key"]}]}
            }))
            .unwrap(),
        );
        let st = policy_status(
            &p,
            std::slice::from_ref(&p),
            &[gateway()],
            &Refs::default(),
            &t(1),
        );
        let rr = &st.ancestors[0].conditions[1];
        assert_eq!(
            (rr.status.as_str(), rr.reason.as_str()),
            ("False", "InvalidRef")
        );
        assert!(rr
            .message
            .contains("apiKey credentialRef shop/keys: Secret not found"));
    }
}
