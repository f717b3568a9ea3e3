//! The immutable configuration the proxy serves: one ApiGateway compiled together
//! with the Secrets, Services and EndpointSlices it refers to.
//!
//! Problems confined to one route (a bad regex, a missing Service) or one
//! certificate are recorded in [`Snapshot::errors`] and leave the rest working;
//! only problems that leave no sensible gateway (no ApiGateway, bad listeners) fail
//! the whole compile.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use meshgate_crds::attachment;
use meshgate_crds::gateway::{ListenerProtocol, TlsVersion};
use meshgate_crds::manifests::Manifests;
use meshgate_crds::ApiGateway;
use serde::Serialize;
use serde_json::{json, Value};

use crate::backends::{namespace_of, ServiceIndex};
use crate::metrics::Metrics;
use crate::policy::{PolicyContext, PolicyRuntime, RoutePolicy, SecretLookup};
use crate::routes::{self, Route, UpstreamSettings};
use crate::routing::{PathRule, RouteTable};
use crate::state::BoundListener;
use crate::tls::{self, CertStore};
use crate::Error;

pub mod reuse;
use reuse::Reuse;

/// `--gateway NS/NAME` (or `NAME`, in any namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl FromStr for GatewayRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, name) = match s.split_once('/') {
            Some((ns, name)) => (Some(ns.to_string()), name),
            None => (None, s),
        };
        if name.is_empty() || name.contains('/') || namespace.as_deref() == Some("") {
            return Err(format!("expected NAMESPACE/NAME or NAME, got {s:?}"));
        }
        Ok(GatewayRef {
            namespace,
            name: name.to_string(),
        })
    }
}

/// A problem (or, for warnings, an unimplemented setting) of one object.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConfigIssue {
    /// `gateway`, `listener/NAME` or `route/NAME`.
    pub object: String,
    pub message: String,
}

impl ConfigIssue {
    fn new(object: impl Into<String>, message: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            object: object.into(),
            message: message.into(),
        }
    }
}

/// Connection settings shared by every listener (ApiGateway `clientTraffic`).
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_concurrent_streams: u32,
    pub access_log: bool,
    /// `numTrustedHops`: X-Forwarded-For entries believed (see [`crate::proxy::client_addr`]).
    pub num_trusted_hops: usize,
    /// Close a client connection without requests in progress for this long.
    pub idle_timeout: Duration,
    /// Open client connections per proxy; `None`: unlimited.
    pub max_connections: Option<usize>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 100,
            access_log: true,
            num_trusted_hops: 0,
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
        }
    }
}

#[derive(Debug)]
pub struct ListenerTls {
    pub certs: CertStore,
    pub tls13_only: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpsRedirect {
    pub port: u16,
    pub status: StatusCode,
}

/// The policy a route meets on a listener, with the upstream settings it implies.
#[derive(Debug)]
pub struct AttachedPolicy {
    pub policy: Arc<RoutePolicy>,
    /// The route's timeouts and retries with the policy's overrides; `None`: the route's own.
    pub upstream: Option<Arc<UpstreamSettings>>,
}

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub port: u16,
    pub protocol: ListenerProtocol,
    pub hostname: Option<String>,
    pub tls: Option<ListenerTls>,
    pub https_redirect: Option<HttpsRedirect>,
    pub routes: RouteTable,
    /// By route id ([`Route::id`]): the policy of each route with one.
    pub policies: Vec<Option<AttachedPolicy>>,
}

impl Listener {
    pub fn policy(&self, route: &Route) -> Option<&AttachedPolicy> {
        self.policies.get(route.id).and_then(Option::as_ref)
    }
}

