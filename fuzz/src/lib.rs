//! Fuzz harnesses for meshgate: one function per cargo-fuzz target, each taking
//! the fuzzer's bytes, calling the real meshgate code and checking what must hold
//! for every input (not only "does not panic").
//!
//! The binaries in `fuzz_targets/` (built by `cargo fuzz`, feature `libfuzzer`)
//! only call these functions; `tests/corpus.rs` replays the checked-in corpus and
//! the regression inputs through them in a normal `cargo test`.
//!
//! The keys and certificates in `fuzz/keys/` are test material made once by
//! `cargo test -p meshgate-fuzz --test seeds -- --ignored` (see `tests/seeds.rs`).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method};
use meshgate_crds::manifests::{load_str, Manifests};
use meshgate_crds::ApiGateway;
use meshgate_mesh::{certs, ExpectedIdentity, SpiffeId, SpiffeVerifier, WorkloadIdentity};
use meshgate_proxy::metrics::Metrics;
use meshgate_proxy::policy::jwt::{JwksRegistry, JwtAuthenticator, JwtOutcome};
use meshgate_proxy::policy::{PolicyRuntime, SecretLookup};
use meshgate_proxy::routing::{
    intersect_hostnames, normalize_host, normalize_path as normalize, percent_decode, query_value,
    RequestView,
};
use meshgate_proxy::snapshot::{compile, Snapshot};
use regex::Regex;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use serde_json::{json, Value};

/// A harness: the fuzzer's bytes in, a panic when an invariant fails.
pub type Harness = fn(&[u8]);

/// Every target, by the name of its binary and corpus directory.
pub const TARGETS: &[(&str, Harness)] = &[
    ("normalize_path", normalize_path),
    ("route_match", route_match),
    ("snapshot_compile", snapshot_compile),
    ("jwt_verify", jwt_verify),
    ("spiffe_id", spiffe_id),
    ("x509_identity", x509_identity),
    ("yaml_json", yaml_json),
];

/// Reads choices from the fuzzer's bytes; zeros once they run out.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

// ---------------------------------------------------------------------------
// normalize_path

/// Whether `segment` is `.` or `..` once `%2e`/`%2E` are decoded.
fn encoded_dot_segment(segment: &str) -> bool {
    let decoded = segment.replace("%2e", ".").replace("%2E", ".");
    decoded != segment && (decoded == "." || decoded == "..")
}

/// `routing::normalize_path` (and the host, query and percent helpers next to
/// it): a path not starting with `/` or with a percent-encoded dot segment is
/// refused; an accepted one comes out starting with `/`, without `.`/`..`
/// segments, runs of `/` or backslashes, no longer than it went in, and left as
/// it is by a second pass; a plain path (letters, digits, `-`, `_`, single `/`)
/// passes through untouched.
pub fn normalize_path(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let input = input.as_ref();
    let must_refuse = !input.starts_with('/') || input.split('/').any(encoded_dot_segment);
    if let Some(out) = normalize(input) {
        assert!(!must_refuse, "{input:?} accepted as {out:?}");
        assert!(out.starts_with('/'), "{input:?} -> {out:?}");
        assert!(
            !out.split('/').any(|s| s == "." || s == ".."),
            "{input:?} -> {out:?} keeps a dot segment"
        );
        assert!(!out.contains("//"), "{input:?} -> {out:?} keeps a run of /");
        assert!(
            !out.contains('\\'),
            "{input:?} -> {out:?} keeps a backslash"
        );
        assert!(out.len() <= input.len(), "{input:?} -> {out:?} grew");
        let plain = !input.contains("//")
            && input
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_'));
        if plain {
            assert!(
                matches!(&out, Cow::Borrowed(p) if *p == input),
                "{input:?} -> {out:?}: a plain path was changed"
            );
        }
        let again = normalize(&out);
        assert!(
            matches!(again, Some(Cow::Borrowed(p)) if p == out.as_ref()),
            "{input:?} -> {out:?} -> {again:?}: not idempotent"
        );
    }
    if let Some(host) = normalize_host(input) {
        assert!(!host.is_empty());
        assert!(!host.bytes().any(|b| b.is_ascii_uppercase()), "{host:?}");
        assert!(!host.contains(['/', '@', ' ', '\\']), "{host:?}");
    }
    let _ = percent_decode(input);
    let _ = query_value(input, "q");
}

