//! Makes the test keys in `fuzz/keys/` and the generated seeds of the
//! `jwt_verify` and `x509_identity` corpora. Run once, by hand:
//! `cargo test -p meshgate-fuzz --test seeds -- --ignored`
//! (it rewrites the keys, which invalidates the signed seeds: commit both).

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

fn dir(rel: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn leaf_params(uris: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
        .collect();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p
}

#[test]
#[ignore = "rewrites fuzz/keys and generated corpus seeds"]
fn generate() {
    let keys = dir("keys");
    let rng = SystemRandom::new();
    let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    std::fs::write(keys.join("jwt-ed25519.pk8"), ed.as_ref()).unwrap();
    let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    std::fs::write(keys.join("jwt-p256.pk8"), ec.as_ref()).unwrap();

    // Mesh CA: root, an intermediate, and workloads in namespace `fuzz` and others.
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("meshgate fuzz root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    std::fs::write(keys.join("mesh-root.der"), root.der()).unwrap();

    let workload_key = KeyPair::generate().unwrap();
    let workload = leaf_params(&["spiffe://cluster.local/ns/fuzz/sa/gateway"])
        .signed_by(&workload_key, &root_issuer)
        .unwrap();
    std::fs::write(keys.join("mesh-workload.der"), workload.der()).unwrap();
    std::fs::write(keys.join("mesh-workload.pk8"), workload_key.serialize_der()).unwrap();

    let inter_key = KeyPair::generate().unwrap();
    let inter_params = ca_params("meshgate fuzz intermediate");
    let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
    let inter_issuer = Issuer::new(inter_params, inter_key);

    let x509 = dir("corpus/x509_identity");
    let sep = meshgate_fuzz::CHAIN_SEPARATOR;
    let leaf = |uris: &[&str], issuer: &Issuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        leaf_params(uris).signed_by(&key, issuer).unwrap()
    };
    let ok = leaf(&["spiffe://cluster.local/ns/fuzz/sa/backend"], &root_issuer);
    std::fs::write(x509.join("leaf-ok.der"), ok.der()).unwrap();
    let other = leaf(
        &["spiffe://cluster.local/ns/other/sa/backend"],
        &root_issuer,
    );
    std::fs::write(x509.join("leaf-other-namespace.der"), other.der()).unwrap();
    let two = leaf(
        &[
            "spiffe://cluster.local/ns/fuzz/sa/a",
            "spiffe://cluster.local/ns/fuzz/sa/b",
        ],
        &root_issuer,
    );
    std::fs::write(x509.join("leaf-two-ids.der"), two.der()).unwrap();
    let bad = leaf(&["spiffe://Cluster.local/ns/fuzz/sa/../x"], &root_issuer);
    std::fs::write(x509.join("leaf-bad-id.der"), bad.der()).unwrap();
    let via = leaf(&["spiffe://cluster.local/ns/fuzz/sa/via"], &inter_issuer);
    let mut chain = via.der().to_vec();
    chain.extend_from_slice(sep);
    chain.extend_from_slice(inter.der());
    std::fs::write(x509.join("chain-intermediate.bin"), chain).unwrap();
    std::fs::write(x509.join("root.der"), root.der()).unwrap();
    let mut pem = ok.pem();
    pem.push_str(&inter.pem());
    std::fs::write(x509.join("chain.pem"), pem).unwrap();
}
