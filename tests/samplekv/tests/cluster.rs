//! 3-member clusters of real `samplekv` processes: election and
//! linearizable reads, leader hints, restart persistence (kill -9 of a
//! follower and of the whole cluster), the SIGTERM handover to the most
//! caught-up follower under load, and a paused apply.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use baton_proto::samplekv::kv_client::KvClient;
use baton_proto::samplekv::{GetRequest, PutRequest, Role};
use common::{Cluster, HEAVY, poll_until};
use samplekv::client::{self, Client};
use samplekv::writer::{self, WriterConfig};
use tokio_util::sync::CancellationToken;

const START: Duration = Duration::from_secs(20);

/// The two followers of `leader`, lower id first.
fn followers(c: &Cluster, leader: u64) -> (u64, u64) {
    let mut f: Vec<u64> = c
        .members
        .iter()
        .map(|m| m.id)
        .filter(|id| *id != leader)
        .collect();
    f.sort_unstable();
    (f[0], f[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_one_leader_and_follow_hints() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let mut c = Cluster::new(3)?;
    c.start_all()?;
    let leader = c.wait_one_leader(START).await?;
    let leader_addr = c.members[c.index_of(leader)].addr.clone();
    let (f1, _) = followers(&c, leader);
    let f1_addr = c.members[c.index_of(f1)].addr.clone();

    let client = Client::new(c.addrs());
    let ack = client.put("alpha", "1").await?;
    assert_eq!(ack.leader_id, leader);
    assert!(ack.revision > 0 && ack.term > 0);
    assert_eq!(client.get("alpha", true).await?.as_deref(), Some("1"));
    assert_eq!(client.get("missing", true).await?, None);

    // A follower refuses a write and a linearizable read, naming the leader.
    let mut raw = KvClient::new(samplekv::network::lazy_channel(&f1_addr)?);
    let put = raw
        .put(PutRequest {
            key: "beta".into(),
            value: "2".into(),
        })
        .await?
        .into_inner();
    assert!(!put.ok);
    let hint = put.not_leader.context("put on a follower carries a hint")?;
    assert_eq!(
        (hint.leader_id, hint.leader_addr.as_str()),
        (leader, leader_addr.as_str())
    );
    let get = raw
        .get(GetRequest {
            key: "alpha".into(),
            linearizable: true,
        })
        .await?
        .into_inner();
    assert_eq!(get.not_leader.map(|h| h.leader_id), Some(leader));

    // A client that only knows the follower follows the hint.
    let via_follower = Client::new(vec![f1_addr.clone()]);
    let ack = via_follower.put("beta", "2").await?;
    assert_eq!(ack.leader_id, leader);
    assert_eq!(
        via_follower.leader_hint().as_deref(),
        Some(leader_addr.as_str())
    );
    assert_eq!(via_follower.get("beta", true).await?.as_deref(), Some("2"));

    // The follower applies it and serves it from local state.
    c.wait_applied(f1, ack.revision, Duration::from_secs(5))
        .await?;
    assert_eq!(
        client::get_local(&f1_addr, "beta").await?.as_deref(),
        Some("2")
    );

    let st = c.members[c.index_of(leader)].status().await?;
    assert_eq!(st.role, Role::Leader as i32);
    assert_eq!((st.release_version.as_str(), st.format_version), ("v1", 1));
    assert!(st.committed_revision >= ack.revision && st.last_log_index >= ack.revision);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_members_restart_with_their_data_and_catch_up() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let mut c = Cluster::new(3)?;
    c.start_all()?;
    let leader = c.wait_one_leader(START).await?;
    let client = Client::new(c.addrs());
    for i in 0..50 {
        client.put(&format!("k{i:03}"), &format!("v{i}")).await?;
    }
    let (f, _) = followers(&c, leader);
    let fi = c.index_of(f);
    c.members[fi].kill9();
    let mut last = 0;
    for i in 50..100 {
        last = client
            .put(&format!("k{i:03}"), &format!("v{i}"))
            .await?
            .revision;
    }
    c.start(fi, &[])?;
    let st = c.wait_applied(f, last, Duration::from_secs(10)).await?;
    assert_eq!(st.leader_id, leader);
    for i in 0..100 {
        let v = client
            .get_from(&c.members[fi].addr, &format!("k{i:03}"))
            .await?;
        assert_eq!(
            v,
            Some(format!("v{i}")),
            "key k{i:03} on restarted member {f}"
        );
    }

    // kill -9 everyone: each member recovers from its own disk.
    for m in &mut c.members {
        m.kill9();
    }
    c.start_all()?;
    c.wait_one_leader(START).await?;
    for m in &c.members {
        c.wait_applied(m.id, last, Duration::from_secs(10)).await?;
    }
    for i in 0..100 {
        let v = client.get(&format!("k{i:03}"), true).await?;
        assert_eq!(v, Some(format!("v{i}")), "key k{i:03} after a full restart");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_the_purged_log_catches_up_from_a_snapshot() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let mut c = Cluster::new(3)?;
    let env = [("SAMPLEKV_SNAPSHOT_LOGS", "100")];
    c.start_all_with(&env)?;
    let leader = c.wait_one_leader(START).await?;
    let client = Client::new(c.addrs());
    client.put("before", "1").await?;
    // F misses everything below; G snapshots and purges its log meanwhile.
    let (f, g) = followers(&c, leader);
    let (fi, gi, li) = (c.index_of(f), c.index_of(g), c.index_of(leader));
    c.members[fi].kill9();

    let cfg = WriterConfig {
        rate_per_sec: 0,
        max_writes: 400,
        max_duration: Duration::from_secs(20),
        key_prefix: "s-".into(),
        max_in_flight: 16,
        ..WriterConfig::default()
    };
    let report = writer::run_writer(&client, cfg, CancellationToken::new()).await;
    assert_eq!(report.acked, 400, "errors: {:?}", report.errors);
    let last = report.acked_writes.last().map_or(0, |w| w.revision);
    let g_dir = c.members[gi].data_dir.clone();
    poll_until("G wrote a snapshot", Duration::from_secs(5), || async {
        g_dir.join("snapshot.json").exists().then_some(())
    })
    .await?;

    // Make G (whose log is purged) the leader, then bring F back.
    c.members[li].sigterm();
    assert_eq!(
        c.members[li].wait_exit(Duration::from_secs(10)).await?,
        Some(0)
    );
    c.start(li, &env)?;
    assert_eq!(c.wait_one_leader(START).await?, g);
    c.start(fi, &env)?;
    c.wait_applied(f, last, Duration::from_secs(10)).await?;
    assert!(
        c.members[fi].log_text().contains("installing snapshot"),
        "the restarted follower caught up through a snapshot:\n{}",
        c.members[fi].log_text()
    );
    for w in &report.acked_writes {
        let v = client.get_from(&c.members[fi].addr, &w.key).await?;
        assert_eq!(
            v.as_deref(),
            Some(w.value.as_str()),
            "{} on member {f}",
            w.key
        );
    }

    // kill -9 everyone: each restores its snapshot and re-applies its log.
    for m in &mut c.members {
        m.kill9();
    }
    c.start_all_with(&env)?;
    c.wait_one_leader(START).await?;
    let verified = writer::verify(&client, &report).await;
    assert!(
        verified.lost.is_empty() && verified.unreadable.is_empty(),
        "{verified:?}"
    );
    assert_eq!(client.get("before", true).await?.as_deref(), Some("1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leader_hands_over_to_most_caught_up_follower() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let mut c = Cluster::new(3)?;
    c.start_all()?;
    let leader = c.wait_one_leader(START).await?;
    // A: the follower the tie-break would favour (lower id), made slow;
    // B: the other follower, which is then the most caught up.
    let (a, b) = followers(&c, leader);
    let ai = c.index_of(a);
    c.members[ai].sigterm();
    ensure!(c.members[ai].wait_exit(Duration::from_secs(10)).await? == Some(0));
    c.start(ai, &[("SAMPLEKV_APPEND_DELAY_MS", "50")])?;
    ensure!(
        c.wait_one_leader(START).await? == leader,
        "leader changed while restarting A"
    );

    let client = Client::new(c.addrs());
    let stop = CancellationToken::new();
    let cfg = WriterConfig {
        rate_per_sec: 150,
        max_writes: 100_000,
        max_duration: Duration::from_secs(20),
        key_prefix: "h-".into(),
        ..WriterConfig::default()
    };
    let writer = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move { writer::run_writer(&client, cfg, stop).await }
    });

    let li = c.index_of(leader);
    let base = c.members[li].status().await?.committed_revision;
    poll_until(
        "150 writes committed on the old leader",
        Duration::from_secs(10),
        || async {
            let s = c.members[li].status().await.ok()?;
            (s.committed_revision >= base + 150).then_some(())
        },
    )
    .await?;

    c.members[li].sigterm();
    let code = c.members[li].wait_exit(Duration::from_secs(10)).await?;
    assert_eq!(code, Some(0), "old leader's exit code");
    let new_leader = c.wait_one_leader(Duration::from_secs(10)).await?;
    assert_eq!(new_leader, b, "the most caught-up follower leads");
    let log = c.members[li].log_text();
    assert!(
        log.contains(&format!("handing leadership to member {b}")),
        "old leader's log names the target:\n{log}"
    );

    let bi = c.index_of(b);
    let after = c.members[bi].status().await?.committed_revision;
    poll_until(
        "writes continue on the new leader",
        Duration::from_secs(10),
        || async {
            let s = c.members[bi].status().await.ok()?;
            (s.committed_revision >= after + 50).then_some(())
        },
    )
    .await?;
    stop.cancel();
    let report = writer.await?;
    eprintln!(
        "writer: attempted {} acked {} failed {} max gap {} ms leaders {:?} terms {:?} errors {:?}",
        report.attempted,
        report.acked,
        report.failed,
        report.max_write_gap_ms,
        report.leaders_seen,
        report.terms_seen,
        report.errors
    );
    assert_eq!(report.leader_changes, 1, "{:?}", report.leaders_seen);
    assert_eq!(report.leaders_seen, vec![leader, b]);
    assert!(report.acked >= 200, "acked {}", report.acked);

    let verified = writer::verify(&client, &report).await;
    assert_eq!(verified.checked, report.acked);
    assert!(
        verified.lost.is_empty(),
        "lost acked writes: {:?}",
        verified.lost
    );
    assert!(
        verified.unreadable.is_empty(),
        "unreadable: {:?}",
        verified.unreadable
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_apply_lags_behind_commit_and_catches_up() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let mut c = Cluster::new(3)?;
    c.start_all()?;
    let leader = c.wait_one_leader(START).await?;
    let (f, _) = followers(&c, leader);
    let fi = c.index_of(f);
    let client = Client::new(c.addrs());
    let first = client.put("p-000", "0").await?.revision;
    c.wait_applied(f, first, Duration::from_secs(5)).await?;

    std::fs::write(&c.members[fi].pause_file, b"")?;
    let mut last = first;
    for i in 1..=30 {
        last = client
            .put(&format!("p-{i:03}"), &i.to_string())
            .await?
            .revision;
    }
    // Committed reaches the last write while applied stays behind.
    let st = poll_until(
        "paused follower learns the commit",
        Duration::from_secs(5),
        || async {
            c.members[fi]
                .status()
                .await
                .ok()
                .filter(|s| s.committed_revision >= last)
        },
    )
    .await?;
    assert!(
        st.applied_revision < last,
        "applied {} while paused",
        st.applied_revision
    );
    let applied_then = st.applied_revision;
    for _ in 0..5 {
        let s = c.members[fi].status().await?;
        assert_eq!(s.applied_revision, applied_then, "apply moved while paused");
        assert_eq!(s.role, Role::Follower as i32);
    }
    assert_eq!(client::get_local(&c.members[fi].addr, "p-030").await?, None);

    std::fs::remove_file(&c.members[fi].pause_file)?;
    c.wait_applied(f, last, Duration::from_secs(5)).await?;
    assert_eq!(
        client::get_local(&c.members[fi].addr, "p-030")
            .await?
            .as_deref(),
        Some("30")
    );
    Ok(())
}
