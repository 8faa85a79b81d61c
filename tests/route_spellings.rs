//! The differential path test (issue 14): no spelling of `POST /api/stream/token` reaches the
//! old, unauthenticated token handler behind the proxy.
//!
//! The real Node upstream plays the old app: for every request it asks each way a Node app may
//! find its route (WHATWG `new URL(req.url, 'http://' + host)`, legacy `url.parse`, a plain split
//! at `?`, each also decoded once and cut at `;`, matched case-insensitively without trailing
//! slashes) whether it would reach the old handler, and counts those that would
//! (`/_t/old-token-hits`). Thousands of generated spellings go through the proxy over HTTP/1.1
//! and HTTP/2; every one must be answered by the proxy (the token route or a 400) or forwarded
//! byte for byte to a path no router takes for the token route.

mod common;

use std::collections::BTreeMap;

use common::h2raw::{H2Reply, h2_raw};
use common::*;
use http::{Request, Uri};
use hyper::client::conn::{http1, http2};

/// How many generated spellings each protocol sends (on top of the hand-picked ones).
const GENERATED: usize = 3000;

/// Spellings from the hostile-client review and the README's rule.
const HAND_PICKED: &[&str] = &[
    "/api/stream/token",
    "/api\\stream\\token",
    "/api/stream\\token",
    "//x/api/stream/token",
    "/\\x/api/stream/token",
    "//evil.example/api/stream/token",
    "/API/Stream/Token/",
    "/api/stream/token;x",
    "/api/stream/%74oken",
    "/api/%2e%2e/api/stream/token",
    "/api/x/..\\stream/token",
    "/api/stream/token%3Bx",
    "/api%5Cstream%5Ctoken",
    "/%2561pi/stream/token",
    "/api/stream;x/token",
];

/// A small deterministic generator (xorshift32): the same spellings on every run.
struct Spellings(u32);

impl Spellings {
    fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        choices[self.0 as usize % choices.len()]
    }

    /// One segment name spelled some way a router may still read as `name`.
    fn segment(&mut self, name: &str) -> String {
        let first = name.as_bytes()[0];
        let rest = &name[1..];
        match self.pick(&[
            "plain",
            "upper",
            "title",
            "pct",
            "pct-all",
            "double-pct",
            "pct-lower",
        ]) {
            "plain" => name.to_owned(),
            "upper" => name.to_ascii_uppercase(),
            "title" => format!("{}{rest}", (first as char).to_ascii_uppercase()),
            "pct" => format!("%{first:02X}{rest}"),
            "pct-lower" => format!("%{first:02x}{rest}"),
            "pct-all" => name.bytes().map(|b| format!("%{b:02X}")).collect(),
            _ => format!("%25{first:02X}{rest}"),
        }
    }

    fn next(&mut self) -> String {
        let lead = self.pick(&[
            "/",
            "/",
            "/",
            "//",
            "/\\",
            "\\",
            "//x/",
            "//evil.example/",
            "/\\x/",
            "/./",
            "/../",
            "/%2e/",
            "/%2E%2E/",
            "/x/../",
            "/x/%2e%2e/",
            "/%2F",
            "///",
            "/\\/",
            "/;x/../",
            "/x\\..\\",
            "/.%2e/",
            "/x/..%2F",
            "/%5C",
        ]);
        let seps = [
            "/", "/", "/", "\\", "//", "/./", "%2F", "%2f", "%5C", "%5c", "/x/../", "\\.\\",
            "/%2e/", ";x/", "/;/", "\\\\", "/x\\..\\",
        ];
        let tails = [
            "",
            "",
            "/",
            "\\",
            ";x",
            ";x=1/y",
            "/.",
            "/..",
            "?x",
            "?userId=victim",
            "#x",
            "%2F",
            "%5C",
            "/x",
            "%3Bx",
            "/%2e",
            "s",
            "%3b",
            "/;",
            "//",
            "/x/..",
            "%20",
        ];
        let api = self.segment("api");
        let stream = self.segment("stream");
        let token = self.segment("token");
        let (a, b, tail) = (self.pick(&seps), self.pick(&seps), self.pick(&tails));
        format!("{lead}{api}{a}{stream}{b}{token}{tail}")
    }
}

