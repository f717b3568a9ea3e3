//! ApiPolicy enforcement. The effective policy of each (listener, route) pair
//! ([`meshgate_crds::attachment::effective`]) is compiled once per snapshot into a
//! [`RoutePolicy`]; a request pays only for the checks its route carries.
//!
//! Order of checks (as Envoy's filter chain): CORS preflight, IP filter, request
//! limits, authentication (JWT, API key), authorization, rate limits. CORS headers
//! are added to every response of a route with CORS, the proxy's own refusals
//! included, so browsers can read them.

pub mod apikey;
pub mod authz;
pub mod claims;
pub mod cors;
pub mod ipfilter;
pub mod jwt;
pub mod limits;
pub mod ratelimit;

pub use claims::Claims;

use k8s_openapi::api::core::v1::Secret;
use meshgate_crds::manifests::Manifests;

use crate::backends::namespace_of;

/// Finds the Secrets policies refer to (`namespace/name`), in the compile input.
pub struct SecretLookup<'a> {
    secrets: &'a [Secret],
}

impl<'a> SecretLookup<'a> {
    pub fn new(manifests: &'a Manifests) -> SecretLookup<'a> {
        SecretLookup {
            secrets: &manifests.secrets,
        }
    }

    pub fn from_slice(secrets: &'a [Secret]) -> SecretLookup<'a> {
        SecretLookup { secrets }
    }

    /// The Secret `r` names, the referrer being in `namespace`. Only core Secrets.
    pub fn get(
        &self,
        r: &meshgate_crds::SecretObjectReference,
        namespace: &str,
    ) -> Result<&'a Secret, String> {
        let ns = r.namespace.as_deref().unwrap_or(namespace);
        let kind_ok = r.group.as_deref().unwrap_or("").is_empty()
            && r.kind.as_deref().unwrap_or("Secret") == "Secret";
        if !kind_ok {
            return Err(format!(
                "{ns}/{}: only core Secrets can be referenced",
                r.name
            ));
        }
        self.secrets
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(r.name.as_str())
                    && namespace_of(&s.metadata) == ns
            })
            .ok_or_else(|| format!("Secret {ns}/{} not found", r.name))
    }

    /// The bytes of `key` in a Secret (`data`, or `stringData` in a manifest).
    pub fn value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
        if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
            return Some(v.0.clone());
        }
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|s| s.as_bytes().to_vec())
    }

    /// Every `(key, bytes)` of a Secret (`data` then `stringData`).
    pub fn entries(secret: &Secret) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(d) = &secret.data {
            out.extend(d.iter().map(|(k, v)| (k.clone(), v.0.clone())));
        }
        if let Some(d) = &secret.string_data {
            for (k, v) in d {
                if !out.iter().any(|(key, _)| key == k) {
                    out.push((k.clone(), v.as_bytes().to_vec()));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The compiled policy of a route and its checks.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use meshgate_crds::attachment::Effective;
use meshgate_crds::policy::{Retry as RetrySpec, RouteTimeouts};

use crate::metrics::Flag;
use crate::proxy::{local_response, ProxyBody};
use crate::state::ClientBody;

use apikey::{ApiKeys, KeyOutcome};
use authz::{Authorization, Caller};
use cors::{Cors, CorsRequest};
use ipfilter::IpFilter;
use jwt::{JwksRegistry, JwtAuthenticator, JwtOutcome};
use limits::{LimitExceeded, RequestLimits, Tripped};
use ratelimit::{Quota, RateDecision, RateKeyInput, RateLimitRegistry, RateLimiter};

/// What policies share across snapshots: JWKS caches, rate-limit buckets and
/// Redis connections, and the refusal counters.
pub struct PolicyRuntime {
    pub jwks: Arc<JwksRegistry>,
    pub rate_limits: Arc<RateLimitRegistry>,
    pub refusals: Refusals,
    /// Endpoint health of `healthCheck` policies, and its checker tasks.
    pub health: Arc<crate::health::HealthRegistry>,
    /// Requests in flight per route backend and endpoint (balancing, circuit breaking).
    pub loads: crate::load::LoadRegistry,
}

impl PolicyRuntime {
    pub fn new(jwks_roots: rustls::RootCertStore) -> PolicyRuntime {
        PolicyRuntime {
            jwks: JwksRegistry::new(jwks_roots),
            rate_limits: RateLimitRegistry::new(),
            refusals: Refusals::default(),
            health: crate::health::HealthRegistry::new(),
            loads: crate::load::LoadRegistry::default(),
        }
    }
}

impl PolicyRuntime {
    /// Prometheus text for the policy families.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let refusals = self.refusals.snapshot();
        let labels: Vec<(String, i64)> = refusals
            .iter()
            .map(|((check, reason), n)| {
                (
                    format!("check=\"{check}\",reason=\"{reason}\""),
                    i64::try_from(*n).unwrap_or(i64::MAX),
                )
            })
            .collect();
        let samples: Vec<(&str, i64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        crate::metrics::family(
            &mut out,
            "meshgate_policy_refusals_total",
            "counter",
            "Requests refused by an ApiPolicy, by check (jwt, api_key, authorization, rate_limit, ip_filter, cors, request_limits, policy) and reason.",
            &samples,
        );
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let rl = self.rate_limits.stats().snapshot();
        crate::metrics::family(
            &mut out,
            "meshgate_rate_limit_decisions_total",
            "counter",
            "Rate-limit decisions: allowed, limited (429), and for Global limits with Redis unreachable fail_open (let through) and fail_closed (503).",
            &[
                ("decision=\"allowed\"", n(rl.allowed)),
                ("decision=\"limited\"", n(rl.limited)),
                ("decision=\"fail_open\"", n(rl.fail_open_allowed)),
                ("decision=\"fail_closed\"", n(rl.fail_closed_refused)),
            ],
        );
        crate::metrics::family(
            &mut out,
            "meshgate_rate_limit_redis_errors_total",
            "counter",
            "Redis calls of Global rate limits that failed or timed out.",
            &[("", n(rl.redis_errors))],
        );
        crate::metrics::family(
            &mut out,
            "meshgate_rate_limit_local_buckets",
            "gauge",
            "Local rate-limit buckets in memory.",
            &[("", n(rl.local_buckets))],
        );
        crate::metrics::family(
            &mut out,
            "meshgate_rate_limit_buckets_evicted_total",
            "counter",
            "Local buckets dropped before they were full again because the bucket cap was reached.",
            &[("", n(rl.buckets_evicted))],
        );
        self.loads.pools.render(&mut out);
        let jwks = self.jwks.stats();
        let get =
            |c: &std::sync::atomic::AtomicU64| n(c.load(std::sync::atomic::Ordering::Relaxed));
        crate::metrics::family(
            &mut out,
            "meshgate_jwks_fetches_total",
            "counter",
            "Remote JWKS fetches, by result.",
            &[
                ("result=\"ok\"", get(&jwks.fetches_ok)),
                ("result=\"failed\"", get(&jwks.fetches_failed)),
            ],
        );
        crate::metrics::family(
            &mut out,
            "meshgate_jwks_unknown_kid_refreshes_total",
            "counter",
            "JWKS refreshes triggered by a token with an unknown kid, by whether the cooldown allowed them.",
            &[
                ("result=\"refreshed\"", get(&jwks.unknown_kid_refreshes)),
                ("result=\"throttled\"", get(&jwks.unknown_kid_throttled)),
            ],
        );
        self.health.render(&mut out);
        out
    }
}

/// Requests refused by a policy, by check and reason (bounded: both are static labels).
#[derive(Debug, Default)]
pub struct Refusals(Mutex<BTreeMap<(&'static str, &'static str), u64>>);

impl Refusals {
    /// Counted on refusals only, so the lock is off the path of admitted requests.
    pub fn count(&self, check: &'static str, reason: &'static str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((check, reason)).or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<((&'static str, &'static str), u64)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// What compiling a policy needs.
pub struct PolicyContext<'a> {
    pub namespace: &'a str,
    pub secrets: &'a SecretLookup<'a>,
    pub runtime: &'a PolicyRuntime,
}

/// The compiled effective policy of one (listener, route) pair. A policy that
/// does not compile is kept as `broken`: its route answers 500 rather than run
/// without the authentication or limits its owner asked for (fail closed).
#[derive(Debug)]
pub struct RoutePolicy {
    /// `namespace/name` of the ApiPolicies it came from, least specific first.
    pub sources: Vec<String>,
    cors: Option<Cors>,
    ip_filter: Option<IpFilter>,
    limits: Option<RequestLimits>,
    jwt: Option<JwtAuthenticator>,
    api_keys: Option<ApiKeys>,
    authorization: Option<Authorization>,
    rate_limit: Option<RateLimiter>,
    /// Headers a client must not set itself (claim headers, the consumer header).
    strip: Vec<HeaderName>,
    /// Timeout and retry overrides, combined with each route's own settings.
    pub timeouts: Option<RouteTimeouts>,
    pub retry: Option<RetrySpec>,
    /// `loadBalancer`, `circuitBreaker` and `healthCheck`, compiled per route
    /// (they need its backends) with the timeouts and retries.
    pub backend_traffic: Option<Box<meshgate_crds::ApiPolicySpec>>,
    broken: Option<String>,
}

impl RoutePolicy {
    /// Compiles `effective`; `scope` identifies where its rate limit is attached.
    pub fn compile(
        effective: &Effective,
        scope: &str,
        cx: &PolicyContext<'_>,
    ) -> Result<RoutePolicy, String> {
        let spec = &effective.spec;
        let authn = spec.authentication.as_ref();
        let jwt = authn
            .and_then(|a| a.jwt.as_ref())
            .map(|j| JwtAuthenticator::compile(j, cx.namespace, cx.secrets, &cx.runtime.jwks))
            .transpose()?;
        let api_keys = authn
            .and_then(|a| a.api_key.as_ref())
            .map(|k| ApiKeys::compile(k, cx.namespace, cx.secrets))
            .transpose()?;
        let mut strip: Vec<HeaderName> = jwt
            .as_ref()
            .map(|j| j.claim_header_names().to_vec())
            .unwrap_or_default();
        strip.extend(api_keys.as_ref().and_then(|k| k.forward_header.clone()));
        Ok(RoutePolicy {
            sources: effective.sources.clone(),
            cors: spec.cors.as_ref().map(Cors::compile).transpose()?,
            ip_filter: spec.ip_filter.as_ref().map(IpFilter::compile).transpose()?,
            limits: spec.request_limits.as_ref().map(RequestLimits::compile),
            jwt,
            api_keys,
            authorization: spec
                .authorization
                .as_ref()
                .map(Authorization::compile)
                .transpose()?,
            rate_limit: spec
                .rate_limit
                .as_ref()
                .map(|r| RateLimiter::compile(r, scope, &cx.runtime.rate_limits))
                .transpose()?,
            strip,
            timeouts: spec.timeouts.clone(),
            retry: spec.retry.clone(),
            backend_traffic: (spec.load_balancer.is_some()
                || spec.circuit_breaker.is_some()
                || spec.health_check.is_some())
            .then(|| {
                Box::new(meshgate_crds::ApiPolicySpec {
                    load_balancer: spec.load_balancer.clone(),
                    circuit_breaker: spec.circuit_breaker.clone(),
                    health_check: spec.health_check.clone(),
                    ..Default::default()
                })
            }),
            broken: None,
        })
    }

    /// A policy that failed to compile: every request of its route gets a 500.
    pub fn broken(sources: Vec<String>, why: String) -> RoutePolicy {
        RoutePolicy {
            sources,
            cors: None,
            ip_filter: None,
            limits: None,
            jwt: None,
            api_keys: None,
            authorization: None,
            rate_limit: None,
            strip: Vec::new(),
            timeouts: None,
            retry: None,
            backend_traffic: None,
            broken: Some(why),
        }
    }

    /// Whether a request of this route reads its body through a limit.
    pub fn body_limit(&self) -> Option<u64> {
        self.limits.and_then(|l| l.max_body_bytes)
    }

    /// Runs the checks in order. On success, returns what the response needs
    /// (CORS and RateLimit headers); on refusal, the response to send.
    pub async fn check(
        &self,
        request: PolicyRequest<'_>,
        refusals: &Refusals,
    ) -> Result<Admitted, Refused> {
        let PolicyRequest {
            method,
            headers,
            query,
            body,
            client,
        } = request;
        if let Some(why) = &self.broken {
            tracing::debug!(policies = ?self.sources, %why, "refusing: policy not valid");
            return Err(refuse(
                refusals,
                "policy",
                "invalid",
                StatusCode::INTERNAL_SERVER_ERROR,
                Flag::PolicyError,
                "policy configuration error\n",
            ));
        }
        let mut admitted = Admitted::default();

        // CORS first: a preflight carries no credentials and must not be refused
        // by authentication.
        if let Some(cors) = &self.cors {
            match cors.inspect(method, headers) {
                CorsRequest::None => {}
                CorsRequest::Preflight(h) => {
                    let mut response = local_response(StatusCode::NO_CONTENT, None, "");
                    response.headers_mut().remove(header::CONTENT_TYPE);
                    response.headers_mut().extend(h);
                    return Err(Refused {
                        response,
                        flag: None,
                    });
                }
                CorsRequest::PreflightRefused => {
                    return Err(refuse(
                        refusals,
                        "cors",
                        "origin_not_allowed",
                        StatusCode::FORBIDDEN,
                        Flag::Unauthorized,
                        "CORS origin not allowed\n",
                    ));
                }
                CorsRequest::Actual(h) => admitted.cors = Some(h),
            }
        }
        let with_cors = |mut refused: Refused, admitted: &Admitted| {
            if let Some(h) = &admitted.cors {
                refused.response.headers_mut().extend(h.clone());
            }
            refused
        };

        if let Some(filter) = &self.ip_filter {
            if !filter.permits(client) {
                let r = refuse(
                    refusals,
                    "ip_filter",
                    "denied",
                    StatusCode::FORBIDDEN,
                    Flag::Unauthorized,
                    "client address not allowed\n",
                );
                return Err(with_cors(r, &admitted));
            }
        }

        if let Some(limits) = &self.limits {
            let declared = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match limits.check_head(headers, declared) {
                Ok(()) => {}
                Err(LimitExceeded::Body) => {
                    let r = refuse(
                        refusals,
                        "request_limits",
                        "body_too_large",
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Flag::RequestTooLarge,
                        "request body too large\n",
                    );
                    return Err(with_cors(r, &admitted));
                }
                Err(LimitExceeded::Headers) => {
                    let r = refuse(
                        refusals,
                        "request_limits",
                        "headers_too_large",
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        Flag::RequestTooLarge,
                        "request headers too large\n",
                    );
                    return Err(with_cors(r, &admitted));
                }
            }
            if let Some(max) = limits.max_body_bytes {
                admitted.tripped = Some(body.limit(max));
            }
        }

        // Authentication: any configured method that succeeds authenticates.
        for name in &self.strip {
            headers.remove(name);
        }
        let mut claims = None;
        let mut consumer: Option<Arc<str>> = None;
        if self.jwt.is_some() || self.api_keys.is_some() {
            let mut jwt_outcome = None;
            if let Some(jwt) = &self.jwt {
                match jwt.authenticate(headers).await {
                    JwtOutcome::Verified { claims: c, .. } => claims = Some(c),
                    // A valid token without the required claims: 403, whatever
                    // other credentials the request carries.
                    JwtOutcome::Forbidden(reason) => {
                        let r = refuse(
                            refusals,
                            "jwt",
                            reason,
                            StatusCode::FORBIDDEN,
                            Flag::Unauthorized,
                            "token lacks required claims\n",
                        );
                        return Err(with_cors(r, &admitted));
                    }
                    other => jwt_outcome = Some(other),
                }
            }
            let mut key_outcome = None;
            if let (Some(keys), None) = (&self.api_keys, &claims) {
                match keys.identify(headers, query) {
                    KeyOutcome::Consumer(c) => {
                        if let (Some(h), Ok(v)) = (&keys.forward_header, HeaderValue::from_str(&c))
                        {
                            headers.insert(h.clone(), v);
                        }
                        consumer = Some(c);
                    }
                    other => key_outcome = Some(other),
                }
            }
            if claims.is_none() && consumer.is_none() {
                let refused = match (jwt_outcome, key_outcome) {
                    (Some(JwtOutcome::Invalid(reason)), _) => {
                        unauthorized(refusals, "jwt", reason, Some("invalid_token"))
                    }
                    (_, Some(KeyOutcome::Unknown)) => {
                        unauthorized(refusals, "api_key", "unknown_key", None)
                    }
                    // Nothing presented: an optional JWT lets the request through.
                    _ if self.jwt.as_ref().is_some_and(|j| j.optional()) => Refused::none(),
                    (Some(_), _) => unauthorized(refusals, "jwt", "missing", None),
                    _ => unauthorized(refusals, "api_key", "missing", None),
                };
                if refused.flag.is_some() {
                    return Err(with_cors(refused, &admitted));
                }
            }
        }

        if let Some(authz) = &self.authorization {
            let decision = authz.decide(&Caller {
                client,
                consumer: consumer.as_deref(),
                claims: claims.as_ref(),
            });
            if !decision.allow {
                tracing::debug!(rule = decision.rule, "authorization denied");
                let r = refuse(
                    refusals,
                    "authorization",
                    "denied",
                    StatusCode::FORBIDDEN,
                    Flag::Unauthorized,
                    "forbidden\n",
                );
                return Err(with_cors(r, &admitted));
            }
        }

        if let Some(limiter) = &self.rate_limit {
            let input = RateKeyInput {
                client,
                headers,
                claims: claims.as_ref(),
                consumer: consumer.as_deref(),
            };
            match limiter.check(&input).await {
                RateDecision::Allowed(quota) => admitted.quota = quota,
                RateDecision::Limited(quota) => {
                    let mut r = refuse(
                        refusals,
                        "rate_limit",
                        "over_limit",
                        StatusCode::TOO_MANY_REQUESTS,
                        Flag::RateLimited,
                        "rate limit exceeded\n",
                    );
                    quota.write_headers(r.response.headers_mut(), true);
                    return Err(with_cors(r, &admitted));
                }
                RateDecision::Unavailable => {
                    let r = refuse(
                        refusals,
                        "rate_limit",
                        "service_unavailable",
                        StatusCode::SERVICE_UNAVAILABLE,
                        Flag::RateLimitServiceError,
                        "rate limit service unavailable\n",
                    );
                    return Err(with_cors(r, &admitted));
                }
            }
        }
        Ok(admitted)
    }
}

/// The parts of a request the checks read (and, for authentication, write).
pub struct PolicyRequest<'a> {
    pub method: &'a Method,
    pub headers: &'a mut HeaderMap,
    pub query: Option<&'a str>,
    pub body: &'a mut ClientBody,
    pub client: IpAddr,
}

/// What an admitted request's response gets from its policy.
#[derive(Debug, Default)]
pub struct Admitted {
    cors: Option<HeaderMap>,
    quota: Option<Quota>,
    /// Set when a streamed body passed `maxBodyBytes`.
    pub tripped: Option<Tripped>,
}

impl Admitted {
    /// Adds the CORS and RateLimit headers to the response.
    pub fn decorate(&self, headers: &mut HeaderMap) {
        if let Some(h) = &self.cors {
            for (name, value) in h {
                headers.insert(name.clone(), value.clone());
            }
        }
        if let Some(quota) = &self.quota {
            quota.write_headers(headers, false);
        }
    }

    /// Whether the request body was cut off at the size limit.
    pub fn body_too_large(&self) -> bool {
        self.tripped.as_ref().is_some_and(Tripped::is_set)
    }
}

/// A refusal: the response, and its flag (none for a CORS preflight answer).
pub struct Refused {
    pub response: Response<ProxyBody>,
    pub flag: Option<Flag>,
}

impl Refused {
    /// Not a refusal (an optional JWT, absent).
    fn none() -> Refused {
        Refused {
            response: local_response(StatusCode::OK, None, ""),
            flag: None,
        }
    }
}

fn refuse(
    refusals: &Refusals,
    check: &'static str,
    reason: &'static str,
    status: StatusCode,
    flag: Flag,
    body: &'static str,
) -> Refused {
    refusals.count(check, reason);
    Refused {
        response: local_response(status, Some(flag), body),
        flag: Some(flag),
    }
}

/// 401 with a Bearer challenge (RFC 6750 section 3: no error code when the
/// request carried no credentials).
fn unauthorized(
    refusals: &Refusals,
    check: &'static str,
    reason: &'static str,
    error: Option<&'static str>,
) -> Refused {
    let mut r = refuse(
        refusals,
        check,
        reason,
        StatusCode::UNAUTHORIZED,
        Flag::Unauthorized,
        "unauthorized\n",
    );
    let challenge = match error {
        Some("invalid_token") => HeaderValue::from_static("Bearer error=\"invalid_token\""),
        _ => HeaderValue::from_static("Bearer"),
    };
    if check == "jwt" {
        r.response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    r
}
