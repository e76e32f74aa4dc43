//! `baton`: the operator's command line. Parses the arguments, starts a
//! runtime, hands over to [`baton_cli::run`] and turns how it ended into
//! the exit code.

use std::process::ExitCode;

use baton_cli::Args;
use clap::Parser;

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        eprintln!("baton: cannot start the tokio runtime");
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        match baton_cli::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baton: {e}");
                baton_cli::exit_code(&e)
            }
        }
    })
}
