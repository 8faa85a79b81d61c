//! Traces (issue 19): W3C Trace Context through the proxy to the real Node upstream, and the
//! proxy's spans received by an OTLP/HTTP or OTLP/gRPC receiver written for the tests
//! (`tests/common/otlp.rs`), with their parent/child relations and nothing secret in them.

mod common;

use std::time::{Duration, Instant};

use common::clerk::*;
use common::otlp::OtlpReceiver;
use common::*;
use http::{Request, StatusCode};
use serde_json::Value;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traced(path: &str, traceparent: Option<&str>) -> http::request::Builder {
    let mut b = Request::get(path).header("host", "localhost");
    if let Some(value) = traceparent {
        b = b.header("traceparent", value);
    }
    b
}

fn sampled() -> String {
    format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
}

/// What Node received: its `traceparent` split into (trace id, parent id), and `tracestate`.
fn node_trace(echo: &Value) -> (Option<(String, String)>, Vec<String>) {
    let parent = echoed(echo, "traceparent").first().map(|v| {
        let fields: Vec<&str> = v.split('-').collect();
        (fields[1].to_string(), fields[2].to_string())
    });
    (parent, echoed(echo, "tracestate"))
}

async fn exporting(upstream: &NodeUpstream, receiver: &OtlpReceiver, key: &ClerkKey) -> TestProxy {
    let (endpoint, pem) = (receiver.endpoint(), key.public_pem.clone());
    TestProxy::start(&upstream.url(), |c| {
        use_pem(c, &pem);
        c.tracing.otlp_endpoint = Some(endpoint);
    })
    .await
}

#[tokio::test]
async fn a_sampled_trace_continues_through_the_proxy_to_node_and_the_collector() {
    let upstream = NodeUpstream::start();
    let receiver = OtlpReceiver::start(false).await;
    let key = ClerkKey::generate("ins_traces");
    let proxy = exporting(&upstream, &receiver, &key).await;
    let client = proxy.client();

    let request = traced("/echo/traced?secret-query=1", Some(&sampled()))
        .header("tracestate", "vendor=abc,other=1")
        .header("cookie", "sid=cookie-canary")
        .body(empty())
        .unwrap();
    let echo = body_json(client.h1(request).await).await;
    let (parent, state) = node_trace(&echo);
    let (trace, node_parent) = parent.expect("Node got a traceparent");
    assert_eq!(trace, TRACE_ID, "the same trace");
    assert_ne!(
        node_parent, CALLER_SPAN,
        "the proxy's span is Node's parent"
    );
    assert_eq!(state, ["vendor=abc,other=1"], "tracestate unchanged");

    let token = key.sign(&claims("user_traced"));
    let minted = traced("/api/stream/token", Some(&sampled()))
        .method("POST")
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    assert_eq!(client.h1(minted).await.status(), StatusCode::OK);

    let spans = receiver.wait_for(5).await;
    let find = |name: &str| spans.iter().find(|s| s.name == name).cloned();
    let server = find("GET").unwrap_or_else(|| panic!("no server span: {spans:#?}"));
    let upstream_span = find("upstream request").expect("the upstream CLIENT span");
    assert!(
        server
            .attributes
            .iter()
            .any(|a| a.contains("http.route") && a.contains("forward"))
    );
    assert_eq!(server.kind, 2, "SERVER");
    assert_eq!(
        server.parent_span_id, CALLER_SPAN,
        "joined the caller's trace"
    );
    assert_eq!(upstream_span.kind, 3, "CLIENT");
    assert_eq!(upstream_span.parent_span_id, server.span_id);
    assert_eq!(
        upstream_span.span_id, node_parent,
        "Node's parent is the CLIENT span"
    );
    let token_server = find("POST").expect("the token route's span");
    let verify = find("verify session").expect("the verification span");
    assert_eq!(verify.parent_span_id, token_server.span_id);
    assert!(spans.iter().all(|s| s.trace_id == TRACE_ID));
    assert!(server.service_name.contains("stream-token-proxy"));
    for span in &spans {
        let text = format!("{span:?}");
        for secret in [
            token.as_str(),
            "secret-query",
            "cookie-canary",
            "user_traced",
        ] {
            assert!(!text.contains(secret), "{secret} in a span: {text}");
        }
    }
    proxy.stop().await;
}

