//! End-to-end alerting: real samplekv members, agents and coordinator, a
//! real Alertmanager 0.25 (Debian's, started here on 127.0.0.1 with
//! `--cluster.listen-address=`), and receivers that are listeners in this
//! test: Alertmanager's webhook receiver, a PagerDuty Events v2 endpoint and
//! a generic webhook.
//!
//! A follower's catch-up is stalled by pausing its apply
//! (`SAMPLEKV_PAUSE_APPLY_FILE`) while a writer keeps the leader busy.

use std::time::Duration;

use anyhow::{Context, Result};
use baton_domain::Health;
use baton_harness::alertmanager::{
    Alertmanager, Received, Receiver, am_count, am_first, am_notifications,
};
use baton_harness::stall::{
    self, Load, PauseFile, Unpause, catch_up_started, pause, start_stalled_rollout, unpause,
};
use baton_harness::{Cluster, init};
use serde_json::Value;

const STALL_AFTER_MS: u64 = 2000;
const HEARTBEAT_MS: u64 = 300;

async fn cluster_with_pause_files(
    policy: &str,
    alerting: &str,
) -> Result<(Cluster, Vec<PauseFile>)> {
    stall::cluster_with_pause_files(3, HEARTBEAT_MS, &format!("{policy}\n{alerting}")).await
}

fn policy() -> String {
    format!(
        "tolerable_lag = 5\nstall_after_ms = {STALL_AFTER_MS}\ncatchup_timeout_ms = 120000\nhealth_timeout_ms = 20000\nsteady_stall_after_ms = 600000\n"
    )
}

/// An `[alerting]` table with one webhook sink, to `hook`.
fn webhook_only(hook: &Receiver) -> String {
    format!(
        "[alerting]\n[[alerting.sink]]\nkind = \"webhook\"\nurl = \"{}\"\n",
        hook.url("/baton")
    )
}

