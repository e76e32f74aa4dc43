//! A rollout whose releases and backups live in S3 (a real s3s-fs), end to
//! end: the coordinator opens its `[store]` as `kind = "s3"` and holds the
//! only credentials; the agents' `[store]` is `kind = "coordinator"`, and
//! every object they touch goes through a request the coordinator
//! presigned. Releases are published with `baton release publish
//! --store-config` (the coordinator's own config file).
//! - `upgrade --to v2` with `backup = "required"` takes the backup, the
//!   coordinator verifies it from S3 (`s3://` location), and every acked
//!   write reads back.
//! - With the agents' S3 endpoint killed (the coordinator still reaches the
//!   bucket through another s3s-fs on the same data, so preflight passes),
//!   the rollout pauses naming the store (the stages fail), the backup
//!   fails naming the store and key, no member is stopped and all serve
//!   v1; once that endpoint is back, `resume` stages again, retakes the
//!   backup as `-b2`, and the rollout completes.

use std::time::Duration;

use anyhow::{Context, Result};
use baton_harness::s3::S3Server;
use baton_harness::{Cluster, ClusterSpec, StoreSpec};
use samplekv::client::Client;
use samplekv::writer::{WriterConfig, run_writer, verify};
use tokio_util::sync::CancellationToken;

const POLICY: &str = "backup = \"required\"\ntolerable_lag = 50\nhealth_timeout_ms = 20000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\nstall_after_ms = 20000\n";

fn is_stop(e: &serde_json::Value) -> bool {
    e["event"] == "command_issued" && e["action"]["action"] == "stop"
}

async fn cluster_on(coordinator: &S3Server, agents: &S3Server) -> Result<Cluster> {
    let spec = ClusterSpec {
        policy: POLICY.into(),
        store: StoreSpec::S3 {
            coordinator: Box::new(coordinator.settings("e2e")),
            agent_endpoint: (agents.endpoint() != coordinator.endpoint())
                .then(|| agents.endpoint()),
        },
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    cluster.wait_led_and_fresh().await?;
    Ok(cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_an_s3_store_backs_up_to_s3_and_loses_no_acked_write() -> Result<()> {
    baton_harness::init();
    let tmp = tempfile::tempdir()?;
    let s3 = S3Server::start(tmp.path(), "baton-e2e").await?;
    let cluster = cluster_on(&s3, &s3).await?;
    // The agents hold no credentials: their [store] is the coordinator's
    // presigned requests, and no secret was written for them.
    for n in 1..=3 {
        let config =
            std::fs::read_to_string(cluster.dir.path().join(format!("n{n}/agent/agent.toml")))?;
        assert!(
            config.contains("kind = \"coordinator\"")
                && !config.contains("access_key")
                && !config.contains("secret"),
            "n{n}'s agent config: {config}"
        );
    }
    assert!(!cluster.dir.path().join("agent-s3-secret").exists());

    // Both releases are in the bucket, and `release list` reads them there.
    let config = cluster.coordinator_config.to_string_lossy().into_owned();
    let (code, list, stderr) = tokio::task::block_in_place(|| {
        cluster.baton_json(&["release", "list", "--store-config", &config])
    })?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(list["store"], "s3://baton-e2e/e2e", "{list:#}");
    let versions: Vec<&str> = list["releases"]
        .as_array()
        .context("releases")?
        .iter()
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(versions, ["v1", "v2"], "{list:#}");
    assert!(
        s3.object_file("e2e/samplekv/v2/manifest.toml").exists(),
        "v2's manifest is an object in the bucket"
    );

    let client = Client::new(cluster.addrs());
    let stop = CancellationToken::new();
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        let cfg = WriterConfig {
            rate_per_sec: 50,
            max_writes: 10_000,
            max_duration: Duration::from_secs(120),
            key_prefix: "s3-".into(),
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
    assert!(report.acked > 0, "the writer wrote");
    assert_eq!(checked.checked, report.acked);
    assert_eq!(
        checked.lost,
        Vec::<String>::new(),
        "no acknowledged write lost"
    );

    let b = &out["summary"]["backup"];
    assert_eq!(b["state"], "verified", "{out:#}");
    let location = b["location"].as_str().unwrap_or_default();
    assert!(location.starts_with("s3://"), "{out:#}");
    let id = b["id"].as_str().context("backup id")?;
    assert!(
        s3.object_file(&format!("e2e/backups/e2e/{id}/COMPLETE"))
            .exists(),
        "the backup's sentinel is an object in the bucket"
    );
    let journal = cluster.journal()?;
    let verified = journal
        .iter()
        .position(|e| e["event"] == "backup_verified")
        .context("backup_verified")?;
    let first_stop = journal.iter().position(is_stop).context("a stop")?;
    assert!(verified < first_stop, "verified before the first stop");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_for_the_agents_pauses_with_nothing_stopped_and_resume_retakes_the_backup()
-> Result<()> {
    baton_harness::init();
    let tmp = tempfile::tempdir()?;
    let s3 = S3Server::start(tmp.path(), "baton-e2e").await?;
    let mut agents_s3 = s3.another_on_the_same_data("agents").await?;
    let cluster = cluster_on(&s3, &agents_s3).await?;

    // The agents' S3 dies (by pid); the coordinator still reaches the bucket.
    agents_s3.stop();
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 3, "the rollout paused: {stderr}\n{out:#}");
    let reason = out["rollout"]["state"]["phase"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("s3://baton-e2e/e2e"),
        "the reason names the store: {reason}\n{out:#}"
    );
    let journal = cluster.journal()?;
    assert_eq!(
        journal.iter().position(is_stop),
        None,
        "nothing was stopped"
    );
    let status = cluster.status()?;
    assert!(
        status.members.iter().all(|m| m.report.as_ref().is_some_and(
            |r| r.state.release == "v1" && r.state.health == baton_domain::Health::Healthy
        )),
        "every member still serves v1: {status:?}"
    );

    // The backup, beside the stages, fails too (after the SDK's retries),
    // naming the store and the cause.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let journal = cluster.journal()?;
        let failed = journal.iter().find_map(|e| {
            let detail = e["detail"].as_str()?;
            (e["event"] == "command_failed" && detail.contains("backup r1-v2-b1"))
                .then(|| detail.to_owned())
        });
        if let Some(detail) = failed {
            break detail;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backup never failed: {journal:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        failed.contains("s3://baton-e2e/e2e") && failed.contains("the S3 endpoint did not answer"),
        "the failure names the store and the cause: {failed}"
    );
    let journal = cluster.journal()?;
    assert_eq!(
        journal.iter().position(is_stop),
        None,
        "still nothing stopped"
    );

    // Back: resume stages again, retakes the backup under -b2, finishes.
    agents_s3.restart().await?;
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
        "{out:#}"
    );
    assert!(
        b["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("s3://")),
        "{out:#}"
    );
    Ok(())
}
