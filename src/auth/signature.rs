//! Public keys parsed once, when a key set is loaded, and the signature check made with them.
//!
//! `jsonwebtoken::crypto::verify` with a JWK's `DecodingKey` rebuilds the aws-lc RSA key from
//! `n` and `e` on every call (and the Montgomery context aws-lc caches inside that key, so it
//! is computed again each time), clones the key and boxes a verifier. Here each key is parsed
//! once per algorithm it can serve; a verification is the signature operation itself.
//! `jsonwebtoken` still reads the JWK and PEM forms, so what counts as a usable key is
//! unchanged.

use aws_lc_rs::signature::{
    self as sig, EcdsaVerificationAlgorithm, ParsedPublicKey, RsaParameters,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

/// The largest signature accepted: RSA-8192 (the largest key aws-lc verifies), 1,024 bytes.
const MAX_SIGNATURE_LEN: usize = 8192 / 8;

/// aws-lc's verification parameters for an algorithm.
#[derive(Clone, Copy)]
enum Params {
    Rsa(&'static RsaParameters),
    Ec(&'static EcdsaVerificationAlgorithm),
}

/// Every asymmetric algorithm a session token may name, with the same aws-lc parameters
/// `jsonwebtoken`'s aws-lc backend uses: RSA keys of 2048-8192 bits; ECDSA signatures in the
/// JOSE fixed-length form (RFC 7518 §3.4).
const ALGORITHMS: [(Algorithm, Params); 8] = [
    (
        Algorithm::RS256,
        Params::Rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
    ),
    (
        Algorithm::RS384,
        Params::Rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
    ),
    (
        Algorithm::RS512,
        Params::Rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
    ),
    (
        Algorithm::PS256,
        Params::Rsa(&sig::RSA_PSS_2048_8192_SHA256),
    ),
    (
        Algorithm::PS384,
        Params::Rsa(&sig::RSA_PSS_2048_8192_SHA384),
    ),
    (
        Algorithm::PS512,
        Params::Rsa(&sig::RSA_PSS_2048_8192_SHA512),
    ),
    (Algorithm::ES256, Params::Ec(&sig::ECDSA_P256_SHA256_FIXED)),
    (Algorithm::ES384, Params::Ec(&sig::ECDSA_P384_SHA384_FIXED)),
];

/// One public key, parsed for each algorithm it can verify (an RSA key for the six RSA
/// algorithms, an EC key for the one of its curve).
pub(crate) struct PublicKey {
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
}

impl PublicKey {
    /// A JWK's key; `None` for a key no accepted algorithm can use (HMAC secrets, EdDSA).
    pub(crate) fn from_jwk(jwk: &Jwk) -> Option<Self> {
        Self::from_decoding_key(&DecodingKey::from_jwk(jwk).ok()?)
    }

    /// A PEM public key, RSA or EC.
    pub(crate) fn from_pem(pem: &[u8]) -> Option<Self> {
        let key = DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .ok()?;
        Self::from_decoding_key(&key)
    }

    fn from_decoding_key(key: &DecodingKey) -> Option<Self> {
        let parsed: Vec<_> = ALGORITHMS
            .iter()
            .filter(|(alg, _)| alg.family() == key.family())
            .filter_map(|&(alg, params)| Some((alg, parse(key, params)?)))
            .collect();
        (!parsed.is_empty()).then_some(Self { parsed })
    }

    /// Whether `signature_b64` (base64url, the token's third part) is this key's `alg`
    /// signature over `message`.
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], signature_b64: &str) -> bool {
        let Some((_, key)) = self.parsed.iter().find(|(a, _)| *a == alg) else {
            return false;
        };
        let mut signature = [0u8; MAX_SIGNATURE_LEN];
        // `decode_slice` refuses a signature too long for the buffer; it never writes past it.
        let Ok(len) = URL_SAFE_NO_PAD.decode_slice(signature_b64, &mut signature) else {
            return false;
        };
        key.verify_sig(message, &signature[..len]).is_ok()
    }
}

/// `key` parsed for one algorithm; `None` if it cannot serve it (an EC key of another curve).
fn parse(key: &DecodingKey, params: Params) -> Option<ParsedPublicKey> {
    match (key.kind(), params) {
        (DecodingKeyKind::RsaModulusExponent { n, e }, Params::Rsa(rsa)) => {
            sig::RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(rsa)
                .ok()
        }
        (DecodingKeyKind::SecretOrDer(der), Params::Rsa(rsa)) => {
            ParsedPublicKey::new(rsa, der).ok()
        }
        (DecodingKeyKind::SecretOrDer(der), Params::Ec(ec)) => ParsedPublicKey::new(ec, der).ok(),
        (DecodingKeyKind::RsaModulusExponent { .. }, Params::Ec(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    /// A P-256 key pair and its public key as a JWK.
    fn p256() -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "k",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }))
        .unwrap();
        (pair, jwk)
    }

    #[test]
    fn a_key_verifies_only_for_the_algorithms_it_can_serve() {
        let (pair, jwk) = p256();
        let key = PublicKey::from_jwk(&jwk).expect("an EC key parses");
        let message = b"header.payload";
        let signature = pair.sign(&SystemRandom::new(), message).unwrap();
        let signature = URL_SAFE_NO_PAD.encode(signature.as_ref());
        assert!(key.verify(Algorithm::ES256, message, &signature));
        assert!(!key.verify(Algorithm::ES256, b"header.other", &signature));
        // A P-256 key serves ES256 only: not another curve's algorithm, not RSA.
        assert!(!key.verify(Algorithm::ES384, message, &signature));
        assert!(!key.verify(Algorithm::RS256, message, &signature));
    }

    #[test]
    fn bad_signatures_are_refused_without_a_panic() {
        let (_, jwk) = p256();
        let key = PublicKey::from_jwk(&jwk).unwrap();
        let too_long = "A".repeat(4 * MAX_SIGNATURE_LEN);
        for signature in ["", "!!!", "AAAA=", too_long.as_str()] {
            assert!(
                !key.verify(Algorithm::ES256, b"m", signature),
                "{signature:.8}"
            );
        }
    }

    #[test]
    fn keys_no_accepted_algorithm_can_use_are_skipped() {
        let secret: Jwk =
            serde_json::from_value(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})).unwrap();
        assert!(PublicKey::from_jwk(&secret).is_none(), "an HMAC secret");
        assert!(PublicKey::from_pem(b"not a pem").is_none());
    }
}
