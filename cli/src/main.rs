//! `baton`: the operator's command line. Parses, calls the operator API,
//! prints a table or JSON.

use std::process::ExitCode;
use std::time::Duration;

use std::io::IsTerminal;

use baton_cli::{
    OperatorConn, RolloutView, Started, render_checks, render_rollout, render_status, summary,
};
use baton_net::tls::ClientTls;
use baton_planner::rollout::Phase;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "baton",
    version,
    about = "Rolling upgrades of leader/follower clusters"
)]
struct Args {
    /// The coordinator's operator API.
    #[arg(
        long,
        global = true,
        env = "BATON_COORDINATOR",
        default_value = "http://127.0.0.1:7400"
    )]
    coordinator: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// CA certificate that signs the coordinator's (for https://).
    #[arg(long, global = true, env = "BATON_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Operator client certificate (mTLS), with --key.
    #[arg(long, global = true, env = "BATON_CERT", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// Operator client key, with --cert.
    #[arg(long, global = true, env = "BATON_KEY", requires = "cert")]
    key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One row per member: role, release, revision, lag, health, last seen.
    Status {
        /// Refresh until interrupted.
        #[arg(long)]
        watch: bool,
        /// Refresh interval for --watch, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Dry run: preflight verdicts, then the ordered steps with their reasons.
    Plan {
        #[arg(long)]
        to: String,
    },
    /// Runs a rolling upgrade with live progress. Exit 0 on success; 2 if
    /// preflight refused (nothing touched); 3 if the rollout paused.
    Upgrade {
        #[arg(long)]
        to: String,
        /// Start it and return at once, without following progress.
        #[arg(long)]
        detach: bool,
    },
    /// Walks the latest rollout back to its previous release: members now on
    /// its target, in reverse order, same gates, leader last. A paused
    /// rollout is closed first. Exit codes as for upgrade.
    Rollback {
        #[arg(long)]
        detach: bool,
    },
    /// Follows the active (or named) rollout until it completes or pauses.
    Watch {
        #[arg(long)]
        rollout: Option<String>,
    },
    /// Shows the active (or named) rollout once.
    Rollout {
        #[arg(long)]
        id: Option<String>,
    },
    /// Pauses the running rollout after the step in flight.
    Pause {
        #[arg(long, default_value = "operator request")]
        reason: String,
    },
    /// Resumes a paused rollout (a rolled-back member is retried).
    Resume,
    /// Stops after the current step; never leaves a member stopped.
    Abort,
    /// Every rollout this coordinator has journaled.
    History,
    /// Releases in the artifact store.
    #[command(subcommand)]
    Release(ReleaseCmd),
}

#[derive(Subcommand, Debug)]
enum ReleaseCmd {
    /// Packs a directory and puts it in the store with its sha256.
    Publish {
        /// The artifact store directory.
        #[arg(long, env = "BATON_STORE")]
        store: std::path::PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// The data format the release writes (and the newest it reads).
        #[arg(long)]
        format_version: u32,
        /// The directory to pack (a release's files).
        #[arg(long)]
        from: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        eprintln!("baton: cannot start the tokio runtime");
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        match run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baton: {e}");
                main_exit(&e)
            }
        }
    })
}

/// Exit codes beyond 0/1.
const EXIT_REFUSED: u8 = 2;
const EXIT_PAUSED: u8 = 3;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Exit {
    code: u8,
    message: String,
}