// ---------------------------------------------------------------------------
// route_match

const LISTENER_HOSTS: &[Option<&str>] = &[
    None,
    None,
    Some("example.com"),
    Some("*.example.com"),
    Some("a.example.com"),
    Some("*.a.example.com"),
];
const ROUTE_HOSTS: &[&str] = &[
    "example.com",
    "a.example.com",
    "b.a.example.com",
    "*.example.com",
    "*.a.example.com",
    "other.org",
];
const REQUEST_HOSTS: &[&str] = &[
    "example.com",
    "a.example.com",
    "b.a.example.com",
    "x.b.a.example.com",
    "A.Example.COM:8080",
    "example.com.",
    "a..example.com",
    ".example.com",
    "other.org",
    "x.other.org",
    "[::1]:80",
];
const ROUTE_PATHS: &[&str] = &[
    "/", "/a", "/a/", "/a/b", "/ab", "/b", "//", "/a//b", "/a/b/", "/a/bc", "/%61",
];
const ROUTE_REGEXES: &[&str] = &["/a.*", "/[ab]+", "/a/b", "/(a|b)/.*", ".*", "/a/?"];
const REQUEST_SEGMENTS: &[&str] = &["a", "b", "ab", "", ".", "..", "bc", "%61", "%2e"];
const LISTENERS: &[&[&str]] = &[&[], &[], &["l"], &["m"], &["l", "m"], &["nope"]];
const METHODS: &[Option<&str>] = &[None, None, Some("GET"), Some("POST")];
const VALUE_RULES: &[Option<(&str, &str)>] = &[
    None,
    None,
    Some(("Exact", "1")),
    Some(("RegularExpression", "[0-9]+")),
];
const REQUEST_HEADERS: &[Option<&str>] = &[None, Some("1"), Some("12"), Some("x")];
const REQUEST_QUERIES: &[Option<&str>] = &[
    None,
    Some("q=1"),
    Some("q=12"),
    Some("q=%31"),
    Some("a=1&q=1"),
    Some("q"),
    Some("q=x"),
];

const BACKEND: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: fuzz}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc-1, namespace: fuzz, labels: {kubernetes.io/service-name: svc}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [127.0.0.1]}]
"#;

fn compile_manifests(manifests: &Manifests) -> Result<Snapshot, meshgate_proxy::Error> {
    // Fresh registries per input: they keep per-route state (counters, JWKS
    // sources, buckets) that would otherwise grow over a run and make inputs
    // depend on the ones before.
    let metrics = Metrics::default();
    let policy = PolicyRuntime::new(rustls::RootCertStore::empty());
    compile(manifests, None, 1, &metrics, &policy)
}

/// One generated route match: path (`None`: default `/` prefix), method,
/// header `x-h` and query parameter `q` conditions.
struct GenMatch {
    path: Option<(&'static str, &'static str)>,
    method: Option<&'static str>,
    header: Option<(&'static str, &'static str)>,
    query: Option<(&'static str, &'static str)>,
}

impl GenMatch {
    fn json(&self) -> Value {
        let mut m = json!({});
        if let Some((kind, value)) = self.path {
            m["path"] = json!({"type": kind, "value": value});
        }
        if let Some(method) = self.method {
            m["method"] = json!(method);
        }
        if let Some((kind, value)) = self.header {
            m["headers"] = json!([{"type": kind, "name": "x-h", "value": value}]);
        }
        if let Some((kind, value)) = self.query {
            m["queryParams"] = json!([{"type": kind, "name": "q", "value": value}]);
        }
        m
    }
}

struct GenRoute {
    hostnames: Vec<&'static str>,
    listeners: &'static [&'static str],
    matches: Vec<GenMatch>,
}

fn value_holds(rule: (&str, &str), value: &str) -> bool {
    match rule {
        ("Exact", v) => v == value,
        (_, pattern) => Regex::new(&format!("^(?:{pattern})$"))
            .unwrap()
            .is_match(value),
    }
}

