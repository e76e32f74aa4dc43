//! A full disk on real etcd 3.4.23 -> 3.5.1, under a writer at 100
//! writes/s and the 10 ms quorum observer: the coordinator's state dir,
//! and one agent's, each on a 64 KiB tmpfs (mounted by the test, as root)
//! that fills mid-rollout. No member is left down, a page fires, the
//! coordinator's log stays bounded, and the rollout carries on once space
//! returns (or, for the agent, from its reserve). etcd changes leader
//! exactly once, never two members are down, and every acked write is read
//! back. (samplekv's leg is in `rollout.rs`.)
//!
//! The tests run one at a time (each runs three etcds, three agents, a
//! coordinator, a writer and an observer on a small machine).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use baton_domain::Health;
use baton_harness::etcd::{ETCD_34, EtcdCluster, EtcdLoad, EtcdOptions, assert_version, etcd_35};
use baton_harness::quorum::{QuorumObserver, etcd_end_checks};
use baton_harness::{is_a_stop, wait_journal_entry};
use baton_store::testutil::SmallDisk;

/// A 64 KiB state dir is far below the 16 MiB the preflight asks by
/// default; these clusters ask for 8 KiB.
const POLICY: &str = "tolerable_lag = 1000\nhealth_timeout_ms = 30000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\nstall_after_ms = 20000\nmin_state_disk_free_bytes = 8192\n";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn etcd_cluster(policy: &str) -> Result<EtcdCluster> {
    let e35 = etcd_35()?;
    assert_version(&e35, "3.5.1")?;
    assert_version(Path::new(ETCD_34), "3.4.23")?;
    let cluster = EtcdCluster::start_opts(3, policy, EtcdOptions::default()).await?;
    cluster.publish("3.5.1", &e35)?;
    Ok(cluster)
}

/// Polls the coordinator's journal until `f` finds an entry
/// ([`wait_journal_entry`]).
async fn journal_until(
    cluster: &EtcdCluster,
    what: &str,
    within: Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    wait_journal_entry(|| cluster.journal_entries(), what, within, f).await
}

async fn upgrade_detached(cluster: &EtcdCluster) -> Result<()> {
    let (code, out, stderr) = cluster
        .baton_within(
            &["upgrade", "--to", "3.5.1", "--detach"],
            Duration::from_secs(30),
        )
        .await?;
    anyhow::ensure!(code == 0, "upgrade --detach: {stderr} {out}");
    Ok(())
}

