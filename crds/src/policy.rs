//! The ApiPolicy resource: cross-cutting API policy attached to an ApiGateway,
//! one of its listeners, or one of its routes (modelled on Envoy Gateway's
//! SecurityPolicy, BackendTrafficPolicy and ClientTrafficPolicy).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretObjectReference;
pub use crate::route::{Retry, RouteTimeouts};
pub use crate::upstream::{CircuitBreaker, HealthCheck, LoadBalancer};

/// Desired state of an ApiPolicy.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "meshgate.io",
    version = "v1alpha1",
    kind = "ApiPolicy",
    plural = "apipolicies",
    shortname = "apol",
    category = "meshgate",
    namespaced,
    doc = "API policy (authentication, authorization, rate limits, CORS, IP rules, limits, timeouts, retries, load balancing, circuit breaking, health checks) attached to an ApiGateway, a listener or a route.",
    status = "ApiPolicyStatus",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRefs[0].name"}"#,
    printcolumn = r#"{"name":"Section","type":"string","jsonPath":".spec.targetRefs[0].sectionName"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.ancestors[0].conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.authentication) || has(self.authorization) || has(self.rateLimit) || has(self.cors) || has(self.ipFilter) || has(self.requestLimits) || has(self.timeouts) || has(self.retry) || has(self.loadBalancer) || has(self.circuitBreaker) || has(self.healthCheck)").message("an ApiPolicy must set at least one policy (authentication, authorization, rateLimit, cors, ipFilter, requestLimits, timeouts, retry, loadBalancer, circuitBreaker or healthCheck)"))]
pub struct ApiPolicySpec {
    /// What the policy applies to: an ApiGateway, or one listener or route of it.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetReference>,
    /// How this policy combines with a less specific one (a route policy with a
    /// gateway policy). Absent: the more specific policy replaces the other.
    /// `JSONMerge`: fields are merged (RFC 7386), this policy's values winning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_type: Option<MergeType>,
    /// Who the caller is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// What the caller may do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// How often the caller may do it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Cross-origin resource sharing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Client address allow and deny lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_filter: Option<IpFilter>,
    /// Request size limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_limits: Option<RequestLimits>,
    /// Timeout overrides for the target's routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    /// Retry override for the target's routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// How an endpoint of each backend is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Limits on requests and retries in flight per backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Active health checks of the endpoints of each backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// Kinds a policy can target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PolicyTargetKind {
    #[default]
    ApiGateway,
}

/// A policy target (Gateway API `LocalPolicyTargetReferenceWithSectionName`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group; `meshgate.io`.
    #[serde(default = "default_group")]
    #[x_kube(validation = Rule::new("self == 'meshgate.io'").message("group must be meshgate.io"))]
    pub group: String,
    /// Kind of the target; `ApiGateway`.
    pub kind: PolicyTargetKind,
    /// Name of the ApiGateway in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// A listener or route name of that ApiGateway; the whole gateway when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub section_name: Option<String>,
}

fn default_group() -> String {
    crate::GROUP.to_string()
}

/// Merge strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MergeType {
    /// RFC 7386 JSON merge patch of this policy onto the less specific one.
    JSONMerge,
}

/// Authentication settings: any configured method that succeeds authenticates the request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jwt) || has(self.apiKey)").message("authentication needs jwt or apiKey"))]
pub struct Authentication {
    /// JSON Web Token validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
    /// API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,
}

/// JWT validation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.providers.all(p, self.providers.exists_one(q, q.name == p.name))").message("jwt provider names must be unique"))]
pub struct Jwt {
    /// Accepted token issuers.
    #[schemars(length(min = 1, max = 4))]
    pub providers: Vec<JwtProvider>,
    /// Let requests without a token through (a present but invalid token is still refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// One JWT issuer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.remoteJWKS), has(self.localJWKS)].filter(x, x).size() == 1").message("set exactly one of remoteJWKS or localJWKS"))]
pub struct JwtProvider {
    /// Provider name, used in authorization rules and metrics.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Required `iss` claim; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub issuer: Option<String>,
    /// Accepted `aud` values; any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 253)))]
    pub audiences: Vec<String>,
    /// JWKS fetched over HTTPS and cached.
    #[serde(
        default,
        rename = "remoteJWKS",
        skip_serializing_if = "Option::is_none"
    )]
    pub remote_jwks: Option<RemoteJwks>,
    /// JWKS given inline or in a Secret.
    #[serde(default, rename = "localJWKS", skip_serializing_if = "Option::is_none")]
    pub local_jwks: Option<LocalJwks>,
    /// Where the token is read from; default `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract_from: Option<JwtExtractor>,
    /// Claims copied into request headers for the backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claim_to_headers: Vec<ClaimToHeader>,
    /// Claims that must be present with one of the given values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub required_claims: Vec<ClaimRequirement>,
    /// Allowed clock skew for `exp` and `nbf`; default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<crate::common::Duration>,
}

