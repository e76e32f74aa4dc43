//! `baton status --output json` on a live 3-member samplekv cluster shows
//! exactly one leader that every row agrees on, revisions equal to what the
//! members themselves say, and lag 0 once writes stop.

use std::time::Duration;

use anyhow::{Result, bail};
use baton_domain::{FleetStatus, Role};
use baton_harness::{Cluster, ClusterSpec, bin};
use samplekv::client::Client;

#[tokio::test]
async fn status_matches_the_members_own_view() -> Result<()> {
    let cluster = Cluster::start(ClusterSpec::default()).await?;
    let client = Client::new(cluster.addrs());
    for i in 0..300 {
        client.put(&format!("status-{i:04}"), "x").await?;
    }
    // Writes have stopped. Poll until the coordinator's view has converged
    // on what each member says about itself, then check every claim at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (status, own) = loop {
        let status = cluster.status()?;
        let mut own = Vec::new();
        for i in 0..cluster.members.len() {
            own.push(cluster.member_status(i).await?);
        }
        let converged = status.members.iter().zip(&own).all(|(row, o)| {
            row.report.as_ref().is_some_and(|r| {
                r.state.applied_revision == o.applied_revision
                    && r.state.committed_revision == o.committed_revision
            })
        });
        if converged && status.members.iter().all(|m| m.lag == Some(0)) {
            break (status, own);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("status never converged: {status:#?}\nmembers say: {own:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    check(&status)?;
    assert!(
        own.iter().all(|o| o.applied_revision >= 300),
        "every member applied the 300 writes: {own:?}"
    );
    let leader_idx = cluster.leader_index().await?;
    assert_eq!(
        status.leader.as_ref().map(|m| m.as_str()),
        Some(cluster.members[leader_idx].name.as_str()),
        "the coordinator's leader is the member that says it leads"
    );

    // The human table: a header, a column line and one row per member.
    let out = std::process::Command::new(bin("baton"))
        .args(["--coordinator", &cluster.coordinator_url, "status"])
        .output()?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(text.lines().count(), 2 + cluster.members.len(), "{text}");
    let rows: Vec<&str> = text.lines().skip(2).collect();
    let role = |l: &&str| l.split_whitespace().nth(1).map(str::to_owned);
    assert_eq!(
        rows.iter()
            .filter(|l| role(l).as_deref() == Some("leader"))
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        rows.iter()
            .filter(|l| role(l).as_deref() == Some("follower"))
            .count(),
        2,
        "{text}"
    );
    Ok(())
}

fn check(status: &FleetStatus) -> Result<()> {
    let leaders: Vec<_> = status
        .members
        .iter()
        .filter(|m| {
            m.report
                .as_ref()
                .is_some_and(|r| r.state.role == Role::Leader)
        })
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader row: {status:#?}");
    let leader = &leaders[0].member;
    assert_eq!(status.leader.as_ref(), Some(leader));
    for row in &status.members {
        let r = row.report.as_ref().expect("every member reported");
        assert_eq!(
            r.state.leader.as_ref(),
            Some(leader),
            "row {} agrees on the leader",
            row.member
        );
        assert!(row.connected && row.fresh, "row {} is live", row.member);
    }
    Ok(())
}
