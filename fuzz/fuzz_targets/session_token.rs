//! `Verifier::verify_at` over arbitrary and structured session tokens, against two fixed,
//! networkless key stores: a JWKS (parsed with `parse_jwks`: an EC P-256 key and an RSA key,
//! public halves only) and a PEM store (the EC key's public half).
//!
//! The EC signing key is derived inside the target from a fixed seed (SHA-256 of a label), so
//! nothing secret is checked in and runs are reproducible. No network: the stores never fetch.
//!
//! Input: byte 0 = flags, byte 1 = clock knob (`now` = 1_700_000_000 − 3600 + 60·knob), rest:
//! - mode 0: the rest is the token, as is;
//! - mode 1: a fixed good header (one of six) + the rest as the payload JSON, signed;
//! - mode 2: the rest as the header JSON + a fixed good payload, signed;
//! - mode 3: header JSON and payload JSON separated by 0xFF, signed.
//! Flag bit 2 corrupts the signature; bit 3 picks the PEM store (which accepts pending
//! sessions) instead of the JWKS (which does not).
//!
//! Checked: no panic, no hang; never `keys_unavailable`; a PEM store never says `unknown_key`;
//! a corrupted signature never verifies; a verified session agrees with the token's claims
//! (sub, exp, nbf, iat, iss byte for byte, azp, alg) and is a Clerk session (no `crit`; `typ`
//! absent or `JWT`; `cat` absent, session or ignore; a non-empty string `sid`; no `mch_`
//! subject; `sts` absent, `active`, or `pending` where allowed); verifying twice agrees (the
//! cache path and the full path); after `exp` + leeway both the cached and the uncached answer
//! are `token_expired`.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use stream_token_proxy::testing::parse_jwks;
use stream_token_proxy::testing::{AuthError, KeyStore, Verifier};
use stream_token_proxy::config::{AllowedAlgorithm, AuthConfig};
use stream_token_proxy::testing::Metrics;

const ISSUER: &str = "https://clerk.fuzz.invalid";
const PARTY: &str = "https://app.example.com";
const LEEWAY: u64 = 5;
const BASE_NOW: u64 = 1_700_000_000 - 3600;

/// RSA public key (modulus from RFC 7517 appendix A.1), for the RS256 / kid-mismatch paths.
const RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    signer: EcdsaKeyPair,
    rng: SystemRandom,
    jwks: Arc<KeyStore>,
    pem: Arc<KeyStore>,
    jwks_config: AuthConfig,
    pem_config: AuthConfig,
}

/// PKCS#8 for a P-256 private key without its public point (aws-lc derives it).
fn p256_pkcs8(scalar: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x41, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
        0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x27, 0x30, 0x25,
        0x02, 0x01, 0x01, 0x04, 0x20,
    ];
    der.extend_from_slice(scalar);
    der
}

/// SubjectPublicKeyInfo PEM for an uncompressed P-256 point.
fn p256_public_pem(point: &[u8]) -> String {
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    der.extend_from_slice(point);
    let b64 = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

fn config(algorithms: &[Algorithm], parties: &[&str], accept_pending: bool) -> AuthConfig {
    AuthConfig {
        issuer: Some(ISSUER.to_owned()),
        algorithms: algorithms.iter().map(|a| AllowedAlgorithm(*a)).collect(),
        authorized_parties: parties.iter().map(|p| p.to_string()).collect(),
        leeway: Duration::from_secs(LEEWAY),
        verified_cache_size: 16,
        accept_pending_sessions: accept_pending,
        ..AuthConfig::default()
    }
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let seed = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        b"stream-token-proxy fuzzing: ES256 test key (not a secret)",
    );
    let scalar: [u8; 32] = seed.as_ref().try_into().unwrap();
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &p256_pkcs8(&scalar)).unwrap();
    let point = signer.public_key().as_ref().to_vec();
    assert_eq!(point.len(), 65);
    let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
    let y = URL_SAFE_NO_PAD.encode(&point[33..]);
    let jwks = format!(
        r#"{{"keys":[
            {{"kty":"EC","crv":"P-256","kid":"fuzz-ec","alg":"ES256","use":"sig","x":"{x}","y":"{y}"}},
            {{"kty":"RSA","kid":"fuzz-rsa","alg":"RS256","use":"sig","n":"{RSA_N}","e":"AQAB"}}
        ]}}"#
    );
    let metrics = Arc::new(Metrics::new());
    let set = parse_jwks(jwks.as_bytes()).unwrap();
    assert_eq!(set.len(), 2);
    let pem = KeyStore::from_pem(p256_public_pem(&point).as_bytes(), metrics.clone()).unwrap();
    Fixture {
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap(),
        signer,
        rng: SystemRandom::new(),
        jwks: Arc::new(KeyStore::from_key_set(set, metrics)),
        pem: Arc::new(pem),
        jwks_config: config(
            &[Algorithm::RS256, Algorithm::ES256, Algorithm::PS256],
            &[PARTY],
            false,
        ),
        pem_config: config(&[Algorithm::ES256, Algorithm::RS256], &[], true),
    }
});

