//! Never lose quorum (issue 10), continued: `baton pause` at each stage of
//! a member's step never leaves it down longer than a normal restart, and
//! the coordinator refuses a quorum config that cannot keep quorum.
//!
//! The pause test runs a writer at 100 writes/s (every acked write read
//! back) and the 10 ms observer of `baton_harness::observe`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use baton_domain::Health;
use baton_harness::observe::{JournalTail, Observer, is_issued, settle, timeline};
use baton_harness::stall::Load;
use baton_harness::{Cluster, ClusterSpec, Proc, bin, free_port, init, unix_ms};
use serde_json::Value;

/// Slack over the longest down spell of an uninterrupted rollout.
const SLACK_MS: u64 = 1000;

fn baton(cluster: &Cluster, args: &[&str]) -> Result<(i32, Value, String)> {
    tokio::task::block_in_place(|| cluster.baton_json(args))
}

fn phase_of(v: &Value) -> Option<String> {
    v["state"]["phase"]["phase"].as_str().map(str::to_owned)
}

/// Where in the first member's step `baton pause` is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// Its release is staged (it still serves).
    Staged,
    /// It was stopped.
    Stopped,
    /// `current` points at the new release; still stopped.
    Switched,
    /// Its start was issued.
    Starting,
    /// It passed the health gate and catches up.
    CatchingUp,
}

impl At {
    /// A member is down (between stop and healthy) at this point.
    fn member_down(self) -> bool {
        matches!(self, At::Stopped | At::Switched | At::Starting)
    }
}

/// Waits for `member` to reach `at` in the journal (entries from `from`).
async fn wait_stage(journal: &JournalTail, from: usize, member: &str, at: At) -> Result<u64> {
    let within = Duration::from_secs(30);
    let command = |action: &'static str| move |e: &Value| is_issued(e, member, action);
    let done = |issued: &Value| {
        let id = issued["id"].clone();
        move |e: &Value| e["event"] == "command_succeeded" && e["id"] == id
    };
    let what = format!("{member} at {at:?}");
    let seen = match at {
        At::Staged | At::Stopped | At::Switched => {
            let action = match at {
                At::Staged => "stage",
                At::Stopped => "stop",
                _ => "switch",
            };
            let issued = journal
                .wait_for(&what, from, within, command(action))
                .await?;
            journal
                .wait_for(&what, from, within, done(&issued.entry))
                .await?
        }
        At::Starting => {
            journal
                .wait_for(&what, from, within, command("start"))
                .await?
        }
        At::CatchingUp => {
            journal
                .wait_for(&what, from, within, |e| {
                    e["event"] == "gate_passed" && e["member"] == member && e["gate"] == "healthy"
                })
                .await?
        }
    };
    Ok(seen.seen)
}

