//! Route lookup with 10,000 routes on one listener (the per-request
//! `RouteTable::find`), with and without the host/path normalisation that
//! precedes it in the proxy.
//!
//! `cargo bench -p meshgate-proxy --bench routing`

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use meshgate_proxy::routing::{normalize_host, normalize_path, RequestView};

const ROUTES: usize = 10_000;

fn routing(c: &mut Criterion) {
    let runtime = common::Runtime::new();
    let snapshot = runtime.compile(&common::manifests(ROUTES));
    let listener = snapshot.listener(common::LISTENER).expect("listener");
    let table = &listener.routes;
    let headers = HeaderMap::new();
    let method = Method::GET;
    let view = |path| RequestView {
        host: "api.example.com",
        path,
        query: None,
        method: &method,
        headers: &headers,
    };

    let mut group = c.benchmark_group("route_match_10k");
    for (name, path, want) in [
        ("first_route", "/r0/x", Some("r0")),
        ("last_route", "/r9999/x", Some("r9999")),
        ("last_route_deep_path", "/r9999/a/b/c/d/e/f", Some("r9999")),
        ("no_match_404", "/nothing/here/x", None),
    ] {
        let found = table.find(&view(path)).map(|m| m.route.name.as_str());
        assert_eq!(found, want, "{path}");
        group.bench_function(name, |b| {
            b.iter(|| table.find(black_box(&view(black_box(path)))).is_some())
        });
    }
    // What the request path does per request: normalise Host and path, then look up.
    group.bench_function("normalize_and_match_last_route", |b| {
        b.iter(|| {
            let host = normalize_host(black_box("API.Example.com:8080")).expect("host");
            let path = normalize_path(black_box("/r9999/./x//y")).expect("path");
            let req = RequestView {
                host: &host,
                path: &path,
                query: None,
                method: &method,
                headers: &headers,
            };
            table.find(&req).map(|m| m.route.id)
        })
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
