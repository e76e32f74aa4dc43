//! The pre-upgrade backup on a live samplekv cluster, end to end: real
//! members, agents, coordinator and the `baton` CLI, a writer whose every
//! acknowledged write is read back, and the dir store the agents upload to.
//! - With `backup = "required"` the backup is taken, verified and journaled
//!   before the first stop; it holds every write acked up to its revision;
//!   `baton backups` lists, verifies and refuses to prune it; a corrupt part
//!   is named.
//! - A member slower to begin its backup answer than a status call's
//!   deadline still backs up; one that sends nothing within
//!   `backup_progress_timeout_ms` fails the backup, named, with nothing
//!   stopped.
//! - The backup's source frozen (SIGSTOP) before its answer begins: the
//!   backup fails at the progress bound with nothing stopped; thawed,
//!   `resume` takes it again and the rollout completes, every acked write
//!   read back.
//! - A backup that cannot be uploaded pauses the rollout with nothing
//!   stopped, and `resume` takes it again under a new id.

use std::time::Duration;

use anyhow::{Context, Result};
use baton_harness::{Cluster, ClusterSpec};
use samplekv::client::Client;
use samplekv::state_machine::BackupDocument;
use samplekv::writer::{WriterConfig, run_writer, verify};
use tokio_util::sync::CancellationToken;

const POLICY: &str = "backup = \"required\"\ntolerable_lag = 50\nhealth_timeout_ms = 20000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\nstall_after_ms = 20000\n";

fn position(
    journal: &[serde_json::Value],
    f: impl Fn(&serde_json::Value) -> bool,
) -> Option<usize> {
    journal.iter().position(f)
}

fn is_stop(e: &serde_json::Value) -> bool {
    e["event"] == "command_issued" && e["action"]["action"] == "stop"
}

/// Does every member report v1 and healthy?
fn every_member_serves_v1(status: &baton_domain::FleetStatus) -> bool {
    status.members.iter().all(|m| {
        m.report.as_ref().is_some_and(|r| {
            r.state.release == "v1" && r.state.health == baton_domain::Health::Healthy
        })
    })
}

