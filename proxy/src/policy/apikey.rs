//! API keys from Secrets: each data key of a credential Secret names a consumer,
//! its value is that consumer's API key. The snapshot keeps only SHA-256 digests
//! of the keys (a `/config` dump or a core file shows no key), and a presented
//! key is found by its digest, then compared in constant time.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::digest;
use http::header::HeaderName;
use http::HeaderMap;
use subtle::ConstantTimeEq;

use super::SecretLookup;

type Digest = [u8; 32];

fn sha256(key: &[u8]) -> Digest {
    let d = digest::digest(&digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compiled `apiKey` authentication.
#[derive(Clone)]
pub struct ApiKeys {
    consumers: HashMap<Digest, Arc<str>>,
    headers: Vec<HeaderName>,
    params: Vec<String>,
    pub forward_header: Option<HeaderName>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("consumers", &self.consumers.len())
            .field("headers", &self.headers)
            .field("params", &self.params)
            .finish()
    }
}

/// The result of looking for an API key.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    Missing,
    Unknown,
    Consumer(Arc<str>),
}

impl ApiKeys {
    pub fn compile(
        spec: &meshgate_crds::policy::ApiKeyAuth,
        namespace: &str,
        secrets: &SecretLookup<'_>,
    ) -> Result<ApiKeys, String> {
        let mut consumers = HashMap::new();
        for r in &spec.credential_refs {
            let secret = secrets
                .get(r, namespace)
                .map_err(|e| format!("apiKey: {e}"))?;
            for (consumer, key) in SecretLookup::entries(secret) {
                let key = trim_newline(&key);
                if key.is_empty() {
                    continue;
                }
                if let Some(other) = consumers.insert(sha256(key), Arc::from(consumer.as_str())) {
                    return Err(format!(
                        "apiKey: consumers {other} and {consumer} have the same key"
                    ));
                }
            }
        }
        if consumers.is_empty() {
            return Err("apiKey: the credential Secrets hold no keys".into());
        }
        let mut headers = Vec::new();
        let mut params = Vec::new();
        for e in &spec.extract_from {
            for h in &e.headers {
                headers.push(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("apiKey: invalid header name {h:?}"))?,
                );
            }
            params.extend(e.params.iter().cloned());
        }
        let forward_header = spec
            .forward_client_id_header
            .as_deref()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("apiKey: invalid forwardClientIDHeader {h:?}"))
            })
            .transpose()?;
        Ok(ApiKeys {
            consumers,
            headers,
            params,
            forward_header,
        })
    }

    /// The consumer whose key the request carries (headers first, then query).
    pub fn identify(&self, headers: &HeaderMap, query: Option<&str>) -> KeyOutcome {
        let from_header = self
            .headers
            .iter()
            .find_map(|h| headers.get(h))
            .map(|v| std::borrow::Cow::Borrowed(v.as_bytes()));
        let presented = from_header.or_else(|| {
            let query = query?;
            self.params.iter().find_map(|p| query_param(query, p))
        });
        let Some(presented) = presented else {
            return KeyOutcome::Missing;
        };
        let digest = sha256(&presented);
        match self.consumers.get_key_value(&digest) {
            Some((stored, consumer)) if bool::from(stored.ct_eq(&digest)) => {
                KeyOutcome::Consumer(consumer.clone())
            }
            _ => KeyOutcome::Unknown,
        }
    }
}

/// Secret values written by `echo` end with a newline; nobody means it as part of the key.
fn trim_newline(key: &[u8]) -> &[u8] {
    let key = key.strip_suffix(b"\n").unwrap_or(key);
    key.strip_suffix(b"\r").unwrap_or(key)
}

/// The percent-decoded value of query parameter `name`, if present and non-empty.
fn query_param<'q>(query: &'q str, name: &str) -> Option<std::borrow::Cow<'q, [u8]>> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
        .filter(|v| !v.is_empty())
}

fn percent_decode(s: &str) -> std::borrow::Cow<'_, [u8]> {
    if !s.contains(['%', '+']) {
        return std::borrow::Cow::Borrowed(s.as_bytes());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use meshgate_crds::policy::{ApiKeyAuth, ApiKeyExtractor};
    use std::collections::BTreeMap;

    fn keys() -> ApiKeys {
        let mut secret = Secret::default();
        secret.metadata.name = Some("keys".into());
        secret.metadata.namespace = Some("ns".into());
        secret.string_data = Some(BTreeMap::from([
            ("alice".to_string(), "k-alice\n".to_string()),
            ("bob".to_string(), "k bob".to_string()),
        ]));
        let secrets = [secret];
        ApiKeys::compile(
            &ApiKeyAuth {
                credential_refs: vec![meshgate_crds::SecretObjectReference {
                    group: None,
                    kind: None,
                    name: "keys".into(),
                    namespace: None,
                }],
                extract_from: vec![ApiKeyExtractor {
                    headers: vec!["x-api-key".into()],
                    params: vec!["api_key".into()],
                }],
                forward_client_id_header: Some("x-consumer".into()),
            },
            "ns",
            &SecretLookup::from_slice(&secrets),
        )
        .unwrap()
    }

    #[test]
    fn keys_from_header_and_query() {
        let k = keys();
        let mut h = HeaderMap::new();
        assert_eq!(k.identify(&h, None), KeyOutcome::Missing);
        assert_eq!(k.identify(&h, Some("a=1&api_key=")), KeyOutcome::Missing);
        h.insert("x-api-key", "k-alice".parse().unwrap());
        assert_eq!(k.identify(&h, None), KeyOutcome::Consumer("alice".into()));
        h.insert("x-api-key", "k-alicE".parse().unwrap());
        assert_eq!(k.identify(&h, None), KeyOutcome::Unknown);
        let h = HeaderMap::new();
        assert_eq!(
            k.identify(&h, Some("a=1&api_key=k%20bob")),
            KeyOutcome::Consumer("bob".into())
        );
        assert_eq!(
            k.identify(&h, Some("api_key=k+bob")),
            KeyOutcome::Consumer("bob".into())
        );
        assert_eq!(k.identify(&h, Some("api_key=%zz")), KeyOutcome::Unknown);
    }

    #[test]
    fn debug_shows_no_key_material() {
        let shown = format!("{:?}", keys());
        assert!(
            !shown.contains("k-alice") && shown.contains("consumers: 2"),
            "{shown}"
        );
    }
}
