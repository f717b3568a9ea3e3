//! Reads Kubernetes YAML manifests — the objects a cluster would hold — from
//! files, for standalone mode and for tests of the examples.
//!
//! A document that cannot be read is reported on its own and the others are
//! still loaded: one broken resource must never hide the rest.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

use crate::{ApiGateway, ApiPolicy, Error};

/// The objects found in a set of manifests, by kind.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub gateways: Vec<ApiGateway>,
    pub policies: Vec<ApiPolicy>,
    pub secrets: Vec<Secret>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// `kind` of documents that were valid YAML but of a kind meshgate does not read.
    pub ignored: Vec<String>,
}

/// What loading produced: the objects read, and one error per document that was not.
#[derive(Debug, Default)]
pub struct Loaded {
    pub manifests: Manifests,
    pub errors: Vec<Error>,
}

/// Loads every `*.yaml`/`*.yml` file directly in `dir` (sorted by name, so
/// results do not depend on directory order).
pub fn load_dir(dir: &Path) -> Result<Loaded, Error> {
    let io_err = |source| Error::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_yaml(p))
        .collect();
    files.sort();
    let mut loaded = Loaded::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
            path: file.display().to_string(),
            source,
        })?;
        load_str_into(&file.display().to_string(), &text, &mut loaded);
    }
    Ok(loaded)
}

/// Loads a YAML stream (one or more `---`-separated documents).
pub fn load_str(origin: &str, text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    load_str_into(origin, text, &mut loaded);
    loaded
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn load_str_into(origin: &str, text: &str, loaded: &mut Loaded) {
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let fail = |message: String| Error::Manifest {
            path: origin.to_string(),
            index,
            message,
        };
        let value = match serde_json::Value::deserialize(document) {
            Ok(serde_json::Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                loaded.errors.push(fail(format!("not valid YAML: {e}")));
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        if let Err(message) = add_object(value, &mut loaded.manifests) {
            loaded.errors.push(fail(message));
        }
    }
}

fn add_object(value: serde_json::Value, out: &mut Manifests) -> Result<(), String> {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or("missing kind")?
        .to_string();
    let name = value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or("<unnamed>")
        .to_string();
    let parse_err = |e: serde_json::Error| format!("{kind} {name}: {e}");
    match (api_version.as_str(), kind.as_str()) {
        ("meshgate.io/v1alpha1", "ApiGateway") => {
            out.gateways
                .push(serde_json::from_value(value).map_err(parse_err)?);
        }
        ("meshgate.io/v1alpha1", "ApiPolicy") => {
            out.policies
                .push(serde_json::from_value(value).map_err(parse_err)?);
        }
        ("v1", "Secret") => out
            .secrets
            .push(serde_json::from_value(value).map_err(parse_err)?),
        ("v1", "Service") => out
            .services
            .push(serde_json::from_value(value).map_err(parse_err)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => out
            .endpoint_slices
            .push(serde_json::from_value(value).map_err(parse_err)?),
        (_, "ApiGateway" | "ApiPolicy") => {
            return Err(format!(
            "{kind} {name}: unsupported apiVersion {api_version:?}, expected meshgate.io/v1alpha1"
        ))
        }
        _ => out.ignored.push(format!("{api_version}/{kind} {name}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_document_is_reported_and_others_still_load() {
        let text = r#"
apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {name: good}
spec:
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {name: bad}
spec:
  listeners: [{name: http, port: "eighty", protocol: HTTP}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
"#;
        let loaded = load_str("test.yaml", text);
        assert_eq!(loaded.manifests.gateways.len(), 1);
        assert_eq!(
            loaded.manifests.gateways[0].metadata.name.as_deref(),
            Some("good")
        );
        assert_eq!(loaded.errors.len(), 1);
        let msg = loaded.errors[0].to_string();
        assert!(
            msg.contains("test.yaml: document 1: ApiGateway bad"),
            "{msg}"
        );
        assert_eq!(loaded.manifests.ignored, vec!["v1/ConfigMap other"]);
    }

    #[test]
    fn wrong_api_version_is_an_error() {
        let loaded = load_str(
            "x",
            "apiVersion: meshgate.io/v1\nkind: ApiPolicy\nmetadata: {name: p}\nspec: {}\n",
        );
        assert!(loaded.errors[0]
            .to_string()
            .contains("unsupported apiVersion"));
    }
}