/// The same spans over OTLP/gRPC (HTTP/2, h2c), with the user id when the config allows it.
#[tokio::test]
async fn spans_go_over_grpc_too() {
    let upstream = NodeUpstream::start();
    let receiver = OtlpReceiver::start_grpc().await;
    let key = ClerkKey::generate("ins_grpc");
    let (endpoint, pem) = (receiver.endpoint(), key.public_pem.clone());
    let proxy = TestProxy::start(&upstream.url(), |c| {
        use_pem(c, &pem);
        c.tracing.otlp_endpoint = Some(endpoint);
        c.tracing.protocol = stream_token_proxy::config::OtlpProtocol::Grpc;
        c.tracing.include_user_id = true;
    })
    .await;
    let token = key.sign(&claims("user_grpc"));
    let minted = traced("/api/stream/token", Some(&sampled()))
        .method("POST")
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    assert_eq!(proxy.client().h1(minted).await.status(), StatusCode::OK);
    let spans = receiver.wait_for(2).await;
    let server = spans.iter().find(|s| s.name == "POST");
    let server = server.unwrap_or_else(|| panic!("no server span over gRPC: {spans:#?}"));
    let verify = spans.iter().find(|s| s.name == "verify session");
    let verify = verify.expect("the verification span");
    assert_eq!(verify.parent_span_id, server.span_id);
    assert_eq!(server.trace_id, TRACE_ID);
    assert!(
        server
            .attributes
            .iter()
            .any(|a| a.contains("enduser.id") && a.contains("user_grpc")),
        "include_user_id puts the user on the span: {server:?}"
    );
    assert!(
        spans
            .iter()
            .all(|s| !format!("{s:?}").contains(token.as_str()))
    );
    let exported = "stream_token_proxy_trace_spans_exported_total ";
    let exported = common::admin::metric_settles(&proxy, exported, 2.0).await;
    assert_eq!(exported, 2.0, "gRPC exports are counted as sent");
    proxy.stop().await;
}

#[tokio::test]
async fn traces_are_started_only_by_the_sample_ratio_and_bad_traceparents_are_dropped() {
    let upstream = NodeUpstream::start();
    let receiver = OtlpReceiver::start(false).await;
    let key = ClerkKey::generate("ins_ratio");
    // Default ratio: no trace of our own, and none forwarded.
    let proxy = exporting(&upstream, &receiver, &key).await;
    let echo = body_json(
        proxy
            .client()
            .h1(traced("/echo/none", None).body(empty()).unwrap())
            .await,
    )
    .await;
    assert_eq!(node_trace(&echo).0, None);
    // Malformed: ignored, and not forwarded as if valid; the request is served.
    for bad in [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    ] {
        let request = traced("/echo/bad", Some(bad))
            .header("tracestate", "vendor=abc")
            .body(empty())
            .unwrap();
        let response = proxy.client().h1(request).await;
        assert_eq!(response.status(), StatusCode::OK, "{bad}");
        let echo = body_json(response).await;
        assert_eq!(node_trace(&echo), (None, vec![]), "{bad}");
    }
    // Not sampled by the caller: passed on as it came, nothing recorded.
    let unsampled = format!("00-{TRACE_ID}-{CALLER_SPAN}-00");
    let echo = body_json(
        proxy
            .client()
            .h1(traced("/echo/u", Some(&unsampled)).body(empty()).unwrap())
            .await,
    )
    .await;
    assert_eq!(echoed(&echo, "traceparent"), [unsampled]);
    proxy.stop().await;

    let (endpoint, pem) = (receiver.endpoint(), key.public_pem.clone());
    let proxy = TestProxy::start(&upstream.url(), |c| {
        use_pem(c, &pem);
        c.tracing.otlp_endpoint = Some(endpoint);
        c.tracing.sample_ratio = 1.0;
    })
    .await;
    let echo = body_json(
        proxy
            .client()
            .h1(traced("/echo/root", None).body(empty()).unwrap())
            .await,
    )
    .await;
    let (parent, _) = node_trace(&echo);
    let (trace, _) = parent.expect("ratio 1.0 starts a trace");
    let spans = receiver.wait_for(2).await;
    assert!(
        spans
            .iter()
            .any(|s| s.trace_id == trace && s.parent_span_id.is_empty())
    );
    proxy.stop().await;
}

