//! A replicated coordinator (three replicas on openraft) driving rolling
//! upgrades of a live samplekv cluster: the leading replica killed with
//! SIGKILL at every phase, a deposed leader's late command fenced, and a
//! partitioned replica. Real processes; a writer runs and every acked
//! write is read back.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context, Result};
use baton_harness::load::{agent_journals, start_load};
use baton_harness::{Cluster, ClusterSpec};
use nix::sys::signal::Signal;

const POLICY: &str = "tolerable_lag = 50\nhealth_timeout_ms = 20000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\nstall_after_ms = 20000\n";

fn ha_spec() -> ClusterSpec {
    ClusterSpec {
        policy: POLICY.into(),
        replicas: 3,
        ..ClusterSpec::supervised(3)
    }
}

/// A point in a rollout, recognised in its journal.
struct Phase {
    name: &'static str,
    reached: fn(&[serde_json::Value]) -> bool,
}

fn started(j: &[serde_json::Value]) -> Option<&serde_json::Value> {
    j.iter().find(|e| e["event"] == "started")
}

fn issued<'a>(
    j: &'a [serde_json::Value],
    action: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    j.iter().filter(move |e| {
        e["event"] == "command_issued" && (e["action"] == action || e["action"]["action"] == action)
    })
}

fn old_leader(j: &[serde_json::Value]) -> String {
    started(j)
        .and_then(|s| s["leader"].as_str())
        .unwrap_or_default()
        .to_owned()
}

const PHASES: [Phase; 7] = [
    Phase {
        name: "staging",
        reached: |j| issued(j, "stage").next().is_some(),
    },
    Phase {
        name: "a follower stopped",
        reached: |j| issued(j, "stop").next().is_some(),
    },
    Phase {
        name: "its health gate",
        reached: |j| {
            let Some(id) = issued(j, "start").next().map(|e| e["id"].clone()) else {
                return false;
            };
            j.iter()
                .any(|e| e["event"] == "command_succeeded" && e["id"] == id)
        },
    },
    Phase {
        name: "its catch-up",
        reached: |j| {
            j.iter()
                .any(|e| e["event"] == "gate_passed" && e["gate"] == "healthy")
        },
    },
    Phase {
        name: "the handover",
        reached: |j| j.iter().any(|e| e["event"] == "handover_picked"),
    },
    Phase {
        name: "the old leader's stop",
        reached: |j| {
            let l = old_leader(j);
            issued(j, "stop").any(|e| e["member"] == l.as_str())
        },
    },
    Phase {
        name: "the old leader's start",
        reached: |j| {
            let l = old_leader(j);
            issued(j, "start").any(|e| e["member"] == l.as_str())
        },
    },
];

/// The journal as the leading replica holds it (waiting for a leader).
async fn leader_journal(cluster: &Cluster) -> Result<(usize, Vec<serde_json::Value>)> {
    let k = cluster
        .wait_leading_replica(Duration::from_secs(15))
        .await?;
    Ok((k, cluster.replica_journal(k)?))
}

