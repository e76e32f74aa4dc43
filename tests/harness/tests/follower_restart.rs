//! kill -9 a follower, write 1,000 keys, restart it: `baton status` shows its
//! lag above 0 while it catches up, then back at 0.

use std::time::Duration;

use anyhow::Result;
use baton_domain::Health;
use baton_harness::{Cluster, ClusterSpec};
use nix::sys::signal::Signal;
use samplekv::client::Client;

#[tokio::test]
async fn a_restarted_follower_shows_lag_then_catches_up() -> Result<()> {
    let mut cluster = Cluster::start(ClusterSpec::default()).await?;
    let leader = cluster.leader_index().await?;
    let f = (leader + 1) % cluster.members.len();
    let name = cluster.members[f].name.clone();

    let proc = cluster.members[f].proc.as_mut().expect("external member");
    proc.signal(Signal::SIGKILL);
    proc.wait_exit(Duration::from_secs(5))?;
    cluster
        .wait_status(
            "the killed follower shows as down",
            Duration::from_secs(10),
            |s| {
                s.members[f]
                    .report
                    .as_ref()
                    .is_some_and(|r| r.state.health == Health::Down)
            },
        )
        .await?;

    let client = Client::new(cluster.addrs());
    for i in 0..1000 {
        client.put(&format!("restart-{i:04}"), "x").await?;
    }

    // Restart it with a throttled apply (2 ms per entry) so that the catch-up
    // of 1,000 entries lasts long enough to be seen in a few reports.
    cluster.start_member(f, &[("SAMPLEKV_APPLY_DELAY_MS", "2")])?;
    let behind = cluster
        .wait_status(
            &format!("{name} serving with lag above 0"),
            Duration::from_secs(20),
            |s| {
                let row = &s.members[f];
                row.report
                    .as_ref()
                    .is_some_and(|r| r.state.health == Health::Healthy)
                    && row.lag.is_some_and(|l| l > 0)
            },
        )
        .await?;
    let lag_seen = behind.members[f].lag;
    let caught_up = cluster
        .wait_status(
            &format!("{name} back at lag 0"),
            Duration::from_secs(30),
            |s| s.members[f].lag == Some(0),
        )
        .await?;
    let own = cluster.member_status(f).await?;
    assert!(
        own.applied_revision >= 1000,
        "{name} applied everything: {own:?}"
    );
    let row = caught_up.members[f].report.as_ref().expect("reported");
    assert_eq!(row.state.health, Health::Healthy);
    eprintln!(
        "{name}: lag {lag_seen:?} after restart, then 0 at revision {}",
        row.state.applied_revision
    );
    Ok(())
}
