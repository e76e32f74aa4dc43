//! Never lose quorum on real etcd (issue 10): 3 members roll 3.4.23 ->
//! 3.5.1 under a writer at 100 writes/s while an observer asks every member
//! for its status every 10 ms. A member frozen with SIGSTOP mid-rollout must
//! hold the rollout (the next member is not stopped while it is frozen),
//! page within `stall_after` + 1 s, and the rollout finishes after SIGCONT
//! (with `baton resume` if it paused); the observer never sees two members
//! down, there is exactly one leader change and no acked write is lost.
//! Also: a rollout completes only once etcd's cluster version reached 3.5,
//! so an immediate `upgrade --to 3.4.23` is refused by the version rules.
//!
//! The tests run one at a time (they time pages and gaps on a small machine).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use baton_harness::etcd::{
    ETCD_34, EtcdCluster, EtcdLoad, EtcdWriterReport, assert_version, etcd_35, etcd_verify,
};
use baton_harness::quorum::{
    Frozen, ObserverReport, QuorumObserver, at, etcd_versions, is_command,
};
use baton_harness::unix_ms;

const STALL_AFTER_MS: u64 = 3000;

/// How long a report stays live at the coordinator.
const LIVE_WINDOW_MS: u64 = baton_coordinator::fleet::LIVE_WINDOW.as_millis() as u64;

/// What `deploy/examples/etcd-coordinator.toml` ships (`tolerable_lag =
/// 1000`), with short timeouts and `stall_after` so a stall pages quickly.
fn policy(extra: &str) -> String {
    format!(
        "tolerable_lag = 1000\nhealth_timeout_ms = 30000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\nstall_after_ms = {STALL_AFTER_MS}\n{extra}"
    )
}

/// One test at a time: each runs three etcds, three agents, a coordinator,
/// a writer and an observer, and times what it sees.
/// (tokio's mutex: it is not poisoned by a failed test, and works across
/// the tests' runtimes.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A cluster on 3.4.23 with 3.5.1 published, a writer at 100 writes/s and
/// an observer running.
async fn loaded_cluster(
    policy: &str,
    prefix: &str,
) -> Result<(EtcdCluster, EtcdLoad, QuorumObserver)> {
    let e35 = etcd_35()?;
    assert_version(&e35, "3.5.1")?;
    assert_version(Path::new(ETCD_34), "3.4.23")?;
    let cluster = EtcdCluster::start(3, policy).await?;
    cluster.publish("3.5.1", &e35)?;
    let load = EtcdLoad::start(&cluster, prefix, 100).await?;
    let observer = QuorumObserver::start(&cluster);
    Ok((cluster, load, observer))
}

/// `baton upgrade --to 3.5.1 --detach`; returns the rollout's order
/// (followers, then the leader) from the journal's `started` event.
async fn start_upgrade(cluster: &EtcdCluster) -> Result<Vec<String>> {
    let (code, out, stderr) = cluster
        .baton_within(
            &["upgrade", "--to", "3.5.1", "--detach"],
            Duration::from_secs(30),
        )
        .await?;
    anyhow::ensure!(code == 0, "upgrade --detach: exit {code}: {stderr} {out}");
    cluster
        .wait_journal(
            "the rollout's started event",
            Duration::from_secs(10),
            |j| {
                j.iter()
                    .find(|e| e["event"] == "started")
                    .and_then(|e| serde_json::from_value::<Vec<String>>(e["order"].clone()).ok())
            },
        )
        .await
}

/// The rollout's phase kind (`running`, `paused`, `completed`, …).
async fn phase(cluster: &EtcdCluster) -> Result<String> {
    let (code, r, stderr) = cluster
        .baton_within(&["rollout"], Duration::from_secs(10))
        .await?;
    anyhow::ensure!(code == 0, "baton rollout: exit {code}: {stderr}");
    Ok(r["state"]["phase"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Follows the rollout to its end, resuming it whenever it is paused
/// (bounded: 3 resumes, 3 minutes). Returns how many resumes it took, or
/// why it did not complete.
async fn drive_to_completion(cluster: &EtcdCluster) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut resumes = 0;
    for _ in 0..20 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "the rollout did not complete within 3 minutes"
        );
        match phase(cluster).await?.as_str() {
            "completed" => return Ok(resumes),
            "paused" => {
                anyhow::ensure!(resumes < 3, "still paused after {resumes} resumes");
                let (code, out, stderr) = cluster
                    .baton_within(&["resume"], Duration::from_secs(30))
                    .await?;
                anyhow::ensure!(code == 0, "baton resume: exit {code}: {stderr} {out}");
                resumes += 1;
            }
            "closed" => anyhow::bail!("the rollout was closed"),
            _ => {
                // Running, pausing or aborting: follow it until it settles.
                let (code, out, stderr) = cluster.baton_within(&["watch"], left).await?;
                if code != 0 && code != 3 {
                    anyhow::bail!("baton watch: exit {code}: {stderr} {out}");
                }
            }
        }
    }
    anyhow::bail!("the rollout did not settle after 20 looks")
}

