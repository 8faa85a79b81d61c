//! `POST /api/stream/token` against keys generated here, a JWKS server on loopback and the real
//! Node upstream (issue 3).

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::clerk::*;
use common::*;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use stream_token_proxy::config::PositiveDuration;

fn post_json(token: &str, body: &str) -> Request<TestBody> {
    token_request(Some(token))
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// Decodes a Stream token after checking its HS256 signature under the test secret.
fn verify_stream_token(token: &str) -> (Value, Value) {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(TEST_STREAM_SECRET.as_bytes()),
        &validation,
    )
    .expect("the Stream token verifies with HMAC-SHA256 under the secret");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    (header, data.claims)
}

#[tokio::test]
async fn valid_session_gets_a_stream_token_with_exactly_the_right_claims() {
    let f = fixture(|_| {}).await;
    let response = f
        .proxy
        .client()
        .h1(post(&f.key.sign(&claims("user_2abc"))))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let json = body_json(response).await;
    assert_eq!(json["user_id"], "user_2abc");
    assert_eq!(json["api_key"], "test-api-key");

    let (header, stream_claims) = verify_stream_token(json["token"].as_str().unwrap());
    assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}));
    let object = stream_claims.as_object().unwrap();
    assert_eq!(
        object.len(),
        3,
        "exactly user_id, iat, exp: {stream_claims}"
    );
    assert_eq!(stream_claims["user_id"], "user_2abc");
    let (iat, exp) = (
        stream_claims["iat"].as_u64().unwrap(),
        stream_claims["exp"].as_u64().unwrap(),
    );
    let now = now();
    assert!(
        iat + 5 >= now.saturating_sub(2) && iat + 5 <= now + 1,
        "iat is now - 5 s"
    );
    assert_eq!(exp - iat, 3600 + 5, "exp = now + TTL");
    assert_eq!(json["expires_at"].as_u64(), Some(exp));
}

