//! `samplekv`: one member of the sample cluster. Parses flags, sets up
//! tracing, runs the member until SIGTERM/SIGINT and exits with the code
//! [`samplekv::member::MemberError::exit_code`] gives (0 after a clean stop).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use samplekv::member::{self, MemberOptions};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "samplekv",
    version,
    about = "A member of the samplekv sample cluster"
)]
struct Args {
    /// This member's numeric id (must appear in --peers).
    #[arg(long)]
    id: u64,
    /// gRPC listen address (Raft and Kv services), e.g. 127.0.0.1:7101.
    #[arg(long)]
    listen: SocketAddr,
    /// Every member: ID=HOST:PORT,ID=HOST:PORT,...
    #[arg(long)]
    peers: String,
    /// Data directory (log, snapshot, FORMAT).
    #[arg(long)]
    data_dir: PathBuf,
    /// Release directory holding manifest.toml.
    #[arg(long)]
    release_dir: PathBuf,
    /// While this file exists, applying committed entries blocks.
    #[arg(long, env = "SAMPLEKV_PAUSE_APPLY_FILE")]
    pause_apply_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false) // eprintln! of a failed write panics on a full disk
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let peers = match member::parse_peers(&args.peers) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("samplekv: bad --peers: {e}");
            return ExitCode::from(member::EXIT_USAGE);
        }
    };
    let opts = MemberOptions {
        id: args.id,
        listen: args.listen,
        peers,
        data_dir: args.data_dir,
        release_dir: args.release_dir,
        pause_apply_file: args.pause_apply_file,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("samplekv: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Install the handlers before start-up work, so a signal that arrives
        // early is held and honoured once the member serves.
        let shutdown = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("samplekv: cannot install signal handlers: {e}");
                return Err(None);
            }
        };
        member::run(opts, shutdown).await.map_err(Some)
    });
    // Do not wait for blocking tasks (e.g. a connect in flight) at exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(None) => ExitCode::FAILURE,
        Err(Some(e)) => {
            tracing::error!(error = %e, "samplekv member failed");
            eprintln!("samplekv: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Installs SIGTERM and SIGINT handlers now; the future resolves on the
/// first of either.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
