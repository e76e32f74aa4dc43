//! The rollout commands: `upgrade`, `rollback` and `restore` (start, then
//! follow unless detached; a restore is confirmed with the cluster id), `watch`, `rollout`, `pause`, `resume`, `abort` (show the
//! rollout once) and `history`. Exit 2 when preflight refused a start.

use crate::follow::follow;
use crate::{
    EXIT_REFUSED, Exit, OperatorConn, Output, RolloutView, Started, render_checks, render_rollout,
    summary,
};

/// After `upgrade` or `rollback` answered: print a refusal (exit 2), or
/// follow the new rollout (or, detached, say how to follow it).
pub async fn started(
    conn: &mut OperatorConn,
    started: Started,
    detach: bool,
    output: Output,
) -> anyhow::Result<()> {
    let id = match started {
        Started::Started { rollout_id } => rollout_id,
        Started::Refused { detail, checks } => {
            match output {
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
        match output {
            Output::Json => {
                println!("{}", serde_json::json!({"started": true, "rollout": id}))
            }
            Output::Table => println!("started rollout {id}; follow it with `baton watch`"),
        }
        return Ok(());
    }
    follow(conn, &id, output).await
}

/// A rollback's answer: either a new rollout that walks members back
/// (followed like any other), or, when no member had moved, the old one
/// closed in place.
pub async fn rolled_back(
    conn: &mut OperatorConn,
    answer: Started,
    detach: bool,
    output: Output,
) -> anyhow::Result<()> {
    if let Started::Started { rollout_id } = &answer {
        let v = conn.rollout(Some(rollout_id)).await?;
        if let baton_domain::Phase::Closed { reason } = &v.state.phase {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"started": false, "closed": rollout_id, "reason": reason})
                ),
                Output::Table => println!(
                    "rollout {rollout_id} closed: {reason}\nnext: `baton upgrade --to VERSION` starts a new rollout"
                ),
            }
            return Ok(());
        }
    }
    started(conn, answer, detach, output).await
}

/// Follows the active (or named) rollout until it completes or pauses.
pub async fn watch(
    conn: &mut OperatorConn,
    rollout: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    let id = conn.rollout(rollout).await?.state.id;
    follow(conn, &id, output).await
}

/// Prints a rollout once.
pub fn show(v: RolloutView, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string(&v)?),
        Output::Table => print!("{}", render_rollout(&v)),
    }
    Ok(())
}

/// One line (or one JSON summary) per journaled rollout.
pub async fn history(conn: &mut OperatorConn, output: Output) -> anyhow::Result<()> {
    let all = conn.history().await?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string(&all.iter().map(|v| summary(&v.state)).collect::<Vec<_>>())?
        ),
        Output::Table => {
            for v in &all {
                let s = summary(&v.state);
                let by: Vec<String> = s
                    .audit
                    .iter()
                    .map(|a| format!("{} by {}", a.what, a.by))
                    .collect();
                println!(
                    "{:<16} -> {:<8} {:>8}ms  order {}  {}{}",
                    s.rollout,
                    s.target,
                    s.total_ms,
                    s.order.join(","),
                    s.outcome,
                    if by.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", by.join(", "))
                    }
                );
            }
        }
    }
    Ok(())
}

/// Asks for the cluster id on a terminal, to confirm a restore of `backup`;
/// refuses (exit 2, nothing touched) when stdin is not a terminal.
pub fn ask_cluster_id(backup: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(crate::Exit {
            code: crate::EXIT_REFUSED,
            message: format!(
                "a restore replaces every member's data: confirm it with --confirm CLUSTER_ID (stdin is not a terminal to ask on); nothing was touched (backup {backup})"
            ),
        }
        .into());
    }
    eprint!(
        "Restoring backup {backup} stops every member and replaces its data (the old data is kept aside).\nType the cluster id to confirm: "
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

/// `baton rollback --restore`: restores the latest rollout's verified
/// pre-upgrade backup (onto the release it was taken on), after saying
/// which writes that loses.
pub async fn rollback_by_restore(
    conn: &mut OperatorConn,
    confirm: Option<String>,
    detach: bool,
    output: Output,
) -> anyhow::Result<()> {
    let history = conn.history().await?;
    let Some(latest) = history
        .iter()
        .rev()
        .find(|v| !v.state.id.contains("-restore-"))
    else {
        anyhow::bail!("no rollout to roll back; nothing was touched");
    };
    let r = &latest.state;
    let baton_domain::BackupState::Verified(b) = &r.backup.state else {
        return Err(crate::Exit {
            code: crate::EXIT_REFUSED,
            message: format!(
                "rollout {} has no verified pre-upgrade backup (its backup is {}), so it cannot be rolled back by a restore; `baton backups list` shows what there is; nothing was touched",
                r.id,
                r.backup.state.name()
            ),
        }
        .into());
    };
    // The backup began when its command was issued: writes acked after
    // that may be missing from it, and are lost by the restore.
    let began = r
        .commands
        .values()
        .filter(|c| matches!(&c.action, baton_domain::Action::Backup { id } if *id == b.id))
        .map(|c| c.issued_at)
        .min()
        .unwrap_or(b.verified_at);
    eprintln!(
        "rollback --restore of rollout {}: restores backup {} (revision {}, taken from {} on {}); writes acknowledged after {} will be lost",
        r.id,
        b.id,
        b.revision,
        b.member,
        r.previous,
        began.rfc3339()
    );
    let confirm = match confirm {
        Some(c) => c,
        None => ask_cluster_id(&b.id)?,
    };
    let started = conn.restore(&b.id, &confirm).await?;
    self::started(conn, started, detach, output).await
}