fn pagerduty_events(got: &[Received]) -> Vec<Value> {
    got.iter().map(|r| r.body.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_catch_up_pages_once_through_every_sink_pauses_and_resolves() -> Result<()> {
    init();
    let am_hook = Receiver::start().await?;
    let pd = Receiver::start().await?;
    let hook = Receiver::start().await?;
    let am_dir = tempfile::tempdir()?;
    let am = Alertmanager::start(am_dir.path(), &am_hook.url("/hook")).await?;
    let alerting = format!(
        "[alerting]\nrefresh_interval_ms = 1000\n\
         [[alerting.sink]]\nkind = \"alertmanager\"\nurl = \"{}\"\n\
         [[alerting.sink]]\nkind = \"pagerduty\"\nurl = \"{}\"\nrouting_key = \"R0UTINGKEY\"\n\
         [[alerting.sink]]\nkind = \"webhook\"\nurl = \"{}\"\n",
        am.url(),
        pd.url("/v2/enqueue"),
        hook.url("/baton")
    );
    let (cluster, files) = cluster_with_pause_files(&policy(), &alerting).await?;
    let _unpause = Unpause(files.clone());
    cluster.publish("v2", 1, false)?;
    let load = Load::start(&cluster, "alert-");
    start_stalled_rollout(&cluster, &files)?;

    // The rollout pauses on the stall.
    let (code, out, _) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(code, 3, "the rollout pauses: {out:#}");
    let state = &out["rollout"]["state"];
    let rollout = state["id"].as_str().context("rollout id")?.to_owned();
    let first = state["order"][0].as_str().context("order")?.to_owned();
    let reason = state["phase"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("member {first} catch-up stalled")),
        "paused for the stall: {reason}"
    );

    // Alertmanager: one firing BatonCatchUpStalled with the right labels and
    // annotations, within stall_after + 2 s of the catch-up's start: the
    // stall path, far from the catch-up timeout (120 s). The 2 s cover the
    // member's first reports after its start and a loaded 2-core CI (seen:
    // 2.3 to 3.0 s; a budget of 2 report intervals failed at 3016 ms).
    let got = am_hook
        .wait_for_am("BatonCatchUpStalled", "firing", Duration::from_secs(20))
        .await?;
    let since = catch_up_started(&cluster, &first)?;
    let (first_firing, alert) =
        am_first(&got, "BatonCatchUpStalled", "firing").context("a firing notification")?;
    let arrived = first_firing.at_unix_ms;
    let budget = STALL_AFTER_MS + 2000;
    eprintln!(
        "stall alert reached the Alertmanager webhook {} ms after {first} began catching up (budget {budget} ms)",
        arrived.saturating_sub(since)
    );
    assert!(
        arrived.saturating_sub(since) <= budget,
        "alert {} ms after the catch-up began; budget {budget} ms",
        arrived.saturating_sub(since)
    );
    assert_eq!(alert["labels"]["cluster"], "e2e");
    assert_eq!(alert["labels"]["member"], first.as_str());
    assert_eq!(alert["labels"]["rollout"], rollout.as_str());
    for key in ["lag", "trend", "stalled_for", "runbook", "summary"] {
        assert!(
            alert["annotations"][key]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "annotation {key} in {alert:#}"
        );
    }
    let lag: u64 = alert["annotations"]["lag"]
        .as_str()
        .unwrap_or("0")
        .parse()?;
    assert!(
        lag > 5,
        "the lag annotation is above tolerable_lag: {alert:#}"
    );

    // Un-pause: the member catches up and a resolution arrives.
    unpause(&files);
    let got = am_hook
        .wait_for_am("BatonCatchUpStalled", "resolved", Duration::from_secs(30))
        .await?;
    let firing = am_count(&got, "BatonCatchUpStalled", "firing");
    assert_eq!(firing, 1, "exactly one firing notification: {got:#?}");

    // PagerDuty: a trigger then a resolve with one dedup_key, Events v2 shape.
    let pd_got = pd
        .wait_for("trigger and resolve", Duration::from_secs(20), |g| {
            let ev = pagerduty_events(g);
            ev.iter().any(|e| {
                e["event_action"] == "resolve"
                    && e["dedup_key"]
                        .as_str()
                        .is_some_and(|k| k.starts_with("BatonCatchUpStalled/"))
            })
        })
        .await?;
    let stalls: Vec<Value> = pagerduty_events(&pd_got)
        .into_iter()
        .filter(|e| {
            e["dedup_key"]
                .as_str()
                .is_some_and(|k| k.starts_with("BatonCatchUpStalled/"))
        })
        .collect();
    let triggers: Vec<&Value> = stalls
        .iter()
        .filter(|e| e["event_action"] == "trigger")
        .collect();
    let resolves: Vec<&Value> = stalls
        .iter()
        .filter(|e| e["event_action"] == "resolve")
        .collect();
    assert_eq!(triggers.len(), 1, "{stalls:#?}");
    assert_eq!(resolves.len(), 1, "{stalls:#?}");
    let t = triggers[0];
    assert_eq!(t["dedup_key"], resolves[0]["dedup_key"]);
    assert_eq!(t["routing_key"], "R0UTINGKEY");
    assert_eq!(resolves[0]["routing_key"], "R0UTINGKEY");
    assert_eq!(t["payload"]["source"], first.as_str());
    for key in ["summary", "severity", "timestamp"] {
        assert!(t["payload"][key].is_string(), "payload.{key}: {t:#}");
    }
    assert!(t["payload"]["custom_details"].is_object(), "{t:#}");
    assert!(
        pd_got.iter().all(|r| r.path == "/v2/enqueue"),
        "posted to the configured URL"
    );

    // Generic webhook: firing then resolved for the same alert.
    let hook_got = hook
        .wait_for("firing and resolved", Duration::from_secs(20), |g| {
            g.iter().any(|r| {
                r.body["status"] == "resolved"
                    && r.body["alert"]["labels"]["alertname"] == "BatonCatchUpStalled"
            })
        })
        .await?;
    let statuses: Vec<&str> = hook_got
        .iter()
        .filter(|r| r.body["alert"]["labels"]["alertname"] == "BatonCatchUpStalled")
        .filter_map(|r| r.body["status"].as_str())
        .collect();
    assert_eq!(statuses, ["firing", "resolved"]);

    // resume finishes the rollout.
    let (code, out, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["resume"]))?;
    assert_eq!(code, 0, "resume: {out:#} {stderr}");
    let (code, out, _) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(code, 0, "completed: {out:#}");
    let (acked, lost) = load.finish().await?;
    assert!(acked > 0);
    assert_eq!(lost, Vec::<String>::new());
    // The pause itself paged, and resolved once resumed.
    let got = am_hook
        .wait_for_am("BatonRolloutPaused", "resolved", Duration::from_secs(20))
        .await?;
    assert_eq!(
        am_count(&got, "BatonCatchUpStalled", "firing"),
        1,
        "still exactly one stall notification after the rollout finished"
    );
    drop(am);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_while_alertmanager_is_down_still_pauses_and_pages_once_it_is_back() -> Result<()> {
    init();
    let am_hook = Receiver::start().await?;
    let am_dir = tempfile::tempdir()?;
    let mut am = Alertmanager::start(am_dir.path(), &am_hook.url("/hook")).await?;
    let alerting = format!(
        "[alerting]\nrefresh_interval_ms = 1000\nmax_backoff_ms = 500\n[[alerting.sink]]\nkind = \"alertmanager\"\nurl = \"{}\"\n",
        am.url()
    );
    let (cluster, files) = cluster_with_pause_files(&policy(), &alerting).await?;
    let _unpause = Unpause(files.clone());
    cluster.publish("v2", 1, false)?;
    am.stop();
    let load = Load::start(&cluster, "alert-");
    start_stalled_rollout(&cluster, &files)?;
    // The sink is down; the rollout still pauses on the stall.
    let (code, out, _) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(code, 3, "paused although the sink is down: {out:#}");
    let first = out["rollout"]["state"]["order"][0]
        .as_str()
        .context("order")?
        .to_owned();
    assert!(am_hook.received().is_empty());
    // Alertmanager comes back: the queued alert arrives.
    am.restart().await?;
    let got = am_hook
        .wait_for(
            "the stall alert after Alertmanager is back",
            Duration::from_secs(20),
            |g| {
                am_notifications(g, "BatonCatchUpStalled")
                    .iter()
                    .any(|(s, a)| s == "firing" && a["labels"]["member"] == first.as_str())
            },
        )
        .await?;
    assert_eq!(
        am_notifications(&got, "BatonCatchUpStalled").len(),
        1,
        "{got:#?}"
    );
    unpause(&files);
    let (acked, lost) = load.finish().await?;
    assert!(acked > 0);
    assert_eq!(lost, Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_lagging_outside_any_rollout_pages_and_resolves() -> Result<()> {
    init();
    let am_hook = Receiver::start().await?;
    let am_dir = tempfile::tempdir()?;
    let am = Alertmanager::start(am_dir.path(), &am_hook.url("/hook")).await?;
    let alerting = format!(
        "[alerting]\nrefresh_interval_ms = 1000\n[[alerting.sink]]\nkind = \"alertmanager\"\nurl = \"{}\"\n",
        am.url()
    );
    let policy = "tolerable_lag = 5\nsteady_stall_after_ms = 1500\n";
    let (cluster, files) = cluster_with_pause_files(policy, &alerting).await?;
    let _unpause = Unpause(files.clone());
    // Only one follower stalls (every member has a file; not the leader's).
    let leader = cluster.leader_index().await?;
    let stalled: Vec<PauseFile> = files
        .iter()
        .filter(|(i, _)| *i != leader)
        .take(1)
        .cloned()
        .collect();
    let stalled = &stalled[..];
    let name = cluster.members[stalled[0].0].name.clone();
    let load = Load::start(&cluster, "alert-");
    pause(stalled)?;
    let got = am_hook
        .wait_for_am("BatonCatchUpStalled", "firing", Duration::from_secs(20))
        .await?;
    let firing: Vec<(String, Value)> = am_notifications(&got, "BatonCatchUpStalled");
    assert_eq!(firing.len(), 1, "{firing:#?}");
    let alert = &firing[0].1;
    assert_eq!(alert["labels"]["member"], name.as_str());
    assert_eq!(alert["labels"]["rollout"], "none");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("outside a rollout")),
        "{alert:#}"
    );
    unpause(stalled);
    am_hook
        .wait_for_am("BatonCatchUpStalled", "resolved", Duration::from_secs(20))
        .await?;
    let (acked, lost) = load.finish().await?;
    assert!(acked > 0);
    assert_eq!(lost, Vec::<String>::new());
    drop(am);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restarted_mid_stall_still_resolves_its_alert_once() -> Result<()> {
    init();
    let hook = Receiver::start().await?;
    let alerting = webhook_only(&hook);
    let policy = "tolerable_lag = 5\nsteady_stall_after_ms = 1500\n";
    let (mut cluster, files) = cluster_with_pause_files(policy, &alerting).await?;
    let _unpause = Unpause(files.clone());
    // One follower (every member has a file; not the leader's).
    let leader = cluster.leader_index().await?;
    let stalled: Vec<PauseFile> = files
        .iter()
        .filter(|(i, _)| *i != leader)
        .take(1)
        .cloned()
        .collect();
    let stalled = &stalled[..];
    let load = Load::start(&cluster, "restart-");
    pause(stalled)?;
    let is = |r: &Received, status: &str| {
        r.body["status"] == status
            && r.body["alert"]["labels"]["alertname"] == "BatonCatchUpStalled"
    };
    let got = hook
        .wait_for("the stall", Duration::from_secs(20), |g| {
            g.iter().any(|r| is(r, "firing"))
        })
        .await?;
    let key = got
        .iter()
        .find(|r| is(r, "firing"))
        .and_then(|r| r.body["alert"]["key"].as_str().map(str::to_owned))
        .context("the webhook body names the alert's key")?;
    // The firing set is kept in the journal (it was `alerts.json`).
    let kept = Value::Array(cluster.firing_alerts()?);
    assert_eq!(kept.as_array().map(Vec::len), Some(1), "{kept:#}");

    // The coordinator dies while the alert fires; the member recovers
    // while it is down; a new coordinator must still send the resolution.
    drop(cluster.coordinator.take());
    unpause(stalled);
    cluster.start_coordinator()?;
    let got = hook
        .wait_for(
            "the resolution after the restart",
            Duration::from_secs(30),
            |g| g.iter().any(|r| is(r, "resolved")),
        )
        .await?;
    let resolved = got.iter().find(|r| is(r, "resolved")).context("resolved")?;
    assert_eq!(resolved.body["alert"]["key"], key.as_str());
    assert_eq!(
        got.iter().filter(|r| is(r, "firing")).count(),
        1,
        "the restarted coordinator did not raise it again: {got:#?}"
    );
    let kept = Value::Array(cluster.firing_alerts()?);
    assert_eq!(kept, serde_json::json!([]));
    let (acked, lost) = load.finish().await?;
    assert!(acked > 0);
    assert_eq!(lost, Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_stall_rollback_puts_the_member_back_pauses_and_pages() -> Result<()> {
    init();
    let hook = Receiver::start().await?;
    let alerting = webhook_only(&hook);
    let policy = format!("{}on_stall = \"rollback\"\n", policy());
    let (cluster, files) = cluster_with_pause_files(&policy, &alerting).await?;
    let _unpause = Unpause(files.clone());
    cluster.publish("v2", 1, false)?;
    let load = Load::start(&cluster, "rollback-");
    start_stalled_rollout(&cluster, &files)?;
    let (code, out, _) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(code, 3, "the rollout pauses after the rollback: {out:#}");
    let state = &out["rollout"]["state"];
    let first = state["order"][0].as_str().context("order")?.to_owned();
    assert_eq!(state["members"][&first]["stage"]["stage"], "reverted");
    let reason = state["phase"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("member {first} catch-up stalled"))
            && reason.contains("rolling it back to v1"),
        "{reason}"
    );
    // The member runs the previous release again; nobody else was touched.
    let status = cluster
        .wait_status("everyone on v1", Duration::from_secs(20), |s| {
            s.members.iter().all(|m| {
                m.report
                    .as_ref()
                    .is_some_and(|r| r.state.release == "v1" && r.state.health == Health::Healthy)
            })
        })
        .await?;
    assert!(status.leader.is_some());
    // The stall paged, and resolves once the member applies again.
    hook.wait_for("the stall alert", Duration::from_secs(10), |g| {
        g.iter().any(|r| {
            r.body["status"] == "firing"
                && r.body["alert"]["labels"]["alertname"] == "BatonCatchUpStalled"
                && r.body["alert"]["labels"]["member"] == first.as_str()
        })
    })
    .await?;
    unpause(&files);
    hook.wait_for("its resolution", Duration::from_secs(20), |g| {
        g.iter().any(|r| {
            r.body["status"] == "resolved"
                && r.body["alert"]["labels"]["alertname"] == "BatonCatchUpStalled"
        })
    })
    .await?;
    let (acked, lost) = load.finish().await?;
    assert!(acked > 0);
    assert_eq!(lost, Vec::<String>::new());
    Ok(())
}
