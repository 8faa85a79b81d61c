//! Micro-benchmarks of the per-request work (issue 6): verifying a Clerk session token cold and
//! from the cache, minting a Stream token (fresh and reused), rewriting a forwarded request's
//! headers, matching the token path, and a rate-limit check.
//!
//!     cargo bench --bench hot_path
//!
//! Keys are generated at start (no key material in the repo).

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Uri, Version};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use stream_token_proxy::config::{
    AuthConfig, ForwardingConfig, LimitsConfig, PositiveDuration, RateConfig, Secret, StreamConfig,
};
use stream_token_proxy::testing::Limits;
use stream_token_proxy::testing::StreamMinter;
use stream_token_proxy::testing::is_token_path;
use stream_token_proxy::testing::{ClientConn, prepare_request_headers, strip_hop_by_hop};
use stream_token_proxy::testing::{KeyStore, Verifier, unix_now};

const ISSUER: &str = "https://clerk.bench.example";

fn session_setup() -> (Verifier, Vec<String>) {
    let pair = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
    let keys = KeyStore::from_pem(pair.public_key_pem().as_bytes(), Default::default()).unwrap();
    let config = AuthConfig {
        issuer: Some(ISSUER.into()),
        authorized_parties: vec!["http://localhost:8081".into()],
        ..AuthConfig::default()
    };
    let verifier = Verifier::new(&config, Arc::new(keys));
    let now = unix_now();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("ins_bench".into());
    // Clerk-shaped tokens, one per user.
    let tokens = (0..64)
        .map(|i| {
            let claims = serde_json::json!({
                "azp": "http://localhost:8081", "exp": now + 3600, "iat": now, "iss": ISSUER,
                "nbf": now - 5, "sid": format!("sess_{i}"), "sub": format!("user_2bench{i:04}"),
            });
            jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
        })
        .collect();
    (verifier, tokens)
}

fn verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (verifier, tokens) = session_setup();
    let now = unix_now();
    let mut i = 0;
    c.bench_function("verify session token, cold (RS256 + claims)", |b| {
        b.iter(|| {
            i = (i + 1) % tokens.len();
            runtime
                .block_on(verifier.verify_fresh(black_box(&tokens[i]), now))
                .unwrap()
        })
    });
    runtime
        .block_on(verifier.verify_at(&tokens[0], now))
        .unwrap();
    c.bench_function("verify session token, cached (SHA-256 + lookup)", |b| {
        b.iter(|| {
            runtime
                .block_on(verifier.verify_at(black_box(&tokens[0]), now))
                .unwrap()
        })
    });
}

fn mint(c: &mut Criterion) {
    let minter = StreamMinter::new(
        &StreamConfig::default(),
        &Secret::new("bench-stream-api-secret"),
    );
    let now = unix_now();
    c.bench_function("mint Stream token (HS256)", |b| {
        b.iter(|| minter.sign(black_box("user_2benchuser"), now + 3600, now - 5))
    });
    let user: Arc<str> = Arc::from("user_2benchuser");
    minter.token_for(&user, now);
    c.bench_function("Stream token, reused from the cache", |b| {
        b.iter(|| minter.token_for(black_box(&user), now))
    });
}

fn headers(c: &mut Criterion) {
    let mut template = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "okhttp/4.12.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"),
        ("cookie", "a=1; b=2"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "203.0.113.9"),
        ("content-type", "application/json"),
        ("content-length", "42"),
    ] {
        template.append(k, v.parse().unwrap());
    }
    let uri: Uri = "/api/messages?channel=general".parse().unwrap();
    let conn = ClientConn {
        peer: "198.51.100.7:40000".parse().unwrap(),
        tls: true,
    };
    let options = ForwardingConfig::default();
    c.bench_function(
        "rewrite forwarded request headers (hop-by-hop + X-Forwarded-*)",
        |b| {
            b.iter_batched_ref(
                || template.clone(),
                |h| {
                    prepare_request_headers(h, &uri, Version::HTTP_11, None, conn, &options)
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        },
    );
    c.bench_function("strip hop-by-hop from a response", |b| {
        b.iter_batched_ref(|| template.clone(), strip_hop_by_hop, BatchSize::SmallInput)
    });
    c.bench_function("route: is_token_path on a forwarded path", |b| {
        b.iter(|| is_token_path(black_box("/api/messages/123/reactions")))
    });
}

fn limits(c: &mut Criterion) {
    let config = LimitsConfig {
        token_per_ip: RateConfig::new(1_000_000, PositiveDuration::secs(1), 1_000_000),
        ..LimitsConfig::default()
    };
    let limits = Limits::new(&config);
    let ip: IpAddr = "203.0.113.9".parse().unwrap();
    // The local backend's check never waits: one poll finishes it.
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    c.bench_function("rate limit: per-IP check", |b| {
        b.iter(|| {
            let check = std::pin::pin!(limits.check_token_ip(black_box(ip)));
            matches!(check.poll(&mut context), std::task::Poll::Ready(Ok(())))
        })
    });
}

criterion_group!(benches, verify, mint, headers, limits);
criterion_main!(benches);
