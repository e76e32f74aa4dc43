//! The replicated coordinator (three replicas on openraft) driving real
//! etcd 3.4.23 -> 3.5.1 under a writer at 100 writes/s, while an observer
//! asks every member for its status every 10 ms: the leading replica
//! killed with SIGKILL at each phase of the rollout, a leader frozen with
//! a command in flight that wakes deposed (its late command is refused by
//! the agent), and a follower replica cut off from its peers. Each time
//! another replica leads and the rollout completes; nothing runs twice,
//! etcd changes leader exactly once, the observer never sees two members
//! down, and every acked write is read back. (samplekv's leg is `ha.rs`;
//! the drills are shared.)
//!
//! The tests run one at a time (each runs three etcds, three agents,
//! three replicas, a writer and an observer on a small machine).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use baton_harness::etcd::{ETCD_34, EtcdCluster, EtcdLoad, EtcdOptions, assert_version, etcd_35};
use baton_harness::failover::{
    a_deposed_leader_is_fenced, completed_once, cut_a_follower_off, heal,
    kill_the_leader_at_every_phase,
};
use baton_harness::quorum::{QuorumObserver, etcd_end_checks};

const POLICY: &str = "tolerable_lag = 1000\nhealth_timeout_ms = 30000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\nstall_after_ms = 20000\n";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three etcds on 3.4.23 with 3.5.1 published, three coordinator
/// replicas, the writer and the observer running.
async fn ha_cluster(prefix: &str) -> Result<(EtcdCluster, EtcdLoad, QuorumObserver)> {
    let e35 = etcd_35()?;
    assert_version(&e35, "3.5.1")?;
    assert_version(Path::new(ETCD_34), "3.4.23")?;
    let options = EtcdOptions {
        replicas: 3,
        ..EtcdOptions::default()
    };
    let cluster = EtcdCluster::start_opts(3, POLICY, options).await?;
    cluster.publish("3.5.1", &e35)?;
    let load = EtcdLoad::start(&cluster, prefix, 100).await?;
    let observer = QuorumObserver::start(&cluster);
    Ok((cluster, load, observer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leading_replica_killed_at_every_phase_of_an_etcd_rollout_hands_over_and_nothing_runs_twice()
-> Result<()> {
    let _one = SERIAL.lock().await;
    let (mut cluster, load, observer) = ha_cluster("hk-").await?;
    let (code, out, stderr) = cluster
        .baton_within(
            &["upgrade", "--to", "3.5.1", "--detach"],
            Duration::from_secs(30),
        )
        .await?;
    assert_eq!(code, 0, "upgrade --detach: {stderr} {out}");
    let resumed_ms = kill_the_leader_at_every_phase(&mut cluster.replicas).await?;
    eprintln!("next event after each kill (ms): {resumed_ms:?}");
    let (_, journal) = completed_once(
        &cluster.replicas,
        Duration::from_secs(180),
        &cluster.probe_addrs(),
    )
    .await?;
    assert_eq!(
        journal.iter().filter(|e| e["event"] == "started").count(),
        1,
        "one rollout, carried on by each new leader, never started again"
    );
    etcd_end_checks(&cluster, load, observer).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_replica_cut_off_from_its_peers_stalls_no_etcd_rollout() -> Result<()> {
    let _one = SERIAL.lock().await;
    let (cluster, load, observer) = ha_cluster("hp-").await?;
    let cut = cut_a_follower_off(&cluster.replicas).await?;
    let (code, out, stderr) = cluster
        .baton_within(&["upgrade", "--to", "3.5.1"], Duration::from_secs(180))
        .await?;
    assert_eq!(code, 0, "the rollout completes: {stderr} {out}");
    let (k, journal) = completed_once(
        &cluster.replicas,
        Duration::from_secs(15),
        &cluster.probe_addrs(),
    )
    .await?;
    assert_ne!(k, cut, "the cut-off replica does not lead");
    // Healed, it catches up with everything it missed.
    heal(&cluster.replicas, cut, journal.len()).await?;
    etcd_end_checks(&cluster, load, observer).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_that_wakes_up_is_fenced_by_the_etcd_agents() -> Result<()> {
    let _one = SERIAL.lock().await;
    let (cluster, load, observer) = ha_cluster("hf-").await?;
    let (code, out, stderr) = cluster
        .baton_within(
            &["upgrade", "--to", "3.5.1", "--detach"],
            Duration::from_secs(30),
        )
        .await?;
    assert_eq!(code, 0, "upgrade --detach: {stderr} {out}");
    let old = a_deposed_leader_is_fenced(&cluster, None).await?;
    // The rollout never stalled on the cut-off replica: it completes, and
    // nothing ran twice.
    completed_once(
        &cluster.replicas,
        Duration::from_secs(180),
        &cluster.probe_addrs(),
    )
    .await?;
    cluster.replicas.partition(old, false);
    etcd_end_checks(&cluster, load, observer).await
}
