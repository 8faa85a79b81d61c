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
