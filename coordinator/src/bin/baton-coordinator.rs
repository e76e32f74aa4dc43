//! `baton-coordinator`: parse, set up tracing, bind, run. Exit 64 on a bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use baton_coordinator::config::CoordinatorConfig;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "baton-coordinator", version, about = "baton's coordinator")]
struct Args {
    /// Path to the coordinator's TOML config.
    #[arg(long, short = 'c', env = "BATON_CONFIG")]
    config: PathBuf,
    /// Log format: text or json.
    #[arg(long, env = "BATON_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let env = std::env::vars().collect();
    let config = match CoordinatorConfig::load(&args.config, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton-coordinator: bad config: {e}");
            return ExitCode::from(64);
        }
    };
    init_tracing(&args.log_format);
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        eprintln!("baton-coordinator: cannot start the tokio runtime");
        return ExitCode::FAILURE;
    };
    rt.block_on(serve(config))
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A log line that cannot be written (its disk is full) is dropped:
        // by default the subscriber reports that with eprintln!, which
        // panics when stderr is that same full file.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    if format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

/// Binds `listen`, then runs until SIGTERM or Ctrl-C.
async fn serve(config: CoordinatorConfig) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "baton-coordinator: cannot bind `listen` {}: {e}",
                config.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match baton_coordinator::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