const GOOD_HEADERS: [&str; 6] = [
    r#"{"alg":"ES256","kid":"fuzz-ec","typ":"JWT"}"#,
    r#"{"alg":"ES256","typ":"JWT"}"#,
    r#"{"alg":"ES256","kid":"fuzz-rsa"}"#,
    r#"{"alg":"RS256","kid":"fuzz-ec"}"#,
    r#"{"alg":"ES256","cat":"cl_B7d4PD111AAA","kid":"fuzz-ec","typ":"JWT"}"#,
    r#"{"alg":"ES256","cat":"cl_I7d4PD111III","kid":"fuzz-ec","typ":"jwt"}"#,
];
const GOOD_PAYLOAD: &str = r#"{"azp":"https://app.example.com","exp":1700003600,"iat":1700000000,"iss":"https://clerk.fuzz.invalid","nbf":1700000000,"sid":"sess_2abc","sts":"active","sub":"user_2abc","v":2}"#;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let fx = &*FIXTURE;
    let (flags, knob, rest) = (data[0], data[1], &data[2..]);
    let now = BASE_NOW + 60 * u64::from(knob);
    let use_pem = flags & 8 != 0;
    let corrupt = flags & 4 != 0;
    let signed = |header: &[u8], payload: &[u8]| -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut signature = fx
            .signer
            .sign(&fx.rng, message.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        if corrupt {
            signature[usize::from(knob) % 64] ^= 1 << (flags >> 5);
        }
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    };
    let token = match flags & 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => signed(
            GOOD_HEADERS[usize::from(flags >> 4) % GOOD_HEADERS.len()].as_bytes(),
            rest,
        ),
        2 => signed(rest, GOOD_PAYLOAD.as_bytes()),
        _ => {
            let at = rest.iter().position(|b| *b == 0xff).unwrap_or(rest.len());
            signed(&rest[..at], rest.get(at + 1..).unwrap_or_default())
        }
    };
    let tampered = corrupt && flags & 3 != 0;

    let (keys, config) = if use_pem {
        (&fx.pem, &fx.pem_config)
    } else {
        (&fx.jwks, &fx.jwks_config)
    };
    let verifier = Verifier::new(config, keys.clone());
    let first = fx.runtime.block_on(verifier.verify_at(&token, now));
    let second = fx.runtime.block_on(verifier.verify_at(&token, now));

    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!((&a.user_id, a.expires_at), (&b.user_id, b.expires_at));
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "the same token, twice, two answers"),
        _ => panic!("verify twice: {first:?} then {second:?}"),
    }
    match first {
        Err(AuthError::KeysUnavailable) => panic!("a static key store is never unavailable"),
        Err(AuthError::UnknownKey) if use_pem => panic!("a PEM key verifies any kid"),
        Err(e) => assert!(!e.code().is_empty()),
        Ok(session) => {
            assert!(!tampered, "a corrupted signature verified");
            check_session(&token, &session, config, now);
            // Later than exp + leeway: the cached answer and the full check both refuse it.
            let expiry = session.expires_at.saturating_add(LEEWAY);
            if expiry < u64::MAX {
                let late = fx.runtime.block_on(verifier.verify_at(&token, expiry + 1));
                assert_eq!(late.unwrap_err(), AuthError::Expired, "cached path");
                let late = fx.runtime.block_on(verifier.verify_at(&token, expiry + 1));
                assert_eq!(late.unwrap_err(), AuthError::Expired, "full path");
            }
        }
    }
});

