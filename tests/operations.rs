//! Operations (issue 5): health and readiness, Prometheus metrics that parse and count right,
//! certificate and secret rotation without restart, request ids, and the admin endpoints kept
//! off the public port.

mod common;

use std::time::Duration;

use common::admin::*;
use common::clerk::*;
use common::*;
use http::{Request, StatusCode};
use serde_json::json;
use stream_token_proxy::config::PositiveDuration;

#[tokio::test]
async fn readyz_waits_for_keys_and_healthz_always_answers() {
    let upstream = NodeUpstream::start();
    let key = ClerkKey::generate("ins_ready");
    let jwks = JwksServer::start(&[&key]).await;
    jwks.set_up(false);
    let url = jwks.url();
    let proxy = TestProxy::start(&upstream.url(), |c| use_jwks(c, &url)).await;
    let admin = proxy
        .handle
        .as_ref()
        .unwrap()
        .admin_addr()
        .expect("admin listener on");

    let (status, _, body) = admin_get(admin, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let reason: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reason["status"], "not_ready");
    assert!(
        reason["reason"].as_str().unwrap().contains("keys"),
        "{body}"
    );
    assert_eq!(admin_get(admin, "/healthz").await.0, StatusCode::OK);

    jwks.set_up(true);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        status = admin_get(admin, "/readyz").await.0;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK, "ready once the JWKS answered");
    assert_eq!(admin_get(admin, "/nope").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_parse_and_count_known_traffic_exactly() {
    let upstream = NodeUpstream::start();
    let key = ClerkKey::generate("ins_metrics");
    let pem = key.public_pem.clone();
    let proxy = TestProxy::start(&upstream.url(), |c| {
        use_pem(c, &pem);
        c.limits.token_per_user =
            stream_token_proxy::config::RateConfig::new(1, PositiveDuration::secs(60), 3);
    })
    .await;
    let admin = proxy.handle.as_ref().unwrap().admin_addr().unwrap();
    let client = proxy.client();
    let before = scrape(admin).await;

    // 3 token requests for one user: 1 mint, 2 reuses, all 2xx; the 4th is rate limited.
    let token = key.sign(&claims("user_m"));
    for _ in 0..3 {
        assert_eq!(client.h1(post(&token)).await.status(), StatusCode::OK);
    }
    assert_eq!(
        client.h1(post(&token)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // 2 refusals: an expired token and a bad signature.
    let expired = key.sign(&claims_with("user_m", &[("exp", json!(now() - 60))]));
    assert_eq!(
        client.h1(post(&expired)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        client.h1(post(&tampered_signature(&token))).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // 2 forwarded 2xx, 1 forwarded 4xx (Node's answer).
    assert_eq!(client.h1(get("/api/hello")).await.status(), StatusCode::OK);
    assert_eq!(client.h2(get("/api/hello")).await.status(), StatusCode::OK);
    assert_eq!(
        client.h1(get("/_t/status/404")).await.status(),
        StatusCode::NOT_FOUND
    );

    let after = scrape(admin).await;
    let delta = |family: &str, labels: &[(&str, &str)]| {
        value(&after, family, labels) - value(&before, family, labels)
    };
    let requests = "stream_token_proxy_requests";
    assert_eq!(
        delta(requests, &[("route", "token"), ("status", "2xx")]),
        3.0
    );
    assert_eq!(
        delta(requests, &[("route", "token"), ("status", "4xx")]),
        3.0
    );
    assert_eq!(
        delta(requests, &[("route", "forward"), ("status", "2xx")]),
        2.0
    );
    assert_eq!(
        delta(requests, &[("route", "forward"), ("status", "4xx")]),
        1.0
    );
    assert_eq!(delta("stream_token_proxy_token_mints", &[]), 1.0);
    assert_eq!(delta("stream_token_proxy_token_reuses", &[]), 2.0);
    let failures = "stream_token_proxy_verification_failures";
    assert_eq!(delta(failures, &[("reason", "token_expired")]), 1.0);
    assert_eq!(delta(failures, &[("reason", "bad_signature")]), 1.0);
    assert_eq!(
        delta(
            "stream_token_proxy_rate_limited",
            &[("limiter", "token_user")]
        ),
        1.0
    );
    assert_eq!(
        delta("stream_token_proxy_upstream_duration_seconds", &[]),
        3.0
    );
    assert!(value(&after, "stream_token_proxy_open_connections", &[]) >= 0.0);
    let expiry = value(
        &after,
        "stream_token_proxy_certificate_expiry_timestamp_seconds",
        &[],
    );
    assert!(
        expiry > now() as f64,
        "the certificate expiry is exported: {expiry}"
    );
    assert_eq!(value(&after, "stream_token_proxy_jwks_keys", &[]), 1.0);

    // Labels carry no user ids, tokens or paths.
    let (_, _, text) = admin_get(admin, "/metrics").await;
    for leak in ["user_m", "/api/hello", &token[..20]] {
        assert!(!text.contains(leak), "metrics mention {leak}");
    }
}

#[tokio::test]
async fn the_admin_endpoints_are_not_served_on_the_public_port() {
    let upstream = NodeUpstream::start();
    let proxy = TestProxy::start(&upstream.url(), |_| {}).await;
    let client = proxy.client();
    for path in ["/metrics", "/healthz", "/readyz"] {
        let response = client.h1(get(path)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let echo = body_json(response).await;
        assert_eq!(
            echo["url"], path,
            "{path} went to the Node upstream, not the admin handler"
        );
    }
}

/// A certificate for localhost with its own key; the serial is random.
fn write_pair(dir: &std::path::Path, cert: &str, key: &str) -> Vec<u8> {
    let pair = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let certificate = params.self_signed(&pair).unwrap();
    std::fs::write(dir.join(key), pair.serialize_pem()).unwrap();
    std::fs::write(dir.join(cert), certificate.pem()).unwrap();
    certificate.der().to_vec()
}

#[tokio::test]
async fn replaced_certificate_files_are_served_without_restart_and_garbage_is_ignored() {
    let upstream = NodeUpstream::start();
    let proxy = TestProxy::start(&upstream.url(), |c| {
        c.server.reload_interval = PositiveDuration(Duration::from_millis(200));
    })
    .await;
    let dir = proxy.dir.path().to_path_buf();
    let old = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let peer_cert = |trust: String| {
        let addr = proxy.addr;
        let dir = dir.clone();
        async move {
            let bundle = dir.join("trust.pem");
            std::fs::write(&bundle, trust).unwrap();
            let stream = TlsClient::new(addr, &bundle).connect(&[b"http/1.1"]).await;
            stream.get_ref().1.peer_certificates().unwrap()[0]
                .as_ref()
                .to_vec()
        }
    };
    let before = peer_cert(old.clone()).await;

    // Write the new pair next to the old, then swap it in (as a Secret volume update does).
    let new_der = write_pair(&dir, "new-cert.pem", "new-key.pem");
    std::fs::rename(dir.join("new-key.pem"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("new-cert.pem"), dir.join("cert.pem")).unwrap();
    let new_pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let mut seen = before.clone();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = peer_cert(format!("{old}{new_pem}")).await;
        if seen != before {
            break;
        }
    }
    assert_eq!(seen, new_der, "new handshakes get the new certificate");
    let serial = |der: &[u8]| {
        x509_parser::parse_x509_certificate(der)
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    };
    assert_ne!(serial(&before), serial(&seen));

    // Garbage: the new pair stays in use.
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        peer_cert(format!("{old}{new_pem}")).await,
        new_der,
        "the last good pair is kept"
    );
    let admin = proxy.handle.as_ref().unwrap().admin_addr().unwrap();
    let metrics = scrape(admin).await;
    assert!(
        value(
            &metrics,
            "stream_token_proxy_reloads",
            &[("what", "certificate"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert!(
        value(
            &metrics,
            "stream_token_proxy_reloads",
            &[("what", "certificate"), ("outcome", "error")]
        ) >= 1.0
    );

    // SIGHUP's path (handle.reload) picks up a good pair at once.
    let third = write_pair(&dir, "cert.pem", "key.pem");
    proxy.handle.as_ref().unwrap().reload();
    let third_pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    assert_eq!(peer_cert(format!("{old}{new_pem}{third_pem}")).await, third);
}

#[tokio::test]
async fn a_changed_secret_file_signs_new_tokens() {
    let upstream = NodeUpstream::start();
    let key = ClerkKey::generate("ins_secret");
    let pem = key.public_pem.clone();
    let proxy = TestProxy::start(&upstream.url(), |c| {
        use_pem(c, &pem);
        c.server.reload_interval = PositiveDuration(Duration::from_millis(200));
        c.stream.api_secret = None;
        c.stream.api_secret_file = Some("stream-secret".into());
        std::fs::write(c.base_dir.join("stream-secret"), "first-secret\n").unwrap();
        c.load_secret().unwrap();
    })
    .await;
    let client = proxy.client();
    let verifies_with = |token: &str, secret: &str| {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .is_ok()
    };
    let first = body_json(client.h1(post(&key.sign(&claims("user_s")))).await).await;
    assert!(verifies_with(
        first["token"].as_str().unwrap(),
        "first-secret"
    ));

    std::fs::write(proxy.dir.path().join("stream-secret"), "second-secret\n").unwrap();
    let mut token = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let json = body_json(client.h1(post(&key.sign(&claims("user_s")))).await).await;
        token = json["token"].as_str().unwrap().to_string();
        if verifies_with(&token, "second-secret") {
            break;
        }
    }
    assert!(
        verifies_with(&token, "second-secret"),
        "new tokens use the new secret"
    );

    // An emptied file is refused; the second secret stays.
    std::fs::write(proxy.dir.path().join("stream-secret"), "\n").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let json = body_json(client.h1(post(&key.sign(&claims("user_t")))).await).await;
    assert!(verifies_with(
        json["token"].as_str().unwrap(),
        "second-secret"
    ));
}

#[tokio::test]
async fn request_ids_pass_through_or_are_made() {
    let upstream = NodeUpstream::start();
    let proxy = TestProxy::start(&upstream.url(), |_| {}).await;
    let client = proxy.client();

    let given = Request::get("/echo")
        .header("host", "localhost")
        .header("x-request-id", "req-abc.123")
        .body(empty())
        .unwrap();
    let response = client.h1(given).await;
    assert_eq!(response.headers()["x-request-id"], "req-abc.123");
    assert_eq!(
        echoed(&body_json(response).await, "x-request-id"),
        ["req-abc.123"]
    );

    let response = client.h2(get("/echo")).await;
    let made = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!made.is_empty());
    assert_eq!(echoed(&body_json(response).await, "x-request-id"), [made]);

    let hostile = Request::get("/echo")
        .header("host", "localhost")
        .header("x-request-id", "has spaces and \"quotes\"")
        .body(empty())
        .unwrap();
    let response = client.h1(hostile).await;
    let replaced = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(replaced, "has spaces and \"quotes\"");
    assert_eq!(
        echoed(&body_json(response).await, "x-request-id"),
        [replaced]
    );

    let token_route = client
        .h1(Request::post("/api/stream/token")
            .header("host", "localhost")
            .body(empty())
            .unwrap())
        .await;
    assert!(
        token_route.headers().contains_key("x-request-id"),
        "errors carry the id too"
    );
}

/// `/readyz` on `proxy` until it answers `want` (a verdict on the upstream stands for a
/// second), for at most [`STEP`]; returns the last reason given.
async fn readyz_becomes(proxy: &TestProxy, want: StatusCode) -> String {
    let started = std::time::Instant::now();
    loop {
        let (status, _, body) = admin_get(admin_addr(proxy), "/readyz").await;
        let reason: serde_json::Value = serde_json::from_str(&body).unwrap();
        let reason = reason["reason"].as_str().unwrap_or("").to_owned();
        if status == want {
            return reason;
        }
        assert!(started.elapsed() < STEP, "/readyz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readyz_can_require_the_upstream_by_connect_or_health_path() {
    let mut node = NodeUpstream::start();
    let url = node.url();
    let requiring = |health: Option<&'static str>| {
        move |c: &mut stream_token_proxy::Config| {
            c.admin.ready_requires_upstream = true;
            c.upstream.health_path = health.map(str::to_owned);
        }
    };
    let plain = TestProxy::start(&url, |_| {}).await;
    let connect = TestProxy::start(&url, requiring(None)).await;
    let health = TestProxy::start(&url, requiring(Some("/_t/status/204"))).await;
    let failing = TestProxy::start(&url, requiring(Some("/_t/status/503"))).await;
    let hanging = TestProxy::start(&url, requiring(Some("/_t/hang"))).await;
    for proxy in [&plain, &connect, &health] {
        readyz_becomes(proxy, StatusCode::OK).await;
    }
    let reason = readyz_becomes(&failing, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(reason.contains("health check failed"), "{reason}");
    // An upstream that never answers is a prompt 503: the kubelet's probe waits 1 s.
    let started = std::time::Instant::now();
    let reason = readyz_becomes(&hanging, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(reason.contains("in time"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    node.kill();
    for proxy in [&connect, &health] {
        let reason = readyz_becomes(proxy, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(reason.contains("refuses connections"), "{reason}");
    }
    // Off (the default), readiness does not look at Node.
    assert_eq!(
        admin_get(admin_addr(&plain), "/readyz").await.0,
        StatusCode::OK
    );

    node.restart();
    for proxy in [&connect, &health] {
        readyz_becomes(proxy, StatusCode::OK).await;
    }
    for proxy in [plain, connect, health, failing, hanging] {
        proxy.stop().await;
    }
}
