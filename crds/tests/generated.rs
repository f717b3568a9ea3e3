//! The generated artefacts in the repository are exactly what the code
//! generates now. On failure, regenerate with the commands in docs/development.md.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn crd_yaml_files_match_the_types() {
    let files = meshgate_crds::crd_files().expect("CRDs serialise");
    assert_eq!(files.len(), 2);
    for dir in ["crds", "helm/meshgate/crds"] {
        for (name, yaml) in &files {
            let path = repo().join(dir).join(name);
            assert!(
                read(&path) == *yaml,
                "{} is stale: run `cargo run -p meshgate-operator -- crds --out-dir {dir}`",
                path.display()
            );
        }
        let on_disk = std::fs::read_dir(repo().join(dir))
            .expect("dir exists")
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.path().extension().is_some_and(|x| x == "yaml"))
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(
            on_disk,
            files.len(),
            "{dir} holds CRD files that are no longer generated"
        );
    }
}

#[test]
fn api_reference_matches_the_types_and_examples() {
    let examples = meshgate_crds::examples::read_dir(&repo().join("docs/examples")).unwrap();
    let expected = meshgate_crds::apidoc::markdown(&examples).unwrap();
    let actual = read(&repo().join("docs/api.md"));
    assert!(
        actual == expected,
        "docs/api.md is stale: run `cargo run -p meshgate-operator -- api-docs > docs/api.md`"
    );
}

#[test]
fn api_reference_mentions_every_field() {
    let doc = read(&repo().join("docs/api.md"));
    let mut count = 0;
    for crd in meshgate_crds::crds() {
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .unwrap();
        for field in meshgate_crds::apidoc::fields(&schema) {
            assert!(
                doc.contains(&format!("| `{}` |", field.path)),
                "docs/api.md does not document {}",
                field.path
            );
            count += 1;
        }
    }
    // A sanity floor: the API has well over a hundred fields.
    assert!(count > 150, "only {count} fields found");
}
