//! The chart's monitoring pieces against what meshgate really exports.
//!
//! - Every metric named by a query of the Grafana dashboard
//!   (helm/meshgate/dashboards/meshgate.json) or by an alert of the PrometheusRule
//!   (rendered by `helm template`) is a series that a running proxy or operator
//!   serves on `/metrics`. The proxy runs in-process on 127.0.0.1 with an HTTPS
//!   listener, two routes (one refused by an ApiPolicy) and a mesh workload
//!   identity, and answers real requests first; the operator's metrics endpoint
//!   is served from its public API after a reconcile and a failure were counted.
//! - Every label a query uses exists (on a served series, or as a target label
//!   the chart's PodMonitors set), and none of them, nor any label served, is of
//!   the unbounded kind (paths, client addresses, user agents).
//! - With every monitoring switch on, the chart lints (`--strict`) and renders
//!   valid objects whose PodMonitor selects the pods the operator builds, on
//!   their admin port, and names each target after its gateway; with the
//!   defaults it renders none of them.
//!
//! Needs `HELM` (run-tests.sh sets it), not the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use meshgate_kind_tests::helm::{chart, kube_version, ok, run as helm};
use meshgate_kind_tests::repo;
use meshgate_mesh::fixtures::{LocalCa, Validity};
use meshgate_mesh::{IdentityManager, SidecarFilesProvider, SpiffeId};
use meshgate_proxy::client::{self, Tls};
use meshgate_proxy::demo::spawn_echo;
use meshgate_proxy::runtime::{Options, Running, Source};
use serde::Deserialize as _;

/// Labels no query may use and no metric may carry: one value per path, client
/// or user agent makes a series per request.
const UNBOUNDED: &[&str] = &[
    "path",
    "url",
    "uri",
    "query",
    "client",
    "client_ip",
    "ip",
    "remote_addr",
    "source_ip",
    "peer",
    "user_agent",
    "authority",
    "host",
];

/// Labels Prometheus adds to every series of a target: `job`, `instance`, and
/// those the chart's PodMonitors set (checked in `chart_with_monitoring_on...`).
const TARGET_LABELS: &[&str] = &["job", "instance", "namespace", "pod", "gateway"];

/// Series Prometheus makes itself for every target.
const SYNTHETIC: &[&str] = &["up"];

// ---------------------------------------------------------------------------
// helm

const ALL_ON: &[&str] = &[
    "--set",
    "monitoring.podMonitor.enabled=true",
    "--set",
    "monitoring.operatorPodMonitor.enabled=true",
    "--set",
    "monitoring.prometheusRule.enabled=true",
    "--set",
    "monitoring.dashboards.enabled=true",
    "--set",
    "monitoring.podMonitor.labels.release=prometheus",
    "--set",
    "monitoring.prometheusRule.labels.release=prometheus",
    "--set",
    "monitoring.prometheusRule.alertLabels.team=platform",
    "--set",
    "monitoring.dashboards.annotations.grafana_folder=meshgate",
];

/// `helm template` of the chart with `extra` values, as YAML documents.
fn render(extra: &[&str]) -> Vec<serde_json::Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "meshgate",
        chart.as_str(),
        "--namespace",
        "meshgate-system",
    ];
    let version = kube_version();
    args.extend(["--kube-version", version.as_str()]);
    args.extend(extra);
    let text = ok(&helm(&args), "helm template");
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("helm template renders invalid YAML: {e}\n{text}"));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

// ---------------------------------------------------------------------------
// the queries

/// A PromQL expression and where it comes from.
struct Query {
    origin: String,
    expr: String,
}

