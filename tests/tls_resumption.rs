//! TLS session resumption: a client that comes back skips the certificate signature, with a
//! TLS 1.3 ticket or, over TLS 1.2, from the server's session cache; and the proxy counts
//! full and resumed handshakes apart (`tls_handshakes_total{kind}`).

mod common;

use std::sync::Arc;

use common::admin::{metric, metric_settles};
use common::*;
use rustls::client::{Resumption, Tls12Resumption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{HandshakeKind, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const FULL: &str = "stream_token_proxy_tls_handshakes_total{kind=\"full\"} ";
const RESUMED: &str = "stream_token_proxy_tls_handshakes_total{kind=\"resumed\"} ";

/// A client config of one protocol version that trusts the proxy's certificate. Connections
/// made with one config share its session store, as a returning app's do.
fn client_config(
    proxy: &TestProxy,
    version: &'static SupportedProtocolVersion,
    resumption: Resumption,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(proxy.cert_path()).expect("cert file") {
        roots.add(cert.expect("cert parses")).expect("cert added");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .expect("version supported")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = resumption;
    Arc::new(config)
}

/// One connection with one request on it, read to the end (so the client has taken the
/// tickets the server sent after the handshake); how the handshake went, client side.
async fn one_request(proxy: &TestProxy, config: &Arc<rustls::ClientConfig>) -> HandshakeKind {
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut tls = tokio::time::timeout(
        STEP,
        TlsConnector::from(config.clone()).connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request sent");
    let mut response = Vec::new();
    tokio::time::timeout(STEP, tls.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("response read");
    assert!(response.starts_with(b"HTTP/1.1 "), "an HTTP answer");
    kind
}

async fn proxy() -> TestProxy {
    // No request here needs the upstream: a refused connection answers 502, which is enough.
    TestProxy::start("http://127.0.0.1:9", |_| {}).await
}

#[tokio::test]
async fn a_returning_tls13_client_resumes_with_a_ticket() {
    let proxy = proxy().await;
    let config = client_config(&proxy, &rustls::version::TLS13, Resumption::default());
    assert_eq!(one_request(&proxy, &config).await, HandshakeKind::Full);
    assert_eq!(one_request(&proxy, &config).await, HandshakeKind::Resumed);
    assert_eq!(metric_settles(&proxy, FULL, 1.0).await, 1.0);
    assert_eq!(metric_settles(&proxy, RESUMED, 1.0).await, 1.0);

    // A client that kept nothing (another config, another store) gets a full handshake.
    let stranger = client_config(&proxy, &rustls::version::TLS13, Resumption::default());
    assert_eq!(one_request(&proxy, &stranger).await, HandshakeKind::Full);
    assert_eq!(metric_settles(&proxy, FULL, 2.0).await, 2.0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_returning_tls12_client_resumes_from_the_session_cache() {
    let proxy = proxy().await;
    // Session ids only, no tickets: the resumption comes from the server's session cache.
    let resumption = Resumption::default().tls12_resumption(Tls12Resumption::SessionIdOnly);
    let config = client_config(&proxy, &rustls::version::TLS12, resumption);
    assert_eq!(one_request(&proxy, &config).await, HandshakeKind::Full);
    assert_eq!(one_request(&proxy, &config).await, HandshakeKind::Resumed);
    assert_eq!(metric_settles(&proxy, RESUMED, 1.0).await, 1.0);
    assert_eq!(metric(&proxy, FULL), 1.0);
    proxy.stop().await;
}
