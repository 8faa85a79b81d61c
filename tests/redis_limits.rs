//! Fleet-wide rate limits (issue 18) against a real `redis-server`: proxies sharing one Redis
//! count together, the 429s are the local backend's, and a Redis that stops, pauses, forgets
//! its scripts or refuses the password gets the configured `on_error`, within the timeout,
//! until it answers again. In-process proxies with an in-process upstream (Node adds nothing
//! here); the password test runs the real binary at `trace`.

mod common;

use std::time::{Duration, Instant};

use common::admin::{admin_addr, admin_get, metric, metric_settles};
use common::binary::{Served, run};
use common::clerk::*;
use common::fake_upstream::FakeUpstream;
use common::redis::RedisServer;
use common::*;
use http::{HeaderMap, StatusCode};
use stream_token_proxy::Config;
use stream_token_proxy::config::{
    Backend, OnError, PositiveDuration, RateConfig, RedisConfig, RedisUrl,
};

const DEGRADED: &str = "stream_token_proxy_rate_limit_degraded";
const TIMEOUT: Duration = Duration::from_millis(20);

fn per_minute(burst: u32) -> RateConfig {
    RateConfig::new(1, PositiveDuration::secs(60), burst)
}

/// The Redis backend at `url`, quick to open and probe (the tests wait for recoveries).
fn use_redis(config: &mut Config, url: &str, on_error: OnError) {
    config.limits.backend = Backend::Redis;
    config.limits.redis = RedisConfig {
        url: RedisUrl::parse(url).unwrap().0,
        on_error,
        timeout: PositiveDuration(TIMEOUT),
        circuit_failures: 2,
        circuit_backoff: PositiveDuration(Duration::from_millis(100)),
        circuit_backoff_max: PositiveDuration(Duration::from_millis(300)),
        ..RedisConfig::default()
    };
}

struct Fleet {
    _upstream: FakeUpstream,
    key: ClerkKey,
    proxies: Vec<TestProxy>,
}

/// `count` proxies trusting one PEM key, each with `tweak` applied; returns once every
/// proxy with the Redis backend has reached it.
async fn fleet(count: usize, tweak: impl Fn(&mut Config)) -> Fleet {
    let upstream = FakeUpstream::start().await;
    let key = ClerkKey::generate("ins_redis");
    let mut proxies = Vec::new();
    for _ in 0..count {
        let proxy = TestProxy::start(&upstream.url(), |c| {
            use_pem(c, &key.public_pem);
            tweak(c);
        })
        .await;
        proxies.push(proxy);
    }
    for proxy in &proxies {
        assert_eq!(
            metric_settles(proxy, DEGRADED, 0.0).await,
            0.0,
            "reached Redis"
        );
    }
    Fleet {
        _upstream: upstream,
        key,
        proxies,
    }
}

/// The token route on a kept-open HTTP/2 connection per proxy: no handshake in the timings.
struct Clients(Vec<hyper::client::conn::http2::SendRequest<TestBody>>);

impl Clients {
    async fn of(fleet: &Fleet) -> Self {
        let mut senders = Vec::new();
        for proxy in &fleet.proxies {
            senders.push(proxy.client().h2_conn().await);
        }
        Self(senders)
    }

    /// POSTs `token` (or nothing) to proxy `i`: status, headers and how long it took.
    async fn post(&mut self, i: usize, token: Option<&str>) -> (StatusCode, HeaderMap, Duration) {
        let started = Instant::now();
        let response = send_h2(&mut self.0[i], token_request(token).body(empty()).unwrap()).await;
        let took = started.elapsed();
        let (status, headers) = (response.status(), response.headers().clone());
        body_bytes(response).await;
        (status, headers, took)
    }

