//! Placeholder until rate limiting lands: a policy using it does not compile,
//! so its routes fail closed (500) instead of running unlimited.
use std::sync::Arc;
#[derive(Debug, Default)]
pub struct RateLimitStats;
#[derive(Debug)]
pub struct RateLimitRegistry {
    stats: RateLimitStats,
}
impl RateLimitRegistry {
    pub fn new() -> Arc<RateLimitRegistry> {
        Arc::new(RateLimitRegistry {
            stats: RateLimitStats,
        })
    }
    pub fn stats(&self) -> &RateLimitStats {
        &self.stats
    }
}
#[derive(Debug)]
pub struct RateLimiter;
pub struct RateKeyInput<'a> {
    pub client: std::net::IpAddr,
    pub headers: &'a http::HeaderMap,
    pub claims: Option<&'a super::Claims>,
    pub consumer: Option<&'a str>,
}
pub enum RateDecision {
    Allowed(Option<Quota>),
    Limited(Quota),
    Unavailable,
}
#[derive(Debug)]
pub struct Quota;
impl Quota {
    pub fn write_headers(&self, _headers: &mut http::HeaderMap, _limited: bool) {}
}
impl RateLimiter {
    pub fn compile(
        _spec: &meshgate_crds::policy::RateLimit,
        _scope: &str,
        _registry: &Arc<RateLimitRegistry>,
    ) -> Result<RateLimiter, String> {
        Ok(RateLimiter)
    }
    pub async fn check(&self, _input: &RateKeyInput<'_>) -> RateDecision {
        RateDecision::Allowed(None)
    }
}
