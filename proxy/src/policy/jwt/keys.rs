//! JSON Web Key Sets: which keys the proxy uses, and which algorithm each accepts.

use std::fmt;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

/// The largest JWKS document accepted, fetched or configured.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The algorithms a token may be signed with. There is no `none` and no HMAC:
/// the proxy only ever holds public keys, so a symmetric algorithm can only be
/// an attack (RS/HS confusion: the RSA public key used as an HMAC secret).
pub(crate) fn allowed_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The kinds of public key that can verify one of the allowed algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    /// Whether a key of this type may verify `alg`. The curve fixes the hash
    /// for ECDSA, so a P-256 key verifies ES256 only.
    pub(crate) fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyType::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::P256 => alg == ES256,
            KeyType::P384 => alg == ES384,
            KeyType::Ed25519 => alg == EdDSA,
        }
    }
}

/// One usable public key of a JWKS.
pub(crate) struct VerifyingKey {
    pub(crate) kid: Option<String>,
    pub(crate) key_type: KeyType,
    /// The JWK's own `alg`, when it pins one: then only that algorithm.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl VerifyingKey {
    /// Whether this key may verify a token signed with `alg` (the token's
    /// header). This is what stops algorithm confusion: the algorithm must fit
    /// the key's type and the key's own `alg`, whatever the token claims.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.key_type.accepts(alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// A key of a JWKS, or `None` when the proxy does not use it: symmetric
    /// (`kty: oct`) keys, encryption keys, unsupported types or curves, an
    /// `alg` that is not allowed or does not fit the key, bad encodings.
    fn from_json(raw: Value) -> Option<VerifyingKey> {
        #[derive(Deserialize)]
        struct Common {
            kid: Option<String>,
            alg: Option<String>,
            #[serde(rename = "use")]
            key_use: Option<String>,
        }
        let common = Common::deserialize(&raw).ok()?;
        if common.key_use.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let jwk: Jwk = serde_json::from_value(raw).ok()?;
        let key_type = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyType::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyType::P256,
                EllipticCurve::P384 => KeyType::P384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                KeyType::Ed25519
            }
            // `oct` keys are HMAC secrets: refused (see `allowed_algorithm`).
            _ => return None,
        };
        let alg = match common.alg.as_deref() {
            None => None,
            Some(name) => {
                let alg = allowed_algorithm(name)?;
                if !key_type.accepts(alg) {
                    return None;
                }
                Some(alg)
            }
        };
        let key = DecodingKey::from_jwk(&jwk).ok()?;
        Some(VerifyingKey {
            kid: common.kid,
            key_type,
            alg,
            key,
        })
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("type", &self.key_type)
            .field("alg", &self.alg)
            .finish()
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<VerifyingKey>,
}

impl KeySet {
    /// Parses a JWKS (`{"keys": [...]}`). Keys the proxy cannot use are
    /// skipped, so one odd key does not take the whole set down; a set with no
    /// usable key at all is an error (most likely a wrong document).
    pub(crate) fn parse(doc: &[u8]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        if doc.len() > MAX_JWKS_BYTES {
            return Err(format!("JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let document: Document =
            serde_json::from_slice(doc).map_err(|e| format!("JWKS is not valid: {e}"))?;
        let total = document.keys.len();
        let keys: Vec<VerifyingKey> = document
            .keys
            .into_iter()
            .filter_map(VerifyingKey::from_json)
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "JWKS has no usable signing key among its {total} (RSA, EC P-256/P-384 and Ed25519 public keys are used)"
            ));
        }
        Ok(KeySet { keys })
    }

    /// Whether a key has this `kid`.
    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys a token may name: those with its `kid`, or every key when the
    /// token has none (the caller still checks each key's algorithm).
    pub(crate) fn named<'a>(
        &'a self,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a VerifyingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // A P-256 public key (RFC 7515 appendix A.3) and an RSA one (appendix A.2).
    fn ec() -> Value {
        json!({"kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
    }

    fn rsa() -> Value {
        json!({"kty": "RSA", "e": "AQAB",
            "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"})
    }

    fn with(mut key: Value, extra: Value) -> Value {
        for (k, v) in extra.as_object().unwrap() {
            key[k] = v.clone();
        }
        key
    }

    fn parse(keys: Vec<Value>) -> Result<KeySet, String> {
        KeySet::parse(&serde_json::to_vec(&json!({ "keys": keys })).unwrap())
    }

    #[test]
    fn key_types_accept_only_their_algorithms() {
        use Algorithm::*;
        for alg in [RS256, RS384, RS512, PS256, PS384, PS512] {
            assert!(KeyType::Rsa.accepts(alg));
            assert!(!KeyType::P256.accepts(alg));
        }
        assert!(KeyType::P256.accepts(ES256) && !KeyType::P256.accepts(ES384));
        assert!(KeyType::P384.accepts(ES384) && !KeyType::P384.accepts(ES256));
        assert!(KeyType::Ed25519.accepts(EdDSA) && !KeyType::Ed25519.accepts(RS256));
        for t in [KeyType::Rsa, KeyType::P256, KeyType::P384, KeyType::Ed25519] {
            for hs in [HS256, HS384, HS512] {
                assert!(!t.accepts(hs));
            }
        }
        for (name, ok) in [
            ("RS256", true),
            ("EdDSA", true),
            ("HS256", false),
            ("none", false),
        ] {
            assert_eq!(allowed_algorithm(name).is_some(), ok, "{name}");
        }
    }

    #[test]
    fn a_jwk_alg_pins_the_algorithm() {
        let set = parse(vec![
            with(rsa(), json!({"kid": "any"})),
            with(rsa(), json!({"kid": "ps", "alg": "PS256"})),
        ])
        .unwrap();
        let any = set.named(Some("any")).next().unwrap();
        assert!(any.accepts(Algorithm::RS256) && any.accepts(Algorithm::PS512));
        let ps = set.named(Some("ps")).next().unwrap();
        assert!(ps.accepts(Algorithm::PS256));
        assert!(!ps.accepts(Algorithm::RS256));
        assert_eq!(set.named(None).count(), 2);
        assert!(set.has_kid("ps") && !set.has_kid("nope"));
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let set = parse(vec![
            json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}),
            with(rsa(), json!({"kid": "hs", "alg": "HS256"})),
            with(rsa(), json!({"kid": "es", "alg": "ES256"})),
            with(rsa(), json!({"kid": "enc", "use": "enc"})),
            with(ec(), json!({"kid": "p521", "crv": "P-521"})),
            json!({"kty": "RSA", "kid": "broken"}),
            json!({"kty": "weird", "kid": "weird"}),
            with(ec(), json!({"kid": "ok", "use": "sig", "alg": "ES256"})),
        ])
        .unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("ok")]);
        assert_eq!(set.keys[0].key_type, KeyType::P256);
    }

    #[test]
    fn bad_documents() {
        assert!(parse(vec![]).is_err());
        assert!(parse(vec![json!({"kty": "oct", "k": "c2VjcmV0"})]).is_err());
        assert!(KeySet::parse(b"not json").is_err());
        assert!(KeySet::parse(b"{\"keys\": {}}").is_err());
        let mut huge = br#"{"keys": [], "pad": ""#.to_vec();
        huge.resize(MAX_JWKS_BYTES + 1, b'a');
        assert!(KeySet::parse(&huge).unwrap_err().contains("larger"));
    }
}