    /// `n` posts spread over the proxies in turn; the statuses.
    async fn statuses(&mut self, n: usize, token: Option<&str>) -> Vec<StatusCode> {
        let mut out = Vec::new();
        for i in 0..n {
            let proxies = self.0.len();
            out.push(self.post(i % proxies, token).await.0);
        }
        out
    }
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test]
async fn two_proxies_sharing_one_redis_admit_exactly_the_burst_for_one_user_and_for_one_ip() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let url = redis.url();
    let fleet = fleet(2, |c| {
        use_redis(c, &url, OnError::Deny);
        c.limits.token_per_user = per_minute(10);
    })
    .await;
    let mut clients = Clients::of(&fleet).await;
    let token = fleet.key.sign(&claims("user_shared"));
    let statuses = clients.statuses(20, Some(&token)).await;
    assert_eq!(count(&statuses, StatusCode::OK), 10, "{statuses:?}");
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 10);
    assert!(
        statuses[..10].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let other = fleet.key.sign(&claims("user_other"));
    assert_eq!(
        clients.post(1, Some(&other)).await.0,
        StatusCode::OK,
        "per user"
    );
    assert_eq!(redis.key_count("stp:rl:token_user:"), 2);

    // Per IP, before any JWT work: requests without a token are 401 until the IP's burst is
    // spent on the fleet, then 429.
    let fleet = fleet_per_ip(&url, 10).await;
    let mut clients = Clients::of(&fleet).await;
    let statuses = clients.statuses(20, None).await;
    assert_eq!(
        count(&statuses, StatusCode::UNAUTHORIZED),
        10,
        "{statuses:?}"
    );
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 10);
    for proxy in &fleet.proxies {
        let line = "stream_token_proxy_rate_limit_backend_requests_total{outcome=\"first_tier\"}";
        assert!(
            metric(proxy, line) >= 4.0,
            "the first tier answered repeats"
        );
    }
}

/// Checks of one key that arrive together share a script call (the batch counts each of
/// them), and two proxies still admit exactly the burst.
#[tokio::test]
async fn a_routes_own_limit_holds_across_two_proxies_sharing_one_redis() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let url = redis.url();
    let fleet = fleet(2, |c| {
        use_redis(c, &url, OnError::Deny);
        c.routes = toml::from_str::<RouteTable>(
            r#"
            [[routes]]
            name = "messages"
            prefix = "/api/messages"
            auth = "required"
            rate_limit = { per = "user", requests = 4, period = "1m" }
            "#,
        )
        .unwrap()
        .routes;
    })
    .await;
    let mut clients = Clients::of(&fleet).await;
    let token = fleet.key.sign(&claims("user_route"));
    let mut statuses = Vec::new();
    for i in 0..8 {
        let request = http::Request::get("/api/messages/7")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap();
        let response = send_h2(&mut clients.0[i % 2], request).await;
        statuses.push(response.status());
        body_bytes(response).await;
    }
    assert_eq!(count(&statuses, StatusCode::OK), 4, "{statuses:?}");
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 4);
    assert_eq!(redis.key_count("stp:rl:route:messages:"), 1);
}

#[derive(serde::Deserialize)]
struct RouteTable {
    routes: Vec<stream_token_proxy::config::RouteConfig>,
}

