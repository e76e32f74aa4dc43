//! A replicated coordinator (three replicas on openraft) driving rolling
//! upgrades of a live samplekv cluster: the leading replica killed with
//! SIGKILL at every phase, a deposed leader's late command fenced, and a
//! partitioned replica. Real processes; a writer runs and every acked
//! write is read back.

use std::time::Duration;

use anyhow::{Context, Result};
use baton_harness::failover::{issued, kill_the_leader_at_every_phase, ran_once};
use baton_harness::load::{Load, start_load};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leading_replica_killed_at_every_phase_hands_over_and_nothing_runs_twice() -> Result<()>
{
    let mut cluster = Cluster::start(ha_spec()).await?;
    cluster.publish("v2", 1, false)?;
    let load = start_load(&cluster);
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    assert_eq!(code, 0, "{stderr}");
    let resumed_ms = kill_the_leader_at_every_phase(&mut cluster.replicas).await?;
    let (_, journal) = cluster
        .replicas
        .wait_journal("the rollout completed", Duration::from_secs(120), |j| {
            j.iter().any(|e| e["event"] == "completed")
        })
        .await?;
    eprintln!("next event after each kill (ms): {resumed_ms:?}");
    assert_eq!(
        journal.iter().filter(|e| e["event"] == "started").count(),
        1,
        "one rollout, carried on by each new leader, never started again"
    );
    ran_once(&journal, &cluster.probe_addrs()).await?;
    end_checks(load).await
}

/// Stops the load; checks every acked write is there, one leader change
/// in samplekv and never two members down.
async fn end_checks(load: Load) -> Result<()> {
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
    let (old, j) = cluster
        .replicas
        .wait_journal("the backup", Duration::from_secs(60), |j| {
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
    cluster.replicas.partition(old, true);
    // The other two elect a leader, which drives on (commands in its term).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let new = loop {
        if let Some(k) = cluster.replicas.leading().await
            && k != old
        {
            break k;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let n = cluster.replicas.journal(new)?.len();
    cluster
        .replicas
        .wait_journal(
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
    let (_, journal) = cluster
        .replicas
        .wait_journal("the rollout completed", Duration::from_secs(120), |j| {
            j.iter().any(|e| e["event"] == "completed")
        })
        .await?;
    cluster.replicas.partition(old, false);
    ran_once(&journal, &cluster.probe_addrs()).await?;
    end_checks(load).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_replica_cut_off_from_its_peers_stalls_nothing() -> Result<()> {
    let cluster = Cluster::start(ha_spec()).await?;
    cluster.publish("v2", 1, false)?;
    let leader = cluster
        .replicas
        .wait_leading(Duration::from_secs(15))
        .await?;
    let cut = (leader + 1) % cluster.replicas.len();
    cluster.replicas.partition(cut, true);
    let load = start_load(&cluster);
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 0, "the rollout completes: {stderr} {out:#}");
    let (k, journal) = cluster
        .replicas
        .wait_journal("the rollout completed", Duration::from_secs(15), |j| {
            j.iter().any(|e| e["event"] == "completed")
        })
        .await?;
    assert_ne!(k, cut, "the cut-off replica does not lead");
    ran_once(&journal, &cluster.probe_addrs()).await?;
    // Healed, it catches up with everything it missed.
    cluster.replicas.partition(cut, false);
    cluster
        .replicas
        .wait_holds(cut, journal.len(), Duration::from_secs(20))
        .await?;
    end_checks(load).await
}
