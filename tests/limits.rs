//! Abuse resistance (issue 4): rate limits, client IPs behind trusted proxies, and the
//! connection and request bounds, against the real proxy with an in-process upstream (Node adds
//! nothing to what is tested here).

mod common;

use std::time::{Duration, Instant};

use common::clerk::*;
use common::fake_upstream::FakeUpstream;
use common::*;
use http::{Request, StatusCode};
use stream_token_proxy::config::{CidrNet, PositiveDuration, RateConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rate(requests: u32, period: Duration, burst: u32) -> RateConfig {
    RateConfig::new(requests, PositiveDuration(period), burst)
}

/// The token route, maybe with a token, maybe with an `X-Forwarded-For`.
fn token_post(token: Option<&str>, forwarded_for: Option<&str>) -> Request<TestBody> {
    let mut builder = token_request(token);
    if let Some(xff) = forwarded_for {
        builder = builder.header("x-forwarded-for", xff);
    }
    builder.body(empty()).unwrap()
}

struct Setup {
    _upstream: FakeUpstream,
    key: ClerkKey,
    proxy: TestProxy,
}

/// A proxy trusting a static PEM key (no JWKS needed), with `tweak` applied.
async fn setup(tweak: impl FnOnce(&mut stream_token_proxy::Config)) -> Setup {
    let upstream = FakeUpstream::start().await;
    let key = ClerkKey::generate("ins_limits");
    let pem = key.public_pem.clone();
    let proxy = TestProxy::start(&upstream.url(), |c| {
        use_pem(c, &pem);
        tweak(c);
    })
    .await;
    Setup {
        _upstream: upstream,
        key,
        proxy,
    }
}

#[tokio::test]
async fn a_burst_over_the_per_ip_quota_gets_429_then_recovers_after_retry_after() {
    let s = setup(|c| c.limits.token_per_ip = rate(1, Duration::from_secs(1), 3)).await;
    let client = s.proxy.client();
    let token = s.key.sign(&claims("user_burst"));
    for i in 0..3 {
        assert_eq!(
            client.h1(token_post(Some(&token), None)).await.status(),
            StatusCode::OK,
            "request {i}"
        );
    }
    // Over the limit: even a request with no credentials is answered 429, before any JWT work.
    let limited = client.h1(token_post(None, None)).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = limited.headers().clone();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(headers["ratelimit-policy"], "\"token_ip\";q=1;w=1");
    assert_eq!(
        headers["ratelimit"].to_str().unwrap(),
        format!("\"token_ip\";r=0;t={retry_after}")
    );
    let json = body_json(limited).await;
    assert_eq!(json["error"], "rate_limited");

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        client.h1(token_post(Some(&token), None)).await.status(),
        StatusCode::OK,
        "allowed again"
    );
}

#[tokio::test]
async fn two_users_behind_one_ip_are_limited_separately() {
    let s = setup(|c| c.limits.token_per_user = rate(1, Duration::from_secs(60), 2)).await;
    let client = s.proxy.client();
    let alice = s.key.sign(&claims("user_alice"));
    let bob = s.key.sign(&claims("user_bob"));
    assert_eq!(
        client.h1(token_post(Some(&alice), None)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        client.h1(token_post(Some(&alice), None)).await.status(),
        StatusCode::OK
    );
    let third = client.h1(token_post(Some(&alice), None)).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        third.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("\"token_user\"")
    );
    assert_eq!(
        client.h1(token_post(Some(&bob), None)).await.status(),
        StatusCode::OK,
        "bob has his own budget"
    );
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_peer() {
    let limit = rate(1, Duration::from_secs(60), 1);
    // Not trusted: both "clients" are 127.0.0.1 and share one request.
    let s = setup(|c| c.limits.token_per_ip = limit.clone()).await;
    let client = s.proxy.client();
    let token = s.key.sign(&claims("user_x"));
    assert_eq!(
        client
            .h1(token_post(Some(&token), Some("203.0.113.1")))
            .await
            .status(),
        StatusCode::OK
    );
    let spoofed = client
        .h1(token_post(Some(&token), Some("203.0.113.2")))
        .await;
    assert_eq!(
        spoofed.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a spoofed X-Forwarded-For is ignored"
    );

    // Trusted: each forwarded address has its own budget; the right-most untrusted one counts.
    let s = setup(|c| {
        c.limits.token_per_ip = limit;
        c.limits.trusted_proxies = vec![
            CidrNet("127.0.0.0/8".parse().unwrap()),
            CidrNet("10.0.0.0/8".parse().unwrap()),
        ];
    })
    .await;
    let client = s.proxy.client();
    let token = s.key.sign(&claims("user_x"));
    for xff in [
        "203.0.113.1",
        "198.51.100.7, 203.0.113.2, 10.0.0.1",
        "203.0.113.3",
    ] {
        assert_eq!(
            client
                .h1(token_post(Some(&token), Some(xff)))
                .await
                .status(),
            StatusCode::OK,
            "{xff}"
        );
    }
    let again = client
        .h1(token_post(Some(&token), Some("1.2.3.4, 203.0.113.2")))
        .await;
    assert_eq!(
        again.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "203.0.113.2 already used its budget"
    );
}

#[tokio::test]
async fn the_global_ceiling_applies_across_clients() {
    let s = setup(|c| c.limits.token_global = Some(rate(1, Duration::from_secs(60), 2))).await;
    let client = s.proxy.client();
    let token = s.key.sign(&claims("user_g"));
    assert_eq!(
        client.h1(token_post(Some(&token), None)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        client.h2(token_post(Some(&token), None)).await.status(),
        StatusCode::OK
    );
    let third = client.h1(token_post(Some(&token), None)).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        third.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("\"token_global\"")
    );
}

#[tokio::test]
async fn forwarded_paths_are_limited_only_under_a_configured_prefix() {
    let s = setup(|c| {
        c.limits.forward = vec![stream_token_proxy::config::ForwardLimit {
            prefix: "/api/hello".into(),
            rate: rate(1, Duration::from_secs(60), 1),
        }];
    })
    .await;
    let client = s.proxy.client();
    assert_eq!(client.h1(get("/api/hello")).await.status(), StatusCode::OK);
    let second = client.h1(get("/api/hello")).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body_json(second).await["error"], "rate_limited");
    // The prefix is matched the way the route table matches: no spelling dodges it.
    for spelling in [
        "/API/Hello",
        "/api/./hello",
        "/api/x/../hello",
        "/api/%68ello",
        "/api/hello;x",
        "/api/hello/more",
    ] {
        let status = client.h1(get(spelling)).await.status();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{spelling}");
    }
    assert_eq!(
        client.h1(get("/api/hellos")).await.status(),
        StatusCode::OK,
        "segment by segment"
    );
    for _ in 0..5 {
        assert_eq!(
            client.h1(get("/other")).await.status(),
            StatusCode::OK,
            "other paths are not limited"
        );
    }
}

