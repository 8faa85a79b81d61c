//! The real `stream-token-proxy` binary: graceful shutdown on SIGTERM, `check-config`, start-up
//! errors, `--help` and `--version`.
//!
//! Every child runs in its own temp dir (so no `./proxy.toml` is picked up by accident), with
//! the override variables cleared, is killed by PID when its guard drops, and every wait on it
//! is bounded.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_stream-token-proxy");

/// The `[auth]` and `[stream]` a production file needs (the secret file is written by
/// [`prod_secret`]).
const PROD_AUTH: &str = "[auth]\nissuer = \"https://clerk.example.com\"\n\
    jwks_url = \"https://clerk.example.com/.well-known/jwks.json\"\n\
    [stream]\napi_secret_file = \"stream-secret\"\n";

fn prod_secret(dir: &Path) {
    std::fs::write(dir.join("stream-secret"), "cli-test-secret\n").unwrap();
}

fn proxy_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A panic would print its backtrace: the tests check there is none.
        .env("RUST_BACKTRACE", "1");
    clear_overrides(&mut command);
    command
}

/// What a finished child printed.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn all(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Reads a pipe to the end on a thread, so a chatty child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Runs `args` in `dir` to completion; the child is killed if it takes longer than `limit`.
fn run(dir: &Path, args: &[&str], limit: Duration) -> Finished {
    let mut child = proxy_command(dir, args).spawn().expect("binary runs");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let mut guard = ChildGuard(child);
    let status = wait_exit(&mut guard, limit)
        .unwrap_or_else(|| panic!("`{}` did not exit within {limit:?}", args.join(" ")));
    drop(guard);
    Finished {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Polls the child until it exits or `limit` passes.
fn wait_exit(child: &mut ChildGuard, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that was free a moment ago (bind to port 0, note it, close it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn assert_no_panic(out: &Finished) {
    let all = out.all();
    assert!(!all.contains("panicked"), "{all}");
    assert!(!all.contains("stack backtrace"), "{all}");
}

// ---------- the binary, serving ----------

/// `stream-token-proxy serve` running on a free loopback port in its own temp dir, with its
/// log (stdout) readable line by line.
struct Served {
    child: ChildGuard,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every log line read so far.
    log: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Served {
    /// Starts the binary in front of `upstream_url`; `extra` is appended to the config file.
    /// Returns once the port accepts connections.
    async fn start(upstream_url: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = write(
            dir.path(),
            "proxy.toml",
            &format!(
                "dev = true\n[server]\nlisten = \"{addr}\"\nshutdown_grace = \"15s\"\n\
                 [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\
                 [auth]\ndev_signing_key = \"dev-signing-key.pem\"\n\
                 [stream]\napi_secret_file = \"dev-stream-secret\"\n\
                 [upstream]\nurl = \"{upstream_url}\"\n{extra}"
            ),
        );
        let mut child = proxy_command(dir.path(), &["--config", &config, "serve"])
            .spawn()
            .expect("binary runs");
        let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = lines_tx.send(line);
            }
        });
        let stderr = Some(drain(child.stderr.take().unwrap()));
        let mut served = Self {
            child: ChildGuard(child),
            addr,
            dir,
            lines,
            log: Vec::new(),
            stderr,
        };
        // Ready when the port accepts (bounded; fails fast if the process died).
        let deadline = Instant::now() + STEP;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = served.child.0.try_wait().unwrap() {
                served.read_log();
                panic!(
                    "the proxy exited ({status}) before listening: {:#?}",
                    served.log
                );
            }
            assert!(Instant::now() < deadline, "the proxy never listened");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        served
    }

    fn client(&self) -> TlsClient {
        TlsClient::new(self.addr, &self.dir.path().join("cert.pem"))
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.0.id().to_string();
        let kill = Command::new("kill")
            .args([signal, pid.as_str()])
            .status()
            .expect("kill runs");
        assert!(kill.success());
    }

    /// Moves the log lines printed so far into `log`.
    fn read_log(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    /// Waits (bounded) for a log line that satisfies `want`, and returns it.
    async fn wait_for_line(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.log.iter().find(|l| want(l)) {
            return line.clone();
        }
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.log.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Ok(None) | Err(_) => panic!("no log line {what}: {:#?}", self.log),
            }
        }
    }

    /// Waits (bounded) for the process to exit; returns its status and stderr.
    async fn exit(mut self) -> (ExitStatus, Vec<String>, String) {
        let mut child = self.child;
        let status = tokio::task::spawn_blocking(move || {
            let status = wait_exit(&mut child, STEP);
            drop(child);
            status
        })
        .await
        .unwrap()
        .expect("the proxy exits in time");
        let stderr = self.stderr.take().unwrap().join().unwrap();
        // The stdout thread ends with the process; collect what is left.
        while let Some(line) = self.lines.recv().await {
            self.log.push(line);
        }
        (status, self.log, stderr)
    }
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
        &["--config", &config, "check-config", "--no-tls-files"],
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
fn check_config_warns_about_an_issuer_that_cannot_match_clerks() {
    let dir = tempfile::tempdir().unwrap();
    prod_secret(dir.path());
    let text = format!("[upstream]\nurl = \"http://127.0.0.1:3002\"\n{PROD_AUTH}");
    let issuer = |value: &str| {
        let text = text.replace("https://clerk.example.com\"", &format!("{value}\""));
        let config = write(dir.path(), "issuer.toml", &text);
        run(
            dir.path(),
            &["--config", &config, "check-config", "--no-tls-files"],
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
