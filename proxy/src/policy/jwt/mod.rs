//! JWT authentication: a [`Jwt`] spec compiled into a [`JwtAuthenticator`],
//! which finds a request's token, picks the provider, verifies the signature
//! with the provider's keys and checks the claims.
//!
//! Keys come from a remote JWKS (shared through the [`JwksRegistry`]), an
//! inline JWKS or a Secret. Only asymmetric algorithms are accepted and the
//! algorithm must fit the key, so `alg: none` and RS/HS confusion are refused.

mod cache;
mod keys;
mod remote;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use meshgate_crds::policy::{ClaimRequirement, Jwt, JwtProvider, LocalJwksType};
use serde_json::{Map, Value};

pub use remote::{
    JwksRegistry, JwksStats, DEFAULT_CACHE_DURATION, DEFAULT_MAX_STALE, DEFAULT_REFRESH_COOLDOWN,
    FETCH_TIMEOUT,
};

use self::keys::{allowed_algorithm, KeySet};
use self::remote::RemoteSource;
use super::{Claims, SecretLookup};

/// Tokens longer than this are refused unread.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// `clockSkew` when not set.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The largest `clockSkew` used: more would make `exp` meaningless.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(24 * 60 * 60);
/// The Secret key holding a JWKS (`localJWKS.valueRef`).
pub const SECRET_JWKS_KEY: &str = "jwks";

/// What [`JwtAuthenticator::authenticate`] found.
#[derive(Clone, Debug)]
pub enum JwtOutcome {
    /// No token in any configured place.
    Missing,
    /// A valid token of `provider`.
    Verified { provider: Arc<str>, claims: Claims },
    /// A token that is not acceptable (401 `invalid_token`); the reason is a
    /// short label for metrics and logs.
    Invalid(&'static str),
    /// A valid token whose `requiredClaims` do not hold (403).
    Forbidden(&'static str),
}

/// The compiled form of one [`Jwt`] spec.
pub struct JwtAuthenticator {
    providers: Vec<Provider>,
    claim_headers: Vec<HeaderName>,
    optional: bool,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("providers", &self.providers)
            .field("optional", &self.optional)
            .finish()
    }
}

struct Provider {
    name: Arc<str>,
    issuer: Option<String>,
    keys: KeySource,
    locations: Vec<Location>,
    claim_to_headers: Vec<(HeaderName, String)>,
    required_claims: Vec<ClaimRequirement>,
    /// One validation per algorithm family (jsonwebtoken wants a single family).
    validations: Vec<(AlgorithmFamily, Validation)>,
    /// Tokens already verified with the current keys.
    cache: cache::TokenCache,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("keys", &self.keys)
            .field("locations", &self.locations)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum KeySource {
    Local(Arc<KeySet>),
    Remote(Arc<RemoteSource>),
}

/// A place a token is read from.
#[derive(Debug, Clone, PartialEq)]
enum Location {
    /// A header, with a prefix (matched case-insensitively) stripped.
    Header {
        name: HeaderName,
        prefix: Option<String>,
    },
    Cookie(String),
}

impl Location {
    /// `Authorization: Bearer <token>`.
    fn bearer() -> Location {
        Location::Header {
            name: AUTHORIZATION,
            prefix: Some("Bearer ".to_string()),
        }
    }

