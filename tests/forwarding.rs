//! Forwarding through the proxy to a real Node upstream over real TLS (issue 2).

mod common;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn odd_path_and_query_arrive_byte_exact_over_h1_and_h2() {
    let upstream = NodeUpstream::start();
    let proxy = TestProxy::start(&upstream.url(), |_| {}).await;
    let client = proxy.client();
    let target = "/a%2Fb/../c//d/%2e%2E/?q=%20x&q=y&&empty=&%E2%9C%93=1";

    let h1 = body_json(client.h1(get(target)).await).await;
    assert_eq!(h1["url"], target);
    assert_eq!(h1["method"], "GET");

    let h2_request = http::Request::get(format!("https://localhost{target}"))
        .body(empty())
        .unwrap();
    let h2 = body_json(client.h2(h2_request).await).await;
    assert_eq!(h2["url"], target);
    assert_eq!(
        echoed(&h2, "host"),
        ["localhost"],
        "h2 :authority reaches Node as Host"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_down_is_a_quick_json_502_and_the_proxy_keeps_serving() {
    let upstream = NodeUpstream::start();
    // A port nothing listens on: bind one, note it, close it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TestProxy::start(&format!("http://{dead}"), |_| {}).await;
    let client = proxy.client();
    let started = std::time::Instant::now();
    let response = client.h1(get("/api/hello")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["content-type"], "application/json");
    let json = body_json(response).await;
    assert_eq!(json["error"], "upstream_unavailable");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "502 comes quickly"
    );
    proxy.stop().await;
    drop(upstream);
}