#[tokio::test]
async fn a_silent_client_is_cut_at_the_header_timeout_and_a_silent_tcp_peer_at_the_handshake_timeout()
 {
    let s = setup(|c| {
        c.server.header_read_timeout = PositiveDuration(Duration::from_millis(500));
        c.server.tls_handshake_timeout = PositiveDuration(Duration::from_millis(500));
    })
    .await;
    let client = s.proxy.client();

    // TLS done, then not a byte of HTTP: closed.
    let mut stream = client.connect(&[b"http/1.1"]).await;
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(read.is_ok(), "the proxy closed the silent connection");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "not before the timeout"
    );

    // The same after negotiating HTTP/2 and never sending the preface.
    let mut stream = client.connect(&[b"h2"]).await;
    let read =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut Vec::new())).await;
    assert!(read.is_ok(), "the silent h2 connection was closed");

    // Half a request head, then silence (slowloris): closed too.
    let mut stream = client.connect(&[b"http/1.1"]).await;
    stream
        .write_all(b"GET /api/hello HTTP/1.1\r\nhost: localhost\r\nx-slow: 1")
        .await
        .unwrap();
    let read =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut Vec::new())).await;
    assert!(read.is_ok(), "the slowloris connection was cut");

    // A TCP peer that never starts TLS.
    let mut tcp = tokio::net::TcpStream::connect(s.proxy.addr).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut Vec::new())).await;
    assert!(
        read.is_ok(),
        "the handshake timeout closed the TCP connection"
    );

    assert_eq!(
        client.h1(get("/api/hello")).await.status(),
        StatusCode::OK,
        "others are still served"
    );
}

#[tokio::test]
async fn an_oversized_token_body_gets_413_without_the_proxy_reading_it() {
    let s = setup(|_| {}).await;
    let client = s.proxy.client();
    let token = s.key.sign(&claims("user_big"));
    let mut stream = client.connect(&[b"http/1.1"]).await;
    let head = format!(
        "POST /api/stream/token HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 1073741824\r\n\r\n{{\"userId\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // We never send the gigabyte: the answer must come anyway.
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            if response.windows(4).any(|w| w == b"\r\n\r\n") && response.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
}

#[tokio::test]
async fn over_the_connection_cap_admitted_clients_are_still_answered() {
    let s = setup(|c| c.server.max_connections = 2).await;
    let client = s.proxy.client();
    let (a, b) = (client.h2_conn().await, client.h2_conn().await);
    // A third connection is not admitted while both slots are taken: its TLS handshake waits.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.h1(get("/api/hello")).await.status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the third client waits in the backlog"
    );
    for sender in [&a, &b] {
        let mut sender = sender.clone();
        let response = sender.send_request(get("/api/hello")).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "admitted clients are answered"
        );
    }
    drop((a, b));
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("admitted once a slot frees");
    assert_eq!(status.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let s = setup(|_| {}).await;
    let client = s.proxy.client();
    let big = Request::get("/api/hello")
        .header("host", "localhost")
        .header("x-big", "a".repeat(20 * 1024))
        .body(empty())
        .unwrap();
    let raw = client
        .raw(
            format!(
                "GET /api/hello HTTP/1.1\r\nhost: localhost\r\nx-big: {}\r\n\r\n",
                "a".repeat(20 * 1024)
            )
            .as_bytes(),
            Duration::from_secs(5),
        )
        .await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "{}",
        &text[..text.len().min(200)]
    );
    // HTTP/2: the header list is over SETTINGS_MAX_HEADER_LIST_SIZE.
    let stream = client.connect(&[b"h2"]).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let result = send.send_request(big).await;
    match result {
        Ok(response) => assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ),
        Err(e) => assert!(
            e.to_string().contains("header") || e.is_user(),
            "refused: {e}"
        ),
    }
    assert_eq!(client.h1(get("/api/hello")).await.status(), StatusCode::OK);
}