#[tokio::test]
async fn every_bad_credential_gets_its_status_and_code() {
    let f = fixture(|_| {}).await;
    let key = &f.key;
    let stranger = ClerkKey::generate("ins_unknown");
    let valid = key.sign(&claims("user_1"));
    let now = now() as i64;

    // (what, Authorization header value or None, status, error code)
    let cases: Vec<(&str, Option<String>, StatusCode, &str)> = vec![
        (
            "no header",
            None,
            StatusCode::UNAUTHORIZED,
            "missing_credentials",
        ),
        (
            "Basic scheme",
            Some("Basic dXNlcjpwYXNz".into()),
            StatusCode::UNAUTHORIZED,
            "invalid_authorization",
        ),
        (
            "Bearer and nothing",
            Some("Bearer ".into()),
            StatusCode::UNAUTHORIZED,
            "invalid_authorization",
        ),
        (
            "two tokens",
            Some(format!("Bearer {valid} {valid}")),
            StatusCode::UNAUTHORIZED,
            "invalid_authorization",
        ),
        (
            "garbage",
            Some("Bearer not-a-jwt".into()),
            StatusCode::UNAUTHORIZED,
            "malformed_token",
        ),
        (
            "bad base64 header",
            Some("Bearer !!!.e30.sig".into()),
            StatusCode::UNAUTHORIZED,
            "malformed_token",
        ),
        (
            "alg none",
            Some(format!("Bearer {}", unsigned_token(&claims("user_1")))),
            StatusCode::UNAUTHORIZED,
            "unsupported_algorithm",
        ),
        (
            "HS256 keyed with the public key",
            Some(format!(
                "Bearer {}",
                hs256_with_public_key(key, &claims("user_1"))
            )),
            StatusCode::UNAUTHORIZED,
            "unsupported_algorithm",
        ),
        (
            "tampered signature",
            Some(format!("Bearer {}", tampered_signature(&valid))),
            StatusCode::UNAUTHORIZED,
            "bad_signature",
        ),
        (
            "payload swapped for another user",
            Some(format!(
                "Bearer {}",
                tampered_payload(&valid, &claims("user_admin"))
            )),
            StatusCode::UNAUTHORIZED,
            "bad_signature",
        ),
        (
            "right kid, wrong key",
            Some(format!(
                "Bearer {}",
                stranger.sign_as(&key.kid, &claims("user_1"))
            )),
            StatusCode::UNAUTHORIZED,
            "bad_signature",
        ),
        (
            "unknown kid",
            Some(format!("Bearer {}", stranger.sign(&claims("user_1")))),
            StatusCode::UNAUTHORIZED,
            "unknown_key",
        ),
        (
            "expired beyond the leeway",
            Some(format!(
                "Bearer {}",
                key.sign(&claims_with("user_1", &[("exp", json!(now - 10))]))
            )),
            StatusCode::UNAUTHORIZED,
            "token_expired",
        ),
        (
            "nbf in the future",
            Some(format!(
                "Bearer {}",
                key.sign(&claims_with("user_1", &[("nbf", json!(now + 60))]))
            )),
            StatusCode::UNAUTHORIZED,
            "token_not_yet_valid",
        ),
        (
            "iat in the future",
            Some(format!(
                "Bearer {}",
                key.sign(&claims_with("user_1", &[("iat", json!(now + 60))]))
            )),
            StatusCode::UNAUTHORIZED,
            "token_not_yet_valid",
        ),
        (
            "wrong issuer",
            Some(format!(
                "Bearer {}",
                key.sign(&claims_with(
                    "user_1",
                    &[("iss", json!("https://evil.example"))]
                ))
            )),
            StatusCode::UNAUTHORIZED,
            "wrong_issuer",
        ),
        (
            "no issuer",
            Some(format!(
                "Bearer {}",
                key.sign(&claims_with("user_1", &[("iss", Value::Null)]))
            )),
            StatusCode::UNAUTHORIZED,
            "wrong_issuer",
        ),
        (
            "azp not allowed",
            Some(format!(
                "Bearer {}",
                key.sign(&claims_with(
                    "user_1",
                    &[("azp", json!("https://evil.example"))]
                ))
            )),
            StatusCode::FORBIDDEN,
            "unauthorized_party",
        ),
        (
            "azp missing",
            Some(format!(
                "Bearer {}",
                key.sign(&claims_with("user_1", &[("azp", Value::Null)]))
            )),
            StatusCode::FORBIDDEN,
            "unauthorized_party",
        ),
        (
            "sub missing",
            Some(format!(
                "Bearer {}",
                key.sign(&claims_with("user_1", &[("sub", Value::Null)]))
            )),
            StatusCode::UNAUTHORIZED,
            "invalid_subject",
        ),
        (
            "sub Stream would reject",
            Some(format!(
                "Bearer {}",
                key.sign(&claims_with("user_1", &[("sub", json!("user 1/../x"))]))
            )),
            StatusCode::UNAUTHORIZED,
            "invalid_subject",
        ),
        (
            "exp missing",
            Some(format!(
                "Bearer {}",
                key.sign(&claims_with("user_1", &[("exp", Value::Null)]))
            )),
            StatusCode::UNAUTHORIZED,
            "malformed_token",
        ),
        (
            "exp not a number",
            Some(format!(
                "Bearer {}",
                key.sign(&claims_with("user_1", &[("exp", json!("tomorrow"))]))
            )),
            StatusCode::UNAUTHORIZED,
            "malformed_token",
        ),
    ];

    let client = f.proxy.client();
    for (what, authorization, status, code) in cases {
        let mut builder = Request::post("/api/stream/token").header("host", "localhost");
        if let Some(value) = &authorization {
            builder = builder.header("authorization", value);
        }
        let response = client.h1(builder.body(empty()).unwrap()).await;
        assert_eq!(response.status(), status, "{what}");
        let www = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        if status == StatusCode::UNAUTHORIZED {
            let www = www.unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate"));
            assert!(www.starts_with("Bearer"), "{what}: {www}");
            if code != "missing_credentials" {
                assert!(www.contains("error=\""), "{what}: {www}");
            }
        }
        let json = body_json(response).await;
        assert_eq!(json["error"], code, "{what}: {json}");
        let message = json["message"].as_str().unwrap();
        assert!(!message.is_empty(), "{what}");
        if let Some(value) = &authorization {
            let token = value.split(' ').nth(1).unwrap_or_default();
            assert!(
                token.len() < 8 || !message.contains(token),
                "{what}: the token is echoed"
            );
        }
    }

    // Expired, but within the 5 s leeway: accepted.
    let within = key.sign(&claims_with("user_1", &[("exp", json!(now - 2))]));
    assert_eq!(client.h1(post(&within)).await.status(), StatusCode::OK);

    // Two Authorization headers.
    let two = token_request(Some(&valid))
        .header("authorization", format!("Bearer {valid}"))
        .body(empty())
        .unwrap();
    let response = client.h1(two).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body_json(response).await["error"], "invalid_authorization");
}

