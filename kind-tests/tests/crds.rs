//! The CRDs against a real API server: they install, kubectl accepts the files,
//! every valid example is accepted and every invalid example is rejected with
//! the message its first line names (schema + CEL rules, enforced server-side).

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::Api;
use meshgate_crds::examples::{expected_error, read_dir};
use meshgate_kind_tests::{client, install_crds, repo, yaml_documents, TestNamespace};

fn api_for(client: &kube::Client, ns: &str, obj: &serde_json::Value) -> Api<DynamicObject> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = match kind {
        "ApiGateway" => "apigateways",
        "ApiPolicy" => "apipolicies",
        other => panic!("examples hold only meshgate kinds, found {other}"),
    };
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

fn as_dynamic(mut obj: serde_json::Value, ns: &str) -> DynamicObject {
    obj["metadata"]["namespace"] = serde_json::Value::String(ns.to_string());
    serde_json::from_value(obj).expect("example is a Kubernetes object")
}

#[tokio::test]
async fn crds_install_and_kubectl_validates_the_files() {
    let client = client().await.expect("cluster");
    install_crds(&client)
        .await
        .expect("CRDs install and become Established");
    let kubectl = std::env::var("KUBECTL").expect(
        "KUBECTL must point at the kubectl built by kind-tests/scripts/build-tools.sh (run-tests.sh sets it)",
    );
    let out = std::process::Command::new(kubectl)
        .args(["apply", "--dry-run=client", "-f"])
        .arg(repo().join("crds"))
        .output()
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl apply --dry-run=client -f crds/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("apigateways.meshgate.io"), "{stdout}");
    assert!(stdout.contains("apipolicies.meshgate.io"), "{stdout}");
}

#[tokio::test]
async fn every_valid_example_is_accepted() {
    let client = client().await.expect("cluster");
    install_crds(&client).await.expect("CRDs install");
    let ns = TestNamespace::create(&client, "examples")
        .await
        .expect("namespace");
    let mut created = 0;
    let mut failures = Vec::new();
    for (file, text) in read_dir(&repo().join("docs/examples")).expect("examples") {
        for obj in yaml_documents(&text).expect("YAML") {
            let api = api_for(&client, &ns.name, &obj);
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match api
                .create(&PostParams::default(), &as_dynamic(obj, &ns.name))
                .await
            {
                Ok(_) => created += 1,
                Err(e) => failures.push(format!("{file} ({name}): {e}")),
            }
        }
    }
    ns.delete().await.expect("namespace deleted");
    assert!(
        failures.is_empty(),
        "rejected valid examples:\n{}",
        failures.join("\n")
    );
    assert!(created >= 10, "only {created} objects created");
}

#[tokio::test]
async fn every_invalid_example_is_rejected_with_its_message() {
    let client = client().await.expect("cluster");
    install_crds(&client).await.expect("CRDs install");
    let ns = TestNamespace::create(&client, "invalid")
        .await
        .expect("namespace");
    let examples = read_dir(&repo().join("docs/examples/invalid")).expect("examples");
    assert!(examples.len() >= 15);
    let mut failures = Vec::new();
    for (file, text) in &examples {
        let expected = expected_error(text).expect("`# expect:` line");
        let obj = yaml_documents(text).expect("YAML").remove(0);
        let api = api_for(&client, &ns.name, &obj);
        match api
            .create(&PostParams::default(), &as_dynamic(obj, &ns.name))
            .await
        {
            Ok(_) => failures.push(format!(
                "{file}: accepted, expected rejection with {expected:?}"
            )),
            Err(kube::Error::Api(status)) => {
                if status.code != 422 || !status.message.contains(expected) {
                    failures.push(format!(
                        "{file}: rejected with {} {:?}, expected a 422 containing {expected:?}",
                        status.code, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{file}: {e}")),
        }
    }
    ns.delete().await.expect("namespace deleted");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
