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
//! writes), failed writes and total time, as medians and maxima; then
//! issue 10's side-by-side ratios of baton against the leader-aware script
//! (median total, largest gap, leader changes per run, lost writes), and
//! where baton's time went, phase by phase, from its coordinator journal.
//!
//! Besides its own total, every run is also timed until every member's
//! `/version` says the cluster version is 3.5 (`cv_ms`): when the upgrade is
//! finished in etcd's own terms, the same measure for every strategy.
//!
//! `--runs N` rounds (default 10); `--only baton,aware` runs only those
//! strategies, still interleaved; `--timeline` prints each baton run's
//! journal.

use std::time::Duration;

use anyhow::{Context, Result};
use std::collections::BTreeMap;

use baton_harness::etcd::{EtcdCluster, EtcdLoad, assert_version, etcd_35, etcd_call, etcd_verify};
use baton_harness::quorum::etcd_versions;
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
    /// From the start until every member says the cluster version is 3.5.
    cv_ms: u64,
    /// baton and aware: from the start until leadership was handed over.
    /// etcd's leader rechecks the cluster version on its first commit in
    /// its term and then every 4 s, so the cluster version moves about 4 s
    /// after the handover: `cv_ms` follows `handover_ms`.
    handover_ms: u64,
    /// baton only: the journal's time by phase (see [`phases`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    phases: BTreeMap<String, u64>,
}

