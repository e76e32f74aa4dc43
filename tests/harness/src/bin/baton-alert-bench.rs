//! `baton-alert-bench`: how long from the start of a stalled catch-up to
//! the page, behind BENCHMARKS.md.
//!
//! Each run starts a fresh supervised 3-member samplekv cluster, a real
//! Alertmanager 0.25 (its webhook receiver is a listener here) and a direct
//! webhook sink, then upgrades to v2 and pauses every follower's apply, so
//! the first follower's catch-up stalls from the moment it is healthy on v2
//! (the journal's healthy gate). Measured per run:
//! - `alertmanager`: until Alertmanager's webhook notification arrives;
//! - `webhook`: until baton's own webhook sink delivers.
//!
//! Usage: `baton-alert-bench [--runs N] [--stall-after-ms MS]`.

use std::time::Duration;

use anyhow::{Context, Result};
use baton_harness::alertmanager::{Alertmanager, Receiver, am_first};
use baton_harness::stall::{
    Load, Unpause, catch_up_started, cluster_with_pause_files, start_stalled_rollout,
};

const HEARTBEAT_MS: u64 = 300;

fn arg(name: &str, default: u64) -> u64 {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// One run: (to Alertmanager's receiver, to the direct webhook) in ms.
async fn one(stall_after_ms: u64) -> Result<(u64, u64)> {
    let am_hook = Receiver::start().await?;
    let hook = Receiver::start().await?;
    let dir = tempfile::tempdir()?;
    let am = Alertmanager::start(dir.path(), &am_hook.url("/hook")).await?;
    let extra = format!(
        "tolerable_lag = 5\nstall_after_ms = {stall_after_ms}\ncatchup_timeout_ms = 600000\nsteady_stall_after_ms = 600000\n\
         [alerting]\n[[alerting.sink]]\nkind = \"alertmanager\"\nurl = \"{}\"\n[[alerting.sink]]\nkind = \"webhook\"\nurl = \"{}\"\n",
        am.url(),
        hook.url("/baton")
    );
    let (cluster, files) = cluster_with_pause_files(3, HEARTBEAT_MS, &extra).await?;
    let _unpause = Unpause(files.clone());
    cluster.publish("v2", 1, false)?;
    // Some writes, so a stalled follower's lag grows.
    let load = Load::start(&cluster, "bench-");
    start_stalled_rollout(&cluster, &files)?;
    if std::env::args().any(|a| a == "--verbose") {
        for _ in 0..(stall_after_ms / 250 + 40) {
            if let Ok(st) = tokio::task::block_in_place(|| cluster.status()) {
                let rows: Vec<String> = st
                    .members
                    .iter()
                    .map(|m| {
                        format!(
                            "{} {:?} lag {:?} applied {:?}",
                            m.member,
                            m.report.as_ref().map(|r| r.state.role),
                            m.lag,
                            m.report.as_ref().map(|r| r.state.applied_revision)
                        )
                    })
                    .collect();
                eprintln!(
                    "  {} status: {}",
                    baton_harness::unix_ms(),
                    rows.join(" | ")
                );
            }
            if !am_hook.received().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let within = Duration::from_millis(stall_after_ms) + Duration::from_secs(60);
    let got = am_hook
        .wait_for_am("BatonCatchUpStalled", "firing", within)
        .await?;
    let (first, alert) = am_first(&got, "BatonCatchUpStalled", "firing").context("arrival")?;
    let am_at = first.at_unix_ms;
    let direct = hook
        .wait_for("the stall at the webhook", within, |g| {
            g.iter()
                .any(|r| r.body["alert"]["labels"]["alertname"] == "BatonCatchUpStalled")
        })
        .await?;
    let hook_at = direct
        .iter()
        .find(|r| r.body["alert"]["labels"]["alertname"] == "BatonCatchUpStalled")
        .map(|r| r.at_unix_ms)
        .context("arrival")?;
    let member = alert["labels"]["member"]
        .as_str()
        .context("member label")?
        .to_owned();
    let began = catch_up_started(&cluster, &member)?;
    if std::env::args().any(|a| a == "--verbose") {
        for r in &got {
            eprintln!(
                "  alertmanager at +{} ms: {}",
                r.at_unix_ms.saturating_sub(began),
                r.body
            );
        }
        for e in cluster.journal()? {
            let at = e["at"].as_u64().unwrap_or(0);
            eprintln!("  journal {:+} ms: {e}", at as i64 - began as i64);
        }
    }
    let (_, lost) = load.finish().await?;
    anyhow::ensure!(lost.is_empty(), "acked writes lost: {lost:?}");
    Ok((am_at.saturating_sub(began), hook_at.saturating_sub(began)))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    baton_harness::init();
    let runs = arg("--runs", 5);
    let stall_after_ms = arg("--stall-after-ms", 5000);
    let (mut am, mut hook) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let (a, h) = one(stall_after_ms)
            .await
            .with_context(|| format!("run {run}"))?;
        eprintln!(
            "run {run}: alertmanager {a} ms, webhook {h} ms (stall_after {stall_after_ms} ms)"
        );
        am.push(a);
        hook.push(h);
    }
    println!("| path | median ms | max ms | median over stall_after ms | target |");
    println!("|---|---|---|---|---|");
    for (name, v) in [("alertmanager", &am), ("webhook", &hook)] {
        let m = median(v.clone());
        println!(
            "| {name} | {m} | {} | {} | <= stall_after + 1000 ms: {} |",
            v.iter().max().copied().unwrap_or(0),
            m.saturating_sub(stall_after_ms),
            if m <= stall_after_ms + 1000 {
                "met"
            } else {
                "not met"
            }
        );
    }
    println!(
        "{}",
        serde_json::json!({ "stall_after_ms": stall_after_ms, "alertmanager_ms": am, "webhook_ms": hook })
    );
    Ok(())
}
