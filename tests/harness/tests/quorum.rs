//! Never lose quorum (issue 10), on samplekv end to end: real members,
//! agents and coordinator, the `baton` CLI, a writer at 100 writes/s whose
//! every acked write is read back, and an observer that looks at every
//! member every 10 ms and must never see two of three down.
//!
//! Down is the test's ground truth (see `baton_harness::observe`): a port
//! that refuses connections, or a member this test froze itself (its apply
//! paused with `SAMPLEKV_PAUSE_APPLY_FILE`, or its process SIGSTOPped).
//!
//! Here: a member frozen during its catch-up or just before the next
//! member's turn (apply pause and SIGSTOP), and a release that exits at
//! once. Pausing at each stage and the quorum config rules are in
//! `quorum_pause.rs`.

use std::time::Duration;

use anyhow::{Context, Result};
use baton_domain::Health;
use baton_harness::observe::{
    Frozen, JournalTail, Observer, finished, is_issued, is_page, rollout_entries, settle, timeline,
};
use baton_harness::stall::{self, Load, Unpause};
use baton_harness::{Cluster, ClusterSpec, unix_ms};
use serde_json::Value;

const STALL_AFTER_MS: u64 = 2500;
const HEARTBEAT_MS: u64 = 300;
/// The alerts that page for a member that makes no progress.
const STALL_PAGES: &[&str] = &["BatonGateStalled", "BatonCatchUpStalled"];

/// `tolerable_lag = 1000`, as `deploy/examples/etcd-coordinator.toml`
/// ships: a frozen member's lag stays under it for 10 s at 100 writes/s, so
/// only the rule that reports must be live (show progress) can catch it.
/// The 1 s soak keeps the test about that rule: a member frozen a few ms
/// after a report was taken is, by the contract, noticed only by the next
/// reports (each 100 ms at the fast cadence); the soak makes sure they
/// arrive before the next member's turn.
fn frozen_policy() -> String {
    format!(
        "tolerable_lag = 1000\nstall_after_ms = {STALL_AFTER_MS}\nsoak_ms = 1000\nhealth_timeout_ms = 15000\ncatchup_timeout_ms = 60000\nhandover_timeout_ms = 5000\nsteady_stall_after_ms = 600000\n"
    )
}

/// `baton --output json ARGS` off the async threads.
fn baton(cluster: &Cluster, args: &[&str]) -> Result<(i32, Value, String)> {
    tokio::task::block_in_place(|| cluster.baton_json(args))
}