/// The route compiler and the per-listener index (`RouteTable`): a generated
/// route set is compiled through the real snapshot path, and the route the
/// index picks for a generated request must be the one a brute-force scan of
/// every (route, hostname, match) by Gateway API precedence picks.
pub fn route_match(data: &[u8]) {
    let mut c = Choices(data);
    let listener_host = c.pick(LISTENER_HOSTS);
    let routes: Vec<GenRoute> = (0..1 + c.below(6))
        .map(|_| GenRoute {
            hostnames: (0..c.below(3)).map(|_| c.pick(ROUTE_HOSTS)).collect(),
            listeners: c.pick(LISTENERS),
            matches: (0..c.below(3))
                .map(|_| GenMatch {
                    path: match c.below(4) {
                        0 => None,
                        1 => Some(("Exact", c.pick(ROUTE_PATHS))),
                        2 => Some(("PathPrefix", c.pick(ROUTE_PATHS))),
                        _ => Some(("RegularExpression", c.pick(ROUTE_REGEXES))),
                    },
                    method: c.pick(METHODS),
                    header: c.pick(VALUE_RULES),
                    query: c.pick(VALUE_RULES),
                })
                .collect(),
        })
        .collect();
    let raw_host = c.pick(REQUEST_HOSTS);
    let raw_path = format!(
        "/{}",
        (0..1 + c.below(4))
            .map(|_| c.pick(REQUEST_SEGMENTS))
            .collect::<Vec<_>>()
            .join("/")
    );
    let method = c.pick(&[Method::GET, Method::POST, Method::HEAD]);
    let header = c.pick(REQUEST_HEADERS);
    let query = c.pick(REQUEST_QUERIES);

    let mut listener = json!({"name": "l", "port": 8080, "protocol": "HTTP"});
    if let Some(h) = listener_host {
        listener["hostname"] = json!(h);
    }
    let route_json: Vec<Value> = routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "name": format!("r{i}"),
                "hostnames": r.hostnames,
                "listeners": r.listeners,
                "matches": r.matches.iter().map(GenMatch::json).collect::<Vec<_>>(),
                "backendRefs": [{"name": "svc", "port": 80}],
            })
        })
        .collect();
    let gateway: ApiGateway = serde_json::from_value(json!({
        "apiVersion": "meshgate.io/v1alpha1",
        "kind": "ApiGateway",
        "metadata": {"name": "gw", "namespace": "fuzz"},
        "spec": {
            "listeners": [listener, {"name": "m", "port": 8081, "protocol": "HTTP"}],
            "routes": route_json,
        },
    }))
    .expect("generated ApiGateway");
    static BASE: OnceLock<Manifests> = OnceLock::new();
    let mut manifests = BASE
        .get_or_init(|| {
            let loaded = load_str("backend", BACKEND);
            assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
            loaded.manifests
        })
        .clone();
    manifests.gateways.push(gateway);
    let snapshot = compile_manifests(&manifests).expect("generated gateway compiles");

    let (Some(host), Some(path)) = (normalize_host(raw_host), normalize(&raw_path)) else {
        return;
    };
    let mut headers = HeaderMap::new();
    if let Some(v) = header {
        headers.insert("x-h", HeaderValue::from_static(v));
    }
    let view = RequestView {
        host: &host,
        path: &path,
        query,
        method: &method,
        headers: &headers,
    };
    let found = snapshot
        .listener("l")
        .expect("listener l")
        .routes
        .find(&view)
        .map(|m| (m.route.name.clone(), m.prefix.map(str::to_string)));

    // Brute force: every candidate that matches, ranked by Gateway API precedence.
    let mut best = None;
    for (ri, route) in routes.iter().enumerate() {
        let name = format!("r{ri}");
        let compiled = snapshot.routes.iter().any(|r| r.name == name);
        let attached = route.listeners.is_empty() || route.listeners.contains(&"l");
        if !compiled || !attached {
            continue;
        }
        let keys: Vec<Option<String>> = if route.hostnames.is_empty() {
            vec![listener_host.map(str::to_string)]
        } else {
            route
                .hostnames
                .iter()
                .filter_map(|h| intersect_hostnames(listener_host, h))
                .map(Some)
                .collect()
        };
        let default_match = [GenMatch {
            path: None,
            method: None,
            header: None,
            query: None,
        }];
        let matches: &[GenMatch] = if route.matches.is_empty() {
            &default_match
        } else {
            &route.matches
        };
        for key in &keys {
            let host_rank = match key.as_deref() {
                None => (2, Reverse(0)),
                Some(k) => match k.strip_prefix("*.") {
                    Some(s) if host.len() > s.len() + 1 && host.ends_with(&format!(".{s}")) => {
                        (1, Reverse(s.len()))
                    }
                    Some(_) => continue,
                    None if k == host.as_ref() => (0, Reverse(0)),
                    None => continue,
                },
            };
            for (mi, m) in matches.iter().enumerate() {
                let (kind, value) = m.path.unwrap_or(("PathPrefix", "/"));
                let (path_rank, prefix) = match kind {
                    "Exact" if value == path.as_ref() => ((0, Reverse(0)), None),
                    "PathPrefix" => {
                        let p = value.trim_end_matches('/');
                        let holds = p.is_empty() || path == p || path.starts_with(&format!("{p}/"));
                        if !holds {
                            continue;
                        }
                        ((1, Reverse(p.len())), Some(p.to_string()))
                    }
                    "RegularExpression" if value_holds(("Re", value), &path) => {
                        ((2, Reverse(0)), None)
                    }
                    _ => continue,
                };
                let method_ok = m.method.is_none_or(|x| x == method.as_str());
                let header_ok = m
                    .header
                    .is_none_or(|rule| header.is_some_and(|v| value_holds(rule, v)));
                let query_ok = m.query.is_none_or(|rule| {
                    query
                        .and_then(|q| query_value(q, "q"))
                        .is_some_and(|v| value_holds(rule, &v))
                });
                if !(method_ok && header_ok && query_ok) {
                    continue;
                }
                let rank = (
                    host_rank,
                    path_rank,
                    Reverse(m.method.is_some()),
                    Reverse(usize::from(m.header.is_some())),
                    Reverse(usize::from(m.query.is_some())),
                    ri,
                    mi,
                );
                if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                    best = Some((rank, (name.clone(), prefix)));
                }
            }
        }
    }
    let expected = best.map(|(_, found)| found);
    assert_eq!(
        found, expected,
        "host {host:?} path {path:?} {method} x-h {header:?} query {query:?}"
    );
}

