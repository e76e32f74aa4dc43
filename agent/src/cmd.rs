//! The `baton-agent` command line: its arguments, running the agent from a
//! config file, and the `probe` subcommand.
//!
//! This module owns the exit codes: 0 on success, 64 on bad arguments or a
//! bad config, 1 when the agent fails (or a probe does not pass). `main`
//! parses [`Args`] and calls [`run`]; nothing else reads argv.
//!
//! `baton-agent probe [--ready]` asks a running agent's `/healthz` (or
//! `/readyz`) and prints its one-line reason: exit 0 when it passes, 1 when
//! it does not or nobody answers, 64 on bad arguments or config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::AgentConfig;
use crate::probes::client::{self, Answer, ClientError, Probe};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// sysexits' EX_USAGE: bad arguments or a bad config.
pub const EXIT_USAGE: u8 = 64;
/// How long `probe` waits for the whole answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(name = "baton-agent", version, about = "baton's per-member agent")]
pub struct Args {
    /// Path to the agent's TOML config; without a subcommand, runs the agent.
    #[arg(long, short = 'c', env = "BATON_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "BATON_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ask a running agent's probe; exit 0 when it passes, 1 otherwise.
    Probe(ProbeArgs),
}

#[derive(clap::Args, Debug)]
struct ProbeArgs {
    /// Ask /readyz (member serving and caught up) instead of /healthz.
    #[arg(long)]
    ready: bool,
    /// The agent's config; its probe_listen says where to ask (0.0.0.0 is
    /// asked on 127.0.0.1). Defaults to the agent's --config/BATON_AGENT_CONFIG.
    #[arg(long, short = 'c', conflicts_with = "url")]
    config: Option<PathBuf>,
    /// The agent's probe address, e.g. http://127.0.0.1:7480.
    #[arg(long)]
    url: Option<String>,
}

/// Runs what `args` asks for, with the process environment read once; the
/// exit code says how it went.
pub fn run(args: Args) -> ExitCode {
    let env = std::env::vars().collect();
    match args.command {
        Some(Command::Probe(probe)) => run_probe(probe, args.config, &env),
        None => run_agent(args.config, &args.log_format, &env),
    }
}

fn run_probe(
    args: ProbeArgs,
    agent_config: Option<PathBuf>,
    env: &std::collections::BTreeMap<String, String>,
) -> ExitCode {
    let which = if args.ready {
        Probe::Ready
    } else {
        Probe::Health
    };
    let config = args.config.or(agent_config);
    let asked = client::base_url(args.url.as_deref(), config.as_deref(), env).map(|url| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::NotAnswering {
                addr: url.clone(),
                detail: format!("cannot start a runtime: {e}"),
            })
            .and_then(|rt| rt.block_on(client::check(&url, which, PROBE_TIMEOUT)))
    });
    let (code, line) = probe_outcome(asked.and_then(|r| r));
    if code == EXIT_USAGE {
        eprintln!("baton-agent probe: {line}");
    } else {
        println!("{line}");
    }
    ExitCode::from(code)
}

/// The exit code and the line `probe` prints for what it got.
fn probe_outcome(got: Result<Answer, ClientError>) -> (u8, String) {
    match got {
        Ok(Answer { pass: true, line }) => (0, line),
        Ok(Answer { pass: false, line }) => (1, line),
        Err(e) if e.is_usage() => (EXIT_USAGE, e.to_string()),
        Err(e) => (1, e.to_string()),
    }
}

fn run_agent(
    config: Option<PathBuf>,
    log_format: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> ExitCode {
    let Some(path) = config else {
        eprintln!(
            "baton-agent: bad config: no config file; pass --config FILE or set BATON_AGENT_CONFIG"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let config = match AgentConfig::load(&path, env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton-agent: bad config: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_tracing(log_format);
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
        match crate::run(config, listener, shutdown).await {
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
        // A log line that cannot be written (its disk is full) is dropped:
        // by default the subscriber reports that with eprintln!, which
        // panics when stderr is that same full file.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(argv)
    }

    #[test]
    fn no_subcommand_runs_the_agent_as_before() {
        let a = parse(&["baton-agent", "--config", "/etc/baton/agent.toml"]).unwrap();
        assert!(a.command.is_none());
        assert_eq!(a.config, Some(PathBuf::from("/etc/baton/agent.toml")));
        let a = parse(&["baton-agent", "-c", "a.toml", "--log-format", "json"]).unwrap();
        assert_eq!(a.log_format, "json");
    }

    #[test]
    fn probe_takes_ready_and_a_config_or_a_url() {
        let a = parse(&["baton-agent", "probe"]).unwrap();
        let Some(Command::Probe(p)) = a.command else {
            panic!("probe subcommand")
        };
        assert!(!p.ready && p.config.is_none() && p.url.is_none());

        let a = parse(&[
            "baton-agent",
            "probe",
            "--ready",
            "--url",
            "http://127.0.0.1:9",
        ])
        .unwrap();
        let Some(Command::Probe(p)) = a.command else {
            panic!("probe subcommand")
        };
        assert!(p.ready);
        assert_eq!(p.url.as_deref(), Some("http://127.0.0.1:9"));

        let a = parse(&["baton-agent", "probe", "--config", "agent.toml"]).unwrap();
        let Some(Command::Probe(p)) = a.command else {
            panic!("probe subcommand")
        };
        assert_eq!(p.config, Some(PathBuf::from("agent.toml")));
        // The agent's own --config before the subcommand is accepted too.
        let a = parse(&["baton-agent", "--config", "agent.toml", "probe"]).unwrap();
        assert_eq!(a.config, Some(PathBuf::from("agent.toml")));

        let err = parse(&[
            "baton-agent",
            "probe",
            "--config",
            "a",
            "--url",
            "http://x:1",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(err.use_stderr());
        let err = parse(&["baton-agent", "probe", "--bogus"]).unwrap_err();
        assert!(err.use_stderr());
    }

    #[test]
    fn probe_exit_codes() {
        let pass = Answer {
            pass: true,
            line: "member n1: agent running".into(),
        };
        assert_eq!(
            probe_outcome(Ok(pass)),
            (0, "member n1: agent running".into())
        );
        let fail = Answer {
            pass: false,
            line: "member n1: not ready: lag 12 > tolerable_lag 10".into(),
        };
        assert_eq!(probe_outcome(Ok(fail)).0, 1);
        let silent = ClientError::NotAnswering {
            addr: "127.0.0.1:9".into(),
            detail: "cannot connect: refused".into(),
        };
        assert_eq!(
            probe_outcome(Err(silent)),
            (
                1,
                "agent not answering at 127.0.0.1:9: cannot connect: refused".into()
            )
        );
        assert_eq!(probe_outcome(Err(ClientError::NoTarget)).0, EXIT_USAGE);
    }
}
