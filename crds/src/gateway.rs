//! The ApiGateway resource: one edge gateway, its listeners, routes, mesh
//! settings and the infrastructure it runs on.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, SecretObjectReference};
use crate::route::Route;

/// Desired state of an ApiGateway.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "meshgate.io",
    version = "v1alpha1",
    kind = "ApiGateway",
    plural = "apigateways",
    shortname = "agw",
    category = "meshgate",
    namespaced,
    doc = "An edge gateway: listeners, routes, mesh identity and the infrastructure it runs on.",
    status = "ApiGatewayStatus",
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".status.addresses[0].value"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApiGatewaySpec {
    /// Where the gateway accepts traffic.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(l, self.exists_one(m, m.name == l.name))").message("listener names must be unique"))]
    #[x_kube(validation = Rule::new("self.all(l, self.exists_one(m, m.port == l.port))").message("listener ports must be unique; serve several hostnames on one HTTPS port with several certificateRefs"))]
    pub listeners: Vec<Listener>,
    /// Routes served by the listeners.
    // A list-map keyed on `name`: the API server refuses duplicate names itself
    // ("Duplicate value"), in linear time. The CEL rule it replaces
    // (`self.all(r, self.exists_one(...))`) was O(n²) and made a PATCH of a
    // 226-route gateway take seconds. Server-side apply also merges routes by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub routes: Vec<Route>,
    /// Mesh integration: the identity the gateway presents upstream and the
    /// identities it expects of backends. Absent: backends are reached over
    /// plain connections; present (even empty): Istio mTLS with the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<Mesh>,
    /// How clients are treated on every listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_traffic: Option<ClientTraffic>,
    /// Pods, Service and scaling of the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<Infrastructure>,
    /// Traces the gateway sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
}

/// Telemetry settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    /// OpenTelemetry traces; none are made when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// OTLP protocols.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// Request tracing: one server span per request with child spans for policy
/// checks and upstream attempts, exported over OTLP; W3C `traceparent` sent upstream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// OTLP endpoint, e.g. `http://otel-collector.observability:4317` (gRPC) or
    /// `http://otel-collector.observability:4318/v1/traces` (HTTP).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https']").message("endpoint must be an http:// or https:// URL"))]
    pub endpoint: String,
    /// Grpc (default) or HttpProtobuf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    /// Percentage of new traces sampled (0-100, default 1). A trusted client
    /// trace context keeps its own sampling decision (parent-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub sampling_percent: Option<f64>,
    /// Continue the trace of a client's `traceparent` (or B3) headers. Off by
    /// default: at the edge, a client's context is not trusted and every
    /// request starts a new trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_client_trace_context: Option<bool>,
}

/// Listener protocols.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum ListenerProtocol {
    /// Plain HTTP/1.1 (and h2c prior knowledge).
    #[default]
    HTTP,
    /// TLS-terminated HTTP/1.1 and HTTP/2 (ALPN).
    HTTPS,
}

/// A port the gateway listens on (Gateway API `Listener`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.protocol != 'HTTPS' || (has(self.tls) && size(self.tls.certificateRefs) > 0)").message("an HTTPS listener needs tls.certificateRefs"))]
#[x_kube(validation = Rule::new("self.protocol != 'HTTP' || !has(self.tls)").message("tls is only allowed on HTTPS listeners"))]
#[x_kube(validation = Rule::new("self.protocol != 'HTTPS' || !has(self.httpsRedirect)").message("httpsRedirect is only allowed on HTTP listeners"))]
pub struct Listener {
    /// Unique name; ApiPolicy `sectionName` and route `listeners` refer to it.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Port the gateway Service exposes.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP or HTTPS.
    pub protocol: ListenerProtocol,
    /// Hostname this listener serves (exact or `*.` wildcard); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub hostname: Option<String>,
    /// TLS settings of an HTTPS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Answer every request on this HTTP listener with a redirect to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<HttpsRedirect>,
}

/// TLS termination settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `kubernetes.io/tls` Secrets; the certificate is chosen by SNI among their
    /// names (wildcards included), and the first one is the default.
    #[schemars(length(min = 1, max = 64))]
    pub certificate_refs: Vec<SecretObjectReference>,
    /// Lowest TLS version accepted: `1.2` (default) or `1.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
}

/// TLS protocol versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// Redirect plain HTTP to HTTPS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpsRedirect {
    /// Port in the Location header; default 443 (omitted from the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// 301 (default) or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in [301, 302, 307, 308]").message("statusCode must be one of 301, 302, 307, 308"))]
    pub status_code: Option<i32>,
}

/// Mesh modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MeshMode {
    /// Originate Istio mTLS to backends.
    #[default]
    Istio,
    /// Plain connections to backends.
    None,
}

/// How the gateway obtains its workload certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum IdentitySource {
    /// The proxy sends a CSR to the Istio CA with its service-account token.
    #[default]
    IstioCA,
    /// An istio-proxy sidecar writes the certificate files into a shared volume.
    SidecarFiles,
}