// ---------------------------------------------------------------------------
// snapshot_compile

/// The standalone loading path (`manifests::load_str`, as `reload::load_manifests`
/// reads each file) and `snapshot::compile` on arbitrary YAML: never a panic,
/// and a compiled snapshot is coherent (listener names and ports unique, every
/// attached route served, route ids in declaration order, `/config` renders).
pub fn snapshot_compile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = load_str("fuzz", text);
    for e in &loaded.errors {
        let _ = e.to_string();
    }
    if loaded.manifests.gateways.is_empty() {
        return;
    }
    // Cluster mode compiles whatever was read; standalone mode refuses a load
    // with errors, so compiling regardless covers both.
    let Ok(snapshot) = compile_manifests(&loaded.manifests) else {
        return;
    };
    assert!(!snapshot.listeners.is_empty());
    for (i, l) in snapshot.listeners.iter().enumerate() {
        assert_ne!(l.port, 0);
        for other in &snapshot.listeners[..i] {
            assert_ne!(l.name, other.name, "duplicate listener name");
            assert_ne!(l.port, other.port, "duplicate listener port");
        }
        for name in &l.routes.attached {
            assert!(
                snapshot.routes.iter().any(|r| &r.name == name),
                "listener {} attaches {name}, which is not served",
                l.name
            );
        }
    }
    // Route ids are positions in the ApiGateway's `routes`: dropped routes leave gaps.
    let declared = loaded.manifests.gateways[0].spec.routes.len();
    for (i, r) in snapshot.routes.iter().enumerate() {
        assert!(r.id < declared.max(1) || loaded.manifests.gateways.len() > 1);
        if i > 0 {
            assert!(snapshot.routes[i - 1].id < r.id, "route ids out of order");
        }
        assert!(!r.matches.is_empty(), "route {} has no match", r.name);
    }
    let summary = snapshot.summary(&[]);
    serde_json::to_string(&summary).expect("summary serialises");
}

// ---------------------------------------------------------------------------
// jwt_verify

const ISSUER: &str = "https://issuer.fuzz.example";
/// RFC 7515 appendix A.2: an RSA key whose private part this harness does not hold.
const RSA_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";

/// Test keys (PKCS#8) for signing tokens; public halves are in the JWKS.
pub const JWT_ED25519_PKCS8: &[u8] = include_bytes!("../keys/jwt-ed25519.pk8");
pub const JWT_P256_PKCS8: &[u8] = include_bytes!("../keys/jwt-p256.pk8");

