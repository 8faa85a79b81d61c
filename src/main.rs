//! The `stream-token-proxy` command: serve (the default), check-config, dev-token.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use stream_token_proxy::config::{Config, LogFormat};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

// mimalloc: per-request buffers and header maps come and go on every request; with glibc's
// malloc the allocator was a visible share of the proxy's CPU under load (BENCHMARKS.md).
// Built without transparent huge pages (`no_thp`): mimalloc otherwise asks for them on its
// arena, and every 2 MiB page it touches is resident whole (9 MiB more RSS at start).
// `cargo build --no-default-features` leaves it out (the system allocator, for heaptrack).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// TLS-terminating sidecar for a Node.js backend: verifies Clerk sessions, mints Stream Chat
/// user tokens at POST /api/stream/token, and forwards every other request unchanged.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file. Default: ./proxy.toml if it exists, else the embedded dev config.
    #[arg(long, short, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default when no subcommand is given).
    Serve,
    /// Validate the configuration (file and environment overrides) and load the files a
    /// deployment mounts (the TLS certificate and key outside the dev profile,
    /// auth.public_key_file, limits.redis.ca_file); print a summary, exit (0 if valid, 2 if not).
    CheckConfig {
        /// Do not load the mounted files (for CI, where they do not exist).
        #[arg(long, alias = "no-tls-files")]
        no_mounted_files: bool,
    },
    /// Print a Clerk-shaped session token signed with the dev key (dev configs only), for
    /// trying the token route without a Clerk account.
    DevToken {
        /// The user id (`sub`) the token is for.
        #[arg(long, default_value = "user_dev")]
        sub: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

/// After the options: the environment overrides (from the one table in `config`) and signals.
fn after_help() -> String {
    format!(
        "Environment (overrides the file, in this order):\n{}  \
         RUST_LOG  (log filter, wins over log.level)\n\n\
         Signals:\n  \
         SIGTERM, SIGINT  stop accepting, finish in-flight requests (server.shutdown_grace), exit 0\n  \
         SIGHUP           reload the TLS certificate/key and the Stream secret file\n\n\
         Every key of the file is documented in the shipped proxy.toml.",
        stream_token_proxy::config::env_help()
    )
}

fn main() -> ExitCode {
    let matches = Cli::command().after_help(after_help()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { no_mounted_files } => check_config(&config, !no_mounted_files),
        Command::Serve => serve(config),
        Command::DevToken { sub, ttl } => match stream_token_proxy::dev_token(&config, &sub, ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// `check-config`: the file and overrides are valid (they were loaded); the files a
/// deployment mounts must load now too, not at the first rollout.
fn check_config(config: &Config, mounted_files: bool) -> ExitCode {
    if mounted_files && let Err(e) = stream_token_proxy::check_mounted_files(config) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    let transport = if config.tls.enabled {
        "TLS"
    } else {
        "plain HTTP"
    };
    let dev = if config.dev { ", DEV profile" } else { "" };
    println!(
        "configuration OK: listen {} ({transport}), upstream {}, keys from {}{dev}",
        config.server.listen,
        config.upstream.url,
        key_source(config),
    );
    ExitCode::SUCCESS
}

fn key_source(config: &Config) -> String {
    let auth = &config.auth;
    match (&auth.jwks_url, &auth.public_key_pem, &auth.public_key_file) {
        (Some(url), _, _) => format!("JWKS {}", url.0),
        (_, Some(_), _) => "an inline public key".into(),
        (_, _, Some(path)) => format!("public key file {}", path.display()),
        _ => "the dev signing key".into(),
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.as_str()));
    // Colour only for a person at a terminal; log pipelines get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn serve(config: Config) -> ExitCode {
    init_logging(&config);
    for warning in config.warnings() {
        warn!("{warning}");
    }
    // The workers run their own single-threaded runtimes; this one carries the admin listener,
    // key refresh, reloads and signals.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let handle = match stream_token_proxy::start(config).await {
            Ok(handle) => handle,
            Err(e) => {
                error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let Some(mut signals) = Signals::install() else {
            return ExitCode::FAILURE;
        };
        let name = signals.wait_for_stop(&handle).await;
        info!(signal = name, "shutting down gracefully");
        handle.shutdown();
        signals.drain(handle).await
    })
}

/// SIGTERM, SIGINT and SIGHUP, as the serving process handles them.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Option<Self> {
        let installed = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        );
        match installed {
            (Ok(term), Ok(int), Ok(hup)) => Some(Self { term, int, hup }),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                error!(error = %e, "cannot install signal handlers");
                None
            }
        }
    }

    /// Reloads on SIGHUP until SIGTERM or SIGINT; returns which.
    async fn wait_for_stop(&mut self, handle: &stream_token_proxy::ProxyHandle) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM",
                _ = self.int.recv() => return "SIGINT",
                _ = self.hup.recv() => {
                    info!("SIGHUP: reloading the certificate and secret files");
                    handle.reload();
                }
            }
        }
    }

    /// Waits for the drain; a second SIGTERM or SIGINT exits at once.
    async fn drain(mut self, handle: stream_token_proxy::ProxyHandle) -> ExitCode {
        tokio::select! {
            _ = handle.wait() => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            _ = async { tokio::select! { _ = self.term.recv() => {}, _ = self.int.recv() => {} } } => {
                warn!("second signal: exiting without waiting for in-flight requests");
                ExitCode::from(130)
            }
        }
    }
}
