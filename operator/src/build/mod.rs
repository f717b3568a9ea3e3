//! *Build*: the Kubernetes objects an ApiGateway needs, as pure functions of
//! the ApiGateway and the operator's options. No API calls here; every
//! builder is covered by the golden files under `operator/tests/golden/`.

mod deployment;
mod foreign;
mod rbac;
mod scaling;
mod service;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use meshgate_crds::gateway::{IdentitySource, MeshMode};
use meshgate_crds::ApiGateway;

use crate::error::{Error, Result};

pub use deployment::{deployment, ADMIN_PORT, SIDECAR_ADMIN_PORT};
pub use foreign::{
    foreign_access, foreign_name, foreign_reads, foreign_selector, ForeignAccess, ForeignReads,
    GATEWAY_NAMESPACE_LABEL,
};
pub use rbac::{role, role_binding, service_account};
pub use scaling::{hpa, pdb};
pub use service::service;

/// `app.kubernetes.io/managed-by` value on everything the operator creates.
pub const MANAGED_BY: &str = "meshgate-operator";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Names the ApiGateway an object belongs to.
pub const GATEWAY_LABEL: &str = "meshgate.io/gateway";
/// Hash of what a running proxy cannot reload; a change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "meshgate.io/config-hash";
/// Suffix of every object name: `<gateway>-meshgate`.
pub const NAME_SUFFIX: &str = "-meshgate";
/// Longest gateway name whose derived names are valid Service names and label values (63).
pub const MAX_GATEWAY_NAME: usize = 63 - NAME_SUFFIX.len();

/// Operator-wide settings the builders need.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The meshgate-proxy image.
    pub proxy_image: String,
    /// Identity source when a gateway in mode Istio does not say.
    pub default_identity: IdentitySource,
    /// Istio revision for sidecar injection (`istio.io/rev`), SidecarFiles only.
    pub istio_revision: Option<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            proxy_image: "ghcr.io/meshgate/meshgate-proxy:latest".into(),
            default_identity: IdentitySource::IstioCA,
            istio_revision: None,
        }
    }
}

/// How the proxy pods get their mesh identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityMode {
    /// `mesh.mode: None`: no mesh identity.
    None,
    /// CSR to the Istio CA with a projected service-account token.
    IstioCa,
    /// An istio-proxy sidecar writes the certificate files.
    SidecarFiles,
}

impl IdentityMode {
    pub fn of(gw: &ApiGateway, opts: &BuildOptions) -> Self {
        // No mesh section: plain upstream connections, as the proxy does.
        let Some(mesh) = gw.spec.mesh.clone() else {
            return IdentityMode::None;
        };
        match mesh.mode {
            MeshMode::None => IdentityMode::None,
            MeshMode::Istio => match mesh
                .identity
                .map(|i| i.source)
                .unwrap_or(opts.default_identity)
            {
                IdentitySource::IstioCA => IdentityMode::IstioCa,
                IdentitySource::SidecarFiles => IdentityMode::SidecarFiles,
            },
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            IdentityMode::None => "None",
            IdentityMode::IstioCa => "IstioCA",
            IdentityMode::SidecarFiles => "SidecarFiles",
        }
    }

    /// Port of the proxy's admin listener (probes, metrics). With an istio-proxy
    /// sidecar, Envoy's admin interface owns 127.0.0.1:15000 in the pod, so the
    /// proxy moves aside.
    pub fn admin_port(self) -> i32 {
        match self {
            IdentityMode::SidecarFiles => SIDECAR_ADMIN_PORT,
            _ => ADMIN_PORT,
        }
    }

    /// Ports a listener must not use in this mode: the admin port, and with a
    /// sidecar every port istio-proxy binds in the pod.
    pub fn reserved_ports(self) -> Vec<(i32, &'static str)> {
        let mut ports = vec![(self.admin_port(), "the meshgate-proxy admin port")];
        if self == IdentityMode::SidecarFiles {
            for p in [
                15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090,
            ] {
                ports.push((p, "a port of the istio-proxy sidecar"));
            }
        }
        ports
    }
}

/// Everything the operator keeps in the cluster for one ApiGateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployment: Deployment,
    pub service: Service,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub pdb: Option<PodDisruptionBudget>,
}

