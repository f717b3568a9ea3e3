//! The Helm chart against the real API server: `helm lint`, `helm template`
//! with the values schema enforced, and `helm install` into the cluster, after
//! which the operator Deployment runs its replicas (kwok makes the pods Ready),
//! then `helm uninstall` removes what it installed.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use meshgate_kind_tests::helm::{kube_version, ok, run as helm};
use meshgate_kind_tests::{client, repo, wait_for, TestNamespace};

#[test]
fn chart_lints_and_renders_and_the_schema_rejects_bad_values() {
    let chart = repo().join("helm/meshgate");
    let chart = chart.to_str().expect("utf-8 path");
    ok(&helm(&["lint", "--strict", chart]), "helm lint --strict");

    let rendered = ok(
        &helm(&[
            "template",
            "meshgate",
            chart,
            "--namespace",
            "meshgate-system",
            "--kube-version",
            &kube_version(),
        ]),
        "helm template",
    );
    for kind in [
        "kind: Deployment",
        "kind: ClusterRole",
        "kind: ServiceAccount",
    ] {
        assert!(rendered.contains(kind), "rendered chart lacks {kind}");
    }
    // The operator runs as non-root with a read-only root filesystem.
    assert!(rendered.contains("runAsNonRoot: true"), "{rendered}");
    assert!(
        rendered.contains("readOnlyRootFilesystem: true"),
        "{rendered}"
    );

    // values.schema.json refuses a value of the wrong type with a clear message.
    let bad = helm(&[
        "template",
        "meshgate",
        chart,
        "--kube-version",
        &kube_version(),
        "--set",
        "replicas=many",
    ]);
    assert!(
        !bad.status.success(),
        "replicas=many must be refused by values.schema.json"
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("replicas"),
        "schema error should name the field: {err}"
    );
}

