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

/// The variables that would override the config file under test.
const OVERRIDES: [&str; 6] = [
    "PROXY_LISTEN",
    "UPSTREAM_URL",
    "TLS_CERT",
    "TLS_KEY",
    "LOG_FORMAT",
    "RUST_LOG",
];

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
    for var in OVERRIDES {
        command.env_remove(var);
    }
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

// ---------- 13. graceful shutdown ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_refuses_new_ones_and_exits_0() {
    let upstream = NodeUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = write(
        dir.path(),
        "proxy.toml",
        &format!(
            r#"
            dev = true
            [server]
            listen = "{addr}"
            shutdown_grace = "15s"
            [tls]
            cert = "cert.pem"
            key = "key.pem"
            [upstream]
            url = "{}"
            "#,
            upstream.url()
        ),
    );
    let mut child = proxy_command(dir.path(), &["--config", &config, "serve"])
        .spawn()
        .expect("binary runs");
    let pid = child.id();
    // The log (stdout) line by line, to wait on what the proxy says it did.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
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
    let stderr = drain(child.stderr.take().unwrap());
    let mut child = ChildGuard(child);

    // Ready when the port accepts.
    let deadline = Instant::now() + STEP;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the proxy exited before listening"
        );
        assert!(Instant::now() < deadline, "the proxy never listened");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let client = TlsClient::new(addr, &dir.path().join("cert.pem"));
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            let response = client.h1(get("/_t/slow?ms=1500")).await;
            let status = response.status();
            (status, body_json(response).await, Instant::now())
        }
    });
    wait_for_stats(upstream.port, "the slow request to reach Node", |s| {
        s["slow_inflight"] == 1
    })
    .await;

    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());

    // Once the proxy says it stopped accepting, the listener is closed.
    let mut seen = Vec::new();
    let stopped = tokio::time::timeout(STEP, async {
        while let Some(line) = lines.recv().await {
            let done = line.contains("stopped accepting");
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(stopped, Ok(true), "no 'stopped accepting' in {seen:#?}");
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

    let exit = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut child, STEP);
        drop(child);
        status
    })
    .await
    .unwrap()
    .expect("the proxy exits after the drain");
    let stderr = stderr.join().unwrap();
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    assert_eq!(exit.code(), Some(0), "log: {seen:#?}\nstderr: {stderr}");
    assert!(
        seen.iter().any(|l| l.contains("all connections drained")),
        "the drain finished before the grace period: {seen:#?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// ---------- 14. configuration errors ----------

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "good.toml",
        "[server]\nlisten = \"127.0.0.1:4443\"\n[upstream]\nurl = \"http://127.0.0.1:3002\"\n",
    );
    let out = run(dir.path(), &["--config", &config, "check-config"], STEP);
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
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[tls]\ncert = \"missing/tls.crt\"\nkey = \"missing/tls.key\"\n"
        ),
    );
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
