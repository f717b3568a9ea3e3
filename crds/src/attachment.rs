//! Which ApiPolicy applies where: the conflict rule and the merge of a route's,
//! listener's and gateway's policies into the one a request meets.
//!
//! Both the operator (for status) and the proxy (for enforcement) use these
//! functions, so what `kubectl get apipolicy` says and what the proxy does agree.
//!
//! - Two policies attached to the same target (same ApiGateway and same
//!   `sectionName`, or both to the whole gateway) conflict; the older one (by
//!   creationTimestamp, then name) wins, the other is `Conflicted` there.
//! - A request routed by route R on listener L meets the winners of R, L and the
//!   whole gateway, most specific first. Without `mergeType` the most specific
//!   replaces the others; with `mergeType: JSONMerge` it is merged (RFC 7386) onto
//!   the effective policy of the less specific targets, its own values winning.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

use crate::policy::{MergeType, PolicyTargetReference};
use crate::{ApiPolicy, ApiPolicySpec};

/// A policy attachment point: gateway name and optional section (listener or route).
pub type Target = (String, Option<String>);

/// The target a reference names.
pub fn target_of(r: &PolicyTargetReference) -> Target {
    (r.name.clone(), r.section_name.clone())
}

fn age_key(p: &ApiPolicy) -> (Option<Time>, String) {
    (
        p.metadata.creation_timestamp.clone(),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

/// The policy that wins `target` among `policies` (one namespace): the oldest
/// not being deleted.
pub fn winner<'a>(policies: &'a [ApiPolicy], target: &Target) -> Option<&'a ApiPolicy> {
    policies
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.spec.target_refs.iter().any(|r| &target_of(r) == target))
        .min_by_key(|p| age_key(p))
}

/// The policy a request meets, and the policies it came from (`namespace/name`,
/// least specific first).
#[derive(Clone, Debug, PartialEq)]
pub struct Effective {
    pub spec: ApiPolicySpec,
    pub sources: Vec<String>,
}

fn qualified(p: &ApiPolicy) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// RFC 7386 JSON merge patch of `patch` onto `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(t) = target {
                for (key, value) in fields {
                    if value.is_null() {
                        t.remove(key);
                    } else {
                        merge_patch(t.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The policy fields of a spec, without `targetRefs` and `mergeType`.
fn body(spec: &ApiPolicySpec) -> Value {
    let mut value = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut value {
        fields.remove("targetRefs");
        fields.remove("mergeType");
    }
    value
}

/// The effective policy of `route` on `listener` of gateway `gateway`, given all
/// the ApiPolicies of the gateway's namespace. `None`: no policy applies.
pub fn effective(
    policies: &[ApiPolicy],
    gateway: &str,
    listener: &str,
    route: &str,
) -> Result<Option<Effective>, String> {
    let chain = [
        winner(policies, &(gateway.to_string(), None)),
        winner(policies, &(gateway.to_string(), Some(listener.to_string()))),
        winner(policies, &(gateway.to_string(), Some(route.to_string()))),
    ];
    let mut merged: Option<Value> = None;
    let mut sources: Vec<String> = Vec::new();
    for p in chain.into_iter().flatten() {
        let name = qualified(p);
        if sources.contains(&name) {
            continue;
        }
        match (&mut merged, p.spec.merge_type) {
            (Some(current), Some(MergeType::JSONMerge)) => {
                merge_patch(current, &body(&p.spec));
                sources.push(name);
            }
            _ => {
                merged = Some(body(&p.spec));
                sources = vec![name];
            }
        }
    }
    let Some(mut value) = merged else {
        return Ok(None);
    };
    if let Value::Object(fields) = &mut value {
        fields.insert("targetRefs".into(), Value::Array(Vec::new()));
    }
    let spec: ApiPolicySpec = serde_json::from_value(value)
        .map_err(|e| format!("merging policies {}: {e}", sources.join(", ")))?;
    Ok(Some(Effective { spec, sources }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Cors, IpFilter, RequestLimits};
    use k8s_openapi::jiff::Timestamp;

    fn policy(name: &str, age: i64, section: Option<&str>, spec: ApiPolicySpec) -> ApiPolicy {
        let mut p = ApiPolicy::new(
            name,
            ApiPolicySpec {
                target_refs: vec![PolicyTargetReference {
                    group: crate::GROUP.into(),
                    kind: Default::default(),
                    name: "gw".into(),
                    section_name: section.map(str::to_string),
                }],
                ..spec
            },
        );
        p.metadata.namespace = Some("ns".into());
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(age).unwrap()));
        p
    }

    fn limits(body: i64) -> ApiPolicySpec {
        ApiPolicySpec {
            request_limits: Some(RequestLimits {
                max_body_bytes: Some(body),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cors() -> ApiPolicySpec {
        ApiPolicySpec {
            cors: Some(Cors {
                allow_origins: vec!["https://a.example".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_oldest_policy_wins_a_target() {
        let ps = vec![
            policy("young", 20, None, limits(1)),
            policy("old", 10, None, limits(2)),
            policy("other", 5, Some("r"), limits(3)),
        ];
        let w = winner(&ps, &("gw".into(), None)).unwrap();
        assert_eq!(w.metadata.name.as_deref(), Some("old"));
    }

    #[test]
    fn the_most_specific_policy_replaces_the_others() {
        let ps = vec![
            policy("gw-wide", 1, None, cors()),
            policy("on-route", 2, Some("r"), limits(10)),
        ];
        let e = effective(&ps, "gw", "l", "r").unwrap().unwrap();
        assert_eq!(e.sources, vec!["ns/on-route".to_string()]);
        assert!(e.spec.cors.is_none());
        assert_eq!(e.spec.request_limits.unwrap().max_body_bytes, Some(10));
        // Another route meets the gateway's policy only.
        let e = effective(&ps, "gw", "l", "other").unwrap().unwrap();
        assert_eq!(e.sources, vec!["ns/gw-wide".to_string()]);
        assert!(e.spec.cors.is_some());
    }

    #[test]
    fn json_merge_combines_route_listener_and_gateway() {
        let mut on_listener = limits(10);
        on_listener.merge_type = Some(MergeType::JSONMerge);
        on_listener.ip_filter = Some(IpFilter {
            deny: vec!["10.0.0.0/8".into()],
            ..Default::default()
        });
        let mut on_route = limits(20);
        on_route.merge_type = Some(MergeType::JSONMerge);
        let ps = vec![
            policy("g", 1, None, cors()),
            policy("l", 2, Some("l"), on_listener),
            policy("r", 3, Some("r"), on_route),
        ];
        let e = effective(&ps, "gw", "l", "r").unwrap().unwrap();
        assert_eq!(e.sources, vec!["ns/g", "ns/l", "ns/r"]);
        assert!(e.spec.cors.is_some());
        assert_eq!(e.spec.ip_filter.unwrap().deny, vec!["10.0.0.0/8"]);
        assert_eq!(e.spec.request_limits.unwrap().max_body_bytes, Some(20));
        assert!(e.spec.merge_type.is_none());
    }

    #[test]
    fn no_policy_means_none() {
        let ps = vec![policy("other-route", 1, Some("x"), limits(1))];
        assert_eq!(effective(&ps, "gw", "l", "r").unwrap(), None);
        assert_eq!(effective(&ps, "other-gw", "l", "x").unwrap(), None);
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = serde_json::json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(
            &mut t,
            &serde_json::json!({"a": {"b": null, "e": 3}, "d": [2]}),
        );
        assert_eq!(t, serde_json::json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }
}
