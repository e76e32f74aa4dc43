//! `baton backups list | verify ID | prune --keep N`: the cluster's backups
//! in the coordinator's store. The coordinator does the store IO (the CLI
//! holds no store credentials) and decides what is pinned.

use crate::conn::OperatorConn;
use crate::render::{render_backups, render_pruned};
use crate::{BackupsCmd, Output};

/// Runs one `baton backups` subcommand.
pub async fn run(conn: &mut OperatorConn, cmd: BackupsCmd, output: Output) -> anyhow::Result<()> {
    match cmd {
        BackupsCmd::List => {
            let list = conn.backups().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string(&list)?),
                Output::Table => print!("{}", render_backups(&list)),
            }
        }
        BackupsCmd::Verify { id } => {
            let (location, backup) = conn.verify_backup(&id).await?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"location": location, "verified": true, "backup": backup})
                ),
                Output::Table => {
                    let parts = backup.complete.as_ref().map_or(0, |d| d.parts);
                    println!(
                        "backup {id} in {location}: verified, every part ({parts}) re-read and its sha256 matched the manifest"
                    );
                }
            }
        }
        BackupsCmd::Prune { keep, dry_run } => {
            let pruned = conn.prune_backups(keep, dry_run).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string(&pruned)?),
                Output::Table => print!("{}", render_pruned(&pruned)),
            }
        }
    }
    Ok(())
}