#[tokio::test]
async fn concurrent_checks_of_one_key_share_round_trips_and_count_exactly() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let url = redis.url();
    let fleet = fleet(2, |c| {
        use_redis(c, &url, OnError::Deny);
        c.limits.redis.timeout = PositiveDuration(Duration::from_millis(500));
        c.limits.token_per_user = per_minute(60);
    })
    .await;
    let clients = Clients::of(&fleet).await;
    let token = fleet.key.sign(&claims("user_concurrent"));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let mut sender = clients.0[i % 2].clone();
        let request = token_request(Some(&token)).body(empty()).unwrap();
        tasks.push(tokio::spawn(async move {
            send_h2(&mut sender, request).await.status()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(count(&statuses, StatusCode::OK), 60, "{statuses:?}");
    let calls: f64 = fleet
        .proxies
        .iter()
        .map(|p| {
            metric(
                p,
                "stream_token_proxy_rate_limit_backend_duration_seconds_count",
            )
        })
        .sum();
    assert!(calls < 60.0, "{calls} script calls for 60 checks");
    let mut clients = clients;
    assert_eq!(
        clients.post(1, Some(&token)).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "the 61st, exactly"
    );
}

/// A burst of 1024 or more: a call reserves 1/1024 of it, and the next checks of that key on
/// this replica use those cells without a round trip (counted in Redis all the same);
/// `reserve = false` counts each request in Redis.
#[tokio::test]
async fn a_large_burst_reserves_cells_and_reserve_false_counts_one_by_one() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    for reserve in [true, false] {
        let url = redis.url();
        let fleet = fleet(1, |c| {
            use_redis(c, &url, OnError::Deny);
            c.limits.redis.reserve = reserve;
            c.limits.redis.key_prefix = format!("stp:{reserve}:");
            c.limits.token_per_user = RateConfig::new(2048, PositiveDuration::secs(1), 2048);
        })
        .await;
        let proxy = &fleet.proxies[0];
        let mut clients = Clients::of(&fleet).await;
        let token = fleet.key.sign(&claims("user_large"));
        assert_eq!(clients.statuses(3, Some(&token)).await, [StatusCode::OK; 3]);
        let calls = metric(
            proxy,
            "stream_token_proxy_rate_limit_backend_duration_seconds_count",
        );
        let reserved = metric(
            proxy,
            "stream_token_proxy_rate_limit_backend_requests_total{outcome=\"reserved\"}",
        );
        match reserve {
            true => assert_eq!((calls, reserved), (1.0, 2.0), "one call for 3 requests"),
            false => assert_eq!((calls, reserved), (3.0, 0.0), "one call per request"),
        }
    }
}

async fn fleet_per_ip(url: &str, burst: u32) -> Fleet {
    fleet(2, |c| {
        use_redis(c, url, OnError::Deny);
        c.limits.token_per_ip = per_minute(burst);
    })
    .await
}

#[tokio::test]
async fn the_429s_carry_the_same_headers_as_the_local_backend() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let shared = fleet_per_ip(&redis.url(), 3).await;
    let local = fleet(1, |c| c.limits.token_per_ip = per_minute(3)).await;
    let mut answers = Vec::new();
    for fleet in [&shared, &local] {
        let mut clients = Clients::of(fleet).await;
        clients.statuses(3, None).await;
        let (status, headers, _) = clients.post(0, None).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        answers.push(headers);
    }
    let header = |h: &HeaderMap, name: &str| h[name].to_str().unwrap().to_string();
    let (redis_429, local_429) = (&answers[0], &answers[1]);
    assert_eq!(
        header(redis_429, "ratelimit-policy"),
        "\"token_ip\";q=1;w=60"
    );
    assert_eq!(
        header(redis_429, "ratelimit-policy"),
        header(local_429, "ratelimit-policy")
    );
    for h in [redis_429, local_429] {
        let retry: u64 = header(h, "retry-after").parse().unwrap();
        assert!((59..=60).contains(&retry), "Retry-After {retry}");
        assert_eq!(
            header(h, "ratelimit"),
            format!("\"token_ip\";r=0;t={retry}")
        );
        assert_eq!(header(h, "content-type"), "application/json");
    }
}

/// Requests while Redis is down: each `on_error`, none slower than the timeout plus a margin
/// (and the backend histogram shows no check over 50 ms), limiting back once Redis is.
#[tokio::test]
async fn redis_stopped_mid_test_gives_each_on_error_and_limiting_resumes() {
    let Some(mut redis) = RedisServer::start(None) else {
        return;
    };
    for on_error in [OnError::Local, OnError::Allow, OnError::Deny] {
        let url = redis.url();
        let fleet = fleet(1, |c| {
            use_redis(c, &url, on_error);
            c.limits.redis.replicas_hint = Some(2);
            c.limits.token_per_user = per_minute(4);
        })
        .await;
        let proxy = &fleet.proxies[0];
        let mut clients = Clients::of(&fleet).await;
        let sign = |user: &str| fleet.key.sign(&claims(user));
        let (before, during, after) =
            (sign("user_before"), sign("user_during"), sign("user_after"));
        assert_eq!(
            count(&clients.statuses(5, Some(&before)).await, StatusCode::OK),
            4
        );

        redis.stop();
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let (status, headers, took) = clients.post(0, Some(&during)).await;
            assert!(
                took < TIMEOUT + Duration::from_millis(300),
                "{on_error:?}: {took:?}"
            );
            if on_error == OnError::Deny {
                assert_eq!(headers["retry-after"], "1");
            }
            statuses.push(status);
        }
        let ok = count(&statuses, StatusCode::OK);
        let want = match on_error {
            OnError::Local => 2, // burst 4 over replicas_hint 2
            OnError::Allow => 6,
            OnError::Deny => 0,
        };
        assert_eq!(ok, want, "{on_error:?}: {statuses:?}");
        let (status, _, _) = clients.post(0, Some(&before)).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "the first tier holds"
        );
        assert_degraded(proxy, true).await;
        assert_no_check_over_50ms(proxy);

        redis.restart();
        assert_eq!(
            metric_settles(proxy, DEGRADED, 0.0).await,
            0.0,
            "{on_error:?}"
        );
        assert_degraded(proxy, false).await;
        let statuses = clients.statuses(5, Some(&after)).await;
        assert_eq!(
            count(&statuses, StatusCode::OK),
            4,
            "{on_error:?}: {statuses:?}"
        );
        assert_eq!(
            redis.key_count("stp:rl:token_user:"),
            1,
            "counted in Redis again"
        );
    }
}

