//! The rollout policy: every knob the operator may turn, with the defaults
//! DESIGN.md gives. Validation of the numbers lives here too.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to do when a catch-up stalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStall {
    /// Pause the rollout and page (the default).
    Pause,
    /// Page, but keep waiting until `catchup_timeout`.
    Wait,
    /// Page and roll the member back to its previous release.
    Rollback,
}

/// Whether a rollout takes a backup before its first stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupPolicy {
    /// No member is stopped until a backup is taken and verified; a backup
    /// that fails pauses the rollout. The coordinator config's default.
    Required,
    /// Take one; if it fails, go on without it (the summary says so).
    Optional,
    /// Take none. The default of this struct, for tests that are not about
    /// backups; an operator gets `Required` unless the config says otherwise.
    #[default]
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// A follower is caught up when its lag is at most this.
    pub tolerable_lag: u64,
    /// Members down at once; never more than (N-1)/2 on a quorum system.
    pub max_unavailable: usize,
    pub stop_timeout: Duration,
    pub health_timeout: Duration,
    pub catchup_timeout: Duration,
    /// A lag that has not shrunk for this long is a stall.
    pub stall_after: Duration,
    pub handover_timeout: Duration,
    pub soak: Duration,
    pub on_stall: OnStall,
    /// Outside a rollout, a member whose lag stays above `tolerable_lag`
    /// this long is stalled (and pages).
    pub steady_stall_after: Duration,
    /// An agent unheard-of this long pages (`BatonAgentDown`).
    pub agent_down_after: Duration,
    /// Exits of the member tolerated after it is started on the target
    /// release before the start counts as failed (0: the first exit fails
    /// it, and the member goes back at once).
    #[serde(default)]
    pub start_retries: u32,
    /// Accept a rollout that loses quorum (a 2-member quorum cluster): the
    /// operator has said an outage is fine.
    #[serde(default)]
    pub allow_quorum_loss: bool,
    /// The pre-upgrade backup.
    #[serde(default)]
    pub backup: BackupPolicy,
    /// The least free space the coordinator's state dir and every agent's
    /// must have for a rollout to start (the `state-disk` preflight check).
    #[serde(default = "default_min_state_disk_free")]
    pub min_state_disk_free: u64,
}

fn default_min_state_disk_free() -> u64 {
    crate::preflight::MIN_STATE_DISK_FREE
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            tolerable_lag: 10,
            max_unavailable: 1,
            stop_timeout: Duration::from_secs(30),
            health_timeout: Duration::from_secs(180),
            catchup_timeout: Duration::from_secs(300),
            stall_after: Duration::from_secs(30),
            handover_timeout: Duration::from_secs(10),
            soak: Duration::ZERO,
            on_stall: OnStall::Pause,
            steady_stall_after: Duration::from_secs(60),
            agent_down_after: Duration::from_secs(30),
            start_retries: 0,
            allow_quorum_loss: false,
            backup: BackupPolicy::Off,
            min_state_disk_free: crate::preflight::MIN_STATE_DISK_FREE,
        }
    }
}

impl Policy {
    /// The largest `max_unavailable` a quorum system of `members` allows.
    pub fn quorum_cap(members: usize) -> usize {
        (members.saturating_sub(1) / 2).max(1).min(members)
    }

    /// `max_unavailable` as actually enforced for a cluster of `members`.
    pub fn effective_max_unavailable(&self, members: usize) -> usize {
        self.max_unavailable.clamp(1, Self::quorum_cap(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_unavailable_is_capped_by_quorum() {
        let p = Policy {
            max_unavailable: 5,
            ..Policy::default()
        };
        assert_eq!(p.effective_max_unavailable(3), 1);
        assert_eq!(p.effective_max_unavailable(5), 2);
        assert_eq!(Policy::default().effective_max_unavailable(5), 1);
    }
}