#[tokio::test]
async fn chart_installs_into_the_cluster_and_uninstalls_cleanly() {
    let client = client().await.expect("cluster");
    let ns = TestNamespace::create(&client, "helm")
        .await
        .expect("namespace");
    let release = ns.name.clone();
    let chart = repo().join("helm/meshgate");
    let chart = chart.to_str().expect("utf-8 path");
    ok(
        &helm(&[
            "install",
            &release,
            chart,
            "--namespace",
            &ns.name,
            "--set",
            "replicas=2",
            "--wait=false",
        ]),
        "helm install",
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let ready = wait_for(Duration::from_secs(90), || {
        let deployments = deployments.clone();
        async move {
            let list = deployments.list(&Default::default()).await.ok()?;
            let d = list.items.into_iter().next()?;
            let status = d.status?;
            (status.ready_replicas == Some(2)).then_some(())
        }
    })
    .await;
    let listing = ok(&helm(&["list", "--namespace", &ns.name]), "helm list");
    assert!(listing.contains(&release), "{listing}");
    assert!(
        ready.is_ok(),
        "the operator Deployment did not reach 2 ready replicas (kwok runs them)"
    );

    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role_names: Vec<String> = roles
        .list(&Default::default())
        .await
        .expect("cluster roles")
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .filter(|n| n.contains(&release))
        .collect();
    assert!(
        !role_names.is_empty(),
        "the release installs its ClusterRole"
    );

    ok(
        &helm(&["uninstall", &release, "--namespace", &ns.name]),
        "helm uninstall",
    );
    let gone = wait_for(Duration::from_secs(30), || {
        let deployments = deployments.clone();
        let roles = roles.clone();
        let release = release.clone();
        async move {
            let d = deployments.list(&Default::default()).await.ok()?;
            let r = roles.list(&Default::default()).await.ok()?;
            let left = r
                .items
                .iter()
                .filter_map(|r| r.metadata.name.as_ref())
                .any(|n| n.contains(&release));
            (d.items.is_empty() && !left).then_some(())
        }
    })
    .await;
    ns.delete().await.expect("namespace deleted");
    assert!(
        gone.is_ok(),
        "helm uninstall left the Deployment or the ClusterRole behind"
    );
}

/// Installs the monitoring.coreos.com CRDs that build-tools.sh takes from the
/// prometheus-operator module (`PROMETHEUS_OPERATOR_CRDS`) and waits until they
/// are served.
async fn install_prometheus_operator_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let path = std::env::var("PROMETHEUS_OPERATOR_CRDS").expect(
        "PROMETHEUS_OPERATOR_CRDS must point at the CRD file of kind-tests/scripts/build-tools.sh (source kind-tests/scripts/tools.env.sh)",
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in meshgate_kind_tests::yaml_documents(&text).expect("CRD YAML") {
        let name = doc["metadata"]["name"]
            .as_str()
            .expect("CRD name")
            .to_string();
        crds.patch(
            &name,
            &PatchParams::apply("meshgate-conformance").force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        wait_for(Duration::from_secs(30), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established"));
    }
}

/// Whether every field of `want` is in `got` with the same value (the API
/// server may add defaults, but must not drop or change what the chart wrote).
fn contains(got: &serde_json::Value, want: &serde_json::Value, at: &str) -> Result<(), String> {
    use serde_json::Value;
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w.iter().try_for_each(|(k, v)| match g.get(k) {
            Some(gv) => contains(gv, v, &format!("{at}.{k}")),
            None => Err(format!("{at}.{k} was dropped by the API server")),
        }),
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => g
            .iter()
            .zip(w)
            .enumerate()
            .try_for_each(|(i, (gv, wv))| contains(gv, wv, &format!("{at}[{i}]"))),
        _ if got == want => Ok(()),
        _ => Err(format!("{at}: sent {want}, stored {got}")),
    }
}

/// The chart's PodMonitors and PrometheusRule are valid objects of the real
/// Prometheus Operator CRDs: `helm install` with every monitoring switch on
/// succeeds against the API server, each object is stored exactly as rendered
/// (no field pruned as unknown by the CRD's structural schema), and the same
/// schema does refuse a broken PodMonitor, so the check is live.
#[tokio::test]
async fn monitoring_objects_install_against_the_prometheus_operator_crds() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
    let client = client().await.expect("cluster");
    install_prometheus_operator_crds(&client).await;
    let ns = TestNamespace::create(&client, "helm-mon")
        .await
        .expect("namespace");
    let release = ns.name.clone();
    let chart = repo().join("helm/meshgate");
    let chart = chart.to_str().expect("utf-8 path");
    let values = [
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
        "monitoring.prometheusRule.alertLabels.team=platform",
    ];
    let mut template = vec!["template", &release, chart, "--namespace", &ns.name];
    let version = kube_version();
    template.extend(["--kube-version", version.as_str()]);
    template.extend(values);
    let rendered = ok(&helm(&template), "helm template");
    let mut install = vec!["install", &release, chart, "--namespace", &ns.name];
    install.extend(["--wait=false", "--skip-crds"]);
    install.extend(values);
    ok(&helm(&install), "helm install with monitoring on");

    let mut checked = Vec::new();
    for doc in meshgate_kind_tests::yaml_documents(&rendered).expect("rendered YAML") {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let plural = match kind.as_str() {
            "PodMonitor" => "podmonitors",
            "PrometheusRule" => "prometheusrules",
            _ => continue,
        };
        let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", &kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
        let name = doc["metadata"]["name"].as_str().expect("name").to_string();
        let stored = api
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("{kind} {name} was not installed: {e}"));
        let stored = serde_json::to_value(&stored).expect("JSON");
        contains(
            &stored["spec"],
            &doc["spec"],
            &format!("{kind}/{name} spec"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        checked.push(format!("{kind}/{name}"));

        if kind == "PodMonitor" && checked.len() == 1 {
            // The schema is enforced: a scheme the CRD does not know is refused.
            let mut broken = doc.clone();
            broken["metadata"] = serde_json::json!({"name": "broken"});
            broken["spec"]["podMetricsEndpoints"][0]["scheme"] = "gopher".into();
            let broken: DynamicObject = serde_json::from_value(broken).expect("object");
            let err = api
                .create(&PostParams::default(), &broken)
                .await
                .expect_err("a PodMonitor with scheme gopher is refused");
            assert!(
                err.to_string().contains("scheme"),
                "the refusal names the field: {err}"
            );
        }
    }
    checked.sort();
    assert_eq!(
        checked.len(),
        3,
        "two PodMonitors and a PrometheusRule were rendered and installed: {checked:?}"
    );
    ok(
        &helm(&["uninstall", &release, "--namespace", &ns.name]),
        "helm uninstall",
    );
    ns.delete().await.expect("namespace deleted");
}
