//! *Status*: the ApiGateway status as a pure function of the validation, the
//! apply outcome and the observed workload; plus which transitions deserve
//! an Event. The caller writes only when the result differs from what is stored.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use meshgate_crds::gateway::{ApiGatewayStatus, GatewayAddress, ListenerStatus, RouteStatus};
use meshgate_crds::ApiGateway;

use crate::conditions::{merge, reasons, types, Cond};
use crate::validate::{joined, main_reason, Problem, Validation};

/// What happened to the gateway's objects in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Programmed {
    /// Every object was applied for this generation.
    Applied,
    /// Not applied: the spec is invalid (existing objects were left alone).
    NotApplied,
    /// Objects with our names exist but are not ours; nothing was taken over.
    Conflict(Vec<String>),
}

/// What the API said about the workload after apply.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    pub deployment: Option<&'a Deployment>,
    pub service: Option<&'a Service>,
}

const REF_ORDER: &[&str] = &[
    reasons::REF_NOT_PERMITTED,
    reasons::INVALID_CERTIFICATE_REF,
    reasons::BACKEND_NOT_FOUND,
];

fn accepted(invalid: &[Problem], ok: &str) -> Cond {
    if invalid.is_empty() {
        Cond::ok(types::ACCEPTED, reasons::ACCEPTED, ok)
    } else {
        Cond::fail(
            types::ACCEPTED,
            main_reason(invalid, &[reasons::PORT_UNAVAILABLE, reasons::INVALID]),
            joined(invalid),
        )
    }
}

fn resolved(unresolved: &[Problem]) -> Cond {
    if unresolved.is_empty() {
        Cond::ok(
            types::RESOLVED_REFS,
            reasons::RESOLVED_REFS,
            "All references resolved",
        )
    } else {
        Cond::fail(
            types::RESOLVED_REFS,
            main_reason(unresolved, REF_ORDER),
            joined(unresolved),
        )
    }
}

/// `(ready, desired, available)` of the proxy Deployment.
pub fn readiness(d: Option<&Deployment>) -> Cond {
    let Some(d) = d else {
        return Cond::fail(
            types::READY,
            reasons::PENDING,
            "The proxy Deployment does not exist yet",
        );
    };
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let available = st.available_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let msg = format!("{available}/{desired} proxy replicas available, {updated} updated");
    if desired == 0 {
        Cond::fail(
            types::READY,
            reasons::PENDING,
            "The proxy Deployment is scaled to 0",
        )
    } else if available >= 1 && available == desired {
        Cond::ok(types::READY, reasons::READY, msg)
    } else {
        Cond::fail(types::READY, reasons::PENDING, msg)
    }
}

/// Addresses from the Service: load-balancer ingress first, else the cluster IP.
pub fn addresses(svc: Option<&Service>) -> Vec<GatewayAddress> {
    let Some(svc) = svc else { return Vec::new() };
    let mut out = Vec::new();
    for ing in svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
    {
        if let Some(ip) = &ing.ip {
            out.push(GatewayAddress {
                kind: "IPAddress".into(),
                value: ip.clone(),
            });
        } else if let Some(h) = &ing.hostname {
            out.push(GatewayAddress {
                kind: "Hostname".into(),
                value: h.clone(),
            });
        }
    }
    if out.is_empty() {
        if let Some(ip) = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_ref())
            .filter(|ip| !ip.is_empty() && ip.as_str() != "None")
        {
            out.push(GatewayAddress {
                kind: "IPAddress".into(),
                value: ip.clone(),
            });
        }
    }
    out
}

