//! `baton-bench`: the rollout benchmark behind BENCHMARKS.md.
//!
//! Runs, side by side and interleaved, `--runs` rounds of four strategies on
//! fresh 3-member samplekv clusters with a writer at 100 writes/s (2 s
//! request timeout):
//! - `baton`: `baton upgrade --to v2`;
//! - `sigterm`: a naive script that, in id order, SIGTERMs a member, switches
//!   its release, starts it and waits until it is healthy and caught up;
//! - `kill9`: the same with kill -9;
//! - `idle`: no upgrade, the same writer for the same time (the baseline
//!   write gap).
//!
//! The `sigterm` script's per-member times (stop + start + healthy + caught
//! up) are the floors baton's total is compared against. Prints a table of
//! medians and maxima and one JSON line with every figure.
//!
//! `--timeline` prints each baton run's journal and where its three largest
//! write gaps were; `--probe-restart` restarts one follower under load and
//! prints what it and the leader report every 2 ms (when the leader first
//! reaches it again).

use std::time::Duration;

use anyhow::{Context, Result};
use baton_harness::{Cluster, ClusterSpec, MemberMode};
use nix::sys::signal::Signal;
use samplekv::client::Client;
use samplekv::writer::{WriterConfig, WriterReport, run_writer, verify};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize)]
struct RunResult {
    strategy: &'static str,
    max_write_gap_ms: u64,
    leader_changes: u64,
    /// Distinct terms seen by acked writes, minus one (elections won).
    term_changes: u64,
    failed_writes: u64,
    lost_writes: usize,
    total_ms: u64,
    /// sigterm: per follower, stop + start + healthy + caught up;
    /// baton: per member, its step from stop to caught up.
    floors_ms: Vec<u64>,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    if v.is_empty() { 0 } else { v[v.len() / 2] }
}

struct Load {
    client: Client,
    stop: CancellationToken,
    writer: tokio::task::JoinHandle<WriterReport>,
}

fn load(cluster: &Cluster) -> Load {
    let client = Client::new(cluster.addrs()).with_request_timeout(Duration::from_secs(2));
    let stop = CancellationToken::new();
    let cfg = WriterConfig {
        rate_per_sec: 100,
        max_writes: 100_000,
        max_duration: Duration::from_secs(120),
        key_prefix: "bench-".into(),
        request_timeout: Duration::from_secs(2),
        ..WriterConfig::default()
    };
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move { run_writer(&client, cfg, stop).await })
    };
    Load {
        client,
        stop,
        writer,
    }
}

async fn finish(l: Load) -> Result<(WriterReport, usize)> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    l.stop.cancel();
    let report = l.writer.await?;
    let lost = verify(&l.client, &report).await.lost.len();
    Ok((report, lost))
}

