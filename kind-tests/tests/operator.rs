//! The operator against a real control plane (kube-apiserver, controllers,
//! scheduler, kwok nodes). Each test runs its own operator in-process, scoped
//! to the test's namespace, with a client that impersonates a ServiceAccount
//! bound to the Helm chart's ClusterRole and leader-election Role (rendered
//! with `helm template`), so the chart's RBAC is proven to be sufficient.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::Resource as _;
use kube::{Api, Client, ResourceExt};
use meshgate_crds::{ApiGateway, ApiPolicy};
use meshgate_kind_tests::{client, install_crds, repo, wait_for, yaml_documents, TestNamespace};
use meshgate_operator::{BuildOptions, LeaseConfig, Options};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const RELEASE: &str = "mgconf";
const OPERATOR_SA: &str = "mgconf-operator";
const LEASE: &str = "meshgate-operator";
const PROXY_IMAGE: &str = "example.invalid/meshgate-proxy:conformance";
const WAIT: Duration = Duration::from_secs(60);

/// One test's world: admin client, namespace (plus other namespaces the
/// operator also watches), and the operator's client.
struct World {
    admin: Client,
    ns: TestNamespace,
    others: Vec<TestNamespace>,
    operator_client: Client,
}

/// The chart's RBAC objects for a release in `ns` that watches `watch`.
fn render_chart_rbac(ns: &str, watch: &[String]) -> Vec<serde_json::Value> {
    let helm = std::env::var("HELM").expect(
        "HELM must point at the helm built by kind-tests/scripts/build-tools.sh (source kind-tests/scripts/tools.env.sh)",
    );
    let out = std::process::Command::new(helm)
        .args(["template", RELEASE])
        .arg(repo().join("helm/meshgate"))
        .args([
            "--namespace",
            ns,
            "--set",
            &format!("watchNamespaces={{{}}}", watch.join(",")),
        ])
        .args([
            "--kube-version",
            &std::env::var("MESHGATE_K8S_VERSION").unwrap_or_else(|_| "v1.35.0".into()),
        ])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = yaml_documents(&String::from_utf8_lossy(&out.stdout)).expect("chart renders YAML");
    let rbac: Vec<_> = docs
        .into_iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "Role"
                        | "RoleBinding"
                        | "ClusterRoleBinding"
                )
            )
        })
        .collect();
    assert!(
        rbac.iter().any(|d| d["kind"] == "ClusterRole"),
        "the chart renders a ClusterRole"
    );
    assert!(
        !rbac.iter().any(|d| d["kind"] == "ClusterRoleBinding"),
        "with watchNamespaces the chart binds per namespace"
    );
    rbac
}