fn on_release(s: &baton_domain::FleetStatus, version: &str) -> bool {
    s.members.iter().all(|m| {
        m.report
            .as_ref()
            .is_some_and(|r| r.state.release == version && r.state.health == Health::Healthy)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_at_each_stage_leaves_no_member_down_and_resume_completes() -> Result<()> {
    let spec = ClusterSpec {
        policy: "tolerable_lag = 200\nhealth_timeout_ms = 10000\nstall_after_ms = 3000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\n".into(),
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    settle(&cluster).await?;
    let journal = JournalTail::start(&cluster);
    let observer = Observer::start(&cluster);
    let load = Load::start(&cluster, "pause-");

    // A normal rollout: how long one restart keeps a member down here.
    cluster.publish("v2", 1, false)?;
    let t0 = unix_ms();
    let (code, out, stderr) = baton(&cluster, &["upgrade", "--to", "v2"])?;
    if code != 0 {
        journal.settle().await;
        panic!(
            "the uninterrupted rollout exited {code}: {stderr} {out:#}\njournal:\n{}",
            timeline(&journal.since(0))
        );
    }
    let baseline = observer
        .snapshot()
        .longest_any(t0, unix_ms())
        .map_or(0, |s| s.ms());
    let allowed = baseline + SLACK_MS;
    eprintln!(
        "an uninterrupted restart kept a member down at most {baseline} ms; allowed {allowed} ms"
    );

    let stages = [
        At::Staged,
        At::Stopped,
        At::Switched,
        At::Starting,
        At::CatchingUp,
    ];
    for (k, at) in stages.into_iter().enumerate() {
        let version = format!("v{}", k + 3);
        cluster.publish(&version, 1, false)?;
        let from = journal.settle().await;
        let t0 = unix_ms();
        let (code, out, stderr) = baton(&cluster, &["upgrade", "--to", &version, "--detach"])?;
        assert_eq!(code, 0, "upgrade --to {version}: {stderr} {out:#}");
        let started = journal
            .wait_for("the rollout's start", from, Duration::from_secs(10), |e| {
                e["event"] == "started"
            })
            .await?;
        let first = started.entry["order"][0]
            .as_str()
            .context("order")?
            .to_owned();
        wait_stage(&journal, from, &first, at).await?;
        let (code, out, stderr) = baton(&cluster, &["pause"])?;
        assert_eq!(code, 0, "baton pause at {at:?}: {stderr} {out:#}");
        let paused_sent = unix_ms();
        // Every phase the rollout shows until it is paused.
        let mut phases: Vec<String> = phase_of(&out).into_iter().collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, v, _) = baton(&cluster, &["rollout"])?;
            let p = phase_of(&v).unwrap_or_default();
            if phases.last() != Some(&p) {
                phases.push(p.clone());
            }
            if p == "paused" || p == "completed" {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "pause at {at:?} never paused: phases {phases:?}, last {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("pause at {at:?} ({first}): phases {phases:?}");
        assert_eq!(
            phases.last().map(String::as_str),
            Some("paused"),
            "pause at {at:?}: {phases:?}"
        );
        if at.member_down() {
            // Seen by the CLI, or journaled (the `pause_requested` event
            // puts the rollout in `pausing`): a pausing phase that lasted
            // less than one CLI round trip may be missed by the polls.
            journal.settle().await;
            let requested = journal
                .find(from, |e| e["event"] == "pause_requested")
                .is_some();
            assert!(
                phases.iter().any(|p| p == "pausing") || requested,
                "a pause while {first} is down goes through `pausing`: phases {phases:?}, no pause_requested in the journal"
            );
        }
        // Paused: every member serves, and keeps serving (the rollout stays
        // paused) for longer than a restart takes.
        let hold_until = unix_ms().max(paused_sent) + allowed + 500;
        loop {
            let (_, v, _) = baton(&cluster, &["rollout"])?;
            assert_eq!(
                phase_of(&v).as_deref(),
                Some("paused"),
                "stays paused: {v:#}"
            );
            if unix_ms() >= hold_until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 0..cluster.members.len() {
            if cluster.member_status(i).await.is_err() {
                journal.settle().await;
                let events: Vec<String> = journal
                    .since(from)
                    .iter()
                    .filter(|l| l.entry.get("event").is_some())
                    .map(|l| {
                        let e = &l.entry;
                        format!(
                            "{} {} {} {} {}",
                            e["at"], e["event"], e["member"], e["action"]["action"], e["id"]
                        )
                    })
                    .collect();
                panic!(
                    "member {} is down while the rollout is paused (paused at {at:?}, pause sent at {paused_sent}); phases {phases:?}; journal:\n{}",
                    cluster.members[i].name,
                    events.join("\n")
                );
            }
        }
        let (code, out, stderr) = baton(&cluster, &["resume"])?;
        assert_eq!(code, 0, "resume after a pause at {at:?}: {stderr} {out:#}");
        let (code, out, stderr) = baton(&cluster, &["watch"])?;
        assert_eq!(code, 0, "the resumed rollout completes: {stderr} {out:#}");
        cluster
            .wait_status(
                &format!("every member on {version}"),
                Duration::from_secs(20),
                |s| on_release(s, &version),
            )
            .await?;
        let seen = observer.snapshot();
        for i in 0..cluster.members.len() {
            if let Some(s) = seen.longest_spell(i, t0, unix_ms()) {
                assert!(
                    s.ms() <= allowed,
                    "pause at {at:?}: member {} was down {} ms at a stretch; a normal restart here is {baseline} ms (+{SLACK_MS} ms slack)",
                    cluster.members[i].name,
                    s.ms()
                );
            }
        }
        seen.assert_never_two_down();
    }
    let (acked, lost) = load.finish().await?;
    assert!(acked > 0);
    assert_eq!(lost, Vec::<String>::new(), "no acknowledged write lost");
    observer.finish().await?.assert_never_two_down();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_during_a_failing_start_then_rollback_then_another_upgrade_each_work() -> Result<()> {
    let spec = ClusterSpec {
        policy: "tolerable_lag = 200\nhealth_timeout_ms = 10000\nstall_after_ms = 3000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\n".into(),
        member_env: (0..3)
            .map(|i| (i, vec![("SAMPLEKV_FAIL_START_AFTER_MS".to_owned(), "1500".to_owned())]))
            .collect(),
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    settle(&cluster).await?;
    let journal = JournalTail::start(&cluster);
    let observer = Observer::start(&cluster);
    let load = Load::start(&cluster, "abort-");
    cluster.publish("v2", 1, true)?;
    let from = journal.settle().await;
    let (code, out, stderr) = baton(&cluster, &["upgrade", "--to", "v2", "--detach"])?;
    assert_eq!(code, 0, "upgrade --to v2: {stderr} {out:#}");
    let started = journal
        .wait_for("the rollout's start", from, Duration::from_secs(10), |e| {
            e["event"] == "started"
        })
        .await?;
    let first = started.entry["order"][0]
        .as_str()
        .context("order")?
        .to_owned();
    // Abort while the bad release is being started. It dies 1.5 s after its
    // start (`SAMPLEKV_FAIL_START_AFTER_MS`): dying at once, its exit is
    // seen within milliseconds and the rollout may pause before the abort
    // arrives (a paused rollout rightly refuses an abort).
    wait_stage(&journal, from, &first, At::Starting).await?;
    let (code, out, stderr) = baton(&cluster, &["abort"])?;
    assert_eq!(code, 0, "baton abort: {stderr} {out:#}");
    let (code, out, stderr) = baton(&cluster, &["watch"])?;
    assert_eq!(code, 3, "an aborted rollout ends paused: {stderr} {out:#}");
    let state = &out["rollout"]["state"];
    assert_eq!(state["phase"]["phase"], "paused", "{out:#}");
    // Healthy on v1 and caught up: the member put back was down for the
    // bad release's 1.5 s and replays what it missed (a preflight in that
    // window rightly refuses its lag).
    cluster
        .wait_status(
            "every member healthy on v1 and caught up",
            Duration::from_secs(20),
            |s| on_release(s, "v1") && s.members.iter().all(|m| m.lag.is_some_and(|l| l <= 20)),
        )
        .await?;
    // The way out: rollback closes it, then another release goes on.
    let (code, out, stderr) = baton(&cluster, &["rollback"])?;
    assert_eq!(code, 0, "baton rollback: {stderr} {out:#}");
    cluster.publish("v3", 1, false)?;
    let (code, out, stderr) = baton(&cluster, &["upgrade", "--to", "v3"])?;
    assert_eq!(code, 0, "baton upgrade --to v3: {stderr} {out:#}");
    cluster
        .wait_status("every member on v3", Duration::from_secs(20), |s| {
            on_release(s, "v3")
        })
        .await?;
    let (acked, lost) = load.finish().await?;
    assert!(acked > 0);
    assert_eq!(lost, Vec::<String>::new(), "no acknowledged write lost");
    observer.finish().await?.assert_never_two_down();
    Ok(())
}

/// A coordinator config for `members`, with `policy` as its `[policy]`.
fn write_config(dir: &Path, members: &[&str], policy: &str) -> Result<(std::path::PathBuf, u16)> {
    let port = free_port();
    let store = dir.join("store");
    std::fs::create_dir_all(&store)?;
    let path = dir.join(format!("coordinator-{}.toml", members.len()));
    std::fs::write(
        &path,
        format!(
            "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{port}\"\nheartbeat_ms = 300\nmembers = {members:?}\nstate_dir = {:?}\nrelease_name = \"samplekv\"\n[store]\nkind = \"dir\"\npath = {:?}\n[policy]\n{policy}\n",
            dir.join("state").to_string_lossy(),
            store.to_string_lossy(),
        ),
    )?;
    Ok((path, port))
}

/// Runs the coordinator on `config`; returns its exit code (None: it is
/// still running after it listens) and its log.
fn run_coordinator(dir: &Path, config: &Path, port: u16) -> Result<(Option<i32>, String)> {
    let log = dir.join(format!("coordinator-{port}.log"));
    let mut cmd = Command::new(bin("baton-coordinator"));
    cmd.arg("--config").arg(config);
    let mut proc = Proc::spawn("coordinator", &mut cmd, &log)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = proc.child.try_wait()? {
            break status.code();
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break None;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the coordinator neither exited nor listened within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((code, std::fs::read_to_string(&log).unwrap_or_default()))
}

#[test]
fn max_unavailable_above_what_quorum_allows_exits_64_unless_quorum_loss_is_allowed() -> Result<()> {
    init();
    let dir = tempfile::Builder::new().prefix("baton-quorum-").tempdir()?;
    let refused = |members: &[&str], policy: &str| -> Result<()> {
        let (config, port) = write_config(dir.path(), members, policy)?;
        let (code, log) = run_coordinator(dir.path(), &config, port)?;
        assert_eq!(
            code,
            Some(64),
            "{} members with {policy:?} is refused with exit 64: {log}",
            members.len()
        );
        assert!(
            log.contains("max_unavailable"),
            "the refusal names max_unavailable: {log}"
        );
        Ok(())
    };
    // (N-1)/2 = 0 for two members: any max_unavailable loses quorum.
    refused(&["n1", "n2"], "max_unavailable = 1")?;
    refused(&["n1", "n2"], "")?;
    // (N-1)/2 = 1 for three.
    refused(&["n1", "n2", "n3"], "max_unavailable = 2")?;

    // The operator says so explicitly: it starts.
    let (config, port) = write_config(
        dir.path(),
        &["n1", "n2"],
        "max_unavailable = 1\nallow_quorum_loss = true",
    )?;
    let (code, log) = run_coordinator(dir.path(), &config, port)?;
    assert_eq!(
        code, None,
        "with allow_quorum_loss = true the coordinator starts: {log}"
    );
    // Three members with max_unavailable = 1 is fine, as ever.
    let (config, port) = write_config(dir.path(), &["n1", "n2", "n3"], "max_unavailable = 1")?;
    let (code, log) = run_coordinator(dir.path(), &config, port)?;
    assert_eq!(code, None, "three members, max_unavailable 1: {log}");
    Ok(())
}