/// Every member on 3.5.1; the writer and the observer stopped; every acked
/// write read back, one etcd leader change, never two members down.
async fn end_checks(cluster: &EtcdCluster, load: EtcdLoad, observer: QuorumObserver) -> Result<()> {
    let status = cluster.status()?;
    for m in &status.members {
        let release = m.report.as_ref().map(|r| r.state.release.as_str());
        assert_eq!(release, Some("3.5.1"), "{}", m.member);
    }
    etcd_end_checks(cluster, load, observer).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_coordinator_disk_pauses_an_etcd_rollout_with_every_member_serving_and_it_resumes()
-> Result<()> {
    let _one = SERIAL.lock().await;
    let mut cluster = etcd_cluster(POLICY).await?;
    // The coordinator's state dir moves onto a 64 KiB disk.
    drop(cluster.coordinator.take()); // SIGKILL by pid
    let state = cluster.coordinator_state();
    let saved = state.with_extension("before");
    std::fs::rename(&state, &saved)?;
    std::fs::create_dir(&state)?;
    let disk = SmallDisk::mount_at(&state);
    baton_harness::copy_dir(&saved, &state)?;
    cluster.start_coordinator()?;
    cluster
        .wait_status("every member fresh", Duration::from_secs(30), |s| {
            s.leader.is_some() && s.members.iter().all(|m| m.fresh)
        })
        .await?;
    let load = EtcdLoad::start(&cluster, "dc-", 100).await?;
    let observer = QuorumObserver::start(&cluster);
    upgrade_detached(&cluster).await?;
    journal_until(
        &cluster,
        "the first stop",
        Duration::from_secs(30),
        is_a_stop,
    )
    .await?;
    disk.fill("filler");
    let log = cluster.dir.path().join("coordinator.log");
    let log_at_fill = std::fs::metadata(&log)?.len();
    let filled_at = tokio::time::Instant::now();
    let paused = journal_until(
        &cluster,
        "the pause for space",
        Duration::from_secs(60),
        |e| {
            e["event"] == "paused"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("nearly out of disk space"))
        },
    )
    .await?;
    // Paused at a safe point: every member serving, and paged.
    cluster
        .wait_status("every member serving", Duration::from_secs(30), |s| {
            s.members.iter().all(|m| {
                m.fresh
                    && m.report
                        .as_ref()
                        .is_some_and(|r| r.state.health == Health::Healthy)
            })
        })
        .await?;
    journal_until(&cluster, "the paused page", Duration::from_secs(10), |e| {
        e["alert_event"] == "fired" && e["alert"]["labels"]["alertname"] == "BatonRolloutPaused"
    })
    .await?;
    // Soaked while the disk stays full: nothing new is issued, nothing
    // resumes (after the pause only pages and the results of commands
    // already in flight are journaled), and the log stays bounded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let journal = cluster.journal_entries()?;
    let at = journal
        .iter()
        .position(|e| *e == paused)
        .expect("the pause is journaled");
    let after: Vec<_> = journal[at + 1..]
        .iter()
        .filter(|e| {
            e.get("alert_event").is_none()
                && e["event"] != "command_succeeded"
                && e["event"] != "command_failed"
        })
        .collect();
    assert!(
        after.is_empty(),
        "still paused: {after:?} (paused: {paused})"
    );
    let grown = std::fs::metadata(&log)?.len().saturating_sub(log_at_fill);
    let per_minute = grown as f64 * 60.0 / filled_at.elapsed().as_secs_f64();
    assert!(
        per_minute < 1_048_576.0,
        "the log grew {grown} bytes in {:?} ({per_minute:.0} bytes/min)",
        filled_at.elapsed()
    );
    // Space returns: it resumes by itself and completes.
    std::fs::remove_file(state.join("filler"))?;
    journal_until(&cluster, "the completion", Duration::from_secs(120), |e| {
        e["event"] == "completed"
    })
    .await?;
    assert!(
        cluster
            .journal_entries()?
            .iter()
            .any(|e| e["event"] == "resumed"),
        "resumed by itself"
    );
    end_checks(&cluster, load, observer).await?;
    // The tmpfs first (a lazy unmount), so the cluster's temp dir can
    // be removed whole when it drops.
    drop(disk);
    drop(cluster);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_agent_disk_never_leaves_its_etcd_member_down_and_fails_the_next_preflight()
-> Result<()> {
    let _one = SERIAL.lock().await;
    // No pre-upgrade backup: its scratch (the snapshot and its test-restore)
    // lives in the agent's state dir, which at 64 KiB cannot hold an etcd
    // snapshot; this test is about the command journal and the member.
    let mut cluster = etcd_cluster(&format!("{POLICY}backup = \"off\"\n")).await?;
    // Every agent's state dir (its command journal, member.pid and the
    // member's stderr) moves onto a 64 KiB disk of its own; each agent
    // adopts its running member from the pidfile it finds there. etcd's
    // own log goes to a file beside it, so the small disk fills when the
    // test fills it, not with etcd's chatter.
    let mut disks = Vec::new();
    for i in 0..cluster.members.len() {
        drop(cluster.members[i].agent.take()); // SIGKILL by pid
        let m = &cluster.members[i];
        let small = m.agent_dir.join("state-small");
        std::fs::create_dir(&small)?;
        disks.push(SmallDisk::mount_at(&small));
        for f in ["commands.log", "member.pid"] {
            std::fs::copy(m.agent_dir.join(f), small.join(f))?;
        }
        let config = std::fs::read_to_string(&m.agent_config)?;
        let old = format!("state_dir = {:?}", m.agent_dir.to_string_lossy());
        anyhow::ensure!(config.contains(&old), "{config}");
        let new = format!("state_dir = {:?}", small.to_string_lossy());
        let etcd_log = m.agent_dir.join("etcd.log");
        let logged = format!(
            "command = [\"{{release_dir}}/etcd\", \"--logger\", \"zap\", \"--log-outputs\", {:?}, ",
            etcd_log.to_string_lossy()
        );
        anyhow::ensure!(config.contains("command = [\"{release_dir}/etcd\", "));
        let config = config
            .replace(&old, &new)
            .replace("command = [\"{release_dir}/etcd\", ", &logged);
        std::fs::write(&m.agent_config, config)?;
        cluster.members[i].state_dir = small;
        cluster.start_agent(i)?;
    }
    cluster
        .wait_status("settled", Duration::from_secs(30), |s| {
            s.leader.is_some()
                && s.members.iter().all(|m| {
                    m.fresh
                        && m.connected
                        && m.report
                            .as_ref()
                            .is_some_and(|r| r.state.health == Health::Healthy)
                })
        })
        .await?;
    let load = EtcdLoad::start(&cluster, "da-", 100).await?;
    let observer = QuorumObserver::start(&cluster);
    upgrade_detached(&cluster).await?;
    // The first member stopped: its disk fills while it is down.
    let stopped = journal_until(
        &cluster,
        "the first stop",
        Duration::from_secs(30),
        is_a_stop,
    )
    .await?;
    let victim = cluster
        .journal_entries()?
        .into_iter()
        .find(|e| e["event"] == "command_issued" && e["id"] == stopped["id"])
        .and_then(|e| e["member"].as_str().map(str::to_owned))
        .expect("the stop was issued to a member");
    let i = cluster
        .members
        .iter()
        .position(|m| m.name == victim)
        .expect("a member of the cluster");
    disks[i].fill("filler");
    // Its switch and start are journaled from the reserve, it starts with
    // its stderr on the full disk, and the rollout completes.
    let end = journal_until(
        &cluster,
        "the end of the rollout",
        Duration::from_secs(120),
        |e| e["event"] == "completed" || e["event"] == "paused",
    )
    .await?;
    assert_eq!(end["event"], "completed", "{end}");
    end_checks(&cluster, load, observer).await?;
    // It pages, naming the member, while the member serves.
    let low = |e: &serde_json::Value| {
        e["alert"]["labels"]["alertname"] == "BatonAgentStateDiskLow"
            && e["alert"]["labels"]["member"] == victim.as_str()
    };
    journal_until(
        &cluster,
        "the state-disk page",
        Duration::from_secs(20),
        |e| e["alert_event"] == "fired" && low(e),
    )
    .await?;
    // The next rollout is refused before anything is touched, naming the
    // member whose state disk is full.
    let (code, out, stderr) = cluster
        .baton_within(
            &["upgrade", "--to", "3.4.23", "--detach"],
            Duration::from_secs(30),
        )
        .await?;
    assert_eq!(code, 2, "preflight refuses: {stderr} {out}");
    assert!(stderr.contains("nothing was touched"), "{stderr}");
    let failed: Vec<(String, String, String)> = out["checks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("check"), s("member"), s("detail"))
        })
        .collect();
    assert!(
        failed
            .iter()
            .any(|(c, m, d)| c == "state-disk" && *m == victim && d.contains("bytes free")),
        "{failed:?}"
    );
    // Space returns: the page resolves.
    std::fs::remove_file(disks[i].path().join("filler"))?;
    journal_until(
        &cluster,
        "the state-disk page resolved",
        Duration::from_secs(20),
        |e| e["alert_event"] == "resolved" && low(e),
    )
    .await?;
    // The tmpfs first (a lazy unmount), so the cluster's temp dir can
    // be removed whole when it drops.
    drop(disks);
    drop(cluster);
    Ok(())
}
