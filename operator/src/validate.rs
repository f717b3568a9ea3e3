//! *Validate*: everything about an ApiGateway that its CRD's schema and CEL
//! rules cannot check, as a pure function of the gateway and what
//! [`crate::dereference`] read.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use meshgate_crds::gateway::{ListenerProtocol, ServiceType};
use meshgate_crds::route::{PathMatchType, ValueMatchType};
use meshgate_crds::ApiGateway;

use crate::build::{IdentityMode, MAX_GATEWAY_NAME};
use crate::conditions::reasons;
use crate::dereference::{secret_key, From, Key, Lookup, Refs};

/// A failed check: condition reason and a message naming what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListenerCheck {
    pub name: String,
    /// Spec problems of this listener (Accepted).
    pub invalid: Vec<Problem>,
    /// Certificate problems (ResolvedRefs).
    pub unresolved: Vec<Problem>,
    pub attached_routes: i32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteCheck {
    pub name: String,
    pub invalid: Vec<Problem>,
    pub unresolved: Vec<Problem>,
}

/// The verdict on one ApiGateway.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Validation {
    /// Problems that make the gateway not Accepted (listener and route ones included).
    pub invalid: Vec<Problem>,
    /// References that do not resolve (ResolvedRefs False).
    pub unresolved: Vec<Problem>,
    pub listeners: Vec<ListenerCheck>,
    pub routes: Vec<RouteCheck>,
}

impl Validation {
    pub fn accepted(&self) -> bool {
        self.invalid.is_empty()
    }
}

/// Compiles a Gateway API regular expression the way the proxy does: anchored
/// on both ends, with a bounded compiled size.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            // The regex crate's messages span several lines; keep the last, the reason.
            let text = e.to_string();
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid")
                .trim()
                .trim_start_matches("error: ")
                .to_string()
        })
}

pub const FROM_GATEWAY: &str = "ApiGateway";

