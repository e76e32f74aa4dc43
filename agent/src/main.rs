//! `baton-agent`: parse, then run the agent (or its `probe` subcommand);
//! see `baton_agent::cmd`. Exit 64 on bad arguments or a bad config.

use std::process::ExitCode;

use baton_agent::cmd::{self, Args, EXIT_USAGE};
use clap::Parser;

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    cmd::run(args)
}
