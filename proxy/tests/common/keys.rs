//! Signing keys for JWT tests: generated in-test with aws-lc-rs, each with its
//! public JWK, for jsonwebtoken to sign with.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// The public JWK.
    pub jwk: Value,
    /// DER of the public key (what an attacker would use as an HMAC secret).
    pub public_der: Vec<u8>,
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The RSAPrivateKey (PKCS#1) inside a PKCS#8 PrivateKeyInfo: jsonwebtoken's
/// aws-lc-rs signer takes PKCS#1.
pub fn pkcs1_of_pkcs8(der: &[u8]) -> Vec<u8> {
    // Tag, contents, rest of one DER element.
    fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let (len, header) = if input[1] < 0x80 {
            (input[1] as usize, 2)
        } else {
            let n = (input[1] & 0x7f) as usize;
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |l, b| (l << 8) | *b as usize);
            (len, 2 + n)
        };
        (
            input[0],
            &input[header..header + len],
            &input[header + len..],
        )
    }
    let (_, info, _) = tlv(der);
    let (_, _, rest) = tlv(info); // version
    let (_, _, rest) = tlv(rest); // algorithm
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04, "privateKey OCTET STRING");
    key.to_vec()
}

pub fn rsa_key(kid: &str) -> TestKey {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8: Pkcs8V1Der = pair.as_der().unwrap();
    let public = pair.public_key();
    let public_der: PublicKeyX509Der = public.as_der().unwrap();
    TestKey {
        kid: kid.to_string(),
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(&pkcs1_of_pkcs8(pkcs8.as_ref())),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero())}),
        public_der: public_der.as_ref().to_vec(),
    }
}

pub fn ec_key(kid: &str) -> TestKey {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = pair.public_key().as_ref();
    TestKey {
        kid: kid.to_string(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
        public_der: point.to_vec(),
    }
}

pub fn ed_key(kid: &str) -> TestKey {
    let pair = Ed25519KeyPair::generate().unwrap();
    let public = pair.public_key().as_ref().to_vec();
    TestKey {
        kid: kid.to_string(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(pair.to_pkcs8v1().unwrap().as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&public)}),
        public_der: public,
    }
}
