//! Following a rollout with live progress (`baton upgrade`, `baton watch`):
//! long polls of the operator API until the rollout completes, pauses or
//! closes, with spinners on a terminal and changed lines only in a log.
//! Ends with the run's summary and the exit code that says how it ended.
//! When the coordinator leader changes on the way, the connection finds the
//! new one; this loop says so in one line on stderr and carries on.

use std::io::IsTerminal;
use std::time::Duration;

use baton_domain::Phase;

use crate::{EXIT_PAUSED, Exit, OperatorConn, Output, summary};

/// How often `follow` writes a moving lag to a non-terminal.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// How long one long poll of `follow` waits for a change.
const FOLLOW_WAIT: Duration = Duration::from_secs(2);
/// How often `follow` asks a coordinator that does not long-poll.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Follows a rollout with live progress until it completes or pauses.
pub async fn follow(conn: &mut OperatorConn, id: &str, output: Output) -> anyhow::Result<()> {
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
        // The connection found a new leader (the old one went away): the
        // journal is shared, so the rollout goes on; the rows printed so
        // far stay, and only what changed is printed.
        if let Some(addr) = conn.take_leader_change() {
            let note = format!("coordinator leader changed; following the rollout on {addr}");
            if tty {
                let _ = multi.println(note);
            } else {
                eprintln!("{note}");
            }
        }
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
            let finished = !r.phase.is_moving();
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
                            s.handover_target
                                .as_deref()
                                .unwrap_or("none (leadership did not move)")
                        );
                        for (m, ms) in &s.step_ms {
                            println!("  {m}: {ms} ms");
                        }
                        println!("backup: {}", s.backup.text());
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
                            "rollout {} paused: {reason}\nnext: {}",
                            r.id,
                            crate::render::paused_hint(r)
                        ),
                    }
                    .into());
                }
                return Ok(());
            }
            Phase::Running | Phase::Aborting | Phase::Pausing { .. } => {}
        }
        // A coordinator without long polls answers at once with version 0:
        // then poll at a fixed pace.
        if version == 0 {
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}
