//! `baton-etcd-bench`: the etcd 3.4.23 -> 3.5.1 benchmark behind BENCHMARKS.md.
//!
//! Interleaved rounds of three strategies on fresh 3-member etcd clusters,
//! each with a writer at 100 writes/s and a 2 s client timeout:
//! - `baton`: `baton upgrade --to 3.5.1`;
//! - `sigterm`: a naive script, in member-list order: point `current` at
//!   3.5.1, SIGTERM the member (its agent starts it again on the new
//!   release), wait until it answers healthy on 3.5.1;
//! - `kill9`: the same with kill -9;
//! - `aware`: a hand-written leader-aware script, baton's procedure without
//!   baton: followers first (switch, SIGTERM, wait healthy and caught up),
//!   then MoveLeader to a follower, then the old leader. It talks to etcd
//!   directly and polls every 10 ms.
//!
//! Reports the largest write gap, leader changes (new raft terms among acked
//! writes), failed writes and total time, as medians and maxima.

use std::time::Duration;

use anyhow::{Context, Result};
use baton_harness::etcd::{EtcdCluster, EtcdLoad, assert_version, etcd_35, etcd_call, etcd_verify};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::time::Instant;

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

async fn status(addr: &str) -> Option<serde_json::Value> {
    etcd_call(
        addr,
        "/v3/maintenance/status",
        &serde_json::json!({}),
        Duration::from_millis(300),
    )
    .await
    .ok()
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Waits until the member at `addr` runs 3.5.1, knows a leader and has
/// applied everything the leader had when we looked.
async fn wait_ready(clients: &[String], addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(me) = status(addr).await
            && me["version"] == "3.5.1"
            && num(&me, "leader") != 0
        {
            let leader_id = num(&me, "leader");
            for c in clients {
                if let Some(l) = status(c).await
                    && num(&l["header"], "member_id") == leader_id
                    && num(&me, "raftAppliedIndex") + 5 >= num(&l, "raftIndex")
                {
                    return Ok(());
                }
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{addr} never became ready on 3.5.1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn switch_and_signal(
    m: &baton_harness::etcd::EtcdMember,
    v35: &std::path::Path,
    signal: Signal,
) -> Result<()> {
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
    Ok(())
}

/// The leader-aware script: followers, MoveLeader, old leader.
async fn aware(cluster: &EtcdCluster, v35: &std::path::Path) -> Result<()> {
    let clients = cluster.clients();
    let mut leader = None;
    for (i, c) in clients.iter().enumerate() {
        if let Some(s) = status(c).await
            && num(&s, "leader") == num(&s["header"], "member_id")
        {
            leader = Some(i);
        }
    }
    let leader = leader.context("no leader")?;
    for (i, m) in cluster
        .members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
    {
        switch_and_signal(m, v35, Signal::SIGTERM)?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        wait_ready(&clients, &clients[i]).await?;
    }
    // MoveLeader to the first follower, then wait until it leads.
    let to = (0..clients.len())
        .find(|i| *i != leader)
        .context("a follower")?;
    let to_id =
        status(&clients[to]).await.context("follower status")?["header"]["member_id"].clone();
    etcd_call(
        &clients[leader],
        "/v3/maintenance/transfer-leadership",
        &serde_json::json!({"targetID": to_id}),
        Duration::from_secs(5),
    )
    .await?;
    switch_and_signal(&cluster.members[leader], v35, Signal::SIGTERM)?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    wait_ready(&clients, &clients[leader]).await
}

async fn one(strategy: &'static str) -> Result<Run> {
    let e35 = etcd_35()?;
    let cluster = EtcdCluster::start(3, "tolerable_lag = 1000\n").await?;
    cluster.publish("3.5.1", &e35)?;
    let load = EtcdLoad::start(&cluster, "b-", 100).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let wall0 = baton_harness::unix_ms();
    match strategy {
        "aware" => {
            let v35 = cluster.build_release("3.5.1", &e35)?;
            aware(&cluster, &v35).await?;
        }
        "baton" => {
            let (code, _, stderr) =
                tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "3.5.1"]))?;
            anyhow::ensure!(code == 0, "baton upgrade failed: {stderr}");
            if std::env::args().any(|a| a == "--timeline") {
                baton_harness::print_timeline(
                    &cluster.dir.path().join("coordinator-state/journal.jsonl"),
                    wall0,
                    baton_harness::unix_ms(),
                )?;
            }
        }
        _ => {
            let signal = if strategy == "sigterm" {
                Signal::SIGTERM
            } else {
                Signal::SIGKILL
            };
            let v35 = cluster.build_release("3.5.1", &e35)?;
            for (i, m) in cluster.members.iter().enumerate() {
                switch_and_signal(m, &v35, signal)?;
                cluster
                    .wait_status("member back on 3.5.1", Duration::from_secs(60), |s| {
                        s.members[i].report.as_ref().is_some_and(|r| {
                            r.state.release == "3.5.1"
                                && r.state.health == baton_domain::Health::Healthy
                        })
                    })
                    .await?;
            }
        }
    }
    let total_ms = u64::try_from(t0.elapsed().as_millis())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.finish().await?;
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
    // `--only S`: one strategy (for investigating it; the figures in
    // BENCHMARKS.md always come from all four, interleaved).
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let mut all = Vec::new();
    for run in 1..=runs {
        for s in STRATEGIES {
            if only.as_deref().is_some_and(|o| o != s) {
                continue;
            }
            let r = one(s).await.with_context(|| format!("run {run} {s}"))?;
            eprintln!(
                "run {run} {s:<8} gap {:>5} ms  leader changes {}  failed {}  lost {}  total {:>6} ms",
                r.max_write_gap_ms, r.leader_changes, r.failed_writes, r.lost_writes, r.total_ms
            );
            all.push(r);
        }
    }
    print_report(&all);
    Ok(())
}

/// The strategies, in the order they run in each round and are tabled.
const STRATEGIES: [&str; 4] = ["baton", "aware", "sigterm", "kill9"];

/// The markdown table of medians and maxima, baton against the leader-aware
/// script, and one JSON line with every run.
fn print_report(all: &[Run]) {
    println!(
        "| strategy | median gap ms | max gap ms | median leader changes | max leader changes | median failed writes | max failed writes | lost writes | median total ms | max total ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in STRATEGIES {
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
    let med = |s: &str| {
        median(
            all.iter()
                .filter(|r| r.strategy == s)
                .map(|r| r.total_ms)
                .collect(),
        )
    };
    println!(
        "\nbaton median total {} ms vs leader-aware script {} ms: {:.2}x (target <= 1.5)",
        med("baton"),
        med("aware"),
        med("baton") as f64 / med("aware").max(1) as f64
    );
    println!("{}", serde_json::json!({ "runs": all }));
}
