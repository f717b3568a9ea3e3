//! The proxy Deployment: hardened pod, probes, draining, mesh wiring.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection,
    SleepAction, Sysctl, TopologySpreadConstraint, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{config_hash, Ctx, IdentityMode, CONFIG_HASH_ANNOTATION};

/// The proxy's admin listener: `/ready`, `/healthz`, `/metrics`.
pub const ADMIN_PORT: i32 = 15000;
/// The admin port when an istio-proxy sidecar owns 15000 (Envoy admin).
pub const SIDECAR_ADMIN_PORT: i32 = 15100;
/// Distroless `nonroot`.
pub const PROXY_UID: i64 = 65532;
/// Where the proxy finds its istio-ca token and the mesh root (IstioCA mode).
pub const ISTIO_TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const ISTIO_ROOT_CERT_DIR: &str = "/var/run/secrets/istio";
/// Where istio-proxy writes the workload certificate (SidecarFiles mode).
pub const ISTIO_OUTPUT_CERTS: &str = "/etc/istio-output-certs";

const CONTAINER: &str = "proxy";

pub fn deployment(ctx: &Ctx) -> Deployment {
    let infra = ctx.gw.spec.infrastructure.clone().unwrap_or_default();
    let admin = ctx.mode.admin_port();

    // User labels and annotations first, so ours win on a clash.
    let mut pod_labels = infra.pod_labels.clone();
    pod_labels.extend(ctx.labels());
    let mut pod_annotations = infra.pod_annotations.clone();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash(ctx.gw, ctx.mode));

    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    match ctx.mode {
        IdentityMode::None => {}
        IdentityMode::IstioCa => {
            // The proxy is its own mesh client: no sidecar, no ambient capture.
            pod_annotations.insert("sidecar.istio.io/inject".into(), "false".into());
            pod_labels.insert("istio.io/dataplane-mode".into(), "none".into());
            volumes.push(Volume {
                name: "istio-token".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some("istio-ca".into()),
                            expiration_seconds: Some(3600),
                            path: "istio-token".into(),
                        }),
                        ..VolumeProjection::default()
                    }]),
                    ..ProjectedVolumeSource::default()
                }),
                ..Volume::default()
            });
            volumes.push(Volume {
                name: "istiod-ca-cert".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "istio-ca-root-cert".into(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(read_only("istio-token", ISTIO_TOKEN_DIR));
            mounts.push(read_only("istiod-ca-cert", ISTIO_ROOT_CERT_DIR));
        }
        IdentityMode::SidecarFiles => {
            // istio-proxy only writes the certificate: no traffic capture.
            for (k, v) in [
                ("sidecar.istio.io/inject", "true".to_string()),
                (
                    "proxy.istio.io/config",
                    format!("proxyMetadata:\n  OUTPUT_CERTS: {ISTIO_OUTPUT_CERTS}\n"),
                ),
                (
                    "sidecar.istio.io/userVolumeMount",
                    format!(r#"{{"istio-certs":{{"mountPath":"{ISTIO_OUTPUT_CERTS}"}}}}"#),
                ),
                (
                    "traffic.sidecar.istio.io/includeInboundPorts",
                    String::new(),
                ),
                (
                    "traffic.sidecar.istio.io/includeOutboundIPRanges",
                    String::new(),
                ),
            ] {
                pod_annotations.insert(k.into(), v);
            }
            if let Some(rev) = &ctx.opts.istio_revision {
                pod_labels.insert("istio.io/rev".into(), rev.clone());
            }
            volumes.push(Volume {
                name: "istio-certs".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    ..EmptyDirVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(read_only("istio-certs", ISTIO_OUTPUT_CERTS));
        }
    }

    // Only the admin port is declared (the PodMonitor selects it by name). The
    // listener ports are not: the proxy binds them live as the ApiGateway
    // changes, and the Service targets them by number, so declaring them would
    // make every listener change roll the pods for nothing.
    let ports = vec![ContainerPort {
        name: Some("admin".into()),
        container_port: admin,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }];

    // Ports below 1024 without NET_BIND_SERVICE: the namespaced, "safe" sysctl.
    let sysctls = ctx
        .gw
        .spec
        .listeners
        .iter()
        .any(|l| l.port < 1024)
        .then(|| {
            vec![Sysctl {
                name: "net.ipv4.ip_unprivileged_port_start".into(),
                value: "0".into(),
            }]
        });

    let container = Container {
        name: CONTAINER.into(),
        image: Some(ctx.opts.proxy_image.clone()),
        args: Some(proxy_args(ctx, admin)),
        ports: Some(ports),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            // With POD_NAMESPACE, the proxy's SPIFFE ID: spiffe://<td>/ns/<ns>/sa/<sa>.
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ]),
        resources: Some(infra.resources.clone().unwrap_or_else(default_resources)),
        readiness_probe: Some(probe("/ready", admin, 2, 3)),
        liveness_probe: Some(probe("/healthz", admin, 10, 3)),
        lifecycle: Some(Lifecycle {
            // Keep serving while endpoints and load balancers drop the pod.
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: 5 }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Container::default()
    };

    let selector = ctx.selector();
    Deployment {
        metadata: ctx.meta(),
        spec: Some(DeploymentSpec {
            replicas: ctx.replicas(),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(ctx.object_name.clone()),
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(PROXY_UID),
                        run_as_group: Some(PROXY_UID),
                        fs_group: Some(PROXY_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        sysctls,
                        ..PodSecurityContext::default()
                    }),
                    node_selector: non_empty(infra.node_selector.clone()),
                    tolerations: (!infra.tolerations.is_empty()).then(|| infra.tolerations.clone()),
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "kubernetes.io/hostname".into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector),
                            ..LabelSelector::default()
                        }),
                        ..TopologySpreadConstraint::default()
                    }]),
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn non_empty(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

fn read_only(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The proxy's command line: the gateway it serves, its admin address, and where
/// its mesh identity comes from (flags of `meshgate-proxy`, see its `--help`).
fn proxy_args(ctx: &Ctx, admin: i32) -> Vec<String> {
    let mut args = vec![
        "--gateway".to_string(),
        format!("{}/{}", ctx.namespace, ctx.name),
        "--admin".to_string(),
        format!("0.0.0.0:{admin}"),
    ];
    let mesh = ctx.gw.spec.mesh.clone().unwrap_or_default();
    match ctx.mode {
        IdentityMode::None => {}
        IdentityMode::IstioCa => {
            let ca = mesh
                .identity
                .as_ref()
                .and_then(|i| i.istio_ca.clone())
                .unwrap_or_default();
            args.push("--istio-ca".into());
            args.push(
                ca.address
                    .unwrap_or_else(|| "istiod.istio-system.svc:15012".into()),
            );
            args.push("--istio-cluster-id".into());
            args.push(ca.cluster_id.unwrap_or_else(|| "Kubernetes".into()));
            args.push("--trust-domain".into());
            args.push(mesh.trust_domain.unwrap_or_else(|| "cluster.local".into()));
            if let Some(ttl) = ca.certificate_ttl.and_then(|t| t.to_std().ok()) {
                args.push("--mesh-cert-ttl".into());
                args.push(ttl.as_secs().to_string());
            }
        }
        IdentityMode::SidecarFiles => {
            args.push("--mesh-cert-dir".into());
            args.push(ISTIO_OUTPUT_CERTS.into());
        }
    }
    args
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

/// 100m CPU and 64Mi requested, memory capped at 512Mi; no CPU limit (throttling
/// an edge proxy hurts latency more than it protects neighbours).
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("100m".into())),
            ("memory".into(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".into(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}
