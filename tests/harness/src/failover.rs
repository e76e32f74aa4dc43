//! The coordinator failover drill the replicated-coordinator tests run on
//! every engine: the phases of a rollout at which the leading replica is
//! killed (each recognised in the journal), the kill loop, the check
//! that nothing ran twice (ids unique in the journal, `runs = 1` on every
//! agent, every issued command ran somewhere), and the fencing drill (a
//! leader frozen with a command in flight wakes deposed; its late command
//! is refused).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::load::agent_journals;
use crate::replicas::Replicas;

/// A point in a rollout, recognised in its journal.
#[derive(Debug)]
pub struct Phase {
    pub name: &'static str,
    pub reached: fn(&[serde_json::Value]) -> bool,
}

pub fn started(j: &[serde_json::Value]) -> Option<&serde_json::Value> {
    j.iter().find(|e| e["event"] == "started")
}

pub fn issued<'a>(
    j: &'a [serde_json::Value],
    action: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    j.iter().filter(move |e| {
        e["event"] == "command_issued" && (e["action"] == action || e["action"]["action"] == action)
    })
}

pub fn old_leader(j: &[serde_json::Value]) -> String {
    started(j)
        .and_then(|s| s["leader"].as_str())
        .unwrap_or_default()
        .to_owned()
}

pub const PHASES: [Phase; 7] = [
    Phase {
        name: "staging",
        reached: |j| issued(j, "stage").next().is_some(),
    },
    Phase {
        name: "a follower stopped",
        reached: |j| issued(j, "stop").next().is_some(),
    },
    Phase {
        name: "its health gate",
        reached: |j| {
            let Some(id) = issued(j, "start").next().map(|e| e["id"].clone()) else {
                return false;
            };
            j.iter()
                .any(|e| e["event"] == "command_succeeded" && e["id"] == id)
        },
    },
    Phase {
        name: "its catch-up",
        reached: |j| {
            j.iter()
                .any(|e| e["event"] == "gate_passed" && e["gate"] == "healthy")
        },
    },
    Phase {
        name: "the handover",
        reached: |j| j.iter().any(|e| e["event"] == "handover_picked"),
    },
    Phase {
        name: "the old leader's stop",
        reached: |j| {
            let l = old_leader(j);
            issued(j, "stop").any(|e| e["member"] == l.as_str())
        },
    },
    Phase {
        name: "the old leader's start",
        reached: |j| {
            let l = old_leader(j);
            issued(j, "start").any(|e| e["member"] == l.as_str())
        },
    },
];

/// Kills the leading replica (SIGKILL by pid) once at each of [`PHASES`],
/// as the rollout reaches it. After each kill another replica must lead
/// and journal the rollout's next event; only then does the dead one come
/// back, as a follower, for the next kill. Returns, per kill, the ms from
/// the kill to that next event.
pub async fn kill_the_leader_at_every_phase(replicas: &mut Replicas) -> Result<Vec<u128>> {
    let mut resumed_ms = Vec::new();
    for phase in &PHASES {
        let (k, before) = replicas
            .wait_journal(phase.name, Duration::from_secs(60), phase.reached)
            .await?;
        let next_phase_passed = PHASES
            .iter()
            .skip_while(|p| p.name != phase.name)
            .nth(1)
            .is_some_and(|p| (p.reached)(&before));
        replicas.kill(k);
        let killed = Instant::now();
        let n = before.len();
        let (k2, _) = replicas
            .wait_journal(
                "the next event after the kill",
                Duration::from_secs(30),
                |j| j.len() > n,
            )
            .await?;
        resumed_ms.push(killed.elapsed().as_millis());
        anyhow::ensure!(k2 != k, "the dead replica does not lead");
        replicas.start(k)?;
        eprintln!(
            "killed leading replica {} during {}{}; replica {} carried on, next event after {} ms",
            replicas[k].id,
            phase.name,
            if next_phase_passed {
                " (the next phase had begun)"
            } else {
                ""
            },
            replicas[k2].id,
            killed.elapsed().as_millis()
        );
    }
    Ok(resumed_ms)
}

