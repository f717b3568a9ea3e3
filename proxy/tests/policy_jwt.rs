//! JWT authentication (`policy::jwt`) against real parts: an HTTPS JWKS server
//! on 127.0.0.1 with a certificate from a local rcgen CA that only the registry
//! under test trusts, and tokens signed here with keys generated here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE};
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::api::core::v1::Secret;
use meshgate_crds::policy::Jwt;
use meshgate_proxy::policy::jwt::{JwksRegistry, JwtAuthenticator, JwtOutcome};
use meshgate_proxy::policy::SecretLookup;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod common;

use common::keys::{b64, ec_key, ed_key, rsa_key, TestKey};

const ISS: &str = "https://idp.test";
const AUD: &str = "api.test";

// ---------------------------------------------------------------- keys

/// Keys made once per test binary (RSA generation is the slow part).
struct Keys {
    rsa: TestKey,
    rsa2: TestKey,
    ec: TestKey,
    ed: TestKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: rsa_key("rsa-1"),
        rsa2: rsa_key("rsa-2"),
        ec: ec_key("ec-1"),
        ed: ed_key("ed-1"),
    })
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Standard claims (valid for ten minutes), with `extra` merged in (`null` removes).
fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "aud": AUD, "sub": "alice", "iat": now(), "exp": now() + 600});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign_with(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn sign(key: &TestKey, claims: &Value) -> String {
    sign_with(key, Some(&key.kid), claims)
}

// ---------------------------------------------------------------- JWKS server

struct Pki {
    ca: CertificateDer<'static>,
    server: Arc<rustls::ServerConfig>,
}

/// A CA and a certificate for 127.0.0.1 it issued.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        Pki {
            ca: ca.der().clone(),
            server: Arc::new(server),
        }
    })
}

/// A registry that trusts only the test CA.
fn registry() -> Arc<JwksRegistry> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki().ca.clone()).unwrap();
    JwksRegistry::new(roots)
}

#[derive(Default)]
struct Served {
    hits: AtomicUsize,
    jwks: Mutex<String>,
    delay: Mutex<Duration>,
}

/// An HTTPS JWKS server whose document can be swapped and whose hits are counted.
struct JwksServer {
    addr: SocketAddr,
    served: Arc<Served>,
    accept: JoinHandle<()>,
}

impl JwksServer {
    async fn start(jwks: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(Served::default());
        *served.jwks.lock().unwrap() = jwks;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&pki().server));
        let state = Arc::clone(&served);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |_request| {
                        let state = Arc::clone(&state);
                        async move {
                            state.hits.fetch_add(1, SeqCst);
                            let delay = *state.delay.lock().unwrap();
                            tokio::time::sleep(delay).await;
                            let body = state.jwks.lock().unwrap().clone();
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header(CONTENT_TYPE, "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            served,
            accept,
        }
    }

    fn uri(&self) -> String {
        format!(
            "https://127.0.0.1:{}/.well-known/jwks.json",
            self.addr.port()
        )
    }

    fn hits(&self) -> usize {
        self.served.hits.load(SeqCst)
    }

    fn set_jwks(&self, jwks: String) {
        *self.served.jwks.lock().unwrap() = jwks;
    }

    fn set_delay(&self, delay: Duration) {
        *self.served.delay.lock().unwrap() = delay;
    }

    /// Closes the listening socket: later connections are refused.
    async fn stop(self) {
        self.accept.abort();
        let _ = self.accept.await;
    }
}

// ---------------------------------------------------------------- helpers

fn compile_with(
    spec: Value,
    secrets: &[Secret],
    registry: &Arc<JwksRegistry>,
) -> Result<JwtAuthenticator, String> {
    let spec: Jwt = serde_json::from_value(spec).unwrap();
    JwtAuthenticator::compile(&spec, "test", &SecretLookup::from_slice(secrets), registry)
}

fn compile(spec: Value, registry: &Arc<JwksRegistry>) -> JwtAuthenticator {
    compile_with(spec, &[], registry).unwrap()
}

/// One provider `idp` (issuer ISS, audience AUD) with `fields` added.
fn one_provider(fields: Value) -> Value {
    let mut provider = json!({"name": "idp", "issuer": ISS, "audiences": [AUD]});
    for (k, v) in fields.as_object().unwrap() {
        provider[k] = v.clone();
    }
    json!({ "providers": [provider] })
}