struct JwtKeys {
    ed: aws_lc_rs::signature::Ed25519KeyPair,
    ec: aws_lc_rs::signature::EcdsaKeyPair,
    jwks: String,
}

fn jwt_keys() -> &'static JwtKeys {
    static KEYS: OnceLock<JwtKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use aws_lc_rs::signature::KeyPair as _;
        let ed = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(JWT_ED25519_PKCS8).unwrap();
        let ec = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            JWT_P256_PKCS8,
        )
        .unwrap();
        let point = ec.public_key().as_ref();
        let jwks = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "use": "sig",
             "x": URL_SAFE_NO_PAD.encode(ed.public_key().as_ref())},
            {"kty": "EC", "crv": "P-256", "kid": "ec",
             "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])},
            {"kty": "RSA", "kid": "rsa", "e": "AQAB", "n": RSA_N},
        ]})
        .to_string();
        JwtKeys { ed, ec, jwks }
    })
}

/// Polls a future that must complete without waiting (local keys only).
fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("verification with a local JWKS waited"),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Checks a token the authenticator accepted, independently of jsonwebtoken:
/// its signature verifies with aws-lc-rs under the JWKS key its header names
/// (by `kid` and algorithm), and its claims are the provider's.
fn check_accepted(token: &str) {
    let keys = jwt_keys();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted {token:?}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap())
        .expect("accepted token header");
    let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
        .expect("accepted token payload");
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature base64");
    let signed = &token[..parts[0].len() + 1 + parts[1].len()];
    let kid = header.get("kid").and_then(Value::as_str);
    use aws_lc_rs::signature::KeyPair as _;
    let ok = match header["alg"].as_str() {
        Some("EdDSA") if kid.is_none_or(|k| k == "ed") => {
            UnparsedPublicKey::new(&ED25519, keys.ed.public_key().as_ref())
                .verify(signed.as_bytes(), &signature)
                .is_ok()
        }
        Some("ES256") if kid.is_none_or(|k| k == "ec") => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, keys.ec.public_key().as_ref())
                .verify(signed.as_bytes(), &signature)
                .is_ok()
        }
        _ => false,
    };
    assert!(
        ok,
        "accepted a token not signed by the JWKS key it names: {token:?}"
    );
    assert_eq!(payload["iss"].as_str(), Some(ISSUER), "accepted {token:?}");
    if let Some(exp) = payload.get("exp") {
        let exp = exp.as_f64().expect("numeric exp");
        assert!(
            exp + 60.0 >= unix_now() as f64,
            "accepted expired {token:?}"
        );
    }
}

const ALGS: &[Option<&str>] = &[
    None,
    None,
    None,
    Some("RS256"),
    Some("HS256"),
    Some("none"),
    Some("ES384"),
    Some("EdDSA"),
    Some("ES256"),
];
const KIDS: &[Option<&str>] = &[None, None, Some("ed"), Some("ec"), Some("rsa"), Some("x")];
const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=";

