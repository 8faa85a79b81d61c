//! The test toolkit: every helper the test files share, defined once. This file: the real Node
//! upstream, the proxy in-process on an ephemeral port, and TLS clients (HTTP/1.1, HTTP/2, raw
//! bytes) that trust the proxy's generated certificate. Beside it: `admin` (the admin listener
//! and metrics), `binary` (the real binary as a child process), `clerk` (Clerk keys, tokens, a
//! JWKS server, the token route's fixture), `fake_upstream` (an in-process upstream without
//! Node), `h2raw` (HTTP/2 frames by hand).
//!
//! Everything listens on 127.0.0.1; every child process is killed by its PID on drop; every
//! wait is bounded.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

pub mod admin;
pub mod binary;
pub mod clerk;
pub mod fake_upstream;
pub mod h2raw;
pub mod otlp;
pub mod redis;

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
    child: ChildGuard,
    pub port: u16,
    env: Vec<(String, String)>,
}

impl NodeUpstream {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Started with `env` (the opt-in variables server.js documents); a restart keeps them.
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let (child, port) = start_node(&Self::script(), env);
        Self {
            child,
            port,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn script() -> PathBuf {
        manifest_dir().join("tests/upstream/server.js")
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// SIGKILLs the process by its PID and reaps it: the port is closed when this returns.
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// A new process on the same port and env (after [`kill`](Self::kill)); returns once it
    /// listens.
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("PORT", &port));
        let (child, port) = start_node(&Self::script(), &env);
        assert_eq!(port, self.port, "restarted on the same port");
        self.child = child;
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
    config.stream.api_secret = Some(stream_token_proxy::config::Secret::new(TEST_STREAM_SECRET));
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
        self.try_connect(alpn)
            .await
            .expect("TLS handshake with the proxy")
    }

    /// The same, with the handshake's failure as an error (bounded by [`STEP`]).
    pub async fn try_connect(&self, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
        let connector = TlsConnector::from(Arc::new(self.tls_config(alpn)));
        let tcp = tokio::time::timeout(STEP, TcpStream::connect(self.addr))
            .await
            .expect("connect in time")?;
        // As a real client does: no Nagle delay between a request's HEADERS and DATA frames.
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(
            STEP,
            connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
        )
        .await
        .expect("handshake in time")
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

// ---------- Helpers for the forwarding and CLI tests ----------

/// SHA-256 through aws-lc (the proxy's own crypto provider): fast even in debug builds, where
/// a pure-Rust hash would spend seconds on a 64 MiB body.
pub struct Sha256(Box<dyn rustls::crypto::hash::Context>);

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let hash = provider
            .cipher_suites
            .iter()
            .find_map(|suite| match suite {
                rustls::SupportedCipherSuite::Tls13(s)
                    if s.common.hash_provider.algorithm()
                        == rustls::crypto::hash::HashAlgorithm::SHA256 =>
                {
                    Some(s.common.hash_provider)
                }
                _ => None,
            })
            .expect("aws-lc provides SHA-256");
        Self(hash.start())
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn hex(self) -> String {
        self.0
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The body `/_t/download?bytes=n` sends: server.js's 64 KiB pattern, repeated, cut at `n`.
pub fn download_sha256(n: u64) -> String {
    let pattern: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(7) & 0xff) as u8)
        .collect();
    let mut hash = Sha256::new();
    let mut left = n;
    while left > 0 {
        let take = left.min(pattern.len() as u64) as usize;
        hash.update(&pattern[..take]);
        left -= take as u64;
    }
    hash.hex()
}

/// `len` pseudo-random bytes from `seed` (xorshift32): cheap, reproducible, and without any
/// short period.
pub fn xorshift_bytes(seed: u32, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// A request body of `total` bytes made on the fly in chunks of varying size and content (so
/// a dropped, repeated or reordered chunk changes the hash), with no size hint: HTTP/1.1 sends
/// it chunked, HTTP/2 without `content-length`. Only one 1 MiB buffer is ever allocated.
pub struct GeneratedBody {
    base: Bytes,
    total: u64,
    sent: u64,
    index: usize,
}

impl GeneratedBody {
    pub fn new(total: u64) -> Self {
        let base = xorshift_bytes(0x1234_5678, 1 << 20);
        Self {
            base: Bytes::from(base),
            total,
            sent: 0,
            index: 0,
        }
    }

    /// The chunks this body yields, in order (the test hashes them to know the expected sum).
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.sent >= self.total {
            return None;
        }
        let i = self.index;
        self.index += 1;
        let len = 16 * 1024 + (i * 4099) % (48 * 1024);
        let len = len.min((self.total - self.sent) as usize);
        let offset = (i * 7919) % (self.base.len() - 64 * 1024);
        self.sent += len as u64;
        Some(self.base.slice(offset..offset + len))
    }

    /// The SHA-256 of the whole body, computed by generating it once more.
    pub fn sha256(total: u64) -> String {
        let mut body = Self::new(total);
        let mut hash = Sha256::new();
        while let Some(chunk) = body.next_chunk() {
            hash.update(&chunk);
        }
        hash.hex()
    }

    pub fn into_body(self) -> TestBody {
        BodyExt::boxed(self)
    }
}

impl hyper::body::Body for GeneratedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::task::Poll::Ready(self.next_chunk().map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

/// A request body fed by the test through a channel; sending `Err` aborts the body (HTTP/2:
/// the client resets the stream), dropping the sender ends it cleanly.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>);

impl ChannelBody {
    pub fn channel(
        capacity: usize,
    ) -> (tokio::sync::mpsc::Sender<Result<Bytes, BoxError>>, TestBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (tx, BodyExt::boxed(Self(rx)))
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(hyper::body::Frame::data)))
    }
}

