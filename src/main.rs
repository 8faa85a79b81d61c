//! The `stream-token-proxy` command: serve (the default), check-config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stream_token_proxy::config::{Config, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

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
    /// Validate the configuration (file and environment overrides), print a summary, exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!(
                "configuration OK: listen {} ({}), upstream {}{}",
                config.server.listen,
                if config.tls.enabled {
                    "TLS"
                } else {
                    "plain HTTP"
                },
                config.upstream.url,
                if config.dev { ", DEV profile" } else { "" },
            );
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config),
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.as_str()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn serve(config: Config) -> ExitCode {
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                error!(error = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down gracefully");
        handle.shutdown();
        tokio::select! {
            _ = handle.wait() => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
                warn!("second signal: exiting without waiting for in-flight requests");
                ExitCode::from(130)
            }
        }
    })
}
