//! The dev profile (`dev = true`): everything `cargo run --release` needs on a fresh clone,
//! generated on first run into git-ignored files and reused after. A self-signed TLS
//! certificate for `localhost`, an RSA signing key standing in for a Clerk instance (with
//! Clerk-shaped session tokens from `stream-token-proxy dev-token`), and a random Stream secret.
//! Private files are published whole and never overwritten. Production paths never come here.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::auth::{KeyStore, unix_now};
use crate::crypto::{random_bytes, sha256};
use tracing::warn;

use crate::config::{Config, DEV_ISSUER, Secret, read_secret_file};

#[derive(Debug, thiserror::Error)]
pub enum DevProfileError {
    #[error("cannot generate the {what} {path}: {message}")]
    Generate {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("cannot use the {what} {path}: {message}")]
    Load {
        what: &'static str,
        path: String,
        message: String,
    },
}

/// Dev profile only: makes sure the dev certificate, signing key and Stream secret exist
/// (generating what is missing) and puts the secret into `config`.
pub(crate) fn prepare(config: &mut Config) -> Result<(), DevProfileError> {
    if config.tls.enabled {
        let (cert, key) = config.tls_paths();
        if ensure_dev_certificate(&cert, &key)? {
            warn!(cert = %cert.display(), key = %key.display(),
                "generated a self-signed TLS certificate: DEV ONLY, never use it in production");
        }
    }
    if let Some(file) = &config.auth.dev_signing_key {
        let path = config.resolve(file);
        if ensure_dev_signing_key(&path)? {
            warn!(path = %path.display(), "generated the dev session signing key: DEV ONLY");
        }
    }
    if config.stream.api_secret.is_none() {
        config.stream.api_secret = Some(dev_stream_secret(config)?);
    }
    Ok(())
}

/// A path the dev profile needs from the config, resolved; `hint` says how to set it.
fn configured_path(
    config: &Config,
    file: &Option<std::path::PathBuf>,
    what: &'static str,
    hint: &str,
) -> Result<std::path::PathBuf, DevProfileError> {
    let file = file.as_ref().ok_or_else(|| DevProfileError::Load {
        what,
        path: "(none)".into(),
        message: hint.into(),
    })?;
    Ok(config.resolve(file))
}