#[derive(Debug)]
pub struct Snapshot {
    /// 0 for the empty snapshot before the first load, then 1, 2, ...
    pub version: u64,
    /// `namespace/name` of the ApiGateway.
    pub gateway: String,
    /// Its namespace, the default of its references.
    pub namespace: String,
    pub listeners: Vec<Listener>,
    /// The routes served, in declaration order.
    pub routes: Vec<Arc<Route>>,
    /// Objects left out: routes dropped, certificates not loaded.
    pub errors: Vec<ConfigIssue>,
    /// Settings accepted but not (yet) acted on.
    pub warnings: Vec<ConfigIssue>,
    pub client: ClientSettings,
    /// Mesh mTLS to the backends (ApiGateway `mesh.mode: Istio`); `None`: plain.
    pub mesh: Option<crate::mesh::MeshPlan>,
    /// `telemetry.tracing`; `None`: no traces.
    pub tracing: Option<crate::telemetry::TraceSettings>,
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            gateway: String::new(),
            namespace: String::new(),
            listeners: Vec::new(),
            routes: Vec::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            client: ClientSettings::default(),
            mesh: None,
            tracing: None,
        }
    }

    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// What `/config` shows: everything but key material.
    pub fn summary(&self, bound: &[BoundListener]) -> Value {
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "name": l.name,
                    "port": l.port,
                    "address": bound.iter().find(|b| b.name == l.name).map(|b| b.address.to_string()),
                    "protocol": format!("{:?}", l.protocol),
                    "hostname": l.hostname,
                    "httpsRedirect": l.https_redirect.map(|r| json!({"port": r.port, "statusCode": r.status.as_u16()})),
                    "certificates": l.tls.as_ref().map(|t| &t.certs.summary),
                    "routes": l.routes.attached,
                    "policies": self.routes.iter().filter_map(|r| {
                        l.policy(r).map(|p| (r.name.clone(), json!(p.policy.sources)))
                    }).collect::<serde_json::Map<String, Value>>(),
                })
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "hostnames": r.hostnames,
                    "listeners": r.listeners,
                    "matches": r.matches.iter().map(|m| {
                        let path = match &m.path {
                            PathRule::Exact(p) => format!("Exact {p}"),
                            PathRule::Prefix(p) => format!("PathPrefix {}", if p.is_empty() { "/" } else { p }),
                            PathRule::Regex(re) => format!("RegularExpression {}", re.as_str()),
                        };
                        json!({
                            "path": path,
                            "method": m.method.as_ref().map(|m| m.as_str()),
                            "headers": m.headers.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
                            "queryParams": m.query.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
                        })
                    }).collect::<Vec<_>>(),
                    "filters": r.filters,
                    "timeoutMs": r.upstream.timeout.map(|t| t.as_millis() as u64),
                    "backends": r.backends.iter().map(|b| json!({
                        "name": b.name,
                        "weight": b.weight,
                        "endpoints": b.endpoints.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "version": self.version,
            "gateway": self.gateway,
            "listeners": listeners,
            "routes": routes,
            "mesh": self.mesh.as_ref().map(crate::mesh::MeshPlan::summary),
            "errors": self.errors,
            "warnings": self.warnings,
        })
    }
}

fn gateway_name(gw: &ApiGateway) -> String {
    format!(
        "{}/{}",
        namespace_of(&gw.metadata),
        gw.metadata.name.as_deref().unwrap_or("")
    )
}

/// The ApiGateway to serve: the one named, or the only one present.
pub fn select_gateway<'a>(
    manifests: &'a Manifests,
    selector: Option<&GatewayRef>,
) -> Result<&'a ApiGateway, Error> {
    let all = || {
        manifests
            .gateways
            .iter()
            .map(gateway_name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let candidates: Vec<&ApiGateway> = manifests
        .gateways
        .iter()
        .filter(|gw| {
            selector.is_none_or(|s| {
                gw.metadata.name.as_deref() == Some(s.name.as_str())
                    && s.namespace
                        .as_deref()
                        .is_none_or(|ns| ns == namespace_of(&gw.metadata))
            })
        })
        .collect();
    match (candidates.as_slice(), selector) {
        ([gw], _) => Ok(gw),
        ([], None) => Err(Error::Config("no ApiGateway found in the manifests".into())),
        ([], Some(s)) => Err(Error::Config(format!(
            "ApiGateway {}{} not found (found: {})",
            s.namespace
                .as_deref()
                .map(|ns| format!("{ns}/"))
                .unwrap_or_default(),
            s.name,
            all()
        ))),
        (_, None) => Err(Error::Config(format!(
            "{} ApiGateways found ({}); choose one with --gateway NAMESPACE/NAME",
            candidates.len(),
            all()
        ))),
        (_, Some(_)) => Err(Error::Config(format!(
            "several ApiGateways match; use NAMESPACE/NAME (found: {})",
            all()
        ))),
    }
}

fn duration_or(
    value: Option<&meshgate_crds::Duration>,
    default: Duration,
    what: &str,
    errors: &mut Vec<ConfigIssue>,
) -> Duration {
    match value.map(|d| d.to_std()) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errors.push(ConfigIssue::new(
                "gateway",
                format!("clientTraffic.{what}: {e}; using {default:?}"),
            ));
            default
        }
    }
}

