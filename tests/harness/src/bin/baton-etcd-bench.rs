//! `baton-etcd-bench`: the etcd 3.4.23 -> 3.5.1 benchmark behind BENCHMARKS.md.
//!
//! Interleaved rounds of three strategies on fresh 3-member etcd clusters,
//! each with a writer at 100 writes/s and a 2 s client timeout:
//! - `baton`: `baton upgrade --to 3.5.1`;
//! - `sigterm`: a naive script, in member-list order: point `current` at
//!   3.5.1, SIGTERM the member (its agent starts it again on the new
//!   release), wait until it answers healthy on 3.5.1;
//! - `kill9`: the same with kill -9.
//!
//! Reports the largest write gap, leader changes (new raft terms among acked
//! writes), failed writes and total time, as medians and maxima.

use std::time::Duration;

use anyhow::{Context, Result};
use baton_harness::etcd::{EtcdCluster, assert_version, etcd_35, etcd_verify, etcd_writer};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize)]
struct Run {
    strategy: &'static str,
    max_write_gap_ms: u64,
    leader_changes: u64,
    failed_writes: u64,
    lost_writes: usize,
    total_ms: u64,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    if v.is_empty() { 0 } else { v[v.len() / 2] }
}

async fn one(strategy: &'static str) -> Result<Run> {
    let e35 = etcd_35()?;
    let cluster = EtcdCluster::start(3, "tolerable_lag = 1000\n").await?;
    cluster.publish("3.5.1", &e35)?;
    let stop = CancellationToken::new();
    let writer = tokio::spawn(etcd_writer(
        cluster.clients(),
        "b-".into(),
        100,
        100_000,
        stop.clone(),
    ));
    cluster
        .wait_status("agents fresh", Duration::from_secs(20), |s| {
            s.members.iter().all(|m| m.fresh && m.connected)
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    match strategy {
        "baton" => {
            let (code, _, stderr) =
                tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "3.5.1"]))?;
            anyhow::ensure!(code == 0, "baton upgrade failed: {stderr}");
        }
        _ => {
            let signal = if strategy == "sigterm" {
                Signal::SIGTERM
            } else {
                Signal::SIGKILL
            };
            let v35 = cluster.build_release("3.5.1", &e35)?;
            for (i, m) in cluster.members.iter().enumerate() {
                let rel = m.base_dir.join("releases/3.5.1");
                std::fs::create_dir_all(&rel)?;
                std::fs::copy(v35.join("etcd"), rel.join("etcd"))?;
                let tmp = m.base_dir.join(".current.tmp");
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink("releases/3.5.1", &tmp)?;
                std::fs::rename(&tmp, m.base_dir.join("current"))?;
                let pid: i32 = std::fs::read_to_string(m.agent_dir.join("member.pid"))?
                    .split_whitespace()
                    .next()
                    .context("pidfile")?
                    .parse()?;
                kill(Pid::from_raw(pid), signal)?;
                cluster
                    .wait_status("member back on 3.5.1", Duration::from_secs(60), |s| {
                        s.members[i].report.as_ref().is_some_and(|r| {
                            r.release == "3.5.1" && r.health == baton_domain::Health::Healthy
                        })
                    })
                    .await?;
            }
        }
    }
    let total_ms = u64::try_from(t0.elapsed().as_millis())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let report = writer.await?;
    let lost = etcd_verify(&cluster.clients(), &report).await?.len();
    Ok(Run {
        strategy,
        max_write_gap_ms: report.max_write_gap_ms,
        leader_changes: report.leader_changes() as u64,
        failed_writes: report.failed,
        lost_writes: lost,
        total_ms,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    baton_harness::init();
    assert_version(&etcd_35()?, "3.5.1")?;
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let mut all = Vec::new();
    for run in 1..=runs {
        for s in ["baton", "sigterm", "kill9"] {
            let r = one(s).await.with_context(|| format!("run {run} {s}"))?;
            eprintln!(
                "run {run} {s:<8} gap {:>5} ms  leader changes {}  failed {}  lost {}  total {:>6} ms",
                r.max_write_gap_ms, r.leader_changes, r.failed_writes, r.lost_writes, r.total_ms
            );
            all.push(r);
        }
    }
    println!(
        "| strategy | median gap ms | max gap ms | median leader changes | max leader changes | median failed writes | max failed writes | lost writes | median total ms | max total ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in ["baton", "sigterm", "kill9"] {
        let rs: Vec<&Run> = all.iter().filter(|r| r.strategy == s).collect();
        let col = |f: fn(&Run) -> u64| rs.iter().map(|r| f(r)).collect::<Vec<_>>();
        println!(
            "| {s} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            median(col(|r| r.max_write_gap_ms)),
            col(|r| r.max_write_gap_ms).into_iter().max().unwrap_or(0),
            median(col(|r| r.leader_changes)),
            col(|r| r.leader_changes).into_iter().max().unwrap_or(0),
            median(col(|r| r.failed_writes)),
            col(|r| r.failed_writes).into_iter().max().unwrap_or(0),
            rs.iter().map(|r| r.lost_writes).sum::<usize>(),
            median(col(|r| r.total_ms)),
            col(|r| r.total_ms).into_iter().max().unwrap_or(0),
        );
    }
    println!("{}", serde_json::json!({ "runs": all }));
    Ok(())
}