fn main_exit(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<Exit>() {
        Some(x) => ExitCode::from(x.code),
        None => ExitCode::from(69),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Command::Release(ReleaseCmd::Publish {
        store,
        name,
        version,
        format_version,
        from,
    }) = &args.command
    {
        return publish(store, name, version, *format_version, from, args.output).await;
    }
    let tls = match &args.ca_cert {
        Some(ca) => {
            let identity = args.cert.as_deref().zip(args.key.as_deref());
            Some(ClientTls::load(ca, identity, None)?)
        }
        None => None,
    };
    let mut conn = OperatorConn::connect(&args.coordinator, tls.as_ref()).await?;
    match args.command {
        Command::Status { watch, interval_ms } => loop {
            let status = conn.status().await?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string(&status)?),
                Output::Table => {
                    if watch {
                        // Clear the screen and home the cursor.
                        print!("\x1b[2J\x1b[H");
                    }
                    print!("{}", render_status(&status));
                }
            }
            if !watch {
                return Ok(());
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(interval_ms.max(100))) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        },
        Command::Plan { to } => {
            let plan = conn.plan(&to).await?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string(&plan)?),
                Output::Table => {
                    println!("preflight for {to}:");
                    print!("{}", render_checks(&plan.checks));
                    println!(
                        "\nsteps{}:",
                        if plan.ok {
                            ""
                        } else {
                            " (if preflight passed)"
                        }
                    );
                    for (i, s) in plan.steps.iter().enumerate() {
                        let m = s.member.as_deref().unwrap_or("cluster");
                        println!("{:>2}. {m:<8} {}\n      why: {}", i + 1, s.action, s.reason);
                    }
                }
            }
            if plan.ok {
                Ok(())
            } else {
                Err(Exit {
                    code: EXIT_REFUSED,
                    message: "preflight would refuse this rollout".into(),
                }
                .into())
            }
        }
        Command::Upgrade { .. } | Command::Rollback { .. } => {
            let (started, detach) = match &args.command {
                Command::Upgrade { to, detach } => (conn.upgrade(to).await?, *detach),
                Command::Rollback { detach } => (conn.rollback().await?, *detach),
                _ => unreachable!("matched above"),
            };
            let id = match started {
                Started::Started { rollout_id } => rollout_id,
                Started::Refused { detail, checks } => {
                    match args.output {
                        Output::Json => println!(
                            "{}",
                            serde_json::json!({"started": false, "detail": detail, "checks": checks})
                        ),
                        Output::Table => print!("{}", render_checks(&checks)),
                    }
                    return Err(Exit {
                        code: EXIT_REFUSED,
                        message: format!("{detail}; fix the failed checks above and run it again"),
                    }
                    .into());
                }
            };
            if detach {
                match args.output {
                    Output::Json => {
                        println!("{}", serde_json::json!({"started": true, "rollout": id}))
                    }
                    Output::Table => println!("started rollout {id}; follow it with `baton watch`"),
                }
                return Ok(());
            }
            follow(&mut conn, &id, args.output).await
        }
        Command::Watch { rollout } => {
            let id = conn.rollout(rollout.as_deref()).await?.state.id;
            follow(&mut conn, &id, args.output).await
        }
        Command::Rollout { id } => show(conn.rollout(id.as_deref()).await?, args.output),
        Command::Pause { reason } => show(conn.control("pause", &reason).await?, args.output),
        Command::Resume => show(conn.control("resume", "").await?, args.output),
        Command::Abort => show(conn.control("abort", "").await?, args.output),
        Command::History => {
            let all = conn.history().await?;
            match args.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string(
                        &all.iter().map(|v| summary(&v.state)).collect::<Vec<_>>()
                    )?
                ),
                Output::Table => {
                    for v in &all {
                        let s = summary(&v.state);
                        println!(
                            "{:<16} -> {:<8} {:>8}ms  order {}  {}",
                            s.rollout,
                            s.target,
                            s.total_ms,
                            s.order.join(","),
                            s.outcome
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Release(_) => unreachable!("handled above"),
    }
}

fn show(v: RolloutView, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string(&v)?),
        Output::Table => print!("{}", render_rollout(&v)),
    }
    Ok(())
}