/// Checks `gw` against what was read.
pub fn validate(gw: &ApiGateway, refs: &Refs, mode: IdentityMode) -> Validation {
    let ns = gw.metadata.namespace.clone().unwrap_or_default();
    let name = gw.metadata.name.clone().unwrap_or_default();
    let from = From {
        group: meshgate_crds::GROUP,
        kind: FROM_GATEWAY,
        namespace: &ns,
    };
    let mut v = Validation::default();

    if name.len() > MAX_GATEWAY_NAME {
        v.invalid.push(Problem::new(
            reasons::INVALID,
            format!(
                "metadata.name is {} characters long; at most {MAX_GATEWAY_NAME} fit the Service and label names derived from it",
                name.len()
            ),
        ));
    }
    if let Some(s) = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.service.as_ref())
    {
        if s.kind == Some(ServiceType::ClusterIP) && s.external_traffic_policy.is_some() {
            v.invalid.push(Problem::new(
                reasons::INVALID,
                "infrastructure.service.externalTrafficPolicy needs type LoadBalancer or NodePort",
            ));
        }
    }

    let reserved = mode.reserved_ports();
    let listener_names: BTreeSet<&str> =
        gw.spec.listeners.iter().map(|l| l.name.as_str()).collect();

    for l in &gw.spec.listeners {
        let mut check = ListenerCheck {
            name: l.name.clone(),
            ..ListenerCheck::default()
        };
        if let Some((_, what)) = reserved.iter().find(|(p, _)| *p == l.port) {
            check.invalid.push(Problem::new(
                reasons::PORT_UNAVAILABLE,
                format!("listener {}: port {} is {what}", l.name, l.port),
            ));
        }
        if l.protocol == ListenerProtocol::HTTPS {
            for c in l.tls.iter().flat_map(|t| &t.certificate_refs) {
                let key = secret_key(c, &ns);
                let what = format!("listener {}: certificateRef {}/{}", l.name, key.0, key.1);
                if c.group.as_deref().is_some_and(|g| !g.is_empty())
                    || c.kind.as_deref().is_some_and(|k| k != "Secret")
                {
                    check.unresolved.push(Problem::new(
                        reasons::INVALID_CERTIFICATE_REF,
                        format!("{what}: only core Secrets are supported"),
                    ));
                    continue;
                }
                if let Err(m) = refs.permitted(from, "Secret", &key) {
                    check.unresolved.push(Problem::new(
                        reasons::REF_NOT_PERMITTED,
                        format!("{what}: {m}"),
                    ));
                    continue;
                }
                if let Err(m) = check_tls_secret(refs.secrets.get(&key)) {
                    check.unresolved.push(Problem::new(
                        reasons::INVALID_CERTIFICATE_REF,
                        format!("{what}: {m}"),
                    ));
                }
            }
        }
        v.listeners.push(check);
    }

    for r in &gw.spec.routes {
        let mut check = RouteCheck {
            name: r.name.clone(),
            ..RouteCheck::default()
        };
        for ln in &r.listeners {
            if !listener_names.contains(ln.as_str()) {
                check.invalid.push(Problem::new(
                    reasons::NO_MATCHING_PARENT,
                    format!("route {}: listener {ln:?} does not exist", r.name),
                ));
            }
        }
        for (i, m) in r.matches.iter().enumerate() {
            if let Some(p) = &m.path {
                if p.kind == PathMatchType::RegularExpression {
                    if let Err(e) = compile_regex(&p.value) {
                        check.invalid.push(Problem::new(
                            reasons::INVALID,
                            format!(
                                "route {}: matches[{i}].path: invalid regular expression {:?}: {e}",
                                r.name, p.value
                            ),
                        ));
                    }
                }
            }
            for (j, h) in m.headers.iter().enumerate() {
                if h.kind == ValueMatchType::RegularExpression {
                    if let Err(e) = compile_regex(&h.value) {
                        check.invalid.push(Problem::new(
                            reasons::INVALID,
                            format!(
                                "route {}: matches[{i}].headers[{j}] ({}): invalid regular expression {:?}: {e}",
                                r.name, h.name, h.value
                            ),
                        ));
                    }
                }
            }
            for (j, q) in m.query_params.iter().enumerate() {
                if q.kind == ValueMatchType::RegularExpression {
                    if let Err(e) = compile_regex(&q.value) {
                        check.invalid.push(Problem::new(
                            reasons::INVALID,
                            format!(
                                "route {}: matches[{i}].queryParams[{j}] ({}): invalid regular expression {:?}: {e}",
                                r.name, q.name, q.value
                            ),
                        ));
                    }
                }
            }
        }
        let mut backends: Vec<(String, Option<String>, i32)> = r
            .backend_refs
            .iter()
            .map(|b| (b.name.clone(), b.namespace.clone(), b.port))
            .collect();
        for f in &r.filters {
            if let Some(m) = &f.request_mirror {
                let b = &m.backend_ref;
                backends.push((b.name.clone(), b.namespace.clone(), b.port));
            }
        }
        for (bname, bns, port) in backends {
            let key: Key = (bns.unwrap_or_else(|| ns.clone()), bname);
            let what = format!("route {}: backend {}/{}:{port}", r.name, key.0, key.1);
            if let Err(m) = refs.permitted(from, "Service", &key) {
                check.unresolved.push(Problem::new(
                    reasons::REF_NOT_PERMITTED,
                    format!("{what}: {m}"),
                ));
                continue;
            }
            match refs.services.get(&key) {
                Some(Lookup::Found(svc)) => {
                    let has_port = svc
                        .spec
                        .as_ref()
                        .and_then(|s| s.ports.as_ref())
                        .is_some_and(|ps| ps.iter().any(|p| p.port == port));
                    if !has_port {
                        check.unresolved.push(Problem::new(
                            reasons::BACKEND_NOT_FOUND,
                            format!("{what}: Service has no port {port}"),
                        ));
                    }
                }
                Some(Lookup::Unreadable(why)) => check.unresolved.push(Problem::new(
                    reasons::BACKEND_NOT_FOUND,
                    format!("{what}: cannot read the Service: {why}"),
                )),
                Some(Lookup::Missing) | None => check.unresolved.push(Problem::new(
                    reasons::BACKEND_NOT_FOUND,
                    format!("{what}: Service not found"),
                )),
            }
        }
        v.routes.push(check);
    }

    // Routes attach to the listeners they name, or to all; only accepted routes count.
    for l in &mut v.listeners {
        l.attached_routes = gw
            .spec
            .routes
            .iter()
            .zip(&v.routes)
            .filter(|(r, c)| {
                c.invalid.is_empty() && (r.listeners.is_empty() || r.listeners.contains(&l.name))
            })
            .count() as i32;
    }

    for l in &v.listeners {
        v.invalid.extend(l.invalid.iter().cloned());
        v.unresolved.extend(l.unresolved.iter().cloned());
    }
    for r in &v.routes {
        v.invalid.extend(r.invalid.iter().cloned());
        v.unresolved.extend(r.unresolved.iter().cloned());
    }
    v
}

