//! Certificate signing requests for Istio workload certificates, shaped like
//! ztunnel's: ECDSA P-256 key, empty subject, one URI SAN (the SPIFFE ID),
//! which rcgen marks critical because the subject is empty (RFC 5280 4.2.1.6).

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};

use crate::{Error, SpiffeId};

/// A fresh private key and the CSR for it.
pub struct Csr {
    /// PEM `CERTIFICATE REQUEST`, sent to the CA.
    pub csr_pem: String,
    /// PEM PKCS#8 private key; stays in the process.
    pub key_pem: String,
}

/// Generates a key pair and a CSR asking for `id`.
pub fn generate(id: &SpiffeId) -> Result<Csr, Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::from_rcgen)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = id.to_string().try_into().map_err(Error::from_rcgen)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(Error::from_rcgen)?;
    Ok(Csr {
        csr_pem: csr.pem().map_err(Error::from_rcgen)?,
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn csr_carries_one_uri_san_and_an_empty_subject() {
        let id: SpiffeId = "spiffe://cluster.local/ns/edge/sa/gw".parse().unwrap();
        let csr = generate(&id).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr.csr_pem.as_bytes()).unwrap();
        let (_, req) = X509CertificationRequest::from_der(&pem.contents).unwrap();
        let info = &req.certification_request_info;
        assert_eq!(info.subject.iter().count(), 0);
        let exts = req
            .requested_extensions()
            .expect("extension request")
            .collect::<Vec<_>>();
        let sans: Vec<String> = exts
            .iter()
            .filter_map(|e| match e {
                ParsedExtension::SubjectAlternativeName(san) => Some(san),
                _ => None,
            })
            .flat_map(|san| san.general_names.iter())
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            sans,
            vec!["URI(spiffe://cluster.local/ns/edge/sa/gw)".to_string()]
        );
        assert!(csr.key_pem.contains("BEGIN PRIVATE KEY"));
    }
}