async fn assert_degraded(proxy: &TestProxy, degraded: bool) {
    assert_eq!(metric(proxy, DEGRADED), f64::from(u8::from(degraded)));
    let (status, _, body) = admin_get(admin_addr(proxy), "/readyz").await;
    assert_eq!(status, StatusCode::OK, "ready either way: {body}");
    assert_eq!(body.contains("degraded"), degraded, "{body}");
}

fn assert_no_check_over_50ms(proxy: &TestProxy) {
    let name = "stream_token_proxy_rate_limit_backend_duration_seconds";
    let within = metric(proxy, &format!("{name}_bucket{{le=\"0.05\"}}"));
    let all = metric(proxy, &format!("{name}_count"));
    assert!(all > 0.0);
    assert_eq!(within, all, "every check to Redis ended within 50 ms");
}

#[tokio::test]
async fn a_paused_redis_takes_the_timeout_path() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let url = redis.url();
    let fleet = fleet(1, |c| {
        use_redis(c, &url, OnError::Allow);
        c.limits.token_per_user = per_minute(2);
    })
    .await;
    let proxy = &fleet.proxies[0];
    let mut clients = Clients::of(&fleet).await;
    let token = fleet.key.sign(&claims("user_paused"));
    assert_eq!(clients.post(0, Some(&token)).await.0, StatusCode::OK);
    assert_eq!(redis.command(&["CLIENT", "PAUSE", "1500", "ALL"]), "+OK");
    for _ in 0..4 {
        let (status, _, took) = clients.post(0, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "on_error = allow");
        assert!(took < TIMEOUT + Duration::from_millis(300), "{took:?}");
    }
    let timeouts = "stream_token_proxy_rate_limit_backend_requests_total{outcome=\"timeout\"}";
    assert_eq!(
        metric(proxy, timeouts),
        2.0,
        "two timeouts open the circuit"
    );
    assert_eq!(metric(proxy, DEGRADED), 1.0);
    assert_no_check_over_50ms(proxy);
    // Once the pause is over, the probe closes the circuit and Redis counts again. (The two
    // checks that timed out were already sent: Redis runs them when the pause ends, so they
    // count against this user; a fresh one shows the limit.)
    assert_eq!(metric_settles(proxy, DEGRADED, 0.0).await, 0.0);
    let fresh = fleet.key.sign(&claims("user_after_pause"));
    let statuses = clients.statuses(3, Some(&fresh)).await;
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn script_flush_between_requests_is_harmless() {
    let Some(redis) = RedisServer::start(None) else {
        return;
    };
    let url = redis.url();
    let fleet = fleet(1, |c| {
        use_redis(c, &url, OnError::Allow);
        c.limits.token_per_user = per_minute(3);
    })
    .await;
    let mut clients = Clients::of(&fleet).await;
    let token = fleet.key.sign(&claims("user_flush"));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        assert_eq!(redis.command(&["SCRIPT", "FLUSH"]), "+OK");
        statuses.push(clients.post(0, Some(&token)).await.0);
    }
    assert_eq!(statuses[..3], [StatusCode::OK; 3]);
    assert_eq!(
        statuses[3],
        StatusCode::TOO_MANY_REQUESTS,
        "counted across flushes"
    );
    let proxy = &fleet.proxies[0];
    let errors = "stream_token_proxy_rate_limit_backend_requests_total{outcome=\"error\"}";
    assert_eq!(metric(proxy, errors), 0.0);
    assert_eq!(metric(proxy, DEGRADED), 0.0);
}