/// Every command ran once: ids unique in `journal`, `runs = 1` on every
/// agent (reached at `probes`), and every issued id ran somewhere.
pub async fn ran_once(journal: &[serde_json::Value], probes: &[SocketAddr]) -> Result<()> {
    let mut ids = BTreeSet::new();
    for e in journal.iter().filter(|e| e["event"] == "command_issued") {
        anyhow::ensure!(
            ids.insert(e["id"].to_string()),
            "command id issued twice: {e}"
        );
    }
    let mut total = 0;
    for (i, entries) in agent_journals(probes).await? {
        for e in entries {
            anyhow::ensure!(e["runs"] == 1, "member {i} ran a command twice: {e}");
            total += 1;
        }
    }
    anyhow::ensure!(
        total == ids.len(),
        "every issued command ran exactly once somewhere: {total} ran, {} issued",
        ids.len()
    );
    Ok(())
}

/// What the fencing drill needs of a cluster under test (samplekv's
/// [`crate::Cluster`] or [`crate::etcd::EtcdCluster`]).
pub trait Fleet {
    fn replicas(&self) -> &Replicas;
    /// Member `i`'s name and its agent's log file.
    fn agent(&self, i: usize) -> (String, std::path::PathBuf);
    fn members(&self) -> usize;
    /// Kills member `i`'s agent (by pid) and starts it again.
    fn restart_agent(&mut self, i: usize) -> Result<()>;
    fn probe_addrs(&self) -> Vec<SocketAddr>;
}

/// The commands the journal shows issued and not yet answered (those with
/// `action`, when given): (member, id) each.
pub fn in_flight(j: &[serde_json::Value], action: Option<&str>) -> Vec<(String, String)> {
    let answered: BTreeSet<String> = j
        .iter()
        .filter(|e| e["event"] == "command_succeeded" || e["event"] == "command_failed")
        .map(|e| e["id"].to_string())
        .collect();
    j.iter()
        .filter(|e| match action {
            Some(a) => issued(std::slice::from_ref(*e), a).next().is_some(),
            None => e["event"] == "command_issued",
        })
        .filter(|e| !answered.contains(&e["id"].to_string()))
        .map(|e| {
            (
                e["member"].as_str().unwrap_or_default().to_owned(),
                e["id"].to_string(),
            )
        })
        .collect()
}