/// Compiles the selected ApiGateway of `manifests` into snapshot number `version`.
pub fn compile(
    manifests: &Manifests,
    selector: Option<&GatewayRef>,
    version: u64,
    metrics: &Metrics,
    policy: &PolicyRuntime,
) -> Result<Snapshot, Error> {
    compile_next(
        &Snapshot::empty(),
        manifests,
        selector,
        version,
        metrics,
        policy,
    )
}

/// [`compile`], taking over the routes of `previous` that did not change
/// (see [`reuse`]).
pub fn compile_next(
    previous: &Snapshot,
    manifests: &Manifests,
    selector: Option<&GatewayRef>,
    version: u64,
    metrics: &Metrics,
    policy: &PolicyRuntime,
) -> Result<Snapshot, Error> {
    let gw = select_gateway(manifests, selector)?;
    let namespace = namespace_of(&gw.metadata);
    let spec = &gw.spec;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();

    // Gateway-wide settings.
    let mut client = ClientSettings::default();
    if let Some(ct) = &spec.client_traffic {
        client.header_timeout = duration_or(
            ct.request_header_timeout.as_ref(),
            client.header_timeout,
            "requestHeaderTimeout",
            &mut errors,
        );
        if let Some(n) = ct.max_header_bytes.and_then(|n| usize::try_from(n).ok()) {
            client.max_header_bytes = n.max(1024);
        }
        if let Some(n) = ct
            .max_concurrent_streams
            .and_then(|n| u32::try_from(n).ok())
        {
            client.max_concurrent_streams = n.max(1);
        }
        client.access_log = ct.access_log.unwrap_or(true);
        client.idle_timeout = duration_or(
            ct.idle_timeout.as_ref(),
            client.idle_timeout,
            "idleTimeout",
            &mut errors,
        );
        client.num_trusted_hops = ct
            .num_trusted_hops
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        client.max_connections = ct
            .max_connections
            .and_then(|n| usize::try_from(n).ok())
            .map(|n| n.max(1));
    }

    // Listeners.
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    let mut listeners = Vec::with_capacity(spec.listeners.len());
    if spec.listeners.is_empty() {
        return Err(Error::Config(format!(
            "ApiGateway {}: no listeners",
            gateway_name(gw)
        )));
    }
    for l in &spec.listeners {
        let object = format!("listener/{}", l.name);
        let fatal = |msg: String| Error::Config(format!("{object}: {msg}"));
        let port = u16::try_from(l.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| fatal(format!("invalid port {}", l.port)))?;
        if !names.insert(l.name.as_str()) {
            return Err(fatal("duplicate listener name".into()));
        }
        if !ports.insert(port) {
            return Err(fatal(format!("port {port} is used by another listener")));
        }
        let tls = match (l.protocol, &l.tls) {
            (ListenerProtocol::HTTP, Some(_)) => {
                return Err(fatal("tls is only allowed on HTTPS listeners".into()))
            }
            (ListenerProtocol::HTTP, None) => None,
            (ListenerProtocol::HTTPS, None) => {
                return Err(fatal("an HTTPS listener needs tls.certificateRefs".into()))
            }
            (ListenerProtocol::HTTPS, Some(t)) => {
                let mut certs = CertStore::default();
                for r in &t.certificate_refs {
                    let ns = r.namespace.as_deref().unwrap_or(namespace);
                    let secret_name = format!("{ns}/{}", r.name);
                    let kind_ok = r.group.as_deref().unwrap_or("").is_empty()
                        && r.kind.as_deref().unwrap_or("Secret") == "Secret";
                    let loaded = if !kind_ok {
                        Err("only core Secrets are supported as certificateRefs".to_string())
                    } else {
                        manifests
                            .secrets
                            .iter()
                            .find(|s| {
                                s.metadata.name.as_deref() == Some(r.name.as_str())
                                    && namespace_of(&s.metadata) == ns
                            })
                            .ok_or_else(|| "not found".to_string())
                            .and_then(tls::load_secret)
                    };
                    match loaded {
                        Ok((key, names)) => certs.add(secret_name, key, names),
                        Err(e) => errors.push(ConfigIssue::new(
                            object.clone(),
                            format!("certificate Secret {secret_name}: {e}"),
                        )),
                    }
                }
                if certs.is_empty() {
                    errors.push(ConfigIssue::new(
                        object.clone(),
                        "no usable certificate: TLS handshakes will fail",
                    ));
                }
                Some(ListenerTls {
                    certs,
                    tls13_only: t.min_version == Some(TlsVersion::V1_3),
                })
            }
        };
        let https_redirect = match &l.https_redirect {
            None => None,
            Some(_) if l.protocol == ListenerProtocol::HTTPS => {
                return Err(fatal(
                    "httpsRedirect is only allowed on HTTP listeners".into(),
                ))
            }
            Some(r) => {
                let port = u16::try_from(r.port.unwrap_or(443))
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| fatal("invalid httpsRedirect.port".into()))?;
                let status = r.status_code.unwrap_or(301);
                if ![301, 302, 307, 308].contains(&status) {
                    return Err(fatal(format!(
                        "httpsRedirect.statusCode {status} is not one of 301, 302, 307, 308"
                    )));
                }
                let status =
                    StatusCode::from_u16(status as u16).map_err(|e| fatal(e.to_string()))?;
                Some(HttpsRedirect { port, status })
            }
        };
        listeners.push(Listener {
            name: l.name.clone(),
            port,
            protocol: l.protocol,
            hostname: l.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
            tls,
            https_redirect,
            routes: RouteTable::default(),
            policies: Vec::new(),
        });
    }

    // Routes.
    let services = ServiceIndex::new(manifests);
    let listener_names: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
    let cx = routes::Context {
        namespace,
        listener_names: &listener_names,
        services: &services,
        metrics,
        loads: &policy.loads,
    };
    let reuse = Reuse::new(previous, namespace, &listener_names);
    let mut seen = HashSet::new();
    let mut compiled: Vec<Arc<Route>> = Vec::with_capacity(spec.routes.len());
    for (id, r) in spec.routes.iter().enumerate() {
        if !seen.insert(r.name.as_str()) {
            let object = format!("route/{}", r.name);
            errors.push(ConfigIssue::new(object, "duplicate route name; left out"));
            continue;
        }
        // `routes::compile` has no warnings yet; a reused route would need to
        // carry its own once it has.
        if let Some(route) = reuse.route(id, r, &cx) {
            compiled.push(route);
            continue;
        }
        let object = format!("route/{}", r.name);
        match routes::compile(r, &cx) {
            Ok((mut route, route_warnings)) => {
                route.id = id;
                warnings.extend(
                    route_warnings
                        .into_iter()
                        .map(|w| ConfigIssue::new(object.clone(), w)),
                );
                compiled.push(Arc::new(route));
            }
            Err(e) => errors.push(ConfigIssue::new(object, e)),
        }
    }
    for l in &mut listeners {
        l.routes = RouteTable::build(&l.name, l.hostname.as_deref(), &compiled);
    }
    let attached: HashSet<&str> = listeners
        .iter()
        .flat_map(|l| l.routes.attached.iter().map(String::as_str))
        .collect();
    compiled.retain(|r| {
        let keep = attached.contains(r.name.as_str());
        if !keep {
            errors.push(ConfigIssue::new(
                format!("route/{}", r.name),
                "no listener accepts any of its hostnames; left out",
            ));
        }
        keep
    });

    attach_policies(
        manifests,
        gw,
        &mut listeners,
        &compiled,
        policy,
        &mut errors,
    );

    let (mesh, mesh_errors) = crate::mesh::compile(spec.mesh.as_ref(), namespace, &compiled);
    errors.extend(
        mesh_errors
            .into_iter()
            .map(|e| ConfigIssue::new("gateway", e)),
    );

    let tracing = match spec.telemetry.as_ref().and_then(|t| t.tracing.as_ref()) {
        None => None,
        Some(t) => match crate::telemetry::TraceSettings::compile(t) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(ConfigIssue::new(
                    "gateway",
                    format!("telemetry.tracing: {e}; no traces"),
                ));
                None
            }
        },
    };

    Ok(Snapshot {
        tracing,
        version,
        gateway: gateway_name(gw),
        namespace: namespace.to_string(),
        listeners,
        routes: compiled,
        errors,
        warnings,
        client,
        mesh,
    })
}

