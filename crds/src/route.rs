//! Routes of an ApiGateway, modelled on the Gateway API HTTPRoute rule.
//!
//! The same types describe routes declared inline in an ApiGateway and, later,
//! routes taken from Gateway API HTTPRoutes: the proxy's route model never
//! depends on where a route was declared.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, HttpHeader};

/// One route: which requests it matches, how it changes them, and where it sends them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.backendRefs) || size(self.backendRefs) == 0 || self.backendRefs.exists(b, !has(b.weight) || b.weight > 0)").message("backendRefs: at least one backend must have a weight above 0"))]
#[x_kube(validation = Rule::new("(has(self.backendRefs) && size(self.backendRefs) > 0) || (has(self.filters) && self.filters.exists(f, f.type == 'RequestRedirect'))").message("a route needs backendRefs or a RequestRedirect filter"))]
#[x_kube(validation = Rule::new("!(has(self.backendRefs) && size(self.backendRefs) > 0 && has(self.filters) && self.filters.exists(f, f.type == 'RequestRedirect'))").message("a route with a RequestRedirect filter cannot also have backendRefs"))]
pub struct Route {
    /// Unique name of the route within the ApiGateway; ApiPolicy `sectionName` refers to it.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Hostnames this route serves (exact, or `*.` wildcard). Empty means every
    /// hostname of the listeners it attaches to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 253),
            pattern(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        )
    )]
    pub hostnames: Vec<String>,
    /// Names of the listeners this route attaches to. Empty means all listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63)))]
    pub listeners: Vec<String>,
    /// Conditions a request must meet; any one match selects the route. Empty
    /// means a `PathPrefix /` match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<RouteMatch>,
    /// Filters applied in order to matching requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub filters: Vec<RouteFilter>,
    /// Backends that receive the traffic, split by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backend_refs: Vec<BackendRef>,
    /// Request timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    /// Retry policy for failed upstream attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// A request match: every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Path condition; default `PathPrefix /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// HTTP method condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Header conditions (all must hold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions (all must hold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<QueryParamMatch>,
}

/// How a path is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// The path starts with the value on a `/` segment boundary.
    #[default]
    PathPrefix,
    /// The path matches the (RE2-style, anchored) regular expression.
    RegularExpression,
}

/// A path condition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("self.type == 'RegularExpression' || self.value.startsWith('/')").message("path value must start with '/'"))]
#[x_kube(validation = Rule::new("self.type == 'RegularExpression' || !(self.value.contains('/./') || self.value.contains('/../') || self.value.endsWith('/.') || self.value.endsWith('/..'))").message("path value must not contain '.' or '..' segments"))]
pub struct PathMatch {
    /// Exact, PathPrefix (default) or RegularExpression.
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    /// The path or pattern.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// HTTP methods a route can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    CONNECT,
    OPTIONS,
    TRACE,
    PATCH,
}

/// How a header or query parameter value is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ValueMatchType {
    /// Equal to the value.
    #[default]
    Exact,
    /// Matches the (anchored) regular expression.
    RegularExpression,
}

/// A header condition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
pub struct HeaderMatch {
    /// Exact (default) or RegularExpression.
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    /// Header name, compared case-insensitively.
    #[schemars(length(min = 1, max = 256), pattern(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"))]
    pub name: String,
    /// Value or pattern.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A query parameter condition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
pub struct QueryParamMatch {
    /// Exact (default) or RegularExpression.
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    /// Parameter name, compared exactly.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Value or pattern.
    #[schemars(length(max = 1024))]
    pub value: String,
}

/// The filter kinds (Gateway API names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RouteFilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    URLRewrite,
    RequestRedirect,
    RequestMirror,
}

/// A filter: `type` names the kind and the field of the same name holds its settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.type == 'RequestHeaderModifier') == has(self.requestHeaderModifier)").message("requestHeaderModifier must be set exactly when type is RequestHeaderModifier"))]
#[x_kube(validation = Rule::new("(self.type == 'ResponseHeaderModifier') == has(self.responseHeaderModifier)").message("responseHeaderModifier must be set exactly when type is ResponseHeaderModifier"))]
#[x_kube(validation = Rule::new("(self.type == 'URLRewrite') == has(self.urlRewrite)").message("urlRewrite must be set exactly when type is URLRewrite"))]
#[x_kube(validation = Rule::new("(self.type == 'RequestRedirect') == has(self.requestRedirect)").message("requestRedirect must be set exactly when type is RequestRedirect"))]
#[x_kube(validation = Rule::new("(self.type == 'RequestMirror') == has(self.requestMirror)").message("requestMirror must be set exactly when type is RequestMirror"))]
pub struct RouteFilter {
    /// Which filter this is.
    #[serde(rename = "type")]
    pub kind: RouteFilterType,
    /// Settings for `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// Settings for `ResponseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// Settings for `URLRewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// Settings for `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// Settings for `RequestMirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
}

