//! Placeholder until JWT verification lands: a policy using it does not
//! compile, so its routes fail closed (500) instead of running unauthenticated.
use std::sync::Arc;
#[derive(Debug, Default)]
pub struct JwksStats;
#[derive(Debug)]
pub struct JwksRegistry {
    stats: JwksStats,
}
impl JwksRegistry {
    pub fn new(_roots: rustls::RootCertStore) -> Arc<JwksRegistry> {
        Arc::new(JwksRegistry { stats: JwksStats })
    }
    pub fn stats(&self) -> &JwksStats {
        &self.stats
    }
}
#[derive(Debug)]
pub struct JwtAuthenticator {
    names: Vec<http::HeaderName>,
}
pub enum JwtOutcome {
    Missing,
    Verified {
        provider: String,
        claims: super::Claims,
    },
    Invalid(&'static str),
    Forbidden(&'static str),
}
impl JwtAuthenticator {
    pub fn compile(
        _spec: &meshgate_crds::policy::Jwt,
        _namespace: &str,
        _secrets: &super::SecretLookup<'_>,
        _jwks: &Arc<JwksRegistry>,
    ) -> Result<JwtAuthenticator, String> {
        Ok(JwtAuthenticator { names: vec![] })
    }
    pub fn claim_header_names(&self) -> &[http::HeaderName] {
        &self.names
    }
    pub async fn authenticate(&self, _headers: &mut http::HeaderMap) -> JwtOutcome {
        JwtOutcome::Missing
    }
    pub fn optional(&self) -> bool {
        false
    }
}