    fn find(&self, headers: &HeaderMap) -> Option<String> {
        match self {
            Location::Header { name, prefix } => headers.get_all(name).iter().find_map(|value| {
                let value = value.to_str().ok()?;
                let token = match prefix {
                    Some(prefix) => strip_prefix_ignore_case(value, prefix)?,
                    None => value,
                };
                non_empty(token)
            }),
            Location::Cookie(name) => headers.get_all(COOKIE).iter().find_map(|value| {
                value.to_str().ok()?.split(';').find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    if key.trim() != name {
                        return None;
                    }
                    let value = value.trim();
                    let value = value
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(value);
                    non_empty(value)
                })
            }),
        }
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn non_empty(token: &str) -> Option<String> {
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// What the token says about itself before it is verified: enough to choose
/// the provider and the key.
#[derive(Debug, PartialEq)]
struct Peek {
    alg: Algorithm,
    kid: Option<String>,
    iss: Option<String>,
}

impl Peek {
    fn parse(token: &str) -> Result<Peek, &'static str> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("malformed");
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed");
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| "malformed");
        // Maps, not structs: serde would take a JSON array for a struct.
        let header: Map<String, Value> =
            serde_json::from_slice(&decode(header)?).map_err(|_| "malformed")?;
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => allowed_algorithm(alg).ok_or("alg_not_allowed")?,
            _ => return Err("malformed"),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err("malformed"),
        };
        // No JWS extension is understood, and RFC 7515 says a token naming one
        // as critical must be refused.
        if header.contains_key("crit") {
            return Err("malformed");
        }
        let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if !signature.bytes().all(base64url) {
            return Err("malformed");
        }
        let payload: Map<String, Value> =
            serde_json::from_slice(&decode(payload)?).map_err(|_| "malformed")?;
        Ok(Peek {
            alg,
            kid,
            iss: payload
                .get("iss")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}

impl JwtAuthenticator {
    pub fn compile(
        spec: &Jwt,
        namespace: &str,
        secrets: &SecretLookup<'_>,
        jwks: &Arc<JwksRegistry>,
    ) -> Result<JwtAuthenticator, String> {
        if spec.providers.is_empty() {
            return Err("jwt needs at least one provider".to_string());
        }
        let providers = spec
            .providers
            .iter()
            .map(|p| {
                Provider::compile(p, namespace, secrets, jwks)
                    .map_err(|e| format!("jwt provider {}: {e}", p.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut claim_headers: Vec<HeaderName> = Vec::new();
        for (name, _) in providers.iter().flat_map(|p| &p.claim_to_headers) {
            if !claim_headers.contains(name) {
                claim_headers.push(name.clone());
            }
        }
        Ok(JwtAuthenticator {
            providers,
            claim_headers,
            optional: spec.optional.unwrap_or(false),
        })
    }

    /// Every header any provider's claimToHeaders writes: the caller strips
    /// these from every incoming request (anti-spoofing), then `authenticate`
    /// sets them.
    pub fn claim_header_names(&self) -> &[HeaderName] {
        &self.claim_headers
    }

    pub fn optional(&self) -> bool {
        self.optional
    }

    /// Verifies the request's token. On success, also writes claimToHeaders
    /// into `headers`. The claim headers are removed first whatever the
    /// outcome, so a client cannot set them itself.
    pub async fn authenticate(&self, headers: &mut HeaderMap) -> JwtOutcome {
        let found: Vec<(&Provider, String)> = self
            .providers
            .iter()
            .filter_map(|p| p.find_token(headers).map(|token| (p, token)))
            .collect();
        for name in &self.claim_headers {
            headers.remove(name);
        }
        if found.is_empty() {
            return JwtOutcome::Missing;
        }
        let (candidates, mut failure) = select(&found);
        let mut verified = None;
        for (provider, token, peek) in candidates {
            match provider.verify(token, &peek).await {
                Ok(claims) => {
                    verified = Some((provider, claims));
                    break;
                }
                Err(reason) => {
                    failure.get_or_insert(reason);
                }
            }
        }
        let Some((provider, claims)) = verified else {
            return JwtOutcome::Invalid(failure.unwrap_or("wrong_issuer"));
        };
        if !provider
            .required_claims
            .iter()
            .all(|r| claims.matches(&r.name, &r.values))
        {
            return JwtOutcome::Forbidden("required_claims");
        }
        for (header, claim) in &provider.claim_to_headers {
            // A claim that is absent, not a scalar or not a valid header value
            // leaves the header unset.
            if let Some(value) = claims
                .text(claim)
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                headers.insert(header.clone(), value);
            }
        }
        JwtOutcome::Verified {
            provider: Arc::clone(&provider.name),
            claims,
        }
    }
}

/// The providers to try for the tokens found (one per provider, from its own
/// locations): those whose issuer is the token's `iss` (unverified), else
/// those without an issuer. Also the first reason a token could not be read.
fn select<'a>(
    found: &'a [(&'a Provider, String)],
) -> (Vec<(&'a Provider, &'a str, Peek)>, Option<&'static str>) {
    let mut failure = None;
    let mut by_issuer = Vec::new();
    let mut without_issuer = Vec::new();
    for (provider, token) in found {
        let peek = match Peek::parse(token) {
            Ok(peek) => peek,
            Err(reason) => {
                failure.get_or_insert(reason);
                continue;
            }
        };
        match &provider.issuer {
            Some(issuer) if peek.iss.as_ref() == Some(issuer) => {
                by_issuer.push((*provider, token.as_str(), peek))
            }
            Some(_) => {}
            None => without_issuer.push((*provider, token.as_str(), peek)),
        }
    }
    let candidates = if by_issuer.is_empty() {
        without_issuer
    } else {
        by_issuer
    };
    (candidates, failure)
}

impl Provider {
    fn compile(
        spec: &JwtProvider,
        namespace: &str,
        secrets: &SecretLookup<'_>,
        jwks: &Arc<JwksRegistry>,
    ) -> Result<Provider, String> {
        let keys = match (&spec.remote_jwks, &spec.local_jwks) {
            (Some(remote), None) => {
                let cache = match &remote.cache_duration {
                    Some(d) => d.to_std().map_err(|e| format!("cacheDuration: {e}"))?,
                    None => DEFAULT_CACHE_DURATION,
                };
                KeySource::Remote(jwks.source(&remote.uri, cache)?)
            }
            (None, Some(local)) => {
                let doc = match local.kind {
                    LocalJwksType::Inline => local
                        .inline
                        .as_ref()
                        .ok_or("localJWKS.inline is not set")?
                        .as_bytes()
                        .to_vec(),
                    LocalJwksType::ValueRef => {
                        let r = local
                            .value_ref
                            .as_ref()
                            .ok_or("localJWKS.valueRef is not set")?;
                        let secret = secrets.get(r, namespace)?;
                        SecretLookup::value(secret, SECRET_JWKS_KEY).ok_or_else(|| {
                            format!("Secret {} has no key {SECRET_JWKS_KEY:?}", r.name)
                        })?
                    }
                };
                KeySource::Local(Arc::new(KeySet::parse(&doc)?))
            }
            _ => return Err("set exactly one of remoteJWKS or localJWKS".to_string()),
        };
        let mut locations = Vec::new();
        if let Some(extract) = &spec.extract_from {
            for h in &extract.headers {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|e| format!("extractFrom header {:?}: {e}", h.name))?;
                let prefix = h.value_prefix.clone().filter(|p| !p.is_empty());
                locations.push(Location::Header { name, prefix });
            }
            locations.extend(extract.cookies.iter().cloned().map(Location::Cookie));
        }
        if locations.is_empty() {
            locations.push(Location::bearer());
        }
        let claim_to_headers = spec
            .claim_to_headers
            .iter()
            .map(|c| {
                HeaderName::from_bytes(c.header.as_bytes())
                    .map(|name| (name, c.claim.clone()))
                    .map_err(|e| format!("claimToHeaders header {:?}: {e}", c.header))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let skew = match &spec.clock_skew {
            Some(d) => d.to_std().map_err(|e| format!("clockSkew: {e}"))?,
            None => DEFAULT_CLOCK_SKEW,
        };
        let validation = validation(
            spec.issuer.as_deref(),
            &spec.audiences,
            skew.min(MAX_CLOCK_SKEW),
        );
        let validations = [
            AlgorithmFamily::Rsa,
            AlgorithmFamily::Ec,
            AlgorithmFamily::Ed,
        ]
        .into_iter()
        .map(|family| {
            let mut v = validation.clone();
            v.algorithms = family.algorithms().to_vec();
            (family, v)
        })
        .collect();
        Ok(Provider {
            name: Arc::from(spec.name.as_str()),
            issuer: spec.issuer.clone(),
            keys,
            locations,
            claim_to_headers,
            required_claims: spec.required_claims.clone(),
            validations,
            cache: cache::TokenCache::new(skew.min(MAX_CLOCK_SKEW).as_secs()),
        })
    }

    /// The token at the first of this provider's locations that has one.
    fn find_token(&self, headers: &HeaderMap) -> Option<String> {
        self.locations.iter().find_map(|l| l.find(headers))
    }

    /// Verifies `token` (already peeked) with this provider's keys and claim rules.
    async fn verify(&self, token: &str, peek: &Peek) -> Result<Claims, &'static str> {
        let keys = match &self.keys {
            KeySource::Local(keys) => Arc::clone(keys),
            KeySource::Remote(source) => source.keys(peek.kid.as_deref()).await?,
        };
        if let Some(claims) = self.cache.get(token, &keys) {
            return Ok(claims);
        }
        let validation = self
            .validations
            .iter()
            .find(|(family, _)| *family == peek.alg.family())
            .map(|(_, v)| v)
            .ok_or("alg_not_allowed")?;
        let mut named = false;
        let mut fitting = false;
        for key in keys.named(peek.kid.as_deref()) {
            named = true;
            if !key.accepts(peek.alg) {
                continue;
            }
            fitting = true;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => {
                    let claims = Claims(Arc::new(data.claims));
                    self.cache.insert(token, &keys, &claims);
                    return Ok(claims);
                }
                // Another key may fit (no `kid`, or a `kid` used twice).
                Err(e) if reason(e.kind()) == "bad_signature" => continue,
                Err(e) => return Err(reason(e.kind())),
            }
        }
        Err(match (named, fitting) {
            (false, _) if peek.kid.is_some() => "unknown_kid",
            // Keys that exist but do not fit the token's algorithm.
            (true, false) => "alg_not_allowed",
            _ => "bad_signature",
        })
    }
}

/// The claim checks of a provider. `exp` is optional, as in Envoy and Istio
/// (an IdP may issue non-expiring tokens), but checked when present; so is
/// `nbf`; both with the clock skew. `iss` and `aud` are required when the
/// provider sets an issuer or audiences.
fn validation(issuer: Option<&str>, audiences: &[String], skew: Duration) -> Validation {
    let mut v = Validation::new(Algorithm::RS256);
    let mut required: Vec<&str> = Vec::new();
    v.leeway = skew.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    if let Some(issuer) = issuer {
        v.set_issuer(&[issuer]);
        required.push("iss");
    }
    if audiences.is_empty() {
        // Any `aud`; jsonwebtoken would otherwise refuse tokens that have one.
        v.validate_aud = false;
    } else {
        v.set_audience(audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// The label of a verification error.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not_yet_valid",
        ErrorKind::InvalidIssuer => "wrong_issuer",
        ErrorKind::InvalidAudience => "wrong_audience",
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => "wrong_issuer",
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => "wrong_audience",
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => "bad_signature",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => "alg_not_allowed",
        _ => "malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn token(header: Value, payload: Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&payload))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn provider(name: &str, issuer: Option<&str>, locations: Vec<Location>) -> Provider {
        Provider {
            name: Arc::from(name),
            issuer: issuer.map(str::to_string),
            keys: KeySource::Local(Arc::new(KeySet::default())),
            locations,
            claim_to_headers: Vec::new(),
            required_claims: Vec::new(),
            validations: Vec::new(),
            cache: cache::TokenCache::new(0),
        }
    }

    #[test]
    fn bearer_is_the_default_and_case_insensitive() {
        let bearer = Location::bearer();
        let find = |pairs: &[(&str, &str)]| bearer.find(&headers(pairs));
        assert_eq!(
            find(&[("authorization", "Bearer abc.def.ghi")]).as_deref(),
            Some("abc.def.ghi")
        );
        assert_eq!(
            find(&[("authorization", "bEaReR   abc ")]).as_deref(),
            Some("abc")
        );
        assert_eq!(find(&[("authorization", "Basic dXNlcjpwdw==")]), None);
        assert_eq!(find(&[("authorization", "Bearer ")]), None);
        assert_eq!(find(&[("authorization", "Bear")]), None);
        assert_eq!(
            find(&[("authorization", "Basic x"), ("authorization", "Bearer t2")]).as_deref(),
            Some("t2")
        );
        assert_eq!(find(&[]), None);
    }

    #[test]
    fn custom_headers_and_cookies() {
        let header = Location::Header {
            name: HeaderName::from_static("x-token"),
            prefix: Some("Token ".to_string()),
        };
        assert_eq!(
            header.find(&headers(&[("x-token", "Token t1")])).as_deref(),
            Some("t1")
        );
        assert_eq!(header.find(&headers(&[("x-token", "t1")])), None);
        let plain = Location::Header {
            name: HeaderName::from_static("x-jwt"),
            prefix: None,
        };
        assert_eq!(
            plain.find(&headers(&[("x-jwt", " t2 ")])).as_deref(),
            Some("t2")
        );
        let cookie = Location::Cookie("session".to_string());
        let jar = headers(&[("cookie", "a=1; session=t3; b=2")]);
        assert_eq!(cookie.find(&jar).as_deref(), Some("t3"));
        let quoted = headers(&[("cookie", "x=1"), ("cookie", "session=\"t4\"")]);
        assert_eq!(cookie.find(&quoted).as_deref(), Some("t4"));
        assert_eq!(
            cookie.find(&headers(&[("cookie", "mysession=t5; sessionx=t6")])),
            None
        );
    }

    #[test]
    fn peek_reads_alg_kid_iss_and_refuses_bad_tokens() {
        let t = token(
            json!({"alg": "ES256", "kid": "k1"}),
            json!({"iss": "https://idp", "sub": "a"}),
        );
        assert_eq!(
            Peek::parse(&t),
            Ok(Peek {
                alg: Algorithm::ES256,
                kid: Some("k1".into()),
                iss: Some("https://idp".into())
            })
        );
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none"})),
            b64(&json!({"sub": "a"}))
        );
        assert_eq!(Peek::parse(&none), Err("alg_not_allowed"));
        for alg in ["HS256", "HS384", "HS512", "RSA-OAEP", "none", "rs256"] {
            let t = token(json!({ "alg": alg }), json!({}));
            assert_eq!(Peek::parse(&t), Err("alg_not_allowed"), "{alg}");
        }
        let crit = token(json!({"alg": "RS256", "crit": ["exp"]}), json!({}));
        assert_eq!(Peek::parse(&crit), Err("malformed"));
        let not_object = format!(
            "{}.{}.c2ln",
            b64(&json!({"alg": "RS256"})),
            b64(&json!([1]))
        );
        assert_eq!(Peek::parse(&not_object), Err("malformed"));
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.c2ln",
            "e30.e30.c2ln",
            "eyJ.e30.sig",
            "eyJhbGciOiJSUzI1NiJ9.e30.%%",
        ] {
            assert_eq!(Peek::parse(bad), Err("malformed"), "{bad}");
        }
        let huge = format!(
            "{}.{}.c2ln",
            b64(&json!({"alg": "RS256"})),
            "A".repeat(20_000)
        );
        assert_eq!(Peek::parse(&huge), Err("malformed"));
    }

