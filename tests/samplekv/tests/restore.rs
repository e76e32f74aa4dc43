//! A real 3-member cluster restored from its own backup: every member
//! stopped, each data dir restored from the one document with
//! `samplekv-restore`, all started again. The restored cluster elects a
//! leader, holds exactly what the backup held (writes after it are gone, as
//! a restore promises), and takes new writes.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use baton_proto::samplekv::BackupRequest;
use baton_proto::samplekv::admin_client::AdminClient;
use common::{Cluster, HEAVY};
use samplekv::client::Client;
use samplekv::state_machine::BackupDocument;

const START: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_a_backup_holds_what_it_held_and_takes_writes() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let mut c = Cluster::new(3)?;
    c.start_all()?;
    let leader = c.wait_one_leader(START).await?;
    let client = Client::new(c.addrs());
    let mut last = 0;
    for i in 0..100 {
        last = client
            .put(&format!("k{i:03}"), &format!("v{i}"))
            .await?
            .revision;
    }
    // The backup, from a follower once it has applied every write.
    let follower = c
        .members
        .iter()
        .find(|m| m.id != leader)
        .context("a follower")?
        .id;
    c.wait_applied(follower, last, Duration::from_secs(10))
        .await?;
    let addr = c.members[c.index_of(follower)].addr.clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut admin = AdminClient::new(channel);
    let mut stream = admin.backup(BackupRequest {}).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(&chunk.data);
    }
    let doc = BackupDocument::parse(&bytes).map_err(anyhow::Error::msg)?;
    assert!(
        doc.applied_index >= last,
        "the backup holds every acked write"
    );
    let backup = c.dir.path().join("backup");
    std::fs::write(&backup, &bytes)?;
    // Writes after the backup: a restore takes the cluster back before them.
    for i in 100..120 {
        client.put(&format!("k{i:03}"), &format!("v{i}")).await?;
    }

    for m in &mut c.members {
        m.kill9();
    }
    for m in &c.members {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_samplekv-restore"))
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--from")
            .arg(&backup)
            .arg("--peers")
            .arg(&c.peers)
            .output()?;
        assert!(
            out.status.success(),
            "restore of member {}: {}",
            m.id,
            String::from_utf8_lossy(&out.stderr)
        );
        let said: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(said["applied_index"], doc.applied_index);
        assert!(
            said["moved_aside"].is_string(),
            "the old data dir was kept: {said}"
        );
    }
    c.start_all()?;
    c.wait_one_leader(START).await?;
    for m in &c.members {
        c.wait_applied(m.id, doc.applied_index, Duration::from_secs(10))
            .await?;
    }
    for i in 0..100 {
        let v = client.get(&format!("k{i:03}"), true).await?;
        assert_eq!(v, Some(format!("v{i}")), "k{i:03} after the restore");
    }
    for i in 100..120 {
        assert_eq!(
            client.get(&format!("k{i:03}"), true).await?,
            None,
            "k{i:03} was written after the backup"
        );
    }
    let ack = client.put("after", "restore").await?;
    assert!(
        ack.revision > doc.applied_index,
        "new writes go on from the backup's revision"
    );
    for m in &c.members {
        c.wait_applied(m.id, ack.revision, Duration::from_secs(10))
            .await?;
    }
    Ok(())
}