async fn apply_value(client: &Client, obj: &serde_json::Value) {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = format!("{}s", kind.to_lowercase());
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        name,
        &PatchParams::apply("meshgate-conformance").force(),
        &Patch::Apply(obj),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

impl World {
    async fn new(prefix: &str) -> World {
        World::with_others(prefix, 0).await
    }

    /// A world whose operator watches its namespace and `others` more.
    async fn with_others(prefix: &str, others: usize) -> World {
        let admin = client().await.expect("cluster");
        install_crds(&admin).await.expect("CRDs");
        let ns = TestNamespace::create(&admin, prefix)
            .await
            .expect("namespace");
        let mut more = Vec::new();
        for _ in 0..others {
            more.push(
                TestNamespace::create(&admin, prefix)
                    .await
                    .expect("namespace"),
            );
        }
        let watch: Vec<String> = std::iter::once(&ns)
            .chain(&more)
            .map(|n| n.name.clone())
            .collect();
        for obj in render_chart_rbac(&ns.name, &watch) {
            apply_value(&admin, &obj).await;
        }
        let mut cfg = kube::Config::infer().await.expect("kubeconfig");
        cfg.auth_info.impersonate =
            Some(format!("system:serviceaccount:{}:{OPERATOR_SA}", ns.name));
        let operator_client = Client::try_from(cfg).expect("impersonating client");
        World {
            admin,
            ns,
            others: more,
            operator_client,
        }
    }

    fn name(&self) -> &str {
        &self.ns.name
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.admin.clone(), self.name())
    }

    fn start_operator(&self) -> Operator {
        let opts = Options {
            build: BuildOptions {
                proxy_image: PROXY_IMAGE.into(),
                ..BuildOptions::default()
            },
            namespaces: std::iter::once(&self.ns)
                .chain(&self.others)
                .map(|n| n.name.clone())
                .collect(),
            lease: LeaseConfig::new(self.name(), LEASE, &meshgate_operator::default_identity()),
            metrics_addr: None,
        };
        let identity = opts.lease.identity.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let client = self.operator_client.clone();
        let handle = tokio::spawn(async move {
            meshgate_operator::run(client, opts, async {
                let _ = rx.await;
            })
            .await
        });
        Operator {
            stop: Some(tx),
            handle,
            identity,
        }
    }

    async fn finish(self) {
        for other in self.others {
            other.delete().await.expect("namespace deleted");
        }
        self.ns.delete().await.expect("namespace deleted");
    }

    async fn create_backend(&self, name: &str, port: i32) {
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"ports": [{"port": port}], "selector": {"app": name}}
        }))
        .unwrap();
        self.api::<Service>()
            .create(&PostParams::default(), &svc)
            .await
            .expect("backend Service");
    }

    async fn create_gateway(&self, spec: serde_json::Value) -> ApiGateway {
        let gw: ApiGateway = serde_json::from_value(json!({
            "apiVersion": "meshgate.io/v1alpha1", "kind": "ApiGateway",
            "metadata": {"name": "edge"},
            "spec": spec,
        }))
        .expect("ApiGateway");
        self.api::<ApiGateway>()
            .create(&PostParams::default(), &gw)
            .await
            .expect("ApiGateway accepted by the API server")
    }

    async fn patch_gateway(&self, patch: serde_json::Value) -> ApiGateway {
        self.api::<ApiGateway>()
            .patch("edge", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("ApiGateway patched")
    }

    /// Waits until the gateway's condition `type_` has `status` for its current generation.
    async fn wait_condition(&self, type_: &str, status: &str) -> ApiGateway {
        let api = self.api::<ApiGateway>();
        let last = std::cell::RefCell::new(None);
        let r = wait_for(WAIT, || {
            let api = api.clone();
            let last = &last;
            async move {
                let gw = api.get("edge").await.ok()?;
                *last.borrow_mut() = Some(gw.clone());
                let c = condition(&gw, type_)?;
                (c.status == status && c.observed_generation == gw.metadata.generation)
                    .then_some(gw)
            }
        })
        .await;
        r.unwrap_or_else(|_| {
            panic!(
                "condition {type_}={status} not reached in {WAIT:?}; status: {}",
                serde_json::to_string_pretty(&last.into_inner().and_then(|g: ApiGateway| g.status))
                    .unwrap_or_default()
            )
        })
    }

    async fn deployment(&self) -> Option<Deployment> {
        self.api::<Deployment>()
            .get_opt("edge-meshgate")
            .await
            .expect("get")
    }

    /// resourceVersions once they have not changed for 3 s (at most 60 s).
    async fn settled_versions(&self) -> BTreeMap<String, String> {
        let mut last = self.resource_versions().await;
        let mut stable_since = tokio::time::Instant::now();
        let deadline = stable_since + Duration::from_secs(60);
        while stable_since.elapsed() < Duration::from_secs(3) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "objects never settled"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.resource_versions().await;
            if now != last {
                last = now;
                stable_since = tokio::time::Instant::now();
            }
        }
        last
    }

    /// What the operator wrote to the gateway and every object it owns: the
    /// operator's managedFields entries (operation, subresource, time). Status
    /// that other controllers keep writing (a Deployment's, a PDB's) is not the
    /// operator's doing and is not compared; server-side apply leaves an
    /// unchanged object and its managedFields alone.
    async fn resource_versions(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let rv = |k: &str, o: Option<String>| (k.to_string(), o.unwrap_or_default());
        let n = "edge-meshgate";
        let gw = self.api::<ApiGateway>().get("edge").await.expect("gateway");
        out.extend([rv("ApiGateway", Some(operator_writes(gw.meta())))]);
        out.extend([rv(
            "ServiceAccount",
            self.api::<ServiceAccount>()
                .get(n)
                .await
                .ok()
                .map(|o| operator_writes(o.meta())),
        )]);
        out.extend([rv(
            "Role",
            self.api::<Role>()
                .get(n)
                .await
                .ok()
                .map(|o| operator_writes(o.meta())),
        )]);
        out.extend([rv(
            "RoleBinding",
            self.api::<RoleBinding>()
                .get(n)
                .await
                .ok()
                .map(|o| operator_writes(o.meta())),
        )]);
        out.extend([rv(
            "Deployment",
            self.api::<Deployment>()
                .get(n)
                .await
                .ok()
                .map(|o| operator_writes(o.meta())),
        )]);
        out.extend([rv(
            "Service",
            self.api::<Service>()
                .get(n)
                .await
                .ok()
                .map(|o| operator_writes(o.meta())),
        )]);
        out.extend([rv(
            "PodDisruptionBudget",
            self.api::<PodDisruptionBudget>()
                .get(n)
                .await
                .ok()
                .map(|o| operator_writes(o.meta())),
        )]);
        for p in self
            .api::<ApiPolicy>()
            .list(&ListParams::default())
            .await
            .expect("policies")
        {
            out.insert(
                format!("ApiPolicy/{}", p.name_any()),
                operator_writes(p.meta()),
            );
        }
        out
    }
}

struct Operator {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<meshgate_operator::Result<()>>,
    identity: String,
}

impl Operator {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(30), &mut self.handle)
            .await
            .expect("operator stops within 30s")
            .expect("operator task did not panic");
        r.expect("operator ran without error");
    }
}

fn condition(gw: &ApiGateway, type_: &str) -> Option<Condition> {
    gw.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

fn config_hash(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("meshgate.io/config-hash"))
        .cloned()
        .unwrap_or_default()
}

fn basic_spec() -> serde_json::Value {
    json!({
        "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}],
        "routes": [{
            "name": "web",
            "matches": [{"path": {"type": "PathPrefix", "value": "/web"}}],
            "backendRefs": [{"name": "web", "port": 80}]
        }],
        "mesh": {"mode": "None"},
        "infrastructure": {"service": {"type": "ClusterIP"}}
    })
}

