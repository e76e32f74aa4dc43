//! A replicated coordinator (three replicas on openraft) driving rolling
//! upgrades of a live samplekv cluster: the leading replica killed with
//! SIGKILL at every phase, a deposed leader's late command fenced, and a
//! partitioned replica. Real processes; a writer runs and every acked
//! write is read back.

use std::time::Duration;

use anyhow::Result;
use baton_harness::failover::{
    a_deposed_leader_is_fenced, completed_once, cut_a_follower_off, heal,
    kill_the_leader_at_every_phase,
};
use baton_harness::load::{Load, start_load};
use baton_harness::{Cluster, ClusterSpec};

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
    let (_, journal) = completed_once(
        &cluster.replicas,
        Duration::from_secs(120),
        &cluster.probe_addrs(),
    )
    .await?;
    eprintln!("next event after each kill (ms): {resumed_ms:?}");
    assert_eq!(
        journal.iter().filter(|e| e["event"] == "started").count(),
        1,
        "one rollout, carried on by each new leader, never started again"
    );
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
    let cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    // The replicas have changed leader once already (as under load in CI):
    // the first leader is frozen until another leads, then let go.
    let first = cluster
        .replicas
        .wait_leading(Duration::from_secs(15))
        .await?;
    let proc = cluster.replicas[first].proc.as_ref().expect("it runs");
    proc.signal(nix::sys::signal::Signal::SIGSTOP);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while cluster.replicas.leading().await.is_none_or(|k| k == first) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no other leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proc.signal(nix::sys::signal::Signal::SIGCONT);
    let load = start_load(&cluster);
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    assert_eq!(code, 0, "{stderr}");
    let old = a_deposed_leader_is_fenced(&cluster, Some("backup")).await?;
    // The rollout never stalled on the cut-off replica: it completes.
    completed_once(
        &cluster.replicas,
        Duration::from_secs(120),
        &cluster.probe_addrs(),
    )
    .await?;
    cluster.replicas.partition(old, false);
    end_checks(load).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_replica_cut_off_from_its_peers_stalls_nothing() -> Result<()> {
    let cluster = Cluster::start(ha_spec()).await?;
    cluster.publish("v2", 1, false)?;
    let cut = cut_a_follower_off(&cluster.replicas).await?;
    let load = start_load(&cluster);
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 0, "the rollout completes: {stderr} {out:#}");
    let (k, journal) = completed_once(
        &cluster.replicas,
        Duration::from_secs(15),
        &cluster.probe_addrs(),
    )
    .await?;
    assert_ne!(k, cut, "the cut-off replica does not lead");
    // Healed, it catches up with everything it missed.
    heal(&cluster.replicas, cut, journal.len()).await?;
    end_checks(load).await
}
