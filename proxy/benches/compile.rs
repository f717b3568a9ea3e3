//! Snapshot compile time: ApiGateway manifests with 1,000, 5,000 and 10,000
//! PathPrefix routes → `snapshot::compile` (what every reload runs, in cluster
//! mode on the objects the watches hold), and the same from YAML text
//! (standalone mode reads and parses its directory first).
//!
//! `cargo bench -p meshgate-proxy --bench compile`

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn compile(c: &mut Criterion) {
    let runtime = common::Runtime::new();
    let mut group = c.benchmark_group("snapshot_compile");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for routes in [1_000, 5_000, 10_000] {
        let text = common::manifests_yaml(routes);
        let manifests = common::parse(&text);
        assert_eq!(runtime.compile(&manifests).routes.len(), routes);
        group.bench_with_input(BenchmarkId::new("manifests", routes), &manifests, |b, m| {
            b.iter(|| runtime.compile(m))
        });
        group.bench_with_input(BenchmarkId::new("yaml_text", routes), &text, |b, t| {
            b.iter(|| runtime.compile(&common::parse(t)))
        });
    }
    group.finish();
}

criterion_group!(benches, compile);
criterion_main!(benches);
