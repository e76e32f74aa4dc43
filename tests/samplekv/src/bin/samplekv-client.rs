//! `samplekv-client`: put, get, status and a paced writer against a samplekv
//! cluster, printing JSON. `write` runs until its bounds or SIGTERM/SIGINT,
//! then verifies every acked write and prints `{"writer": .., "verify": ..}`;
//! it exits 3 when an acked write was lost.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use samplekv::client::{self, Client};
use samplekv::writer::{self, WriterConfig};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "samplekv-client",
    version,
    about = "Client for the samplekv sample cluster"
)]
struct Args {
    /// Member addresses: 127.0.0.1:P1,127.0.0.1:P2,...
    #[arg(long, env = "SAMPLEKV_MEMBERS", global = true, value_delimiter = ',')]
    members: Vec<String>,
    /// Bound on one request, retries included, in ms.
    #[arg(long, default_value_t = 2000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write KEY = VALUE through the leader.
    Put { key: String, value: String },
    /// Read KEY (local state of the first member that answers, or through
    /// the leader with --linearizable).
    Get {
        key: String,
        #[arg(long)]
        linearizable: bool,
    },
    /// One member's status.
    Status { addr: String },
    /// Write sequence-numbered keys at a fixed rate, then verify them.
    Write {
        /// Writes started per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Stop after this many writes.
        #[arg(long, default_value_t = 1000)]
        max_writes: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 10)]
        duration_s: u64,
        /// Key prefix.
        #[arg(long, default_value = "w-")]
        prefix: String,
        /// At most this many writes in flight.
        #[arg(long, default_value_t = 32)]
        max_in_flight: usize,
        /// Also write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("samplekv-client: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("samplekv-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(args: &Args) -> Result<Client> {
    let members: Vec<String> = args
        .members
        .iter()
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    if members.is_empty() {
        bail!("--members (or SAMPLEKV_MEMBERS) is required");
    }
    Ok(Client::new(members).with_request_timeout(Duration::from_millis(args.timeout_ms)))
}

async fn run(args: Args) -> Result<u8> {
    match &args.cmd {
        Cmd::Put { key, value } => {
            let ack = client(&args)?.put(key, value).await?;
            println!(
                "{}",
                serde_json::json!({"key": key, "revision": ack.revision, "term": ack.term, "leader_id": ack.leader_id})
            );
            Ok(0)
        }
        Cmd::Get { key, linearizable } => {
            let v = client(&args)?.get(key, *linearizable).await?;
            println!(
                "{}",
                serde_json::json!({"key": key, "found": v.is_some(), "value": v})
            );
            Ok(0)
        }
        Cmd::Status { addr } => {
            let s = client::status_within(addr, Duration::from_millis(args.timeout_ms)).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&client::status_json(&s))?
            );
            Ok(0)
        }
        Cmd::Write {
            rate,
            max_writes,
            duration_s,
            prefix,
            max_in_flight,
            report,
        } => {
            let c = client(&args)?;
            let cfg = WriterConfig {
                rate_per_sec: *rate,
                max_writes: *max_writes,
                max_duration: Duration::from_secs(*duration_s),
                key_prefix: prefix.clone(),
                request_timeout: Duration::from_millis(args.timeout_ms),
                max_in_flight: *max_in_flight,
            };
            let stop = CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                wait_signal().await;
                on_signal.cancel();
            });
            let w = writer::run_writer(&c, cfg, stop).await;
            let v = writer::verify(&c, &w).await;
            let out = serde_json::to_string_pretty(&serde_json::json!({"writer": w, "verify": v}))?;
            println!("{out}");
            if let Some(path) = report {
                std::fs::write(path, &out)
                    .with_context(|| format!("cannot write report {}", path.display()))?;
            }
            Ok(if v.lost.is_empty() { 0 } else { 3 })
        }
    }
}

async fn wait_signal() {
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