/// The phase kind of the latest rollout (`running`, `pausing`, `paused`…).
fn phase(cluster: &Cluster) -> Result<String> {
    let (_, v, stderr) = baton(cluster, &["rollout"])?;
    v["state"]["phase"]["phase"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no rollout phase in {v:#} ({stderr})"))
}

/// Follows the rollout to its end; a rollout that paused (for a stall the
/// test caused and has since undone) is resumed, at most twice.
fn finish_rollout(cluster: &Cluster) -> Result<Value> {
    for _ in 0..3 {
        if phase(cluster)? == "paused" {
            let (code, out, stderr) = baton(cluster, &["resume"])?;
            anyhow::ensure!(code == 0, "baton resume: {stderr} {out:#}");
        }
        let (code, out, stderr) = baton(cluster, &["watch"])?;
        match code {
            0 => return Ok(out),
            3 => eprintln!("paused again: {stderr}"),
            _ => anyhow::bail!("baton watch exited {code}: {stderr} {out:#}"),
        }
    }
    anyhow::bail!("the rollout kept pausing")
}

#[derive(Clone, Copy, Debug)]
enum How {
    /// `SAMPLEKV_PAUSE_APPLY_FILE`: it serves and appends but applies nothing.
    ApplyPause,
    /// SIGSTOP of the member process.
    SigStop,
}

#[derive(Clone, Copy, Debug)]
enum When {
    /// The just-upgraded first follower, as it starts catching up.
    CatchUp,
    /// The first follower, done catching up, just before the second
    /// follower's turn.
    NextStage,
}

async fn a_frozen_member_holds_the_rollout_and_pages(how: How, when: When) -> Result<()> {
    let policy = frozen_policy();
    let (cluster, files) = match how {
        How::ApplyPause => stall::cluster_with_pause_files(3, HEARTBEAT_MS, &policy).await?,
        How::SigStop => {
            let spec = ClusterSpec {
                heartbeat_ms: HEARTBEAT_MS,
                policy,
                ..ClusterSpec::supervised(3)
            };
            (Cluster::start(spec).await?, Vec::new())
        }
    };
    let _unpause = Unpause(files.clone());
    settle(&cluster).await?;
    let mut frozen = Frozen::default();
    cluster.publish("v2", 1, false)?;
    let journal = JournalTail::start(&cluster);
    let observer = Observer::start(&cluster);
    let load = Load::start(&cluster, "quorum-");
    let from = journal.settle().await;

    let (code, out, stderr) = baton(&cluster, &["upgrade", "--to", "v2", "--detach"])?;
    assert_eq!(code, 0, "baton upgrade: {stderr} {out:#}");
    let started = journal
        .wait_for("the rollout's start", from, Duration::from_secs(10), |e| {
            e["event"] == "started"
        })
        .await?;
    let order: Vec<String> = serde_json::from_value(started.entry["order"].clone())?;
    let first = order[0].clone();
    let fi = cluster.index_of(&first).context("first member")?;
    let gate = match when {
        When::CatchUp => "healthy",
        When::NextStage => "caught_up",
    };
    journal
        .wait_for(
            &format!("{first} passing its {gate} gate"),
            from,
            Duration::from_secs(40),
            |e| e["event"] == "gate_passed" && e["member"] == first.as_str() && e["gate"] == gate,
        )
        .await?;

    // Freeze it: the observer counts it down from now on.
    observer.freeze(fi);
    match how {
        How::ApplyPause => {
            let f = files.iter().find(|(i, _)| *i == fi).context(
                "the first member is a follower with a pause file (the leader moved during setup)",
            )?;
            stall::pause(std::slice::from_ref(f))?;
        }
        How::SigStop => {
            let pid = cluster.member_pid(fi).context("the member's pid")?;
            frozen.stop(pid)?;
        }
    }
    let frozen_at = unix_ms();
    let frozen_from = journal.len();
    eprintln!("froze {first} ({how:?}) at {frozen_at} after its {gate} gate");

    // Stay frozen until the page, and at least stall_after + 1 s (the time
    // the page may take), so a next member stopped meanwhile would show.
    // Meanwhile, log what the coordinator shows of the frozen member
    // (health and applied revision, each change).
    let budget = STALL_AFTER_MS + 1000;
    let hold_until = frozen_at + budget + 500;
    let page_deadline = frozen_at + budget + 4000;
    let mut page = None;
    let mut shown: Vec<String> = Vec::new();
    // Bounded: page_deadline, at 20 ms or more a round.
    loop {
        if page.is_none() {
            page = journal.find(frozen_from, |e| is_page(e, STALL_PAGES, &first));
        }
        if let Ok(s) = tokio::task::block_in_place(|| cluster.status())
            && let Some(r) = &s.members[fi].report
        {
            let now = format!("{} applied {}", r.state.health, r.state.applied_revision);
            if shown.last().is_none_or(|l| !l.ends_with(&now)) {
                shown.push(format!("+{} ms {now}", unix_ms().saturating_sub(frozen_at)));
            }
        }
        let now = unix_ms();
        if now >= hold_until && (page.is_some() || now >= page_deadline) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{first} as `baton status` showed it while frozen: {shown:?}");

    match how {
        How::ApplyPause => stall::unpause(&files),
        How::SigStop => frozen.thaw(),
    }
    observer.thaw(fi);
    let thawed_at = unix_ms();
    eprintln!(
        "thawed {first} at {thawed_at} ({} ms frozen)",
        thawed_at - frozen_at
    );

    // Nobody else was stopped while it was frozen.
    journal.settle().await;
    let entries = rollout_entries(&journal.since(from));
    let stopped: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["event"] == "command_issued"
                && e["action"]["action"] == "stop"
                && e["member"] != first.as_str()
                && e["at"]
                    .as_u64()
                    .is_some_and(|at| at >= frozen_at && at <= thawed_at)
        })
        .collect();
    assert!(
        stopped.is_empty(),
        "another member was stopped while {first} was frozen ({frozen_at}..{thawed_at}): {stopped:#?}\njournal:\n{}",
        timeline(&journal.since(from))
    );
    observer.snapshot().assert_never_two_down();

    // It paged, naming the frozen member, within stall_after + 1 s.
    let page = page.with_context(|| {
        format!(
            "no {STALL_PAGES:?} page naming {first} within {} ms of the freeze; alerts seen: {:#?}",
            budget + 4000,
            journal
                .since(frozen_from)
                .iter()
                .filter(|l| l.entry.get("alert_event").is_some())
                .map(|l| l.entry.clone())
                .collect::<Vec<_>>()
        )
    })?;
    let took = page.seen.saturating_sub(frozen_at);
    eprintln!(
        "page {} for {first} journaled {took} ms after the freeze (budget {budget} ms): {}",
        page.entry["alert"]["labels"]["alertname"], page.entry["alert"]["labels"]
    );
    assert!(
        took <= budget,
        "the page came {took} ms after the freeze; budget stall_after + 1 s = {budget} ms: {:#}",
        page.entry
    );

    // Thawed: resume if it paused; the rollout completes.
    let out = finish_rollout(&cluster)?;
    assert_eq!(out["rollout"]["state"]["phase"]["phase"], "completed");
    cluster
        .wait_status("every member on v2", Duration::from_secs(20), |s| {
            s.members.iter().all(|m| {
                m.report
                    .as_ref()
                    .is_some_and(|r| r.state.release == "v2" && r.state.health == Health::Healthy)
            })
        })
        .await?;
    let (acked, lost) = load.finish().await?;
    assert!(acked > 0);
    assert_eq!(lost, Vec::<String>::new(), "no acknowledged write lost");
    observer.finish().await?.assert_never_two_down();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_paused_during_catch_up_holds_the_next_member_and_pages() -> Result<()> {
    a_frozen_member_holds_the_rollout_and_pages(How::ApplyPause, When::CatchUp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_paused_before_the_next_members_turn_holds_it_and_pages() -> Result<()> {
    a_frozen_member_holds_the_rollout_and_pages(How::ApplyPause, When::NextStage).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_during_catch_up_holds_the_next_member_and_pages() -> Result<()> {
    a_frozen_member_holds_the_rollout_and_pages(How::SigStop, When::CatchUp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_before_the_next_members_turn_holds_it_and_pages() -> Result<()> {
    a_frozen_member_holds_the_rollout_and_pages(How::SigStop, When::NextStage).await
}

/// The `at` of a journal entry.
fn at(e: &Value) -> u64 {
    e["at"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_exits_at_once_is_reverted_in_seconds_and_the_way_out_works() -> Result<()> {
    // health_timeout is long: the revert must come from the exit, not it.
    let spec = ClusterSpec {
        heartbeat_ms: HEARTBEAT_MS,
        policy: format!(
            "tolerable_lag = 200\nhealth_timeout_ms = 10000\nstall_after_ms = {STALL_AFTER_MS}\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\n"
        ),
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    settle(&cluster).await?;
    cluster.publish("v2", 1, true)?;
    let journal = JournalTail::start(&cluster);
    let observer = Observer::start(&cluster);
    let load = Load::start(&cluster, "crash-");
    let from = journal.settle().await;

    let (code, out, stderr) = baton(&cluster, &["upgrade", "--to", "v2"])?;
    journal.settle().await;
    let entries = rollout_entries(&journal.since(from));
    let state = &out["rollout"]["state"];
    let first = state["order"][0]
        .as_str()
        .with_context(|| format!("no order in {out:#} ({stderr})"))?
        .to_owned();

    // The timings, from the journal.
    let starts: Vec<&Value> = entries
        .iter()
        .filter(|e| is_issued(e, &first, "start"))
        .collect();
    assert!(
        starts.len() >= 2,
        "a start on v2 and a start back on v1 for {first}: {entries:#?}"
    );
    let target_start = finished(&entries, &starts[0]["id"])
        .context("the start on v2 finished")?
        .clone();
    let gate_failed = entries
        .iter()
        .find(|e| e["event"] == "gate_failed" && e["member"] == first.as_str())
        .context("a failed gate for the member")?
        .clone();
    let revert_start = starts
        .iter()
        .find(|s| at(s) >= at(&gate_failed))
        .context("a start after the failed gate")?;
    let back = finished(&entries, &revert_start["id"]).context("the start back on v1 finished")?;
    assert_eq!(back["event"], "command_succeeded", "{back}");
    let since_failed = at(back).saturating_sub(at(&gate_failed));
    let since_start = at(back).saturating_sub(at(&target_start));
    eprintln!(
        "{first}: start on v2 done at +0, failed gate at +{} ms, back on v1 at +{since_start} ms ({since_failed} ms after the failed gate): {}",
        at(&gate_failed).saturating_sub(at(&target_start)),
        gate_failed["reason"]
    );
    assert!(
        since_failed <= 2000,
        "{first} back on v1 {since_failed} ms after the failed start was seen; at most 2 s"
    );
    assert!(
        since_start <= 2000 + 2 * HEARTBEAT_MS,
        "{first} back on v1 {since_start} ms after its start on v2 (which exits at once); at most 2 s + report latency"
    );

    // The rollout paused, paged, and the CLI said so with a true hint.
    assert_eq!(code, 3, "a paused rollout exits 3: {stderr} {out:#}");
    assert_eq!(state["phase"]["phase"], "paused", "{out:#}");
    assert_eq!(state["members"][&first]["stage"]["stage"], "reverted");
    journal
        .wait_for(
            "a BatonRolloutPaused page",
            from,
            Duration::from_secs(5),
            |e| {
                e["alert_event"] == "fired"
                    && e["alert"]["labels"]["alertname"] == "BatonRolloutPaused"
            },
        )
        .await?;
    eprintln!("hint: {stderr}");
    if stderr.contains("put back") {
        let moved: Vec<(&String, &Value)> = state["members"]
            .as_object()
            .context("members")?
            .iter()
            .filter(|(_, p)| {
                !matches!(
                    p["stage"]["stage"].as_str(),
                    Some("pending" | "staged" | "reverted")
                )
            })
            .collect();
        assert!(
            moved.is_empty(),
            "the hint says members were put back, but these are not: {moved:?}"
        );
    }
    assert!(
        !stderr.contains("baton resume") || stderr.contains("--retry"),
        "after a failed start plain `baton resume` is refused, so the hint must not advise it: {stderr}"
    );
    cluster
        .wait_status("every member healthy on v1", Duration::from_secs(20), |s| {
            s.members.iter().all(|m| {
                m.report
                    .as_ref()
                    .is_some_and(|r| r.state.release == "v1" && r.state.health == Health::Healthy)
            })
        })
        .await?;

    // resume without --retry is refused, naming the member.
    let (code, out, stderr) = baton(&cluster, &["resume"])?;
    assert_eq!(
        code, 2,
        "resume after a failed start is refused: {stderr} {out:#}"
    );
    assert!(
        stderr.contains(&first) || out.to_string().contains(&first),
        "the refusal names {first}: {stderr} {out:#}"
    );

    // rollback closes the rollout (nobody is on v2), then another upgrade works.
    let (code, out, stderr) = baton(&cluster, &["rollback"])?;
    assert_eq!(code, 0, "baton rollback: {stderr} {out:#}");
    cluster.publish("v3", 1, false)?;
    let (code, out, stderr) = baton(&cluster, &["upgrade", "--to", "v3"])?;
    assert_eq!(code, 0, "baton upgrade --to v3: {stderr} {out:#}");
    cluster
        .wait_status("every member on v3", Duration::from_secs(20), |s| {
            s.members.iter().all(|m| {
                m.report
                    .as_ref()
                    .is_some_and(|r| r.state.release == "v3" && r.state.health == Health::Healthy)
            })
        })
        .await?;
    let (acked, lost) = load.finish().await?;
    assert!(acked > 0);
    assert_eq!(lost, Vec::<String>::new(), "no acknowledged write lost");
    observer.finish().await?.assert_never_two_down();
    Ok(())
}