    #[test]
    fn provider_selection_by_issuer() {
        let bearer = vec![Location::bearer()];
        let a = provider("a", Some("https://a"), bearer.clone());
        let b = provider("b", Some("https://b"), bearer.clone());
        let any = provider("any", None, bearer.clone());
        let names = |found: &[(&Provider, String)]| -> (Vec<String>, Option<&'static str>) {
            let (candidates, failure) = select(found);
            (
                candidates
                    .iter()
                    .map(|(p, _, _)| p.name.to_string())
                    .collect(),
                failure,
            )
        };
        let for_iss = |iss: Value| token(json!({"alg": "RS256"}), json!({ "iss": iss }));

        let t = for_iss(json!("https://b"));
        let found = [(&a, t.clone()), (&b, t.clone()), (&any, t.clone())];
        assert_eq!(names(&found), (vec!["b".to_string()], None));

        let t = for_iss(json!("https://other"));
        let found = [(&a, t.clone()), (&b, t.clone()), (&any, t.clone())];
        assert_eq!(names(&found), (vec!["any".to_string()], None));

        let found = [(&a, t.clone()), (&b, t.clone())];
        assert_eq!(names(&found), (vec![], None));

        // A non-string `iss` matches no issuer.
        let t = for_iss(json!(["https://a"]));
        let found = [(&a, t.clone()), (&any, t.clone())];
        assert_eq!(names(&found), (vec!["any".to_string()], None));

        let found = [(&a, "garbage".to_string())];
        assert_eq!(names(&found), (vec![], Some("malformed")));
    }

