//! The proxy's Stream tokens are byte-for-byte what Stream's official SDK mints for the same
//! user, `exp` and `iat` (`StreamChat#createToken`), so Stream accepts them exactly as it accepts
//! the SDK's. The SDK is installed from `tests/stream-sdk/package-lock.json` on first use.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::clerk::*;
use common::*;
use http::{Request, StatusCode};

/// Runs a command to completion within `limit`, killing it (by PID) if it takes longer.
fn run_bounded(command: &mut Command, limit: Duration) -> std::process::Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done_tx.send(());
        output
    });
    if done_rx.recv_timeout(limit).is_err() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
        panic!("{command:?} took longer than {limit:?}");
    }
    waiter.join().unwrap().expect("command output")
}

fn sdk_dir() -> std::path::PathBuf {
    manifest_dir().join("tests/stream-sdk")
}

/// `npm ci` the SDK if this checkout does not have it yet.
fn ensure_sdk() {
    if sdk_dir()
        .join("node_modules/stream-chat/package.json")
        .exists()
    {
        return;
    }
    let started = Instant::now();
    let output = run_bounded(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(sdk_dir()),
        Duration::from_secs(300),
    );
    assert!(
        output.status.success(),
        "npm ci in tests/stream-sdk failed ({:?}): {}",
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sdk_create_token(user_id: &str, exp: u64, iat: u64) -> String {
    let output = run_bounded(
        Command::new("node")
            .arg("create-token.js")
            .args([user_id, &exp.to_string(), &iat.to_string()])
            .env("STREAM_API_SECRET", TEST_STREAM_SECRET)
            .current_dir(sdk_dir()),
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn proxy_tokens_equal_the_official_sdks_create_token_byte_for_byte() {
    ensure_sdk();
    let upstream = NodeUpstream::start();
    let key = ClerkKey::generate("ins_sdk");
    let pem = key.public_pem.clone();
    let proxy = TestProxy::start(&upstream.url(), |c| use_pem(c, &pem)).await;

    for user in ["user_2abcXYZ", "a", "someone@example-org_1"] {
        let request = Request::post("/api/stream/token")
            .header("host", "localhost")
            .header(
                "authorization",
                format!("Bearer {}", key.sign(&claims(user))),
            )
            .body(empty())
            .unwrap();
        let response = proxy.client().h1(request).await;
        assert_eq!(response.status(), StatusCode::OK);
        let json = body_json(response).await;
        let ours = json["token"].as_str().unwrap();
        let payload: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(ours.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        let (exp, iat) = (
            payload["exp"].as_u64().unwrap(),
            payload["iat"].as_u64().unwrap(),
        );
        assert_eq!(ours, sdk_create_token(user, exp, iat), "user {user}");
    }
}
