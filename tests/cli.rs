//! The real `stream-token-proxy` binary: graceful shutdown on SIGTERM, `check-config`, start-up
//! errors, `--help` and `--version`.
//!
//! The children come from `common::binary`: each in its own temp dir (so no `./proxy.toml` is
//! picked up by accident), with the override variables cleared, killed by PID when its guard
//! drops, every wait on it bounded.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::binary::*;
use common::*;
use http::StatusCode;

/// The `[auth]` and `[stream]` a production file needs (the secret file is written by
/// [`prod_secret`]).
const PROD_AUTH: &str = "[auth]\nissuer = \"https://clerk.example.com\"\n\
    jwks_url = \"https://clerk.example.com/.well-known/jwks.json\"\n\
    [stream]\napi_secret_file = \"stream-secret\"\n";

fn prod_secret(dir: &Path) {
    std::fs::write(dir.join("stream-secret"), "cli-test-secret\n").unwrap();
}

#[tokio::test]
async fn a_tls_key_readable_by_others_is_served_with_a_warning() {
    use std::os::unix::fs::PermissionsExt as _;
    let upstream = NodeUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    stream_token_proxy::testing::ensure_dev_certificate(&cert, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut served = Served::start_in(dir, &upstream.url(), "").await;
    let line = served
        .wait_for_line("warning about the key's mode", |l| {
            l.contains("readable by more than its owner")
        })
        .await;
    assert!(line.contains("644"), "{line}");
    let response = served.client().h1(get("/api/hello")).await;
    assert_eq!(response.status(), StatusCode::OK, "still serves");
}

// ---------- 13. graceful shutdown ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_refuses_new_ones_and_exits_0() {
    let upstream = NodeUpstream::start();
    let mut served = Served::start(&upstream.url(), "").await;
    let addr = served.addr;

    let client = served.client();
    let slow = tokio::spawn(async move {
        let response = client.h1(get("/_t/slow?ms=1500")).await;
        let status = response.status();
        (status, body_json(response).await, Instant::now())
    });
    wait_for_stats(upstream.port, "the slow request to reach Node", |s| {
        s["slow_inflight"] == 1
    })
    .await;

    let signalled = Instant::now();
    served.signal("-TERM");

    // Once the proxy says it stopped accepting, the listener is closed.
    served
        .wait_for_line("saying it stopped accepting", |l| {
            l.contains("stopped accepting")
        })
        .await;
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "a new connection after SIGTERM: {refused:?}"
    );

    let (status, json, finished) = tokio::time::timeout(STEP, slow)
        .await
        .expect("the slow request finishes")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["slept_ms"], 1500);
    assert!(finished > signalled, "it was still in flight at the signal");

    let (exit, log, stderr) = served.exit().await;
    assert_eq!(exit.code(), Some(0), "log: {log:#?}\nstderr: {stderr}");
    assert!(
        log.iter().any(|l| l.contains("all connections drained")),
        "the drain finished before the grace period: {log:#?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// ---------- the access log ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_access_log_has_one_line_per_request_and_no_secrets() {
    let upstream = NodeUpstream::start();
    let mut served = Served::start(&upstream.url(), "[log]\nformat = \"json\"\n").await;
    let client = served.client();

    let request = http::Request::get("/echo/logged?token=SECRET-IN-QUERY")
        .header("host", "localhost")
        .header("authorization", "Bearer SECRET-IN-AUTHORIZATION")
        .header("cookie", "session=SECRET-IN-COOKIE")
        .body(empty())
        .unwrap();
    let response = client.h1(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_bytes(response).await;

    let line = served
        .wait_for_line("for GET /echo/logged", |l| l.contains("/echo/logged"))
        .await;
    let entry: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(entry["target"], "access", "{entry}");
    assert_eq!(entry["method"], "GET", "{entry}");
    assert_eq!(entry["path"], "/echo/logged", "no query string: {entry}");
    assert_eq!(entry["status"], 200, "{entry}");
    assert_eq!(entry["bytes"], body.len(), "{entry}");
    assert_eq!(entry["complete"], true, "{entry}");
    assert!(entry["upstream_ms"].is_number(), "{entry}");
    assert!(entry["duration_ms"].is_number(), "{entry}");

    // A proxy-made error is logged with its code.
    let response = client.h1(get("/_t/status/204")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let raw = client
        .raw(
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
            STEP,
        )
        .await;
    assert!(raw.starts_with(b"HTTP/1.1 501 "));
    let line = served
        .wait_for_line("for the CONNECT", |l| l.contains("\"CONNECT\""))
        .await;
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["status"], 501, "{entry}");
    assert_eq!(entry["error"], "not_implemented", "{entry}");

    served.signal("-TERM");
    let (exit, log, _) = served.exit().await;
    assert_eq!(exit.code(), Some(0));
    let all = log.join("\n");
    for secret in [
        "SECRET-IN-QUERY",
        "SECRET-IN-AUTHORIZATION",
        "SECRET-IN-COOKIE",
    ] {
        assert!(!all.contains(secret), "{secret} was logged: {all}");
    }
    for line in &log {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "a log line that is not JSON: {line}");
    }
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("\"target\":\"access\""))
            .count(),
        3,
        "one access line per request: {log:#?}"
    );
}