    #[tokio::test]
    async fn first_location_wins_and_claim_headers_are_stripped() {
        let auth = JwtAuthenticator {
            providers: vec![provider(
                "p",
                None,
                vec![
                    Location::Cookie("jwt".into()),
                    Location::Header {
                        name: HeaderName::from_static("x-jwt"),
                        prefix: None,
                    },
                ],
            )],
            claim_headers: vec![HeaderName::from_static("x-user")],
            optional: false,
        };
        let mut h = headers(&[("x-jwt", "from-header"), ("cookie", "jwt=from-cookie")]);
        assert_eq!(
            auth.providers[0].find_token(&h).as_deref(),
            Some("from-cookie")
        );
        h.insert("x-user", HeaderValue::from_static("spoofed"));
        h.remove(COOKIE);
        h.remove("x-jwt");
        assert!(matches!(
            auth.authenticate(&mut h).await,
            JwtOutcome::Missing
        ));
        assert_eq!(h.get("x-user"), None);
    }

    #[test]
    fn exp_is_optional_iss_and_aud_required_when_configured() {
        let v = validation(
            Some("https://idp"),
            &["api".to_string()],
            Duration::from_secs(30),
        );
        assert_eq!(v.leeway, 30);
        assert!(v.validate_exp && v.validate_nbf && v.validate_aud);
        let mut required: Vec<_> = v.required_spec_claims.iter().cloned().collect();
        required.sort();
        assert_eq!(required, ["aud", "iss"]);
        let v = validation(None, &[], DEFAULT_CLOCK_SKEW);
        assert!(v.required_spec_claims.is_empty());
        assert!(!v.validate_aud);
        assert_eq!(v.iss, None);
    }
}
