//! ApiPolicy enforcement over real sockets: CORS, IP filter, request limits,
//! API keys, authorization, attachment and merge, timeouts, fail-closed policies.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshgate_proxy::demo::spawn_echo;
use meshgate_proxy::runtime::Running;

const WAIT: Duration = Duration::from_secs(10);

/// A gateway `test/gw` with routes `open` (/open) and `api` (/api) to an echo
/// backend, plus `policies` (YAML documents).
async fn setup(policies: &str, client_traffic: Option<&str>) -> (Running, SocketAddr) {
    let echo = spawn_echo("echo").await.unwrap();
    let routes = format!(
        "{}{}",
        tagged_route("open", "[{path: {value: /open}}]", "echo", ""),
        tagged_route("api", "[{path: {value: /api}}]", "echo", "")
    );
    let listener = http_listener("http", 80);
    let gw = match client_traffic {
        Some(ct) => gateway_yaml_with_client(&listener, &routes, ct),
        None => gateway_yaml(&listener, &routes),
    };
    let yaml = format!("{gw}{}\n{policies}", service_yaml("echo", echo, true));
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    (proxy, addr)
}

fn policy(name: &str, section: Option<&str>, body: &str) -> String {
    let section = section
        .map(|s| format!(", sectionName: {s}"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: meshgate.io/v1alpha1\nkind: ApiPolicy\nmetadata: {{name: {name}, namespace: test, creationTimestamp: \"2026-01-01T00:00:00Z\"}}\nspec:\n  targetRefs: [{{group: meshgate.io, kind: ApiGateway, name: gw{section}}}]\n{body}\n"
    )
}

fn header<'a>(reply: &'a meshgate_proxy::client::Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

async fn send_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> meshgate_proxy::client::Reply {
    let mut builder = request(method, "a.test", path);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    send(addr, builder.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn cors_preflight_matrix() {
    let cors = policy(
        "cors",
        Some("api"),
        "  cors:\n    allowOrigins: [\"https://app.example.com\", \"https://*.example.org\"]\n    allowMethods: [GET, PUT]\n    allowHeaders: [x-token]\n    exposeHeaders: [x-trace]\n    maxAge: 10m\n    allowCredentials: true\n",
    );
    let (_proxy, addr) = setup(&cors, None).await;
    let preflight = |origin: &'static str| {
        vec![
            ("origin", origin),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-token"),
        ]
    };

    // (origin, preflight status, Allow-Origin expected)
    let cases = [
        (
            "https://app.example.com",
            StatusCode::NO_CONTENT,
            Some("https://app.example.com"),
        ),
        (
            "https://a.example.org",
            StatusCode::NO_CONTENT,
            Some("https://a.example.org"),
        ),
        ("https://example.org", StatusCode::FORBIDDEN, None),
        (
            "https://app.example.com.evil.test",
            StatusCode::FORBIDDEN,
            None,
        ),
        ("http://app.example.com", StatusCode::FORBIDDEN, None),
    ];
    for (origin, status, allow) in cases {
        let r = send_with(addr, "OPTIONS", "/api", &preflight(origin)).await;
        assert_eq!(r.status, status, "preflight from {origin}");
        assert_eq!(header(&r, "access-control-allow-origin"), allow, "{origin}");
        assert_eq!(
            header(&r, "x-route"),
            None,
            "a preflight never reaches the backend"
        );
        if status == StatusCode::NO_CONTENT {
            assert_eq!(header(&r, "access-control-allow-methods"), Some("GET, PUT"));
            assert_eq!(header(&r, "access-control-allow-headers"), Some("x-token"));
            assert_eq!(header(&r, "access-control-max-age"), Some("600"));
            assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
            assert_eq!(header(&r, "vary"), Some("Origin"));
        }
    }

    // Actual requests: headers for allowed origins only; always proxied.
    let r = send_with(
        addr,
        "GET",
        "/api",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(header(&r, "access-control-expose-headers"), Some("x-trace"));
    let r = send_with(addr, "GET", "/api", &[("origin", "https://evil.test")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    // A route without the policy: OPTIONS goes to the backend, no CORS headers.
    let r = send_with(
        addr,
        "OPTIONS",
        "/open",
        &preflight("https://app.example.com"),
    )
    .await;
    assert_eq!(header(&r, "x-route"), Some("open"));
    assert_eq!(header(&r, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn ip_filter_without_trusted_hops_uses_the_peer() {
    let p = policy("ip", Some("api"), "  ipFilter:\n    deny: [127.0.0.0/8]\n");
    let (_proxy, addr) = setup(&p, None).await;
    let r = send_with(addr, "GET", "/api", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(header(&r, "x-meshgate-flags"), Some("UAEX"));
    // A forged X-Forwarded-For is not believed without trusted hops.
    let r = send_with(addr, "GET", "/api", &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        send_with(addr, "GET", "/open", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn ip_filter_with_one_trusted_hop() {
    let p = policy(
        "ip",
        Some("api"),
        "  ipFilter:\n    allow: [203.0.113.0/24]\n    deny: [203.0.113.66/32]\n",
    );
    let (_proxy, addr) = setup(&p, Some("{numTrustedHops: 1}")).await;
    // (X-Forwarded-For as received, status): the last entry is the client.
    let cases = [
        (None, StatusCode::FORBIDDEN),
        (Some("203.0.113.9"), StatusCode::OK),
        (Some("10.0.0.1, 203.0.113.9"), StatusCode::OK),
        (Some("203.0.113.9, 10.0.0.1"), StatusCode::FORBIDDEN),
        (Some("203.0.113.66"), StatusCode::FORBIDDEN),
        (Some("not-an-ip"), StatusCode::FORBIDDEN),
    ];
    for (xff, status) in cases {
        let headers: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
        let r = send_with(addr, "GET", "/api", &headers).await;
        assert_eq!(r.status, status, "X-Forwarded-For {xff:?}");
    }
}

/// A request body sent in chunks, without Content-Length.
async fn post_chunked(addr: SocketAddr, path: &str, chunks: usize, chunk: usize) -> StatusCode {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for _ in 0..chunks {
            if tx.send(Bytes::from(vec![b'x'; chunk])).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let client: Client<_, ChannelBody> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("host", "a.test")
        .body(ChannelBody(rx))
        .unwrap();
    let response = client.request(req).await.expect("response");
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test]
async fn request_limits_413_while_streaming_and_431() {
    let p = policy(
        "limits",
        Some("api"),
        "  requestLimits:\n    maxBodyBytes: 1000\n    maxHeaders: 8\n    maxHeaderBytes: 1024\n",
    );
    let (proxy, addr) = setup(&p, None).await;
    // Declared too large: refused before the backend.
    let big = request("POST", "a.test", "/api")
        .body(Full::new(Bytes::from(vec![b'x'; 1001])))
        .unwrap();
    let r = send(addr, big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(header(&r, "x-meshgate-flags"), Some("RTL"));
    let ok = request("POST", "a.test", "/api")
        .body(Full::new(Bytes::from(vec![b'x'; 1000])))
        .unwrap();
    assert_eq!(send(addr, ok).await.status, StatusCode::OK);
    // Streamed without a length: refused once the 1001st byte passes.
    assert_eq!(post_chunked(addr, "/api", 10, 100).await, StatusCode::OK);
    assert_eq!(
        post_chunked(addr, "/api", 50, 100).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // The route without the policy takes big bodies.
    assert_eq!(post_chunked(addr, "/open", 50, 100).await, StatusCode::OK);
    // Headers: too many, and too large.
    let many: Vec<(String, &str)> = (0..10).map(|i| (format!("x-h{i}"), "v")).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        send_with(addr, "GET", "/api", &many).await.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let long = "v".repeat(1100);
    assert_eq!(
        send_with(addr, "GET", "/api", &[("x-long", &long)])
            .await
            .status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(
        send_with(addr, "GET", "/open", &[("x-long", &long)])
            .await
            .status,
        StatusCode::OK
    );
    let refused = metric(
        &proxy,
        "meshgate_policy_refusals_total{check=\"request_limits\",reason=\"body_too_large\"}",
    )
    .await;
    assert_eq!(refused, Some(2.0));
}

const KEYS_V1: &str = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: api-keys, namespace: test}\nstringData: {alice: key-of-alice, ci: key-of-ci}\n";

fn api_key_policy(extra: &str) -> String {
    policy(
        "keys",
        Some("api"),
        &format!("  authentication:\n    apiKey:\n      credentialRefs: [{{name: api-keys}}]\n      extractFrom: [{{headers: [x-api-key], params: [api_key]}}]\n      forwardClientIDHeader: x-consumer\n{extra}"),
    )
}

#[tokio::test]
async fn api_keys_identify_consumers_and_authorization_decides() {
    let authz = "  authorization:\n    rules:\n    - {name: ci-only, action: Allow, principal: {consumers: [ci]}}\n";
    let (proxy, addr) = setup(&format!("{KEYS_V1}{}", api_key_policy(authz)), None).await;

    let r = send_with(addr, "GET", "/api", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send_with(addr, "GET", "/api", &[("x-api-key", "wrong")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // alice is authenticated but not authorized: 403.
    let r = send_with(addr, "GET", "/api", &[("x-api-key", "key-of-alice")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // ci passes, by header or query; the consumer goes to the backend, and a
    // client-supplied consumer header is replaced.
    let r = send_with(
        addr,
        "GET",
        "/api",
        &[("x-api-key", "key-of-ci"), ("x-consumer", "alice")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json().unwrap()["headers"]["x-consumer"], "ci");
    let r = send_with(addr, "GET", "/api?api_key=key-of-ci", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    // The snapshot dump holds no key.
    let dump = config(&proxy).await.to_string();
    assert!(!dump.contains("key-of-ci"), "{dump}");
    assert_eq!(
        metric(
            &proxy,
            "meshgate_policy_refusals_total{check=\"api_key\",reason=\"unknown_key\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &proxy,
            "meshgate_policy_refusals_total{check=\"authorization\",reason=\"denied\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn api_key_secret_change_is_picked_up_live() {
    let dir = TestDir::new("api-keys-live");
    let echo = spawn_echo("echo").await.unwrap();
    dir.write("backend.yaml", &service_yaml("echo", echo, true));
    dir.write(
        "gateway.yaml",
        &gateway_yaml(
            &http_listener("http", 80),
            &tagged_route("api", "[{path: {value: /api}}]", "echo", ""),
        ),
    );
    dir.write("policy.yaml", &api_key_policy(""));
    dir.write("keys.yaml", KEYS_V1);
    let proxy = start_dir(dir.path(), &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    assert_eq!(
        send_with(addr, "GET", "/api", &[("x-api-key", "key-of-alice")])
            .await
            .status,
        StatusCode::OK
    );

    // Rotate alice's key: the old one stops working, the new one works, no restart.
    dir.write(
        "keys.yaml",
        &KEYS_V1.replace("key-of-alice", "new-key-of-alice"),
    );
    let rotated = eventually(WAIT, || async {
        send_with(addr, "GET", "/api", &[("x-api-key", "key-of-alice")])
            .await
            .status
            == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(rotated, "the old key is still accepted");
    let r = send_with(addr, "GET", "/api", &[("x-api-key", "new-key-of-alice")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json().unwrap()["headers"]["x-consumer"], "alice");
}

#[tokio::test]
async fn a_policy_with_a_missing_secret_fails_closed() {
    let (proxy, addr) = setup(&api_key_policy(""), None).await;
    let r = send_with(addr, "GET", "/api", &[("x-api-key", "key-of-ci")]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(header(&r, "x-meshgate-flags"), Some("PE"));
    assert_eq!(
        send_with(addr, "GET", "/open", &[]).await.status,
        StatusCode::OK
    );
    let errors = config(&proxy).await["errors"].to_string();
    assert!(
        errors.contains("Secret test/api-keys not found"),
        "{errors}"
    );
}

#[tokio::test]
async fn route_policy_replaces_or_merges_with_the_gateway_policy() {
    let gateway_wide = policy("wide", None, "  ipFilter:\n    deny: [127.0.0.0/8]\n");
    // Replaces (no mergeType): /api is not IP-filtered, only limited.
    let on_api = policy(
        "on-api",
        Some("api"),
        "  requestLimits:\n    maxBodyBytes: 10\n",
    )
    .replace("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z");
    let (proxy, addr) = setup(&format!("{gateway_wide}{on_api}"), None).await;
    assert_eq!(
        send_with(addr, "GET", "/open", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send_with(addr, "GET", "/api", &[]).await.status,
        StatusCode::OK
    );
    let body = request("POST", "a.test", "/api")
        .body(Full::new(Bytes::from_static(b"eleven byte")))
        .unwrap();
    assert_eq!(send(addr, body).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    let policies = &config(&proxy).await["listeners"][0]["policies"];
    assert_eq!(policies["api"], serde_json::json!(["test/on-api"]));
    assert_eq!(policies["open"], serde_json::json!(["test/wide"]));
    drop(proxy);

    // JSONMerge: /api gets both.
    let merged = on_api.replace("spec:\n", "spec:\n  mergeType: JSONMerge\n");
    let (proxy, addr) = setup(&format!("{gateway_wide}{merged}"), None).await;
    assert_eq!(
        send_with(addr, "GET", "/api", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let policies = &config(&proxy).await["listeners"][0]["policies"];
    assert_eq!(
        policies["api"],
        serde_json::json!(["test/wide", "test/on-api"])
    );
}

#[tokio::test]
async fn a_younger_conflicting_policy_is_ignored() {
    let old = policy("old", Some("api"), "  ipFilter:\n    deny: [127.0.0.0/8]\n");
    let young = policy(
        "young",
        Some("api"),
        "  ipFilter:\n    allow: [0.0.0.0/0]\n",
    )
    .replace("2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z");
    let (_proxy, addr) = setup(&format!("{young}{old}"), None).await;
    assert_eq!(
        send_with(addr, "GET", "/api", &[]).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn policy_timeouts_override_the_route() {
    let slow = spawn_slow(Duration::from_millis(600)).await;
    let yaml = format!(
        "{}{}{}",
        gateway_yaml(
            &http_listener("http", 80),
            &format!(
                "{}{}",
                tagged_route("slow", "[{path: {value: /slow}}]", "slow", ""),
                tagged_route("slow2", "[{path: {value: /slow2}}]", "slow", "")
            )
        ),
        service_yaml("slow", slow, true),
        policy("t", Some("slow"), "  timeouts:\n    request: 100ms\n"),
    );
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    let r = send_with(addr, "GET", "/slow", &[]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        send_with(addr, "GET", "/slow2", &[]).await.status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------- JWT

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(key: &common::keys::TestKey, claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

fn jwt_policy(key: &common::keys::TestKey, extra: &str) -> String {
    let jwks = serde_json::json!({"keys": [key.jwk]}).to_string();
    policy(
        "jwt",
        Some("api"),
        &format!(
            "  authentication:\n    jwt:\n      providers:\n      - name: idp\n        issuer: https://idp.test\n        audiences: [api]\n        localJWKS: {{type: Inline, inline: '{jwks}'}}\n        claimToHeaders: [{{header: x-user, claim: sub}}]\n        requiredClaims: [{{name: scope, values: [read]}}]\n{extra}"
        ),
    )
}

#[tokio::test]
async fn jwt_through_the_proxy() {
    let key = common::keys::ec_key("k1");
    let other = common::keys::ec_key("k1");
    let (proxy, addr) = setup(&jwt_policy(&key, ""), None).await;
    let good = serde_json::json!({"iss": "https://idp.test", "aud": "api", "sub": "alice", "scope": "read write", "exp": now() + 600});
    let bearer = |t: &str| format!("Bearer {t}");

    let r = send_with(addr, "GET", "/api", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(header(&r, "www-authenticate"), Some("Bearer"));
    // Valid: the claim reaches the backend; a forged x-user is replaced.
    let t = token(&key, good.clone());
    let r = send_with(
        addr,
        "GET",
        "/api",
        &[("authorization", &bearer(&t)), ("x-user", "mallory")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json().unwrap()["headers"]["x-user"], "alice");
    // Invalid: expired, wrong audience, signed by another key with the same kid.
    let mut expired = good.clone();
    expired["exp"] = serde_json::json!(now() - 3600);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = serde_json::json!("other");
    for t in [
        token(&key, expired),
        token(&key, wrong_aud),
        token(&other, good.clone()),
    ] {
        let r = send_with(addr, "GET", "/api", &[("authorization", &bearer(&t))]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(header(&r, "x-meshgate-flags"), Some("UAEX"));
    }
    // Valid but without the required scope: 403.
    let mut no_scope = good.clone();
    no_scope["scope"] = serde_json::json!("write");
    let r = send_with(
        addr,
        "GET",
        "/api",
        &[("authorization", &bearer(&token(&key, no_scope)))],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The route without the policy ignores tokens; a forged x-user passes there
    // untouched (no policy, no claim headers).
    assert_eq!(
        send_with(addr, "GET", "/open", &[]).await.status,
        StatusCode::OK
    );
    let expired = metric(
        &proxy,
        "meshgate_policy_refusals_total{check=\"jwt\",reason=\"expired\"}",
    )
    .await;
    assert_eq!(expired, Some(1.0));
}

// ---------------------------------------------------------------- rate limits

#[tokio::test]
async fn local_rate_limit_is_exact_and_answers_429() {
    let key = common::keys::ec_key("k1");
    // Per user (claim): 3 per hour, and per route: 1000 per hour.
    let p = jwt_policy(
        &key,
        "  rateLimit:\n    rules:\n    - {name: per-user, key: {type: Claim, name: sub}, limit: {requests: 3, unit: Hour}}\n    - {name: route, key: {type: Route}, limit: {requests: 1000, unit: Hour}}\n",
    );
    let (proxy, addr) = setup(&p, None).await;
    let claims = |sub: &str| serde_json::json!({"iss": "https://idp.test", "aud": "api", "sub": sub, "scope": "read", "exp": now() + 600});
    let alice = format!("Bearer {}", token(&key, claims("alice")));
    let bob = format!("Bearer {}", token(&key, claims("bob")));
    for i in 0..3 {
        let r = send_with(addr, "GET", "/api", &[("authorization", &alice)]).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        assert_eq!(
            header(&r, "ratelimit-remaining"),
            Some(&*(2 - i).to_string())
        );
    }
    let r = send_with(addr, "GET", "/api", &[("authorization", &alice)]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "x-meshgate-flags"), Some("RL"));
    assert_eq!(header(&r, "ratelimit-limit"), Some("3"));
    assert_eq!(header(&r, "ratelimit-remaining"), Some("0"));
    let retry_after: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=1200).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert!(header(&r, "ratelimit-policy")
        .unwrap()
        .starts_with("3;w=3600"));
    // Another user has a bucket of their own.
    assert_eq!(
        send_with(addr, "GET", "/api", &[("authorization", &bob)])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        metric(
            &proxy,
            "meshgate_rate_limit_decisions_total{decision=\"limited\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &proxy,
            "meshgate_rate_limit_decisions_total{decision=\"allowed\"}"
        )
        .await,
        Some(4.0)
    );
}

fn global_policy(redis_port: u16, mode: &str, requests: u32) -> String {
    policy(
        "global",
        Some("api"),
        &format!("  rateLimit:\n    type: Global\n    global: {{redisUrl: \"redis://127.0.0.1:{redis_port}\", failureMode: {mode}}}\n    rules:\n    - {{key: {{type: Route}}, limit: {{requests: {requests}, unit: Hour}}}}\n"),
    )
}

/// A `meshgate-proxy` process serving `dir` with listener `http` on a free port.
async fn proxy_process(dir: &TestDir) -> (tokio::process::Child, SocketAddr) {
    let addr = closed_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshgate-proxy"))
        .args(["--manifests", dir.path().to_str().unwrap()])
        .args([
            "--admin",
            "127.0.0.1:0",
            "--listen",
            &format!("http={addr}"),
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn meshgate-proxy");
    let up = eventually(WAIT, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(up, "meshgate-proxy did not listen on {addr}");
    (child, addr)
}

#[tokio::test]
async fn global_rate_limit_is_shared_by_two_proxy_processes_through_redis() {
    let redis = common::redis::Redis::start();
    let dir = TestDir::new("global-limit");
    let echo = spawn_echo("echo").await.unwrap();
    dir.write("backend.yaml", &service_yaml("echo", echo, true));
    dir.write(
        "gateway.yaml",
        &gateway_yaml(
            &http_listener("http", 80),
            &tagged_route("api", "[{path: {value: /api}}]", "echo", ""),
        ),
    );
    dir.write("policy.yaml", &global_policy(redis.port, "FailOpen", 7));
    let (_a, a) = proxy_process(&dir).await;
    let (_b, b) = proxy_process(&dir).await;
    let mut allowed = 0;
    let mut limited = 0;
    for i in 0..20 {
        let addr = if i % 2 == 0 { a } else { b };
        match send_with(addr, "GET", "/api", &[]).await.status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        (allowed, limited),
        (7, 13),
        "two proxies share one limit of 7"
    );
}

#[tokio::test]
async fn redis_down_fails_open_or_closed_as_configured() {
    let mut redis = common::redis::Redis::start();
    let (open_proxy, open) = setup(&global_policy(redis.port, "FailOpen", 1000), None).await;
    let (closed_proxy, closed) = setup(&global_policy(redis.port, "FailClosed", 1000), None).await;
    assert_eq!(
        send_with(open, "GET", "/api", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send_with(closed, "GET", "/api", &[]).await.status,
        StatusCode::OK
    );

    redis.kill();
    for _ in 0..3 {
        assert_eq!(
            send_with(open, "GET", "/api", &[]).await.status,
            StatusCode::OK
        );
        let r = send_with(closed, "GET", "/api", &[]).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&r, "x-meshgate-flags"), Some("RLSE"));
    }
    assert_eq!(
        metric(
            &open_proxy,
            "meshgate_rate_limit_decisions_total{decision=\"fail_open\"}"
        )
        .await,
        Some(3.0)
    );
    assert_eq!(
        metric(
            &closed_proxy,
            "meshgate_rate_limit_decisions_total{decision=\"fail_closed\"}"
        )
        .await,
        Some(3.0)
    );

    // Redis back on the same port: limiting resumes without a restart.
    redis.restart();
    let back = eventually(WAIT, || async {
        send_with(closed, "GET", "/api", &[]).await.status == StatusCode::OK
    })
    .await;
    assert!(back, "the FailClosed proxy did not recover");
}
