//! `sqlapp`: the command line over [`sqlapp`]'s library. Exit 0 on success,
//! 1 with the reason on stderr otherwise.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sqlapp",
    about = "A small SQLite app for baton's runbook tests"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the settings, run the migrations, then serve HTTP.
    Serve {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The release directory (its manifest.toml picks the migrations).
        #[arg(long)]
        release_dir: PathBuf,
    },
    /// Row counts per table, one `table count` line each.
    Status {
        #[arg(long)]
        db: PathBuf,
    },
    /// The highest item id.
    Revision {
        #[arg(long)]
        db: PathBuf,
    },
    /// An online, consistent copy of the database.
    Backup {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// Replace the database with a backup (stop the app first).
    Restore {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        input: PathBuf,
    },
    /// integrity_check and the schema version.
    Doctor {
        #[arg(long)]
        db: PathBuf,
    },
    /// Exit 1 naming each setting the release requires that is missing.
    CheckSettings {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        release_dir: PathBuf,
    },
}

fn env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Serve {
            db,
            listen,
            release_dir,
        } => {
            let release = sqlapp::Release::load(&release_dir)?;
            let listener = std::net::TcpListener::bind(listen)?;
            let shutdown = async {
                if let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    term.recv().await;
                }
            };
            sqlapp::serve(&db, &release, &env(), listener, shutdown).await
        }
        Command::Status { db } => {
            print!("{}", sqlapp::status(&db)?);
            Ok(())
        }
        Command::Revision { db } => {
            println!("{}", sqlapp::revision(&sqlapp::open_existing(&db)?)?);
            Ok(())
        }
        Command::Backup { db, output } => sqlapp::backup(&db, &output),
        Command::Restore { db, input } => sqlapp::restore(&db, &input),
        Command::Doctor { db } => {
            println!("{}", sqlapp::doctor(&db)?);
            Ok(())
        }
        Command::CheckSettings { db, release_dir } => {
            let release = sqlapp::Release::load(&release_dir)?;
            let missing = sqlapp::missing_settings(&release, &db, &env())?;
            if missing.is_empty() {
                println!("release {}: every required setting is set", release.version);
                Ok(())
            } else {
                anyhow::bail!("{}", missing.join("; "))
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sqlapp: {e:#}");
            ExitCode::FAILURE
        }
    }
}
