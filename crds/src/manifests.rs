//! Reads Kubernetes YAML manifests — the objects a cluster would hold — from
//! files, for standalone mode and for tests of the examples.
//!
//! A document that cannot be read is reported on its own and the others are
//! still loaded: one broken resource must never hide the rest.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer as _};

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
    // The fast reader: YAML events (our subset reader's, else libyaml's) written
    // out as JSON text, read by serde_json; `None` when it is not sure to read
    // the text as serde_yaml_ng does, which then reads it (see `yaml_json`).
    if let Some(documents) = crate::yaml_json::documents(text) {
        for (index, json) in documents.iter().enumerate() {
            let outcome =
                serde_json::Deserializer::from_str(json).deserialize_any(DocumentVisitor {
                    out: &mut loaded.manifests,
                });
            let outcome = outcome.map_err(|e| e.to_string());
            if !settle(origin, text, index, outcome, loaded) {
                break;
            }
        }
        return;
    }
    load_str_slow(origin, text, loaded);
}

/// serde_yaml_ng's reading, document by document.
fn load_str_slow(origin: &str, text: &str, loaded: &mut Loaded) {
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let outcome = document.deserialize_any(DocumentVisitor {
            out: &mut loaded.manifests,
        });
        let outcome = outcome.map_err(|e| e.to_string());
        if !settle(origin, text, index, outcome, loaded) {
            break;
        }
    }
}

/// Records what reading document `index` came to; false when the YAML stream
/// cannot be read any further.
fn settle(
    origin: &str,
    text: &str,
    index: usize,
    outcome: Result<Result<(), String>, String>,
    loaded: &mut Loaded,
) -> bool {
    let fail = |message: String| Error::Manifest {
        path: origin.to_string(),
        index,
        message,
    };
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(message)) => loaded.errors.push(fail(message)),
        Err(_) => {
            // The typed path is only a faster way to the generic path's answer:
            // when it fails, the generic path decides (and its messages name
            // the object, or the YAML error).
            match generic_document(text, index) {
                Ok(value) => {
                    if let Err(message) = add_object(value, &mut loaded.manifests) {
                        loaded.errors.push(fail(message));
                    }
                }
                Err(message) => {
                    loaded.errors.push(fail(message));
                    // The YAML stream cannot be resynchronised after a syntax error.
                    return false;
                }
            }
        }
    }
    true
}

/// Adds one document to `out`: straight into its type when `apiVersion` and
/// `kind` are its first two keys (as kubectl, Helm and most people write them),
/// else through a generic `serde_json::Value` first. Building that value and
/// converting it was a third of a 5,000-route reload; the result is the same
/// either way: the visitor's own error means "read it again through the
/// generic path", whose answer counts (see [`generic_document`]);
/// `Ok(Err(message))` is a document read but refused.
struct DocumentVisitor<'a> {
    out: &'a mut Manifests,
}

/// What the fast path needs of an object it does not keep: its name.
#[derive(Deserialize)]
struct NameOnly {
    #[serde(default)]
    metadata: Option<MetadataName>,
}

#[derive(Deserialize)]
struct MetadataName {
    #[serde(default)]
    name: Option<String>,
}

impl<'de> Visitor<'de> for DocumentVisitor<'_> {
    type Value = Result<(), String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(())) // an empty document
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut api_version: Option<String> = None;
        let mut kind: Option<String> = None;
        let mut first_other = None;
        while api_version.is_none() || kind.is_none() {
            let Some(key) = map.next_key::<String>()? else {
                break;
            };
            match key.as_str() {
                "apiVersion" if api_version.is_none() => api_version = Some(map.next_value()?),
                "kind" if kind.is_none() => kind = Some(map.next_value()?),
                _ => {
                    first_other = Some((key, map.next_value()?));
                    break;
                }
            }
        }
        let (Some(api_version), Some(kind), None) =
            (api_version.as_deref(), kind.as_deref(), &first_other)
        else {
            // Not in the usual order (or incomplete): the generic path, keys in
            // the order they came, so a repeated key's last value wins.
            let mut object = serde_json::Map::new();
            object.extend(api_version.map(|v| ("apiVersion".into(), v.into())));
            object.extend(kind.map(|k| ("kind".into(), k.into())));
            object.extend(first_other);
            while let Some((key, value)) = map.next_entry()? {
                object.insert(key, value);
            }
            return Ok(add_object(serde_json::Value::Object(object), self.out));
        };
        let rest = de::value::MapAccessDeserializer::new(map);
        let out = self.out;
        match (api_version, kind) {
            ("meshgate.io/v1alpha1", "ApiGateway") => {
                out.gateways.push(Deserialize::deserialize(rest)?)
            }
            ("meshgate.io/v1alpha1", "ApiPolicy") => {
                out.policies.push(Deserialize::deserialize(rest)?)
            }
            ("v1", "Secret") => out.secrets.push(Deserialize::deserialize(rest)?),
            ("v1", "Service") => out.services.push(Deserialize::deserialize(rest)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                out.endpoint_slices.push(Deserialize::deserialize(rest)?)
            }
            _ => {
                let name = NameOnly::deserialize(rest)?
                    .metadata
                    .and_then(|m| m.name)
                    .unwrap_or_else(|| "<unnamed>".into());
                return Ok(other_kind(api_version, kind, &name, out));
            }
        }
        Ok(Ok(()))
    }
}