/// Mesh integration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'Istio' || (!has(self.identity) && !has(self.backends))").message("identity and backends are only allowed when mode is Istio"))]
pub struct Mesh {
    /// Istio (default) or None.
    #[serde(default)]
    pub mode: MeshMode,
    /// SPIFFE trust domain; default `cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[a-z0-9._-]+$"))]
    pub trust_domain: Option<String>,
    /// Where the workload certificate comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<MeshIdentity>,
    /// Identities expected of backends, and how to reach them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub backends: Vec<MeshBackend>,
}

/// The gateway's own workload identity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.source == 'IstioCA' || !has(self.istioCA)").message("istioCA settings are only allowed with source IstioCA"))]
pub struct MeshIdentity {
    /// IstioCA (default) or SidecarFiles.
    #[serde(default)]
    pub source: IdentitySource,
    /// Istio CA client settings.
    #[serde(default, rename = "istioCA", skip_serializing_if = "Option::is_none")]
    pub istio_ca: Option<IstioCa>,
}

/// Istio CA client settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioCa {
    /// CA address; default `istiod.istio-system.svc:15012`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub address: Option<String>,
    /// Istio cluster id sent as `clusterid`; default `Kubernetes`.
    #[serde(default, rename = "clusterID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub cluster_id: Option<String>,
    /// Requested certificate lifetime; default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_ttl: Option<Duration>,
}

/// How a backend's pods are reached in the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DataplaneMode {
    /// mTLS straight to the pod's port, terminated by its sidecar.
    #[default]
    Sidecar,
    /// HBONE (HTTP/2 CONNECT over mTLS to port 15008), terminated by ztunnel.
    Ambient,
}

/// What the gateway expects of one backend Service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshBackend {
    /// Service name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Service namespace; default the ApiGateway's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Service accounts whose SPIFFE identities the backend pods may present.
    /// When empty, any identity in the backend's namespace and trust domain is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub service_accounts: Vec<String>,
    /// Sidecar (default) or Ambient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_mode: Option<DataplaneMode>,
}

/// Client-facing connection settings for every listener (Envoy Gateway ClientTrafficPolicy names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientTraffic {
    /// Number of trusted proxies in front of the gateway whose X-Forwarded-For
    /// entries are believed; default 0 (the TCP peer is the client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub num_trusted_hops: Option<i32>,
    /// Time allowed to receive the request headers (slowloris guard); default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_timeout: Option<Duration>,
    /// Idle connection timeout, also the longest wait for more of a request
    /// body (a stalled body is answered 408); default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Maximum total request header bytes; default 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1048576))]
    pub max_header_bytes: Option<i32>,
    /// Maximum concurrent HTTP/2 streams per connection; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub max_concurrent_streams: Option<i32>,
    /// Maximum open client connections per proxy; default unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub max_connections: Option<i32>,
    /// Write a JSON access log line per request; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,
}

/// Kubernetes objects the operator creates for the gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))").message("set either replicas or autoscaling, not both"))]
pub struct Infrastructure {
    /// Fixed replica count; default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// HorizontalPodAutoscaler settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Resources of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The gateway Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSettings>,
    /// Extra labels for the proxy pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations for the proxy pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Node selector for the proxy pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the proxy pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// PodDisruptionBudget for the proxy pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<PodDisruptionBudgetSettings>,
}

/// HorizontalPodAutoscaler settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct Autoscaling {
    /// Lower bound.
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Upper bound.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target average CPU utilisation in percent; default 80.
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,
}

/// Service types for the gateway Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    #[default]
    LoadBalancer,
}

/// The gateway Service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// Service type; default LoadBalancer.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ServiceType>,
    /// Annotations for the Service (cloud load balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `Local` keeps the client source address; default `Cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
}

/// Service externalTrafficPolicy values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ExternalTrafficPolicy {
    Cluster,
    Local,
}

/// PodDisruptionBudget settings: one of minAvailable or maxUnavailable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.minAvailable) != has(self.maxUnavailable)").message("set exactly one of minAvailable or maxUnavailable"))]
pub struct PodDisruptionBudgetSettings {
    /// Pods that must stay available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_available: Option<i32>,
    /// Pods that may be unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_unavailable: Option<i32>,
}

/// Observed state of an ApiGateway, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiGatewayStatus {
    /// Accepted, ResolvedRefs, Programmed and Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Addresses the gateway is reachable at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    /// Per-listener status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerStatus>,
    /// Per-route status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteStatus>,
}

/// An address of the gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GatewayAddress {
    /// `IPAddress` or `Hostname`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The address.
    pub value: String,
}

/// Status of one listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// Listener name.
    pub name: String,
    /// Routes attached to this listener.
    pub attached_routes: i32,
    /// Accepted, ResolvedRefs (certificates), Programmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Status of one route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RouteStatus {
    /// Route name.
    pub name: String,
    /// Accepted, ResolvedRefs (backends).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
