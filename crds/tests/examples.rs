//! Every example under docs/examples loads into the API types; every invalid
//! example states the error the API server must answer with (the conformance
//! suite in kind-tests/ checks that against a real kube-apiserver).

use std::path::{Path, PathBuf};

use meshgate_crds::examples::{expected_error, read_dir};
use meshgate_crds::manifests::load_str;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples")
}

#[test]
fn every_valid_example_deserialises() {
    let examples = read_dir(&examples_dir()).unwrap();
    assert!(examples.len() >= 8, "expected the documented examples");
    for (name, text) in examples {
        let loaded = load_str(&name, &text);
        assert!(loaded.errors.is_empty(), "{name}: {:?}", loaded.errors);
        let m = &loaded.manifests;
        assert!(
            !m.gateways.is_empty() || !m.policies.is_empty(),
            "{name} holds no meshgate object"
        );
        assert!(
            m.ignored.is_empty(),
            "{name}: unexpected kinds {:?}",
            m.ignored
        );
        // Round trip: what we serialise reads back the same.
        for gw in &m.gateways {
            let again: meshgate_crds::ApiGateway =
                serde_json::from_value(serde_json::to_value(gw).unwrap()).unwrap();
            assert_eq!(&again.spec, &gw.spec, "{name}");
        }
        for p in &m.policies {
            let again: meshgate_crds::ApiPolicy =
                serde_json::from_value(serde_json::to_value(p).unwrap()).unwrap();
            assert_eq!(&again.spec, &p.spec, "{name}");
        }
    }
}

#[test]
fn every_invalid_example_names_its_error_and_is_one_meshgate_object() {
    let examples = read_dir(&examples_dir().join("invalid")).unwrap();
    assert!(examples.len() >= 15);
    for (name, text) in examples {
        let expected = expected_error(&text);
        assert!(
            expected.is_some(),
            "{name}: first line must be `# expect: <message>`"
        );
        let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
            .collect();
        assert_eq!(docs.len(), 1, "{name}: one object per invalid example");
        let kind = docs[0]["kind"].as_str().unwrap_or_default();
        assert!(
            matches!(kind, "ApiGateway" | "ApiPolicy"),
            "{name}: kind {kind}"
        );
    }
}

#[test]
fn examples_use_the_documented_field_values() {
    let text = std::fs::read_to_string(examples_dir().join("gateway-routing.yaml")).unwrap();
    let loaded = load_str("gateway-routing.yaml", &text);
    let route = &loaded.manifests.gateways[0].spec.routes[0];
    let timeouts = route.timeouts.as_ref().expect("timeouts");
    assert_eq!(
        timeouts.request.as_ref().unwrap().to_std().unwrap(),
        std::time::Duration::from_secs(10)
    );
    assert_eq!(route.backend_refs[0].weight(), 90);
}