/// The fields a verified token is checked on. Decoded with serde into named fields, not into a
/// `Value`: serde_json skips unknown fields without validating their strings (invalid UTF-8 or
/// a lone `\ud800` in, say, `sid`), so a token the issuer signed may hold such bytes.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Present,
    #[serde(default)]
    cat: Present,
    #[serde(default)]
    crit: Present,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    iss: Option<String>,
    azp: Option<String>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
    #[serde(default)]
    sid: Present,
    #[serde(default)]
    sts: Present,
}

/// A member as sent: `None` when absent, `Some(Value::Null)` for `null`.
#[derive(Default)]
struct Present(Option<Value>);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(|v| Present(Some(v)))
    }
}

impl Present {
    fn str(&self) -> Option<&str> {
        self.0.as_ref().and_then(Value::as_str)
    }
}

fn decode<T: DeserializeOwned>(part: &str) -> T {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .expect("a verified part is base64url");
    serde_json::from_slice(&bytes).expect("a verified part is JSON")
}

fn time(claim: &Option<Value>, name: &str) -> Option<u64> {
    let v = claim.as_ref()?;
    if v.is_null() {
        return None;
    }
    let f = v.as_f64().expect("a verified time claim is a number");
    assert!(f.is_finite() && f >= 0.0, "{name} = {f}");
    Some(f as u64)
}

fn check_session(
    token: &str,
    session: &stream_token_proxy::testing::Session,
    config: &AuthConfig,
    now: u64,
) {
    let mut parts = token.split('.');
    let header: Header = decode(parts.next().unwrap());
    let claims: Claims = decode(parts.next().unwrap());
    assert!(parts.next().is_some() && parts.next().is_none());

    let alg = header.alg.as_str();
    assert!(
        config
            .algorithms
            .iter()
            .any(|a| a.name() == alg),
        "alg {alg} is not allowed"
    );
    assert!(!matches!(alg, "none" | "HS256" | "HS384" | "HS512"));
    assert!(header.crit.0.is_none(), "a crit header verified");
    assert!(
        header.typ.0.is_none() || header.typ.str().is_some_and(|t| t.eq_ignore_ascii_case("JWT")),
        "typ {:?}",
        header.typ.0
    );
    assert!(
        header.cat.0.is_none()
            || matches!(header.cat.str(), Some("cl_B7d4PD111AAA" | "cl_I7d4PD111III")),
        "cat {:?}",
        header.cat.0
    );
    assert!(claims.sid.str().is_some_and(|s| !s.is_empty()), "sid {:?}", claims.sid.0);
    match claims.sts.0.as_ref().map(|v| v.as_str()) {
        None | Some(Some("active")) => {}
        Some(Some("pending")) => assert!(config.accept_pending_sessions, "a pending session"),
        other => panic!("sts {other:?}"),
    }

    let sub = claims.sub.as_deref().expect("sub is a string");
    assert_eq!(&*session.user_id, sub);
    assert!(!sub.starts_with("mch_"), "a machine subject");
    assert!((1..=255).contains(&sub.len()));
    assert!(
        sub.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'_' | b'-'))
    );

    let exp = time(&claims.exp, "exp").expect("exp is required");
    assert_eq!(session.expires_at, exp);
    assert!(now <= exp.saturating_add(LEEWAY), "expired: {exp} at {now}");
    for (name, claim) in [("nbf", &claims.nbf), ("iat", &claims.iat)] {
        if let Some(t) = time(claim, name) {
            assert!(t <= now + LEEWAY, "{name} {t} is in the future at {now}");
        }
    }
    let iss = claims.iss.as_deref().expect("iss is a string");
    assert_eq!(Some(iss), config.issuer.as_deref(), "iss byte for byte");
    if !config.authorized_parties.is_empty() {
        assert_eq!(claims.azp.as_deref(), Some(PARTY));
    }
}
