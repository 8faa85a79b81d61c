//! Nothing secret reaches the logs: the real binary runs at `trace` level with a known Stream
//! secret, serves the token route and forwards requests carrying tokens and cookies; then its
//! whole output is searched for each secret (issue 3, and issue 7's secret-leak check).

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::free_port;
use common::*;
use http::{Request, StatusCode};

const SECRET: &str = "leak-canary-stream-secret-7f3a9c";
const COOKIE: &str = "leak-canary-cookie-52e1";
const QUERY: &str = "leak-canary-query-9d0b";

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stream-token-proxy"));
    clear_overrides(&mut command);
    command
}

fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the proxy did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn run_and_capture(format: &str) -> (String, Vec<String>) {
    let upstream = NodeUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            dev = true
            [server]
            listen = "127.0.0.1:{port}"
            shutdown_grace = "2s"
            [tls]
            cert = "cert.pem"
            key = "key.pem"
            [admin]
            listen = "127.0.0.1:0"
            [upstream]
            url = "{}"
            [auth]
            dev_signing_key = "dev-signing-key.pem"
            [stream]
            api_key = "public-api-key"
            [log]
            level = "trace"
            format = "{format}"
            "#,
            upstream.url()
        ),
    )
    .unwrap();

    let token_out = binary()
        .args([
            "--config",
            config.to_str().unwrap(),
            "dev-token",
            "--sub",
            "user_leak",
        ])
        .output()
        .unwrap();
    assert!(
        token_out.status.success(),
        "{}",
        String::from_utf8_lossy(&token_out.stderr)
    );
    let session = String::from_utf8(token_out.stdout)
        .unwrap()
        .trim()
        .to_string();

    let log_path = dir.path().join("proxy.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let child = binary()
        .args(["--config", config.to_str().unwrap()])
        .env("STREAM_API_SECRET", SECRET)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut child = ChildGuard(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr);
    let client = TlsClient::new(addr, &dir.path().join("cert.pem"));

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

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the proxy did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut log = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
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
