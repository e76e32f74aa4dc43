//! `baton-agent`: parse, set up tracing, run. Exit 64 on a bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use baton_agent::config::AgentConfig;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "baton-agent", version, about = "baton's per-member agent")]
struct Args {
    /// Path to the agent's TOML config.
    #[arg(long, short = 'c', env = "BATON_AGENT_CONFIG")]
    config: PathBuf,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let env = std::env::vars().collect();
    let config = match AgentConfig::load(&args.config, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton-agent: bad config: {e}");
            return ExitCode::from(64);
        }
    };
    init_tracing(&args.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-agent: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.probe_listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "baton-agent: member {}: cannot bind probe_listen {}: {e}",
                    config.member, config.probe_listen
                );
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            on_signal.cancel();
        });
        match baton_agent::run(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baton-agent: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