fn remote(uri: &str) -> Value {
    one_provider(json!({"remoteJWKS": {"uri": uri}}))
}

fn inline(keys: &[&TestKey]) -> Value {
    one_provider(json!({"localJWKS": {"type": "Inline", "inline": jwks(keys)}}))
}

/// An outcome as a comparable label: `verified:PROVIDER`, `invalid:REASON`...
fn label(outcome: &JwtOutcome) -> String {
    match outcome {
        JwtOutcome::Missing => "missing".to_string(),
        JwtOutcome::Verified { provider, .. } => format!("verified:{provider}"),
        JwtOutcome::Invalid(reason) => format!("invalid:{reason}"),
        JwtOutcome::Forbidden(reason) => format!("forbidden:{reason}"),
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

async fn check(auth: &JwtAuthenticator, token: &str) -> String {
    label(&auth.authenticate(&mut bearer(token)).await)
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn remote_jwks_verifies_rs256_es256_and_eddsa() {
    let k = keys();
    let server = JwksServer::start(jwks(&[&k.rsa, &k.ec, &k.ed])).await;
    let registry = registry();
    let auth = compile(remote(&server.uri()), &registry);
    for key in [&k.rsa, &k.ec, &k.ed] {
        let outcome = auth
            .authenticate(&mut bearer(&sign(key, &claims(json!({})))))
            .await;
        let JwtOutcome::Verified { provider, claims } = outcome else {
            panic!("{:?} token: {}", key.alg, label(&outcome));
        };
        assert_eq!(&*provider, "idp");
        assert_eq!(claims.text("sub").as_deref(), Some("alice"));
    }
    // A token without `kid` is tried against the keys of its type.
    let no_kid = sign_with(&k.ec, None, &claims(json!({})));
    assert_eq!(check(&auth, &no_kid).await, "verified:idp");
    // One fetch served all of them.
    assert_eq!(server.hits(), 1);
    assert_eq!(registry.stats().fetches_ok.load(SeqCst), 1);
    assert_eq!(registry.stats().fetches_failed.load(SeqCst), 0);
    // A second authenticator for the same URI (a reload) shares the cache.
    let reloaded = compile(remote(&server.uri()), &registry);
    assert_eq!(
        check(&reloaded, &sign(&k.rsa, &claims(json!({})))).await,
        "verified:idp"
    );
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn first_request_waits_for_the_fetch_started_at_compile() {
    let k = keys();
    let server = JwksServer::start(jwks(&[&k.rsa])).await;
    server.set_delay(Duration::from_millis(300));
    let registry = registry();
    let auth = compile(remote(&server.uri()), &registry);
    // The fetch started at compile, before any request.
    eventually("the compile-time fetch", || server.hits() == 1).await;
    let started = Instant::now();
    assert_eq!(
        check(&auth, &sign(&k.rsa, &claims(json!({})))).await,
        "verified:idp"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.hits(), 1, "the request joined the fetch in flight");
}

#[tokio::test]
async fn time_claims_with_clock_skew() {
    let k = keys();
    let auth = compile(inline(&[&k.rsa]), &registry());
    let token = |c: Value| sign(&k.rsa, &claims(c));
    // Default skew: 60 s.
    assert_eq!(
        check(&auth, &token(json!({"exp": now() - 120}))).await,
        "invalid:expired"
    );
    assert_eq!(
        check(&auth, &token(json!({"exp": now() - 30}))).await,
        "verified:idp"
    );
    assert_eq!(
        check(&auth, &token(json!({"nbf": now() + 120}))).await,
        "invalid:not_yet_valid"
    );
    assert_eq!(
        check(&auth, &token(json!({"nbf": now() + 30}))).await,
        "verified:idp"
    );
    // `exp` is optional.
    assert_eq!(
        check(&auth, &token(json!({"exp": null}))).await,
        "verified:idp"
    );
    // A malformed `exp` is not ignored.
    assert_eq!(
        check(&auth, &token(json!({"exp": "soon"}))).await,
        "invalid:malformed"
    );

    // clockSkew: 5s makes the 30 s old token expired.
    let mut spec = inline(&[&k.rsa]);
    spec["providers"][0]["clockSkew"] = json!("5s");
    let strict = compile(spec, &registry());
    assert_eq!(
        check(&strict, &token(json!({"exp": now() - 30}))).await,
        "invalid:expired"
    );
    assert_eq!(
        check(&strict, &token(json!({"exp": now() + 30}))).await,
        "verified:idp"
    );
}

#[tokio::test]
async fn audience_and_issuer() {
    let k = keys();
    let auth = compile(inline(&[&k.ec]), &registry());
    let token = |c: Value| sign(&k.ec, &claims(c));
    assert_eq!(
        check(&auth, &token(json!({"aud": "other"}))).await,
        "invalid:wrong_audience"
    );
    assert_eq!(
        check(&auth, &token(json!({"aud": ["other", AUD]}))).await,
        "verified:idp"
    );
    assert_eq!(
        check(&auth, &token(json!({"aud": ["a", "b"]}))).await,
        "invalid:wrong_audience"
    );
    assert_eq!(
        check(&auth, &token(json!({"aud": null}))).await,
        "invalid:wrong_audience"
    );
    assert_eq!(
        check(&auth, &token(json!({"iss": "https://evil.test"}))).await,
        "invalid:wrong_issuer"
    );
    assert_eq!(
        check(&auth, &token(json!({"iss": null}))).await,
        "invalid:wrong_issuer"
    );

    // Without audiences or issuer, any `aud` and `iss` do.
    let spec = json!({"providers": [{"name": "open",
        "localJWKS": {"type": "Inline", "inline": jwks(&[&k.ec])}}]});
    let open = compile(spec, &registry());
    assert_eq!(
        check(&open, &token(json!({"aud": "other", "iss": "https://x"}))).await,
        "verified:open"
    );
}

#[tokio::test]
async fn alg_none_hmac_and_key_confusion_are_refused() {
    let k = keys();
    let auth = compile(inline(&[&k.rsa, &k.ec]), &registry());
    let body = claims(json!({}));

    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes()),
        b64(body.to_string().as_bytes())
    );
    assert_eq!(check(&auth, &unsigned).await, "invalid:alg_not_allowed");

    // RS/HS confusion: HMAC keyed with the RSA public key, naming the RSA key.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(k.rsa.kid.clone());
    let confused =
        jsonwebtoken::encode(&header, &body, &EncodingKey::from_secret(&k.rsa.public_der)).unwrap();
    assert_eq!(check(&auth, &confused).await, "invalid:alg_not_allowed");

    // An ES256 token naming the RSA key: the algorithm does not fit the key.
    assert_eq!(
        check(&auth, &sign_with(&k.ec, Some(&k.rsa.kid), &body)).await,
        "invalid:alg_not_allowed"
    );
    // A key pinned to ES256 (the EC JWK has `alg`) refuses nothing else, and a
    // JWK pinned to PS256 refuses RS256.
    let mut pinned = k.rsa.jwk.clone();
    pinned["alg"] = json!("PS256");
    let spec = one_provider(json!({"localJWKS": {"type": "Inline",
        "inline": json!({"keys": [pinned]}).to_string()}}));
    let ps_only = compile(spec, &registry());
    assert_eq!(
        check(&ps_only, &sign(&k.rsa, &body)).await,
        "invalid:alg_not_allowed"
    );

    // The right algorithm and kid, the wrong private key.
    assert_eq!(
        check(&auth, &sign_with(&k.rsa2, Some(&k.rsa.kid), &body)).await,
        "invalid:bad_signature"
    );
    // An altered payload.
    let good = sign(&k.rsa, &body);
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims(json!({"sub": "admin"})).to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(check(&auth, &forged).await, "invalid:bad_signature");
    assert_eq!(check(&auth, &good).await, "verified:idp");
    // A kid the local set does not have.
    assert_eq!(
        check(&auth, &sign_with(&k.rsa, Some("nope"), &body)).await,
        "invalid:unknown_kid"
    );
}

#[tokio::test]
async fn rotation_picks_up_a_new_kid_without_restart() {
    let k = keys();
    let server = JwksServer::start(jwks(&[&k.rsa])).await;
    let registry = registry();
    let auth = compile(remote(&server.uri()), &registry);
    assert_eq!(
        check(&auth, &sign(&k.rsa, &claims(json!({})))).await,
        "verified:idp"
    );
    assert_eq!(server.hits(), 1);

    // The IdP rotates to a new key; the first token naming it triggers one refresh.
    server.set_jwks(jwks(&[&k.rsa2]));
    assert_eq!(
        check(&auth, &sign(&k.rsa2, &claims(json!({})))).await,
        "verified:idp"
    );
    assert_eq!(server.hits(), 2);
    assert_eq!(registry.stats().unknown_kid_refreshes.load(SeqCst), 1);
    assert_eq!(
        check(&auth, &sign(&k.rsa2, &claims(json!({})))).await,
        "verified:idp"
    );
    assert_eq!(server.hits(), 2);
    // The old key is gone with the refresh.
    assert_eq!(
        check(&auth, &sign(&k.rsa, &claims(json!({})))).await,
        "invalid:unknown_kid"
    );
    assert_eq!(server.hits(), 2, "within the cooldown: no refetch");
}

#[tokio::test]
async fn unknown_kid_spam_is_coalesced_and_rate_limited() {
    let k = keys();
    let server = JwksServer::start(jwks(&[&k.ec])).await;
    let registry = registry();
    let auth = Arc::new(compile(remote(&server.uri()), &registry));
    assert_eq!(
        check(&auth, &sign(&k.ec, &claims(json!({})))).await,
        "verified:idp"
    );
    assert_eq!(server.hits(), 1);

    // 50 concurrent requests with random kids while the refresh is slow: one fetch.
    server.set_delay(Duration::from_millis(200));
    let spam = (0..50).map(|i| {
        let auth = Arc::clone(&auth);
        let token = sign_with(&k.ec, Some(&format!("random-{i}")), &claims(json!({})));
        tokio::spawn(async move { check(&auth, &token).await })
    });
    for outcome in futures::future::join_all(spam).await {
        assert_eq!(outcome.unwrap(), "invalid:unknown_kid");
    }
    assert_eq!(server.hits(), 2);
    assert_eq!(registry.stats().unknown_kid_refreshes.load(SeqCst), 1);

    // More, one after the other, within the cooldown: no fetch at all.
    server.set_delay(Duration::ZERO);
    let throttled = registry.stats().unknown_kid_throttled.load(SeqCst);
    for i in 0..20 {
        let token = sign_with(&k.ec, Some(&format!("again-{i}")), &claims(json!({})));
        assert_eq!(check(&auth, &token).await, "invalid:unknown_kid");
    }
    assert_eq!(server.hits(), 2);
    assert_eq!(
        registry.stats().unknown_kid_throttled.load(SeqCst) - throttled,
        20
    );
    // Valid tokens are unaffected.
    assert_eq!(
        check(&auth, &sign(&k.ec, &claims(json!({})))).await,
        "verified:idp"
    );

    // Once the cooldown has passed, an unknown kid may refresh again.
    registry.set_refresh_cooldown(Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let token = sign_with(&k.ec, Some("late"), &claims(json!({})));
    assert_eq!(check(&auth, &token).await, "invalid:unknown_kid");
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn stale_keys_are_served_within_the_bound_then_refused() {
    let k = keys();
    let server = JwksServer::start(jwks(&[&k.ed])).await;
    let registry = registry();
    registry.set_max_stale(Duration::from_secs(1));
    let mut spec = remote(&server.uri());
    spec["providers"][0]["remoteJWKS"]["cacheDuration"] = json!("1s");
    let auth = compile(spec, &registry);
    let token = sign(&k.ed, &claims(json!({})));
    assert_eq!(check(&auth, &token).await, "verified:idp");
    let fetched = Instant::now();
    server.stop().await;

    // Past cacheDuration: the refresh fails, the last good keys still serve.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(check(&auth, &token).await, "verified:idp");
    eventually("the failed refresh", || {
        registry.stats().fetches_failed.load(SeqCst) == 1
    })
    .await;
    assert_eq!(check(&auth, &token).await, "verified:idp");
    assert!(
        fetched.elapsed() < Duration::from_millis(1900),
        "test too slow"
    );

    // Past cacheDuration + max stale: no keys.
    tokio::time::sleep(Duration::from_millis(2200).saturating_sub(fetched.elapsed())).await;
    assert_eq!(check(&auth, &token).await, "invalid:keys_unavailable");
    assert_eq!(registry.stats().fetches_ok.load(SeqCst), 1);
}

#[tokio::test]
async fn untrusted_server_certificate_means_no_keys() {
    let k = keys();
    let server = JwksServer::start(jwks(&[&k.rsa])).await;
    // A registry with no roots does not trust the test CA.
    let registry = JwksRegistry::new(rustls::RootCertStore::empty());
    let auth = compile(remote(&server.uri()), &registry);
    assert_eq!(
        check(&auth, &sign(&k.rsa, &claims(json!({})))).await,
        "invalid:keys_unavailable"
    );
    assert_eq!(registry.stats().fetches_failed.load(SeqCst), 1);
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn local_jwks_inline_and_secret() {
    let k = keys();
    let token = sign(&k.ed, &claims(json!({})));
    let inline_auth = compile(inline(&[&k.rsa, &k.ed]), &registry());
    assert_eq!(check(&inline_auth, &token).await, "verified:idp");

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "idp-keys", "namespace": "test"},
        // `data` values are base64 in JSON (ByteString).
        "data": {"jwks": base64::engine::general_purpose::STANDARD.encode(jwks(&[&k.ed]))}
    }))
    .unwrap();
    let spec = one_provider(json!({"localJWKS": {"type": "ValueRef",
        "valueRef": {"name": "idp-keys"}}}));
    let from_secret =
        compile_with(spec.clone(), std::slice::from_ref(&secret), &registry()).unwrap();
    assert_eq!(check(&from_secret, &token).await, "verified:idp");
    assert_eq!(
        check(&from_secret, &sign(&k.rsa, &claims(json!({})))).await,
        "invalid:unknown_kid"
    );

    // A missing Secret, a Secret without `jwks`, a JWKS without usable keys: compile errors.
    let err = compile_with(spec.clone(), &[], &registry()).unwrap_err();
    assert!(err.contains("not found"), "{err}");
    let empty: Secret = serde_json::from_value(json!({
        "metadata": {"name": "idp-keys", "namespace": "test"},
        "stringData": {"other": "x"}
    }))
    .unwrap();
    let err = compile_with(spec, &[empty], &registry()).unwrap_err();
    assert!(err.contains("jwks"), "{err}");
    let hmac_only = one_provider(json!({"localJWKS": {"type": "Inline",
        "inline": r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#}}));
    let err = compile_with(hmac_only, &[], &registry()).unwrap_err();
    assert!(err.contains("no usable signing key"), "{err}");
}

#[tokio::test]
async fn cookie_and_custom_header_extraction() {
    let k = keys();
    let spec = one_provider(json!({
        "localJWKS": {"type": "Inline", "inline": jwks(&[&k.rsa])},
        "extractFrom": {"headers": [{"name": "x-api-token", "valuePrefix": "JWT "}],
                        "cookies": ["id_token"]}
    }));
    let auth = compile(spec, &registry());
    let token = sign(&k.rsa, &claims(json!({})));
    let run = |pairs: Vec<(http::HeaderName, String)>| {
        let auth = &auth;
        async move {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(name, HeaderValue::from_str(&value).unwrap());
            }
            label(&auth.authenticate(&mut headers).await)
        }
    };
    let header = http::HeaderName::from_static("x-api-token");
    assert_eq!(
        run(vec![(header.clone(), format!("JWT {token}"))]).await,
        "verified:idp"
    );
    assert_eq!(
        run(vec![(COOKIE, format!("theme=dark; id_token={token}"))]).await,
        "verified:idp"
    );
    // extractFrom replaces the default Authorization header.
    assert_eq!(
        run(vec![(AUTHORIZATION, format!("Bearer {token}"))]).await,
        "missing"
    );
    // Without its prefix the header holds no token.
    assert_eq!(run(vec![(header.clone(), token.clone())]).await, "missing");
    // The first location present wins, even when it holds garbage.
    assert_eq!(
        run(vec![
            (header, "JWT garbage".to_string()),
            (COOKIE, format!("id_token={token}")),
        ])
        .await,
        "invalid:malformed"
    );
}

#[tokio::test]
async fn claim_to_headers_and_required_claims() {
    let k = keys();
    let spec = one_provider(json!({
        "localJWKS": {"type": "Inline", "inline": jwks(&[&k.ec])},
        "claimToHeaders": [
            {"header": "x-user", "claim": "sub"},
            {"header": "x-role", "claim": "realm.role"},
            {"header": "x-missing", "claim": "nope"}
        ],
        "requiredClaims": [{"name": "scope", "values": ["read"]}]
    }));
    let auth = compile(spec, &registry());
    assert_eq!(auth.claim_header_names(), ["x-user", "x-role", "x-missing"]);
    assert!(!auth.optional());

    let good = sign(
        &k.ec,
        &claims(json!({"scope": "write read", "realm": {"role": "admin"}})),
    );
    let mut headers = bearer(&good);
    headers.insert("x-user", HeaderValue::from_static("mallory"));
    headers.insert("x-missing", HeaderValue::from_static("spoofed"));
    let outcome = auth.authenticate(&mut headers).await;
    assert_eq!(label(&outcome), "verified:idp");
    assert_eq!(headers.get("x-user").unwrap(), "alice");
    assert_eq!(headers.get("x-role").unwrap(), "admin");
    assert_eq!(headers.get("x-missing"), None);

    let no_scope = sign(&k.ec, &claims(json!({"scope": "write"})));
    let mut headers = bearer(&no_scope);
    headers.insert("x-user", HeaderValue::from_static("mallory"));
    assert_eq!(
        label(&auth.authenticate(&mut headers).await),
        "forbidden:required_claims"
    );
    assert_eq!(headers.get("x-user"), None);
}

#[tokio::test]
async fn malformed_tokens_never_panic() {
    let k = keys();
    let auth = compile(inline(&[&k.rsa]), &registry());
    let garbage: String = (0..20 * 1024)
        .map(|i| char::from(b'A' + (i % 26) as u8))
        .collect();
    assert_eq!(check(&auth, &garbage).await, "invalid:malformed");
    let huge = format!("{}.{garbage}.{garbage}", b64(br#"{"alg":"RS256"}"#));
    assert_eq!(check(&auth, &huge).await, "invalid:malformed");
    for bad in [
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
        "eyJhbGciOiJSUzI1NiJ9.e30.%%%",
    ] {
        assert_eq!(check(&auth, bad).await, "invalid:malformed", "{bad}");
    }
    assert_eq!(
        label(&auth.authenticate(&mut HeaderMap::new()).await),
        "missing"
    );
}

#[tokio::test]
async fn providers_are_picked_by_issuer() {
    let k = keys();
    let spec = json!({"optional": true, "providers": [
        {"name": "a", "issuer": "https://a.test",
         "localJWKS": {"type": "Inline", "inline": jwks(&[&k.rsa])}},
        {"name": "b", "issuer": "https://b.test",
         "localJWKS": {"type": "Inline", "inline": jwks(&[&k.ec])}},
        {"name": "fallback",
         "localJWKS": {"type": "Inline", "inline": jwks(&[&k.ed])}}
    ]});
    let auth = compile(spec, &registry());
    assert!(auth.optional());
    let token = |key: &TestKey, iss: &str| sign(key, &claims(json!({"iss": iss, "aud": null})));
    assert_eq!(
        check(&auth, &token(&k.rsa, "https://a.test")).await,
        "verified:a"
    );
    assert_eq!(
        check(&auth, &token(&k.ec, "https://b.test")).await,
        "verified:b"
    );
    assert_eq!(
        check(&auth, &token(&k.ed, "https://other")).await,
        "verified:fallback"
    );
    // Issuer b's provider does not have a's keys.
    assert_eq!(
        check(&auth, &token(&k.rsa, "https://b.test")).await,
        "invalid:unknown_kid"
    );
    // An unknown issuer goes to the fallback provider, whose keys do not fit.
    assert_eq!(
        check(&auth, &token(&k.rsa, "https://other")).await,
        "invalid:unknown_kid"
    );
}
