//! The gateway Service: one port per listener.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshgate_crds::gateway::{ExternalTrafficPolicy, ServiceType};

use super::Ctx;

pub fn service(ctx: &Ctx) -> Service {
    let settings = ctx
        .gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.service.clone())
        .unwrap_or_default();
    let kind = settings.kind.unwrap_or_default();
    let type_ = match kind {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    // Only meaningful (and only accepted) for NodePort and LoadBalancer;
    // validation reports it on ClusterIP.
    let external_traffic_policy = match (kind, settings.external_traffic_policy) {
        (ServiceType::ClusterIP, _) | (_, None) => None,
        (_, Some(ExternalTrafficPolicy::Cluster)) => Some("Cluster".to_string()),
        (_, Some(ExternalTrafficPolicy::Local)) => Some("Local".to_string()),
    };
    let mut meta = ctx.meta();
    if !settings.annotations.is_empty() {
        meta.annotations = Some(settings.annotations.clone());
    }
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(ctx.selector()),
            external_traffic_policy,
            ports: Some(
                ctx.gw
                    .spec
                    .listeners
                    .iter()
                    .map(|l| ServicePort {
                        name: Some(l.name.clone()),
                        port: l.port,
                        target_port: Some(IntOrString::Int(l.port)),
                        protocol: Some("TCP".into()),
                        app_protocol: Some(
                            match l.protocol {
                                meshgate_crds::gateway::ListenerProtocol::HTTP => "http",
                                meshgate_crds::gateway::ListenerProtocol::HTTPS => "https",
                            }
                            .into(),
                        ),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