/// Reads a body frame by frame, bounded by [`STEP`] per frame: (bytes, sha256, trailers).
pub async fn hash_body(response: Response<Incoming>) -> (u64, String, Option<http::HeaderMap>) {
    let mut body = response.into_body();
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut trailers = None;
    while let Some(frame) = tokio::time::timeout(STEP, body.frame())
        .await
        .expect("body frame in time")
    {
        let frame = frame.expect("body frame reads");
        match frame.into_data() {
            Ok(data) => {
                bytes += data.len() as u64;
                hash.update(&data);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    (bytes, hash.hex(), trailers)
}

impl TlsClient {
    /// A kept-open HTTP/1.1 connection for several requests in a row.
    pub async fn h1_conn(&self) -> hyper::client::conn::http1::SendRequest<TestBody> {
        let io = TokioIo::new(self.connect(&[b"http/1.1"]).await);
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn.with_upgrades());
        send
    }

    /// A kept-open HTTP/2 connection for several requests.
    pub async fn h2_conn(&self) -> hyper::client::conn::http2::SendRequest<TestBody> {
        let stream = self.connect(&[b"h2"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        send
    }
}

/// Sends on an open HTTP/1.1 connection, bounded by [`STEP`].
pub async fn send_h1(
    send: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    request: Request<TestBody>,
) -> Response<Incoming> {
    tokio::time::timeout(STEP, async {
        send.ready().await?;
        send.send_request(request).await
    })
    .await
    .expect("h1 response in time")
    .expect("h1 response")
}

/// Sends on an open HTTP/2 connection, bounded by [`STEP`].
pub async fn send_h2(
    send: &mut hyper::client::conn::http2::SendRequest<TestBody>,
    request: Request<TestBody>,
) -> Response<Incoming> {
    tokio::time::timeout(STEP, async {
        send.ready().await?;
        send.send_request(request).await
    })
    .await
    .expect("h2 response in time")
    .expect("h2 response")
}

/// A plain-HTTP/1.1 connection to `addr` (a proxy with `tls.enabled = false`, or any upstream).
pub async fn plain_h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let tcp = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    send
}

/// `method path` straight to the Node upstream (not through the proxy), over plain HTTP/1.1;
/// returns the JSON answer.
pub async fn node_call(port: u16, method: &str, path: &str) -> serde_json::Value {
    let tcp = tokio::time::timeout(STEP, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect to node in time")
        .expect("connect to node");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("h1 handshake with node");
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let response = tokio::time::timeout(STEP, send.send_request(request))
        .await
        .expect("node answers in time")
        .expect("node answers");
    body_json(response).await
}

/// One request as Node saw it (`/_t/seen`).
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub method: String,
    pub url: String,
    /// "complete", or "aborted" when the body never completed.
    pub state: String,
}

impl Seen {
    pub fn complete(method: &str, url: &str) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            state: "complete".into(),
        }
    }
}

pub async fn node_seen(port: u16) -> Vec<Seen> {
    // A forwarded head may still be on its way: give it a moment, then wait until no request
    // at Node is still open (a body being streamed or aborted).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let deadline = Instant::now() + STEP;
    loop {
        let now = node_call(port, "GET", "/_t/seen").await;
        let open = now["seen"]
            .as_array()
            .expect("seen list")
            .iter()
            .any(|e| e["state"] == "open");
        if !open || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list = node_call(port, "GET", "/_t/seen?clear=1").await;
    list["seen"]
        .as_array()
        .expect("seen list")
        .iter()
        .map(|e| Seen {
            method: e["method"].as_str().unwrap_or_default().into(),
            url: e["url"].as_str().unwrap_or_default().into(),
            state: e["state"].as_str().unwrap_or_default().into(),
        })
        .collect()
}

/// The Node upstream's `/_t/stats`, asked directly.
pub async fn node_stats(port: u16) -> serde_json::Value {
    node_call(port, "GET", "/_t/stats").await
}

/// Polls the Node upstream's `/_t/stats` until `done` holds, for at most [`STEP`].
pub async fn wait_for_stats(
    port: u16,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let stats = node_stats(port).await;
        if done(&stats) {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}; stats: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP/1.x response parsed from raw bytes: status line, headers (lower-case names, in
/// order) and the body after the head (as much of it as was read).
pub struct RawResponse {
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Parses the first response in `bytes`; panics with the bytes shown when there is none.
    pub fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {text:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Self {
            status_line,
            status,
            headers,
            body: bytes[end + 4..].to_vec(),
        }
    }

    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not JSON ({e}): {:?}",
                self.status_line,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Clears every environment variable that would override the config file under test (the
/// library's own list, plus `RUST_LOG`), so a developer's shell cannot change a test's outcome.
pub fn clear_overrides(command: &mut Command) -> &mut Command {
    for var in stream_token_proxy::config::ENV_OVERRIDES
        .iter()
        .map(|o| o.var)
    {
        command.env_remove(var);
    }
    command.env_remove("RUST_LOG")
}

/// `true` under CI (`CI` set, not `0` or `false`): there a test that needs a tool never skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `name` from the PATH. Missing: a failure (saying `how` to install it), unless outside CI
/// on a machine without apt-get; then `None`, after saying loudly that the test is skipped.
pub fn require_tool(name: &str, how: &str) -> Option<PathBuf> {
    if let Some(path) = on_path(name) {
        return Some(path);
    }
    if in_ci() {
        panic!("`{name}` is not on the PATH and CI is set, so this test may not skip: {how}");
    }
    if on_path("apt-get").is_some() {
        panic!("`{name}` is not on the PATH: {how}");
    }
    eprintln!(
        "\n!!!!! SKIPPED: `{name}` is not installed and this machine has no apt-get to install \
         it. The test did NOT run. (Under CI it fails instead; {how}.)\n"
    );
    None
}
