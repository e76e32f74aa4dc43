//! Agents in supervise mode: killing an agent leaves its member running and
//! shows the member as not heard from, with a growing last-seen age; the
//! restarted agent adopts the same member process. A crashed member is
//! restarted by its agent.

use std::time::Duration;

use anyhow::Result;
use baton_domain::Health;
use baton_harness::{Cluster, ClusterSpec, MemberMode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

#[tokio::test]
async fn a_killed_agent_goes_stale_and_comes_back() -> Result<()> {
    let spec = ClusterSpec {
        mode: MemberMode::Supervise,
        ..ClusterSpec::default()
    };
    let hb = spec.heartbeat_ms;
    let mut cluster = Cluster::start(spec).await?;
    let i = 1;
    let name = cluster.members[i].name.clone();
    let member_pid = cluster
        .member_pid(i)
        .expect("supervised member has a pidfile");

    // Kill the agent (SIGKILL by pid, through its guard).
    drop(cluster.members[i].agent.take());
    let first = cluster
        .wait_status(
            &format!("{name} not connected"),
            Duration::from_secs(10),
            |s| !s.members[i].connected,
        )
        .await?;
    let age1 = first.members[i].last_seen_ms_ago.expect("was seen");
    let later = cluster
        .wait_status(
            &format!("{name} stale, its last-seen age growing"),
            Duration::from_secs(10),
            |s| {
                s.members[i]
                    .last_seen_ms_ago
                    .is_some_and(|a| a > age1 + 3 * hb)
                    && !s.members[i].fresh
            },
        )
        .await?;
    assert!(
        later.members[i].lag.is_none(),
        "no lag figure for a member not heard from"
    );
    assert!(alive(member_pid), "the member outlives its agent");

    cluster.start_agent(i)?;
    cluster
        .wait_status(&format!("{name} back"), Duration::from_secs(15), |s| {
            let m = &s.members[i];
            m.connected
                && m.fresh
                && m.last_seen_ms_ago.is_some_and(|a| a < 3 * hb)
                && m.report
                    .as_ref()
                    .is_some_and(|r| r.state.health == Health::Healthy)
        })
        .await?;
    assert_eq!(
        cluster.member_pid(i),
        Some(member_pid),
        "the restarted agent adopted the running member instead of starting another"
    );
    assert!(alive(member_pid));
    Ok(())
}

#[tokio::test]
async fn a_crashed_supervised_member_is_restarted() -> Result<()> {
    let spec = ClusterSpec {
        mode: MemberMode::Supervise,
        ..ClusterSpec::default()
    };
    let cluster = Cluster::start(spec).await?;
    let leader = cluster.leader_index().await?;
    let f = (leader + 1) % cluster.members.len();
    let old = cluster.member_pid(f).expect("pidfile");
    kill(Pid::from_raw(old), Signal::SIGKILL)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let new = loop {
        match cluster.member_pid(f) {
            Some(p) if p != old && alive(p) => break p,
            _ if tokio::time::Instant::now() > deadline => anyhow::bail!("member not restarted"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_ne!(new, old);
    cluster
        .wait_status(
            "restarted member healthy and caught up",
            Duration::from_secs(15),
            |s| {
                s.members[f].lag == Some(0)
                    && s.members[f]
                        .report
                        .as_ref()
                        .is_some_and(|r| r.state.health == Health::Healthy)
            },
        )
        .await?;
    Ok(())
}