/// JWT verification (`policy::jwt`) against a fixed local JWKS (Ed25519,
/// P-256 and RSA keys). Two modes, by the first byte: an arbitrary token, or a
/// token this harness signs (with a chosen header, claims and then byte
/// mutations). Whatever the token, an accepted one must really be signed by
/// the key it names and carry valid claims; a well-formed token signed with
/// the right key and left unmutated must be accepted.
pub fn jwt_verify(data: &[u8]) {
    let keys = jwt_keys();
    let mut c = Choices(data);
    let mode = c.byte();
    let (token, must_accept) = if mode % 2 == 0 {
        (String::from_utf8_lossy(c.0).into_owned(), false)
    } else {
        let use_ed = c.byte() % 2 == 0;
        let alg = c
            .pick(ALGS)
            .unwrap_or(if use_ed { "EdDSA" } else { "ES256" });
        let kid = c.pick(KIDS);
        let iss = c.pick(&[Some(ISSUER), Some(ISSUER), None, Some("https://other")]);
        let now = unix_now();
        let exp = c.pick(&[
            Some(json!(now + 3600)),
            None,
            Some(json!(now - 3600)),
            Some(json!("soon")),
            Some(json!(1e300)),
        ]);
        let extra = c.byte();
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        if extra & 1 != 0 {
            header["crit"] = json!(["exp"]);
        }
        let mut payload = json!({"sub": "fuzz"});
        if let Some(iss) = iss {
            payload["iss"] = json!(iss);
        }
        if let Some(exp) = &exp {
            payload["exp"] = exp.clone();
        }
        if extra & 2 != 0 {
            payload["nbf"] = json!(now + 3600);
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature = if use_ed {
            keys.ed.sign(signing_input.as_bytes()).as_ref().to_vec()
        } else {
            keys.ec
                .sign(
                    &aws_lc_rs::rand::SystemRandom::new(),
                    signing_input.as_bytes(),
                )
                .unwrap()
                .as_ref()
                .to_vec()
        };
        let mut token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
        // The remaining bytes, in pairs: replace the character at a position.
        let mut mutated = false;
        while c.0.len() >= 2 {
            let at = usize::from(c.byte()) * 7 % token.len();
            let ch = TOKEN_CHARS[c.below(TOKEN_CHARS.len())];
            let mut bytes = token.into_bytes();
            mutated |= bytes[at] != ch;
            bytes[at] = ch;
            token = String::from_utf8(bytes).unwrap();
        }
        let fits = if use_ed {
            alg == "EdDSA" && kid.is_none_or(|k| k == "ed")
        } else {
            alg == "ES256" && kid.is_none_or(|k| k == "ec")
        };
        let must = fits
            && !mutated
            && iss == Some(ISSUER)
            && exp
                .as_ref()
                .is_none_or(|e| e.as_i64().is_some_and(|e| e > now))
            && extra & 3 == 0;
        (token, must)
    };

    static REGISTRY: OnceLock<Arc<JwksRegistry>> = OnceLock::new();
    let registry = REGISTRY.get_or_init(|| JwksRegistry::new(rustls::RootCertStore::empty()));
    let spec = serde_json::from_value(json!({"providers": [{
        "name": "fuzz",
        "issuer": ISSUER,
        "localJWKS": {"type": "Inline", "inline": keys.jwks},
    }]}))
    .expect("jwt spec");
    let auth = JwtAuthenticator::compile(&spec, "fuzz", &SecretLookup::from_slice(&[]), registry)
        .expect("jwt authenticator");
    let mut headers = HeaderMap::new();
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return;
    };
    headers.insert(AUTHORIZATION, value);
    let outcome = now_or_never(auth.authenticate(&mut headers));
    match &outcome {
        JwtOutcome::Verified { .. } => check_accepted(token.trim()),
        _ => assert!(!must_accept, "refused {token:?}: {outcome:?}"),
    }
}

// ---------------------------------------------------------------------------
// spiffe_id

fn spiffe_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^spiffe://[a-z0-9._-]+/ns/([A-Za-z0-9._-]+)/sa/([A-Za-z0-9._-]+)$").unwrap()
    })
}

/// `SpiffeId` parsing: accepted exactly when the text has Istio's form (checked
/// against a regular expression), and then `parse → to_string` gives the text
/// back, `parse` of that is equal, and `SpiffeId::new` of the parts agrees.
pub fn spiffe_id(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    let expected = spiffe_pattern().captures(text).is_some_and(|c| {
        let ok = |s: &str| s != "." && s != "..";
        ok(&c[1]) && ok(&c[2])
    });
    match text.parse::<SpiffeId>() {
        Ok(id) => {
            assert!(expected, "{text:?} accepted");
            let shown = id.to_string();
            assert_eq!(shown, text);
            assert_eq!(shown.parse::<SpiffeId>().unwrap(), id);
            let rebuilt =
                SpiffeId::new(id.trust_domain(), id.namespace(), id.service_account()).unwrap();
            assert_eq!(rebuilt, id);
            let namespace = ExpectedIdentity::Namespace {
                trust_domain: id.trust_domain().to_string(),
                namespace: id.namespace().to_string(),
            };
            assert!(namespace.check(&id).is_ok());
            assert!(ExpectedIdentity::Exact(vec![id.clone()]).check(&id).is_ok());
        }
        Err(e) => {
            assert!(!expected, "{text:?} refused: {e}");
            let _ = e.to_string();
        }
    }
}

// ---------------------------------------------------------------------------
// x509_identity