/// Adds, sets and removes headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
pub struct HeaderModifier {
    /// Headers to set, replacing any existing value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub set: Vec<HttpHeader>,
    /// Headers to add (appended to existing values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub add: Vec<HttpHeader>,
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    pub remove: Vec<String>,
}

/// How a path is rewritten or redirected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PathModifierType {
    /// Replace the whole path with `replaceFullPath`.
    ReplaceFullPath,
    /// Replace the matched `PathPrefix` with `replacePrefixMatch`.
    ReplacePrefixMatch,
}

/// A path modification.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.type == 'ReplaceFullPath') == has(self.replaceFullPath)").message("replaceFullPath must be set exactly when type is ReplaceFullPath"))]
#[x_kube(validation = Rule::new("(self.type == 'ReplacePrefixMatch') == has(self.replacePrefixMatch)").message("replacePrefixMatch must be set exactly when type is ReplacePrefixMatch"))]
pub struct PathModifier {
    /// ReplaceFullPath or ReplacePrefixMatch.
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    /// The new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), pattern(r"^/[^\r\n]*$"))]
    pub replace_full_path: Option<String>,
    /// The replacement for the matched prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), pattern(r"^/[^\r\n]*$"))]
    pub replace_prefix_match: Option<String>,
}

/// Rewrites the request before it is sent upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
pub struct UrlRewrite {
    /// New Host header value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub hostname: Option<String>,
    /// New path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// Redirect schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RedirectScheme {
    Http,
    Https,
}

/// Answers the request with a redirect instead of proxying it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// Scheme of the Location; default the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<RedirectScheme>,
    /// Host of the Location; default the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub hostname: Option<String>,
    /// Path of the Location; default the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// Port of the Location; default the scheme's well-known port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Status code: 301, 302 (default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in [301, 302, 303, 307, 308]").message("statusCode must be one of 301, 302, 303, 307, 308"))]
    pub status_code: Option<i32>,
}

/// Sends a copy of each request to another backend; its answer is ignored.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    /// The backend that receives the copies.
    pub backend_ref: BackendObjectReference,
    /// Percentage of requests mirrored (0-100); default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<i32>,
}

/// A Service and port (Gateway API `BackendObjectReference`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
pub struct BackendObjectReference {
    /// Service name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Service; defaults to the ApiGateway's. Another namespace
    /// must permit the reference with a ReferenceGrant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// A weighted backend (Gateway API `HTTPBackendRef`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
pub struct BackendRef {
    /// Service name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Service; defaults to the ApiGateway's. Another namespace
    /// must permit the reference with a ReferenceGrant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Relative share of traffic; default 1. 0 sends no traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: Option<i32>,
}

impl BackendRef {
    /// The effective weight (Gateway API default 1).
    pub fn weight(&self) -> u32 {
        self.weight.map_or(1, |w| w.max(0) as u32)
    }
}

/// Route timeouts (Gateway API `HTTPRouteTimeouts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteTimeouts {
    /// Whole request, from the first byte received to the last byte of the response
    /// headers sent, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// One upstream attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<Duration>,
}

/// Conditions that make an attempt retriable (Envoy Gateway trigger names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryTrigger {
    /// Any 5xx answer, connect failure or reset.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503 or 504.
    GatewayError,
    /// The upstream connection reset before the response started.
    Reset,
    /// The upstream connection could not be established.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// One of `httpStatusCodes`.
    RetriableStatusCodes,
}

/// Which failures are retried.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryOn {
    /// Failure classes to retry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub triggers: Vec<RetryTrigger>,
    /// Status codes to retry (with the `retriable-status-codes` trigger, or alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 100, max = 599)))]
    pub http_status_codes: Vec<i32>,
}

/// Exponential backoff between attempts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// First wait; default 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_interval: Option<Duration>,
    /// Longest wait; default 10 × baseInterval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

/// Caps retries to a share of live requests, so retries cannot amplify an outage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed as a percentage of active requests; default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<i32>,
    /// Retries always allowed regardless of the percentage; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_retry_concurrency: Option<i32>,
}

/// Retry policy. Requests whose body was already sent upstream are retried only
/// when the method is idempotent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Retries after the first attempt; default 2, 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub attempts: Option<i32>,
    /// What is retried; default connect-failure, refused-stream and gateway-error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<RetryOn>,
    /// Wait between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Limit on concurrent retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
    /// Timeout of each attempt; default the route's backendRequest timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_attempt_timeout: Option<Duration>,
}
