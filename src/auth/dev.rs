//! The dev profile's stand-in for a Clerk instance: an RSA signing key generated on first run,
//! and Clerk-shaped session tokens signed with it (`stream-token-proxy dev-token`).
//! Never used unless the configuration has `dev = true` and `auth.dev_signing_key`.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::{KeyStore, sha256, unix_now};
use crate::tls::write_private;

#[derive(Debug, thiserror::Error)]
pub enum DevKeyError {
    #[error("cannot generate the dev signing key {path}: {message}")]
    Generate { path: String, message: String },
    #[error("cannot use the dev signing key {path}: {message}")]
    Load { path: String, message: String },
}

/// The dev signing key: its private half signs dev tokens, its public half verifies them.
pub struct DevSigner {
    encoding: EncodingKey,
    public_pem: String,
    /// Derived from the public key, so it changes when the key does.
    pub kid: String,
}

impl std::fmt::Debug for DevSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Creates the RSA-2048 dev key at `path` if it does not exist. Returns `true` if it did.
pub fn ensure_dev_signing_key(path: &Path) -> Result<bool, DevKeyError> {
    if path.exists() {
        return Ok(false);
    }
    let fail = |message: String| DevKeyError::Generate {
        path: path.display().to_string(),
        message,
    };
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .map_err(|e| fail(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    match write_private(path, key.serialize_pem().as_bytes()) {
        Ok(()) => Ok(true),
        // Another process (the proxy and `dev-token` started together) published its key
        // first, whole: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(fail(e.to_string())),
    }
}

impl DevSigner {
    pub fn load(path: &Path) -> Result<Self, DevKeyError> {
        let fail = |message: String| DevKeyError::Load {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let pair =
            rcgen::KeyPair::from_pem(&pem).map_err(|_| fail("not a PEM private key".into()))?;
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|_| fail("not an RSA private key".into()))?;
        let public_pem = pair.public_key_pem();
        let digest = sha256(public_pem.as_bytes());
        let kid = format!("dev-{}", &hex(&digest)[..16]);
        Ok(Self {
            encoding,
            public_pem,
            kid,
        })
    }

    /// The key store that trusts this key (and nothing else).
    pub fn key_store(
        &self,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<KeyStore, DevKeyError> {
        KeyStore::from_pem(self.public_pem.as_bytes(), metrics).map_err(|e| DevKeyError::Load {
            path: "dev signing key".into(),
            message: e.to_string(),
        })
    }

    /// A Clerk-shaped session token (version-2 claims): RS256 with `kid` and `typ: JWT`;
    /// `iss`, `sub`, `sid`, `sts: active`, `azp`, `iat`, `nbf`, `exp`, `v: 2`.
    pub fn session_token(
        &self,
        claims: &DevClaims<'_>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let now = unix_now();
        let body = SessionClaims {
            azp: claims.azp,
            exp: now + claims.ttl_secs,
            iat: now,
            iss: claims.issuer,
            nbf: now.saturating_sub(5),
            sid: format!("sess_dev_{}", random_id()),
            sts: "active",
            sub: claims.sub,
            v: 2,
        };
        jsonwebtoken::encode(&header, &body, &self.encoding)
    }
}

/// What a dev token says.
pub struct DevClaims<'a> {
    pub issuer: &'a str,
    pub sub: &'a str,
    pub azp: Option<&'a str>,
    pub ttl_secs: u64,
}

#[derive(Serialize)]
struct SessionClaims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    azp: Option<&'a str>,
    exp: u64,
    iat: u64,
    iss: &'a str,
    nbf: u64,
    sid: String,
    sts: &'static str,
    sub: &'a str,
    v: u8,
}

fn random_id() -> String {
    let mut bytes = [0u8; 12];
    // The system RNG failing is not something a dev token can work around; a fixed id is
    // harmless here (the sid is informational).
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random secret for the dev profile's Stream signing (base64url, 256 bits).
pub fn random_secret() -> Result<String, DevKeyError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| DevKeyError::Generate {
        path: "dev Stream secret".into(),
        message: "the system random generator failed".into(),
    })?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dev_tokens_verify_with_the_dev_key_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.pem");
        assert!(ensure_dev_signing_key(&path).unwrap());
        assert!(!ensure_dev_signing_key(&path).unwrap());
        let signer = DevSigner::load(&path).unwrap();
        let token = signer
            .session_token(&DevClaims {
                issuer: "https://dev.invalid",
                sub: "user_123",
                azp: Some("http://localhost:8081"),
                ttl_secs: 60,
            })
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(signer.kid.as_str()));

        let config = crate::config::AuthConfig {
            issuer: Some("https://dev.invalid".into()),
            authorized_parties: vec!["http://localhost:8081".into()],
            ..Default::default()
        };
        let keys = std::sync::Arc::new(signer.key_store(Default::default()).unwrap());
        let verifier = super::super::Verifier::new(&config, keys);
        let session = verifier.verify(&token).await.unwrap();
        assert_eq!(&*session.user_id, "user_123");
        assert!(
            !format!("{signer:?}").contains("PRIVATE"),
            "Debug shows no key material"
        );
    }

    #[test]
    fn racing_first_runs_share_one_whole_key() {
        // The proxy and `dev-token` started together both find no key and both generate one.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs").join("dev.pem");
        let generated: Vec<bool> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| ensure_dev_signing_key(&path).unwrap()))
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert!(generated.contains(&true), "{generated:?}");
        DevSigner::load(&path).unwrap();
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["dev.pem"], "no temporary files left behind");
    }
}
