//! Operator traces end to end: the operator, run in-process against the real
//! control plane, exports one span per reconcile over OTLP to a real Jaeger,
//! and every log line of a reconcile carries that span's trace id.
//!
//! Its own test binary: the test installs the process-wide log subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::PostParams;
use kube::Api;
use meshgate_crds::ApiGateway;
use meshgate_kind_tests::jaeger::Jaeger;
use meshgate_kind_tests::{client, install_crds, wait_for, TestNamespace};
use meshgate_operator::telemetry::{self, OtlpProtocol, TraceExport};
use meshgate_operator::{BuildOptions, LeaseConfig, Options};
use serde_json::{json, Value};

/// The operator's JSON log lines, kept for the test.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

// Multi-threaded: the span exporter's worker must run while the test awaits,
// and dropping the guard waits for it to flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_spans_reach_jaeger_and_logs_carry_their_trace_id() {
    let jaeger = Jaeger::start(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")));
    let logs = Capture::default();
    let sink = logs.clone();
    let _guard = telemetry::init(
        "info",
        move || sink.clone(),
        Some(&TraceExport {
            endpoint: format!("http://127.0.0.1:{}", jaeger.otlp_grpc),
            protocol: OtlpProtocol::Grpc,
            sampling_ratio: 1.0,
        }),
    )
    .expect("subscriber installed");

    let admin = client().await.expect("cluster");
    install_crds(&admin).await.expect("CRDs");
    let ns = TestNamespace::create(&admin, "otel")
        .await
        .expect("namespace");
    let opts = Options {
        build: BuildOptions {
            proxy_image: "example.invalid/meshgate-proxy:conformance".into(),
            ..BuildOptions::default()
        },
        namespaces: vec![ns.name.clone()],
        lease: LeaseConfig::new(
            &ns.name,
            "meshgate-operator",
            &meshgate_operator::default_identity(),
        ),
        metrics_addr: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(meshgate_operator::run(admin.clone(), opts, async {
        let _ = stopped.await;
    }));

    let gw: ApiGateway = serde_json::from_value(json!({
        "apiVersion": "meshgate.io/v1alpha1", "kind": "ApiGateway",
        "metadata": {"name": "edge"},
        "spec": {
            "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}],
            "mesh": {"mode": "None"},
            "infrastructure": {"service": {"type": "ClusterIP"}}
        }
    }))
    .expect("ApiGateway");
    Api::<ApiGateway>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &gw)
        .await
        .expect("gateway created");

    // The reconcile that wrote the status logged it inside its span.
    let line = wait_for(Duration::from_secs(60), || {
        let logs = logs.clone();
        let ns = ns.name.clone();
        async move {
            logs.lines().into_iter().find(|l| {
                l["fields"]["message"] == "status updated"
                    && l["span"]["gateway"] == "edge"
                    && l["span"]["namespace"] == ns.as_str()
            })
        }
    })
    .await
    .expect("a 'status updated' log line from the reconcile of edge");
    let span = &line["span"];
    assert_eq!(span["name"], "reconcile ApiGateway", "{line}");
    assert_eq!(span["generation"], 1, "{line}");
    let trace_id = span["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no trace_id in {line}"))
        .to_string();
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    assert!(
        trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{trace_id}"
    );

    // The same trace, in Jaeger, with the object's name, namespace and generation.
    let spans = jaeger.spans(&trace_id, 1).await;
    let reconcile = spans
        .iter()
        .find(|s| s["operationName"] == "reconcile ApiGateway")
        .unwrap_or_else(|| panic!("no reconcile span in {spans:?}"));
    assert_eq!(tag(reconcile, "gateway"), Some(&json!("edge")));
    assert_eq!(tag(reconcile, "namespace"), Some(&json!(ns.name)));
    assert_eq!(tag(reconcile, "generation"), Some(&json!(1)));

    let _ = stop.send(());
    operator
        .await
        .expect("operator task")
        .expect("operator stops cleanly");
    ns.delete().await.expect("namespace deleted");
}
