//! The real `stream-token-proxy` binary as a child process: run to completion, or serving on a
//! free loopback port with its log readable line by line. Every child runs in its own temp dir
//! with the override variables cleared, is killed by PID when its guard drops, and every wait on
//! it is bounded.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{ChildGuard, STEP, TlsClient, clear_overrides};

pub const BIN: &str = env!("CARGO_BIN_EXE_stream-token-proxy");

/// The binary under test: this build's, or `STP_BIN` (`bench/hostile-memory.sh` measures an
/// older build with the same tests).
pub fn proxy_command(dir: &Path, args: &[&str]) -> Command {
    let bin = std::env::var("STP_BIN").unwrap_or_else(|_| BIN.to_owned());
    let mut command = Command::new(bin);
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
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn all(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Reads a pipe to the end on a thread, so a chatty child never blocks on a full pipe.
pub fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Runs `args` in `dir` to completion; the child is killed if it takes longer than `limit`.
pub fn run(dir: &Path, args: &[&str], limit: Duration) -> Finished {
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
pub fn wait_exit(child: &mut ChildGuard, limit: Duration) -> Option<ExitStatus> {
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
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

pub fn assert_no_panic(out: &Finished) {
    let all = out.all();
    assert!(!all.contains("panicked"), "{all}");
    assert!(!all.contains("stack backtrace"), "{all}");
}

// ---------- the binary, serving ----------

/// `stream-token-proxy serve` running on a free loopback port in its own temp dir, with its
/// log (stdout) readable line by line.
pub struct Served {
    pub child: ChildGuard,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every log line read so far.
    pub log: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Served {
    /// Starts the binary in front of `upstream_url`; `extra` is appended to the config file.
    /// Returns once the port accepts connections.
    pub async fn start(upstream_url: &str, extra: &str) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), upstream_url, extra).await
    }

    /// The same in `dir`, which may hold files the test prepared (a certificate, say).
    pub async fn start_in(dir: tempfile::TempDir, upstream_url: &str, extra: &str) -> Self {
        Self::start_with(dir, upstream_url, extra, &[]).await
    }

    /// The same, with environment variables set for the child (overrides, `RUST_LOG`).
    pub async fn start_with(
        dir: tempfile::TempDir,
        upstream_url: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
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
        let mut command = proxy_command(dir.path(), &["--config", &config, "serve"]);
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("binary runs");
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

    pub fn client(&self) -> TlsClient {
        TlsClient::new(self.addr, &self.dir.path().join("cert.pem"))
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.0.id().to_string();
        let kill = Command::new("kill")
            .args([signal, pid.as_str()])
            .status()
            .expect("kill runs");
        assert!(kill.success());
    }

    /// Moves the log lines printed so far into `log`.
    pub fn read_log(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    /// Waits (bounded) for a log line that satisfies `want`, and returns it.
    pub async fn wait_for_line(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
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
    pub async fn exit(mut self) -> (ExitStatus, Vec<String>, String) {
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
