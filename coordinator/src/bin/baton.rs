//! `baton`: the operator's command line. Parses, calls the operator API,
//! prints a table or JSON.

use std::process::ExitCode;
use std::time::Duration;

use baton_coordinator::cli::{OperatorConn, render_status};
use baton_proto::tls::ClientTls;
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
                ExitCode::from(69)
            }
        }
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
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
    }
}