/// What happened to one spelling.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// The proxy answered it (the token route's 401/405, or a 400): Node never saw it.
    Answered(u16, String),
    /// Node answered it: forwarded, and Node saw exactly this target.
    Forwarded,
    /// Forwarded, but Node saw another target than the one sent.
    Altered(String),
    /// The client library could not send it, or the connection failed (counted, not a pass).
    NotSent(String),
}

async fn outcome(
    response: Result<http::Response<hyper::body::Incoming>, String>,
    target: &str,
) -> Outcome {
    let response = match response {
        Ok(response) => response,
        Err(e) => return Outcome::NotSent(e),
    };
    let status = response.status().as_u16();
    let json = body_json(response).await;
    match json["url"].as_str() {
        Some(url) if url == target.split('#').next().unwrap_or(target) => Outcome::Forwarded,
        Some(url) => Outcome::Altered(url.to_owned()),
        None => Outcome::Answered(status, json["error"].as_str().unwrap_or("?").to_owned()),
    }
}

fn post(uri: Uri) -> Request<TestBody> {
    Request::post(uri)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(full(r#"{"userId":"victim"}"#))
        .expect("a request")
}

/// Sends `target` as raw bytes on a connection of its own.
async fn raw_h1(client: &TlsClient, target: &str) -> Outcome {
    let body = r#"{"userId":"victim"}"#;
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let bytes = client.raw(request.as_bytes(), STEP).await;
    if !bytes.starts_with(b"HTTP/1.") {
        return Outcome::NotSent(format!("raw: no response ({} bytes)", bytes.len()));
    }
    let response = RawResponse::parse(&bytes);
    if response.body.is_empty() {
        // hyper's own answer to a target it cannot parse.
        return Outcome::Answered(response.status, "hyper: unparsable target".into());
    }
    let json = response.json();
    match json["url"].as_str() {
        Some(url) if url == target => Outcome::Forwarded,
        Some(url) => Outcome::Altered(url.to_owned()),
        None => Outcome::Answered(
            response.status,
            json["error"].as_str().unwrap_or("?").into(),
        ),
    }
}

/// Sends `target` as the `:path` of raw HTTP/2 frames on a connection of its own.
async fn raw_h2(client: &TlsClient, target: &str) -> Outcome {
    let fields: [(&str, &[u8]); 5] = [
        (":method", b"POST"),
        (":scheme", b"https"),
        (":authority", b"localhost"),
        (":path", target.as_bytes()),
        ("content-type", b"application/json"),
    ];
    match h2_raw(client, &fields, Some(br#"{"userId":"victim"}"#)).await {
        reply @ (H2Reply::Reset(_) | H2Reply::GoAway(_)) => {
            Outcome::Answered(0, format!("h2 layer: {reply:?}"))
        }
        other => Outcome::NotSent(format!("raw h2: {other:?}")),
    }
}

/// Sends each target over HTTP/1.1, on one connection until the proxy closes it.
async fn over_h1(client: &TlsClient, targets: &[String]) -> Vec<Outcome> {
    let mut conn: Option<http1::SendRequest<TestBody>> = None;
    let mut outcomes = Vec::with_capacity(targets.len());
    for target in targets {
        let Ok(uri) = Uri::try_from(target.as_str()) else {
            // hyper's client refuses to send it; a raw client can.
            outcomes.push(raw_h1(client, target).await);
            continue;
        };
        let alive = match &mut conn {
            Some(send) => send.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            conn = Some(client.h1_conn().await);
        }
        let Some(send) = conn.as_mut() else {
            unreachable!("a connection was just opened")
        };
        let response = tokio::time::timeout(STEP, send.send_request(post(uri)))
            .await
            .map_err(|_| "timeout".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if response.is_err() {
            conn = None;
        }
        outcomes.push(outcome(response, target).await);
    }
    outcomes
}

/// Sends each target as an HTTP/2 `:path`, on one connection (reopened if the proxy closes it).
async fn over_h2(client: &TlsClient, targets: &[String]) -> Vec<Outcome> {
    let mut conn: Option<http2::SendRequest<TestBody>> = None;
    let mut outcomes = Vec::with_capacity(targets.len());
    for target in targets {
        let uri = Uri::builder()
            .scheme("https")
            .authority("localhost")
            .path_and_query(target.as_str())
            .build();
        let Ok(uri) = uri else {
            // hyper's client refuses to send it; raw frames can.
            outcomes.push(raw_h2(client, target).await);
            continue;
        };
        // h2 ends a connection with GOAWAY (ENHANCE_YOUR_CALM) once it has reset 256 streams
        // itself, and a refused request whose body was still arriving is one: a client then
        // sends again on a new connection, and so does this one, once.
        let mut response = Err("not sent".to_owned());
        for _ in 0..2 {
            let send = open_h2(&mut conn, client).await;
            let mut request = post(uri.clone());
            request.headers_mut().remove("host");
            response = tokio::time::timeout(STEP, send.send_request(request))
                .await
                .map_err(|_| "timeout".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()));
            if response.is_ok() {
                break;
            }
            conn = None;
        }
        outcomes.push(outcome(response, target).await);
    }
    outcomes
}

/// The open HTTP/2 connection, or a new one if the proxy closed it.
async fn open_h2<'a>(
    conn: &'a mut Option<http2::SendRequest<TestBody>>,
    client: &TlsClient,
) -> &'a mut http2::SendRequest<TestBody> {
    let alive = match conn.as_mut() {
        Some(send) => send.ready().await.is_ok(),
        None => false,
    };
    if !alive {
        *conn = Some(client.h2_conn().await);
    }
    conn.as_mut().expect("a connection was just opened")
}

/// A line per kind of outcome, with counts: the test's picture of the rule.
fn summary(outcomes: &[Outcome]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes {
        let key = match o {
            Outcome::Answered(status, code) => format!("answered {status} {code}"),
            Outcome::Forwarded => "forwarded unchanged".into(),
            Outcome::Altered(_) => "forwarded ALTERED".into(),
            Outcome::NotSent(why) => format!("not sent ({why})"),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("  {n:5}  {k}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn no_spelling_of_the_token_path_reaches_the_old_handler() {
    let upstream = NodeUpstream::start();
    let proxy = TestProxy::start(&upstream.url(), |_| {}).await;
    let client = proxy.client();
    let mut generator = Spellings(0x9e37_79b9);
    let mut targets: Vec<String> = HAND_PICKED.iter().map(|s| s.to_string()).collect();
    targets.extend((0..GENERATED).map(|_| generator.next()));

    let started = std::time::Instant::now();
    let h1 = over_h1(&client, &targets).await;
    let h1_time = started.elapsed();
    let h2 = over_h2(&client, &targets).await;
    eprintln!("h1 {h1_time:?}, h2 {:?}", started.elapsed() - h1_time);
    let hits = node_call(upstream.port, "GET", "/_t/old-token-hits").await;
    let hits = hits["hits"].as_array().expect("hits").clone();
    eprintln!(
        "{} spellings each way\nHTTP/1.1:\n{}\nHTTP/2:\n{}",
        targets.len(),
        summary(&h1),
        summary(&h2)
    );
    assert!(
        hits.is_empty(),
        "{} reached the old token handler: {hits:?}",
        hits.len()
    );

    for (protocol, outcomes) in [("h1", &h1), ("h2", &h2)] {
        let mut failures = Vec::new();
        for (target, outcome) in targets.iter().zip(outcomes.iter()) {
            match outcome {
                Outcome::Answered(status, code) => {
                    let expected = matches!(
                        (status, code.as_str()),
                        (401, "missing_credentials")
                            | (400, "bad_request" | "hyper: unparsable target")
                            | (0, "h2 layer: Reset(1)")
                    );
                    if !expected {
                        failures.push(format!("{target:?}: answered {status} {code}"));
                    }
                }
                Outcome::Forwarded => {}
                other => failures.push(format!("{target:?}: {other:?}")),
            }
        }
        assert!(
            failures.is_empty(),
            "{protocol}: {} spelling(s) not handled as the rule says:\n{}",
            failures.len(),
            failures
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    proxy.stop().await;
}
