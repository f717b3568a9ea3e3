//! The per-request header work of the proxy, on a typical browser request and
//! upstream response, with the functions the request path calls:
//! request (`proxy::plan`): `x-request-id`, hop-by-hop removal,
//! X-Forwarded-For/-Proto/-Host, the upstream Host, a RequestHeaderModifier
//! (1 set, 1 add, 1 remove); response (`proxy::finish`): hop-by-hop removal and
//! a ResponseHeaderModifier (1 set, 1 add, 1 remove). The header map clone each
//! iteration starts from is not timed.
//!
//! `cargo bench -p meshgate-proxy --bench headers`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{self, HeaderMap, HeaderValue};
use meshgate_crds::route as api;
use meshgate_crds::HttpHeader;
use meshgate_proxy::filters::{HeaderModifier, Scheme};
use meshgate_proxy::proxy::{
    new_request_id, set_forwarded_headers, strip_hop_by_hop, REQUEST_ID_HEADER,
};

fn modifier(set: &str, add: &str, remove: &str) -> HeaderModifier {
    let h = |name: &str| HttpHeader {
        name: name.to_string(),
        value: "bench-value".to_string(),
    };
    HeaderModifier::compile(&api::HeaderModifier {
        set: vec![h(set)],
        add: vec![h(add)],
        remove: vec![remove.to_string()],
    })
    .expect("modifier")
}

fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(*name, HeaderValue::from_static(value));
    }
    headers
}

fn headers(c: &mut Criterion) {
    let request = map(&[
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        (
            "authorization",
            "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2ln",
        ),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("x-forwarded-for", "203.0.113.7"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("x-debug", "1"),
    ]);
    let response = map(&[
        ("content-type", "application/json"),
        ("content-length", "1234"),
        ("date", "Mon, 07 Dec 2026 04:00:00 GMT"),
        ("cache-control", "no-store"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=60"),
        ("server", "upstream"),
        ("x-upstream-time", "3"),
        ("vary", "accept-encoding"),
    ]);
    let request_modifier = modifier("x-gateway", "x-tenant", "x-debug");
    let response_modifier = modifier("strict-transport-security", "x-served-by", "server");
    let peer = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
    let host = HeaderValue::from_static("api.example.com");
    let upstream_host = HeaderValue::from_static("upstream.bench.svc");

    let mut group = c.benchmark_group("headers");
    group.bench_function("request", |b| {
        b.iter_batched_ref(
            || request.clone(),
            |headers| {
                if !headers.contains_key(&REQUEST_ID_HEADER) {
                    headers.insert(REQUEST_ID_HEADER, new_request_id());
                }
                strip_hop_by_hop(headers);
                set_forwarded_headers(headers, black_box(peer), Scheme::Https, &host);
                headers.insert(header::HOST, upstream_host.clone());
                request_modifier.apply(headers);
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("response", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |headers| {
                strip_hop_by_hop(headers);
                response_modifier.apply(headers);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, headers);
criterion_main!(benches);