/// Every member of three answers `Admin.Backup` only after `ms`.
fn slow_backup_answers(ms: u64) -> std::collections::BTreeMap<usize, Vec<(String, String)>> {
    (0..3)
        .map(|i| {
            (
                i,
                vec![(
                    samplekv::faults::ENV_BACKUP_DELAY_MS.to_owned(),
                    ms.to_string(),
                )],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_backup_is_verified_before_the_first_stop_and_holds_every_acked_write()
-> Result<()> {
    // Each member takes longer to begin its backup answer than the agents'
    // 500 ms per-call deadline: a backup is bounded by progress, not by it.
    let spec = ClusterSpec {
        policy: POLICY.into(),
        member_env: slow_backup_answers(1500),
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    cluster.wait_led_and_fresh().await?;

    let client = Client::new(cluster.addrs());
    let stop = CancellationToken::new();
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        let cfg = WriterConfig {
            rate_per_sec: 50,
            max_writes: 10_000,
            max_duration: Duration::from_secs(120),
            key_prefix: "bk-".into(),
            ..WriterConfig::default()
        };
        tokio::spawn(async move { run_writer(&client, cfg, stop).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    stop.cancel();
    let report = writer.await?;
    assert_eq!(code, 0, "baton upgrade succeeds: {stderr}\n{out:#}");
    let checked = verify(&client, &report).await;
    assert_eq!(checked.checked, report.acked);
    assert_eq!(
        checked.lost,
        Vec::<String>::new(),
        "no acknowledged write lost"
    );

    // The summary shows a verified backup.
    let b = &out["summary"]["backup"];
    assert_eq!(b["state"], "verified", "{out:#}");
    assert_eq!(b["verified"], true);
    let id = b["id"].as_str().context("backup id")?.to_owned();
    let rollout = out["summary"]["rollout"].as_str().context("rollout id")?;
    assert!(
        id.starts_with(&format!("{rollout}-b1.")),
        "{id}: <rollout>-b1.<journal>"
    );
    assert_eq!(b["sha256"].as_str().map(str::len), Some(64));

    // Journaled before the first stop.
    let journal = cluster.journal()?;
    let verified = position(&journal, |e| e["event"] == "backup_verified").context("verified")?;
    let first_stop = position(&journal, is_stop).context("a stop")?;
    assert!(
        verified < first_stop,
        "the backup was verified before any stop"
    );

    // What the manifest says matches what was saved: the bytes' sha256 and
    // size, and the revision is the document's own.
    let dir = cluster.store_dir.join("backups").join("e2e").join(&id);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let mut bytes = Vec::new();
    for (i, part) in manifest["parts"]
        .as_array()
        .context("parts")?
        .iter()
        .enumerate()
    {
        let body = std::fs::read(dir.join(format!("part-{i:05}")))?;
        assert_eq!(Some(body.len() as u64), part["bytes"].as_u64());
        bytes.extend_from_slice(&body);
    }
    assert_eq!(Some(bytes.len() as u64), b["bytes"].as_u64());
    let doc = BackupDocument::parse(&bytes).map_err(anyhow::Error::msg)?;
    assert_eq!(Some(doc.applied_index), manifest["revision"].as_u64());
    assert_eq!(b["revision"], manifest["revision"]);
    // Every write acked at or below that revision is in it, with its value.
    let covered: Vec<_> = report
        .acked_writes
        .iter()
        .filter(|w| w.revision <= doc.applied_index)
        .collect();
    assert!(!covered.is_empty(), "the writer wrote before the backup");
    for w in covered {
        assert_eq!(
            doc.kv.get(&w.key),
            Some(&w.value),
            "write {} (revision {})",
            w.key,
            w.revision
        );
    }

    // `baton backups`: listed complete and pinned, verifies, and a prune
    // keeping none deletes nothing pinned.
    let (code, list, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["backups", "list"]))?;
    assert_eq!(code, 0, "{stderr}");
    let listed = list["backups"].as_array().context("backups")?;
    assert_eq!(listed.len(), 1, "{list:#}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["complete"]["sha256"], b["sha256"]);
    let pin = listed[0]["pinned"].as_str().unwrap_or_default();
    assert!(
        pin.contains(&format!("rollout {rollout} was finalized")),
        "{pin}"
    );
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["backups", "verify", &id]))?;
    assert_eq!(code, 0, "{stderr}");
    let (code, pruned, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["backups", "prune", "--keep", "0"]))?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(pruned["deleted"], serde_json::json!([]), "{pruned:#}");
    assert!(
        dir.join("COMPLETE").exists(),
        "the pinned backup is still there"
    );

    // One flipped byte in a part: verify fails and names the part.
    let part = dir.join("part-00000");
    let mut body = std::fs::read(&part)?;
    body[0] ^= 0xff;
    std::fs::write(&part, body)?;
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["backups", "verify", &id]))?;
    assert_ne!(code, 0, "a corrupt backup does not verify");
    assert!(stderr.contains("part-00000"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_cannot_be_stored_pauses_with_nothing_stopped_and_resume_retakes_it()
-> Result<()> {
    let spec = ClusterSpec {
        policy: POLICY.into(),
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    cluster.wait_led_and_fresh().await?;
    // A file where the cluster's backup directory goes: every upload fails.
    let backups = cluster.store_dir.join("backups");
    std::fs::create_dir_all(&backups)?;
    let blocker = backups.join("e2e");
    std::fs::write(&blocker, b"not a directory")?;

    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 3, "the rollout paused: {stderr}\n{out:#}");
    let reason = out["rollout"]["state"]["phase"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("no member was stopped"),
        "{reason}\n{out:#}"
    );
    assert!(
        reason.contains("backups/e2e/"),
        "the reason names the key: {reason}\n{out:#}"
    );
    let journal = cluster.journal()?;
    assert!(
        position(&journal, |e| e["event"] == "command_failed"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("uploading backup r1-v2-b1")))
        .is_some(),
        "the backup's failure is journaled"
    );
    assert_eq!(position(&journal, is_stop), None, "nothing was stopped");
    let status = cluster.status()?;
    assert!(
        every_member_serves_v1(&status),
        "every member still serves v1: {status:?}"
    );

    // Fixed: resume takes the backup again, under a new id, and finishes.
    std::fs::remove_file(&blocker)?;
    let (code, _, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["resume"]))?;
    assert_eq!(code, 0, "resume: {stderr}");
    let (code, out, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(code, 0, "watch: {stderr}\n{out:#}");
    let b = &out["summary"]["backup"];
    assert_eq!(b["state"], "verified", "{out:#}");
    let rollout = out["summary"]["rollout"].as_str().context("rollout")?;
    assert!(
        b["id"]
            .as_str()
            .is_some_and(|id| id.starts_with(&format!("{rollout}-b2."))),
        "{b}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_sends_nothing_within_its_progress_bound_fails_with_nothing_stopped()
-> Result<()> {
    let spec = ClusterSpec {
        policy: POLICY.into(),
        member_env: slow_backup_answers(4000),
        agent_target: "backup_progress_timeout_ms = 1200\n".into(),
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    cluster.wait_led_and_fresh().await?;

    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 3, "the rollout paused: {stderr}\n{out:#}");
    let reason = out["rollout"]["state"]["phase"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("no member was stopped"),
        "{reason}\n{out:#}"
    );
    let journal = cluster.journal()?;
    let failed = journal
        .iter()
        .find(|e| e["event"] == "command_failed")
        .and_then(|e| e["detail"].as_str())
        .context("the backup's failure is journaled")?;
    assert!(
        failed.starts_with("member n")
            && failed.contains("taking backup r1-v2-b1.")
            && failed.contains("sent nothing for 1.2s")
            && failed.contains("backup_progress_timeout_ms"),
        "names the member, the step and the bound: {failed}"
    );
    assert_eq!(position(&journal, is_stop), None, "nothing was stopped");
    let status = cluster.status()?;
    assert!(
        every_member_serves_v1(&status),
        "every member still serves v1: {status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_source_frozen_mid_backup_fails_with_nothing_stopped_and_resume_retakes_it()
-> Result<()> {
    use baton_harness::observe::{Frozen, JournalTail};
    use baton_harness::stall::Load;
    // Each answer begins after 1 s, inside the 3 s bound: time to freeze
    // the source before it sends anything.
    let spec = ClusterSpec {
        policy: POLICY.into(),
        member_env: slow_backup_answers(1000),
        agent_target: "backup_progress_timeout_ms = 3000\n".into(),
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    cluster.wait_led_and_fresh().await?;
    let load = Load::start(&cluster, "frozen-");
    let journal = JournalTail::start(&cluster);
    let from = journal.settle().await;
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    assert_eq!(code, 0, "upgrade --detach: {stderr}");
    let issued = journal
        .wait_for("the backup command", from, Duration::from_secs(30), |e| {
            e["event"] == "command_issued" && e["action"]["action"] == "backup"
        })
        .await?;
    let source = issued.entry["member"]
        .as_str()
        .context("the backup's member")?
        .to_owned();
    let i = cluster.index_of(&source).context("the source member")?;
    let mut frozen = Frozen::default();
    frozen.stop(cluster.member_pid(i).context("the source's pid")?)?;

    let failed = journal
        .wait_for("the backup failing", from, Duration::from_secs(30), |e| {
            e["event"] == "command_failed" && e["id"] == issued.entry["id"]
        })
        .await?;
    let detail = failed.entry["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with(&format!("member {source}:")) && detail.contains("sent nothing for 3s"),
        "names the frozen source and the bound: {detail}"
    );
    let (code, out, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(code, 3, "paused: {stderr}\n{out:#}");
    let before_thaw: Vec<_> = journal.since(from).into_iter().map(|l| l.entry).collect();
    assert_eq!(
        position(&before_thaw, is_stop),
        None,
        "nothing was stopped while the source was frozen"
    );

    // Thawed, it serves again; resume takes the backup again and finishes.
    frozen.thaw();
    cluster
        .wait_status(
            "every member healthy on v1",
            Duration::from_secs(30),
            every_member_serves_v1,
        )
        .await?;
    let (code, _, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["resume"]))?;
    assert_eq!(code, 0, "resume: {stderr}");
    let (code, out, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(code, 0, "watch: {stderr}\n{out:#}");
    let b = &out["summary"]["backup"];
    assert_eq!(b["state"], "verified", "{out:#}");
    let rollout = out["summary"]["rollout"].as_str().context("rollout")?;
    assert!(
        b["id"]
            .as_str()
            .is_some_and(|id| id.starts_with(&format!("{rollout}-b2."))),
        "{b}"
    );
    let (_, lost) = load.finish().await?;
    assert_eq!(lost, Vec::<String>::new(), "no acknowledged write lost");
    Ok(())
}