/// `rediss://` through rustls: with `ca_file` naming the server's (self-signed) certificate
/// the limits count in Redis; without it (the Mozilla roots) the server is not trusted, which
/// is the failure mode, not a panic.
#[tokio::test]
async fn rediss_with_a_private_ca_counts_over_tls_and_an_untrusted_server_is_the_failure_mode() {
    let dir = tempfile::tempdir().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let Some(redis) = RedisServer::start_tls(cert_path.clone(), key_path) else {
        return;
    };
    let url = format!("rediss://localhost:{}", redis.port);
    let fleet = fleet(1, |c| {
        use_redis(c, &url, OnError::Deny);
        c.limits.redis.ca_file = Some(cert_path.clone());
        c.limits.token_per_user = per_minute(2);
    })
    .await;
    let mut clients = Clients::of(&fleet).await;
    let token = fleet.key.sign(&claims("user_tls"));
    let statuses = clients.statuses(3, Some(&token)).await;
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );

    let untrusted = TestProxy::start(&fleet._upstream.url(), |c| {
        use_pem(c, &fleet.key.public_pem);
        use_redis(c, &url, OnError::Deny);
        c.limits.token_per_user = per_minute(2);
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&untrusted, DEGRADED), 1.0, "never connected");
    let mut sender = untrusted.client().h2_conn().await;
    let response = send_h2(
        &mut sender,
        token_request(Some(&token)).body(empty()).unwrap(),
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "on_error = deny"
    );
}

const RIGHT: &str = "right-redis-password-canary-41c7";
const WRONG: &str = "wrong-redis-password-canary-9e2b";

/// The binary at `trace` with the Redis password from `env`: a refused one is one clear log
/// line and `on_error = "deny"`; the right one (in `REDIS_URL`) counts in Redis. Neither
/// password is in any output.
#[tokio::test]
async fn a_wrong_password_is_a_clear_error_and_no_password_is_ever_logged() {
    let Some(redis) = RedisServer::start(Some(RIGHT)) else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    let extra = format!(
        "[log]\nlevel = \"trace\"\n[limits]\nbackend = \"redis\"\n\
         token_per_user = {{ requests = 1, period = \"1m\", burst = 2 }}\n\
         [limits.redis]\nurl = \"{}\"\non_error = \"deny\"\n",
        redis.url()
    );
    let wrong = [("REDIS_PASSWORD", WRONG), ("RUST_LOG", "trace")];
    let mut served = start(&upstream, &extra, &wrong).await;
    let line = served
        .wait_for_line("saying the password was refused", |l| {
            l.contains("authentication failed")
        })
        .await;
    assert!(
        line.contains("REDIS_PASSWORD"),
        "says what to check: {line}"
    );
    let statuses = token_statuses(&served, 2).await;
    assert_eq!(
        statuses,
        [StatusCode::TOO_MANY_REQUESTS; 2],
        "on_error = deny"
    );
    let mut output = stop(served).await;

    let url = format!("redis://:{RIGHT}@127.0.0.1:{}", redis.port);
    let right = [("REDIS_URL", url.as_str()), ("RUST_LOG", "trace")];
    served = start(&upstream, &extra, &right).await;
    served
        .wait_for_line("saying Redis answers", |l| l.contains("backend answering"))
        .await;
    let statuses = token_statuses(&served, 3).await;
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    output += &stop(served).await;
    assert!(output.contains("TRACE"), "trace logging was on");
    for password in [RIGHT, WRONG] {
        assert!(
            !output.contains(password),
            "{password} in the output:\n{output}"
        );
    }
    assert!(!output.contains("panicked"), "{output}");
}

async fn start(upstream: &FakeUpstream, extra: &str, env: &[(&str, &str)]) -> Served {
    Served::start_with(tempfile::tempdir().unwrap(), &upstream.url(), extra, env).await
}

async fn token_statuses(served: &Served, n: usize) -> Vec<StatusCode> {
    let config = served.dir.path().join("proxy.toml");
    let config = config.to_str().unwrap();
    let out = run(
        served.dir.path(),
        &["--config", config, "dev-token", "--sub", "user_pw"],
        STEP,
    );
    assert!(out.status.success(), "{}", out.all());
    let token = out.stdout.trim().to_string();
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(served.client().h1(post(&token)).await.status());
    }
    statuses
}

/// SIGTERM, then everything the process printed.
async fn stop(served: Served) -> String {
    served.signal("-TERM");
    let (_, lines, stderr) = served.exit().await;
    lines.join("\n") + "\n" + &stderr
}