#[tokio::test]
async fn operator_creates_the_gateway_objects_and_reports_ready() {
    let w = World::new("op-create").await;
    let op = w.start_operator();
    w.create_backend("web", 80).await;
    // An empty mesh section means the defaults (Istio + IstioCA): token
    // projection, the mesh root ConfigMap and the CA flags for the proxy.
    let mut spec = basic_spec();
    spec["mesh"] = json!({});
    w.create_gateway(spec).await;

    let gw = w.wait_condition("Programmed", "True").await;
    for t in ["Accepted", "ResolvedRefs"] {
        let c = condition(&gw, t).unwrap();
        assert_eq!(c.status, "True", "{t}: {c:?}");
    }
    let n = "edge-meshgate";
    let sa = w
        .api::<ServiceAccount>()
        .get(n)
        .await
        .expect("ServiceAccount");
    assert_eq!(
        sa.labels()["app.kubernetes.io/managed-by"],
        "meshgate-operator"
    );
    assert_eq!(sa.owner_references()[0].uid, gw.uid().unwrap());
    w.api::<Role>().get(n).await.expect("Role");
    w.api::<RoleBinding>().get(n).await.expect("RoleBinding");
    let pdb = w
        .api::<PodDisruptionBudget>()
        .get(n)
        .await
        .expect("default PDB for 2 replicas");
    assert_eq!(
        pdb.spec.unwrap().min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let svc = w.api::<Service>().get(n).await.expect("Service");
    let svc_spec = svc.spec.unwrap();
    assert_eq!(svc_spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(svc_spec.ports.unwrap()[0].port, 8080);
    let d = w.deployment().await.expect("Deployment");
    let pod = d.spec.unwrap().template;
    let pod_spec = pod.spec.unwrap();
    assert_eq!(pod_spec.containers[0].image.as_deref(), Some(PROXY_IMAGE));
    assert_eq!(
        pod_spec.containers[0].args.clone().unwrap(),
        [
            "--gateway",
            &format!("{}/edge", w.name()),
            "--admin",
            "0.0.0.0:15000",
            "--istio-ca",
            "istiod.istio-system.svc:15012",
            "--istio-cluster-id",
            "Kubernetes",
            "--trust-domain",
            "cluster.local"
        ]
    );
    assert!(pod_spec
        .volumes
        .unwrap()
        .iter()
        .any(|v| v.name == "istio-token"));
    assert_eq!(
        pod.metadata.unwrap().labels.unwrap()["istio.io/dataplane-mode"],
        "none"
    );

    // kwok runs the pods on fake nodes and marks them Ready.
    let gw = w.wait_condition("Ready", "True").await;
    let st = gw.status.unwrap();
    assert_eq!(st.addresses[0].kind, "IPAddress");
    assert_eq!(Some(&st.addresses[0].value), svc_spec.cluster_ip.as_ref());
    assert_eq!(st.listeners[0].attached_routes, 1);
    assert_eq!(st.routes[0].name, "web");

    // Significant transitions are reported as Events.
    let events: Api<Event> = w.api();
    let seen = wait_for(Duration::from_secs(10), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
            (reasons.iter().any(|r| r == "Programmed") && reasons.iter().any(|r| r == "Ready"))
                .then_some(reasons)
        }
    })
    .await;
    assert!(seen.is_ok(), "Programmed and Ready events were published");

    op.stop().await;
    w.finish().await;
}

#[tokio::test]
async fn route_and_listener_port_changes_do_not_roll_pods() {
    let w = World::new("op-update").await;
    let op = w.start_operator();
    w.create_backend("web", 80).await;
    w.create_gateway(basic_spec()).await;
    w.wait_condition("Programmed", "True").await;
    let before = w.deployment().await.expect("Deployment");
    let gen_before = before.metadata.generation;
    let hash_before = config_hash(&before);
    assert!(!hash_before.is_empty());

    // A route change: reloaded live by the proxies, so the pod template stays.
    let mut spec = basic_spec();
    spec["routes"][0]["matches"][0]["path"]["value"] = json!("/shop");
    w.patch_gateway(json!({"spec": spec})).await;
    w.wait_condition("Programmed", "True").await;
    let after = w.deployment().await.expect("Deployment");
    assert_eq!(
        after.metadata.generation, gen_before,
        "route change rolled the pods"
    );
    assert_eq!(config_hash(&after), hash_before);

    // A listener port change: the proxies rebind it live (proxy/src/listeners.rs),
    // so only the Service follows; the pods are not rolled.
    spec["listeners"][0]["port"] = json!(9090);
    w.patch_gateway(json!({"spec": spec})).await;
    w.wait_condition("Programmed", "True").await;
    let svc = wait_for(Duration::from_secs(30), || async {
        let svc = w.api::<Service>().get("edge-meshgate").await.ok()?;
        let port = svc.spec.as_ref()?.ports.as_ref()?.first()?.clone();
        (port.port == 9090).then_some(port)
    })
    .await
    .expect("the Service follows the listener port");
    assert_eq!(
        svc.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9090))
    );
    let after_port = w.deployment().await.expect("Deployment");
    assert_eq!(
        after_port.metadata.generation, gen_before,
        "a listener port change rolled the pods"
    );
    assert_eq!(config_hash(&after_port), hash_before);

    op.stop().await;
    w.finish().await;
}