/// Builds every object of `gw`. Fails only when the ApiGateway itself lacks
/// what any stored object has (name, namespace, uid).
pub fn build(gw: &ApiGateway, opts: &BuildOptions) -> Result<Desired> {
    let ctx = Ctx::new(gw, opts)?;
    Ok(Desired {
        service_account: service_account(&ctx),
        role: role(&ctx),
        role_binding: role_binding(&ctx),
        deployment: deployment(&ctx),
        service: service(&ctx),
        hpa: hpa(&ctx),
        pdb: pdb(&ctx),
    })
}

impl Desired {
    /// Every object as a JSON value, in a stable order (golden files, logging).
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>> {
        let mut out = vec![
            to_value("ServiceAccount", &self.service_account)?,
            to_value("Role", &self.role)?,
            to_value("RoleBinding", &self.role_binding)?,
            to_value("Deployment", &self.deployment)?,
            to_value("Service", &self.service)?,
        ];
        if let Some(hpa) = &self.hpa {
            out.push(to_value("HorizontalPodAutoscaler", hpa)?);
        }
        if let Some(pdb) = &self.pdb {
            out.push(to_value("PodDisruptionBudget", pdb)?);
        }
        Ok(out)
    }

    /// All objects as one multi-document YAML stream.
    pub fn to_yaml(&self) -> Result<String> {
        yaml_stream(&self.to_values()?)
    }

    /// The Roles and RoleBindings in other namespaces as one YAML stream.
    pub fn foreign_yaml(access: &[ForeignAccess]) -> Result<String> {
        let mut values = Vec::new();
        for a in access {
            values.push(to_value("Role", &a.role)?);
            values.push(to_value("RoleBinding", &a.role_binding)?);
        }
        yaml_stream(&values)
    }
}

fn yaml_stream(values: &[serde_json::Value]) -> Result<String> {
    let docs = values
        .iter()
        .map(|v| {
            serde_yaml_ng::to_string(v)
                .map_err(|e| Error::Config(format!("YAML of a built object: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(docs.join("---\n"))
}

fn to_value<T: serde::Serialize>(what: &str, obj: &T) -> Result<serde_json::Value> {
    serde_json::to_value(obj).map_err(|e| Error::serialize(what, e))
}

/// What every builder needs, derived once.
pub struct Ctx<'a> {
    pub gw: &'a ApiGateway,
    pub opts: &'a BuildOptions,
    pub name: String,
    pub namespace: String,
    /// `<gateway>-meshgate`: the name of every object.
    pub object_name: String,
    pub owner: OwnerReference,
    pub mode: IdentityMode,
}

impl<'a> Ctx<'a> {
    pub fn new(gw: &'a ApiGateway, opts: &'a BuildOptions) -> Result<Self> {
        let name = gw
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingField("metadata.name"))?;
        let namespace = gw
            .metadata
            .namespace
            .clone()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let uid = gw
            .metadata
            .uid
            .clone()
            .ok_or(Error::MissingField("metadata.uid"))?;
        let owner = OwnerReference {
            api_version: ApiGateway::api_version(&()).into_owned(),
            kind: ApiGateway::kind(&()).into_owned(),
            name: name.clone(),
            uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        Ok(Ctx {
            gw,
            opts,
            object_name: object_name(&name),
            name,
            namespace,
            owner,
            mode: IdentityMode::of(gw, opts),
        })
    }

    /// Labels on every object (and on the pods).
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = self.selector();
        l.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        l
    }

    /// The pod selector: stable for the life of the gateway.
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "meshgate-proxy".into()),
            (GATEWAY_LABEL.into(), self.name.clone()),
        ])
    }

    /// Metadata of a built object: name, namespace, labels, owner.
    pub fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.object_name.clone()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Fixed replica count, or None under autoscaling.
    pub fn replicas(&self) -> Option<i32> {
        let infra = self.gw.spec.infrastructure.as_ref();
        match infra {
            Some(i) if i.autoscaling.is_some() => None,
            Some(i) => Some(i.replicas.unwrap_or(DEFAULT_REPLICAS)),
            None => Some(DEFAULT_REPLICAS),
        }
    }
}

/// Replicas when neither `replicas` nor `autoscaling` is set.
pub const DEFAULT_REPLICAS: i32 = 2;

/// `<gateway>-meshgate`.
pub fn object_name(gateway: &str) -> String {
    format!("{gateway}{NAME_SUFFIX}")
}

/// The label selector that finds every object the operator made for `gateway`.
pub fn managed_selector(gateway: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{GATEWAY_LABEL}={gateway}")
}