fn dashboard() -> serde_json::Value {
    let path = repo().join("helm/meshgate/dashboards/meshgate.json");
    let text = std::fs::read_to_string(&path).expect("dashboards/meshgate.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every `expr` of the dashboard's panels (rows included) and every query of
/// its template variables.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<Query> {
    fn walk(v: &serde_json::Value, title: &str, out: &mut Vec<Query>) {
        match v {
            serde_json::Value::Object(map) => {
                let title = map
                    .get("title")
                    .and_then(|t| t.as_str())
                    .unwrap_or(title)
                    .to_string();
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    out.push(Query {
                        origin: format!("dashboard panel {title:?}"),
                        expr: expr.to_string(),
                    });
                }
                for (key, child) in map {
                    if key != "templating" {
                        walk(child, &title, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "", &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .expect("a query variable has a query");
        out.push(Query {
            origin: format!("dashboard variable {}", var["name"]),
            expr: query.to_string(),
        });
    }
    out
}

/// Every alert of the rendered PrometheusRule, by name, with its expression.
fn rule_queries(docs: &[serde_json::Value]) -> Vec<Query> {
    let rules = of_kind(docs, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule is rendered");
    let mut out = Vec::new();
    for group in rules[0]["spec"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .expect("a rule is an alert or a recording rule");
            out.push(Query {
                origin: format!("alert {name}"),
                expr: rule["expr"].as_str().expect("expr").to_string(),
            });
        }
    }
    out
}

/// What a PromQL expression (or a Grafana `label_values(selector, label)`)
/// names: metrics and labels. A small lexer, enough for what the chart holds:
/// strings and `[...]` ranges are skipped, `{...}` holds label matchers, an
/// identifier before `(` is a function or aggregation, the parenthesised list
/// after `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` holds labels,
/// and any other identifier that is not a keyword is a metric name.
#[derive(Debug, Default, PartialEq)]
struct Names {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

fn names(expr: &str) -> Names {
    let mut found = Names::default();
    let trimmed = expr.trim();
    if let Some(inner) = trimmed
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
    {
        // label_values(selector, label) or label_values(label).
        match inner.rfind(',') {
            Some(comma) if !inner[comma..].contains('}') => {
                let sub = names(&inner[..comma]);
                found.metrics.extend(sub.metrics);
                found.labels.extend(sub.labels);
                found.labels.insert(inner[comma + 1..].trim().to_string());
            }
            _ => {
                found.labels.insert(inner.trim().to_string());
            }
        }
        return found;
    }

    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Aggregations may be followed by `by (...)` before their `(`.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_string = |mut i: usize| -> usize {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            if chars[i] == '\\' && quote != '`' {
                i += 1;
            }
            i += 1;
        }
        i + 1
    };
    let skip_space = |mut i: usize| -> usize {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let ident = |i: usize| -> (String, usize) {
        let mut j = i;
        while j < chars.len() && ident_char(chars[j]) {
            j += 1;
        }
        (chars[i..j].iter().collect(), j)
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // Label matchers: name op "value", ...
            i += 1;
            while i < chars.len() && chars[i] != '}' {
                if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                    i = skip_string(i);
                } else if ident_start(chars[i]) {
                    let (label, j) = ident(i);
                    found.labels.insert(label);
                    i = j;
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if c == '$' {
            // A Grafana variable ($x, ${x}) outside a string or range.
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                i = ident(i).1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations: 0.99, 1e3, 5m, 1h30m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let (word, j) = ident(i);
            let next = skip_space(j);
            let paren = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                i = j;
                if paren {
                    i = next + 1;
                    while i < chars.len() && chars[i] != ')' {
                        if ident_start(chars[i]) {
                            let (label, k) = ident(i);
                            found.labels.insert(label);
                            i = k;
                        } else {
                            i += 1;
                        }
                    }
                    i += 1;
                }
            } else if paren
                || KEYWORDS.contains(&word.as_str())
                || AGGREGATIONS.contains(&word.as_str())
            {
                i = j;
            } else {
                found.metrics.insert(word);
                i = j;
            }
        } else {
            i += 1;
        }
    }
    found
}

#[test]
fn the_query_lexer_finds_metrics_and_labels() {
    let n = names(
        r#"histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{route=~"$route", code="5xx"}[$__rate_interval]))) / on (pod) group_left b > 14 * 86400 and sum(c) without (x) unless absent(up{job="j"} == 1) offset 5m or min by (ns) (d{x="a}b"} - time()) < bool 3 * 86400"#,
    );
    assert_eq!(
        n.metrics,
        ["a_bucket", "b", "c", "d", "up"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(
        n.labels,
        ["namespace", "le", "route", "code", "pod", "x", "job", "ns"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let v = names(r#"label_values(m{namespace=~"$namespace"}, gateway)"#);
    assert_eq!(v.metrics, BTreeSet::from(["m".to_string()]));
    assert_eq!(
        v.labels,
        BTreeSet::from(["namespace".to_string(), "gateway".to_string()])
    );
}

// ---------------------------------------------------------------------------
// the expositions

/// A Prometheus text exposition: the families declared (name -> type), the
/// names of the samples served and the label names of each sample name.
#[derive(Debug, Default)]
struct Exposition {
    families: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn parse(text: &str, what: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    panic!("{what}: bad TYPE line {line:?}");
                };
                e.families.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let end = line
                .find(['{', ' '])
                .unwrap_or_else(|| panic!("{what}: bad sample line {line:?}"));
            let name = &line[..end];
            let labels = e.samples.entry(name.to_string()).or_default();
            if line[end..].starts_with('{') {
                // name="value" pairs; values may hold escaped quotes.
                let chars: Vec<char> = line[end + 1..].chars().collect();
                let mut i = 0;
                while i < chars.len() && chars[i] != '}' {
                    let start = i;
                    while chars[i] != '=' {
                        i += 1;
                    }
                    labels.insert(
                        chars[start..i]
                            .iter()
                            .collect::<String>()
                            .trim()
                            .to_string(),
                    );
                    i += 2; // ="
                    while chars[i] != '"' {
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    i += 1;
                    if chars.get(i) == Some(&',') {
                        i += 1;
                    }
                }
            }
        }
        // Every sample belongs to a declared family (histograms by suffix).
        for name in e.samples.keys() {
            let family = e.family_of(name);
            assert!(family.is_some(), "{what}: sample {name} has no # TYPE line");
        }
        e
    }

    /// The declared family a sample name belongs to, with its type.
    fn family_of(&self, name: &str) -> Option<(&str, &str)> {
        if let Some((family, kind)) = self.families.get_key_value(name) {
            return Some((family, kind));
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if let Some((family, kind)) = self.families.get_key_value(base) {
                    let fits = match suffix {
                        "_bucket" => kind == "histogram",
                        _ => kind == "histogram" || kind == "summary",
                    };
                    if fits {
                        return Some((family, kind));
                    }
                }
            }
        }
        None
    }

    fn merge(&mut self, other: Exposition) {
        self.families.extend(other.families);
        for (name, labels) in other.samples {
            self.samples.entry(name).or_default().extend(labels);
        }
    }
}

/// Why `name` is not a series of `exposition`, or None if it is.
fn not_served(exposition: &Exposition, name: &str) -> Option<String> {
    if exposition.samples.contains_key(name) {
        return None;
    }
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    Some(
        match exposition
            .families
            .get(name)
            .or(exposition.families.get(base))
        {
            Some(kind) => format!(
                "family {} is declared ({kind}) but no sample named {name} is served{}",
                if exposition.families.contains_key(name) {
                    name
                } else {
                    base
                },
                if kind == "histogram" && name == base {
                    " (a histogram is queried through _bucket, _sum or _count)"
                } else {
                    ""
                }
            ),
            None => "not exported by the proxy or the operator".to_string(),
        },
    )
}

// ---------------------------------------------------------------------------
// a running proxy and operator

fn edge_certificate() -> (rustls::pki_types::CertificateDer<'static>, String) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).expect("certificate");
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: edge-cert, namespace: test}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {:?}\n  tls.key: {:?}\n",
        generated.cert.pem(),
        generated.signing_key.serialize_pem()
    );
    (generated.cert.der().clone(), secret)
}

fn manifests(echo: SocketAddr, secret: &str) -> String {
    format!(
        r#"apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {{name: gw, namespace: test}}
spec:
  listeners:
    - name: https
      port: 443
      protocol: HTTPS
      tls: {{certificateRefs: [{{name: edge-cert}}]}}
  routes:
    - name: denied
      matches: [{{path: {{type: PathPrefix, value: /denied}}}}]
      backendRefs: [{{name: echo, port: 80}}]
    - name: echo
      backendRefs: [{{name: echo, port: 80}}]
---
apiVersion: meshgate.io/v1alpha1
kind: ApiPolicy
metadata: {{name: no-loopback, namespace: test, creationTimestamp: "2026-01-01T00:00:00Z"}}
spec:
  targetRefs: [{{group: meshgate.io, kind: ApiGateway, name: gw, sectionName: denied}}]
  ipFilter:
    deny: [127.0.0.0/8]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: test}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: test, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: ["{ip}"], conditions: {{ready: true}}}}]
{secret}"#,
        port = echo.port(),
        ip = echo.ip(),
    )
}

/// A workload identity from files, as an istio-proxy sidecar writes them, so
/// the proxy serves its mesh identity metrics.
async fn identity(dir: &std::path::Path) -> IdentityManager {
    let ca = LocalCa::new("cluster.local").expect("mesh CA");
    let id: SpiffeId = "spiffe://cluster.local/ns/test/sa/gw"
        .parse()
        .expect("SPIFFE ID");
    let issued = ca.issue(&id, Validity::Current).expect("issued");
    std::fs::create_dir_all(dir).expect("identity dir");
    std::fs::write(dir.join("cert-chain.pem"), &issued.cert_pem).expect("write");
    std::fs::write(dir.join("key.pem"), &issued.key_pem).expect("write");
    std::fs::write(dir.join("root-cert.pem"), ca.root_pem()).expect("write");
    let manager = IdentityManager::spawn(SidecarFilesProvider::new(dir, Duration::from_millis(50)));
    manager
        .ready(Duration::from_secs(10))
        .await
        .expect("workload identity loads");
    manager
}

/// The proxy's `/metrics` after it served a request and refused one.
async fn proxy_exposition() -> String {
    meshgate_proxy::install_crypto_provider();
    let echo = spawn_echo("echo").await.expect("echo backend");
    let (root, secret) = edge_certificate();
    let loaded = meshgate_crds::manifests::load_str("test", &manifests(echo, &secret));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let dir = std::env::temp_dir().join(format!("meshgate-obs-identity-{}", std::process::id()));
    let mut options = Options::new(Source::Manifests(Box::new(loaded.manifests)));
    options.admin = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    options.listen = [(
        "https".to_string(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )]
    .into_iter()
    .collect();
    options.identity = Some(identity(&dir).await);
    let running = Running::start(options).await.expect("proxy starts");
    let https = running.listener_addr("https").expect("https listener");
    let tls = Tls {
        server_name: "a.test".into(),
        roots: vec![root],
        alpn: vec![b"http/1.1".to_vec()],
    };
    let get = |path: &'static str| {
        let tls = tls.clone();
        async move {
            let request = http::Request::get(path)
                .header(http::header::HOST, "a.test")
                .body(Full::new(Bytes::new()))
                .expect("request");
            client::send(https, request, Some(&tls))
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        }
    };
    let served = get("/hello").await;
    assert_eq!(served.status, 200, "{}", served.text());
    let refused = get("/denied").await;
    assert_eq!(refused.status, 403, "the ApiPolicy refuses 127.0.0.1");

    let admin = running.admin_addr().expect("admin listener");
    let reply = client::get(admin, "admin", "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(reply.status, 200);
    let text = reply.text();
    // The requests were counted: the exposition reflects this traffic.
    assert!(
        text.contains("meshgate_requests_total{route=\"echo\",code=\"2xx\"} 1"),
        "{text}"
    );
    let _ = running.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
    text
}

/// The operator's `/metrics` (its real endpoint) after one reconcile and one
/// failure were counted.
async fn operator_exposition() -> String {
    let metrics = Arc::new(meshgate_operator::metrics::Metrics::default());
    metrics.reconciled("ApiGateway", Duration::from_millis(20));
    metrics.failed("ApiGateway", "conflict");
    metrics.set_leader(true);
    let (addr, serve) = meshgate_operator::metrics::serve(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        metrics.clone(),
    )
    .await
    .expect("operator metrics endpoint");
    let server = tokio::spawn(serve);
    let reply = client::get(addr, "operator", "/metrics")
        .await
        .expect("GET /metrics");
    server.abort();
    assert_eq!(reply.status, 200);
    reply.text()
}

// ---------------------------------------------------------------------------
// the tests

#[tokio::test]
async fn dashboard_and_alerts_name_only_exported_metrics_and_bounded_labels() {
    let mut queries = dashboard_queries(&dashboard());
    let dashboard_count = queries.len();
    let docs = render(ALL_ON);
    queries.extend(rule_queries(&docs));
    assert!(
        dashboard_count >= 30,
        "the dashboard has its queries ({dashboard_count})"
    );
    for alert in [
        "MeshgateCertificateExpiringSoon",
        "MeshgateCertificateExpiryCritical",
        "MeshgateMeshIdentityExpiringSoon",
        "MeshgateHighErrorRatio",
        "MeshgateConfigReloadFailed",
        "MeshgateRateLimitRedisErrors",
        "MeshgateRateLimitFailingClosed",
        "MeshgateJwksFetchFailures",
        "MeshgateOperatorReconcileErrors",
        "MeshgateGatewayDown",
    ] {
        assert!(
            queries.iter().any(|q| q.origin == format!("alert {alert}")),
            "the PrometheusRule has {alert}"
        );
    }

    let proxy = proxy_exposition().await;
    let operator = operator_exposition().await;
    let mut exported = Exposition::parse(&proxy, "proxy");
    exported.merge(Exposition::parse(&operator, "operator"));

    // The metrics themselves carry no unbounded label.
    for (name, labels) in &exported.samples {
        for label in labels {
            assert!(
                !UNBOUNDED.contains(&label.as_str()),
                "{name} carries the unbounded label {label}"
            );
        }
    }
    let known_labels: BTreeSet<&str> = exported
        .samples
        .values()
        .flatten()
        .map(String::as_str)
        .chain(TARGET_LABELS.iter().copied())
        .collect();

    let mut missing: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    let mut bad_labels: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut used = BTreeSet::new();
    for query in &queries {
        let found = names(&query.expr);
        assert!(
            !found.metrics.is_empty(),
            "{}: no metric found in {:?}",
            query.origin,
            query.expr
        );
        for metric in &found.metrics {
            used.insert(metric.clone());
            if SYNTHETIC.contains(&metric.as_str()) {
                continue;
            }
            if let Some(why) = not_served(&exported, metric) {
                missing
                    .entry(metric.clone())
                    .or_insert_with(|| (why, Vec::new()))
                    .1
                    .push(query.origin.clone());
            }
        }
        for label in &found.labels {
            let problem = if UNBOUNDED.contains(&label.as_str()) {
                format!("{label}: unbounded label")
            } else if !known_labels.contains(label.as_str()) {
                format!("{label}: on no exported series and no target label")
            } else {
                continue;
            };
            bad_labels
                .entry(problem)
                .or_default()
                .push(query.origin.clone());
        }
    }
    let report: Vec<String> = missing
        .iter()
        .map(|(name, (why, origins))| {
            let mut origins = origins.clone();
            origins.dedup();
            format!("{name}: {why}; used by {}", origins.join(", "))
        })
        .collect();
    assert!(
        report.is_empty() && bad_labels.is_empty(),
        "{} metric name(s) in the dashboard or the alerts are not exported:\n  {}\n{} label problem(s):\n  {}",
        report.len(),
        report.join("\n  "),
        bad_labels.len(),
        bad_labels
            .iter()
            .map(|(problem, origins)| format!("{problem}; used by {}", origins.join(", ")))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    // Every metric docs/observability.md documents is exported, and every family
    // exported is documented.
    let doc = std::fs::read_to_string(meshgate_kind_tests::repo().join("docs/observability.md"))
        .expect("docs/observability.md");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("meshgate_"))
        .map(str::to_string)
        .collect();
    assert!(
        documented.len() >= 25,
        "the metric tables were found ({})",
        documented.len()
    );
    let undocumented_or_missing: Vec<String> = documented
        .iter()
        .filter(|n| !exported.families.contains_key(n.as_str()))
        .map(|n| format!("{n}: documented but not exported"))
        .chain(
            exported
                .families
                .keys()
                .filter(|f| !documented.contains(f.as_str()))
                .map(|f| format!("{f}: exported but not documented")),
        )
        .collect();
    assert!(
        undocumented_or_missing.is_empty(),
        "docs/observability.md and the exported metrics disagree:\n  {}",
        undocumented_or_missing.join("\n  ")
    );

    // The checks above covered the families SREs alert on.
    for family in [
        "meshgate_requests_total",
        "meshgate_request_duration_seconds_bucket",
        "meshgate_certificate_expiry_timestamp_seconds",
        "meshgate_mesh_identity_expiry_seconds",
        "meshgate_config_reloads_total",
        "meshgate_policy_refusals_total",
        "meshgate_operator_reconcile_errors_total",
        "meshgate_operator_reconcile_duration_seconds_bucket",
    ] {
        assert!(used.contains(family), "no query uses {family}");
    }
}

fn relabel_source(label: &str) -> String {
    let sanitized: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("__meta_kubernetes_pod_label_{sanitized}")
}

/// The relabeling of `endpoint` that writes `target`.
fn relabeling<'a>(endpoint: &'a serde_json::Value, target: &str) -> &'a serde_json::Value {
    endpoint["relabelings"]
        .as_array()
        .expect("relabelings")
        .iter()
        .find(|r| r["targetLabel"] == target)
        .unwrap_or_else(|| panic!("no relabeling writes {target}: {endpoint}"))
}

/// Whether `selector` (matchLabels and Exists expressions) selects `labels`.
fn selects(selector: &serde_json::Value, labels: &serde_json::Value) -> bool {
    let by_labels = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| &labels[k] == v));
    let by_expressions = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            assert_eq!(e["operator"], "Exists", "only Exists is evaluated here");
            labels.get(e["key"].as_str().expect("key")).is_some()
        })
    });
    by_labels && by_expressions
}

