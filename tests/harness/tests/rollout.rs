//! Rolling upgrades of a live samplekv cluster, end to end: real members,
//! real agents, a real coordinator, the `baton` CLI, and a writer at 100
//! writes/s whose every acknowledged write is read back.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use baton_domain::Health;
use baton_harness::load::{agent_journals, start_load};
use baton_harness::stall::{self, Unpause};
use baton_harness::{Cluster, ClusterSpec, is_a_stop, wait_journal_entry};
use samplekv::client::Client;

const POLICY: &str = "tolerable_lag = 50\nhealth_timeout_ms = 20000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\nstall_after_ms = 20000\n";

fn event_index(
    journal: &[serde_json::Value],
    f: impl Fn(&serde_json::Value) -> bool,
) -> Option<usize> {
    journal.iter().position(f)
}

async fn clean_upgrade(n: usize) -> Result<()> {
    let spec = ClusterSpec {
        policy: POLICY.into(),
        ..ClusterSpec::supervised(n)
    };
    let mut cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    let leader = cluster.leader_index().await?;
    // Slow every follower's appends but one: that one is the most caught up
    // at handover time, whatever the tie-break would say.
    let followers: Vec<usize> = (0..n).filter(|i| *i != leader).collect();
    let fast = followers[0];
    // (40 ms stays well inside openraft's AppendEntries budget, the 100 ms
    // heartbeat; 60 ms let a loaded machine time heartbeats out and start
    // elections during this setup.)
    for &i in &followers[1..] {
        cluster.restart_supervised_with_env(i, &[("SAMPLEKV_APPEND_DELAY_MS", "40")])?;
    }
    // Settled: every member back and caught up, every report naming the one
    // leader, and still the same leader a second later. Usually the leader
    // from before the restarts; on a loaded machine an election can move
    // it, and the rollout starts from whoever leads now.
    let settled = |s: &baton_domain::FleetStatus| {
        s.leader.is_some()
            && s.members.iter().all(|m| {
                m.connected
                    && m.fresh
                    && m.lag.is_some_and(|l| l <= 5)
                    && m.report
                        .as_ref()
                        .is_some_and(|r| r.state.leader == s.leader)
            })
            && s.members
                .iter()
                .filter(|m| {
                    m.report
                        .as_ref()
                        .is_some_and(|r| r.state.role == baton_domain::Role::Leader)
                })
                .count()
                == 1
    };
    let mut status = cluster
        .wait_status(
            "every member back, one leader, caught up",
            Duration::from_secs(30),
            settled,
        )
        .await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let again = cluster
            .wait_status("the cluster settled", Duration::from_secs(30), settled)
            .await?;
        let same = again.leader == status.leader;
        status = again;
        if same {
            break;
        }
    }
    let leader_name = status
        .leader
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .expect("one leader");

    // The dry run: preflight passes, followers first, the leader last, and
    // the handover target as of now.
    let (code, plan, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["plan", "--to", "v2"]))?;
    assert_eq!(code, 0, "plan: {stderr} {plan:#}");
    assert_eq!(plan["ok"], true);
    let all = plan["steps"].as_array().cloned().unwrap_or_default();
    // While every member serves: the stage, then the backup (the
    // coordinator's default policy is backup = "required").
    let action = |s: &serde_json::Value| s["action"].as_str().unwrap_or_default().to_owned();
    assert!(
        action(&all[0]).starts_with("stage v2 on every member"),
        "{plan:#}"
    );
    assert!(action(&all[1]).starts_with("back up"), "{plan:#}");
    assert_ne!(
        all[1]["member"],
        leader_name.as_str(),
        "a follower backs up"
    );
    let steps = all[2..].to_vec();
    assert_eq!(
        steps.len(),
        n + 2,
        "n upgrades, one handover, one verify: {plan:#}"
    );
    assert_eq!(steps[n - 1]["member"], leader_name.as_str());
    assert!(
        steps[n - 1]["action"]
            .as_str()
            .unwrap_or_default()
            .starts_with("hand leadership to")
    );
    assert_eq!(steps[n]["member"], leader_name.as_str());
    assert!(
        steps
            .iter()
            .all(|s| !s["reason"].as_str().unwrap_or_default().is_empty())
    );
    assert!(
        plan["checks"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["ok"] == true))
    );

    let load = start_load(&cluster);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, out, stderr) = {
        let cluster = &cluster;
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?
    };
    let (report, lost, max_down) = load.finish().await?;
    assert_eq!(code, 0, "baton upgrade succeeds: {stderr}\n{out:#}");

    // Every member on v2, healthy, one leader.
    let status = cluster
        .wait_status("all on v2", Duration::from_secs(10), |s| {
            s.leader.is_some()
                && s.members.iter().all(|m| {
                    m.report.as_ref().is_some_and(|r| {
                        r.state.release == "v2" && r.state.health == Health::Healthy
                    })
                })
        })
        .await?;
    let summary = &out["summary"];
    // Who started it is journaled: on plaintext loopback, the local caller.
    assert_eq!(summary["started_by"], "local", "{summary:#}");
    let (code, history, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["history"]))?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(history[0]["audit"][0]["what"], "started", "{history:#}");
    assert_eq!(history[0]["audit"][0]["by"], "local", "{history:#}");
    let order: Vec<String> = serde_json::from_value(summary["order"].clone())?;
    assert_eq!(order.len(), n);
    assert_eq!(
        order.last(),
        Some(&leader_name),
        "the leader at the start went last"
    );
    assert_eq!(summary["leader_changes"], 1, "one handover");
    // The target is the follower with the least recent lag at the moment of
    // the pick, as the journal recorded it (normally the fast follower).
    let journal_now = cluster.journal()?;
    let picked = journal_now
        .iter()
        .rev()
        .find(|e| e["event"] == "handover_picked")
        .expect("the pick is journaled");
    let lags: Vec<(String, u64)> = serde_json::from_value(picked["lags"].clone())?;
    let min = lags.iter().map(|(_, l)| *l).min().expect("candidates");
    let to = picked["to"].as_str().expect("to").to_owned();
    assert!(
        lags.iter().any(|(m, l)| *m == to && *l == min),
        "the handover went to the most caught-up follower: {picked}"
    );
    let handover_events: Vec<&serde_json::Value> = journal_now
        .iter()
        .filter(|e| {
            let ev = e["event"].as_str().unwrap_or_default();
            ev.starts_with("handover")
                || ev == "leader_changed"
                || e["action"]["action"] == "step_down"
        })
        .collect();
    assert_eq!(
        summary["handover_target"],
        to.as_str(),
        "the summary's new leader is the last pick: {handover_events:#?}"
    );
    if to != cluster.members[fast].name {
        eprintln!("note: the pick was {to}, not the fast follower, at that moment: {picked}");
    }
    assert_eq!(
        status.leader.as_ref().map(|m| m.to_string()),
        Some(to.clone())
    );

    // The writer saw exactly one leader change and lost nothing.
    assert_eq!(
        report.leader_changes, 1,
        "leaders seen: {:?}",
        report.leaders_seen
    );
    assert_eq!(lost, Vec::<String>::new(), "no acknowledged write lost");
    assert!(report.acked >= 100, "the writer kept writing: {report:?}");
    assert!(
        max_down <= 1,
        "never two members down at once (saw {max_down})"
    );

    // No member was stopped while it led: the old leader's Stop comes after
    // the handover was confirmed, and no agent refused a Stop as leader.
    let journal = cluster.journal()?;
    let confirmed =
        event_index(&journal, |e| e["event"] == "handover_confirmed").expect("handover");
    let leader_stop = event_index(&journal, |e| {
        e["event"] == "command_issued"
            && e["member"] == leader_name.as_str()
            && e["action"]["action"] == "stop"
    })
    .expect("the old leader was stopped");
    assert!(
        confirmed < leader_stop,
        "handover confirmed before the old leader's stop"
    );
    let mut runs = BTreeMap::new();
    for i in 0..n {
        for entry in cluster
            .agent_commands(i)
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            assert!(
                entry["result"].get("Ok").is_some(),
                "member {i} command failed: {entry}"
            );
            runs.insert(entry["id"].to_string(), entry["runs"].as_u64());
        }
    }
    assert!(
        runs.values().all(|r| *r == Some(1)),
        "each command ran once: {runs:?}"
    );
    eprintln!(
        "{n} members: total {} ms, acked {}, max write gap {} ms, max down {max_down}",
        summary["total_ms"], report.acked, report.max_write_gap_ms
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_upgrade_of_three_members() -> Result<()> {
    clean_upgrade(3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_upgrade_of_five_members() -> Result<()> {
    clean_upgrade(5).await
}

/// The agent journals of every member, as (member index, entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_fails_to_start_is_rolled_back_and_pauses() -> Result<()> {
    let spec = ClusterSpec {
        policy: format!("{POLICY}health_timeout_ms = 4000\n")
            .replace("health_timeout_ms = 20000\n", ""),
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, true)?;
    let leader = cluster.leader_index().await?;
    let leader_name = cluster.members[leader].name.clone();
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 3, "a paused rollout exits 3: {stderr}");
    let state = &out["rollout"]["state"];
    let first = state["order"][0].as_str().expect("order").to_owned();
    let reason = state["phase"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The release's binary exits at once: the exit fails the start at
    // once (issue 10), not the health timeout.
    assert!(
        reason.contains(&format!(
            "member {first} exited 1 time(s) since it was started"
        )) && reason.contains("on v2; rolling it back to v1"),
        "the reason names the member, the exit and the rollback: {reason}"
    );
    assert!(
        stderr.contains("baton resume"),
        "the CLI gives the next step: {stderr}"
    );
    assert_eq!(state["members"][&first]["stage"]["stage"], "reverted");
    // The cluster is healthy on v1, and the leader was never touched.
    cluster
        .wait_status("everyone healthy on v1", Duration::from_secs(20), |s| {
            s.leader.as_ref().map(|m| m.as_str()) == Some(leader_name.as_str())
                && s.members.iter().all(|m| {
                    m.lag.is_some()
                        && m.report.as_ref().is_some_and(|r| {
                            r.state.release == "v1" && r.state.health == Health::Healthy
                        })
                })
        })
        .await?;
    // The others were staged (every member stages at once; staging never
    // takes a member down), one of them backed up while it served, and none
    // stopped.
    for (i, entries) in agent_journals(&cluster.probe_addrs()).await? {
        if i == leader || cluster.members[i].name != first {
            assert!(
                entries
                    .iter()
                    .all(|e| matches!(e["action"]["action"].as_str(), Some("stage" | "backup"))),
                "member {i} was staged (or backed up) at most, never stopped: {entries:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_that_never_finishes_pauses_at_the_timeout() -> Result<()> {
    // Every follower applies only while its pause file is absent.
    let (cluster, pause_files) = stall::cluster_with_pause_files(
        3,
        300,
        "tolerable_lag = 5\ncatchup_timeout_ms = 3000\nstall_after_ms = 60000\nhealth_timeout_ms = 20000\n",
    )
    .await?;
    let _unpause = Unpause(pause_files.clone());
    cluster.publish("v2", 1, false)?;
    let load = start_load(&cluster);
    let (started, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    assert_eq!(started, 0, "{stderr}");
    // Stall the first follower's catch-up once the rollout has started: it
    // comes back on v2 and cannot catch up.
    stall::stall_first_in_order(&cluster, &pause_files)?;
    let (code, out, _) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    let (report, lost, _) = load.finish().await?;
    assert_eq!(code, 3, "paused: {out:#}");
    let state = &out["rollout"]["state"];
    let first = state["order"][0].as_str().expect("order");
    let reason = state["phase"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("member {first} did not catch up: lag "))
            && reason.contains("catchup_timeout 3s"),
        "the reason names the member and its lag: {reason}"
    );
    stall::unpause(&pause_files);
    assert_eq!(lost, Vec::<String>::new());
    assert!(report.acked > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_during_a_catch_up_leaves_everyone_running_and_resume_finishes() -> Result<()> {
    let (cluster, pause_files) = stall::cluster_with_pause_files(
        3,
        300,
        "tolerable_lag = 5\ncatchup_timeout_ms = 60000\nstall_after_ms = 60000\n",
    )
    .await?;
    let _unpause = Unpause(pause_files.clone());
    cluster.publish("v2", 1, false)?;
    let load = start_load(&cluster);
    let (started, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    assert_eq!(started, 0, "{stderr}");
    stall::stall_first_in_order(&cluster, &pause_files)?;
    // Wait for the first member to be in its catch-up, then abort.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, cur, _) = tokio::task::block_in_place(|| cluster.baton_json(&["rollout"]))?;
        let first = cur["state"]["order"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if cur["state"]["members"][&first]["stage"]["stage"] == "catching_up" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never reached the catch-up: {cur:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["abort"]))?;
    assert_eq!(code, 0, "{stderr}");
    let (code, out, _) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(code, 3, "abort leaves the rollout paused: {out:#}");
    let reason = out["rollout"]["state"]["phase"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("aborted by the operator"), "{reason}");
    // Every member is running (answers its Status) after the abort.
    for i in 0..3 {
        cluster.member_status(i).await?;
    }
    stall::unpause(&pause_files);
    let (code, _, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["resume"]))?;
    assert_eq!(code, 0, "{stderr}");
    let (code, out, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(code, 0, "resume finishes the rollout: {stderr} {out:#}");
    let (_, lost, _) = load.finish().await?;
    assert_eq!(lost, Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_carries_on_and_no_command_runs_twice() -> Result<()> {
    let spec = ClusterSpec {
        policy: POLICY.into(),
        ..ClusterSpec::supervised(3)
    };
    let mut cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    let load = start_load(&cluster);
    let (started, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    assert_eq!(started, 0, "{stderr}");
    // Kill the coordinator once the first member is done and the second is under way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, cur, _) = tokio::task::block_in_place(|| cluster.baton_json(&["rollout"]))?;
        let second = cur["state"]["order"][1]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if cur["state"]["members"][&second]["stage"]["stage"] != "pending" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "rollout never got going: {cur:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(cluster.coordinator.take()); // SIGKILL by pid
    let before = cluster.journal()?.len();
    cluster.start_coordinator()?;
    let (code, out, stderr) = tokio::task::block_in_place(|| {
        // The CLI retries nothing itself: wait for the new coordinator to listen.
        let deadline = std::time::Duration::from_secs(10);
        let t0 = tokio::time::Instant::now();
        loop {
            let r = cluster.baton_json(&["watch"]);
            match &r {
                Ok((69, _, _)) if t0.elapsed() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => return r,
            }
        }
    })?;
    assert_eq!(
        code, 0,
        "the restarted coordinator finished the rollout: {stderr} {out:#}"
    );
    let journal = cluster.journal()?;
    assert!(
        journal.len() > before,
        "the new coordinator appended to the same journal"
    );
    assert_eq!(
        journal.iter().filter(|e| e["event"] == "started").count(),
        1,
        "one rollout, resumed, not restarted"
    );
    let mut ids = std::collections::BTreeSet::new();
    for e in journal.iter().filter(|e| e["event"] == "command_issued") {
        assert!(
            ids.insert(e["id"].to_string()),
            "command id issued twice: {e}"
        );
    }
    let mut total = 0;
    for (i, entries) in agent_journals(&cluster.probe_addrs()).await? {
        for e in entries {
            assert_eq!(e["runs"], 1, "member {i} ran a command twice: {e}");
            total += 1;
        }
    }
    assert_eq!(
        total,
        ids.len(),
        "every issued command ran exactly once somewhere"
    );
    let (_, lost, _) = load.finish().await?;
    assert_eq!(lost, Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_journal_reuses_no_command_id_and_no_agent_replays_a_result() -> Result<()> {
    let spec = ClusterSpec {
        policy: POLICY.into(),
        ..ClusterSpec::supervised(3)
    };
    let mut cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    cluster.publish("v3", 1, false)?;
    let load = start_load(&cluster);
    for to in ["v2", "v3"] {
        let (code, _, stderr) =
            tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", to]))?;
        assert_eq!(code, 0, "upgrade to {to}: {stderr}");
    }
    let old_ids: std::collections::BTreeSet<String> = cluster
        .journal()?
        .iter()
        .filter(|e| e["event"] == "command_issued")
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    // The journal is lost (as moving an unreadable one aside would do).
    drop(cluster.coordinator.take()); // SIGKILL by pid
    std::fs::remove_file(cluster.dir.path().join(baton_harness::JOURNAL))?;
    cluster.start_coordinator()?;
    cluster.wait_led_and_fresh().await?;
    // The next rollout is r1-v2 again, with the same actions as the first.
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 0, "upgrade to v2 after the loss: {stderr} {out:#}");
    let journal = cluster.journal()?;
    assert_eq!(journal[0]["id"], "r1-v2", "the history really was lost");
    let new_ids: Vec<String> = journal
        .iter()
        .filter(|e| e["event"] == "command_issued")
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    for id in &new_ids {
        assert!(!old_ids.contains(id), "command id {id} was reused");
    }
    // Every command ran, once: none was answered from an agent's cache.
    let mut ran = std::collections::BTreeSet::new();
    for (i, entries) in agent_journals(&cluster.probe_addrs()).await? {
        for e in entries {
            assert_eq!(e["runs"], 1, "member {i} ran a command twice: {e}");
            ran.insert(e["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    for id in &new_ids {
        assert!(ran.contains(id), "command {id} never ran on any agent");
    }
    let status = cluster.status()?;
    for m in &status.members {
        let release = m.report.as_ref().map(|r| r.state.release.as_str());
        assert_eq!(release, Some("v2"), "{} after the rollout to v2", m.member);
    }
    let (_, lost, _) = load.finish().await?;
    assert_eq!(lost, Vec::<String>::new());
    Ok(())
}

/// Polls the journal until `f` finds an entry ([`wait_journal_entry`]).
async fn journal_until(
    cluster: &Cluster,
    what: &str,
    within: Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    wait_journal_entry(|| cluster.journal_entries(), what, within, f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_coordinator_disk_pauses_with_every_member_serving_and_resumes_when_space_returns()
-> Result<()> {
    // A 64 KiB state dir is far below the 16 MiB the preflight asks by
    // default; this cluster asks for 8 KiB.
    let spec = ClusterSpec {
        policy: format!("{POLICY}min_state_disk_free_bytes = 8192\n"),
        ..ClusterSpec::supervised(3)
    };
    let mut cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    // The coordinator's state dir moves onto a 64 KiB disk.
    drop(cluster.coordinator.take()); // SIGKILL by pid
    let state = cluster.dir.path().join("coordinator-state");
    let saved = cluster.dir.path().join("coordinator-state.before");
    std::fs::rename(&state, &saved)?;
    std::fs::create_dir(&state)?;
    let disk = baton_store::testutil::SmallDisk::mount_at(&state);
    baton_harness::copy_dir(&saved, &state)?;
    cluster.start_coordinator()?;
    cluster.wait_led_and_fresh().await?;
    let load = start_load(&cluster);
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    assert_eq!(code, 0, "{stderr}");
    // The first follower's stop has happened: fill the disk while the
    // rollout is mid-way.
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
        .wait_status("every member serving", Duration::from_secs(20), |s| {
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
    // It stays paused while the disk is full, and its log stays bounded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Still paused: after the pause only results of commands already in
    // flight (a handover under way finishes) are journaled; nothing new is
    // issued and nothing resumes.
    let journal = cluster.journal()?;
    let at = journal
        .iter()
        .position(|e| *e == paused)
        .expect("the pause is journaled");
    let after: Vec<_> = journal[at + 1..]
        .iter()
        .filter(|e| e["event"] != "command_succeeded" && e["event"] != "command_failed")
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
    journal_until(&cluster, "the completion", Duration::from_secs(90), |e| {
        e["event"] == "completed"
    })
    .await?;
    let journal = cluster.journal()?;
    assert!(
        journal.iter().any(|e| e["event"] == "resumed"),
        "resumed by itself"
    );
    let (_, lost, max_down) = load.finish().await?;
    assert_eq!(lost, Vec::<String>::new());
    assert!(max_down <= 1, "{max_down} members down at once");
    // The journal reads back whole after a restart.
    drop(cluster.coordinator.take());
    cluster.start_coordinator()?;
    cluster.wait_led_and_fresh().await?;
    let (code, out, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["history"]))?;
    assert_eq!(code, 0, "{stderr}");
    assert!(out.to_string().contains("r1-v2"), "{out:#}");
    // The tmpfs first (a lazy unmount), so the cluster's temp dir can
    // be removed whole when it drops.
    drop(disk);
    drop(cluster);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_agent_disk_never_leaves_its_member_down_and_fails_the_next_preflight() -> Result<()>
{
    let spec = ClusterSpec {
        policy: format!("{POLICY}min_state_disk_free_bytes = 8192\n"),
        ..ClusterSpec::supervised(3)
    };
    let mut cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    cluster.publish("v3", 1, false)?;
    // Every agent's state dir (its command journal, member.pid and the
    // member's own log) moves onto a 64 KiB disk of its own; each agent
    // adopts its running member from the pidfile it finds there.
    let mut disks = Vec::new();
    for i in 0..cluster.members.len() {
        drop(cluster.members[i].agent.take()); // SIGKILL by pid
        let m = &cluster.members[i];
        let small = m.agent_dir.join("state-small");
        std::fs::create_dir(&small)?;
        disks.push(baton_store::testutil::SmallDisk::mount_at(&small));
        for f in ["commands.log", "member.pid"] {
            std::fs::copy(m.agent_dir.join(f), small.join(f))?;
        }
        let config = std::fs::read_to_string(&m.agent_config)?;
        let old = format!("state_dir = {:?}", m.agent_dir.to_string_lossy());
        anyhow::ensure!(config.contains(&old), "{config}");
        let new = format!("state_dir = {:?}", small.to_string_lossy());
        std::fs::write(&m.agent_config, config.replace(&old, &new))?;
        cluster.start_agent(i)?;
    }
    cluster.wait_led_and_fresh().await?;
    // Settled after the agents' restart: every agent fresh, every lag small.
    cluster
        .wait_status("settled", Duration::from_secs(20), |s| {
            s.members
                .iter()
                .all(|m| m.fresh && m.connected && m.lag.is_some_and(|l| l <= 5))
        })
        .await?;
    let load = start_load(&cluster);
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    assert_eq!(code, 0, "{stderr} {out:#}");
    // The first member stopped: its disk fills while it is down.
    let stopped = journal_until(
        &cluster,
        "the first stop",
        Duration::from_secs(30),
        is_a_stop,
    )
    .await?;
    let victim = cluster
        .journal()?
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
    // its log on the full disk, and the rollout completes.
    journal_until(
        &cluster,
        "the end of the rollout",
        Duration::from_secs(90),
        |e| e["event"] == "completed" || e["event"] == "paused",
    )
    .await?;
    let journal = cluster.journal()?;
    assert!(
        journal.iter().any(|e| e["event"] == "completed"),
        "{:#?}",
        journal.iter().rev().take(5).collect::<Vec<_>>()
    );
    let status = cluster.status()?;
    for m in &status.members {
        let release = m.report.as_ref().map(|r| r.state.release.as_str());
        assert_eq!(release, Some("v2"), "{}", m.member);
    }
    let (_, lost, max_down) = load.finish().await?;
    assert_eq!(lost, Vec::<String>::new());
    assert!(max_down <= 1, "{max_down} members down at once");
    // The next rollout is refused before anything is touched, naming the
    // member whose state disk is full.
    cluster
        .wait_status("the full disk reported", Duration::from_secs(10), |s| {
            s.members.iter().any(|m| {
                m.member.as_str() == victim
                    && m.report
                        .as_ref()
                        .is_some_and(|r| r.resources.state_disk_free_bytes < 8192)
            })
        })
        .await?;
    // And it pages, naming the member, while the member serves.
    let low = |e: &serde_json::Value| {
        e["alert"]["labels"]["alertname"] == "BatonAgentStateDiskLow"
            && e["alert"]["labels"]["member"] == victim.as_str()
    };
    journal_until(
        &cluster,
        "the state-disk page",
        Duration::from_secs(10),
        |e| e["alert_event"] == "fired" && low(e),
    )
    .await?;
    let failed = tokio::task::block_in_place(|| refused(&cluster, "v3"))?;
    assert!(
        failed
            .iter()
            .any(|(c, m, d)| c == "state-disk" && m == &victim && d.contains("bytes free")),
        "{failed:?}"
    );
    // Space returns: the page resolves.
    std::fs::remove_file(disks[i].path().join("filler"))?;
    journal_until(
        &cluster,
        "the state-disk page resolved",
        Duration::from_secs(10),
        |e| e["alert_event"] == "resolved" && low(e),
    )
    .await?;
    // The tmpfs first (a lazy unmount), so the cluster's temp dir can
    // be removed whole when it drops.
    drop(disks);
    drop(cluster);
    Ok(())
}

/// Runs `baton upgrade --to V --detach` and returns the failed checks as
/// (check, member). Detached, so a preflight that wrongly passes fails the
/// test at once instead of waiting on the rollout it started.
fn refused(cluster: &Cluster, to: &str) -> Result<Vec<(String, String, String)>> {
    let (code, out, stderr) = cluster.baton_json(&["upgrade", "--to", to, "--detach"])?;
    anyhow::ensure!(
        code == 2,
        "preflight must refuse with exit 2, got {code}: {stderr} {out:#}"
    );
    assert!(stderr.contains("nothing was touched"), "{stderr}");
    let checks = out["checks"].as_array().cloned().unwrap_or_default();
    Ok(checks
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| {
            (
                c["check"].as_str().unwrap_or_default().to_owned(),
                c["member"].as_str().unwrap_or_default().to_owned(),
                c["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_naming_the_member_and_the_check() -> Result<()> {
    let spec = ClusterSpec {
        // A short catch-up timeout: a preflight that wrongly passes fails
        // this test in seconds, not after the default 300 s verify.
        policy: "tolerable_lag = 5\ncatchup_timeout_ms = 5000\n".into(),
        ..ClusterSpec::supervised(3)
    };
    let mut cluster = Cluster::start(spec).await?;
    let leader = cluster.leader_index().await?;
    let follower = (leader + 1) % 3;
    let fname = cluster.members[follower].name.clone();

    // The artifact is missing.
    let failed = tokio::task::block_in_place(|| refused(&cluster, "v9"))?;
    assert!(
        failed
            .iter()
            .any(|(c, _, d)| c == "artifact" && d.contains("not in the artifact store")),
        "{failed:?}"
    );

    // The artifact's checksum is bad.
    cluster.publish("v3", 1, false)?;
    let tar = cluster.store_dir.join("samplekv/v3/artifact.tar");
    let mut bytes = std::fs::read(&tar)?;
    bytes[600] ^= 0x55;
    std::fs::write(&tar, bytes)?;
    let failed = tokio::task::block_in_place(|| refused(&cluster, "v3"))?;
    assert!(
        failed.iter().any(|(c, _, d)| c == "artifact"
            && d.contains("artifact sha256 is")
            && d.contains("the manifest says")
            && d.matches("republish").count() == 1),
        "{failed:?}"
    );

    // A downgrade across formats: the members write format 1, v0 reads only 0.
    cluster.publish("v0", 0, false)?;
    let failed = tokio::task::block_in_place(|| refused(&cluster, "v0"))?;
    assert!(
        failed.iter().any(|(c, m, d)| c == "format"
            && m == &fname
            && d.contains("downgrade across formats")),
        "{failed:?}"
    );

    cluster.publish("v2", 1, false)?;
    // A member has no agent.
    drop(cluster.members[follower].agent.take());
    cluster
        .wait_status("agent gone", Duration::from_secs(10), |s| {
            !s.members[follower].connected
        })
        .await?;
    let failed = tokio::task::block_in_place(|| refused(&cluster, "v2"))?;
    assert!(
        failed
            .iter()
            .any(|(c, m, d)| c == "agent" && m == &fname && d.contains("no connected agent")),
        "{failed:?}"
    );
    cluster.start_agent(follower)?;
    cluster
        .wait_status("agent back", Duration::from_secs(10), |s| {
            s.members[follower].fresh
        })
        .await?;

    // A member is lagging: its apply is paused while writes go on.
    let pause = cluster.dir.path().join("pause-apply");
    let p = pause.to_string_lossy().into_owned();
    cluster.restart_supervised_with_env(follower, &[("SAMPLEKV_PAUSE_APPLY_FILE", p.as_str())])?;
    cluster
        .wait_status("back", Duration::from_secs(30), |s| {
            s.members[follower].lag == Some(0)
        })
        .await?;
    std::fs::write(&pause, b"")?;
    let client = Client::new(cluster.addrs());
    for i in 0..30 {
        client.put(&format!("lag-{i}"), "x").await?;
    }
    // All 30 unapplied: only a paused apply shows that (a member that
    // applies can show a lag above 5 for an instant under load, and then
    // the preflight rightly passes).
    cluster
        .wait_status("lag visible", Duration::from_secs(10), |s| {
            s.members[follower].lag.is_some_and(|l| l >= 30)
        })
        .await?;
    let failed = tokio::task::block_in_place(|| refused(&cluster, "v2"))?;
    assert!(
        failed
            .iter()
            .any(|(c, m, d)| c == "lag" && m == &fname && d.contains("> tolerable_lag 5")),
        "{failed:?}"
    );
    std::fs::remove_file(&pause)?;
    cluster
        .wait_status("caught up", Duration::from_secs(20), |s| {
            s.members[follower].lag == Some(0)
        })
        .await?;

    // Mixed releases: one member runs a release that calls itself v1b.
    let current = std::fs::canonicalize(cluster.members[follower].base_dir.join("current"))?;
    let manifest = current.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest)?.replace("\"v1\"", "\"v1b\"");
    std::fs::write(&manifest, text)?;
    let pid = cluster.member_pid(follower).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    cluster
        .wait_status("member on v1b", Duration::from_secs(20), |s| {
            s.members[follower]
                .report
                .as_ref()
                .is_some_and(|r| r.state.release == "v1b" && r.state.health == Health::Healthy)
        })
        .await?;
    let failed = tokio::task::block_in_place(|| refused(&cluster, "v2"))?;
    assert!(
        failed
            .iter()
            .any(|(c, m, d)| c == "release" && m == &fname && d.contains("mixed releases")),
        "{failed:?}"
    );

    // Nothing was ever touched.
    for (i, entries) in agent_journals(&cluster.probe_addrs()).await? {
        assert!(
            entries.is_empty(),
            "member {i} got commands from a refused preflight: {entries:?}"
        );
    }
    let (_, history, _) = cluster.baton_json(&["history"])?;
    assert_eq!(
        history.as_array().map(|a| a.len()),
        Some(0),
        "no rollout was started: {history}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_tail_is_cut_with_history_intact_and_a_flipped_byte_refuses_naming_the_offset()
-> Result<()> {
    let spec = ClusterSpec {
        policy: POLICY.into(),
        ..ClusterSpec::supervised(3)
    };
    let mut cluster = Cluster::start(spec).await?;
    cluster.publish("v2", 1, false)?;
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 0, "{stderr}");
    let (_, before, _) = tokio::task::block_in_place(|| cluster.baton_json(&["history"]))?;
    let path = cluster.dir.path().join(baton_harness::JOURNAL);
    let log = cluster.dir.path().join("coordinator.log");
    // An appended \xff (a write torn mid-character): cut, history intact.
    drop(cluster.coordinator.take()); // SIGKILL by pid
    {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)?
            .write_all(b"\xff")?;
    }
    cluster.start_coordinator()?;
    cluster.wait_led_and_fresh().await?;
    let (code, after, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["history"]))?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(after, before, "the history is intact");
    let text = std::fs::read_to_string(&log)?;
    assert!(
        text.lines()
            .any(|l| l.contains("cut off a torn journal tail") && l.contains("offset")),
        "the cut is logged with its offset"
    );
    // A flipped byte in the middle: the coordinator refuses to start and
    // names the file and the offset.
    drop(cluster.coordinator.take());
    let (records, _) = baton_store::records::read(&path)?;
    let mid = &records[records.len() / 2];
    let mut bytes = std::fs::read(&path)?;
    bytes[mid.offset as usize + 16] ^= 0x20;
    std::fs::write(&path, &bytes)?;
    cluster.start_coordinator()?;
    let proc = cluster.coordinator.as_mut().expect("started");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = proc.child.try_wait()? {
            break s;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "a coordinator on a damaged journal kept running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "refused to start: {status}");
    let text = std::fs::read_to_string(&log)?;
    let named = format!("offset {}", mid.offset);
    assert!(
        text.contains(&path.display().to_string()) && text.contains(&named),
        "names {} and {named}: {}",
        path.display(),
        text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}