/// Whether an existing object carries the operator's managed-by label.
pub fn is_managed<K: Resource>(obj: &K) -> bool {
    obj.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
}

/// A hash of what the proxy cannot change without a restart: its identity
/// mode. Routes, policies, certificates and listeners (ports, protocols: the
/// proxy binds them live, see proxy/src/listeners.rs) are reloaded, so they are
/// deliberately left out.
pub fn config_hash(_gw: &ApiGateway, mode: IdentityMode) -> String {
    let canonical = format!("v2;identity={}", mode.as_str());
    format!("{:016x}", fnv1a64(canonical.as_bytes()))
}

/// FNV-1a, 64 bit: stable across releases and platforms (unlike `DefaultHasher`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(yaml: &str) -> ApiGateway {
        let mut gw: ApiGateway = serde_yaml_ng::from_str(yaml).unwrap();
        gw.metadata.uid = Some("uid-1".into());
        gw
    }

    const BASE: &str = r#"
apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {name: g, namespace: ns}
spec:
  listeners: [{name: http, port: 8080, protocol: HTTP}]
  routes:
    - name: a
      backendRefs: [{name: svc, port: 80}]
"#;

    #[test]
    fn route_changes_keep_the_config_hash() {
        let a = gw(BASE);
        let mut b = a.clone();
        b.spec.routes[0].backend_refs[0].name = "other".into();
        b.spec.routes[0].name = "b".into();
        assert_eq!(
            config_hash(&a, IdentityMode::IstioCa),
            config_hash(&b, IdentityMode::IstioCa)
        );
        let da = build(&a, &BuildOptions::default()).unwrap();
        let db = build(&b, &BuildOptions::default()).unwrap();
        assert_eq!(da.deployment, db.deployment);
    }

    #[test]
    fn identity_changes_change_the_config_hash_and_listener_changes_do_not() {
        let a = gw(BASE);
        let mut b = a.clone();
        b.spec.listeners[0].port = 9090;
        b.spec.listeners[0].name = "renamed".into();
        assert_eq!(
            config_hash(&a, IdentityMode::IstioCa),
            config_hash(&b, IdentityMode::IstioCa)
        );
        // The pod template does not change either: the proxy rebinds live.
        let da = build(&a, &BuildOptions::default()).unwrap();
        let db = build(&b, &BuildOptions::default()).unwrap();
        assert_eq!(
            da.deployment.spec.as_ref().map(|s| &s.template),
            db.deployment.spec.as_ref().map(|s| &s.template)
        );
        assert_ne!(
            config_hash(&a, IdentityMode::IstioCa),
            config_hash(&a, IdentityMode::SidecarFiles)
        );
    }

    #[test]
    fn listener_order_does_not_matter() {
        let mut a = gw(BASE);
        a.spec.listeners.push(meshgate_crds::gateway::Listener {
            name: "other".into(),
            port: 9090,
            ..Default::default()
        });
        let mut b = a.clone();
        b.spec.listeners.reverse();
        assert_eq!(
            config_hash(&a, IdentityMode::None),
            config_hash(&b, IdentityMode::None)
        );
    }

    #[test]
    fn missing_uid_is_an_error_not_a_panic() {
        let mut g = gw(BASE);
        g.metadata.uid = None;
        assert!(matches!(
            build(&g, &BuildOptions::default()),
            Err(Error::MissingField("metadata.uid"))
        ));
    }

    #[test]
    fn every_object_is_labelled_and_owned() {
        let d = build(&gw(BASE), &BuildOptions::default()).unwrap();
        for v in d.to_values().unwrap() {
            assert_eq!(v["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY, "{v}");
            assert_eq!(v["metadata"]["labels"][GATEWAY_LABEL], "g");
            assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
            assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            assert_eq!(v["metadata"]["name"], "g-meshgate");
        }
    }

    #[test]
    fn no_mesh_section_means_plain_and_an_empty_one_means_the_default_identity() {
        assert_eq!(
            IdentityMode::of(&gw(BASE), &BuildOptions::default()),
            IdentityMode::None
        );
        let g = gw(&format!("{BASE}  mesh: {{}}\n"));
        assert_eq!(
            IdentityMode::of(&g, &BuildOptions::default()),
            IdentityMode::IstioCa
        );
        let opts = BuildOptions {
            default_identity: IdentitySource::SidecarFiles,
            ..Default::default()
        };
        assert_eq!(IdentityMode::of(&g, &opts), IdentityMode::SidecarFiles);
    }
}