#[tokio::test]
async fn an_invalid_regex_is_not_accepted_and_nothing_is_deployed() {
    let w = World::new("op-invalid").await;
    let op = w.start_operator();
    w.create_backend("web", 80).await;
    let mut spec = basic_spec();
    spec["routes"][0]["matches"][0]["path"] =
        json!({"type": "RegularExpression", "value": "/docs/(["});
    w.create_gateway(spec).await;

    let gw = w.wait_condition("Accepted", "False").await;
    let acc = condition(&gw, "Accepted").unwrap();
    assert_eq!(acc.reason, "Invalid");
    assert!(
        acc.message
            .contains("route web: matches[0].path: invalid regular expression \"/docs/([\""),
        "{}",
        acc.message
    );
    assert_eq!(condition(&gw, "Programmed").unwrap().status, "False");
    assert!(
        w.deployment().await.is_none(),
        "an invalid gateway gets no Deployment"
    );

    // A missing backend is a reference problem, not a spec problem.
    spec = basic_spec();
    spec["routes"][0]["backendRefs"][0]["name"] = json!("missing");
    w.patch_gateway(json!({"spec": spec})).await;
    let gw = w.wait_condition("ResolvedRefs", "False").await;
    assert_eq!(
        condition(&gw, "ResolvedRefs").unwrap().reason,
        "BackendNotFound"
    );
    assert_eq!(condition(&gw, "Accepted").unwrap().status, "True");
    // Creating the backend resolves it (Services are watched).
    w.create_backend("missing", 80).await;
    w.wait_condition("ResolvedRefs", "True").await;

    op.stop().await;
    w.finish().await;
}

async fn create_policy(w: &World, name: &str, target: &str) {
    let p: ApiPolicy = serde_json::from_value(json!({
        "apiVersion": "meshgate.io/v1alpha1", "kind": "ApiPolicy",
        "metadata": {"name": name},
        "spec": {
            "targetRefs": [{"group": "meshgate.io", "kind": "ApiGateway", "name": target}],
            "cors": {"allowOrigins": ["https://app.example.com"]}
        }
    }))
    .unwrap();
    w.api::<ApiPolicy>()
        .create(&PostParams::default(), &p)
        .await
        .expect("ApiPolicy");
}

async fn policy_reason(w: &World, name: &str) -> Option<(String, String)> {
    let p = w.api::<ApiPolicy>().get(name).await.ok()?;
    let a = p.status?.ancestors.into_iter().next()?;
    assert_eq!(a.controller_name, "meshgate.io/operator");
    let c = a.conditions.into_iter().find(|c| c.type_ == "Accepted")?;
    (c.observed_generation == p.metadata.generation).then_some((c.status, c.reason))
}

#[tokio::test]
async fn conflicting_policies_the_older_wins() {
    let w = World::new("op-policy").await;
    let op = w.start_operator();
    w.create_backend("web", 80).await;
    w.create_gateway(basic_spec()).await;
    create_policy(&w, "first", "edge").await;
    // Same second or not, "first" is older or wins the name tie-break.
    create_policy(&w, "second", "edge").await;
    create_policy(&w, "orphan", "no-such-gateway").await;

    for (name, want) in [
        ("first", ("True", "Accepted")),
        ("second", ("False", "Conflicted")),
        ("orphan", ("False", "TargetNotFound")),
    ] {
        let got = wait_for(WAIT, || policy_reason(&w, name)).await;
        let got = got.unwrap_or_else(|_| panic!("policy {name} got no status"));
        assert_eq!((got.0.as_str(), got.1.as_str()), want, "policy {name}");
    }
    // The winner goes away: the other takes over.
    w.api::<ApiPolicy>()
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete");
    let r = wait_for(WAIT, || async {
        policy_reason(&w, "second")
            .await
            .filter(|(s, _)| s == "True")
    })
    .await;
    assert!(r.is_ok(), "second is Accepted once first is gone");

    op.stop().await;
    w.finish().await;
}

