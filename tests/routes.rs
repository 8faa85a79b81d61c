//! The router in-process, without TLS and without Node (an in-process upstream): which path
//! goes where, what each route answers. The transparency and conformance of forwarding are
//! tested against the real Node upstream elsewhere (`forwarding.rs`, `hostile.rs`).

mod common;

use common::clerk::*;
use common::fake_upstream::FakeUpstream;
use common::*;
use http::{Request, StatusCode};

/// The proxy on plain HTTP in front of an in-process upstream, trusting `key`.
async fn plain_proxy(upstream: &FakeUpstream, key: &ClerkKey) -> TestProxy {
    let pem = key.public_pem.clone();
    TestProxy::start(&upstream.url(), |c| {
        c.tls.enabled = false;
        use_pem(c, &pem);
    })
    .await
}

#[tokio::test]
async fn the_token_route_is_answered_here_and_everything_else_goes_upstream() {
    let upstream = FakeUpstream::start().await;
    let key = ClerkKey::generate("ins_routes");
    let proxy = plain_proxy(&upstream, &key).await;
    let mut conn = plain_h1(proxy.addr).await;

    let token = key.sign(&claims("user_routes"));
    let minted = send_h1(&mut conn, post(&token)).await;
    assert_eq!(minted.status(), StatusCode::OK);
    assert_eq!(body_json(minted).await["user_id"], "user_routes");
    let refused = send_h1(&mut conn, token_request(None).body(empty()).unwrap()).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        upstream.requests(),
        0,
        "the token route never goes upstream"
    );

    let forwarded = send_h1(&mut conn, get("/api/messages?page=2")).await;
    assert_eq!(forwarded.status(), StatusCode::OK);
    let echo = body_json(forwarded).await;
    assert_eq!(echo["url"], "/api/messages?page=2");
    assert_eq!(echoed(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(upstream.requests(), 1);

    let ambiguous = Request::get("//evil.example/api/stream/token")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let refused = send_h1(&mut plain_h1(proxy.addr).await, ambiguous).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(upstream.requests(), 1, "nothing more reached the upstream");
    proxy.stop().await;
}
