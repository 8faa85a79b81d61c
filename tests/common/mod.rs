//! Test fixtures: a real Node upstream, the proxy in-process on an ephemeral port, and TLS
//! clients (HTTP/1.1, HTTP/2, raw bytes) that trust the proxy's generated certificate.
//!
//! Everything listens on 127.0.0.1; every child process is killed by its PID on drop; every
//! wait is bounded.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use stream_token_proxy::{Config, ProxyHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub mod clerk;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

/// The Stream secret every test proxy signs with.
pub const TEST_STREAM_SECRET: &str = "test-stream-secret-0123456789abcdef";

/// The longest any single network step of a test may take.
pub const STEP: Duration = Duration::from_secs(20);

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process killed by its PID when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a Node script that prints `{"port":N}` on its first stdout line when ready.
pub fn start_node(script: &Path, env: &[(&str, &str)]) -> (ChildGuard, u16) {
    let mut command = Command::new("node");
    command
        .arg(script)
        .env("PORT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("node is installed (see .ci/run)");
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("node prints its port");
    let port = serde_json::from_str::<serde_json::Value>(&line)
        .ok()
        .and_then(|v| v["port"].as_u64())
        .unwrap_or_else(|| panic!("{} did not print its port, got {line:?}", script.display()));
    (guard, port as u16)
}

/// The Node upstream under `tests/upstream/server.js`.
pub struct NodeUpstream {
    _child: ChildGuard,
    pub port: u16,
}

impl NodeUpstream {
    pub fn start() -> Self {
        let (child, port) = start_node(&manifest_dir().join("tests/upstream/server.js"), &[]);
        Self {
            _child: child,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A dev-profile config on 127.0.0.1:0 with its certificate generated into `dir`.
pub fn test_config(dir: &Path, upstream_url: &str) -> Config {
    let text = format!(
        r#"
        dev = true
        [server]
        listen = "127.0.0.1:0"
        shutdown_grace = "5s"
        [tls]
        cert = "cert.pem"
        key = "key.pem"
        [admin]
        listen = "127.0.0.1:0"
        [upstream]
        url = "{upstream_url}"
        response_timeout = "5s"
        [auth]
        dev_signing_key = "dev-signing-key.pem"
        [stream]
        api_key = "test-api-key"
        [limits]
        token_per_ip = {{ requests = 0 }}
        token_per_user = {{ requests = 0 }}
        "#
    );
    let mut config = Config::from_toml(&text, "test config", dir).expect("test config parses");
    config.stream.api_secret = Some(stream_token_proxy::secret(TEST_STREAM_SECRET));
    config
}

/// The proxy running in this process.
pub struct TestProxy {
    pub handle: Option<ProxyHandle>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    /// Starts the proxy in front of `upstream_url`; `tweak` edits the config first.
    pub async fn start(upstream_url: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path(), upstream_url);
        tweak(&mut config);
        config.validate().expect("test config validates");
        let handle = stream_token_proxy::start(config)
            .await
            .expect("proxy starts");
        let addr = handle.local_addr();
        Self {
            handle: Some(handle),
            addr,
            dir,
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn client(&self) -> TlsClient {
        TlsClient::new(self.addr, &self.cert_path())
    }

    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().await;
        }
    }
}

/// A TLS client that trusts exactly one certificate (the proxy's).
#[derive(Clone)]
pub struct TlsClient {
    pub addr: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
}

impl TlsClient {
    pub fn new(addr: SocketAddr, cert_pem: &Path) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(cert_pem).expect("cert file") {
            roots.add(cert.expect("cert parses")).expect("cert added");
        }
        Self {
            addr,
            roots: Arc::new(roots),
        }
    }

    pub fn tls_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(self.roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A verified TLS connection to the proxy as `localhost`.
    pub async fn connect(&self, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let connector = TlsConnector::from(Arc::new(self.tls_config(alpn)));
        let tcp = tokio::time::timeout(STEP, TcpStream::connect(self.addr))
            .await
            .expect("connect in time")
            .expect("connect");
        tokio::time::timeout(
            STEP,
            connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
        )
        .await
        .expect("handshake in time")
        .expect("TLS handshake with the proxy")
    }

    /// Sends one request over a new HTTP/1.1 connection.
    pub async fn h1(&self, request: Request<TestBody>) -> Response<Incoming> {
        let io = TokioIo::new(self.connect(&[b"http/1.1"]).await);
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn.with_upgrades());
        tokio::time::timeout(STEP, send.send_request(request))
            .await
            .expect("h1 response in time")
            .expect("h1 response")
    }

    /// Sends one request over a new HTTP/2 connection.
    pub async fn h2(&self, request: Request<TestBody>) -> Response<Incoming> {
        let stream = self.connect(&[b"h2"]).await;
        assert_eq!(
            stream.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "ALPN picked h2"
        );
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        tokio::time::timeout(STEP, send.send_request(request))
            .await
            .expect("h2 response in time")
            .expect("h2 response")
    }

    /// Writes `bytes` raw over TLS and reads until the proxy closes or `wait` passes.
    pub async fn raw(&self, bytes: &[u8], wait: Duration) -> Vec<u8> {
        let mut stream = self.connect(&[b"http/1.1"]).await;
        stream.write_all(bytes).await.expect("raw write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
        out
    }
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// `GET path` with `Host: localhost`.
pub fn get(path: &str) -> Request<TestBody> {
    Request::get(path)
        .header("host", "localhost")
        .body(empty())
        .unwrap()
}

/// Reads a whole body, bounded by [`STEP`].
pub async fn body_bytes(response: Response<Incoming>) -> Bytes {
    tokio::time::timeout(STEP, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body reads")
        .to_bytes()
}

pub async fn body_json(response: Response<Incoming>) -> serde_json::Value {
    let bytes = body_bytes(response).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Pairs `[name, value, name, value, ...]` from the echo's `rawHeaders`.
pub fn raw_headers(echo: &serde_json::Value) -> Vec<(String, String)> {
    let list = echo["rawHeaders"].as_array().expect("rawHeaders array");
    list.chunks(2)
        .map(|p| {
            (
                p[0].as_str().unwrap().to_ascii_lowercase(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Values of one header in an echo, in order.
pub fn echoed(echo: &serde_json::Value, name: &str) -> Vec<String> {
    raw_headers(echo)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

impl TlsClient {
    /// One HTTP/2 connection to send many requests over (clone the sender per task).
    pub async fn h2_sender(&self) -> hyper::client::conn::http2::SendRequest<TestBody> {
        let stream = self.connect(&[b"h2"]).await;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        send
    }
}