#[tokio::test]
async fn optional_objects_follow_the_spec_and_deletion_collects_everything() {
    let w = World::new("op-delete").await;
    let op = w.start_operator();
    w.create_backend("web", 80).await;
    let mut spec = basic_spec();
    spec["infrastructure"]["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 4});
    w.create_gateway(spec.clone()).await;
    w.wait_condition("Programmed", "True").await;
    w.api::<HorizontalPodAutoscaler>()
        .get("edge-meshgate")
        .await
        .expect("HPA with autoscaling");

    // Fixed single replica: the HPA and the default PDB go away.
    spec["infrastructure"] = json!({"replicas": 1, "service": {"type": "ClusterIP"}});
    w.patch_gateway(json!({"spec": {"infrastructure": null}}))
        .await;
    w.patch_gateway(json!({"spec": spec})).await;
    w.wait_condition("Programmed", "True").await;
    assert!(w
        .api::<HorizontalPodAutoscaler>()
        .get_opt("edge-meshgate")
        .await
        .unwrap()
        .is_none());
    assert!(w
        .api::<PodDisruptionBudget>()
        .get_opt("edge-meshgate")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        w.deployment().await.unwrap().spec.unwrap().replicas,
        Some(1)
    );

    // Deleting the gateway: the garbage collector removes what it owned.
    w.api::<ApiGateway>()
        .delete("edge", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = wait_for(WAIT, || async {
        let n = "edge-meshgate";
        let all_gone = w.api::<Deployment>().get_opt(n).await.ok()?.is_none()
            && w.api::<Service>().get_opt(n).await.ok()?.is_none()
            && w.api::<ServiceAccount>().get_opt(n).await.ok()?.is_none()
            && w.api::<Role>().get_opt(n).await.ok()?.is_none()
            && w.api::<RoleBinding>().get_opt(n).await.ok()?.is_none();
        all_gone.then_some(())
    })
    .await;
    assert!(gone.is_ok(), "owned objects garbage-collected");

    op.stop().await;
    w.finish().await;
}

#[tokio::test]
async fn existing_objects_without_our_label_are_not_taken_over() {
    let w = World::new("op-takeover").await;
    let op = w.start_operator();
    w.create_backend("web", 80).await;
    // Someone else's Service with the name the operator would use.
    w.create_backend("edge-meshgate", 1234).await;
    w.create_gateway(basic_spec()).await;
    let gw = w.wait_condition("Programmed", "False").await;
    let c = condition(&gw, "Programmed").unwrap();
    assert_eq!(c.reason, "ResourceConflict");
    assert!(
        c.message
            .contains(&format!("Service {}/edge-meshgate", w.name())),
        "{}",
        c.message
    );
    let svc = w.api::<Service>().get("edge-meshgate").await.unwrap();
    assert_eq!(
        svc.spec.unwrap().ports.unwrap()[0].port,
        1234,
        "left untouched"
    );
    assert!(svc.metadata.owner_references.is_none());

    op.stop().await;
    w.finish().await;
}

#[tokio::test]
async fn an_operator_restart_changes_nothing() {
    let w = World::new("op-restart").await;
    let op = w.start_operator();
    w.create_backend("web", 80).await;
    w.create_gateway(basic_spec()).await;
    create_policy(&w, "cors", "edge").await;
    w.wait_condition("Ready", "True").await;
    wait_for(WAIT, || policy_reason(&w, "cors"))
        .await
        .expect("policy status");
    // Let the dust settle: other controllers still write status (the
    // Deployment's, the PDB's) for a moment after Ready.
    let before = w.settled_versions().await;
    let rollout_before = w.deployment().await.and_then(|d| d.status);
    op.stop().await;

    let op = w.start_operator();
    // The new replica takes the released lease at once and reconciles everything.
    let leases: Api<Lease> = w.api();
    let identity = op.identity.clone();
    wait_for(Duration::from_secs(20), || {
        let leases = leases.clone();
        let identity = identity.clone();
        async move {
            let l = leases.get(LEASE).await.ok()?;
            (l.spec?.holder_identity? == identity).then_some(())
        }
    })
    .await
    .expect("the restarted operator leads");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut after = w.resource_versions().await;
    let rollout_after = w.deployment().await.and_then(|d| d.status);
    let mut before = before;
    if rollout_before != rollout_after {
        // The Deployment's status moved while the operator was down (kwok and the
        // controller-manager keep updating it; on a loaded machine that can come
        // late): the gateway's Ready message reports those counts, so its status
        // write is the new information, not the restart. Everything else must
        // still be untouched.
        eprintln!(
            "the Deployment status changed during the restart ({rollout_before:?} -> {rollout_after:?}); the ApiGateway status is not compared"
        );
        before.remove("ApiGateway");
        after.remove("ApiGateway");
    }
    assert_eq!(before, after, "an operator restart must not write anything");

    op.stop().await;
    w.finish().await;
}

#[tokio::test]
async fn two_replicas_one_leads_and_the_other_takes_over() {
    let w = World::new("op-ha").await;
    let a = w.start_operator();
    let leases: Api<Lease> = w.api();
    let holder = || {
        let leases = leases.clone();
        async move { leases.get(LEASE).await.ok()?.spec?.holder_identity }
    };
    let first = wait_for(Duration::from_secs(20), &holder)
        .await
        .expect("a leader");
    assert_eq!(first, a.identity);
    let b = w.start_operator();
    w.create_backend("web", 80).await;
    w.create_gateway(basic_spec()).await;
    w.wait_condition("Programmed", "True").await;
    assert_eq!(
        holder().await.as_deref(),
        Some(a.identity.as_str()),
        "the standby did not take over"
    );

    // The leader stops (releasing the lease): the standby leads and reconciles.
    let b_identity = b.identity.clone();
    a.stop().await;
    wait_for(Duration::from_secs(20), || async {
        holder().await.filter(|h| *h == b_identity)
    })
    .await
    .expect("the standby takes over");
    let mut spec = basic_spec();
    spec["routes"][0]["matches"][0]["path"]["value"] = json!("/after-failover");
    w.patch_gateway(json!({"spec": spec})).await;
    w.wait_condition("Programmed", "True").await;

    b.stop().await;
    w.finish().await;
}

/// A self-signed certificate and key for `host`, PEM.
fn self_signed(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn secret_rotation_rolls_no_pods_and_writes_nothing() {
    let w = World::new("op-secret").await;
    let op = w.start_operator();
    w.create_backend("web", 80).await;
    let (cert, key) = self_signed("shop.example.test");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "edge-cert"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert, "tls.key": key},
    }))
    .expect("Secret");
    let secrets = w.api::<k8s_openapi::api::core::v1::Secret>();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("Secret");
    let mut spec = basic_spec();
    spec["listeners"] = json!([{"name": "https", "port": 8443, "protocol": "HTTPS",
        "tls": {"certificateRefs": [{"name": "edge-cert"}]}}]);
    w.create_gateway(spec).await;
    w.wait_condition("ResolvedRefs", "True").await;
    w.wait_condition("Programmed", "True").await;
    // Ready too: on a loaded machine the pods can become available after the
    // objects look settled, and the status write that reports it is not the
    // rotation's doing.
    w.wait_condition("Ready", "True").await;
    let mut before = w.settled_versions().await;
    let status_before = w
        .api::<ApiGateway>()
        .get("edge")
        .await
        .expect("gateway")
        .status;
    let rollout_before = w.deployment().await.and_then(|d| d.status);
    let generation = w
        .deployment()
        .await
        .expect("Deployment")
        .metadata
        .generation;

    // Rotate the certificate in place: proxies reload it live (tested in
    // secret_rotation.rs), so the operator must neither roll pods nor write.
    let (cert, key) = self_signed("shop.example.test");
    secrets
        .patch(
            "edge-cert",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"tls.crt": cert, "tls.key": key}})),
        )
        .await
        .expect("rotate");
    let mut after = w.settled_versions().await;
    // The gateway's status must read the same. Its write time is not compared:
    // under a loaded CI an unrelated status write (same content before and
    // after) was seen once in four runs; the owned objects must be untouched.
    let status_after = w
        .api::<ApiGateway>()
        .get("edge")
        .await
        .expect("gateway")
        .status;
    let mut status_before = serde_json::to_value(&status_before).expect("status");
    let mut status_after = serde_json::to_value(&status_after).expect("status");
    let rollout_after = w.deployment().await.and_then(|d| d.status);
    if rollout_before != rollout_after {
        // kwok and the controller-manager changed the Deployment's availability
        // meanwhile (seen in CI: 2/2 -> 0/2 available on a loaded machine). The
        // gateway's Ready condition reports those counts, so it may move; every
        // other part of the status must still be untouched.
        eprintln!(
            "the Deployment status changed during the rotation ({rollout_before:?} -> {rollout_after:?}); the Ready condition is not compared"
        );
        for status in [&mut status_before, &mut status_after] {
            if let Some(conditions) = status["conditions"].as_array_mut() {
                conditions.retain(|c| c["type"] != "Ready");
            }
        }
    }
    assert_eq!(
        status_before, status_after,
        "the rotation changed the gateway's status"
    );
    before.remove("ApiGateway");
    after.remove("ApiGateway");
    assert_eq!(
        before, after,
        "the rotation changed objects the operator owns"
    );
    let d = w.deployment().await.expect("Deployment");
    assert_eq!(
        d.metadata.generation, generation,
        "the rotation rolled the pods"
    );

    op.stop().await;
    w.finish().await;
}

