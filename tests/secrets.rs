//! Nothing secret reaches the logs: the real binary runs at `trace` level with a known Stream
//! secret, serves the token route and forwards requests carrying tokens and cookies; then its
//! whole output is searched for each secret (issue 3, and issue 7's secret-leak check).

mod common;

use std::time::Duration;

use common::binary::*;
use common::*;
use http::{Request, StatusCode};

const SECRET: &str = "leak-canary-stream-secret-7f3a9c";
const COOKIE: &str = "leak-canary-cookie-52e1";
const QUERY: &str = "leak-canary-query-9d0b";

async fn run_and_capture(format: &str) -> (String, Vec<String>) {
    let upstream = NodeUpstream::start();
    let extra = format!("[log]\nlevel = \"trace\"\nformat = \"{format}\"\n");
    let env = [("STREAM_API_SECRET", SECRET), ("RUST_LOG", "trace")];
    let served =
        Served::start_with(tempfile::tempdir().unwrap(), &upstream.url(), &extra, &env).await;
    let config = served.dir.path().join("proxy.toml");
    let config = config.to_str().unwrap();
    let token_out = run(
        served.dir.path(),
        &["--config", config, "dev-token", "--sub", "user_leak"],
        STEP,
    );
    assert!(token_out.status.success(), "{}", token_out.all());
    let session = token_out.stdout.trim().to_string();
    let client = served.client();

    let token_request = |authorization: String| {
        Request::post(format!("/api/stream/token?note={QUERY}"))
            .header("host", "localhost")
            .header("authorization", authorization)
            .header("cookie", format!("__session={COOKIE}"))
            .body(empty())
            .unwrap()
    };
    let ok = client.h1(token_request(format!("Bearer {session}"))).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let stream_token = body_json(ok).await["token"].as_str().unwrap().to_string();
    let h2 = client.h2(token_request(format!("Bearer {session}"))).await;
    assert_eq!(h2.status(), StatusCode::OK);
    let tampered = format!("{}x", &session[..session.len() - 1]);
    let refused = client.h1(token_request(format!("Bearer {tampered}"))).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let forwarded = Request::get(format!("/echo?token={QUERY}"))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {session}"))
        .header("cookie", format!("sid={COOKIE}"))
        .body(empty())
        .unwrap();
    let echo = body_json(client.h1(forwarded).await).await;
    assert!(
        echo["rawHeaders"].to_string().contains(COOKIE),
        "forwarded unchanged to Node"
    );

    // Targets the proxy refuses or rewrites, each with the canary in its query: the log names
    // none of them whole (absolute-form with an empty path, userinfo, a leading //).
    for target in [
        format!("http://localhost?access_token={QUERY}"),
        format!("http://evil@localhost/?access_token={QUERY}"),
        format!("//evil.example/api/stream/token?access_token={QUERY}"),
        format!("*?access_token={QUERY}"),
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let answer = client.raw(request.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with(b"HTTP/1.1 "), "{target}: {answer:?}");
    }

    served.signal("-TERM");
    let (_, lines, stderr) = served.exit().await;
    let log = lines.join("\n") + "\n" + &stderr;
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_string();
    let secrets = vec![
        SECRET.to_string(),
        session.clone(),
        signature(&session),
        tampered,
        stream_token.clone(),
        signature(&stream_token),
        COOKIE.to_string(),
        QUERY.to_string(),
    ];
    (log, secrets)
}

#[tokio::test]
async fn trace_logs_hold_no_secret_token_cookie_or_query_text() {
    for format in ["text", "json"] {
        let (log, secrets) = run_and_capture(format).await;
        assert!(
            log.contains("TRACE") || log.contains("\"TRACE\""),
            "trace logging was on ({format})"
        );
        assert!(
            log.contains("user_leak"),
            "the access log names the user ({format})"
        );
        for secret in &secrets {
            assert!(
                !log.contains(secret.as_str()),
                "{format} log contains {secret:?}:\n{log}"
            );
        }
    }
}