/// The new status. Conditions keep their `lastTransitionTime` from `gw`'s
/// current status unless their status flipped; `now` dates the rest.
pub fn gateway_status(
    gw: &ApiGateway,
    v: &Validation,
    programmed: &Programmed,
    obs: &Observed,
    now: &Time,
) -> ApiGatewayStatus {
    let old = gw.status.clone().unwrap_or_default();
    let generation = gw.metadata.generation;

    let programmed_cond = match programmed {
        Programmed::Applied => Cond::ok(
            types::PROGRAMMED,
            reasons::PROGRAMMED,
            "Proxy Deployment, Service and RBAC applied",
        ),
        Programmed::NotApplied => Cond::fail(
            types::PROGRAMMED,
            reasons::INVALID,
            "Not applied: the ApiGateway is not Accepted; existing proxies keep their objects",
        ),
        Programmed::Conflict(objs) => Cond::fail(
            types::PROGRAMMED,
            reasons::RESOURCE_CONFLICT,
            format!(
                "{} already exist(s) without label app.kubernetes.io/managed-by=meshgate-operator; rename or delete it, meshgate does not take over objects it did not create",
                objs.join(", ")
            ),
        ),
    };
    let gateway_programmed = *programmed == Programmed::Applied;

    let conditions = merge(
        &old.conditions,
        vec![
            accepted(&v.invalid, "The ApiGateway is valid"),
            resolved(&v.unresolved),
            programmed_cond,
            readiness(obs.deployment),
        ],
        generation,
        now,
    );

    let listeners = v
        .listeners
        .iter()
        .map(|l| {
            let prev = old
                .listeners
                .iter()
                .find(|o| o.name == l.name)
                .map(|o| o.conditions.as_slice())
                .unwrap_or_default();
            let ok = l.invalid.is_empty() && l.unresolved.is_empty();
            let prog = if gateway_programmed && ok {
                Cond::ok(types::PROGRAMMED, reasons::PROGRAMMED, "")
            } else if !l.invalid.is_empty() || !l.unresolved.is_empty() {
                Cond::fail(
                    types::PROGRAMMED,
                    reasons::INVALID,
                    "The listener has problems; see Accepted and ResolvedRefs",
                )
            } else {
                Cond::fail(
                    types::PROGRAMMED,
                    reasons::PENDING,
                    "The gateway is not programmed",
                )
            };
            ListenerStatus {
                name: l.name.clone(),
                attached_routes: l.attached_routes,
                conditions: merge(
                    prev,
                    vec![accepted(&l.invalid, ""), resolved(&l.unresolved), prog],
                    generation,
                    now,
                ),
            }
        })
        .collect();

    let routes = v
        .routes
        .iter()
        .map(|r| {
            let prev = old
                .routes
                .iter()
                .find(|o| o.name == r.name)
                .map(|o| o.conditions.as_slice())
                .unwrap_or_default();
            RouteStatus {
                name: r.name.clone(),
                conditions: merge(
                    prev,
                    vec![accepted(&r.invalid, ""), resolved(&r.unresolved)],
                    generation,
                    now,
                ),
            }
        })
        .collect();

    ApiGatewayStatus {
        conditions,
        addresses: addresses(obs.service),
        listeners,
        routes,
    }
}

/// The status to write, or None when `new` is what is stored already (an
/// operator restart or a no-op reconcile must not bump resourceVersion).
pub fn changed<'a, S: PartialEq>(old: Option<&S>, new: &'a S) -> Option<&'a S> {
    (old != Some(new)).then_some(new)
}