/// A remote JWKS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteJwks {
    /// HTTPS URI of the key set.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() == 'https'").message("remoteJWKS.uri must be an https:// URL"))]
    pub uri: String,
    /// Refresh interval; default 5m. Unknown `kid`s also trigger a refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_duration: Option<crate::common::Duration>,
}

/// Sources of a local JWKS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum LocalJwksType {
    Inline,
    ValueRef,
}

/// A JWKS given inline or in a Secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.type == 'Inline') == has(self.inline)").message("inline must be set exactly when type is Inline"))]
#[x_kube(validation = Rule::new("(self.type == 'ValueRef') == has(self.valueRef)").message("valueRef must be set exactly when type is ValueRef"))]
pub struct LocalJwks {
    /// Inline or ValueRef.
    #[serde(rename = "type")]
    pub kind: LocalJwksType,
    /// The JWKS JSON document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub inline: Option<String>,
    /// A Secret whose key `jwks` holds the JWKS JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_ref: Option<SecretObjectReference>,
}

/// Where a token is looked for; the first one present is used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtExtractor {
    /// Headers, with an optional value prefix such as `Bearer `.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub headers: Vec<JwtHeaderSource>,
    /// Cookie names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4), inner(length(min = 1, max = 256)))]
    pub cookies: Vec<String>,
}

/// A header holding a token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtHeaderSource {
    /// Header name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Prefix stripped from the value, e.g. `Bearer `.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub value_prefix: Option<String>,
}

/// Copies a claim into a request header.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct ClaimToHeader {
    /// Header to set.
    #[schemars(length(min = 1, max = 256), pattern(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"))]
    pub header: String,
    /// Claim name; nested claims with dots (`realm.role`).
    #[schemars(length(min = 1, max = 253))]
    pub claim: String,
}

/// A claim and the values it may take.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
pub struct ClaimRequirement {
    /// Claim name; nested claims with dots.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Accepted values (a list claim matches when any element is accepted); any value when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 253)))]
    pub values: Vec<String>,
}

/// API keys kept in Secrets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    /// Secrets whose every data key is a consumer (client id) and value its API key.
    #[schemars(length(min = 1, max = 16))]
    pub credential_refs: Vec<SecretObjectReference>,
    /// Where the key is read from.
    #[schemars(length(min = 1, max = 4))]
    pub extract_from: Vec<ApiKeyExtractor>,
    /// Header that carries the consumer name to the backend.
    #[serde(
        default,
        rename = "forwardClientIDHeader",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 1, max = 256), pattern(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"))]
    pub forward_client_id_header: Option<String>,
}

/// Places an API key may be found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.headers) + size(self.params) > 0").message("extractFrom needs headers or params"))]
pub struct ApiKeyExtractor {
    /// Header names.
    #[serde(default)]
    #[schemars(length(max = 4), inner(length(min = 1, max = 256)))]
    pub headers: Vec<String>,
    /// Query parameter names.
    #[serde(default)]
    #[schemars(length(max = 4), inner(length(min = 1, max = 256)))]
    pub params: Vec<String>,
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AuthorizationAction {
    Allow,
    #[default]
    Deny,
}

/// Authorization: the first matching rule decides; when rules exist and none
/// matches, `defaultAction` (Deny) applies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// Ordered rules.
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<AuthorizationRule>,
    /// Decision when no rule matches; default Deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<AuthorizationAction>,
}

/// One authorization rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Rule name, reported in metrics and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Allow or Deny.
    pub action: AuthorizationAction,
    /// Who the rule applies to; every condition given must hold.
    pub principal: Principal,
}

/// A caller description.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.clientCIDRs) + size(self.consumers) + size(self.claims) > 0").message("principal needs clientCIDRs, consumers or claims"))]
pub struct Principal {
    /// Client address ranges (after trusted-hop X-Forwarded-For processing).
    #[serde(default, rename = "clientCIDRs")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("clientCIDRs must be CIDRs such as 10.0.0.0/8 or 2001:db8::/32"))]
    pub client_cidrs: Vec<String>,
    /// API key consumer names.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub consumers: Vec<String>,
    /// JWT claims and accepted values.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub claims: Vec<ClaimRequirement>,
}