/// The checks every test makes at the end; each failure is a line.
fn end_checks(
    failures: &mut Vec<String>,
    report: &EtcdWriterReport,
    lost: &[String],
    seen: &ObserverReport,
) {
    let rate = report.acked.len() as f64 * 1000.0 / report.duration_ms.max(1) as f64;
    if rate < 95.0 {
        failures.push(format!("the writer ran at {rate:.0}/s, not 100/s"));
    }
    if seen.max_down >= 2 {
        failures.push(format!(
            "the observer saw {} members down at once ({} looks; first: {:?})",
            seen.max_down, seen.looks, seen.overlaps
        ));
    }
    if report.leader_changes() != 1 {
        failures.push(format!(
            "{} leader changes, not 1 (raft terms seen: {:?})",
            report.leader_changes(),
            report.terms
        ));
    }
    if !lost.is_empty() {
        failures.push(format!("{} acked writes lost: {:?}", lost.len(), lost));
    }
}

/// When to freeze the first follower.
#[derive(Debug, Clone, Copy)]
enum When {
    /// Just upgraded and catching up: its healthy gate passed.
    CatchingUp,
    /// Done with its own gates, as the next follower's turn comes.
    NextBegins,
}

/// Freezes the first of `followers` found between its `after` gate and
/// its `before` gate, on its new release (3.5.1); returns it, its pid and
/// the freeze. From the follower's `start` command on (its health gate is
/// at least etcd's boot away), the journal is looked at every millisecond
/// or so with the coordinator held (SIGSTOP) during the look, and the
/// freeze lands before it is let go: the coordinator cannot pass the
/// `before` gate (and stop the next member) between the look and the
/// freeze. A late freeze would be the test taking a second member down,
/// not baton: one CI run froze its follower 7 ms after baton, rightly, had
/// stopped the next one, and the catch-up window is two reports, about
/// 20 ms. Each look decodes only what is new (a whole-journal read took
/// long enough, in CI, to miss both followers' windows). A follower whose
/// window closed between two looks is left alone and the next one is
/// tried; `None` when none was caught.
async fn freeze_in_window(
    cluster: &EtcdCluster,
    observer: &QuorumObserver,
    followers: &[String],
    after: &str,
    before: &str,
) -> Result<Option<(String, i32, Frozen)>> {
    let passed = |j: &[serde_json::Value], member: &str, gate: &str| {
        j.iter()
            .any(|e| e["event"] == "gate_passed" && e["member"] == member && e["gate"] == gate)
    };
    for victim in followers {
        let vi = cluster
            .member_index(victim)
            .context("a follower is a member")?;
        cluster
            .wait_journal(
                &format!("{victim}'s start command"),
                Duration::from_secs(60),
                |j| {
                    j.iter()
                        .any(|e| is_command(e, "start") && e["member"] == *victim)
                        .then_some(())
                },
            )
            .await?;
        // Looks on this worker thread, made blocking: no other task
        // delays them.
        let caught = tokio::task::block_in_place(|| -> Result<Option<(i32, Frozen)>> {
            let mut tail = cluster.journal_tail();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while tokio::time::Instant::now() < deadline {
                let held = cluster.hold_coordinator()?;
                if tail.look()? {
                    if passed(tail.entries(), victim, before) {
                        return Ok(None);
                    }
                    if passed(tail.entries(), victim, after) {
                        // The process to freeze is the new one, on 3.5.1.
                        let pid = cluster.member_pid_now(vi).context("member.pid")?;
                        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
                        anyhow::ensure!(
                            exe.to_string_lossy().contains("3.5.1"),
                            "{victim}'s pid {pid} runs {}, not 3.5.1",
                            exe.display()
                        );
                        let frozen = observer.freeze(cluster, vi)?;
                        drop(held);
                        return Ok(Some((pid, frozen)));
                    }
                }
                drop(held);
                std::thread::sleep(Duration::from_millis(1));
            }
            anyhow::bail!("{victim} did not pass its {after} gate within 60 s of its start")
        })?;
        match caught {
            Some((pid, frozen)) => return Ok(Some((victim.clone(), pid, frozen))),
            None => eprintln!(
                "{victim} passed {after} and {before} between two looks; trying the next follower"
            ),
        }
    }
    Ok(None)
}

