//! The fuzzing smoke run of CI: every file of every target's checked-in corpus
//! (`fuzz/corpus/<target>/`) and every crash input kept as a regression
//! (`fuzz/regressions/<target>/`) goes through the target's harness, which
//! checks the same invariants as under libFuzzer.

use std::path::Path;

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

fn replay(kind: &str, must_exist: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind);
    let mut total = 0;
    for (name, harness) in meshgate_fuzz::TARGETS {
        let inputs = files(&root.join(name));
        assert!(
            !must_exist || !inputs.is_empty(),
            "{kind}/{name} has no inputs"
        );
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(outcome.is_ok(), "{} failed", input.display());
            total += 1;
        }
    }
    eprintln!("{kind}: {total} inputs replayed");
}

#[test]
fn corpus_inputs_hold() {
    replay("corpus", true);
}

#[test]
fn regression_inputs_hold() {
    replay("regressions", false);
}

#[test]
fn every_target_has_a_binary() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    for (name, _) in meshgate_fuzz::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "no [[bin]] for {name}"
        );
        let target = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(target.is_file(), "{} is missing", target.display());
    }
}

/// The seeds reach the accepting paths, not only the refusals: the test chain
/// verifies, and the complete standalone manifest compiles without errors.
/// (Signed `jwt_verify` seeds are checked by the harness itself: a well-formed
/// token it signs must be accepted.)
#[test]
fn seeds_reach_the_success_paths() {
    use meshgate_mesh::{ExpectedIdentity, SpiffeVerifier, WorkloadIdentity};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let identity = WorkloadIdentity::new(
        vec![CertificateDer::from(
            meshgate_fuzz::MESH_WORKLOAD_DER.to_vec(),
        )],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            meshgate_fuzz::MESH_WORKLOAD_KEY_PKCS8.to_vec(),
        )),
        vec![CertificateDer::from(meshgate_fuzz::MESH_ROOT_DER.to_vec())],
    )
    .unwrap();
    let (_tx, watch) = meshgate_mesh::identity::fixed(identity);
    let verifier = SpiffeVerifier::new(
        watch,
        ExpectedIdentity::Namespace {
            trust_domain: "cluster.local".into(),
            namespace: "fuzz".into(),
        },
    );
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        meshgate_fuzz::VERIFY_AT_UNIX,
    ));
    let leaf = std::fs::read(dir.join("x509_identity/leaf-ok.der")).unwrap();
    let id = verifier
        .verify_chain(&CertificateDer::from(leaf), &[], now)
        .unwrap();
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/fuzz/sa/backend");

    let yaml =
        std::fs::read_to_string(dir.join("snapshot_compile/standalone-complete.yaml")).unwrap();
    let loaded = meshgate_crds::manifests::load_str("seed", &yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let snapshot = meshgate_proxy::snapshot::compile(
        &loaded.manifests,
        None,
        1,
        &meshgate_proxy::metrics::Metrics::default(),
        &meshgate_proxy::policy::PolicyRuntime::new(rustls::RootCertStore::empty()),
    )
    .unwrap();
    assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
    assert_eq!(snapshot.routes.len(), 2);
}
