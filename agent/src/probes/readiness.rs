//! The readiness verdicts: pure functions of the latest observation.
//!
//! This module owns what `/healthz` and `/readyz` (and so gRPC health and
//! the `member_ready` metric) decide, and the one line each failure says.
//! It does no IO and imports neither the probe server nor the metrics, which
//! both read it.

use baton_domain::{Health, MemberId};

use crate::adapter::MemberState;
use crate::watcher::Observation;

/// Why a probe does not pass, as one line naming the member and the numbers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "member {member}: not read yet: the agent has not polled it since it started; wait one poll_ms"
    )]
    NotReadYet { member: MemberId },
    #[error(
        "member {member}: unreachable: {detail}; check that the member runs and listens at the agent's target.addr"
    )]
    Unreachable { member: MemberId, detail: String },
    #[error("member {member}: not ready: {health}: {detail}")]
    Unhealthy {
        member: MemberId,
        health: Health,
        detail: String,
    },
    #[error(
        "member {member}: not ready: lag {lag} > tolerable_lag {tolerable_lag} (applied {applied}, committed {committed})"
    )]
    Lagging {
        member: MemberId,
        lag: u64,
        tolerable_lag: u64,
        applied: u64,
        committed: u64,
    },
}

/// The member's own lag: what it has committed but not yet applied.
///
/// A samplekv (openraft) follower learns the leader's commit index with each
/// AppendEntries, so a follower whose apply stalls shows a growing
/// `committed - applied` (checked end to end in `tests/harness/tests/probes.rs`).
/// A member cut off from its leader learns nothing new and shows no lag
/// here; the coordinator, which compares against the leader's commit index,
/// still sees it.
pub fn lag(state: &MemberState) -> u64 {
    state
        .committed_revision
        .saturating_sub(state.applied_revision)
}

/// `/healthz`: the agent runs and reaches its member.
pub fn healthz(member: &MemberId, obs: Option<&Observation>) -> Result<String, ProbeError> {
    match obs {
        None => Err(ProbeError::NotReadYet {
            member: member.clone(),
        }),
        Some(o) if !o.reachable => Err(ProbeError::Unreachable {
            member: member.clone(),
            detail: o.state.health_detail.clone(),
        }),
        Some(o) => Ok(format!(
            "member {member}: agent running, member reachable ({})",
            o.state.health
        )),
    }
}

/// `/readyz`: the member serves and is at most `tolerable_lag` behind its own
/// commit index, as of the last observation.
pub fn readyz(
    member: &MemberId,
    obs: Option<&Observation>,
    tolerable_lag: u64,
) -> Result<String, ProbeError> {
    healthz(member, obs)?;
    let Some(o) = obs else {
        return Err(ProbeError::NotReadYet {
            member: member.clone(),
        });
    };
    let s = &o.state;
    if s.health != Health::Healthy {
        return Err(ProbeError::Unhealthy {
            member: member.clone(),
            health: s.health,
            detail: s.health_detail.clone(),
        });
    }
    let lag = lag(s);
    if lag > tolerable_lag {
        return Err(ProbeError::Lagging {
            member: member.clone(),
            lag,
            tolerable_lag,
            applied: s.applied_revision,
            committed: s.committed_revision,
        });
    }
    Ok(format!(
        "member {member}: ready: serving as {}, lag {lag} <= tolerable_lag {tolerable_lag} (applied {}, committed {})",
        s.role, s.applied_revision, s.committed_revision
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_never_underflows() {
        let mut s = MemberState::unreachable(String::new());
        s.applied_revision = 7;
        s.committed_revision = 5;
        assert_eq!(lag(&s), 0);
        s.committed_revision = 9;
        assert_eq!(lag(&s), 2);
    }
}
