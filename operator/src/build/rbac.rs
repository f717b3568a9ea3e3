//! The proxy's identity and API access: ServiceAccount, Role, RoleBinding.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::Ctx;

/// `<gateway>-meshgate`: the proxy pods run as it; its token is what the Istio
/// CA turns into the SPIFFE identity `spiffe://<td>/ns/<ns>/sa/<gateway>-meshgate`.
pub fn service_account(ctx: &Ctx) -> ServiceAccount {
    ServiceAccount {
        metadata: ctx.meta(),
        ..ServiceAccount::default()
    }
}

fn read(group: &str, resources: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..PolicyRule::default()
    }
}

/// Read-only access to what the proxy compiles its configuration from, in the
/// gateway's namespace only: its ApiGateway and the ApiPolicies, Secrets
/// (certificates, API keys, JWKS), Services and EndpointSlices they reference.
/// Nothing is writable.
pub fn role(ctx: &Ctx) -> Role {
    Role {
        metadata: ctx.meta(),
        rules: Some(vec![
            read("meshgate.io", &["apigateways", "apipolicies"]),
            read("", &["secrets", "services"]),
            read("discovery.k8s.io", &["endpointslices"]),
        ]),
    }
}

pub fn role_binding(ctx: &Ctx) -> RoleBinding {
    RoleBinding {
        metadata: ctx.meta(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: ctx.object_name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: ctx.object_name.clone(),
            namespace: Some(ctx.namespace.clone()),
            ..Subject::default()
        }]),
    }
}
