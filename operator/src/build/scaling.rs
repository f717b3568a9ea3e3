//! Scaling and availability: HorizontalPodAutoscaler and PodDisruptionBudget.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Ctx;

/// Target CPU utilisation when autoscaling does not say.
pub const DEFAULT_TARGET_CPU: i32 = 80;

/// An autoscaling/v2 HPA on CPU when `infrastructure.autoscaling` is set.
pub fn hpa(ctx: &Ctx) -> Option<HorizontalPodAutoscaler> {
    let a = ctx.gw.spec.infrastructure.as_ref()?.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: ctx.meta(),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: ctx.object_name.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(
                            a.target_cpu_utilization_percentage
                                .unwrap_or(DEFAULT_TARGET_CPU),
                        ),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        status: None,
    })
}

/// The PDB the gateway asks for; without one, `minAvailable: 1` as soon as at
/// least two replicas run (fixed count or autoscaling minimum), so voluntary
/// disruptions never take the last proxy away. None for a single replica,
/// where a PDB would block node drains forever.
pub fn pdb(ctx: &Ctx) -> Option<PodDisruptionBudget> {
    let infra = ctx.gw.spec.infrastructure.as_ref();
    let (min_available, max_unavailable) =
        match infra.and_then(|i| i.pod_disruption_budget.as_ref()) {
            Some(p) => (
                p.min_available.map(IntOrString::Int),
                p.max_unavailable.map(IntOrString::Int),
            ),
            None => {
                let replicas = match ctx.replicas() {
                    Some(r) => r,
                    None => infra
                        .and_then(|i| i.autoscaling.as_ref())
                        .map_or(0, |a| a.min_replicas),
                };
                if replicas < 2 {
                    return None;
                }
                (Some(IntOrString::Int(1)), None)
            }
        };
    Some(PodDisruptionBudget {
        metadata: ctx.meta(),
        spec: Some(PodDisruptionBudgetSpec {
            min_available,
            max_unavailable,
            selector: Some(LabelSelector {
                match_labels: Some(ctx.selector()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}
