//! The coordinator failover drill the replicated-coordinator tests run on
//! every engine: the phases of a rollout at which the leading replica is
//! killed (each recognised in the journal), the kill loop, and the check
//! that nothing ran twice (ids unique in the journal, `runs = 1` on every
//! agent, every issued command ran somewhere).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
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