// ---------- 14. configuration errors ----------

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "good.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:4443\"\n[upstream]\nurl = \"http://127.0.0.1:3002\"\n{PROD_AUTH}"
        ),
    );
    prod_secret(dir.path());
    // The certificate (certs/tls.crt by default) does not exist: check-config says so...
    let out = run(dir.path(), &["--config", &config, "check-config"], STEP);
    assert_eq!(out.status.code(), Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("cannot read the TLS certificate"),
        "{}",
        out.all()
    );
    assert!(out.stderr.contains("tls.crt"), "{}", out.all());
    // ...unless told to leave the TLS files alone (CI validating a ConfigMap).
    let out = run(
        dir.path(),
        &["--config", &config, "check-config", "--no-mounted-files"],
        STEP,
    );
    assert!(out.status.success(), "{}", out.all());
    assert!(
        out.stdout
            .contains("configuration OK: listen 127.0.0.1:4443 (TLS)"),
        "{}",
        out.all()
    );
    assert!(out.stdout.contains("upstream http://127.0.0.1:3002"));
    // Validating needs no certificate; none is generated for a non-dev file either.
    assert!(!dir.path().join("certs").exists());
}

#[test]
fn check_config_loads_the_public_key_file_and_the_redis_ca_as_start_would() {
    let dir = tempfile::tempdir().unwrap();
    prod_secret(dir.path());
    // TLS off: only the files under test are mounted ones.
    let base = "[tls]\nenabled = false\n[upstream]\nurl = \"http://127.0.0.1:3002\"\n\
        [stream]\napi_secret_file = \"stream-secret\"\n\
        [auth]\nissuer = \"https://clerk.example.com\"\n";
    let check = |name: &str, text: &str, args: &[&str]| {
        let config = write(dir.path(), name, text);
        let mut argv = vec!["--config", config.as_str(), "check-config"];
        argv.extend_from_slice(args);
        run(dir.path(), &argv, STEP)
    };
    // Refused (exit 2), saying `says`.
    let refused = |out: Finished, says: &str| {
        assert_eq!(out.status.code(), Some(2), "{}", out.all());
        assert!(out.stderr.contains(says), "{}", out.all());
    };
    // A public key file that is not there: said now, with its path, not at the first start.
    let key = format!("{base}public_key_file = \"clerk-key.pem\"\n");
    refused(check("key.toml", &key, &[]), "clerk-key.pem");
    // One that is there but holds no key.
    std::fs::write(dir.path().join("clerk-key.pem"), "not a key\n").unwrap();
    refused(check("key.toml", &key, &[]), ""); // whatever it says
    // CI, where the mounted files do not exist, skips them (the old flag name still works).
    for flag in ["--no-mounted-files", "--no-tls-files"] {
        let out = check("key.toml", &key, &[flag]);
        assert!(out.status.success(), "{flag}: {}", out.all());
    }
    // The Redis CA: a file with no certificate in it would only show as every TLS connection
    // to Redis failing; check-config (and start) refuse it.
    std::fs::write(
        dir.path().join("redis-ca.pem"),
        "-----BEGIN PRIVATE KEY-----\n",
    )
    .unwrap();
    let redis = format!(
        "{base}jwks_url = \"https://clerk.example.com/.well-known/jwks.json\"\n\
         [limits]\nbackend = \"redis\"\n\
         [limits.redis]\nurl = \"rediss://127.0.0.1:6390\"\nca_file = \"redis-ca.pem\"\n"
    );
    refused(check("redis.toml", &redis, &[]), "holds no PEM certificate");
    std::fs::remove_file(dir.path().join("redis-ca.pem")).unwrap();
    refused(
        check("redis.toml", &redis, &[]),
        "cannot read limits.redis.ca_file",
    );
}

#[test]
fn check_config_warns_about_an_issuer_that_cannot_match_clerks() {
    let dir = tempfile::tempdir().unwrap();
    prod_secret(dir.path());
    let text = format!("[upstream]\nurl = \"http://127.0.0.1:3002\"\n{PROD_AUTH}");
    let issuer = |value: &str| {
        let text = text.replace("https://clerk.example.com\"", &format!("{value}\""));
        let config = write(dir.path(), "issuer.toml", &text);
        run(
            dir.path(),
            &["--config", &config, "check-config", "--no-mounted-files"],
            STEP,
        )
    };
    let slash = issuer("https://clerk.example.com/");
    // Valid (exit 0), but said: a trailing slash refuses every Clerk token.
    assert!(slash.status.success(), "{}", slash.all());
    assert!(
        slash
            .stderr
            .contains("warning: auth.issuer `https://clerk.example.com/` ends with `/`"),
        "{}",
        slash.all()
    );
    let plain = issuer("http://clerk.example.com");
    assert!(plain.status.success(), "{}", plain.all());
    assert!(
        plain.stderr.contains("is not an https:// URL"),
        "{}",
        plain.all()
    );
    let exact = issuer("https://clerk.example.com");
    assert!(!exact.stderr.contains("warning"), "{}", exact.all());
}