/// The mesh test CA's root, and a workload identity it issued (test material).
pub const MESH_ROOT_DER: &[u8] = include_bytes!("../keys/mesh-root.der");
pub const MESH_WORKLOAD_DER: &[u8] = include_bytes!("../keys/mesh-workload.der");
pub const MESH_WORKLOAD_KEY_PKCS8: &[u8] = include_bytes!("../keys/mesh-workload.pk8");
/// Splits an x509_identity input into the leaf and its intermediates.
pub const CHAIN_SEPARATOR: &[u8] = b"\xff\xffCHAIN";
/// The time chains are verified at (2027-01-15); the test certificates are
/// valid from 1975 to 4096 (rcgen's defaults).
pub const VERIFY_AT_UNIX: u64 = 1_800_000_000;

fn mesh_verifier() -> &'static SpiffeVerifier {
    static VERIFIER: OnceLock<SpiffeVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let identity = WorkloadIdentity::new(
            vec![CertificateDer::from(MESH_WORKLOAD_DER.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(MESH_WORKLOAD_KEY_PKCS8.to_vec())),
            vec![CertificateDer::from(MESH_ROOT_DER.to_vec())],
        )
        .expect("test workload identity");
        let (sender, watch) = meshgate_mesh::identity::fixed(identity);
        // The receiver keeps the value; the sender is not needed again.
        std::mem::forget(sender);
        SpiffeVerifier::new(
            watch,
            ExpectedIdentity::Namespace {
                trust_domain: "cluster.local".into(),
                namespace: "fuzz".into(),
            },
        )
    })
}

fn split_chain(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest
        .windows(CHAIN_SEPARATOR.len())
        .position(|w| w == CHAIN_SEPARATOR)
    {
        parts.push(&rest[..at]);
        rest = &rest[at + CHAIN_SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

/// SPIFFE identity extraction (`certs::spiffe_id`, validity dates, PEM chains)
/// and mesh peer verification (`SpiffeVerifier::verify_chain` against the test
/// CA) on arbitrary DER: never a panic; an extracted ID round-trips; a chain
/// that verifies names the expected namespace and the same ID `spiffe_id` reads.
pub fn x509_identity(data: &[u8]) {
    let parts = split_chain(data);
    let leaf = CertificateDer::from(parts[0]);
    let intermediates: Vec<CertificateDer<'_>> = parts[1..]
        .iter()
        .map(|p| CertificateDer::from(*p))
        .collect();
    let id = certs::spiffe_id(&leaf);
    if let Ok(id) = &id {
        assert_eq!(&id.to_string().parse::<SpiffeId>().unwrap(), id);
    }
    let _ = certs::not_before_unix(&leaf);
    let _ = certs::not_after_unix(&leaf);
    let now = UnixTime::since_unix_epoch(Duration::from_secs(VERIFY_AT_UNIX));
    if let Ok(verified) = mesh_verifier().verify_chain(&leaf, &intermediates, now) {
        assert_eq!(id.as_ref().ok(), Some(&verified), "verified ID differs");
        assert_eq!(verified.trust_domain(), "cluster.local");
        assert_eq!(verified.namespace(), "fuzz");
    }
    if let Ok(pem) = std::str::from_utf8(data) {
        if let Ok(chain) = certs::parse_pem_chain(pem) {
            assert!(!chain.is_empty());
            for cert in &chain {
                let _ = certs::spiffe_id(cert);
            }
        }
    }
}

/// The fast YAML reader (`meshgate_crds::yaml_json`, libyaml's events written
/// as JSON) on arbitrary text: wherever it answers, serde_yaml_ng reads the
/// text too and gives the same value for every document.
pub fn yaml_json(data: &[u8]) {
    use serde::Deserialize as _;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(documents) = meshgate_crds::yaml_json::documents(text) else {
        return;
    };
    let fast: Vec<Value> = documents
        .iter()
        .map(|json| serde_json::from_str(json).unwrap_or_else(|e| panic!("{json:?}: {e}")))
        .collect();
    let mut slow = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        match Value::deserialize(document) {
            Ok(value) => slow.push(value),
            Err(e) => panic!("the fast reader read {text:?}, serde_yaml_ng did not: {e}"),
        }
    }
    // serde_yaml_ng reads an empty stream as one empty document.
    if fast.is_empty() && slow == [Value::Null] {
        return;
    }
    assert_eq!(fast, slow, "the readers differ on {text:?}");
}
