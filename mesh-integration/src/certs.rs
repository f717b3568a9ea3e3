//! Reading what a CA issued: PEM chains, the SPIFFE ID in a leaf, its validity.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::*;

use crate::{Error, SpiffeId};

/// Parses every `CERTIFICATE` block of a PEM text.
pub fn parse_pem_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate(format!("PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Certificate("no certificate in PEM".into()));
    }
    Ok(certs)
}

/// The SPIFFE ID of a workload certificate: its one `spiffe://` URI SAN.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Result<SpiffeId, Error> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| Error::Certificate(format!("X.509: {e}")))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| Error::Certificate(format!("SAN: {e}")))?
        .ok_or_else(|| Error::Certificate("no subjectAltName".into()))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => uri.parse(),
        (None, _) => Err(Error::Certificate("no spiffe:// URI SAN".into())),
        (Some(_), Some(_)) => Err(Error::Certificate("more than one spiffe:// URI SAN".into())),
    }
}

/// Seconds since the Unix epoch at which the certificate expires.
pub fn not_after_unix(cert: &CertificateDer<'_>) -> Result<i64, Error> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| Error::Certificate(format!("X.509: {e}")))?;
    Ok(x509.validity().not_after.timestamp())
}

/// Seconds since the Unix epoch from which the certificate is valid.
pub fn not_before_unix(cert: &CertificateDer<'_>) -> Result<i64, Error> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| Error::Certificate(format!("X.509: {e}")))?;
    Ok(x509.validity().not_before.timestamp())
}