/// Freezes the first follower at `when`; checks that nothing else is
/// stopped while it is frozen, that a page names it within `stall_after` +
/// 1 s, and that the rollout completes after SIGCONT.
async fn freeze_first_follower(when: When, policy: &str, prefix: &str) -> Result<()> {
    let (after, before) = match when {
        When::CatchingUp => ("healthy", "caught_up"),
        When::NextBegins => ("caught_up", "soaked"),
    };
    // Only when no follower was caught inside its window (the scenario did
    // not happen; nothing was frozen) is it tried again, on a fresh
    // cluster: never after a failed check.
    for attempt in 1..=3 {
        let (cluster, load, observer) = loaded_cluster(policy, prefix).await?;
        let order = start_upgrade(&cluster).await?;
        let followers = &order[..order.len() - 1];
        if let Some(caught) =
            freeze_in_window(&cluster, &observer, followers, after, before).await?
        {
            return frozen_holds(when, before, cluster, load, observer, caught).await;
        }
        eprintln!(
            "{when:?}: attempt {attempt}: every follower passed {after} and {before} between two looks; starting over on a fresh cluster"
        );
        observer.finish().await?;
        load.finish().await?;
    }
    anyhow::bail!(
        "{when:?}: in 3 fresh clusters no follower was seen between its {after} and {before} gates"
    )
}

/// The checks once `victim` is frozen: nothing else stopped while it is,
/// a page within `stall_after` + 1 s, completion after SIGCONT, and the
/// end checks.
async fn frozen_holds(
    when: When,
    before: &str,
    cluster: EtcdCluster,
    load: EtcdLoad,
    observer: QuorumObserver,
    (victim, pid, frozen): (String, i32, Frozen),
) -> Result<()> {
    let t_stop = frozen.at;
    eprintln!("{when:?}: froze {victim} (pid {pid}) at {t_stop}");

    // The page: an alert naming the frozen member. Hold the freeze until it
    // comes (or well past when it should have).
    let pages = ["BatonGateStalled", "BatonCatchUpStalled"];
    let page = cluster
        .wait_journal(
            &format!("a stall page naming {victim}"),
            Duration::from_millis(STALL_AFTER_MS + 5000),
            |j| {
                j.iter()
                    .find(|e| {
                        e["alert_event"] == "fired"
                            && pages
                                .iter()
                                .any(|p| e["alert"]["labels"]["alertname"] == *p)
                            && e["alert"]["labels"]["member"] == victim
                    })
                    .map(|e| (unix_ms(), e["alert"].clone()))
            },
        )
        .await;
    let t_cont = frozen.thaw();
    eprintln!(
        "{when:?}: thawed {victim} at {t_cont} ({} ms frozen)",
        t_cont - t_stop
    );

    let mut failures = Vec::new();
    let journal = cluster.journal_lines()?;
    let stops: Vec<String> = journal
        .iter()
        .filter(|e| {
            is_command(e, "stop") && e["member"] != victim && (t_stop..=t_cont).contains(&at(e))
        })
        .map(|e| format!("{} at +{} ms", e["member"], at(e) - t_stop))
        .collect();
    if !stops.is_empty() {
        failures.push(format!(
            "another member was stopped while {victim} was frozen: {stops:?}"
        ));
    }
    // Which gate held the rollout: the window's own closing gate, or, when
    // that one passed anyway (catch-up on reports the agent took just
    // before the freeze, in flight as it landed; the soak on time alone),
    // the next member's: the soak gives its agent time to see the freeze.
    // A catch-up passed later than a report stays live believed something
    // stale.
    let closed = journal
        .iter()
        .find(|e| e["event"] == "gate_passed" && e["member"] == victim && e["gate"] == before)
        .map(at)
        .filter(|t| *t >= t_stop);
    match closed {
        None => eprintln!("{when:?}: {victim}'s {before} gate held while it was frozen"),
        Some(t) => {
            eprintln!(
                "{when:?}: {victim} passed {before} {} ms after the freeze; the next member's gate held",
                t - t_stop
            );
            if before == "caught_up" && t - t_stop > LIVE_WINDOW_MS {
                failures.push(format!(
                    "{victim} passed its {before} gate {} ms after the freeze: longer than a report stays live ({LIVE_WINDOW_MS} ms)",
                    t - t_stop
                ));
            }
        }
    }
    match &page {
        Ok((seen, alert)) => {
            let after = seen - t_stop;
            eprintln!(
                "{when:?}: page seen {after} ms after the SIGSTOP: {}",
                alert["labels"]
            );
            if after > STALL_AFTER_MS + 1000 {
                failures.push(format!(
                    "the page came {after} ms after the SIGSTOP, more than stall_after + 1 s: {alert}"
                ));
            }
        }
        Err(e) => failures.push(format!(
            "no BatonGateStalled/BatonCatchUpStalled page named {victim} within {} ms: {e:#}",
            STALL_AFTER_MS + 5000
        )),
    }
    match drive_to_completion(&cluster).await {
        Ok(resumes) => eprintln!("{when:?}: completed after {resumes} resume(s)"),
        Err(e) => failures.push(format!("the rollout did not complete after SIGCONT: {e:#}")),
    }
    let seen = observer.finish().await?;
    let report = load.finish().await?;
    let lost = etcd_verify(&cluster.clients(), &report).await?;
    end_checks(&mut failures, &report, &lost, &seen);
    eprintln!(
        "{when:?}: acked {}, failed {}, max gap {} ms, terms {:?}, most down at once {}",
        report.acked.len(),
        report.failed,
        report.max_write_gap_ms,
        report.terms,
        seen.max_down
    );
    assert!(
        failures.is_empty(),
        "{when:?}:\n- {}",
        failures.join("\n- ")
    );
    Ok(())
}