/// The agent log lines that refused a command as fenced.
fn fenced_lines(fleet: &impl Fleet) -> Vec<String> {
    (0..fleet.members())
        .flat_map(|i| {
            std::fs::read_to_string(fleet.agent(i).1)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("deposed coordinator leader"))
                .map(plain)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A log line without its terminal colour codes (`ESC [ … m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The fencing drill: SIGSTOP the leading replica while a command is in
/// flight (each look at its journal is made with it held, so the command
/// is surely still unanswered when the freeze lands), cut it off from its
/// peers, let the other two elect a leader that drives on, then SIGCONT
/// the old one. It still believes it leads and that its command is in
/// flight; the agent that ran the command gets it again, in the old term,
/// and refuses it: logged naming the member, and counted. Returns the
/// replica that was deposed (still cut off; the caller heals it). With
/// `action`, the command in flight is one with that action.
pub async fn a_deposed_leader_is_fenced(
    fleet: &mut impl Fleet,
    action: Option<&str>,
) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (old, member, waiting) = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no command was seen in flight within 60 s"
        );
        let k = fleet
            .replicas()
            .wait_leading(Duration::from_secs(15))
            .await?;
        let proc = fleet.replicas()[k]
            .proc
            .as_ref()
            .context("the leader runs")?;
        proc.signal(Signal::SIGSTOP);
        let journal = fleet.replicas().journal(k)?;
        if let Some((member, _)) = in_flight(&journal, action).into_iter().next() {
            // Every member the frozen leader believes busy may be the one
            // that gets its command again.
            let waiting: Vec<String> = in_flight(&journal, None)
                .into_iter()
                .map(|(m, _)| m)
                .collect();
            break (k, member, waiting);
        }
        proc.signal(Signal::SIGCONT);
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let old_pid = fleet.replicas()[old].proc.as_ref().context("live")?.pid();
    fleet.replicas().partition(old, true);
    // The other two elect a leader, which drives on (commands in its term).
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        if let Some(k) = fleet.replicas().leading().await
            && k != old
        {
            break k;
        }
        anyhow::ensure!(Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let n = fleet.replicas().journal(new)?.len();
    let next = fleet
        .replicas()
        .wait_journal(
            "the new leader's next command",
            Duration::from_secs(30),
            |j| j.len() > n && j[n..].iter().any(|e| e["event"] == "command_issued"),
        )
        .await;
    if let Err(e) = next {
        let agents: Vec<String> = (0..fleet.members())
            .map(|i| {
                let (name, log) = fleet.agent(i);
                format!(
                    "--- agent {name}\n{}",
                    tail(&std::fs::read_to_string(log).unwrap_or_default(), 25)
                )
            })
            .collect();
        let log = std::fs::read_to_string(&fleet.replicas()[new].log).unwrap_or_default();
        anyhow::bail!(
            "{e:#}\n(froze replica {} with commands in flight on {waiting:?})\n--- new leader\n{}\n{}",
            fleet.replicas()[old].id,
            tail(&plain(&log), 25),
            agents.join("\n")
        );
    }
    fleet.replicas()[old]
        .proc
        .as_ref()
        .context("live")?
        .signal(Signal::SIGCONT);
    let i = (0..fleet.members())
        .find(|i| fleet.agent(*i).0 == member)
        .with_context(|| format!("the member {member} is one of the fleet's"))?;
    // Usually the agent's own reconnect (its session to the frozen replica
    // was dropped) already brings the old command back; otherwise restart
    // the agent, which reconnects everywhere.
    let deadline = Instant::now() + Duration::from_secs(8);
    while fenced_lines(fleet).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if fenced_lines(fleet).is_empty() {
        fleet.restart_agent(i)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while fenced_lines(fleet).is_empty() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&fleet.replicas()[old].log).unwrap_or_default();
                let agent = std::fs::read_to_string(fleet.agent(i).1).unwrap_or_default();
                anyhow::bail!(
                    "no agent refused the deposed leader's command (old replica pid {old_pid})\n--- old replica\n{}\n--- agent\n{}",
                    tail(&log, 30),
                    tail(&agent, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let lines = fenced_lines(fleet);
    eprintln!("fenced: {lines:?}");
    let refused = waiting
        .iter()
        .find(|m| lines.iter().any(|l| l.contains(&format!("member={m} "))))
        .with_context(|| {
            format!("a refusal names a member the deposed leader had a command in flight on ({waiting:?}): {lines:?}")
        })?;
    let i = (0..fleet.members())
        .find(|i| fleet.agent(*i).0 == *refused)
        .with_context(|| format!("the member {refused} is one of the fleet's"))?;
    // Counted, in the process that refused it (retried: a restarted
    // agent's probe port may not listen yet).
    let probe = fleet.probe_addrs()[i];
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let m = crate::agent_get(probe, "/metrics")
            .await
            .unwrap_or_default();
        let line = m
            .lines()
            .find(|l| l.starts_with("baton_agent_commands_fenced_total"))
            .map(str::to_owned);
        let nonzero = line
            .as_deref()
            .is_some_and(|l| !l.trim_end().ends_with(" 0"));
        if nonzero {
            break line;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the refusal is not counted: {line:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("counted: {counted:?}");
    Ok(old)
}

/// Waits (bounded) until the leading replica's journal shows the rollout
/// completed, and checks that nothing ran twice ([`ran_once`], agents at
/// `probes`); returns that replica and its journal.
pub async fn completed_once(
    replicas: &Replicas,
    within: Duration,
    probes: &[SocketAddr],
) -> Result<(usize, Vec<serde_json::Value>)> {
    let (k, journal) = replicas
        .wait_journal("the rollout completed", within, |j| {
            j.iter().any(|e| e["event"] == "completed")
        })
        .await?;
    ran_once(&journal, probes).await?;
    Ok((k, journal))
}

/// Cuts one follower replica (the one after the leader) off from its
/// peers; returns it.
pub async fn cut_a_follower_off(replicas: &Replicas) -> Result<usize> {
    let leader = replicas.wait_leading(Duration::from_secs(15)).await?;
    let cut = (leader + 1) % replicas.len();
    replicas.partition(cut, true);
    Ok(cut)
}

/// Heals replica `cut` and waits until it holds every one of the
/// `entries` journal entries it missed.
pub async fn heal(replicas: &Replicas, cut: usize, entries: usize) -> Result<()> {
    replicas.partition(cut, false);
    replicas
        .wait_holds(cut, entries, Duration::from_secs(20))
        .await
}
