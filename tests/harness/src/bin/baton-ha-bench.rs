//! `baton-ha-bench`: the replicated coordinator's benchmarks behind
//! BENCHMARKS.md (issue 12).
//!
//! - `--mode resume`: `--runs` fresh 3-member samplekv clusters driven by
//!   three coordinator replicas, a writer at 100 writes/s; once the first
//!   follower's stop is journaled, the leading replica gets SIGKILL. The
//!   figure is the journal's own clock: from the kill to the first event a
//!   new leader journals (its `at`). Prints the whole distribution.
//! - `--mode ratio`: `--runs` rounds, interleaved, of `baton upgrade --to v2`
//!   on a fresh cluster with one replica and with three; medians and the
//!   ratio.
//! - `--mode throughput`: `--replicas` (3) replicas in this process on
//!   loopback gRPC, each with its log on disk; `--events` alert entries
//!   proposed one at a time (what the driver does) and then 32 at a time;
//!   events per second.
//!
//! Each mode prints a table and one JSON line with every figure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_coordinator::journal::raft::{RaftJournal, ReplicaSettings, peer};
use baton_coordinator::journal::{AlertEntry, Entry, Journal};
use baton_harness::load::start_load;
use baton_harness::{Cluster, ClusterSpec};
use baton_planner::UnixMs;
use baton_planner::alerts::{Alert, CATCH_UP_STALLED};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn spec(replicas: usize) -> ClusterSpec {
    ClusterSpec {
        policy: "tolerable_lag = 50\n".into(),
        replicas,
        ..ClusterSpec::supervised(3)
    }
}

async fn resume_once() -> Result<u64> {
    let mut cluster = Cluster::start(spec(3)).await?;
    cluster.publish("v2", 1, false)?;
    let load = start_load(&cluster);
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    if code != 0 {
        bail!("upgrade: {stderr}");
    }
    let stop = |e: &serde_json::Value| {
        e["event"] == "command_issued" && (e["action"] == "stop" || e["action"]["action"] == "stop")
    };
    let (k, _) = cluster
        .replicas
        .wait_journal("the first stop", Duration::from_secs(60), |j| {
            j.iter().any(stop)
        })
        .await?;
    cluster.replicas.kill(k);
    let killed_at = unix_ms();
    let (_, j) = cluster
        .replicas
        .wait_journal("an event after the kill", Duration::from_secs(30), |j| {
            j.iter()
                .any(|e| e["at"].as_u64().is_some_and(|at| at > killed_at))
        })
        .await?;
    let first = j
        .iter()
        .filter_map(|e| e["at"].as_u64())
        .filter(|at| *at > killed_at)
        .min()
        .context("an event after the kill")?;
    cluster.replicas.start(k)?;
    cluster
        .replicas
        .wait_journal("the rollout completed", Duration::from_secs(120), |j| {
            j.iter().any(|e| e["event"] == "completed")
        })
        .await?;
    let (_, lost, _) = load.finish().await?;
    if !lost.is_empty() {
        bail!("acked writes lost: {lost:?}");
    }
    Ok(first - killed_at)
}

async fn upgrade_ms(replicas: usize) -> Result<u64> {
    let cluster = Cluster::start(spec(replicas)).await?;
    cluster.publish("v2", 1, false)?;
    let t0 = Instant::now();
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    if code != 0 {
        bail!("upgrade with {replicas} replica(s): {stderr}");
    }
    Ok(t0.elapsed().as_millis() as u64)
}

/// Three in-process replicas; their peer servers stop with `stop`.
async fn replicas(
    dir: &std::path::Path,
    stop: &CancellationToken,
) -> Result<Vec<Arc<RaftJournal>>> {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        peers.insert(id, format!("http://{}", l.local_addr()?));
        listeners.push(l);
    }
    let mut out = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let journal = Arc::new(
            RaftJournal::open(ReplicaSettings {
                id,
                peers: peers.clone(),
                cluster: "bench".into(),
                state_dir: dir.join(format!("r{id}")),
                tls: None,
            })
            .await?,
        );
        peer::spawn_server(journal.replica_service(), listener, None, stop.clone());
        out.push(journal);
    }
    Ok(out)
}