/// A Kubernetes Event worth emitting for a condition transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Events for significant transitions only: a condition appearing with a
/// status, or flipping. Unchanged conditions (restarts, resyncs) emit nothing.
pub fn transitions(old: &[Condition], new: &[Condition]) -> Vec<Transition> {
    let mut out = Vec::new();
    for c in new {
        let before = old
            .iter()
            .find(|o| o.type_ == c.type_)
            .map(|o| o.status.as_str());
        if before == Some(c.status.as_str()) {
            continue;
        }
        let ok = c.status == "True";
        let first = before.is_none();
        let (warning, reason) = match (c.type_.as_str(), ok) {
            (types::ACCEPTED, true) if first => continue,
            (types::ACCEPTED, true) => (false, "Accepted".to_string()),
            (types::ACCEPTED, false) => (true, c.reason.clone()),
            (types::RESOLVED_REFS, true) if first => continue,
            (types::RESOLVED_REFS, true) => (false, "ResolvedRefs".to_string()),
            (types::RESOLVED_REFS, false) => (true, c.reason.clone()),
            (types::PROGRAMMED, true) => (false, "Programmed".to_string()),
            (types::PROGRAMMED, false) if c.reason == reasons::RESOURCE_CONFLICT => {
                (true, c.reason.clone())
            }
            (types::PROGRAMMED, false) => continue,
            (types::READY, true) => (false, "Ready".to_string()),
            (types::READY, false) if first => continue,
            (types::READY, false) => (true, "NotReady".to_string()),
            _ => continue,
        };
        out.push(Transition {
            warning,
            reason,
            note: c.message.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::IdentityMode;
    use crate::dereference::{Lookup, Refs};
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn gw() -> ApiGateway {
        let mut g: ApiGateway = serde_yaml_ng::from_str(
            r#"
apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {name: g, namespace: shop, generation: 3}
spec:
  listeners: [{name: http, port: 8080, protocol: HTTP}]
  routes:
    - name: r
      backendRefs: [{name: web, port: 80}]
"#,
        )
        .unwrap();
        g.metadata.uid = Some("u".into());
        g
    }

    fn refs() -> Refs {
        let mut refs = Refs::default();
        refs.services.insert(
            ("shop".into(), "web".into()),
            Lookup::Found(Service {
                spec: Some(ServiceSpec {
                    ports: Some(vec![ServicePort {
                        port: 80,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
        refs
    }

    fn deploy(desired: i32, available: i32) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(desired),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                available_replicas: Some(available),
                updated_replicas: Some(available),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn svc() -> Service {
        Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.20".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_healthy_gateway_is_accepted_programmed_and_ready() {
        let g = gw();
        let v = crate::validate::validate(&g, &refs(), IdentityMode::IstioCa);
        let d = deploy(2, 2);
        let s = svc();
        let st = gateway_status(
            &g,
            &v,
            &Programmed::Applied,
            &Observed {
                deployment: Some(&d),
                service: Some(&s),
            },
            &t(10),
        );
        let types: Vec<_> = st
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("Accepted", "True"),
                ("ResolvedRefs", "True"),
                ("Programmed", "True"),
                ("Ready", "True")
            ]
        );
        assert!(st
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(3)));
        assert_eq!(st.addresses[0].value, "10.96.0.20");
        assert_eq!(st.listeners[0].attached_routes, 1);
        assert_eq!(st.routes[0].conditions.len(), 2);
    }

    #[test]
    fn no_change_means_no_status_write() {
        let mut g = gw();
        let v = crate::validate::validate(&g, &refs(), IdentityMode::IstioCa);
        let d = deploy(2, 2);
        let s = svc();
        let obs = Observed {
            deployment: Some(&d),
            service: Some(&s),
        };
        let first = gateway_status(&g, &v, &Programmed::Applied, &obs, &t(10));
        assert!(changed(g.status.as_ref(), &first).is_some());
        g.status = Some(first.clone());
        // Later, with a later clock (an operator restart): identical status, no write.
        let again = gateway_status(&g, &v, &Programmed::Applied, &obs, &t(500));
        assert_eq!(again, first);
        assert!(changed(g.status.as_ref(), &again).is_none());
        assert!(transitions(&first.conditions, &again.conditions).is_empty());
    }

    #[test]
    fn readiness_transitions_keep_other_conditions_dated() {
        let mut g = gw();
        let v = crate::validate::validate(&g, &refs(), IdentityMode::IstioCa);
        let pending = deploy(2, 1);
        let first = gateway_status(
            &g,
            &v,
            &Programmed::Applied,
            &Observed {
                deployment: Some(&pending),
                service: None,
            },
            &t(10),
        );
        let ready = first
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "Pending");
        assert_eq!(ready.message, "1/2 proxy replicas available, 1 updated");
        g.status = Some(first.clone());
        let up = deploy(2, 2);
        let second = gateway_status(
            &g,
            &v,
            &Programmed::Applied,
            &Observed {
                deployment: Some(&up),
                service: None,
            },
            &t(20),
        );
        let by = |st: &ApiGatewayStatus, ty: &str| {
            st.conditions
                .iter()
                .find(|c| c.type_ == ty)
                .unwrap()
                .clone()
        };
        assert_eq!(by(&second, "Ready").last_transition_time, t(20));
        assert_eq!(by(&second, "Accepted").last_transition_time, t(10));
        let ev = transitions(&first.conditions, &second.conditions);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].reason, "Ready");
        assert!(!ev[0].warning);
    }

    #[test]
    fn invalid_gateways_are_not_programmed() {
        let mut g = gw();
        g.spec.routes[0].matches = vec![serde_json::from_value(serde_json::json!(
            {"path": {"type": "RegularExpression", "value": "(["}}
        ))
        .unwrap()];
        let v = crate::validate::validate(&g, &refs(), IdentityMode::IstioCa);
        let st = gateway_status(&g, &v, &Programmed::NotApplied, &Observed::default(), &t(1));
        let acc = &st.conditions[0];
        assert_eq!(
            (acc.status.as_str(), acc.reason.as_str()),
            ("False", "Invalid")
        );
        assert!(acc
            .message
            .contains("route r: matches[0].path: invalid regular expression"));
        assert_eq!(st.conditions[2].status, "False");
        let ev = transitions(&[], &st.conditions);
        assert_eq!(ev[0].reason, "Invalid");
        assert!(ev[0].warning);
    }

    #[test]
    fn conflicts_are_reported() {
        let g = gw();
        let v = crate::validate::validate(&g, &refs(), IdentityMode::IstioCa);
        let st = gateway_status(
            &g,
            &v,
            &Programmed::Conflict(vec!["Service shop/g-meshgate".into()]),
            &Observed::default(),
            &t(1),
        );
        assert_eq!(st.conditions[2].reason, "ResourceConflict");
        assert!(st.conditions[2]
            .message
            .starts_with("Service shop/g-meshgate"));
    }

    #[test]
    fn load_balancer_addresses_win_over_cluster_ip() {
        let mut s = svc();
        s.status = Some(serde_json::from_value(serde_json::json!(
            {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "lb.example.com"}]}}
        ))
        .unwrap());
        let a = addresses(Some(&s));
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].kind.as_str(), a[0].value.as_str()),
            ("IPAddress", "203.0.113.7")
        );
        assert_eq!(
            (a[1].kind.as_str(), a[1].value.as_str()),
            ("Hostname", "lb.example.com")
        );
    }
}