/// Compiles the effective policy of every (listener, route) pair into
/// `listener.policies`. Pairs with the same effective policy and rate-limit
/// scope share one compiled policy (and so its buckets).
fn attach_policies(
    manifests: &Manifests,
    gw: &ApiGateway,
    listeners: &mut [Listener],
    routes: &[Arc<Route>],
    runtime: &PolicyRuntime,
    errors: &mut Vec<ConfigIssue>,
) {
    let namespace = namespace_of(&gw.metadata);
    let gw_name = gw.metadata.name.as_deref().unwrap_or_default();
    let policies: Vec<meshgate_crds::ApiPolicy> = manifests
        .policies
        .iter()
        .filter(|p| namespace_of(&p.metadata) == namespace)
        .cloned()
        .collect();
    if policies.is_empty() {
        return;
    }
    let secrets = SecretLookup::new(manifests);
    let cx = PolicyContext {
        namespace,
        secrets: &secrets,
        runtime,
    };
    let mut compiled: HashMap<String, Arc<RoutePolicy>> = HashMap::new();
    let mut reported = HashSet::new();
    let size = routes.iter().map(|r| r.id + 1).max().unwrap_or(0);
    for l in listeners.iter_mut() {
        l.policies = (0..size).map(|_| None).collect();
        for route in routes
            .iter()
            .filter(|r| l.routes.attached.contains(&r.name))
        {
            let effective = match attachment::effective(&policies, gw_name, &l.name, &route.name) {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => {
                    errors.push(ConfigIssue::new(format!("route/{}", route.name), e));
                    continue;
                }
            };
            let scope = rate_limit_scope(&policies, gw_name, &l.name, &route.name);
            let key = format!(
                "{}|{scope}",
                serde_json::to_string(&effective.spec).unwrap_or_default()
            );
            let policy = compiled
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(
                        RoutePolicy::compile(&effective, &scope, &cx).unwrap_or_else(|why| {
                            if reported.insert(effective.sources.clone()) {
                                errors.push(ConfigIssue::new(
                                    format!("policy/{}", effective.sources.join("+")),
                                    format!("{why}; the routes it applies to answer 500 until it is fixed"),
                                ));
                            }
                            RoutePolicy::broken(effective.sources.clone(), why)
                        }),
                    )
                })
                .clone();
            let upstream = if policy.timeouts.is_some()
                || policy.retry.is_some()
                || policy.backend_traffic.is_some()
            {
                let spec = gw.spec.routes.get(route.id);
                let timeouts = policy
                    .timeouts
                    .as_ref()
                    .or(spec.and_then(|s| s.timeouts.as_ref()));
                let retry = policy
                    .retry
                    .as_ref()
                    .or(spec.and_then(|s| s.retry.as_ref()));
                let compiled =
                    UpstreamSettings::compile(timeouts, retry).and_then(|u| {
                        match &policy.backend_traffic {
                            Some(traffic) => {
                                u.with_backend_policy(traffic, &route.backends, &runtime.health)
                            }
                            None => Ok(u),
                        }
                    });
                match compiled {
                    Ok(u) => Some(Arc::new(u)),
                    Err(e) => {
                        errors.push(ConfigIssue::new(
                            format!("policy/{}", policy.sources.join("+")),
                            format!(
                                "upstream settings for route {}: {e}; using the route's own",
                                route.name
                            ),
                        ));
                        None
                    }
                }
            } else {
                None
            };
            l.policies[route.id] = Some(AttachedPolicy { policy, upstream });
        }
    }
}

/// Where the rate limit of a pair's effective policy is attached: the most
/// specific winning policy that sets `rateLimit`, and its target. A `Route`-keyed
/// limit on the whole gateway is then one bucket for all its routes.
fn rate_limit_scope(
    policies: &[meshgate_crds::ApiPolicy],
    gw: &str,
    listener: &str,
    route: &str,
) -> String {
    let targets = [
        (Some(route), "route"),
        (Some(listener), "listener"),
        (None, "gateway"),
    ];
    for (section, level) in targets {
        let target = (gw.to_string(), section.map(str::to_string));
        if let Some(p) =
            attachment::winner(policies, &target).filter(|p| p.spec.rate_limit.is_some())
        {
            return format!(
                "{}/{}@{level}/{}",
                namespace_of(&p.metadata),
                p.metadata.name.as_deref().unwrap_or_default(),
                section.unwrap_or(gw)
            );
        }
    }
    String::new()
}

#[cfg(test)]
mod tests;
