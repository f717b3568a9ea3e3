//! TLS termination: certificates from `kubernetes.io/tls` Secrets, chosen by SNI.
//!
//! Each HTTPS listener gets one rustls `ServerConfig` when it is bound; its
//! certificate resolver reads the listener's [`CertStore`] from the current
//! snapshot on every handshake, so renewed certificates apply without a restart.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::state::State;
use crate::Error;

/// One certificate as shown in `/config` (never key material).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CertSummary {
    pub secret: String,
    pub names: Vec<String>,
    /// End of validity of the leaf certificate (Unix seconds); 0 if unreadable.
    #[serde(rename = "notAfter")]
    pub not_after: i64,
}

/// The certificates of one listener, by the DNS names they are valid for.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// The first certificate: used when SNI is absent or matches no name.
    default: Option<Arc<CertifiedKey>>,
    pub summary: Vec<CertSummary>,
}

impl CertStore {
    /// Adds a certificate; a name already taken by an earlier certificate keeps it.
    pub fn add(&mut self, secret: String, key: Arc<CertifiedKey>, names: Vec<String>) {
        for name in &names {
            let map = match name.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_string()),
                None => self.exact.entry(name.clone()),
            };
            map.or_insert_with(|| key.clone());
        }
        let not_after = key.cert.first().map_or(0, not_after);
        self.default.get_or_insert(key);
        self.summary.push(CertSummary {
            secret,
            names,
            not_after,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none()
    }

    /// The certificate for a TLS server name: exact name, then a wildcard covering
    /// its first label (TLS wildcards span one label), then the default.
    pub fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let lower;
            let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = name.to_ascii_lowercase();
                lower.as_str()
            } else {
                name
            };
            if let Some(key) = self.exact.get(name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = self.wildcard.get(parent) {
                    return Some(key.clone());
                }
            }
        }
        self.default.clone()
    }
}

/// Reads `tls.crt` and `tls.key` of a Secret (`stringData` wins over `data`, as the
/// API server would merge them) into a signing key and the certificate's DNS names.
pub fn load_secret(secret: &Secret) -> Result<(Arc<CertifiedKey>, Vec<String>), String> {
    let field = |name: &str| -> Option<Vec<u8>> {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(name))
                    .map(|b| b.0.clone())
            })
    };
    let cert_pem = field("tls.crt").ok_or("has no tls.crt")?;
    let key_pem = field("tls.key").ok_or("has no tls.key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".to_string());
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("tls.key: {e}"))?;
    let names = dns_names(&chain[0])?;
    let certified = CertifiedKey::from_der(chain, key, &crate::crypto_provider())
        .map_err(|e| format!("tls.crt/tls.key: {e}"))?;
    Ok((Arc::new(certified), names))
}

/// The end of a certificate's validity (Unix seconds); 0 if it does not parse.
pub fn not_after(cert: &CertificateDer<'_>) -> i64 {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0)
}

/// The DNS names of a certificate's subjectAltName extension, lower case.
pub fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("tls.crt is not a valid X.509 certificate: {e}"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| format!("tls.crt: {e}"))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Picks the certificate of one listener from the current snapshot.
#[derive(Debug)]
pub struct SniResolver {
    state: Arc<State>,
    listener: String,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.state.snapshot.load();
        let store = snapshot.listener(&self.listener)?.tls.as_ref()?;
        store.certs.resolve(hello.server_name())
    }
}

/// The rustls config of an HTTPS listener: ALPN h2 and http/1.1, TLS 1.2+ (or 1.3
/// only), certificates from [`SniResolver`].
pub fn server_config(
    state: Arc<State>,
    listener: &str,
    tls13_only: bool,
) -> Result<Arc<ServerConfig>, Error> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = ServerConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(versions)
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            state,
            listener: listener.to_string(),
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM file (a CA bundle).
pub fn read_pem_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("reading {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> (Arc<CertifiedKey>, Vec<String>) {
        let generated = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let secret = Secret {
            string_data: Some(
                [
                    ("tls.crt".to_string(), generated.cert.pem()),
                    ("tls.key".to_string(), generated.signing_key.serialize_pem()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        load_secret(&secret).unwrap()
    }

    #[test]
    fn sni_prefers_exact_then_wildcard_then_default() {
        let (first, first_names) = cert(&["first.example"]);
        let (wild, wild_names) = cert(&["*.example.com"]);
        let (exact, exact_names) = cert(&["api.example.com"]);
        assert_eq!(wild_names, vec!["*.example.com"]);
        let mut store = CertStore::default();
        store.add("ns/first".into(), first.clone(), first_names);
        store.add("ns/wild".into(), wild.clone(), wild_names);
        store.add("ns/exact".into(), exact.clone(), exact_names);
        let is = |a: Option<Arc<CertifiedKey>>, b: &Arc<CertifiedKey>| Arc::ptr_eq(&a.unwrap(), b);
        assert!(is(store.resolve(Some("api.example.com")), &exact));
        assert!(is(store.resolve(Some("API.example.com")), &exact));
        assert!(is(store.resolve(Some("www.example.com")), &wild));
        // TLS wildcards cover one label only.
        assert!(is(store.resolve(Some("a.b.example.com")), &first));
        assert!(is(store.resolve(None), &first));
    }

    #[test]
    fn secret_errors_are_reported() {
        let empty = Secret::default();
        assert_eq!(load_secret(&empty).unwrap_err(), "has no tls.crt");
        let garbage = Secret {
            string_data: Some(
                [
                    ("tls.crt".to_string(), "nope".to_string()),
                    ("tls.key".to_string(), "nope".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        assert!(load_secret(&garbage).is_err());
    }
}
