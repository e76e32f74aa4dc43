//! `samplekv-restore`: restores one stopped member's data dir from a backup
//! document (see `samplekv::restore`). Run it on every member, with the same
//! backup and `--peers`, while all are stopped; then start them. Prints one
//! JSON line; exits 0 on success, 65 for a bad backup, 64 for bad flags, 74
//! for IO.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use samplekv::member;
use samplekv::restore::{self, RestoreError};

#[derive(Parser, Debug)]
#[command(
    name = "samplekv-restore",
    version,
    about = "Restore a stopped samplekv member's data dir from a backup"
)]
struct Args {
    /// The member's data directory (what is there is moved aside).
    #[arg(long)]
    data_dir: PathBuf,
    /// The backup document (from `Admin.Backup`, e.g. a baton backup).
    #[arg(long)]
    from: PathBuf,
    /// Every member: ID=HOST:PORT,... (the members' own --peers).
    #[arg(long)]
    peers: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let peers = match member::parse_peers(&args.peers) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("samplekv-restore: bad --peers: {e}");
            return ExitCode::from(64);
        }
    };
    match restore::restore(&args.data_dir, &args.from, &peers) {
        Ok(r) => {
            println!(
                "{}",
                serde_json::json!({
                    "applied_index": r.applied_index,
                    "keys": r.keys,
                    "moved_aside": r.moved_aside.map(|p| p.display().to_string()),
                })
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("samplekv-restore: {e}");
            ExitCode::from(match e {
                RestoreError::BadBackup { .. } => 65,
                RestoreError::Usage(_) => 64,
                RestoreError::Io { .. } => 74,
            })
        }
    }
}