#[tokio::test]
async fn without_export_a_valid_traceparent_passes_unchanged() {
    let upstream = NodeUpstream::start();
    let proxy = TestProxy::start(&upstream.url(), |_| {}).await;
    let request = traced("/echo/pass", Some(&sampled()))
        .header("tracestate", "vendor=abc")
        .body(empty())
        .unwrap();
    let echo = body_json(proxy.client().h1(request).await).await;
    assert_eq!(echoed(&echo, "traceparent"), [sampled()]);
    assert_eq!(echoed(&echo, "tracestate"), ["vendor=abc"]);
    proxy.stop().await;
}

/// A collector that accepts connections and never answers: requests are not slowed, and the
/// spans that cannot go anywhere are dropped and counted.
#[tokio::test]
async fn a_collector_that_never_answers_slows_nothing_and_drops_are_counted() {
    let upstream = NodeUpstream::start();
    let receiver = OtlpReceiver::start(true).await;
    let key = ClerkKey::generate("ins_hang");
    let (endpoint, pem) = (receiver.endpoint(), key.public_pem.clone());
    let proxy = TestProxy::start(&upstream.url(), |c| {
        use_pem(c, &pem);
        c.tracing.otlp_endpoint = Some(endpoint);
        c.tracing.queue_size = 8;
    })
    .await;
    let client = proxy.client();
    let mut conn = client.h1_conn().await;
    let token = key.sign(&claims("user_hang"));
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let request = traced("/api/stream/token", Some(&sampled()))
            .method("POST")
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap();
        let started = Instant::now();
        let response = send_h1(&mut conn, request).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(response.status(), StatusCode::OK);
        body_bytes(response).await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited {slowest:?}"
    );
    let dropped = common::admin::metric(&proxy, "stream_token_proxy_trace_spans_dropped_total ");
    assert!(dropped > 0.0, "dropped spans are counted");
    proxy.stop().await;
}

/// The access-log line of a traced request names its trace and span, in both log formats.
#[tokio::test]
async fn access_log_lines_carry_the_trace_and_span_ids() {
    use common::binary::Served;
    let upstream = NodeUpstream::start();
    let receiver = OtlpReceiver::start(false).await;
    for format in ["json", "text"] {
        let extra = format!(
            "[log]\nformat = \"{format}\"\n[tracing]\notlp_endpoint = \"{}\"\n",
            receiver.endpoint()
        );
        let mut served = Served::start(&upstream.url(), &extra).await;
        let request = traced("/echo/logged-trace", Some(&sampled()))
            .body(empty())
            .unwrap();
        assert_eq!(served.client().h1(request).await.status(), StatusCode::OK);
        let line = served
            .wait_for_line("for the traced request", |l| {
                l.contains("/echo/logged-trace")
            })
            .await;
        assert!(line.contains(TRACE_ID), "{format}: {line}");
        assert!(line.contains("span_id"), "{format}: {line}");
        let untraced = traced("/echo/logged-plain", None).body(empty()).unwrap();
        served.client().h1(untraced).await;
        let line = served
            .wait_for_line("for the untraced request", |l| {
                l.contains("/echo/logged-plain")
            })
            .await;
        assert!(!line.contains("trace_id"), "{format}: {line}");
    }
}

