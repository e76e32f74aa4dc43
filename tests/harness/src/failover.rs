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
                .map(crate::without_colours)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The highest term in a replica's raft log at `path` (its own term, once
/// it led: a leader appends a blank entry in its term when elected).
fn log_term(path: &std::path::Path) -> Result<u64> {
    let (records, _torn) = baton_store::records::read_after(path, 0)?;
    let mut term = 0;
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.payload)
            .with_context(|| format!("{}: the record at offset {}", path.display(), r.offset))?;
        let leader = &v["entry"]["log_id"]["leader_id"];
        if let Some(t) = leader.as_u64().or_else(|| leader["term"].as_u64()) {
            term = term.max(t);
        }
    }
    Ok(term)
}

/// What member `probe`'s agent has of command `id` (its `/commands`): the
/// term it last took it under, and whether it has a result yet.
async fn agent_entry(probe: SocketAddr, id: &str) -> Option<(u64, bool)> {
    let entries = crate::agent_commands_at(probe).await.ok()?;
    entries
        .as_array()?
        .iter()
        .find(|e| e["id"].as_str() == Some(id))
        .map(|e| {
            (
                e["fence"]["term"].as_u64().unwrap_or(0),
                !e["result"].is_null(),
            )
        })
}

/// The term member `probe`'s agent last took command `id` under, if it
/// has it.
async fn agent_term_of(probe: SocketAddr, id: &str) -> Option<u64> {
    agent_entry(probe, id).await.map(|(term, _)| term)
}

/// The fencing drill, made so the late command is certain to be sent:
/// 1. SIGSTOP the leading replica at a moment when a command it sent is
///    still running on its agent (so no result for it exists, and with the
///    only proposer frozen none can be journaled), and cut it off from its
///    peers. (Its own journal file is no guide: a leader's entry can commit
///    on its followers' acks before its own write lands.)
/// 2. The other two elect a leader, which re-sends what it finds in flight
///    in its own, newer term, and drives on. The drill waits until the
///    agent shows it took the command under that newer term.
/// 3. The old leader stays frozen until the agent's session with it has
///    ended (its transport's keepalive went unanswered), and is then let go
///    (SIGCONT). It still believes it leads and that its command is in
///    flight, so it sends the command on the session the agent dials
///    again, in its old term, and the agent refuses it: logged naming the
///    member and the command, and counted.
///
/// Returns the replica that was deposed (still cut off; the caller heals
/// it). With `action`, the command in flight is one with that action.
pub async fn a_deposed_leader_is_fenced(fleet: &impl Fleet, action: Option<&str>) -> Result<usize> {
    let probes = fleet.probe_addrs();
    let names: Vec<String> = (0..fleet.members()).map(|i| fleet.agent(i).0).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (old, i, id) = 'look: loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no command was seen in flight within 60 s"
        );
        let k = fleet
            .replicas()
            .wait_leading(Duration::from_secs(15))
            .await?;
        // A command the leader sent that its agent is still running: no
        // result exists yet, so none can be in any journal. Seen with the
        // leader running, then confirmed with it frozen (a look at the
        // agent alone, so the freeze is short and causes no election). A
        // result that comes after the freeze cannot be journaled, since
        // only the frozen leader proposes: its driver keeps the command in
        // flight, and the new leader finds it in flight too.
        let mut sent = None;
        for (member, id) in in_flight(&fleet.replicas().journal(k)?, action) {
            let id = id.trim_matches('"').to_owned();
            if let Some(i) = names.iter().position(|n| *n == member)
                && agent_entry(probes[i], &id)
                    .await
                    .is_some_and(|(_, done)| !done)
            {
                sent = Some((i, id));
                break;
            }
        }
        let Some((i, id)) = sent else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let proc = fleet.replicas()[k]
            .proc
            .as_ref()
            .context("the leader runs")?;
        proc.signal(Signal::SIGSTOP);
        if agent_entry(probes[i], &id)
            .await
            .is_some_and(|(_, done)| !done)
        {
            break 'look (k, i, id);
        }
        proc.signal(Signal::SIGCONT);
    };
    let member = names[i].clone();
    let agent_lines = std::fs::read_to_string(fleet.agent(i).1)
        .unwrap_or_default()
        .lines()
        .count();
    let old_term = log_term(&fleet.replicas()[old].state_dir.join("replica/log"))?;
    let old_pid = fleet.replicas()[old].proc.as_ref().context("live")?.pid();
    fleet.replicas().partition(old, true);
    // The other two elect a leader, which re-sends the command in its term.
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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let term = agent_term_of(probes[i], &id).await;
        if term.is_some_and(|t| t > old_term) {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&fleet.replicas()[new].log).unwrap_or_default();
            let agent = std::fs::read_to_string(fleet.agent(i).1).unwrap_or_default();
            anyhow::bail!(
                "member {member} did not take {id} from the new leader (replica {}) within 30 s: its term for it is {term:?}, the frozen leader's is {old_term}\n--- new leader\n{}\n--- agent\n{}",
                fleet.replicas()[new].id,
                tail(&crate::without_colours(&log), 25),
                tail(&crate::without_colours(&agent), 25)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its session with the frozen leader ends (the transport's keepalive
    // gets no answer, or it stops taking reports), so the one the woken
    // leader sees is new, and it sends what it holds in flight on it.
    let old_url = fleet.replicas()[old].url.clone();
    let (_, agent_log) = fleet.agent(i);
    let ended = |from: usize| {
        std::fs::read_to_string(&agent_log)
            .unwrap_or_default()
            .lines()
            .skip(from)
            .map(crate::without_colours)
            .any(|l| {
                l.contains("coordinator session ended")
                    && l.contains(&format!("coordinator={old_url} "))
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ended(agent_lines) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "member {member}'s session with the frozen replica {old_url} did not end within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = fenced_lines(fleet).len();
    fleet.replicas()[old]
        .proc
        .as_ref()
        .context("live")?
        .signal(Signal::SIGCONT);
    let refused = |lines: &[String]| {
        lines[before..].iter().any(|l| {
            l.contains(&format!("member={member} ")) && l.contains(&format!("command={id} "))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !refused(&fenced_lines(fleet)) {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&fleet.replicas()[old].log).unwrap_or_default();
            let agent = std::fs::read_to_string(fleet.agent(i).1).unwrap_or_default();
            anyhow::bail!(
                "member {member}'s agent did not refuse the deposed leader's {id} (term {old_term}, replica pid {old_pid})\n--- old replica\n{}\n--- agent\n{}",
                tail(&crate::without_colours(&log), 30),
                tail(&crate::without_colours(&agent), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("fenced: {:?}", &fenced_lines(fleet)[before..]);
    // Counted, in the process that refused it (retried: the restarted
    // agent's probe port may not listen yet).
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let m = crate::agent_get(probes[i], "/metrics")
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
