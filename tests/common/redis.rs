//! A real `redis-server` (Debian's package, which `.ci/run` installs) per test: on a free
//! loopback port, persistence off, in its own temp dir, stopped by its PID (on drop too), and
//! restartable on the same port with an empty state. Commands go over a plain TCP connection
//! in RESP, so the tests need nothing but the server.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::binary::free_port;
use super::{ChildGuard, STEP, require_tool};

pub struct RedisServer {
    binary: PathBuf,
    child: Option<ChildGuard>,
    pub port: u16,
    password: Option<String>,
    /// `rediss://` only: the certificate and key it serves (then `command` cannot talk to it).
    tls: Option<(PathBuf, PathBuf)>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A running server, or `None` where the test may skip (see [`require_tool`]).
    pub fn start(password: Option<&str>) -> Option<Self> {
        Self::start_with(password, None)
    }

    /// A server speaking only TLS on its port, with this certificate and key.
    pub fn start_tls(cert: PathBuf, key: PathBuf) -> Option<Self> {
        Self::start_with(None, Some((cert, key)))
    }

    fn start_with(password: Option<&str>, tls: Option<(PathBuf, PathBuf)>) -> Option<Self> {
        let binary = require_tool(
            "redis-server",
            "`bash .ci/run` installs it, or run `apt-get install -y redis-server`",
        )?;
        let mut server = Self {
            binary,
            child: None,
            port: free_port(),
            password: password.map(String::from),
            tls,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        server.run();
        Some(server)
    }

    fn run(&mut self) {
        let mut command = Command::new(&self.binary);
        let port = self.port.to_string();
        match &self.tls {
            None => command.args(["--port", &port]),
            Some((cert, key)) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key),
        };
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        self.child = Some(ChildGuard(command.spawn().expect("redis-server runs")));
        let deadline = Instant::now() + STEP;
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        match self.tls {
            Some(_) => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            None => self.try_command(&["PING"]).is_ok(),
        }
    }

    /// `redis://127.0.0.1:PORT` (no password in it).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (by PID) and waits for it to be gone.
    pub fn stop(&mut self) {
        drop(self.child.take());
    }

    /// Starts it again on the same port, with nothing in it.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Sends one command (after `AUTH` when the server has a password); the reply's first
    /// line, e.g. `+OK` or `:3`.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(STEP))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        if let Some(password) = &self.password {
            stream.write_all(&resp(&["AUTH", password]))?;
            read_line(&mut reader)?;
        }
        stream.write_all(&resp(args))?;
        let line = read_line(&mut reader)?;
        match line.starts_with("-ERR") || line.starts_with("-LOADING") {
            true => Err(std::io::Error::other(line)),
            false => Ok(line),
        }
    }

    /// Keys the limiter wrote (`KEYS prefix*`, counted).
    pub fn key_count(&self, prefix: &str) -> usize {
        let pattern = format!("{prefix}*");
        let reply = self.command(&["EVAL", "return #redis.call('KEYS', ARGV[1])", "0", &pattern]);
        reply.trim_start_matches(':').parse().expect("a count")
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}
