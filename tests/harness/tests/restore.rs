//! `baton restore` on a live samplekv cluster, end to end: real members,
//! agents, coordinator and CLI. After an upgrade to v2 (which backed the
//! cluster up on v1), more writes, then a restore of that backup: it must
//! be confirmed with the cluster id, it pages while it runs, and it leaves
//! every member serving v1 with exactly the backup's data (every write acked
//! before the backup, none after), the old data dirs kept aside.

use std::time::Duration;

use anyhow::{Context, Result};
use baton_domain::Health;
use baton_harness::{Cluster, ClusterSpec};
use samplekv::client::Client;

const POLICY: &str = "backup = \"required\"\ntolerable_lag = 50\nhealth_timeout_ms = 20000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\nstall_after_ms = 20000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_restore_puts_the_backup_back_on_every_member() -> Result<()> {
    let spec = ClusterSpec {
        policy: POLICY.into(),
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    cluster.wait_led_and_fresh().await?;
    let client = Client::new(cluster.addrs());
    for i in 0..50 {
        client.put(&format!("pre-{i:03}"), &format!("v{i}")).await?;
    }
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 0, "upgrade: {stderr}\n{out:#}");
    let backup = out["summary"]["backup"]["id"]
        .as_str()
        .context("backup id")?
        .to_owned();
    let revision = out["summary"]["backup"]["revision"]
        .as_u64()
        .context("revision")?;
    for i in 0..20 {
        client
            .put(&format!("post-{i:03}"), "after the backup")
            .await?;
    }
    let started_before = cluster
        .journal()?
        .iter()
        .filter(|e| e["event"] == "started")
        .count();

    // Unconfirmed (no terminal to ask on) and misconfirmed: refused, untouched.
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["restore", "--backup", &backup]))?;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--confirm CLUSTER_ID"), "{stderr}");
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        cluster.baton_json(&["restore", "--backup", &backup, "--confirm", "prod"])
    })?;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("confirm it with the cluster id (e2e)"),
        "{stderr}"
    );
    let journal = cluster.journal()?;
    assert_eq!(
        journal.iter().filter(|e| e["event"] == "started").count(),
        started_before,
        "nothing started"
    );

    let (code, out, stderr) = tokio::task::block_in_place(|| {
        cluster.baton_json(&["restore", "--backup", &backup, "--confirm", "e2e"])
    })?;
    assert_eq!(code, 0, "restore: {stderr}\n{out:#}");

    // Every member serves v1, the backup's release, healthy, one leader.
    cluster
        .wait_status(
            "all on v1 after the restore",
            Duration::from_secs(20),
            |s| {
                s.leader.is_some()
                    && s.members.iter().all(|m| {
                        m.report.as_ref().is_some_and(|r| {
                            r.state.release == "v1"
                                && r.state.health == Health::Healthy
                                && r.state.applied_revision >= revision
                        })
                    })
            },
        )
        .await?;
    // Exactly the backup's data.
    for i in 0..50 {
        assert_eq!(
            client.get(&format!("pre-{i:03}"), true).await?,
            Some(format!("v{i}")),
            "pre-{i:03}, written before the backup"
        );
    }
    for i in 0..20 {
        assert_eq!(
            client.get(&format!("post-{i:03}"), true).await?,
            None,
            "post-{i:03} was written after the backup"
        );
    }
    client.put("after-restore", "ok").await?;

    // Journaled as a restore; every member stopped, restored, switched and
    // started; the old data dirs kept.
    let journal = cluster.journal()?;
    let planned = journal
        .iter()
        .find(|e| e["event"] == "restore_planned")
        .context("restore_planned journaled")?;
    assert_eq!(planned["backup"], backup.as_str());
    for action in ["stop", "restore", "switch", "start"] {
        let n = journal
            .iter()
            .filter(|e| e["event"] == "command_issued" && e["action"]["action"] == action)
            .count();
        assert!(n >= 3, "{action} issued to every member ({n})");
    }
    for m in &cluster.members {
        let parent = m.data_dir.parent().context("data dir parent")?;
        let name = m
            .data_dir
            .file_name()
            .context("name")?
            .to_string_lossy()
            .into_owned();
        let kept = std::fs::read_dir(parent)?.filter_map(Result::ok).any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.pre-restore-"))
        });
        assert!(kept, "member {}'s old data dir is kept aside", m.name);
    }
    // It paged while it ran, and the page is resolved.
    let entries = cluster.journal_entries()?;
    let restore_alerts: Vec<_> = entries
        .iter()
        .filter(|e| e.get("alert_event").is_some())
        .filter(|e| e.to_string().contains("BatonRestoreRunning"))
        .collect();
    assert!(!restore_alerts.is_empty(), "the restore paged");
    assert!(
        cluster
            .firing_alerts()?
            .iter()
            .all(|a| a["labels"]["alertname"] != "BatonRestoreRunning"),
        "and the page is resolved"
    );
    Ok(())
}

/// The forward-only case: v2 writes a newer data format, so a plain
/// rollback is refused; `rollback --restore` says what it loses and puts
/// the pre-upgrade backup back on v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_with_restore_undoes_a_forward_only_upgrade() -> Result<()> {
    let spec = ClusterSpec {
        policy: POLICY.into(),
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 2, false)?;
    cluster.wait_led_and_fresh().await?;
    let client = Client::new(cluster.addrs());
    for i in 0..30 {
        client.put(&format!("pre-{i:03}"), &format!("v{i}")).await?;
    }
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 0, "upgrade: {stderr}\n{out:#}");
    client.put("post", "after the backup").await?;

    let (code, out, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["rollback"]))?;
    assert_ne!(
        code, 0,
        "a plain rollback below the data format is refused: {out:#}"
    );
    assert!(
        out.to_string().contains("format"),
        "refused on the data format: {stderr} {out:#}"
    );

    let (code, out, stderr) = tokio::task::block_in_place(|| {
        cluster.baton_json(&["rollback", "--restore", "--confirm", "e2e"])
    })?;
    assert_eq!(code, 0, "rollback --restore: {stderr}\n{out:#}");
    assert!(
        stderr.contains("restores backup r1-v2-b1") && stderr.contains("will be lost"),
        "the loss window is printed first: {stderr}"
    );
    cluster
        .wait_status("all on v1", Duration::from_secs(20), |s| {
            s.leader.is_some()
                && s.members.iter().all(|m| {
                    m.report.as_ref().is_some_and(|r| {
                        r.state.release == "v1" && r.state.health == Health::Healthy
                    })
                })
        })
        .await?;
    for i in 0..30 {
        assert_eq!(
            client.get(&format!("pre-{i:03}"), true).await?,
            Some(format!("v{i}"))
        );
    }
    assert_eq!(
        client.get("post", true).await?,
        None,
        "written after the backup"
    );
    Ok(())
}