/// Waits until member `i` answers as a follower or leader with lag 0.
async fn wait_caught_up(cluster: &Cluster, i: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mine = cluster.member_status(i).await.ok();
        let leader = match cluster.leader_index().await {
            Ok(l) => cluster.member_status(l).await.ok(),
            Err(_) => None,
        };
        if let (Some(m), Some(l)) = (mine, leader)
            && m.leader_id != 0
            && m.applied_revision >= l.committed_revision
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "member {i} never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn naive(signal: Signal, name: &'static str) -> Result<RunResult> {
    let mut cluster = Cluster::start(ClusterSpec::default()).await?;
    let v2 = cluster.publish("v2", 1, false)?;
    let l = load(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let mut floors = Vec::new();
    for i in 0..cluster.members.len() {
        let was_leader = cluster.leader_index().await.ok() == Some(i);
        let m0 = Instant::now();
        let p = cluster.members[i]
            .proc
            .as_mut()
            .context("external member")?;
        p.signal(signal);
        p.wait_exit(Duration::from_secs(30))?;
        // Switch the release (a copy of the v2 build, as an installer would).
        let base = cluster.members[i].base_dir.clone();
        let rel = base.join("releases/v2");
        std::fs::create_dir_all(&rel)?;
        for f in ["samplekv", "manifest.toml"] {
            std::fs::copy(v2.join(f), rel.join(f))?;
        }
        let tmp = base.join(".current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink("releases/v2", &tmp)?;
        std::fs::rename(&tmp, base.join("current"))?;
        cluster.start_member(i, &[])?;
        wait_caught_up(&cluster, i).await?;
        // A follower's restart is the floor: baton only ever stops followers
        // (the old leader is one by the time it is stopped).
        if !was_leader {
            floors.push(u64::try_from(m0.elapsed().as_millis())?);
        }
    }
    let total_ms = u64::try_from(t0.elapsed().as_millis())?;
    let (r, lost) = finish(l).await?;
    Ok(RunResult {
        strategy: name,
        max_write_gap_ms: r.max_write_gap_ms,
        leader_changes: r.leader_changes,
        term_changes: r.terms_seen.len().saturating_sub(1) as u64,
        failed_writes: r.failed,
        lost_writes: lost,
        total_ms,
        floors_ms: if name == "sigterm" {
            floors
        } else {
            Vec::new()
        },
    })
}

async fn baton() -> Result<RunResult> {
    let cluster = Cluster::start(ClusterSpec {
        // The default policy (tolerable_lag 10). A looser 20 let the next
        // follower stop while the previous one was still ~200 ms behind
        // the leader at 100 writes/s, which paused commits for ~80 ms.
        ..ClusterSpec::supervised(3)
    })
    .await?;
    cluster.publish("v2", 1, false)?;
    let load_started = baton_harness::unix_ms();
    let l = load(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let wall0 = baton_harness::unix_ms();
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    anyhow::ensure!(code == 0, "baton upgrade failed: {stderr}\n{out}");
    if std::env::args().any(|a| a == "--timeline") {
        baton_harness::print_timeline(
            &cluster.dir.path().join(baton_harness::JOURNAL),
            wall0,
            baton_harness::unix_ms(),
        )?;
    }
    let steps: Vec<u64> = out["summary"]["step_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s[1].as_u64()).collect())
        .unwrap_or_default();
    let total_ms = u64::try_from(t0.elapsed().as_millis())?;
    let (r, lost) = finish(l).await?;
    if std::env::args().any(|a| a == "--timeline") {
        // Where the largest gaps were: the acks on either side of each.
        let mut acks: Vec<_> = r.acked_writes.iter().collect();
        acks.sort_by_key(|w| w.acked_at_ms);
        let mut gaps: Vec<_> = acks.windows(2).collect();
        gaps.sort_by_key(|w| std::cmp::Reverse(w[1].acked_at_ms.saturating_sub(w[0].acked_at_ms)));
        for (rank, w) in gaps.iter().take(3).enumerate() {
            eprintln!(
                "  {} gap {} ms from @{} (ms after `baton upgrade` began): last ack before it by leader {} (term {}), first after by leader {} (term {})",
                ["largest", "2nd", "3rd"][rank],
                w[1].acked_at_ms - w[0].acked_at_ms,
                (load_started + w[0].acked_at_ms) as i64 - wall0 as i64,
                w[0].leader_id,
                w[0].term,
                w[1].leader_id,
                w[1].term
            );
        }
    }
    Ok(RunResult {
        strategy: "baton",
        max_write_gap_ms: r.max_write_gap_ms,
        leader_changes: r.leader_changes,
        term_changes: r.terms_seen.len().saturating_sub(1) as u64,
        failed_writes: r.failed,
        lost_writes: lost,
        total_ms,
        floors_ms: steps,
    })
}

async fn idle(duration: Duration) -> Result<RunResult> {
    let cluster = Cluster::start(ClusterSpec {
        mode: MemberMode::Supervise,
        ..ClusterSpec::default()
    })
    .await?;
    let l = load(&cluster);
    tokio::time::sleep(Duration::from_secs(1) + duration).await;
    let (r, lost) = finish(l).await?;
    Ok(RunResult {
        strategy: "idle",
        max_write_gap_ms: r.max_write_gap_ms,
        leader_changes: r.leader_changes,
        term_changes: r.terms_seen.len().saturating_sub(1) as u64,
        failed_writes: r.failed,
        lost_writes: lost,
        total_ms: u64::try_from(duration.as_millis())?,
        floors_ms: Vec::new(),
    })
}

/// `--probe-restart`: restarts one follower under load and prints, every
/// 2 ms for 400 ms, what it and the leader report (diagnostics).
async fn probe_restart() -> Result<()> {
    let mut cluster = Cluster::start(ClusterSpec::default()).await?;
    let l = load(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = cluster.leader_index().await?;
    let i = (leader + 1) % cluster.members.len();
    let t0 = Instant::now();
    let p = cluster.members[i]
        .proc
        .as_mut()
        .context("external member")?;
    p.signal(Signal::SIGTERM);
    p.wait_exit(Duration::from_secs(30))?;
    eprintln!("@{} member {i} exited", t0.elapsed().as_millis());
    cluster.start_member(i, &[])?;
    eprintln!("@{} member {i} started", t0.elapsed().as_millis());
    let mut last = String::new();
    while t0.elapsed() < Duration::from_millis(600) {
        let m = cluster.member_status(i).await.ok();
        let ld = cluster.member_status(leader).await.ok();
        let line = format!(
            "member: {} leader_id {} applied {} committed {} | leader committed {}",
            m.as_ref()
                .map_or("-".into(), |m| format!("term {}", m.term)),
            m.as_ref().map_or(0, |m| m.leader_id),
            m.as_ref().map_or(0, |m| m.applied_revision),
            m.as_ref().map_or(0, |m| m.committed_revision),
            ld.as_ref().map_or(0, |m| m.committed_revision),
        );
        if line != last {
            eprintln!("@{} {line}", t0.elapsed().as_millis());
            last = line;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (r, lost) = finish(l).await?;
    eprintln!("max gap {} ms, lost {lost}", r.max_write_gap_ms);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    baton_harness::init();
    if std::env::args().any(|a| a == "--probe-restart") {
        return probe_restart().await;
    }
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    // `--only S`: one strategy, for investigating it.
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let all = run_all(runs, only.as_deref()).await?;
    print_table(&all);
    print_summary(&all);
    Ok(())
}

/// `runs` interleaved rounds of every strategy (or only `only`), each run's
/// figures on stderr as it ends.
async fn run_all(runs: usize, only: Option<&str>) -> Result<Vec<RunResult>> {
    let mut all: Vec<RunResult> = Vec::new();
    for run in 1..=runs {
        for strategy in STRATEGIES {
            if only.is_some_and(|o| o != strategy) {
                continue;
            }
            let r = match strategy {
                "baton" => baton().await,
                "sigterm" => naive(Signal::SIGTERM, "sigterm").await,
                "kill9" => naive(Signal::SIGKILL, "kill9").await,
                _ => {
                    let last_baton = all
                        .iter()
                        .rev()
                        .find(|r| r.strategy == "baton")
                        .map_or(2000, |r| r.total_ms);
                    idle(Duration::from_millis(last_baton)).await
                }
            }
            .with_context(|| format!("run {run} {strategy}"))?;
            eprintln!(
                "run {run} {strategy:<8} gap {:>5} ms  leader changes {}  term changes {}  failed {}  lost {}  total {:>6} ms",
                r.max_write_gap_ms,
                r.leader_changes,
                r.term_changes,
                r.failed_writes,
                r.lost_writes,
                r.total_ms
            );
            all.push(r);
        }
    }
    Ok(all)
}

/// The strategies, in the order they run in each round and are tabled.
const STRATEGIES: [&str; 4] = ["baton", "sigterm", "kill9", "idle"];

/// The markdown table of medians and maxima, one row per strategy.
fn print_table(all: &[RunResult]) {
    println!(
        "| strategy | median gap ms | max gap ms | median leader changes | max leader changes | max term changes | median failed writes | lost writes | median total ms | max total ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in STRATEGIES {
        let rs: Vec<&RunResult> = all.iter().filter(|r| r.strategy == s).collect();
        let col = |f: fn(&RunResult) -> u64| rs.iter().map(|r| f(r)).collect::<Vec<_>>();
        println!(
            "| {s} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            median(col(|r| r.max_write_gap_ms)),
            col(|r| r.max_write_gap_ms).into_iter().max().unwrap_or(0),
            median(col(|r| r.leader_changes)),
            col(|r| r.leader_changes).into_iter().max().unwrap_or(0),
            col(|r| r.term_changes).into_iter().max().unwrap_or(0),
            median(col(|r| r.failed_writes)),
            rs.iter().map(|r| r.lost_writes).sum::<usize>(),
            median(col(|r| r.total_ms)),
            col(|r| r.total_ms).into_iter().max().unwrap_or(0),
        );
    }
}

/// The median of `figure` over the runs of `strategy`.
fn median_of(all: &[RunResult], strategy: &str, figure: fn(&RunResult) -> u64) -> u64 {
    median(
        all.iter()
            .filter(|r| r.strategy == strategy)
            .map(figure)
            .collect(),
    )
}

/// Baton against the floors (per-member restart, idle write gap), then one
/// JSON line with every figure.
fn print_summary(all: &[RunResult]) {
    // A follower restart by the naive script is the floor: baton only ever
    // stops followers (the old leader is one by then).
    let floors_of = |strategy: &str| {
        median(
            all.iter()
                .filter(|r| r.strategy == strategy)
                .flat_map(|r| r.floors_ms.iter().copied())
                .collect(),
        )
    };
    let member_floor = floors_of("sigterm");
    let baton_step = floors_of("baton");
    let floor = member_floor * 3;
    let baton_total = median_of(all, "baton", |r| r.total_ms);
    let idle_gap = median_of(all, "idle", |r| r.max_write_gap_ms);
    let baton_gap = median_of(all, "baton", |r| r.max_write_gap_ms);
    let overhead_per_member = (baton_total as i64 - floor as i64) / 3;
    println!(
        "\nper-member floor (median follower stop + start + healthy + caught up, naive script): {member_floor} ms; baton's median per-member step (stop to caught up): {baton_step} ms"
    );
    println!(
        "baton median total {baton_total} ms vs 3 x floor {floor} ms: overhead {overhead_per_member} ms per member (target <= 250)"
    );
    println!(
        "baton median largest write gap {baton_gap} ms vs idle {idle_gap} ms: ratio {:.2} (target <= 2.0)",
        baton_gap as f64 / idle_gap.max(1) as f64
    );
    println!(
        "{}",
        serde_json::json!({"runs": all, "member_floor_ms": member_floor, "baton_step_ms": baton_step, "floor_ms": floor, "baton_total_ms": baton_total, "overhead_per_member_ms": overhead_per_member, "idle_gap_ms": idle_gap, "baton_gap_ms": baton_gap})
    );
}
