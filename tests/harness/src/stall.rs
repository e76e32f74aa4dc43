//! Stalling a follower on purpose: a supervised cluster whose followers
//! apply only while their pause file is absent (`SAMPLEKV_PAUSE_APPLY_FILE`),
//! and the journal lookups that time a stall. Used by the alerting tests
//! and `baton-alert-bench`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use samplekv::client::Client;
use samplekv::writer::{WriterConfig, WriterReport, run_writer, verify};
use tokio_util::sync::CancellationToken;

use crate::{Cluster, ClusterSpec};

/// A writer at 100 writes/s (bounded: 20,000 writes or 2 minutes) through
/// the samplekv client, so a stalled follower's lag grows.
#[derive(Debug)]
pub struct Load {
    client: Client,
    stop: CancellationToken,
    writer: tokio::task::JoinHandle<WriterReport>,
}

impl Load {
    pub fn start(cluster: &Cluster, key_prefix: &str) -> Load {
        let client = Client::new(cluster.addrs());
        let stop = CancellationToken::new();
        let cfg = WriterConfig {
            rate_per_sec: 100,
            max_writes: 20_000,
            max_duration: Duration::from_secs(120),
            key_prefix: key_prefix.to_owned(),
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

    /// Stops the writer; returns how many writes were acked and which of
    /// them are missing on a linearizable read.
    pub async fn finish(self) -> Result<(u64, Vec<String>)> {
        self.stop.cancel();
        let report = self.writer.await?;
        let checked = verify(&self.client, &report).await;
        anyhow::ensure!(
            checked.checked == report.acked,
            "every acked write was checked: {} of {} ({} unreadable)",
            checked.checked,
            report.acked,
            checked.unreadable.len()
        );
        Ok((report.acked, checked.lost))
    }
}

/// A member's index and its pause file.
pub type PauseFile = (usize, PathBuf);

/// A supervised cluster of `members` that each have a pause file,
/// with `coordinator_extra` (policy lines, then any other tables) appended
/// to the coordinator config. Returns once every member is back and caught up.
pub async fn cluster_with_pause_files(
    members: usize,
    heartbeat_ms: u64,
    coordinator_extra: &str,
) -> Result<(Cluster, Vec<PauseFile>)> {
    let spec = ClusterSpec {
        heartbeat_ms,
        policy: coordinator_extra.to_owned(),
        ..ClusterSpec::supervised(members)
    };
    let mut cluster = Cluster::start(spec).await?;
    // Every member gets one, the leader too: restarting the followers can
    // move leadership, and the rollout's first member (whichever follows
    // then) must have a file. Only the first member's is ever written.
    let files: Vec<PauseFile> = (0..members)
        .map(|i| (i, cluster.dir.path().join(format!("pause-apply-{i}"))))
        .collect();
    for (i, f) in &files {
        let f = f.to_string_lossy().into_owned();
        cluster.restart_supervised_with_env(*i, &[("SAMPLEKV_PAUSE_APPLY_FILE", f.as_str())])?;
    }
    cluster
        .wait_status("all back and caught up", Duration::from_secs(30), |s| {
            s.leader.is_some() && s.members.iter().all(|m| m.connected && m.lag == Some(0))
        })
        .await?;
    Ok((cluster, files))
}

/// Starts `baton upgrade --to v2` detached, then slows apply on the first
/// follower in the rollout's order (after the start: preflight refuses
/// lagging followers), so once back on v2 it cannot catch up. Needs a
/// multi-thread runtime.
pub fn start_stalled_rollout(cluster: &Cluster, files: &[PauseFile]) -> Result<()> {
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    anyhow::ensure!(code == 0, "baton upgrade was refused: {stderr}");
    stall_first_in_order(cluster, files).map(|_| ())
}

/// Stalls the catch-up of the rollout's first member, and returns its name:
/// its apply is slowed (one entry per 100 ms against 100 writes/s) until it
/// passes the health gate on v2, then paused, so its lag grows and never
/// shrinks.
///
/// Only that member: another follower that does not apply is (rightly) not
/// live, and would hold the first stop. Slowed first, not paused: a member
/// that applies nothing shows no progress, so it would (rightly) never pass
/// the health gate; slowed, its lag stays far above any `tolerable_lag`
/// these tests use, so it cannot pass the catch-up gate before the pause.
pub fn stall_first_in_order(cluster: &Cluster, files: &[PauseFile]) -> Result<String> {
    let (_, cur, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["rollout"]))?;
    let first = cur["state"]["order"][0]
        .as_str()
        .with_context(|| format!("no rollout order: {stderr} {cur:#}"))?
        .to_owned();
    let mine: Vec<PauseFile> = files
        .iter()
        .filter(|(i, _)| cluster.members[*i].name == first)
        .cloned()
        .collect();
    anyhow::ensure!(
        !mine.is_empty(),
        "the first member {first} has no pause file (it led at the start?)"
    );
    for (_, f) in &mine {
        std::fs::write(f, b"slow 100\n").with_context(|| format!("write {}", f.display()))?;
    }
    // Bounded: 60 s of 10 ms polls of the journal, off the runtime's
    // workers (the writer runs on them).
    tokio::task::block_in_place(|| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while catch_up_started(cluster, &first).is_err() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{first} never passed its health gate on v2"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })?;
    pause(&mine)?;
    Ok(first)
}

/// Pauses apply on each of `files`' members.
pub fn pause(files: &[PauseFile]) -> Result<()> {
    for (_, f) in files {
        std::fs::write(f, b"").with_context(|| format!("write {}", f.display()))?;
    }
    Ok(())
}

/// Lets each of `files`' members apply again.
pub fn unpause(files: &[PauseFile]) {
    for (_, f) in files {
        let _ = std::fs::remove_file(f);
    }
}

/// Removes the pause files on drop, even when a test fails.
#[derive(Debug)]
pub struct Unpause(pub Vec<PauseFile>);

impl Drop for Unpause {
    fn drop(&mut self) {
        unpause(&self.0);
    }
}

/// When `member` started catching up (the journal's healthy gate), in Unix
/// ms: with its apply paused, that is when its stall began.
pub fn catch_up_started(cluster: &Cluster, member: &str) -> Result<u64> {
    cluster
        .journal()?
        .iter()
        .find(|e| e["event"] == "gate_passed" && e["member"] == member && e["gate"] == "healthy")
        .and_then(|e| e["at"].as_u64())
        .context("no healthy gate for the stalled member in the journal")
}