#[tokio::test]
async fn the_old_routes_body_is_checked_against_the_verified_user() {
    let f = fixture(|_| {}).await;
    let client = f.proxy.client();
    let token = f.key.sign(&claims("user_7"));

    let same = client
        .h1(post_json(
            &token,
            r#"{"userId":"user_7","userName":"Seven"}"#,
        ))
        .await;
    assert_eq!(same.status(), StatusCode::OK);
    assert_eq!(body_json(same).await["user_id"], "user_7");

    let other = client
        .h1(post_json(&token, r#"{"userId":"user_admin"}"#))
        .await;
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    assert_eq!(body_json(other).await["error"], "user_mismatch");

    let name_only = client
        .h1(post_json(&token, r#"{"userName":"whoever"}"#))
        .await;
    assert_eq!(name_only.status(), StatusCode::OK);

    let cases = [
        (
            r#"{"userId":"user_7""#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("[1,2]", StatusCode::BAD_REQUEST, "bad_request"),
        (r#"{"userId":7}"#, StatusCode::BAD_REQUEST, "bad_request"),
    ];
    for (body, status, code) in cases {
        let response = client.h1(post_json(&token, body)).await;
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(body_json(response).await["error"], code, "{body}");
    }

    let text = token_request(Some(&token))
        .header("content-type", "text/plain")
        .body(full("userId=user_7"))
        .unwrap();
    let response = client.h1(text).await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body_json(response).await["error"], "unsupported_media_type");

    let big = format!(r#"{{"userId":"user_7","pad":"{}"}}"#, "x".repeat(20 * 1024));
    let response = client.h1(post_json(&token, &big)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Too large without a Content-Length (HTTP/2 data frames): refused once over the limit.
    let response = client.h2(post_json(&token, &big)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let empty_json = client.h1(post_json(&token, "")).await;
    assert_eq!(empty_json.status(), StatusCode::OK, "an empty body is fine");
}

#[tokio::test]
async fn other_methods_get_405_and_other_spellings_of_the_path_never_reach_node() {
    let f = fixture(|_| {}).await;
    let client = f.proxy.client();
    let response = client
        .h1(Request::get("/api/stream/token")
            .header("host", "localhost")
            .body(empty())
            .unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST, OPTIONS");

    let before = body_json(client.h1(get("/_t/stats")).await).await["requests"]
        .as_u64()
        .unwrap();
    // A leading `//` is refused outright: Node's URL parser would read a host there.
    for (path, status) in [
        ("/api/stream/token/", StatusCode::UNAUTHORIZED),
        ("/API/STREAM/TOKEN", StatusCode::UNAUTHORIZED),
        ("//api/stream/token", StatusCode::BAD_REQUEST),
        ("/api/stream/%74oken", StatusCode::UNAUTHORIZED),
        ("/api\\stream\\token", StatusCode::UNAUTHORIZED),
    ] {
        let request = Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(full(r#"{"userId":"victim"}"#))
            .unwrap();
        let response = client.h1(request).await;
        assert_eq!(response.status(), status, "{path} is answered by the proxy");
    }
    let after = body_json(client.h1(get("/_t/stats")).await).await["requests"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before + 1, "only the second /_t/stats reached Node");
}

#[tokio::test]
async fn a_rotated_key_is_accepted_without_restart() {
    let f =
        fixture(|c| c.auth.jwks_refetch_cooldown = PositiveDuration(Duration::from_millis(300)))
            .await;
    let client = f.proxy.client();
    let next = ClerkKey::generate("ins_key_2");
    let token = next.sign(&claims("user_rot"));
    // Not published yet: unknown (this uses the cool-down).
    let response = client.h1(post(&token)).await;
    assert_eq!(body_json(response).await["error"], "unknown_key");

    f.jwks.set_keys(&[&f.key, &next]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let response = client.h1(post(&token)).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the new kid was fetched on demand"
    );
    // The old key still works too.
    assert_eq!(
        client
            .h1(post(&f.key.sign(&claims("user_old"))))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn jwks_down_at_start_gives_503_then_recovers_while_forwarding_works() {
    let upstream = NodeUpstream::start();
    let key = ClerkKey::generate("ins_key_1");
    let jwks = JwksServer::start(&[&key]).await;
    jwks.set_up(false);
    let url = jwks.url();
    let proxy = TestProxy::start(&upstream.url(), |c| use_jwks(c, &url)).await;
    let client = proxy.client();

    let response = client.h1(post(&key.sign(&claims("user_1")))).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(body_json(response).await["error"], "keys_unavailable");
    assert_eq!(
        client.h1(get("/api/hello")).await.status(),
        StatusCode::OK,
        "forwarding is unaffected"
    );

    jwks.set_up(true);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        status = client.h1(post(&key.sign(&claims("user_1")))).await.status();
        if status != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK, "recovered once the JWKS answered");
}

#[tokio::test]
async fn jwks_down_later_keeps_the_cached_keys() {
    let f =
        fixture(|c| c.auth.jwks_refresh_interval = PositiveDuration(Duration::from_millis(200)))
            .await;
    f.jwks.set_up(false);
    let hits = f.jwks.hits();
    // Let a few background refreshes fail.
    for _ in 0..50 {
        if f.jwks.hits() >= hits + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(f.jwks.hits() >= hits + 2, "refreshes were attempted");
    let fresh = f.key.sign(&claims("user_after_outage"));
    assert_eq!(
        f.proxy.client().h1(post(&fresh)).await.status(),
        StatusCode::OK
    );
}

/// `token` with its header swapped for Clerk's header naming `kid` (the signature no longer
/// matches, which an unknown `kid` never gets to).
fn naming_kid(token: &str, kid: &str) -> String {
    let header = json!({"alg": "RS256", "cat": CAT_SESSION, "kid": kid, "typ": "JWT"});
    let rest = token.split_once('.').unwrap().1;
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
}

/// Sends every token at once, spread over ten HTTP/2 connections; the answers, in order.
async fn send_all(client: &TlsClient, tokens: Vec<String>) -> Vec<(StatusCode, String)> {
    // 32 connections: at most 32 streams each (the proxy's default) keeps all of them in
    // flight at once; one answer first on each, so the client knows that limit before the
    // burst (streams sent before the SETTINGS arrive would be refused).
    let mut connections = Vec::new();
    for _ in 0..32 {
        let mut h2 = client.h2_conn().await;
        let hello = Request::get("https://localhost/api/hello")
            .body(empty())
            .unwrap();
        send_h2(&mut h2, hello).await;
        connections.push(h2);
    }
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let mut sender = connections[i % connections.len()].clone();
            tokio::spawn(async move {
                let request = sender.send_request(post(&token));
                let response = tokio::time::timeout(STEP, request)
                    .await
                    .expect("answered in time")
                    .expect("h2 response");
                let status = response.status();
                (
                    status,
                    body_json(response).await["error"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn a_key_published_during_the_cool_down_is_accepted_within_it_while_a_flood_of_kids_stays_bounded()
 {
    // The shipped cool-down and JWKS timeout (5 s each), and the issue's time line.
    let f = fixture(|_| {}).await;
    let cooldown = stream_token_proxy::config::AuthConfig::default()
        .jwks_refetch_cooldown
        .0;
    assert_eq!(cooldown, Duration::from_secs(5));
    let client = f.proxy.client();
    let stranger = ClerkKey::generate("ins_stranger");
    let key_y = ClerkKey::generate("ins_key_y");
    let y_token = key_y.sign(&claims("user_y"));
    let signed = stranger.sign(&claims("user_random"));
    let flood: Vec<String> = (0..1000)
        .map(|i| naming_kid(&signed, &format!("kid_random_{i}")))
        .collect();
    let before = f.jwks.hits();

    // t0: a token naming the unknown kid X fetches the JWKS once.
    let t0 = tokio::time::Instant::now();
    let x_token = stranger.sign_as("ins_key_x", &claims("user_x"));
    let x = answer(&client, &x_token).await;
    assert_eq!(x, (StatusCode::UNAUTHORIZED, "unknown_key".into()));
    assert_eq!(f.jwks.hits(), before + 1, "X was looked for");

    // Meanwhile, 1,000 random kids.
    let flooding = {
        let client = f.proxy.client();
        tokio::spawn(async move { send_all(&client, flood).await })
    };

    // t0 + 1 s: Clerk publishes Y. t0 + 2 s: the first token signed with it.
    tokio::time::sleep_until(t0 + Duration::from_secs(1)).await;
    f.jwks.set_keys(&[&f.key, &key_y]);
    tokio::time::sleep_until(t0 + Duration::from_secs(2)).await;
    let y = answer(&client, &y_token).await;
    let accepted_at = t0.elapsed();
    assert_eq!(y, (StatusCode::OK, String::new()), "the Y token");
    assert!(
        accepted_at <= Duration::from_secs(7),
        "accepted {accepted_at:?} after t0"
    );
    // It waited for the cool-down since X's fetch to end: no fetch in between.
    assert!(accepted_at >= cooldown, "accepted {accepted_at:?} after t0");

    for (i, answer) in flooding.await.unwrap().into_iter().enumerate() {
        assert_eq!(
            answer,
            (StatusCode::UNAUTHORIZED, "unknown_key".into()),
            "random kid {i}"
        );
    }
    let elapsed = t0.elapsed();
    let fetched = f.jwks.hits() - before;
    let allowed = 1 + (elapsed.as_millis() / cooldown.as_millis()) as usize;
    assert!(
        fetched <= allowed,
        "{fetched} JWKS fetches in {elapsed:?} (one per {cooldown:?} allowed: {allowed})"
    );
}

#[tokio::test]
async fn fifty_concurrent_requests_for_a_new_kid_share_one_fetch() {
    let cooldown = Duration::from_millis(500);
    let f = fixture(|c| c.auth.jwks_refetch_cooldown = PositiveDuration(cooldown)).await;
    let key_z = ClerkKey::generate("ins_key_z");
    f.jwks.set_keys(&[&f.key, &key_z]);
    let tokens = (0..50)
        .map(|i| key_z.sign(&claims(&format!("user_z{i}"))))
        .collect();
    let before = f.jwks.hits();
    for (i, answer) in send_all(&f.proxy.client(), tokens)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(answer, (StatusCode::OK, String::new()), "request {i}");
    }
    assert_eq!(f.jwks.hits(), before + 1, "one fetch for all fifty");
    // And none left scheduled behind them.
    tokio::time::sleep(cooldown + Duration::from_millis(300)).await;
    assert_eq!(f.jwks.hits(), before + 1, "no trailing fetch");
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_is_refused_after_the_refresh_even_when_cached() {
    let cooldown = Duration::from_millis(300);
    let f = fixture(|c| c.auth.jwks_refetch_cooldown = PositiveDuration(cooldown)).await;
    let client = f.proxy.client();
    let key_b = ClerkKey::generate("ins_key_b");
    f.jwks.set_keys(&[&f.key, &key_b]);
    let cached = key_b.sign(&claims("user_b"));
    let ok = (StatusCode::OK, String::new());
    assert_eq!(answer(&client, &cached).await, ok, "B fetched on demand");
    let hits = f.jwks.hits();
    assert_eq!(answer(&client, &cached).await, ok, "from the cache");
    assert_eq!(f.jwks.hits(), hits);

    // Clerk drops B. Until the proxy refreshes, it cannot know.
    f.jwks.set_keys(&[&f.key]);
    assert_eq!(answer(&client, &cached).await, ok, "before the refresh");

    // A refresh (here: a token naming an unknown kid, once the cool-down allows).
    tokio::time::sleep(cooldown + Duration::from_millis(100)).await;
    let unknown = key_b.sign_as("ins_key_unknown", &claims("user_b"));
    let refused = (StatusCode::UNAUTHORIZED, "unknown_key".to_string());
    assert_eq!(answer(&client, &unknown).await, refused);
    assert_eq!(f.jwks.hits(), hits + 1, "refreshed");

    // B's tokens are refused at once, the cached one too, without another fetch.
    let started = std::time::Instant::now();
    assert_eq!(
        answer(&client, &cached).await,
        refused,
        "the cached session"
    );
    let fresh = key_b.sign(&claims("user_b2"));
    assert_eq!(answer(&client, &fresh).await, refused, "a new B token");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(f.jwks.hits(), hits + 1, "a removed kid fetches nothing");
    // The key that stayed works as before.
    assert_eq!(answer(&client, &f.key.sign(&claims("user_a"))).await, ok);
}

#[tokio::test]
async fn a_cached_verification_is_refused_after_expiry() {
    let f = fixture(|c| c.auth.leeway = Duration::ZERO).await;
    let client = f.proxy.client();
    let token = f
        .key
        .sign(&claims_with("user_short", &[("exp", json!(now() + 1))]));
    assert_eq!(client.h1(post(&token)).await.status(), StatusCode::OK);
    assert_eq!(
        client.h1(post(&token)).await.status(),
        StatusCode::OK,
        "served from the cache"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let response = client.h1(post(&token)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body_json(response).await["error"], "token_expired");
}

#[tokio::test]
async fn the_same_user_gets_the_same_stream_token_within_the_margin() {
    let f = fixture(|_| {}).await;
    let client = f.proxy.client();
    let first = body_json(client.h1(post(&f.key.sign(&claims("user_same")))).await).await;
    // A different session token (new sid) for the same user.
    let other_session = f
        .key
        .sign(&claims_with("user_same", &[("sid", json!("sess_other"))]));
    let second = body_json(client.h2(post(&other_session)).await).await;
    assert_eq!(first["token"], second["token"]);
    assert_eq!(first["expires_at"], second["expires_at"]);
    let someone_else = body_json(client.h1(post(&f.key.sign(&claims("user_other")))).await).await;
    assert_ne!(first["token"], someone_else["token"]);
}

#[tokio::test]
async fn a_static_pem_key_verifies_without_any_network() {
    let upstream = NodeUpstream::start();
    let key = ClerkKey::generate("ins_pem");
    let pem = key.public_pem.clone();
    let proxy = TestProxy::start(&upstream.url(), |c| use_pem(c, &pem)).await;
    let response = proxy
        .client()
        .h1(post(&key.sign(&claims("user_pem"))))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let stranger = ClerkKey::generate("ins_pem");
    let response = proxy
        .client()
        .h1(post(&stranger.sign(&claims("user_pem"))))
        .await;
    assert_eq!(body_json(response).await["error"], "bad_signature");
}

#[tokio::test]
async fn cors_preflight_and_responses_for_allowed_origins_only() {
    let f = fixture(|c| c.cors.allowed_origins = vec!["https://app.example".into()]).await;
    let client = f.proxy.client();
    let preflight = |origin: &str| {
        Request::options("/api/stream/token")
            .header("host", "localhost")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .body(empty())
            .unwrap()
    };
    let ok = client.h1(preflight("https://app.example")).await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        ok.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        ok.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    assert_eq!(ok.headers()["vary"], "Origin");
    assert!(
        !ok.headers()
            .contains_key("access-control-allow-credentials")
    );

    let refused = client.h1(preflight("https://evil.example")).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        refused
            .headers()
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-"))
    );
    assert_eq!(body_json(refused).await["error"], "origin_not_allowed");

    let token = f.key.sign(&claims("user_web"));
    let with_origin = token_request(Some(&token))
        .header("origin", "https://app.example")
        .body(empty())
        .unwrap();
    let response = client.h1(with_origin).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(response.headers()["vary"], "Origin");

    let unauthorized = token_request(None)
        .header("origin", "https://app.example")
        .body(empty())
        .unwrap();
    let response = client.h1(unauthorized).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example",
        "errors are readable too"
    );

    let other = token_request(Some(&token))
        .header("origin", "https://evil.example")
        .body(empty())
        .unwrap();
    let response = client.h1(other).await;
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );

    let mobile = client.h1(post(&token)).await;
    assert_eq!(mobile.status(), StatusCode::OK);
    assert!(!mobile.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn the_session_cookie_counts_only_when_enabled() {
    let on = fixture(|c| c.auth.session_cookie = true).await;
    let token = on.key.sign(&claims("user_cookie"));
    let request = |token: &str| {
        Request::post("/api/stream/token")
            .header("host", "localhost")
            .header("cookie", format!("theme=dark; __session={token}"))
            .body(empty())
            .unwrap()
    };
    let response = on.proxy.client().h1(request(&token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response).await["user_id"], "user_cookie");

    let off = fixture(|_| {}).await;
    let token = off.key.sign(&claims("user_cookie"));
    let response = off.proxy.client().h1(request(&token)).await;
    assert_eq!(body_json(response).await["error"], "missing_credentials");
}
