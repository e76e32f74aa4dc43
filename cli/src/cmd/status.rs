//! `baton status`: one row per member, once or refreshed until Ctrl-C.

use std::time::Duration;

use crate::{OperatorConn, Output, render_status};

/// Prints the fleet status; with `watch`, again every `interval_ms`
/// (at least 100 ms) until interrupted.
pub async fn run(
    conn: &mut OperatorConn,
    watch: bool,
    interval_ms: u64,
    output: Output,
) -> anyhow::Result<()> {
    loop {
        let status = conn.status().await?;
        match output {
            Output::Json => println!("{}", serde_json::to_string(&status)?),
            Output::Table => {
                if watch {
                    // Clear the screen and home the cursor.
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", render_status(&status));
            }
        }
        if let Some(addr) = conn.take_leader_change() {
            eprintln!("coordinator leader changed; showing the status from {addr}");
        }
        if !watch {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(interval_ms.max(100))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