/// A token naming a key the proxy has not fetched yet: the request's wait for the JWKS fetch
/// is a span inside `verify session`.
#[tokio::test]
async fn a_wait_for_a_jwks_fetch_is_a_span_of_the_verification() {
    use stream_token_proxy::config::PositiveDuration;
    let upstream = NodeUpstream::start();
    let receiver = OtlpReceiver::start(false).await;
    let old = ClerkKey::generate("ins_old");
    let new = ClerkKey::generate("ins_new");
    let jwks = JwksServer::start(&[&old]).await;
    let (url, endpoint) = (jwks.url(), receiver.endpoint());
    let proxy = TestProxy::start(&upstream.url(), |c| {
        use_jwks(c, &url);
        c.auth.jwks_refetch_cooldown = PositiveDuration(Duration::from_millis(50));
        c.tracing.otlp_endpoint = Some(endpoint);
    })
    .await;
    let client = proxy.client();
    wait_until_token_route_ready(&client, &old).await;
    jwks.set_keys(&[&old, &new]);
    let mut request = post(&new.sign(&claims("user_rotated")));
    let traceparent = sampled().parse().unwrap();
    request.headers_mut().insert("traceparent", traceparent);
    assert_eq!(client.h1(request).await.status(), StatusCode::OK);
    let spans = receiver.wait_for(3).await;
    let find = |name: &str| spans.iter().find(|s| s.name == name);
    let verify = find("verify session").expect("the verification span");
    let fetch = find("JWKS fetch").unwrap_or_else(|| panic!("no JWKS span: {spans:#?}"));
    assert_eq!(fetch.parent_span_id, verify.span_id);
    assert_eq!(fetch.trace_id, TRACE_ID);
    proxy.stop().await;
}

/// With the Redis limiter backend, each call to Redis is a CLIENT span of the request, named
/// by its policy and never by the key it counts.
#[tokio::test]
async fn a_redis_rate_limit_call_is_a_client_span_of_the_request() {
    use stream_token_proxy::config::{Backend, PositiveDuration, RateConfig, RedisUrl};
    let Some(redis) = common::redis::RedisServer::start(None) else {
        return;
    };
    let upstream = NodeUpstream::start();
    let receiver = OtlpReceiver::start(false).await;
    let key = ClerkKey::generate("ins_redis");
    let (endpoint, pem, url) = (receiver.endpoint(), key.public_pem.clone(), redis.url());
    let proxy = TestProxy::start(&upstream.url(), |c| {
        use_pem(c, &pem);
        c.tracing.otlp_endpoint = Some(endpoint);
        c.limits.backend = Backend::Redis;
        c.limits.redis.url = RedisUrl::parse(&url).unwrap().0;
        c.limits.token_per_user = RateConfig::new(100, PositiveDuration::secs(60), 100);
    })
    .await;
    let token = key.sign(&claims("user_limited"));
    let mut request = post(&token);
    request
        .headers_mut()
        .insert("traceparent", sampled().parse().unwrap());
    assert_eq!(proxy.client().h1(request).await.status(), StatusCode::OK);
    let spans = receiver.wait_for(3).await;
    let server = spans
        .iter()
        .find(|s| s.name == "POST")
        .expect("the request's span");
    let checks: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "rate limit check")
        .collect();
    assert!(!checks.is_empty(), "no rate-limit span: {spans:#?}");
    for check in checks {
        assert_eq!((check.kind, &check.parent_span_id), (3, &server.span_id));
        assert!(
            check
                .attributes
                .iter()
                .any(|a| a.contains("rate_limit.policy"))
        );
        assert!(!format!("{check:?}").contains("user_limited"), "{check:?}");
    }
    proxy.stop().await;
}
