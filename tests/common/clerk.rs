//! Clerk-side fixtures for the token-route tests: RSA keys generated per test run, Clerk-shaped
//! session tokens (and hostile variants, and Clerk's other kinds of token), a JWKS server on
//! loopback that counts its hits and can be switched off, and the proxy in front of Node with
//! that JWKS. No key material is ever written to the repository.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use stream_token_proxy::Config;
use stream_token_proxy::config::JwksUrl;

use super::{NodeUpstream, TestBody, TestProxy, TlsClient, body_json, empty};

pub const ISSUER: &str = "https://clerk.test.example";
pub const AZP: &str = "http://localhost:8081";

/// Clerk's token categories (the JOSE header's `cat`).
pub const CAT_SESSION: &str = "cl_B7d4PD111AAA";
pub const CAT_TEMPLATE: &str = "cl_B7d4PD222AAA";
pub const CAT_M2M: &str = "cl_B7d4PD333AAA";
pub const CAT_IGNORE: &str = "cl_I7d4PD111III";

pub fn now() -> u64 {
    stream_token_proxy::testing::unix_now()
}

/// An RSA-2048 signing key as Clerk would hold it, with its public JWK.
pub struct ClerkKey {
    pub kid: String,
    encoding: EncodingKey,
    pub public_pem: String,
    pub jwk: Value,
}

impl ClerkKey {
    pub fn generate(kid: &str) -> Self {
        let pair =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("RSA key generation");
        let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).expect("RSA PEM");
        use aws_lc_rs::signature::KeyPair as _;
        let rsa = aws_lc_rs::rsa::KeyPair::from_pkcs8(&pair.serialize_der()).expect("PKCS#8");
        let public = rsa.public_key();
        let b64 = |p: aws_lc_rs::io::Positive<'_>| {
            URL_SAFE_NO_PAD.encode(p.big_endian_without_leading_zero())
        };
        let jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": b64(public.modulus()), "e": b64(public.exponent()),
        });
        Self {
            kid: kid.to_string(),
            encoding,
            public_pem: pair.public_key_pem(),
            jwk,
        }
    }

    /// The JOSE header of a Clerk session token signed with this key.
    pub fn session_header(&self) -> Value {
        json!({"alg": "RS256", "cat": CAT_SESSION, "kid": self.kid, "typ": "JWT"})
    }

    /// A session token: Clerk's header, this key's `kid` and the given claims.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_header(&self.session_header(), claims)
    }

    /// The same, but naming another `kid` in the header.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        self.sign_with_header(&[("kid", json!(kid))], claims)
    }

    /// Clerk's session header with some members replaced (or removed, with `Value::Null`).
    pub fn sign_with_header(&self, changes: &[(&str, Value)], claims: &Value) -> String {
        self.sign_header(&with_changes(self.session_header(), changes), claims)
    }

    /// RS256 over exactly this header and these claims.
    pub fn sign_header(&self, header: &Value, claims: &Value) -> String {
        let message = format!("{}.{}", b64_json(header), b64_json(claims));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, Algorithm::RS256)
                .expect("signing");
        format!("{message}.{signature}")
    }

    /// What `jsonwebtoken` makes by default: `{"typ":"JWT","alg":"RS256","kid":...}`, no `cat`.
    pub fn sign_plain(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing")
    }
}

/// Valid Clerk session claims (version 2) for `sub`, issued now, valid for a minute.
pub fn claims(sub: &str) -> Value {
    let now = now();
    json!({
        "azp": AZP, "exp": now + 60, "iat": now, "iss": ISSUER, "nbf": now - 5,
        "sid": format!("sess_{sub}"), "sts": "active", "sub": sub, "v": 2,
    })
}

/// `claims(sub)` with some fields replaced (or removed, with `Value::Null`).
pub fn claims_with(sub: &str, changes: &[(&str, Value)]) -> Value {
    with_changes(claims(sub), changes)
}

fn with_changes(mut object: Value, changes: &[(&str, Value)]) -> Value {
    let map = object.as_object_mut().unwrap();
    for (k, v) in changes {
        if v.is_null() {
            map.remove(*k);
        } else {
            map.insert(k.to_string(), v.clone());
        }
    }
    object
}

fn b64_json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// `alg: none` with an empty signature.
pub fn unsigned_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64_json(&json!({"alg": "none", "typ": "JWT"})),
        b64_json(claims)
    )
}

/// Algorithm confusion: HS256 "signed" with the RSA public key (PEM) as the HMAC secret.
pub fn hs256_with_public_key(key: &ClerkKey, claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        b64_json(&json!({"alg": "HS256", "typ": "JWT", "kid": key.kid})),
        b64_json(claims)
    );
    let hmac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.public_pem.as_bytes());
    let signature = aws_lc_rs::hmac::sign(&hmac, message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// A valid token whose payload was swapped for `claims` (the signature no longer matches).
pub fn tampered_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64_json(claims), parts[2])
}

