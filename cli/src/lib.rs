//! The `baton` command line: talking to the operator API and rendering what
//! it says. Owns presentation only; decisions stay in the coordinator, and
//! it imports no planner type: what it shows comes through the typed
//! operator API as domain values.
//!
//! A tour:
//! - [`args`]: the flags and subcommands (clap).
//! - [`conn`]: [`OperatorConn`], the calls to the coordinator and their errors.
//! - [`leader`]: which coordinator replica a call goes to (the leader's
//!   hint, the next address, a bounded backoff during an election).
//! - [`render`]: tables and the end-of-run summary.
//! - [`follow`]: the long-poll loop that follows a rollout (upgrade, watch).
//! - [`cmd`]: one file per command group, each printing a table or JSON.
//!
//! [`run`] dispatches a parsed command; [`exit_code`] maps how it ended to
//! the process exit code (0 ok, 2 refused, 3 paused or closed, 69 other).

pub mod args;
pub mod cmd;
pub mod conn;
pub mod follow;
pub mod leader;
pub mod render;

use std::process::ExitCode;

use baton_net::tls::ClientTls;

pub use args::{Args, BackupsCmd, CertsCmd, Command, Output, ReleaseCmd, StoreArgs};
pub use conn::{
    BackupList, CliError, InvalidReply, OperatorConn, Plan, PlanLine, Pruned, RolloutView, Started,
};
pub use leader::Coordinators;
pub use render::{Summary, render_checks, render_rollout, render_status, summary};

/// Preflight refused (nothing was touched).
pub const EXIT_REFUSED: u8 = 2;
/// The rollout paused or was closed without finishing.
pub const EXIT_PAUSED: u8 = 3;
/// A bad argument or address (`--coordinator` plaintext off loopback, not
/// a URL): nothing was sent (sysexits' EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Any other failure (unreachable coordinator, bad answer, IO).
pub const EXIT_OTHER: u8 = 69;

/// A command that ended with a specific exit code and a message for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

/// The process exit code for an error returned by [`run`].
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    if let Some(x) = e.downcast_ref::<Exit>() {
        return ExitCode::from(x.code);
    }
    // Refused for the rollout's phase (resume of a failed release without
    // --retry, pause of a paused rollout): nothing changed, as with a
    // refused preflight.
    if let Some(CliError::WrongPhase { .. }) = e.downcast_ref::<CliError>() {
        return ExitCode::from(EXIT_REFUSED);
    }
    if let Some(CliError::BadCoordinators(_)) = e.downcast_ref::<CliError>() {
        return ExitCode::from(EXIT_USAGE);
    }
    ExitCode::from(EXIT_OTHER)
}

/// Runs one parsed command to its end.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        coordinator,
        output,
        ca_cert,
        cert,
        key,
        token_file,
        command,
    } = args;
    if let Command::Release(release) = command {
        return cmd::release::run(release, output).await;
    }
    if let Command::Certs(certs) = command {
        return cmd::certs::run(certs, output);
    }
    let tls = match &ca_cert {
        Some(ca) => {
            let identity = cert.as_deref().zip(key.as_deref());
            let bad = |e: String| Exit {
                code: EXIT_USAGE,
                message: format!(
                    "--ca-cert/--cert/--key: {e}; give PEM files that belong together (see `baton certs dev`)"
                ),
            };
            let tls = ClientTls::load(ca, identity, None).map_err(|e| bad(e.to_string()))?;
            // A key that does not match its certificate, or a file with
            // no PEM in it, is named here rather than as a transport error.
            tls.rustls_config().map_err(|e| bad(e.to_string()))?;
            Some(tls)
        }
        None => None,
    };
    let coordinators = Coordinators::parse(&coordinator).map_err(CliError::from)?;
    let token = match &token_file {
        None => None,
        Some(path) => {
            let usage = |message: String| Exit {
                code: EXIT_USAGE,
                message,
            };
            if coordinators.scheme() != leader::Scheme::Https || tls.is_none() {
                return Err(usage(
                    "--token-file: a bearer token is sent only over TLS; use https:// with --ca-cert"
                        .into(),
                )
                .into());
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("--token-file {}: {e}", path.display())))?;
            let token = text.trim().to_owned();
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(usage(format!(
                    "--token-file {}: the token must be one line of printable ASCII",
                    path.display()
                ))
                .into());
            }
            Some(token)
        }
    };
    let mut conn = OperatorConn::new(coordinators, tls).with_token(token);
    let conn = &mut conn;
    match command {
        Command::Status { watch, interval_ms } => {
            cmd::status::run(conn, watch, interval_ms, output).await
        }
        Command::Plan { to } => cmd::plan::run(conn, &to, output).await,
        Command::Upgrade { to, detach } => {
            let started = conn.upgrade(&to).await?;
            cmd::rollout::started(conn, started, detach, output).await
        }
        Command::Rollback {
            detach,
            restore: false,
            ..
        } => {
            let started = conn.rollback().await?;
            cmd::rollout::rolled_back(conn, started, detach, output).await
        }
        Command::Rollback {
            detach,
            restore: true,
            confirm,
        } => cmd::rollout::rollback_by_restore(conn, confirm, detach, output).await,
        Command::Restore {
            backup,
            confirm,
            detach,
        } => {
            let confirm = match confirm {
                Some(c) => c,
                None => cmd::rollout::ask_cluster_id(&backup)?,
            };
            let started = conn.restore(&backup, &confirm).await?;
            cmd::rollout::started(conn, started, detach, output).await
        }
        Command::Watch { rollout } => cmd::rollout::watch(conn, rollout.as_deref(), output).await,
        Command::Rollout { id } => cmd::rollout::show(conn.rollout(id.as_deref()).await?, output),
        Command::Pause { reason } => {
            cmd::rollout::show(conn.control("pause", &reason, false).await?, output)
        }
        Command::Resume { retry } => {
            cmd::rollout::show(conn.control("resume", "", retry).await?, output)
        }
        Command::Abort => cmd::rollout::show(conn.control("abort", "", false).await?, output),
        Command::History => cmd::rollout::history(conn, output).await,
        Command::Backups(cmd) => cmd::backups::run(conn, cmd, output).await,
        Command::Release(_) | Command::Certs(_) => unreachable!("handled above"),
    }
}
