//! `[server]` and `[tls]`: the public listener, its connection limits and timeouts, the
//! certificate it serves.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, PositiveDuration};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public address (TLS unless `tls.enabled = false`).
    pub listen: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: PositiveDuration,
    /// A client must finish the TLS handshake within this time.
    pub tls_handshake_timeout: PositiveDuration,
    /// A client must send a complete HTTP/1 request head within this time (slowloris); an idle
    /// keep-alive connection is closed after it too.
    pub header_read_timeout: PositiveDuration,
    /// Open client connections at most; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list), in bytes; over it: 431.
    pub max_header_bytes: usize,
    /// Concurrent streams one HTTP/2 connection may open. With `http2_stream_buffer` this
    /// bounds what one HTTP/2 client can make the proxy hold (README, "Resource bounds").
    pub http2_max_concurrent_streams: u32,
    /// Response bytes the proxy buffers per HTTP/2 stream for a client that does not read,
    /// however large the flow-control window the client grants.
    pub http2_stream_buffer: usize,
    /// A connection with no request in flight is closed after this (HTTP/2: GOAWAY).
    pub idle_timeout: PositiveDuration,
    /// Open connections from one client address at most (IPv6: one /64); 0 = no limit.
    pub max_connections_per_ip: usize,
    /// How often the certificate, key and secret files are checked for changes (also: SIGHUP).
    pub reload_interval: PositiveDuration,
    /// Worker threads, each a single-threaded event loop with its own upstream pool, all
    /// accepting from one listening socket (like nginx's worker processes). 0 = one per core.
    pub workers: usize,
}

impl ServerConfig {
    /// `workers`, with 0 resolved to the number of CPU cores.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3001)),
            shutdown_grace: PositiveDuration::secs(25),
            tls_handshake_timeout: PositiveDuration::secs(10),
            header_read_timeout: PositiveDuration::secs(10),
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            http2_max_concurrent_streams: 32,
            http2_stream_buffer: 16 * 1024,
            idle_timeout: PositiveDuration::secs(60),
            max_connections_per_ip: 0,
            reload_interval: PositiveDuration::secs(10),
            workers: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `false` serves plain HTTP, for meshes that already terminate TLS.
    pub enabled: bool,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cert: PathBuf::from("certs/tls.crt"),
            key: PathBuf::from("certs/tls.key"),
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(8192..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(ConfigError::invalid(
                "server.max_header_bytes must be between 8192 and 1048576",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.http2_stream_buffer) {
            return Err(ConfigError::invalid(
                "server.http2_stream_buffer must be between 1024 and 16777216",
            ));
        }
        if self.max_connections == 0 || self.http2_max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections and server.http2_max_concurrent_streams must be greater \
                 than zero",
            ));
        }
        Ok(())
    }
}
