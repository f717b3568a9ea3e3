//! Shared harness of the conformance suite. The suite runs against whatever
//! `KUBECONFIG` points at: the local control plane that
//! `kind-tests/scripts/local-cluster.sh up` starts (CI), or a kind cluster.
//!
//! Every test gets its own namespace (random name, labelled
//! `meshgate.io/conformance=true`), deleted when the test ends, so tests can
//! run in parallel.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

/// Errors of the harness; tests unwrap them into failures with context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KUBECONFIG is not set: start a cluster with `kind-tests/scripts/local-cluster.sh up` and export the KUBECONFIG it prints, or run `bash kind-tests/run-tests.sh`")]
    NoCluster,
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// Field manager for everything the suite applies.
pub const FIELD_MANAGER: &str = "meshgate-conformance";

/// A client for the cluster under test; fails (never skips) without one.
pub async fn client() -> Result<Client, Error> {
    if std::env::var_os("KUBECONFIG").is_none() {
        return Err(Error::NoCluster);
    }
    Ok(Client::try_default().await?)
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Installs (server-side applies) the meshgate CRDs and waits until the API
/// server serves them.
pub async fn install_crds(client: &Client) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for crd in meshgate_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &pp, &Patch::Apply(&crd)).await?;
        wait_for(Duration::from_secs(30), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .into_iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        })
        .await
        .map_err(|_| Error::Other(format!("CRD {name} not Established after 30s")))?;
    }
    Ok(())
}

/// A namespace owned by one test; delete it with [`TestNamespace::delete`].
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Result<Self, Error> {
        let name = format!("{prefix}-{:08x}", random_u32());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"meshgate.io/conformance": "true"}},
        }))
        .map_err(|e| Error::Other(e.to_string()))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(TestNamespace {
            name,
            client: client.clone(),
        })
    }

    pub async fn delete(self) -> Result<(), Error> {
        Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::background())
            .await?;
        Ok(())
    }
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; mixing in the time and a
    // counter makes names unique across tests in one process too.
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u32
}

/// Polls `check` every 200 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T, ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every YAML document of a file as JSON values (empty documents skipped).
pub fn yaml_documents(text: &str) -> Result<Vec<serde_json::Value>, Error> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = serde_json::Value::deserialize(doc).map_err(|e| Error::Other(e.to_string()))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// The Istio CA address under test: `MESHGATE_ISTIOD_ADDR` (set by
/// `local-cluster.sh env`), default `127.0.0.1:15012`.
pub fn istiod_addr() -> String {
    std::env::var("MESHGATE_ISTIOD_ADDR").unwrap_or_else(|_| "127.0.0.1:15012".into())
}

/// Creates ServiceAccount `sa` in `ns` and returns a real token for it from the
/// TokenRequest API, audience `istio-ca`, valid for an hour.
pub async fn istio_ca_token(client: &Client, ns: &str, sa: &str) -> Result<String, Error> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let to_err = |e: serde_json::Error| Error::Other(e.to_string());
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}
    }))
    .map_err(to_err)?;
    sas.create(&PostParams::default(), &account).await?;
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["istio-ca"], "expirationSeconds": 3600}
    }))
    .map_err(to_err)?;
    let issued = sas
        .create_token_request(sa, &PostParams::default(), &request)
        .await?;
    issued
        .status
        .map(|s| s.token)
        .ok_or_else(|| Error::Other("TokenRequest returned no token".into()))
}

/// The mesh root istiod publishes into `ns` (ConfigMap `istio-ca-root-cert`),
/// waiting up to 60 s for it to appear.
pub async fn istio_mesh_root(client: &Client, ns: &str) -> Result<String, Error> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    wait_for(Duration::from_secs(60), || {
        let cms = cms.clone();
        async move {
            let cm = cms.get("istio-ca-root-cert").await.ok()?;
            cm.data?.get("root-cert.pem").cloned()
        }
    })
    .await
    .map_err(|_| {
        Error::Other(format!(
            "istio-ca-root-cert not published in {ns} within 60s"
        ))
    })
}

/// The `helm` binary built by build-tools.sh (`HELM`), run on the chart of this repo.
pub mod jaeger;

pub mod helm {
    use std::process::{Command, Output};

    /// Runs `helm args...`.
    pub fn run(args: &[&str]) -> Output {
        let helm = std::env::var("HELM").expect(
            "HELM must point at the helm built by kind-tests/scripts/build-tools.sh (run-tests.sh sets it)",
        );
        Command::new(helm).args(args).output().expect("helm runs")
    }

    /// `helm template` has no cluster to ask, so it is told the Kubernetes version
    /// the suite runs (the chart requires >= 1.30).
    pub fn kube_version() -> String {
        std::env::var("MESHGATE_K8S_VERSION").unwrap_or_else(|_| "v1.35.4".into())
    }

    /// The stdout of a successful run; fails the test with stderr otherwise.
    pub fn ok(out: &Output, what: &str) -> String {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{what} failed:\n{}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The chart's directory.
    pub fn chart() -> String {
        super::repo()
            .join("helm/meshgate")
            .to_str()
            .expect("utf-8 path")
            .to_string()
    }
}