/// A valid token with one signature character changed.
pub fn tampered_signature(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = bytes.len() - 5;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

struct JwksState {
    jwks: Mutex<Value>,
    up: AtomicBool,
    hits: AtomicUsize,
}

/// A JWKS endpoint on 127.0.0.1 (plain HTTP, allowed for loopback only).
pub struct JwksServer {
    pub addr: SocketAddr,
    state: Arc<JwksState>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(keys: &[&ClerkKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(JwksState {
            jwks: Mutex::new(json!({"keys": []})),
            up: AtomicBool::new(true),
            hits: AtomicUsize::new(0),
        });
        let server = Self {
            addr,
            state: state.clone(),
            task: tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |_request| {
                            let state = state.clone();
                            async move {
                                state.hits.fetch_add(1, Ordering::SeqCst);
                                let response = if state.up.load(Ordering::SeqCst) {
                                    let body = state.jwks.lock().unwrap().to_string();
                                    Response::new(Full::new(Bytes::from(body)))
                                } else {
                                    let mut r =
                                        Response::new(Full::new(Bytes::from_static(b"down")));
                                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                    r
                                };
                                Ok::<_, Infallible>(response)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }),
        };
        server.set_keys(keys);
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn set_keys(&self, keys: &[&ClerkKey]) {
        let list: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        *self.state.jwks.lock().unwrap() = json!({ "keys": list });
    }

    /// `false`: every request gets 503.
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Points a test config at a JWKS with the test issuer and authorized party.
pub fn use_jwks(config: &mut Config, url: &str) {
    config.auth.dev_signing_key = None;
    config.auth.jwks_url = Some(JwksUrl::parse(url).expect("jwks url"));
    config.auth.issuer = Some(ISSUER.into());
    config.auth.authorized_parties = vec![AZP.into()];
}

/// Points a test config at a static PEM public key.
pub fn use_pem(config: &mut Config, pem: &str) {
    config.auth.dev_signing_key = None;
    config.auth.public_key_pem = Some(pem.into());
    config.auth.issuer = Some(ISSUER.into());
    config.auth.authorized_parties = vec![AZP.into()];
}

/// `POST /api/stream/token`, with `Authorization: Bearer <token>` when a token is given.
pub fn token_request(token: Option<&str>) -> http::request::Builder {
    let mut builder = Request::post("/api/stream/token").header("host", "localhost");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder
}

/// The token route with `token` and no body.
pub fn post(token: &str) -> Request<TestBody> {
    token_request(Some(token)).body(empty()).unwrap()
}

/// The proxy in front of the real Node upstream, verifying with a JWKS server that holds `key`.
pub struct Fixture {
    pub upstream: NodeUpstream,
    pub jwks: JwksServer,
    pub key: ClerkKey,
    pub proxy: TestProxy,
}

/// Starts a [`Fixture`] (`tweak` edits the config) and waits until its keys are loaded.
pub async fn fixture(tweak: impl FnOnce(&mut Config)) -> Fixture {
    let upstream = NodeUpstream::start();
    let key = ClerkKey::generate("ins_key_1");
    let jwks = JwksServer::start(&[&key]).await;
    let url = jwks.url();
    let proxy = TestProxy::start(&upstream.url(), |c| {
        use_jwks(c, &url);
        tweak(c);
    })
    .await;
    wait_until_token_route_ready(&proxy.client(), &key).await;
    Fixture {
        upstream,
        jwks,
        key,
        proxy,
    }
}

/// Bounded wait for the first JWKS fetch: the route answers 503 until keys are loaded.
pub async fn wait_until_token_route_ready(client: &TlsClient, key: &ClerkKey) {
    for _ in 0..100 {
        let response = client.h2(post(&key.sign(&claims("user_ready")))).await;
        if response.status() != StatusCode::SERVICE_UNAVAILABLE {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the token route never became ready");
}

/// Sends `token` to the token route: its status and `error` code (`""` for a 200), after
/// checking that a 401 carries `WWW-Authenticate: Bearer ... error="invalid_token"`.
pub async fn answer(client: &TlsClient, token: &str) -> (StatusCode, String) {
    let response = client.h1(post(token)).await;
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        let www = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(www.contains("error=\"invalid_token\""), "{www}");
    }
    let json = body_json(response).await;
    if status == StatusCode::OK {
        assert!(json["token"].is_string(), "{json}");
        return (status, String::new());
    }
    let message = json["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty() && !message.contains(token), "{json}");
    (
        status,
        json["error"].as_str().unwrap_or_default().to_string(),
    )
}