/// Waits (up to 30 s) until every member's `/version` says cluster 3.5.
async fn wait_cluster_version(clients: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for c in clients {
            let ok = etcd_versions(c, Duration::from_millis(300))
                .await
                .is_ok_and(|(_, cv)| cv.starts_with("3.5"));
            all &= ok;
        }
        if all {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster version never reached 3.5"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// When the journal confirmed the handover (Unix ms; 0 if it did not).
fn handover_at(journal: &std::path::Path) -> Result<u64> {
    Ok(baton_harness::read_journal(journal)?
        .into_iter()
        .find(|e| e["event"] == "handover_confirmed")
        .and_then(|e| e["at"].as_u64())
        .unwrap_or(0))
}

/// Where a baton run's time went: each interval between journaled events
/// (from `wall0`, when `baton upgrade` was invoked, to `wall1`, when it
/// returned) is charged to what the rollout was waiting for, named by the
/// event that ended it. The phases sum to the wall-clock total.
fn phases(journal: &std::path::Path, wall0: u64, wall1: u64) -> Result<BTreeMap<String, u64>> {
    let events: Vec<serde_json::Value> = baton_harness::read_journal(journal)?
        .into_iter()
        .filter(|e: &serde_json::Value| e.get("event").is_some())
        .collect();
    let mut actions: BTreeMap<String, String> = BTreeMap::new();
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    let mut prev = wall0;
    for e in &events {
        let at = e["at"].as_u64().unwrap_or(prev).max(prev);
        let kind = e["event"].as_str().unwrap_or("?");
        let action = |e: &serde_json::Value| {
            e["action"]["action"]
                .as_str()
                .or_else(|| e["action"].as_str())
                .unwrap_or("?")
                .to_owned()
        };
        let label = match kind {
            "started" => "preflight (until the rollout is journaled)".to_owned(),
            "command_issued" => {
                actions.insert(e["id"].as_str().unwrap_or("").to_owned(), action(e));
                format!("planner, until it issues {}", action(e))
            }
            "command_succeeded" | "command_failed" => format!(
                "agent runs {}",
                actions
                    .get(e["id"].as_str().unwrap_or(""))
                    .map_or("?", String::as_str)
            ),
            "gate_passed" => format!("gate {}", e["gate"].as_str().unwrap_or("?")),
            "handover_picked" => "planner, until it picks the handover".to_owned(),
            "handover_confirmed" => "handover confirmed (new leader seen)".to_owned(),
            "completed" => "verify (post-checks) until completed".to_owned(),
            other => other.to_owned(),
        };
        *out.entry(label).or_default() += at - prev;
        prev = at;
    }
    *out.entry("CLI returns after completion".to_owned())
        .or_default() += wall1.saturating_sub(prev);
    Ok(out)
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

/// The leader-aware script: followers, MoveLeader, old leader. Returns
/// when, after `t0`, the MoveLeader was answered.
async fn aware(cluster: &EtcdCluster, v35: &std::path::Path, t0: Instant) -> Result<u64> {
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
    let handover_ms = u64::try_from(t0.elapsed().as_millis())?;
    wait_ready(&clients, &clients[leader]).await?;
    Ok(handover_ms)
}

async fn one(strategy: &'static str) -> Result<Run> {
    let e35 = etcd_35()?;
    let cluster = EtcdCluster::start(3, "tolerable_lag = 1000\n").await?;
    cluster.publish("3.5.1", &e35)?;
    let load = EtcdLoad::start(&cluster, "b-", 100).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let wall0 = baton_harness::unix_ms();
    let mut phase_ms = BTreeMap::new();
    let mut handover_ms = 0;
    match strategy {
        "aware" => {
            let v35 = cluster.build_release("3.5.1", &e35)?;
            handover_ms = aware(&cluster, &v35, t0).await?;
        }
        "baton" => {
            let (code, _, stderr) =
                tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "3.5.1"]))?;
            let wall1 = baton_harness::unix_ms();
            anyhow::ensure!(code == 0, "baton upgrade failed: {stderr}");
            let journal = cluster.dir.path().join(baton_harness::JOURNAL);
            phase_ms = phases(&journal, wall0, wall1)?;
            handover_ms = handover_at(&journal)?.saturating_sub(wall0);
            if std::env::args().any(|a| a == "--timeline") {
                baton_harness::print_timeline(&journal, wall0, wall1)?;
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
    wait_cluster_version(&cluster.clients()).await?;
    let cv_ms = u64::try_from(t0.elapsed().as_millis())?;
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
        cv_ms,
        handover_ms,
        phases: phase_ms,
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
    // `--only S[,S…]`: only these strategies, still interleaved (for
    // investigating; `--only baton,aware` for the side-by-side ratios).
    let only: Option<Vec<String>> = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .map(|o| o.split(',').map(str::to_owned).collect());
    let mut all = Vec::new();
    for run in 1..=runs {
        for s in STRATEGIES {
            if only.as_ref().is_some_and(|o| !o.iter().any(|x| x == s)) {
                continue;
            }
            let r = one(s).await.with_context(|| format!("run {run} {s}"))?;
            eprintln!(
                "run {run} {s:<8} gap {:>5} ms  leader changes {}  failed {}  lost {}  total {:>6} ms  cluster 3.5 at {:>6} ms",
                r.max_write_gap_ms,
                r.leader_changes,
                r.failed_writes,
                r.lost_writes,
                r.total_ms,
                r.cv_ms
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
        if rs.is_empty() {
            continue;
        }
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
    print_ratios(all);
    println!("{}", serde_json::json!({ "runs": all }));
}

/// Issue 10's targets, baton against the leader-aware script in the same
/// run, then baton's time by phase (medians over its runs).
fn print_ratios(all: &[Run]) {
    let of = |s: &str| all.iter().filter(|r| r.strategy == s).collect::<Vec<_>>();
    let (baton, aware) = (of("baton"), of("aware"));
    if baton.is_empty() || aware.is_empty() {
        return;
    }
    let med = |rs: &[&Run], f: fn(&Run) -> u64| median(rs.iter().map(|r| f(r)).collect());
    let max = |rs: &[&Run], f: fn(&Run) -> u64| rs.iter().map(|r| f(r)).max().unwrap_or(0);
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let (bt, at) = (med(&baton, |r| r.total_ms), med(&aware, |r| r.total_ms));
    let (bc, ac) = (med(&baton, |r| r.cv_ms), med(&aware, |r| r.cv_ms));
    let (bg, ag) = (
        max(&baton, |r| r.max_write_gap_ms),
        max(&aware, |r| r.max_write_gap_ms),
    );
    let changes = |rs: &[&Run]| rs.iter().map(|r| r.leader_changes).collect::<Vec<_>>();
    let lost = |rs: &[&Run]| rs.iter().map(|r| r.lost_writes).sum::<usize>();
    println!(
        "\n{} interleaved rounds (target >= 8)",
        baton.len().min(aware.len())
    );
    println!(
        "median total: baton {bt} ms vs leader-aware script {at} ms: {:.2}x (target <= 1.0)",
        ratio(bt, at)
    );
    println!(
        "median time to cluster version 3.5: baton {bc} ms vs script {ac} ms: {:.2}x",
        ratio(bc, ac)
    );
    let (bh, ah) = (
        med(&baton, |r| r.handover_ms),
        med(&aware, |r| r.handover_ms),
    );
    println!(
        "median time to the handover: baton {bh} ms vs script {ah} ms: {:.2}x",
        ratio(bh, ah)
    );
    println!(
        "max write gap: baton {bg} ms vs script {ag} ms: {:.2}x (target <= 1.2)",
        ratio(bg, ag)
    );
    println!(
        "leader changes per run: baton {:?}, script {:?} (target: exactly 1 each)",
        changes(&baton),
        changes(&aware)
    );
    println!(
        "acked writes lost: baton {}, script {} (target 0)",
        lost(&baton),
        lost(&aware)
    );
    let mut labels: Vec<&String> = baton.iter().flat_map(|r| r.phases.keys()).collect();
    labels.sort();
    labels.dedup();
    println!("\nwhere baton's time goes (median ms per run, from the journal):");
    for l in labels {
        let v: Vec<u64> = baton
            .iter()
            .map(|r| r.phases.get(l).copied().unwrap_or(0))
            .collect();
        println!("  {:>6}  {l}", median(v));
    }
}