/// Waits (bounded) until the leading replica's journal satisfies `f`.
async fn wait_journal(
    cluster: &Cluster,
    what: &str,
    within: Duration,
    f: impl Fn(&[serde_json::Value]) -> bool,
) -> Result<(usize, Vec<serde_json::Value>)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (k, j) = leader_journal(cluster).await?;
        if f(&j) {
            return Ok((k, j));
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the journal never showed {what} within {within:?}: {j:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every command ran once: ids unique in the journal, `runs = 1` on every
/// agent, and every issued id ran somewhere.
async fn ran_once(cluster: &Cluster, journal: &[serde_json::Value]) -> Result<()> {
    let mut ids = BTreeSet::new();
    for e in journal.iter().filter(|e| e["event"] == "command_issued") {
        anyhow::ensure!(
            ids.insert(e["id"].to_string()),
            "command id issued twice: {e}"
        );
    }
    let mut total = 0;
    for (i, entries) in agent_journals(cluster).await? {
        for e in entries {
            anyhow::ensure!(e["runs"] == 1, "member {i} ran a command twice: {e}");
            total += 1;
        }
    }
    anyhow::ensure!(
        total == ids.len(),
        "every issued command ran exactly once somewhere: {total} ran, {} issued",
        ids.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leading_replica_killed_at_every_phase_hands_over_and_nothing_runs_twice() -> Result<()>
{
    let mut cluster = Cluster::start(ha_spec()).await?;
    cluster.publish("v2", 1, false)?;
    let load = start_load(&cluster);
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    assert_eq!(code, 0, "{stderr}");
    let mut resumed_ms = Vec::new();
    for phase in &PHASES {
        let (k, before) =
            wait_journal(&cluster, phase.name, Duration::from_secs(60), phase.reached).await?;
        let next_phase_passed = PHASES
            .iter()
            .skip_while(|p| p.name != phase.name)
            .nth(1)
            .is_some_and(|p| (p.reached)(&before));
        cluster.kill_replica(k); // SIGKILL by pid
        let killed = Instant::now();
        // Another replica leads and carries on: its journal grows past what
        // the dead one had (the rollout's next event). Only then does the
        // dead one come back, as a follower, for the next kill.
        let n = before.len();
        let (k2, _) = wait_journal(
            &cluster,
            "the next event after the kill",
            Duration::from_secs(30),
            |j| j.len() > n,
        )
        .await?;
        resumed_ms.push(killed.elapsed().as_millis());
        assert_ne!(k2, k, "the dead replica does not lead");
        cluster.start_replica(k)?;
        eprintln!(
            "killed leading replica {} during {}{}; replica {} carried on, next event after {} ms",
            cluster.replicas[k].id,
            phase.name,
            if next_phase_passed {
                " (the next phase had begun)"
            } else {
                ""
            },
            cluster.replicas[k2].id,
            killed.elapsed().as_millis()
        );
    }
    let (_, journal) = wait_journal(
        &cluster,
        "the rollout completed",
        Duration::from_secs(120),
        |j| j.iter().any(|e| e["event"] == "completed"),
    )
    .await?;
    eprintln!("next event after each kill (ms): {resumed_ms:?}");
    assert_eq!(
        journal.iter().filter(|e| e["event"] == "started").count(),
        1,
        "one rollout, carried on by each new leader, never started again"
    );
    ran_once(&cluster, &journal).await?;
    let (report, lost, max_down) = load.finish().await?;
    assert_eq!(lost, Vec::<String>::new(), "no acknowledged write lost");
    assert_eq!(
        report.leader_changes, 1,
        "the database changed leader exactly once: {:?}",
        report.leaders_seen
    );
    assert!(
        max_down <= 1,
        "never two members down at once (saw {max_down})"
    );
    Ok(())
}

/// The agent log lines that refused a command as fenced.
fn fenced_lines(cluster: &Cluster) -> Vec<String> {
    cluster
        .members
        .iter()
        .flat_map(|m| {
            std::fs::read_to_string(m.agent_dir.join("agent.log"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("deposed coordinator leader"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_that_wakes_up_is_fenced_and_a_cut_off_replica_stalls_nothing()
-> Result<()> {
    // The pre-upgrade backup is slow (4 s): a command that is surely still
    // in flight when the leader freezes.
    let slow_backup = vec![("SAMPLEKV_BACKUP_DELAY_MS".to_owned(), "4000".to_owned())];
    let spec = ClusterSpec {
        member_env: (0..3).map(|i| (i, slow_backup.clone())).collect(),
        ..ha_spec()
    };
    let mut cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    let load = start_load(&cluster);
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    assert_eq!(code, 0, "{stderr}");
    let (old, j) = wait_journal(&cluster, "the backup", Duration::from_secs(60), |j| {
        issued(j, "backup").next().is_some()
    })
    .await?;
    let backing_up = issued(&j, "backup")
        .next()
        .and_then(|e| e["member"].as_str())
        .unwrap_or_default()
        .to_owned();
    let old_pid = cluster.replicas[old].proc.as_ref().context("live")?.pid();
    // Freeze the leader, and keep it from hearing its peers once it wakes.
    cluster.replicas[old]
        .proc
        .as_ref()
        .context("live")?
        .signal(Signal::SIGSTOP);
    cluster.partition_replica(old, true);
    // The other two elect a leader, which drives on (commands in its term).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let new = loop {
        if let Some(k) = cluster.leading_replica().await
            && k != old
        {
            break k;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let n = cluster.replica_journal(new)?.len();
    wait_journal(
        &cluster,
        "the new leader's next command",
        Duration::from_secs(30),
        |j| j.len() > n && j[n..].iter().any(|e| e["event"] == "command_issued"),
    )
    .await?;
    // The old leader wakes, cut off from its peers: it still believes it
    // leads and that the backup is in flight. The backing-up member's agent
    // reconnects and gets that command again, in the old term: refused.
    cluster.replicas[old]
        .proc
        .as_ref()
        .context("live")?
        .signal(Signal::SIGCONT);
    let i = cluster
        .members
        .iter()
        .position(|m| m.name == backing_up)
        .context("the member that backed up")?;
    // Usually the agent's own reconnect (its session to the frozen replica
    // was dropped) already brings the old command back; otherwise restart
    // the agent, which reconnects everywhere.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while fenced_lines(&cluster).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if fenced_lines(&cluster).is_empty() {
        cluster.restart_agent(i)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while fenced_lines(&cluster).is_empty() {
            if tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(&cluster.replicas[old].log).unwrap_or_default();
                let agent = std::fs::read_to_string(cluster.members[i].agent_dir.join("agent.log"))
                    .unwrap_or_default();
                let tail = |t: &str, n: usize| {
                    t.lines()
                        .rev()
                        .take(n)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                anyhow::bail!(
                    "no agent refused the deposed leader's command (old replica pid {old_pid})\n--- old replica\n{}\n--- agent\n{}",
                    tail(&log, 30),
                    tail(&agent, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let lines = fenced_lines(&cluster);
    eprintln!("fenced: {lines:?}");
    let member = &cluster.members[i].name;
    assert!(
        lines.iter().any(|l| l.contains(member.as_str())),
        "the refusal names the member {member}: {lines:?}"
    );
    // Counted, in the process that refused it (retried: a restarted
    // agent's probe port may not listen yet).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let m = cluster.agent_metrics(i).await.unwrap_or_default();
        let line = m
            .lines()
            .find(|l| l.starts_with("baton_agent_commands_fenced_total"))
            .map(str::to_owned);
        if line
            .as_deref()
            .is_some_and(|l| !l.trim_end().ends_with(" 0"))
            || tokio::time::Instant::now() > deadline
        {
            break line;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        counted
            .as_deref()
            .is_some_and(|l| !l.trim_end().ends_with(" 0")),
        "the refusal is counted: {counted:?}"
    );
    // The rollout never stalled on the cut-off replica: it completes.
    let (_, journal) = wait_journal(
        &cluster,
        "the rollout completed",
        Duration::from_secs(120),
        |j| j.iter().any(|e| e["event"] == "completed"),
    )
    .await?;
    cluster.partition_replica(old, false);
    ran_once(&cluster, &journal).await?;
    let (report, lost, max_down) = load.finish().await?;
    assert_eq!(lost, Vec::<String>::new(), "no acknowledged write lost");
    assert_eq!(report.leader_changes, 1, "{:?}", report.leaders_seen);
    assert!(
        max_down <= 1,
        "never two members down at once (saw {max_down})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_replica_cut_off_from_its_peers_stalls_nothing() -> Result<()> {
    let cluster = Cluster::start(ha_spec()).await?;
    cluster.publish("v2", 1, false)?;
    let leader = cluster
        .wait_leading_replica(Duration::from_secs(15))
        .await?;
    let cut = (leader + 1) % cluster.replicas.len();
    cluster.partition_replica(cut, true);
    let load = start_load(&cluster);
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 0, "the rollout completes: {stderr} {out:#}");
    let (k, journal) = leader_journal(&cluster).await?;
    assert_ne!(k, cut, "the cut-off replica does not lead");
    assert!(journal.iter().any(|e| e["event"] == "completed"));
    ran_once(&cluster, &journal).await?;
    // Healed, it catches up with everything it missed.
    cluster.partition_replica(cut, false);
    let want = journal.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cluster.replica_journal(cut)?.len() < want {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the healed replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (report, lost, max_down) = load.finish().await?;
    assert_eq!(lost, Vec::<String>::new(), "no acknowledged write lost");
    assert_eq!(report.leader_changes, 1, "{:?}", report.leaders_seen);
    assert!(
        max_down <= 1,
        "never two members down at once (saw {max_down})"
    );
    Ok(())
}
