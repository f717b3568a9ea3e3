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