/// How often `follow` writes a moving lag to a non-terminal.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// How long one long poll of `follow` waits for a change.
const FOLLOW_WAIT: Duration = Duration::from_secs(2);
/// How often `follow` asks a coordinator that does not long-poll.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Follows a rollout with live progress until it completes or pauses.
async fn follow(conn: &mut OperatorConn, id: &str, output: Output) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal() && output == Output::Table;
    let multi = indicatif::MultiProgress::new();
    let mut bars: Vec<indicatif::ProgressBar> = Vec::new();
    let mut last_lines: Vec<String> = Vec::new();
    let mut last_stages: Vec<String> = Vec::new();
    let mut last_print = tokio::time::Instant::now();
    let style = indicatif::ProgressStyle::with_template("{spinner} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let mut version = 0;
    loop {
        // Long poll: returns as soon as the rollout changes (or after
        // FOLLOW_WAIT with no change, to refresh the member rows).
        let v = conn.rollout_after(Some(id), version, FOLLOW_WAIT).await?;
        version = v.version;
        let status = if output == Output::Table {
            conn.status().await.ok()
        } else {
            None
        };
        let r = &v.state;
        let mut lines = vec![format!(
            "rollout {} -> {}: {}",
            r.id, r.target.version, v.waiting_for
        )];
        for m in &r.order {
            let stage = r.members.get(m).map_or("?", |p| p.stage.name());
            let row = status
                .as_ref()
                .and_then(|s| s.members.iter().find(|row| row.member == *m));
            let (role, release, lag) =
                match row.and_then(|row| row.report.as_ref().map(|rep| (rep, row.lag))) {
                    Some((rep, lag)) => (
                        rep.state.role.to_string(),
                        rep.state.release.clone(),
                        lag.map_or("-".into(), |l| l.to_string()),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
            lines.push(format!(
                "{m:<8} {stage:<12} {role:<10} release {release:<8} lag {lag}"
            ));
        }
        if tty {
            while bars.len() < lines.len() {
                let b = multi.add(indicatif::ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.enable_steady_tick(Duration::from_millis(120));
                bars.push(b);
            }
            for (b, l) in bars.iter().zip(&lines) {
                b.set_message(l.clone());
            }
        } else if output == Output::Table && lines != last_lines {
            // Not a terminal (a log): every stage change at once, but a lag
            // that merely moved at most once a second.
            let stages: Vec<&str> = r
                .order
                .iter()
                .map(|m| r.members.get(m).map_or("?", |p| p.stage.name()))
                .collect();
            let finished = !matches!(r.phase, Phase::Running | Phase::Aborting);
            if finished || stages != last_stages || last_print.elapsed() >= LOG_EVERY {
                for (i, l) in lines.iter().enumerate() {
                    if last_lines.get(i) != Some(l) {
                        println!("{l}");
                    }
                }
                last_lines = lines;
                last_stages = stages.into_iter().map(str::to_owned).collect();
                last_print = tokio::time::Instant::now();
            }
        }
        match &r.phase {
            Phase::Completed | Phase::Paused { .. } | Phase::Closed { .. } => {
                for b in &bars {
                    b.finish();
                }
                let s = summary(r);
                match output {
                    Output::Json => println!(
                        "{}",
                        serde_json::to_string(&serde_json::json!({"summary": s, "rollout": v}))?
                    ),
                    Output::Table => {
                        println!("order: {}", s.order.join(" -> "));
                        println!(
                            "handover to: {}",
                            s.handover_target.as_deref().unwrap_or("-")
                        );
                        for (m, ms) in &s.step_ms {
                            println!("  {m}: {ms} ms");
                        }
                        println!(
                            "total: {} ms, leader changes: {}",
                            s.total_ms, s.leader_changes
                        );
                    }
                }
                if let Phase::Closed { reason } = &r.phase {
                    return Err(Exit {
                        code: EXIT_PAUSED,
                        message: format!("rollout {} was closed without finishing: {reason}", r.id),
                    }
                    .into());
                }
                if let Phase::Paused { reason } = &r.phase {
                    return Err(Exit {
                        code: EXIT_PAUSED,
                        message: format!(
                            "rollout {} paused: {reason}\nnext: fix the cause, then `baton resume`; or leave the cluster on {} (every member that failed was put back)",
                            r.id, r.previous
                        ),
                    }
                    .into());
                }
                return Ok(());
            }
            Phase::Running | Phase::Aborting => {}
        }
        // A coordinator without long polls answers at once with version 0:
        // then poll at a fixed pace.
        if version == 0 {
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

async fn publish(
    store: &std::path::Path,
    name: &str,
    version: &str,
    format_version: u32,
    from: &std::path::Path,
    output: Output,
) -> anyhow::Result<()> {
    // A release that carries its own manifest must agree with what we publish.
    if let Ok(text) = std::fs::read_to_string(from.join("manifest.toml")) {
        let own: toml::Value = toml::from_str(&text)?;
        let v = own.get("version").and_then(|v| v.as_str());
        let f = own.get("format_version").and_then(|v| v.as_integer());
        if v.is_some_and(|v| v != version) || f.is_some_and(|f| f != i64::from(format_version)) {
            anyhow::bail!(
                "{}/manifest.toml says version {v:?} format {f:?}, but you publish {version} format {format_version}; make them agree",
                from.display()
            );
        }
    }
    let st = baton_store::DirStore::new(store);
    let scratch = std::env::temp_dir();
    let m = baton_store::publish(&st, name, version, format_version, from, &scratch).await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string(&m)?),
        Output::Table => println!(
            "published {name} {version} (format {format_version}) sha256 {} ({} bytes) to {}",
            m.sha256,
            m.size,
            store.display()
        ),
    }
    Ok(())
}