#[test]
fn chart_with_monitoring_on_lints_renders_and_selects_the_proxy_pods() {
    let chart = chart();
    let mut lint = vec!["lint", "--strict", chart.as_str()];
    lint.extend(ALL_ON);
    ok(&helm(&lint), "helm lint --strict with monitoring on");

    // Off by default.
    let defaults = render(&[]);
    for kind in ["PodMonitor", "ServiceMonitor", "PrometheusRule"] {
        assert!(
            of_kind(&defaults, kind).is_empty(),
            "{kind} is off by default"
        );
    }
    assert!(
        of_kind(&defaults, "ConfigMap").is_empty(),
        "the dashboard ConfigMap is off by default"
    );

    let docs = render(ALL_ON);
    let monitors = of_kind(&docs, "PodMonitor");
    assert_eq!(
        monitors.len(),
        2,
        "PodMonitors for the proxies and the operator"
    );
    let proxy_monitor = monitors
        .iter()
        .find(|m| m["metadata"]["name"] == "meshgate-proxy")
        .expect("the proxy PodMonitor");
    assert_eq!(proxy_monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        proxy_monitor["spec"]["namespaceSelector"]["any"], true,
        "all namespaces when watchNamespaces is empty"
    );
    let endpoint = &proxy_monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");

    // The PodMonitor selects the pods the operator builds, on the port it names,
    // and takes `gateway` from the pod label that holds the gateway's name.
    for (mesh, default_identity) in [
        ("", meshgate_crds::gateway::IdentitySource::IstioCA),
        (
            "  mesh: {}\n",
            meshgate_crds::gateway::IdentitySource::SidecarFiles,
        ),
    ] {
        let yaml = format!(
            "apiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata: {{name: edge, namespace: shop, uid: u-1}}\nspec:\n  listeners: [{{name: http, port: 8080, protocol: HTTP}}]\n  routes: [{{name: a, backendRefs: [{{name: svc, port: 80}}]}}]\n{mesh}"
        );
        let gw: meshgate_crds::ApiGateway = serde_yaml_ng::from_str(&yaml).expect("ApiGateway");
        let opts = meshgate_operator::build::BuildOptions {
            default_identity,
            ..Default::default()
        };
        let desired = meshgate_operator::build::build(&gw, &opts).expect("build");
        let pod = serde_json::to_value(&desired.deployment.spec.expect("spec").template)
            .expect("pod template");
        let labels = &pod["metadata"]["labels"];
        assert!(
            selects(&proxy_monitor["spec"]["selector"], labels),
            "the PodMonitor selector {} does not select proxy pods labelled {labels}",
            proxy_monitor["spec"]["selector"]
        );
        let ports: Vec<serde_json::Value> = pod["spec"]["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .collect();
        assert!(
            ports.iter().any(|p| p["name"] == endpoint["port"]),
            "no container port named {} in {ports:?}",
            endpoint["port"]
        );
        let gateway = relabeling(endpoint, "gateway");
        let source = gateway["sourceLabels"][0].as_str().expect("source label");
        let label = labels
            .as_object()
            .expect("labels")
            .iter()
            .find(|(k, _)| relabel_source(k) == source)
            .unwrap_or_else(|| panic!("{source} is no label of the proxy pods: {labels}"));
        assert_eq!(
            label.1, "edge",
            "the relabeled pod label holds the gateway name"
        );
    }
    assert_eq!(
        relabeling(endpoint, "namespace")["sourceLabels"][0],
        "__meta_kubernetes_namespace"
    );
    assert_eq!(relabeling(endpoint, "job")["replacement"], "meshgate-proxy");

    // watchNamespaces narrows the proxy PodMonitor's namespaces.
    let mut narrowed_args = ALL_ON.to_vec();
    narrowed_args.extend(["--set", "watchNamespaces={shop,web}"]);
    let narrowed = render(&narrowed_args);
    let narrowed = of_kind(&narrowed, "PodMonitor")
        .into_iter()
        .find(|m| m["metadata"]["name"] == "meshgate-proxy")
        .expect("proxy PodMonitor")
        .clone();
    assert_eq!(
        narrowed["spec"]["namespaceSelector"],
        serde_json::json!({"matchNames": ["shop", "web"]})
    );

    // The operator PodMonitor selects the chart's operator pods on their metrics port.
    let operator_monitor = monitors
        .iter()
        .find(|m| m["metadata"]["name"] == "meshgate-operator")
        .expect("the operator PodMonitor");
    let deployment = of_kind(&docs, "Deployment")[0];
    let pod = &deployment["spec"]["template"];
    assert!(selects(
        &operator_monitor["spec"]["selector"],
        &pod["metadata"]["labels"]
    ));
    assert_eq!(
        operator_monitor["spec"]["podMetricsEndpoints"][0]["port"],
        pod["spec"]["containers"][0]["ports"][0]["name"]
    );

    // The dashboard ConfigMap holds the chart's dashboard for the Grafana sidecar.
    let maps = of_kind(&docs, "ConfigMap");
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0]["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        maps[0]["metadata"]["annotations"]["grafana_folder"],
        "meshgate"
    );
    let held: serde_json::Value =
        serde_json::from_str(maps[0]["data"]["meshgate.json"].as_str().expect("data"))
            .expect("the ConfigMap holds JSON");
    assert_eq!(held, dashboard());

    // Every alert has a severity, the extra labels, a summary, a description and a `for`.
    let rule = of_kind(&docs, "PrometheusRule")[0];
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    for group in rule["spec"]["groups"].as_array().expect("groups") {
        for alert in group["rules"].as_array().expect("rules") {
            let name = &alert["alert"];
            assert!(
                ["warning", "critical"]
                    .contains(&alert["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity"
            );
            assert_eq!(alert["labels"]["team"], "platform", "{name}: alertLabels");
            for key in ["summary", "description"] {
                assert!(
                    alert["annotations"][key]
                        .as_str()
                        .is_some_and(|s| s.len() > 10),
                    "{name}: {key}"
                );
            }
            assert!(alert["for"].is_string(), "{name}: for");
        }
    }

    // disabledAlerts leaves alerts out; the schema refuses unknown keys.
    let mut fewer_args = ALL_ON.to_vec();
    fewer_args.extend([
        "--set",
        "monitoring.prometheusRule.disabledAlerts={MeshgateNoProxyTargets}",
    ]);
    let fewer = render(&fewer_args);
    let names: Vec<String> = rule_queries(&fewer).into_iter().map(|q| q.origin).collect();
    assert!(!names.contains(&"alert MeshgateNoProxyTargets".to_string()));
    assert!(names.contains(&"alert MeshgateHighErrorRatio".to_string()));
    let bad = helm(&[
        "template",
        "meshgate",
        &chart,
        "--kube-version",
        &kube_version(),
        "--set",
        "monitoring.podMonitor.enable=true",
    ]);
    assert!(
        !bad.status.success(),
        "values.schema.json refuses a misspelt monitoring key"
    );
}
