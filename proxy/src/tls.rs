//! TLS termination: certificates from `kubernetes.io/tls` Secrets, chosen by SNI.
//!
//! Each HTTPS listener gets its rustls `ServerConfig`s when it is bound (two:
//! the same but for the cipher suite order, see [`ServerTls`]); their
//! certificate resolver reads the listener's [`CertStore`] from the current
//! snapshot on every handshake, so renewed certificates apply without a restart.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, ServerConfig};

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

/// The rustls configs of an HTTPS listener: ALPN h2 and http/1.1, TLS 1.2+ (or
/// 1.3 only), certificates from [`SniResolver`]; two cipher suite orders,
/// chosen per client by [`ServerTls::for_client`].
pub struct ServerTls {
    aes128_first: Arc<ServerConfig>,
    chacha_first: Arc<ServerConfig>,
}

impl ServerTls {
    pub fn new(state: Arc<State>, listener: &str, tls13_only: bool) -> Result<Self, Error> {
        let resolver: Arc<SniResolver> = Arc::new(SniResolver {
            state,
            listener: listener.to_string(),
        });
        let config = |chacha: bool| {
            let provider = ordered((*crate::crypto_provider()).clone(), chacha);
            server_config(provider, resolver.clone(), tls13_only)
        };
        Ok(ServerTls {
            aes128_first: config(false)?,
            chacha_first: config(true)?,
        })
    }

    /// The config for a client offering `suites` (in its order): ChaCha20-Poly1305
    /// first when it is the client's first AEAD, else AES-128-GCM.
    pub fn for_client(&self, suites: &[CipherSuite]) -> Arc<ServerConfig> {
        if prefers_chacha(suites) {
            self.chacha_first.clone()
        } else {
            self.aes128_first.clone()
        }
    }
}

fn server_config(
    provider: rustls::crypto::CryptoProvider,
    resolver: Arc<SniResolver>,
    tls13_only: bool,
) -> Result<Arc<ServerConfig>, Error> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our suite order, not the client's: see `suite_rank`.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The server's cipher suite preference, as Go's crypto/tls has it (Caddy,
/// Traefik): AES-128-GCM, then ChaCha20-Poly1305, then AES-256-GCM; ChaCha20
/// first for a client whose first AEAD is ChaCha20 (`chacha`). AES-128 is the
/// 128-bit security level of the P-256 and X25519 key exchange; AES-256 suites
/// also use SHA-384 for the key schedule, which CPUs do not accelerate (10 % of
/// a full handshake's CPU in `perf` with OpenSSL clients, which list AES-256
/// first). Ties keep the provider's order.
fn suite_rank(suite: CipherSuite, chacha: bool) -> u8 {
    match (suite_family(suite), chacha) {
        (Family::Aes128, false) | (Family::Chacha, true) => 0,
        (Family::Aes128, true) | (Family::Chacha, false) => 1,
        (Family::Aes256, _) => 2,
        (Family::Other, _) => 3,
    }
}

#[derive(Debug, PartialEq)]
enum Family {
    Aes128,
    Aes256,
    Chacha,
    Other,
}

fn suite_family(suite: CipherSuite) -> Family {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Family::Aes128,
        CipherSuite::TLS13_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Family::Aes256,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Family::Chacha,
        _ => Family::Other,
    }
}

/// Is the client's first AEAD ChaCha20-Poly1305 (not AES-GCM)? Clients
/// without AES hardware list it first, and AES in software is slow and hard to
/// make constant-time.
fn prefers_chacha(suites: &[CipherSuite]) -> bool {
    suites
        .iter()
        .find_map(|&suite| match suite_family(suite) {
            Family::Chacha => Some(true),
            Family::Aes128 | Family::Aes256 => Some(false),
            Family::Other => None,
        })
        .unwrap_or(false)
}

/// `provider` with its cipher suites in our order (see [`suite_rank`]).
fn ordered(
    mut provider: rustls::crypto::CryptoProvider,
    chacha: bool,
) -> rustls::crypto::CryptoProvider {
    provider
        .cipher_suites
        .sort_by_key(|suite| suite_rank(suite.suite(), chacha));
    provider
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

    #[test]
    fn suite_order_prefers_aes128_then_chacha_then_aes256() {
        use CipherSuite as S;
        let names = |chacha| -> Vec<S> {
            ordered(rustls::crypto::aws_lc_rs::default_provider(), chacha)
                .cipher_suites
                .iter()
                .map(|s| s.suite())
                .filter(|s| {
                    matches!(
                        s,
                        S::TLS13_AES_128_GCM_SHA256
                            | S::TLS13_AES_256_GCM_SHA384
                            | S::TLS13_CHACHA20_POLY1305_SHA256
                    )
                })
                .collect()
        };
        assert_eq!(
            names(false),
            [
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS13_CHACHA20_POLY1305_SHA256,
                S::TLS13_AES_256_GCM_SHA384
            ]
        );
        assert_eq!(
            names(true),
            [
                S::TLS13_CHACHA20_POLY1305_SHA256,
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS13_AES_256_GCM_SHA384
            ]
        );
        // Nothing is dropped, and TLS 1.2 suites follow the same order.
        let provider = ordered(rustls::crypto::aws_lc_rs::default_provider(), false);
        assert_eq!(
            provider.cipher_suites.len(),
            rustls::crypto::aws_lc_rs::default_provider()
                .cipher_suites
                .len()
        );
        let tls12: Vec<S> = provider
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .filter(|s| {
                matches!(
                    s,
                    S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                        | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                        | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                )
            })
            .collect();
        assert_eq!(
            tls12,
            [
                S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            ]
        );
    }

    #[test]
    fn chacha_first_only_for_clients_whose_first_aead_is_chacha() {
        use CipherSuite as S;
        // OpenSSL's default TLS 1.3 order: AES-256 first.
        assert!(!prefers_chacha(&[
            S::TLS13_AES_256_GCM_SHA384,
            S::TLS13_CHACHA20_POLY1305_SHA256,
            S::TLS13_AES_128_GCM_SHA256
        ]));
        // A client without AES hardware (BoringSSL, Go).
        assert!(prefers_chacha(&[
            S::TLS13_CHACHA20_POLY1305_SHA256,
            S::TLS13_AES_128_GCM_SHA256,
            S::TLS13_AES_256_GCM_SHA384
        ]));
        // Unknown and other suites before it do not count.
        assert!(prefers_chacha(&[
            S::Unknown(0x0a0a),
            S::TLS_EMPTY_RENEGOTIATION_INFO_SCSV,
            S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        ]));
        assert!(!prefers_chacha(&[]));
    }

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