#[test]
fn check_config_names_file_line_column_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown-key.toml",
            "[server]\nlisten = \"127.0.0.1:4443\"\nlistne = \"127.0.0.1:4444\"\n",
            "line 3, column 1",
            "unknown field `listne`",
        ),
        (
            "bad-duration.toml",
            "[upstream]\nurl = \"http://127.0.0.1:3002\"\nresponse_timeout = \"5 parsecs\"\n",
            "line 3, column 20",
            "not a duration",
        ),
        (
            "bad-url.toml",
            "dev = true\n\n[upstream]\nurl = \"https://127.0.0.1:3002\"\n",
            "line 4, column 7",
            "must be plain `http://`",
        ),
        (
            "bad-type.toml",
            "[upstream]\npool_max_idle = \"lots\"\n",
            "line 2, column 17",
            "invalid type",
        ),
    ];
    for (name, text, position, problem) in cases {
        let path = write(dir.path(), name, text);
        let out = run(dir.path(), &["--config", &path, "check-config"], STEP);
        assert!(!out.status.success(), "{name} was accepted: {}", out.all());
        for want in [path.as_str(), position, problem] {
            assert!(
                out.stderr.contains(want),
                "{name}: `{want}` missing from {}",
                out.all()
            );
        }
        assert_no_panic(&out);

        // `serve` (the default command) refuses it the same way, before binding anything.
        let out = run(dir.path(), &["--config", &path], STEP);
        assert!(
            !out.status.success(),
            "{name}: serve started: {}",
            out.all()
        );
        assert!(out.stderr.contains(problem), "{}", out.all());
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml").display().to_string();
    let out = run(dir.path(), &["--config", &missing, "check-config"], STEP);
    assert!(!out.status.success(), "{}", out.all());
    assert!(out.stderr.contains(&missing), "{}", out.all());
    assert!(out.stderr.contains("cannot read the file"), "{}", out.all());
    assert_no_panic(&out);
}

#[test]
fn a_missing_certificate_stops_a_production_config_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write(
        dir.path(),
        "prod.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[tls]\ncert = \"missing/tls.crt\"\nkey = \"missing/tls.key\"\n{PROD_AUTH}"
        ),
    );
    prod_secret(dir.path());
    let out = run(dir.path(), &["--config", &config, "serve"], STEP);
    assert!(!out.status.success(), "{}", out.all());
    let all = out.all();
    assert!(all.contains("cannot start"), "{all}");
    assert!(all.contains("cannot read the TLS certificate"), "{all}");
    assert!(all.contains("tls.crt"), "names the file: {all}");
    assert_no_panic(&out);
    // Not a dev config: nothing may be generated in its place.
    assert!(!dir.path().join("missing").exists());
    assert!(
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200)
        )
        .is_err()
    );
}

// ---------- 15. --help and --version ----------

#[test]
fn help_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["--help"], STEP);
    assert!(out.status.success(), "{}", out.all());
    for want in ["Usage:", "serve", "check-config", "--config", "--version"] {
        assert!(out.stdout.contains(want), "`{want}` missing: {}", out.all());
    }

    let out = run(dir.path(), &["--version"], STEP);
    assert!(out.status.success(), "{}", out.all());
    assert_eq!(
        out.stdout.trim(),
        format!("stream-token-proxy {}", env!("CARGO_PKG_VERSION"))
    );

    let out = run(dir.path(), &["no-such-command"], STEP);
    assert!(!out.status.success(), "{}", out.all());
    assert!(out.stderr.contains("no-such-command"), "{}", out.all());
}

/// One table of environment overrides: `--help` prints it, and the README's table is it, row
/// for row and in order.
#[test]
fn the_environment_table_drives_help_and_the_readme() {
    use stream_token_proxy::config::ENV_OVERRIDES;
    let dir = tempfile::tempdir().unwrap();
    let help = run(dir.path(), &["--help"], STEP).stdout;
    for o in ENV_OVERRIDES {
        let line = help.lines().find(|l| l.trim_start().starts_with(o.var));
        let line = line.unwrap_or_else(|| panic!("--help does not list {}:\n{help}", o.var));
        assert!(line.ends_with(o.sets), "--help: {line:?} vs {:?}", o.sets);
    }
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).unwrap();
    let table = readme
        .split("| variable | overrides |\n| --- | --- |\n")
        .nth(1)
        .expect("the README's environment table");
    let rows: Vec<&str> = table.lines().take_while(|l| l.starts_with('|')).collect();
    let expected: Vec<String> = ENV_OVERRIDES
        .iter()
        .map(|o| format!("| `{}` | {} |", o.var, o.sets))
        .collect();
    assert_eq!(rows, expected, "the README's environment table");
}