/// A usable TLS Secret: type `kubernetes.io/tls` with PEM in `tls.crt` and `tls.key`.
fn check_tls_secret(s: Option<&Lookup<Secret>>) -> Result<(), String> {
    let secret = match s {
        Some(Lookup::Found(s)) => s,
        Some(Lookup::Unreadable(why)) => return Err(format!("cannot read the Secret: {why}")),
        Some(Lookup::Missing) | None => return Err("Secret not found".into()),
    };
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(format!(
            "Secret has type {:?}, expected kubernetes.io/tls",
            secret.type_.as_deref().unwrap_or("Opaque")
        ));
    }
    let data = secret.data.clone().unwrap_or_default();
    for key in ["tls.crt", "tls.key"] {
        let pem = data.get(key).map(|b| b.0.as_slice()).unwrap_or_default();
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(format!("Secret has no PEM data in {key}"));
        }
    }
    Ok(())
}

/// The most telling reason among `problems` (for the gateway-level condition).
pub fn main_reason(problems: &[Problem], order: &[&'static str]) -> &'static str {
    order
        .iter()
        .find(|r| problems.iter().any(|p| p.reason == **r))
        .copied()
        .or_else(|| problems.first().map(|p| p.reason))
        .unwrap_or(reasons::INVALID)
}

/// All messages as one condition message.
pub fn joined(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn gw(yaml: &str) -> ApiGateway {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn svc(port: i32) -> Lookup<Service> {
        Lookup::Found(Service {
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn tls(type_: &str, crt: &str) -> Lookup<Secret> {
        Lookup::Found(Secret {
            type_: Some(type_.into()),
            data: Some(BTreeMap::from([
                ("tls.crt".into(), ByteString(crt.as_bytes().to_vec())),
                (
                    "tls.key".into(),
                    ByteString(b"-----BEGIN PRIVATE KEY-----".to_vec()),
                ),
            ])),
            ..Default::default()
        })
    }

    const GW: &str = r#"
apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {name: g, namespace: shop}
spec:
  listeners:
    - name: https
      port: 8443
      protocol: HTTPS
      tls: {certificateRefs: [{name: cert}]}
    - name: http
      port: 8080
      protocol: HTTP
  routes:
    - name: ok
      matches: [{path: {type: RegularExpression, value: "/docs/[a-z]+\\.html"}}]
      backendRefs: [{name: web, port: 80}]
    - name: only-http
      listeners: [http]
      backendRefs: [{name: web, port: 80}]
"#;

    fn good_refs() -> Refs {
        let mut refs = Refs::default();
        refs.services.insert(("shop".into(), "web".into()), svc(80));
        refs.secrets.insert(
            ("shop".into(), "cert".into()),
            tls("kubernetes.io/tls", "-----BEGIN CERTIFICATE-----"),
        );
        refs
    }

    #[test]
    fn a_valid_gateway_passes_and_counts_attached_routes() {
        let v = validate(&gw(GW), &good_refs(), IdentityMode::IstioCa);
        assert!(v.invalid.is_empty(), "{:?}", v.invalid);
        assert!(v.unresolved.is_empty(), "{:?}", v.unresolved);
        assert_eq!(v.listeners[0].attached_routes, 1);
        assert_eq!(v.listeners[1].attached_routes, 2);
    }

    #[test]
    fn bad_regexes_are_reported_with_their_place() {
        let mut g = gw(GW);
        g.spec.routes[0].matches[0].path.as_mut().unwrap().value = "/a(b".into();
        let v = validate(&g, &good_refs(), IdentityMode::IstioCa);
        assert!(!v.accepted());
        let m = joined(&v.invalid);
        assert!(
            m.contains("route ok: matches[0].path: invalid regular expression \"/a(b\""),
            "{m}"
        );
        assert_eq!(v.routes[0].invalid.len(), 1);
        // An invalid route attaches nowhere.
        assert_eq!(v.listeners[0].attached_routes, 0);
    }

    #[test]
    fn missing_and_wrong_type_secrets() {
        let mut refs = good_refs();
        refs.secrets
            .insert(("shop".into(), "cert".into()), tls("Opaque", "x"));
        let v = validate(&gw(GW), &refs, IdentityMode::IstioCa);
        assert_eq!(v.unresolved[0].reason, reasons::INVALID_CERTIFICATE_REF);
        assert!(v.unresolved[0]
            .message
            .contains("expected kubernetes.io/tls"));
        refs.secrets
            .insert(("shop".into(), "cert".into()), Lookup::Missing);
        let v = validate(&gw(GW), &refs, IdentityMode::IstioCa);
        assert!(v.unresolved[0].message.contains("Secret not found"));
        refs.secrets.insert(
            ("shop".into(), "cert".into()),
            tls("kubernetes.io/tls", "not pem"),
        );
        let v = validate(&gw(GW), &refs, IdentityMode::IstioCa);
        assert!(v.unresolved[0].message.contains("no PEM data in tls.crt"));
        assert!(v.accepted(), "reference problems do not un-accept");
    }

    #[test]
    fn backends_must_exist_with_the_port() {
        let mut refs = good_refs();
        refs.services.insert(("shop".into(), "web".into()), svc(81));
        let v = validate(&gw(GW), &refs, IdentityMode::IstioCa);
        assert_eq!(v.unresolved.len(), 2);
        assert_eq!(v.unresolved[0].reason, reasons::BACKEND_NOT_FOUND);
        assert!(v.unresolved[0].message.contains("has no port 80"));
        refs.services
            .insert(("shop".into(), "web".into()), Lookup::Missing);
        let v = validate(&gw(GW), &refs, IdentityMode::IstioCa);
        assert!(v.unresolved[0].message.contains("Service not found"));
    }

    #[test]
    fn cross_namespace_backend_needs_a_grant() {
        let mut g = gw(GW);
        g.spec.routes[1].backend_refs[0].namespace = Some("legacy".into());
        let mut refs = good_refs();
        refs.services
            .insert(("legacy".into(), "web".into()), svc(80));
        let v = validate(&g, &refs, IdentityMode::IstioCa);
        assert_eq!(v.unresolved.len(), 1);
        assert_eq!(v.unresolved[0].reason, reasons::REF_NOT_PERMITTED);
        assert_eq!(
            main_reason(
                &v.unresolved,
                &[reasons::REF_NOT_PERMITTED, reasons::BACKEND_NOT_FOUND]
            ),
            reasons::REF_NOT_PERMITTED
        );
    }

    #[test]
    fn reserved_ports_and_unknown_listeners() {
        let mut g = gw(GW);
        g.spec.listeners[1].port = 15000;
        g.spec.routes[1].listeners = vec!["nope".into()];
        let v = validate(&g, &good_refs(), IdentityMode::IstioCa);
        let m = joined(&v.invalid);
        assert!(
            m.contains("listener http: port 15000 is the meshgate-proxy admin port"),
            "{m}"
        );
        assert!(
            m.contains("route only-http: listener \"nope\" does not exist"),
            "{m}"
        );
        // With a sidecar, its ports are taken too and the admin port moves.
        g.spec.listeners[1].port = 15001;
        g.spec.routes[1].listeners.clear();
        let v = validate(&g, &good_refs(), IdentityMode::SidecarFiles);
        assert!(joined(&v.invalid).contains("istio-proxy sidecar"));
    }

    #[test]
    fn long_names_are_rejected() {
        let mut g = gw(GW);
        g.metadata.name = Some("x".repeat(60));
        let v = validate(&g, &good_refs(), IdentityMode::IstioCa);
        assert!(joined(&v.invalid).contains("metadata.name is 60 characters long"));
    }

    #[test]
    fn regexes_are_anchored() {
        let r = compile_regex("/a+").unwrap();
        assert!(r.is_match("/aaa"));
        assert!(!r.is_match("/aaa/b"));
        assert!(compile_regex("(").is_err());
    }
}