/// A soak of 500 ms here too: a freeze near the window's end can come
/// after the last reports the gate needed were taken (measured: the gate
/// passed 46 ms after the SIGSTOP on reports in flight, and with no soak
/// the next follower was stopped at once). No planner sees a freeze before
/// the agent's next poll; the soak is that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_frozen_while_catching_up_holds_the_rollout_and_pages() -> Result<()> {
    let _one = SERIAL.lock().await;
    freeze_first_follower(When::CatchingUp, &policy("soak_ms = 500\n"), "fc-").await
}

/// The next follower's turn begins once the first one is done; a soak of
/// 500 ms gives the agents time to see the freeze before that turn (no
/// planner can see a freeze before its agent's next poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_follower_frozen_as_the_next_one_begins_holds_the_rollout_and_pages() -> Result<()> {
    let _one = SERIAL.lock().await;
    freeze_first_follower(When::NextBegins, &policy("soak_ms = 500\n"), "fn-").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_waits_for_the_cluster_version_so_an_immediate_downgrade_is_refused()
-> Result<()> {
    let _one = SERIAL.lock().await;
    let (cluster, load, observer) = loaded_cluster(&policy(""), "cv-").await?;
    let (code, out, stderr) = cluster
        .baton_within(&["upgrade", "--to", "3.5.1"], Duration::from_secs(180))
        .await?;
    // At once: what etcd itself says, then the downgrade.
    let mut versions = Vec::new();
    for c in cluster.clients() {
        versions.push(etcd_versions(&c, Duration::from_secs(1)).await);
    }
    let (down_code, down_out, down_stderr) = cluster
        .baton_within(
            &["upgrade", "--to", "3.4.23", "--detach"],
            Duration::from_secs(30),
        )
        .await?;
    let mut failures = Vec::new();
    if code != 0 {
        failures.push(format!("upgrade --to 3.5.1: exit {code}: {stderr} {out}"));
    }
    for (c, v) in cluster.clients().iter().zip(&versions) {
        match v {
            Ok((server, cv)) if server == "3.5.1" && cv.starts_with("3.5") => {}
            Ok((server, cv)) => failures.push(format!(
                "when the upgrade returned, {c} ran {server} with cluster version {cv}, not 3.5"
            )),
            Err(e) => failures.push(format!("{c} did not answer /version: {e:#}")),
        }
    }
    if down_code == 0 {
        failures.push(format!(
            "upgrade --to 3.4.23 right after completion was accepted: {down_out}"
        ));
        // Do not let the downgrade run: abort it and let it settle.
        let _ = cluster
            .baton_within(&["abort"], Duration::from_secs(10))
            .await;
        let _ = cluster
            .baton_within(&["watch"], Duration::from_secs(120))
            .await;
    } else {
        let why: Vec<String> = down_out["checks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|c| c["check"] == "version-path" && c["ok"] == false)
            .map(|c| c["detail"].as_str().unwrap_or_default().to_owned())
            .collect();
        if down_code != 2
            || why.is_empty()
            || !why
                .iter()
                .all(|w| w.contains("the cluster version is 3.5") && w.contains("downgrade"))
        {
            failures.push(format!(
                "upgrade --to 3.4.23 was not refused by the version rules (exit {down_code}): {down_stderr} {down_out}"
            ));
        }
    }
    let seen = observer.finish().await?;
    let report = load.finish().await?;
    let lost = etcd_verify(&cluster.clients(), &report).await?;
    end_checks(&mut failures, &report, &lost, &seen);
    eprintln!(
        "versions at completion {versions:?}; acked {}, max gap {} ms, terms {:?}",
        report.acked.len(),
        report.max_write_gap_ms,
        report.terms
    );
    assert!(failures.is_empty(), "\n- {}", failures.join("\n- "));
    Ok(())
}
