//! ApiPolicy enforcement. The effective policy of each (listener, route) pair
//! ([`meshgate_crds::attachment::effective`]) is compiled once per snapshot into a
//! [`RoutePolicy`]; a request pays only for the checks its route carries.
//!
//! Order of checks (as Envoy's filter chain): CORS preflight, IP filter, request
//! limits, authentication (JWT, API key), authorization, rate limits. CORS headers
//! are added to every response of a route with CORS, the proxy's own refusals
//! included, so browsers can read them.

pub mod claims;

pub use claims::Claims;

use k8s_openapi::api::core::v1::Secret;
use meshgate_crds::manifests::Manifests;

use crate::backends::namespace_of;

/// Finds the Secrets policies refer to (`namespace/name`), in the compile input.
pub struct SecretLookup<'a> {
    secrets: &'a [Secret],
}

impl<'a> SecretLookup<'a> {
    pub fn new(manifests: &'a Manifests) -> SecretLookup<'a> {
        SecretLookup {
            secrets: &manifests.secrets,
        }
    }

    pub fn from_slice(secrets: &'a [Secret]) -> SecretLookup<'a> {
        SecretLookup { secrets }
    }

    /// The Secret `r` names, the referrer being in `namespace`. Only core Secrets.
    pub fn get(
        &self,
        r: &meshgate_crds::SecretObjectReference,
        namespace: &str,
    ) -> Result<&'a Secret, String> {
        let ns = r.namespace.as_deref().unwrap_or(namespace);
        let kind_ok = r.group.as_deref().unwrap_or("").is_empty()
            && r.kind.as_deref().unwrap_or("Secret") == "Secret";
        if !kind_ok {
            return Err(format!(
                "{ns}/{}: only core Secrets can be referenced",
                r.name
            ));
        }
        self.secrets
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(r.name.as_str())
                    && namespace_of(&s.metadata) == ns
            })
            .ok_or_else(|| format!("Secret {ns}/{} not found", r.name))
    }

    /// The bytes of `key` in a Secret (`data`, or `stringData` in a manifest).
    pub fn value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
        if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
            return Some(v.0.clone());
        }
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|s| s.as_bytes().to_vec())
    }

    /// Every `(key, bytes)` of a Secret (`data` then `stringData`).
    pub fn entries(secret: &Secret) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(d) = &secret.data {
            out.extend(d.iter().map(|(k, v)| (k.clone(), v.0.clone())));
        }
        if let Some(d) = &secret.string_data {
            for (k, v) in d {
                if !out.iter().any(|(key, _)| key == k) {
                    out.push((k.clone(), v.as_bytes().to_vec()));
                }
            }
        }
        out
    }
}