/// Where rate-limit counters live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RateLimitType {
    /// Per proxy replica.
    #[default]
    Local,
    /// Shared by all replicas through Redis.
    Global,
}

/// Rate limiting with token buckets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.type == 'Global') == has(self.global)").message("global settings must be given exactly when type is Global"))]
pub struct RateLimit {
    /// Local (default) or Global.
    #[serde(rename = "type", default)]
    pub kind: RateLimitType,
    /// Limits; a request must pass all rules that apply to it.
    #[schemars(length(min = 1, max = 16))]
    pub rules: Vec<RateLimitRule>,
    /// Redis connection for Global limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalRateLimit>,
}

/// What a bucket is keyed by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RateLimitKeyType {
    /// One bucket per client address.
    #[default]
    ClientIP,
    /// One bucket per value of a header (`name`).
    Header,
    /// One bucket per value of a JWT claim (`name`).
    Claim,
    /// One bucket per API key consumer.
    Consumer,
    /// One bucket for all requests to the target.
    Route,
}

/// A rate-limit key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.type in ['Header', 'Claim']) == has(self.name)").message("key name is required for Header and Claim keys and not allowed otherwise"))]
pub struct RateLimitKey {
    /// ClientIP (default), Header, Claim, Consumer or Route.
    #[serde(rename = "type", default)]
    pub kind: RateLimitKeyType,
    /// Header or claim name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub name: Option<String>,
}

/// Rate-limit units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RateLimitUnit {
    #[default]
    Second,
    Minute,
    Hour,
}

/// `requests` per `unit`, with an optional burst above the steady rate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitValue {
    /// Requests allowed per unit.
    #[schemars(range(min = 1))]
    pub requests: i64,
    /// Second, Minute or Hour.
    pub unit: RateLimitUnit,
    /// Bucket size; default `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<i64>,
}

/// One rate limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitRule {
    /// Rule name, reported in metrics and `RateLimit-Policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// Bucket key; default ClientIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RateLimitKey>,
    /// The limit.
    pub limit: RateLimitValue,
}

/// Behaviour when Redis cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum FailureMode {
    /// Let requests through (counted in a metric).
    #[default]
    FailOpen,
    /// Refuse requests with 503.
    FailClosed,
}

/// Redis settings for global limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GlobalRateLimit {
    /// Redis URL, e.g. `redis://redis.infra.svc:6379/0`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('redis://') || self.startsWith('rediss://')").message("redis url must start with redis:// or rediss://"))]
    pub redis_url: String,
    /// FailOpen (default) or FailClosed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
}

/// CORS (Envoy Gateway field names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.allowCredentials) && self.allowCredentials && self.allowOrigins.exists(o, o == '*'))").message("allowOrigins '*' cannot be combined with allowCredentials; list the origins"))]
pub struct Cors {
    /// Origins (`https://app.example.com`, `https://*.example.com` or `*`).
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 253)))]
    pub allow_origins: Vec<String>,
    /// Methods allowed in preflight; default GET, HEAD, POST.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 32)))]
    pub allow_methods: Vec<String>,
    /// Request headers allowed in preflight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub allow_headers: Vec<String>,
    /// Response headers exposed to the browser.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub expose_headers: Vec<String>,
    /// How long the preflight answer may be cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<crate::common::Duration>,
    /// Allow credentials (cookies, Authorization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
}

/// Client address allow and deny lists: deny wins; when `allow` is non-empty
/// only those ranges get through.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.allow) + size(self.deny) > 0").message("ipFilter needs allow or deny"))]
pub struct IpFilter {
    /// Allowed CIDRs.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("allow entries must be CIDRs such as 10.0.0.0/8"))]
    pub allow: Vec<String>,
    /// Denied CIDRs.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("deny entries must be CIDRs such as 192.0.2.0/24"))]
    pub deny: Vec<String>,
}

/// Request size limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestLimits {
    /// Largest request body in bytes (413 beyond, enforced while streaming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_body_bytes: Option<i64>,
    /// Largest total header size in bytes (431 beyond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1048576))]
    pub max_header_bytes: Option<i32>,
    /// Most request headers (431 beyond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_headers: Option<i32>,
}

/// Observed state of an ApiPolicy (Gateway API `PolicyStatus`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiPolicyStatus {
    /// One entry per target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<PolicyAncestorStatus>,
}

/// Status of the policy at one target.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    /// The target.
    pub ancestor_ref: PolicyTargetReference,
    /// The controller that wrote this entry.
    pub controller_name: String,
    /// Accepted, Conflicted, TargetNotFound, ResolvedRefs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