/// The Stream secret from `stream.api_secret_file`, generated there first if missing.
fn dev_stream_secret(config: &Config) -> Result<Secret, DevProfileError> {
    let path = configured_path(
        config,
        &config.stream.api_secret_file,
        "Stream secret",
        "set STREAM_API_SECRET or stream.api_secret_file",
    )?;
    let failed = |message: String| DevProfileError::Generate {
        what: "dev Stream secret",
        path: path.display().to_string(),
        message,
    };
    if !path.exists() {
        let secret = random_secret()?;
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match write_private(&path, secret.as_bytes()) {
            Ok(()) => warn!(path = %path.display(),
                "generated a random dev Stream secret: tokens work with this proxy but Stream \
                 will reject them; set STREAM_API_SECRET to your app's secret for real calls"),
            // Another instance published one first, whole: read that one below.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    read_secret_file(&path).map_err(|e| DevProfileError::Load {
        what: "Stream API secret file",
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A Clerk-shaped session token signed with the dev key, for `stream-token-proxy dev-token`.
/// Generates the key if this is the first run; starts nothing.
pub fn dev_token(config: &Config, sub: &str, ttl_secs: u64) -> Result<String, DevProfileError> {
    let path = configured_path(
        config,
        &config.auth.dev_signing_key,
        "dev signing key",
        "dev-token needs a dev config (dev = true, auth.dev_signing_key)",
    )?;
    ensure_dev_signing_key(&path)?;
    let signer = DevSigner::load(&path)?;
    let claims = DevClaims {
        issuer: config.auth.issuer.as_deref().unwrap_or(DEV_ISSUER),
        sub,
        azp: config.auth.authorized_parties.first().map(String::as_str),
        ttl_secs,
    };
    signer
        .session_token(&claims)
        .map_err(|e| DevProfileError::Generate {
            what: "dev token",
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// The dev signing key: its private half signs dev tokens, its public half verifies them.
pub(crate) struct DevSigner {
    encoding: EncodingKey,
    public_pem: String,
    /// Derived from the public key, so it changes when the key does.
    pub(crate) kid: String,
}

impl std::fmt::Debug for DevSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Creates the RSA-2048 dev key at `path` if it does not exist. Returns `true` if it did.
pub(crate) fn ensure_dev_signing_key(path: &Path) -> Result<bool, DevProfileError> {
    if path.exists() {
        return Ok(false);
    }
    let fail = |message: String| DevProfileError::Generate {
        what: "dev signing key",
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
    pub(crate) fn load(path: &Path) -> Result<Self, DevProfileError> {
        let fail = |message: String| DevProfileError::Load {
            what: "dev signing key",
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
    pub(crate) fn key_store(
        &self,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<KeyStore, DevProfileError> {
        KeyStore::from_pem(self.public_pem.as_bytes(), metrics).map_err(|e| DevProfileError::Load {
            what: "dev signing key",
            path: "(its public half)".into(),
            message: e.to_string(),
        })
    }

    /// A Clerk-shaped session token (version-2 claims): RS256 with `kid` and `typ: JWT`;
    /// `iss`, `sub`, `sid`, `sts: active`, `azp`, `iat`, `nbf`, `exp`, `v: 2`.
    pub(crate) fn session_token(
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
pub(crate) struct DevClaims<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) sub: &'a str,
    pub(crate) azp: Option<&'a str>,
    pub(crate) ttl_secs: u64,
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
    let _ = random_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random secret for the dev profile's Stream signing (base64url, 256 bits).
pub(crate) fn random_secret() -> Result<String, DevProfileError> {
    let mut bytes = [0u8; 32];
    random_bytes(&mut bytes).map_err(|_| DevProfileError::Generate {
        what: "dev Stream secret",
        path: "(random)".into(),
        message: "the system random generator failed".into(),
    })?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Writes a self-signed certificate for `localhost`, `127.0.0.1` and `::1` when neither file
/// exists. Returns `true` if it generated one. Dev configs only.
pub fn ensure_dev_certificate(cert_path: &Path, key_path: &Path) -> Result<bool, DevProfileError> {
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        // Half a pair is an operator mistake we must not paper over by overwriting.
        _ => {
            return Err(DevProfileError::Generate {
                what: "dev certificate",
                path: cert_path.display().to_string(),
                message: format!(
                    "only one of {} and {} exists; remove it to regenerate the pair",
                    cert_path.display(),
                    key_path.display()
                ),
            });
        }
    }
    let dir = cert_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let generate = || -> Result<(), String> {
        let names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        let mut params = rcgen::CertificateParams::new(names).map_err(|e| e.to_string())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "stream-token-proxy dev certificate (DEV ONLY)",
        );
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        write_private(key_path, key.serialize_pem().as_bytes()).map_err(|e| e.to_string())?;
        std::fs::write(cert_path, cert.pem()).map_err(|e| e.to_string())?;
        Ok(())
    };
    generate().map_err(|message| DevProfileError::Generate {
        what: "dev certificate",
        path: cert_path.display().to_string(),
        message,
    })?;
    Ok(true)
}

/// Writes a file readable by its owner only (private keys). Fails with `AlreadyExists` if
/// `path` exists. The contents are written to a temporary file first and published whole (a
/// hard link), so a process that finds `path`, e.g. `dev-token` started while the proxy is
/// generating its dev key, never reads half a key.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".tmp-{}-{nanos}", std::process::id()));
    let temp = std::path::PathBuf::from(temp);
    create_private(&temp, contents)?;
    let published = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match published {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        // A filesystem without hard links: write in place.
        Err(_) => create_private(path, contents),
    }
}

fn create_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents)
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
        let verifier = crate::auth::Verifier::new(&config, keys);
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

    #[test]
    fn dev_certificate_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        assert!(ensure_dev_certificate(&cert, &key).unwrap());
        assert!(
            !ensure_dev_certificate(&cert, &key).unwrap(),
            "second run reuses the pair"
        );
        let store = crate::tls::CertStore::load(&cert, &key).unwrap();
        crate::tls::server_config(std::sync::Arc::new(store)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is private to its owner");
        }
    }

    #[test]
    fn private_files_are_published_whole_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_private(&path, b"first").unwrap();
        let err = write_private(&path, b"second").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"], "no temporary files left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
    }

    #[test]
    fn half_a_pair_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "x").unwrap();
        let err = ensure_dev_certificate(&cert, &key).unwrap_err().to_string();
        assert!(err.contains("only one of"), "{err}");
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "x");
    }
}