/// The meshgate-operator entries of an object's managedFields.
fn operator_writes(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(meshgate_operator::apply::FIELD_MANAGER))
        .map(|m| {
            format!(
                "{}:{}:{}",
                m.operation.as_deref().unwrap_or_default(),
                m.subresource.as_deref().unwrap_or_default(),
                m.time.as_ref().map(|t| t.0.to_string()).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Installs the Gateway API ReferenceGrant CRD that build-tools.sh takes from
/// the sigs.k8s.io/gateway-api module (`GATEWAY_API_CRDS`).
async fn install_reference_grant_crd(admin: &Client) {
    let path = std::env::var("GATEWAY_API_CRDS").expect(
        "GATEWAY_API_CRDS must point at the CRD file of kind-tests/scripts/build-tools.sh (source kind-tests/scripts/tools.env.sh)",
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for crd in yaml_documents(&text).expect("CRD YAML") {
        apply_value(admin, &crd).await;
    }
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(admin.clone());
    wait_for(Duration::from_secs(30), || async {
        let crd = crds
            .get("referencegrants.gateway.networking.k8s.io")
            .await
            .ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await
    .expect("ReferenceGrant CRD established");
}

/// Whether `user` (a ServiceAccount) may `verb` `resource` (optionally `name`) in `ns`.
async fn may(
    admin: &Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    ns: &str,
    name: Option<&str>,
) -> bool {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let sa_ns = user.split(':').nth(2).unwrap_or_default();
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_ns}"), "system:authenticated"],
            "resourceAttributes": {
                "namespace": ns, "verb": verb, "group": group, "resource": resource,
                "name": name.unwrap_or_default(),
            }
        }
    }))
    .unwrap();
    let out = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    out.status.expect("review status").allowed
}

/// The proxy in cluster mode for `ns/edge`, as the proxy's ServiceAccount
/// (impersonated), with listeners `http` and `https` on free loopback ports.
async fn start_proxy_as_its_service_account(ns: &str) -> meshgate_proxy::runtime::Running {
    use meshgate_proxy::cluster::ClusterSource;
    use meshgate_proxy::runtime::{Options as ProxyOptions, Running, Source};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let mut cfg = kube::Config::infer().await.expect("kubeconfig");
    cfg.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:edge-meshgate"));
    let client = Client::try_from(cfg).expect("impersonating client");
    let gateway_ref: meshgate_proxy::snapshot::GatewayRef =
        format!("{ns}/edge").parse().expect("ref");
    let mut source = ClusterSource::new(client, &gateway_ref);
    source.address_map = Some(std::collections::HashMap::from([(
        IpAddr::V4(STAND_IN),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )]));
    let mut options = ProxyOptions::new(Source::Cluster(source));
    options.gateway = Some(gateway_ref);
    options.admin = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    options.listen = ["http", "https"]
        .into_iter()
        .map(|l| (l.to_string(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0))))
        .collect();
    tokio::time::timeout(Duration::from_secs(30), Running::start(options))
        .await
        .expect("first snapshot within 30s")
        .expect("proxy starts")
}

