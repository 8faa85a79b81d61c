//! `parse_jwks` over arbitrary bytes, then the parsed keys in use: a networkless `KeyStore`
//! over the set verifies three fixed tokens (ES256 with `kid` "fuzz", signed by a key derived
//! from a fixed seed; RS256 with `kid` "fuzz" and a junk signature; PS256 without `kid`).
//!
//! Checked: no panic, no hang; a parsed set is never empty and holds at most one key per
//! distinct string `kid` of the document; verifying with whatever keys a JWKS carries never
//! panics, never says `keys_unavailable`, and only the ES256 token (signed by the derived
//! key) can ever verify.
#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;
use stream_token_proxy::testing::parse_jwks;
use stream_token_proxy::testing::{AuthError, KeyStore, Verifier};
use stream_token_proxy::config::{AllowedAlgorithm, AuthConfig};
use stream_token_proxy::testing::Metrics;

const NOW: u64 = 1_700_000_000;

#[derive(Deserialize)]
struct Doc {
    keys: Vec<Value>,
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    metrics: Arc<Metrics>,
    config: AuthConfig,
    es256: String,
    others: [String; 2],
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let seed = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        b"stream-token-proxy fuzzing: ES256 test key (not a secret)",
    );
    let mut pkcs8 = vec![
        0x30, 0x41, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
        0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x27, 0x30, 0x25,
        0x02, 0x01, 0x01, 0x04, 0x20,
    ];
    pkcs8.extend_from_slice(seed.as_ref());
    let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).unwrap();
    let payload = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"sub":"user_fuzz","sid":"sess_fuzz","iss":"https://clerk.fuzz.invalid","iat":{NOW},"exp":{}}}"#,
        NOW + 600
    ));
    let part = |header: &str| format!("{}.{payload}", URL_SAFE_NO_PAD.encode(header));
    let message = part(r#"{"alg":"ES256","kid":"fuzz"}"#);
    let signature = signer
        .sign(&SystemRandom::new(), message.as_bytes())
        .unwrap();
    let junk = URL_SAFE_NO_PAD.encode([0x5a; 256]);
    Fixture {
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap(),
        metrics: Arc::new(Metrics::new()),
        config: AuthConfig {
            issuer: Some("https://clerk.fuzz.invalid".into()),
            algorithms: [
                Algorithm::RS256,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::ES256,
                Algorithm::ES384,
            ]
            .into_iter()
            .map(AllowedAlgorithm)
            .collect(),
            verified_cache_size: 4,
            ..AuthConfig::default()
        },
        es256: format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)),
        others: [
            format!("{}.{junk}", part(r#"{"alg":"RS256","kid":"fuzz"}"#)),
            format!("{}.{junk}", part(r#"{"alg":"PS256"}"#)),
        ],
    }
});

fuzz_target!(|data: &[u8]| {
    let fx = &*FIXTURE;
    let Ok(set) = parse_jwks(data) else {
        return;
    };
    assert!(!set.is_empty());
    // Read back the way serde reads it (a struct also comes as a sequence, `[[key, ...]]`,
    // and unknown top-level fields are skipped unvalidated, so no `Value` of the whole).
    let doc: Doc = serde_json::from_slice(data).expect("a parsed JWKS is a JWKS");
    let kids: HashSet<&str> = doc
        .keys
        .iter()
        .filter_map(|k| k.get("kid")?.as_str())
        .collect();
    assert!(
        set.len() <= kids.len(),
        "{} keys from {} kids",
        set.len(),
        kids.len()
    );

    let store = Arc::new(KeyStore::from_key_set(set, fx.metrics.clone()));
    assert!(store.is_ready());
    let verifier = Verifier::new(&fx.config, store);
    match fx.runtime.block_on(verifier.verify_at(&fx.es256, NOW)) {
        Ok(session) => assert_eq!(&*session.user_id, "user_fuzz"),
        Err(e) => assert_ne!(e, AuthError::KeysUnavailable),
    }
    for token in &fx.others {
        match fx.runtime.block_on(verifier.verify_at(token, NOW)) {
            Ok(session) => panic!("a junk signature verified: {session:?}"),
            Err(e) => assert_ne!(e, AuthError::KeysUnavailable),
        }
    }
});