/// Document `index` of `text` as a generic value, or why it is not valid YAML.
fn generic_document(text: &str, index: usize) -> Result<serde_json::Value, String> {
    let document = serde_yaml_ng::Deserializer::from_str(text)
        .nth(index)
        .ok_or("not valid YAML")?;
    serde_json::Value::deserialize(document).map_err(|e| format!("not valid YAML: {e}"))
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
        _ => return other_kind(&api_version, &kind, &name, out),
    }
    Ok(())
}

/// A document of a kind meshgate does not read: noted, or refused when it is
/// one of ours under another apiVersion.
fn other_kind(
    api_version: &str,
    kind: &str,
    name: &str,
    out: &mut Manifests,
) -> Result<(), String> {
    if matches!(kind, "ApiGateway" | "ApiPolicy") {
        return Err(format!(
            "{kind} {name}: unsupported apiVersion {api_version:?}, expected meshgate.io/v1alpha1"
        ));
    }
    out.ignored.push(format!("{api_version}/{kind} {name}"));
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

    /// Every kind, written twice: `apiVersion` and `kind` first (the typed path)
    /// and last (the generic path). Both must read the same objects.
    #[test]
    fn key_order_does_not_change_what_is_read() {
        let objects = [
            ("meshgate.io/v1alpha1", "ApiGateway", "metadata: {name: gw, namespace: ns}\nspec:\n  listeners: [{name: http, port: 8080, protocol: HTTP}]\n  routes: [{name: r, matches: [{path: {type: PathPrefix, value: /a}}], backendRefs: [{name: svc, port: 80}]}]\n"),
            ("meshgate.io/v1alpha1", "ApiPolicy", "metadata: {name: p}\nspec:\n  targetRefs: [{group: meshgate.io, kind: ApiGateway, name: gw}]\n  cors: {allowOrigins: ['https://a.example']}\n"),
            ("v1", "Secret", "metadata: {name: s}\ntype: Opaque\ndata: {k: dmFsdWU=}\nstringData: {x: y}\n"),
            ("v1", "Service", "metadata: {name: svc}\nspec: {ports: [{name: http, port: 80, targetPort: 8080}]}\n"),
            ("discovery.k8s.io/v1", "EndpointSlice", "metadata: {name: e, labels: {kubernetes.io/service-name: svc}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: true}}]\n"),
            ("v1", "ConfigMap", "metadata: {name: other}\ndata: {a: b}\n"),
        ];
        let typed: Vec<String> = objects
            .iter()
            .map(|(v, k, rest)| format!("apiVersion: {v}\nkind: {k}\n{rest}"))
            .collect();
        let generic: Vec<String> = objects
            .iter()
            .map(|(v, k, rest)| format!("{rest}kind: {k}\napiVersion: {v}\n"))
            .collect();
        let a = load_str("typed", &typed.join("---\n"));
        let b = load_str("generic", &generic.join("---\n"));
        assert!(a.errors.is_empty(), "{:?}", a.errors);
        assert!(b.errors.is_empty(), "{:?}", b.errors);
        let json = |m: &Manifests| {
            serde_json::json!([
                m.gateways,
                m.policies,
                m.secrets,
                m.services,
                m.endpoint_slices,
                m.ignored
            ])
        };
        let (ja, jb) = (json(&a.manifests), json(&b.manifests));
        assert_eq!(ja, jb);
        // And something was read: one of each, the ConfigMap noted.
        for list in ja.as_array().unwrap() {
            assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
        }
        assert_eq!(a.manifests.gateways[0].spec.routes[0].name, "r");
        assert_eq!(a.manifests.ignored, vec!["v1/ConfigMap other"]);
    }

    /// A key given twice at the top: the generic path's answer (the last value
    /// wins), as before the typed path existed.
    #[test]
    fn a_repeated_top_level_key_reads_as_the_generic_path_does() {
        let text = "apiVersion: v1\nkind: Service\nkind: ConfigMap\nmetadata: {name: a}\n";
        let generic: serde_json::Value =
            serde_yaml_ng::from_str(text).expect("the generic path reads it");
        let mut expected = Manifests::default();
        add_object(generic, &mut expected).unwrap();
        let loaded = load_str("t", text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.manifests.ignored, expected.ignored);
        assert_eq!(loaded.manifests.ignored, vec!["v1/ConfigMap a"]);
        assert!(loaded.manifests.services.is_empty());
    }

    #[test]
    fn syntax_error_stops_the_stream_and_type_errors_do_not() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: x}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: [c\n---\napiVersion: v1\nkind: Service\nmetadata: {name: d}\n";
        let loaded = load_str("t.yaml", text);
        let names: Vec<_> = loaded
            .manifests
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, vec!["b"]);
        assert_eq!(loaded.errors.len(), 2, "{:?}", loaded.errors);
        let first = loaded.errors[0].to_string();
        assert!(first.contains("document 0: Service a: "), "{first}");
        assert!(loaded.errors[1].to_string().contains("not valid YAML"));
    }

    #[test]
    fn an_empty_document_or_a_scalar_is_handled() {
        let loaded = load_str("t", "---\n---\njust text\n");
        assert!(loaded.manifests.ignored.is_empty());
        assert_eq!(loaded.errors.len(), 1);
        assert!(loaded.errors[0].to_string().contains("missing kind"));
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

    /// Every object of `loaded` as JSON, kind by kind, and the errors.
    fn dump(loaded: &Loaded) -> serde_json::Value {
        let m = &loaded.manifests;
        serde_json::json!({
            "gateways": m.gateways, "policies": m.policies, "secrets": m.secrets,
            "services": m.services, "slices": m.endpoint_slices, "ignored": m.ignored,
            "errors": loaded.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn the_fast_reader_loads_what_serde_yaml_ng_loads() {
        let mut text = String::from(
            "apiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata: {name: gw, namespace: demo, labels: {app: gw}}\nspec:\n  listeners:\n  - {name: http, port: 8080, protocol: HTTP}\n  routes:\n",
        );
        for i in 0..2_000 {
            text.push_str(&format!(
                "  - name: r{i}\n    matches: [{{path: {{type: PathPrefix, value: /r{i}/}}, headers: [{{name: x-v, value: \"{i}\"}}]}}]\n    backendRefs: [{{name: upstream, port: 80, weight: 2}}]\n"
            ));
        }
        text.push_str(concat!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: upstream, namespace: demo}\n",
            "spec: {ports: [{name: http, port: 80, targetPort: 9000}, {name: named, port: 81, targetPort: web}]}\n",
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n",
            "metadata: {name: upstream-1, namespace: demo, labels: {kubernetes.io/service-name: upstream}}\n",
            "addressType: IPv4\nports: [{name: http, port: 9000}]\n",
            "endpoints: [{addresses: [10.0.0.1, \"10.0.0.2\"], conditions: {ready: true}}]\n",
            "---\napiVersion: v1\nkind: Secret\nmetadata: {name: tls, namespace: demo}\ntype: kubernetes.io/tls\n",
            "stringData:\n  tls.crt: |\n    -----BEGIN CERTIFICATE-----\n    MIIB\n    -----END CERTIFICATE-----\n",
            "---\nkind: ConfigMap\napiVersion: v1\nmetadata: {name: other}\ndata: {a: \"1\"}\n",
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: eighty}]}\n",
        ));
        assert!(
            crate::yaml_json::documents(&text).is_some(),
            "the fast reader gave up"
        );
        let fast = load_str("t", &text);
        let mut slow = Loaded::default();
        load_str_slow("t", &text, &mut slow);
        assert_eq!(fast.manifests.gateways[0].spec.routes.len(), 2_000);
        assert_eq!(fast.manifests.services.len(), 1);
        assert_eq!(fast.errors.len(), 1, "{:?}", fast.errors);
        assert_eq!(dump(&fast), dump(&slow));
    }
}
