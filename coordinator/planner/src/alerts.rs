//! Alerts: what the coordinator tells the on-call, as data.
//!
//! This module owns the [`Alert`] value every sink delivers (Alertmanager,
//! PagerDuty, a webhook). An alert has a stable [`Alert::key`] made of its
//! identifying labels, so a firing alert and its resolution share one
//! identity (PagerDuty's `dedup_key`, Alertmanager's label set).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::UnixMs;

/// The alert names baton raises.
pub const CATCH_UP_STALLED: &str = "BatonCatchUpStalled";
pub const AGENT_DOWN: &str = "BatonAgentDown";
pub const ROLLOUT_PAUSED: &str = "BatonRolloutPaused";
/// A restore (`baton restore`) is under way: it replaces every member's
/// data, so someone must know, from its start until it completes or closes.
pub const RESTORE_RUNNING: &str = "BatonRestoreRunning";
/// A member that made no progress (not healthy, or not seen applying) for
/// `stall_after` while a rollout moves; its `gate` label says what the
/// rollout was waiting on.
pub const GATE_STALLED: &str = "BatonGateStalled";

/// The coordinator cannot write its journal (a full disk, a state dir
/// deleted under it): it decides and sends nothing until it can. Raised by
/// the driver itself, not the watchdog, and delivered without being
/// journaled (the journal is what failed).
pub const JOURNAL_UNAVAILABLE: &str = "BatonJournalUnavailable";

/// A member's agent reports less free space under its state dir than
/// `policy.min_state_disk_free_bytes`: it may soon be unable to journal a
/// command, and refuses what it cannot journal (so a rollout would stop
/// there).
pub const AGENT_STATE_DISK_LOW: &str = "BatonAgentStateDiskLow";

/// Every alert name the watchdog raises, for per-name metrics.
pub const ALL: [&str; 5] = [
    CATCH_UP_STALLED,
    AGENT_DOWN,
    ROLLOUT_PAUSED,
    GATE_STALLED,
    AGENT_STATE_DISK_LOW,
];

/// The label value used for `rollout` (or `member`) when there is none.
pub const NONE_LABEL: &str = "none";

/// Whether an alert starts or ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// One alert notification, sink-neutral.
///
/// `labels` always holds `alertname`, `cluster`, `member` and `rollout`
/// (`none` when not applicable). `annotations` holds `summary`, `lag`,
/// `trend`, `stalled_for` and `runbook` where they apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// When the condition began (the same for the firing and the resolved
    /// notification).
    pub starts_at: UnixMs,
    /// Set on the resolved notification: when the condition ended.
    pub ends_at: Option<UnixMs>,
}

impl Alert {
    /// A firing alert with the four identifying labels set.
    pub fn firing(
        name: &str,
        cluster: &str,
        member: Option<&str>,
        rollout: Option<&str>,
        starts_at: UnixMs,
    ) -> Alert {
        let labels = BTreeMap::from([
            ("alertname".to_owned(), name.to_owned()),
            ("cluster".to_owned(), cluster.to_owned()),
            ("member".to_owned(), member.unwrap_or(NONE_LABEL).to_owned()),
            (
                "rollout".to_owned(),
                rollout.unwrap_or(NONE_LABEL).to_owned(),
            ),
        ]);
        Alert {
            status: AlertStatus::Firing,
            labels,
            annotations: BTreeMap::new(),
            starts_at,
            ends_at: None,
        }
    }

    /// The same alert, resolved at `at`.
    pub fn resolved(&self, at: UnixMs) -> Alert {
        Alert {
            status: AlertStatus::Resolved,
            ends_at: Some(at),
            ..self.clone()
        }
    }

    /// Adds a label beyond the identifying four (it does not change the key).
    pub fn with_label(mut self, key: &str, value: impl Into<String>) -> Alert {
        self.labels.insert(key.to_owned(), value.into());
        self
    }

    pub fn annotate(mut self, key: &str, value: impl Into<String>) -> Alert {
        self.annotations.insert(key.to_owned(), value.into());
        self
    }

    fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or(NONE_LABEL, String::as_str)
    }

    pub fn name(&self) -> &str {
        self.label("alertname")
    }

    pub fn member(&self) -> &str {
        self.label("member")
    }

    /// The alert's identity: `alertname/cluster/member/rollout`. Stable
    /// across firing and resolved; PagerDuty's `dedup_key`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.name(),
            self.label("cluster"),
            self.member(),
            self.label("rollout")
        )
    }

    /// A one-line summary (the `summary` annotation, else the key).
    pub fn summary(&self) -> String {
        self.annotations
            .get("summary")
            .cloned()
            .unwrap_or_else(|| self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firing_and_resolved_share_one_key() {
        let a = Alert::firing(CATCH_UP_STALLED, "c1", Some("n2"), None, UnixMs(5))
            .annotate("lag", "40");
        let r = a.resolved(UnixMs(9));
        assert_eq!(a.key(), "BatonCatchUpStalled/c1/n2/none");
        assert_eq!(a.key(), r.key());
        assert_eq!(r.status, AlertStatus::Resolved);
        assert_eq!(r.ends_at, Some(UnixMs(9)));
        assert_eq!(r.starts_at, UnixMs(5));
    }
}
