//! `baton plan --to VERSION`: the dry run. Exit 2 when preflight would
//! refuse the rollout.

use crate::{EXIT_REFUSED, Exit, OperatorConn, Output, render_checks};

/// Prints the preflight verdicts and the ordered steps with their reasons.
pub async fn run(conn: &mut OperatorConn, to: &str, output: Output) -> anyhow::Result<()> {
    let plan = conn.plan(to).await?;
    match output {
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