/// Proposes `entry`, again while the leader refuses it for its lease (a
/// majority's acknowledgement late under load: openraft refuses writes
/// then, and the driver would retry after its backoff).
static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn propose(leader: &RaftJournal, entry: Entry) -> Result<u64> {
    for _ in 0..100 {
        match leader.propose(entry.clone()).await {
            Err(baton_coordinator::journal::JournalError::NotLeader { .. })
                if leader.is_leader() =>
            {
                REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            r => return Ok(r?),
        }
    }
    bail!("the leader refused 100 times")
}

fn alert(n: u64) -> Entry {
    Entry::from(AlertEntry::Fired {
        alert: Alert::firing(
            CATCH_UP_STALLED,
            "bench",
            Some(&format!("m{n}")),
            None,
            UnixMs(n),
        ),
    })
}

async fn throughput(events: u64) -> Result<(f64, f64)> {
    // Whole fire-and-resolve cycles, so each phase starts with none firing.
    let events = events.div_ceil(64) * 64;
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let rs = replicas(dir.path(), &stop).await?;
    let never = CancellationToken::new();
    let leads = rs.iter().map(|r| Box::pin(r.lead(&never)));
    let (_, i, _) =
        tokio::time::timeout(Duration::from_secs(10), futures::future::select_all(leads))
            .await
            .context("a leader")?;
    let leader = rs[i].clone();
    let t0 = Instant::now();
    for n in 0..events {
        propose(&leader, alert(n))
            .await
            .with_context(|| format!("proposal {n} of {events}"))?;
    }
    let one_at_a_time = events as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut next = events;
    let end = 2 * events;
    while next < end {
        let batch: Vec<_> = (next..(next + 32).min(end))
            .map(|n| {
                let l = leader.clone();
                tokio::spawn(async move { propose(&l, alert(n)).await })
            })
            .collect();
        next = (next + 32).min(end);
        for b in batch {
            if let Err(e) = b.await? {
                bail!(
                    "{e} (leading: {}, leader: {:?}, stopped: {:?})",
                    leader.is_leader(),
                    leader.leader(),
                    leader.stopped()
                );
            }
        }
    }
    let concurrent = events as f64 / t0.elapsed().as_secs_f64();
    stop.cancel();
    for r in &rs {
        r.shutdown().await;
    }
    Ok((one_at_a_time, concurrent))
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let runs: usize = arg("--runs", "10").parse()?;
    match arg("--mode", "resume").as_str() {
        "resume" => bench_resume(runs).await,
        "ratio" => bench_ratio(runs).await,
        "throughput" => bench_throughput(runs).await,
        other => bail!("unknown --mode {other}: resume, ratio or throughput"),
    }
}

async fn bench_resume(runs: usize) -> Result<()> {
    let mut ms = Vec::new();
    for run in 0..runs {
        let m = resume_once().await?;
        eprintln!("run {run}: next journaled event {m} ms after the kill");
        ms.push(m);
    }
    let mut sorted = ms.clone();
    sorted.sort_unstable();
    println!(
        "resume after leader death, {runs} runs: median {} ms, min {} ms, max {} ms; all: {sorted:?}",
        median(&ms),
        sorted.first().copied().unwrap_or(0),
        sorted.last().copied().unwrap_or(0)
    );
    println!(
        "{}",
        serde_json::json!({"bench": "ha-resume", "runs": runs, "median_ms": median(&ms), "all_ms": sorted})
    );
    Ok(())
}

async fn bench_ratio(runs: usize) -> Result<()> {
    let (mut one, mut three) = (Vec::new(), Vec::new());
    for run in 0..runs {
        one.push(upgrade_ms(1).await?);
        three.push(upgrade_ms(3).await?);
        eprintln!(
            "round {run}: 1 replica {} ms, 3 replicas {} ms",
            one[run], three[run]
        );
    }
    let ratio = median(&three) as f64 / median(&one).max(1) as f64;
    println!(
        "rollout, {runs} rounds: 1 replica median {} ms, 3 replicas median {} ms, ratio {ratio:.3}",
        median(&one),
        median(&three)
    );
    println!(
        "{}",
        serde_json::json!({"bench": "ha-ratio", "runs": runs, "one_ms": one, "three_ms": three, "ratio": ratio})
    );
    Ok(())
}

async fn bench_throughput(runs: usize) -> Result<()> {
    let events: u64 = arg("--events", "2000").parse()?;
    let replicas = arg("--replicas", "3");
    let mut seq = Vec::new();
    let mut conc = Vec::new();
    for _ in 0..runs {
        let (s, c) = throughput(events).await?;
        seq.push(s as u64);
        conc.push(c as u64);
    }
    eprintln!(
        "proposals refused for the leader's lease and retried: {}",
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "journal throughput, {replicas} replica(s), {events} events x {runs} runs: one at a time median {} events/s, 32 in flight median {} events/s",
        median(&seq),
        median(&conc)
    );
    println!(
        "{}",
        serde_json::json!({"bench": "ha-throughput", "replicas": replicas, "runs": runs, "events": events, "one_at_a_time": seq, "concurrent_32": conc})
    );
    Ok(())
}