/// Stand-in endpoint address (TEST-NET-1) that the proxy dials on 127.0.0.1:
/// the API server refuses loopback addresses in EndpointSlices.
const STAND_IN: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 1);
const XNS_HOST: &str = "shop.example.test";

#[tokio::test]
async fn cross_namespace_references_get_access_there_while_a_grant_permits_them() {
    let w = World::with_others("op-xns", 1).await;
    install_reference_grant_crd(&w.admin).await;
    let (a, b) = (w.name().to_string(), w.others[0].name.clone());
    let proxy_sa = format!("system:serviceaccount:{a}:edge-meshgate");

    // Namespace b: a backend (Service + EndpointSlice), the edge certificate,
    // another Secret the proxy must not read, and a grant for gateways in a.
    let echo = meshgate_proxy::demo::spawn_echo("in-b")
        .await
        .expect("echo");
    let generated = rcgen::generate_simple_self_signed(vec![XNS_HOST.to_string()]).expect("cert");
    for obj in [
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api", "namespace": b},
            "spec": {"ports": [{"name": "http", "port": 80}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "api-1", "namespace": b, "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": echo.port()}],
            "endpoints": [{"addresses": [STAND_IN.to_string()], "conditions": {"ready": true}}]}),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "edge-cert", "namespace": b},
            "stringData": {"tls.crt": generated.cert.pem(), "tls.key": generated.signing_key.serialize_pem()}}),
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "unrelated", "namespace": b},
            "stringData": {"password": "not for the proxy"}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "edge-from-a", "namespace": b},
        "spec": {
            "from": [{"group": "meshgate.io", "kind": "ApiGateway", "namespace": a}],
            "to": [{"group": "", "kind": "Service"}, {"group": "", "kind": "Secret", "name": "edge-cert"}]
        }}),
    ] {
        apply_value(&w.admin, &obj).await;
    }

    let op = w.start_operator();
    w.create_gateway(json!({
        "listeners": [
            {"name": "http", "port": 8080, "protocol": "HTTP"},
            {"name": "https", "port": 8443, "protocol": "HTTPS",
             "tls": {"certificateRefs": [{"name": "edge-cert", "namespace": b}]}}
        ],
        "routes": [{
            "name": "api",
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
            "backendRefs": [{"name": "api", "namespace": b, "port": 80}]
        }],
        "mesh": {"mode": "None"},
        "infrastructure": {"service": {"type": "ClusterIP"}}
    }))
    .await;
    let gw = w.wait_condition("Programmed", "True").await;
    assert_eq!(condition(&gw, "ResolvedRefs").unwrap().status, "True");

    // The gateway is held for cleanup; b holds exactly the proxy's access.
    let gw = w.api::<ApiGateway>().get("edge").await.expect("gateway");
    assert_eq!(gw.finalizers(), ["meshgate.io/cleanup"]);
    let foreign = format!("edge-meshgate.{a}");
    let roles: Api<Role> = Api::namespaced(w.admin.clone(), &b);
    let bindings: Api<RoleBinding> = Api::namespaced(w.admin.clone(), &b);
    let role = roles.get(&foreign).await.expect("Role in b");
    assert_eq!(
        serde_json::to_value(&role.rules).unwrap(),
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["edge-cert"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["services"], "resourceNames": ["api"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ])
    );
    assert_eq!(role.labels()["meshgate.io/gateway-namespace"], a);
    assert!(role.owner_references().is_empty());
    let binding = bindings.get(&foreign).await.expect("RoleBinding in b");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", "edge-meshgate", Some(a.as_str()))
    );

    // What the API server now allows the proxy in b (and still refuses).
    let admin = &w.admin;
    assert!(
        may(
            admin,
            &proxy_sa,
            "watch",
            "",
            "secrets",
            &b,
            Some("edge-cert")
        )
        .await
    );
    assert!(!may(admin, &proxy_sa, "list", "", "secrets", &b, None).await);
    assert!(
        !may(
            admin,
            &proxy_sa,
            "get",
            "",
            "secrets",
            &b,
            Some("unrelated")
        )
        .await
    );
    assert!(
        !may(
            admin,
            &proxy_sa,
            "list",
            "",
            "secrets",
            &b,
            Some("unrelated")
        )
        .await
    );
    assert!(may(admin, &proxy_sa, "list", "", "services", &b, Some("api")).await);
    assert!(
        may(
            admin,
            &proxy_sa,
            "watch",
            "discovery.k8s.io",
            "endpointslices",
            &b,
            None
        )
        .await
    );
    assert!(
        !may(
            admin,
            &proxy_sa,
            "create",
            "discovery.k8s.io",
            "endpointslices",
            &b,
            None
        )
        .await
    );

    // A cluster-mode proxy running as that ServiceAccount serves the backend and
    // the certificate from b.
    let proxy = start_proxy_as_its_service_account(&a).await;
    let http_addr = proxy.listener_addr("http").expect("http");
    let reply = meshgate_proxy::client::get(http_addr, XNS_HOST, "/api/x")
        .await
        .expect("request");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json().expect("echo JSON")["backend"], "in-b");
    let tls = meshgate_proxy::client::Tls {
        server_name: XNS_HOST.into(),
        roots: vec![generated.cert.der().clone()],
        alpn: vec![b"http/1.1".to_vec()],
    };
    let request = http::Request::get("/api/tls")
        .header(http::header::HOST, XNS_HOST)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = meshgate_proxy::client::send(
        proxy.listener_addr("https").expect("https"),
        request,
        Some(&tls),
    )
    .await
    .expect("HTTPS with the certificate from b");
    assert_eq!(reply.status, 200, "{}", reply.text());
    proxy.shutdown(Duration::from_secs(5)).await;

    // The grant goes: the access in b follows within seconds, and status says why.
    let grants: Api<DynamicObject> = Api::namespaced_with(
        w.admin.clone(),
        &b,
        &meshgate_operator::dereference::reference_grant_resource(),
    );
    let revoked = std::time::Instant::now();
    grants
        .delete("edge-from-a", &DeleteParams::default())
        .await
        .expect("delete grant");
    wait_for(Duration::from_secs(10), || async {
        let gone = roles.get_opt(&foreign).await.ok()?.is_none()
            && bindings.get_opt(&foreign).await.ok()?.is_none();
        gone.then_some(())
    })
    .await
    .expect("Role and RoleBinding in b deleted within 10s of the grant");
    eprintln!(
        "access in b revoked {:?} after the grant was deleted",
        revoked.elapsed()
    );
    let gw = w.wait_condition("ResolvedRefs", "False").await;
    let c = condition(&gw, "ResolvedRefs").unwrap();
    assert_eq!(c.reason, "RefNotPermitted", "{}", c.message);
    assert!(!may(admin, &proxy_sa, "list", "", "services", &b, Some("api")).await);
    // Nothing is held elsewhere any more: the finalizer is released.
    let released = wait_for(Duration::from_secs(10), || async {
        let gw = w.api::<ApiGateway>().get("edge").await.ok()?;
        gw.finalizers().is_empty().then_some(())
    })
    .await;
    assert!(
        released.is_ok(),
        "finalizer released once nothing is held in b"
    );

    // A proxy started now is refused in b and still starts: the rest of the
    // gateway serves; the route and certificate from b are reported missing.
    let proxy = start_proxy_as_its_service_account(&a).await;
    let config =
        meshgate_proxy::client::get(proxy.admin_addr().expect("admin"), "admin", "/config")
            .await
            .expect("config")
            .json()
            .expect("JSON");
    let errors = config["errors"].to_string();
    assert!(errors.contains(&format!("{b}/api")), "{errors}");
    assert!(errors.contains(&format!("{b}/edge-cert")), "{errors}");
    proxy.shutdown(Duration::from_secs(5)).await;

    // The grant comes back (access in b again), then the gateway is deleted:
    // the finalizer holds it until the access in b is gone.
    apply_value(
        &w.admin,
        &json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "edge-from-a", "namespace": b},
            "spec": {
                "from": [{"group": "meshgate.io", "kind": "ApiGateway", "namespace": a}],
                "to": [{"group": "", "kind": "Service"}, {"group": "", "kind": "Secret", "name": "edge-cert"}]
            }}),
    )
    .await;
    wait_for(Duration::from_secs(10), || async {
        roles.get_opt(&foreign).await.ok()?.map(|_| ())
    })
    .await
    .expect("Role in b back within 10s of the grant");
    w.wait_condition("ResolvedRefs", "True").await;
    w.api::<ApiGateway>()
        .delete("edge", &DeleteParams::default())
        .await
        .expect("delete gateway");
    wait_for(WAIT, || async {
        let gone = w.api::<ApiGateway>().get_opt("edge").await.ok()?.is_none()
            && roles.get_opt(&foreign).await.ok()?.is_none()
            && bindings.get_opt(&foreign).await.ok()?.is_none();
        gone.then_some(())
    })
    .await
    .expect("the gateway disappears and its access in b with it");

    op.stop().await;
    w.finish().await;
}
