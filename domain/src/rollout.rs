//! The rollout read model: what a rollout looks like from outside the
//! planner. Wall-clock time ([`UnixMs`]), per-member [`Stage`]s and their
//! transitions, the rollout [`Phase`], handovers and commands, and the
//! [`Rollout`] view that the operator API sends and the CLI shows.
//!
//! The planner (`baton-planner`) owns how a rollout changes (its events and
//! `RolloutState::apply`) and re-exports these types; the proto crate
//! converts [`Rollout`] to and from the wire. This module holds data and the
//! pure transitions of one stage; it must not decide what happens next.
//! The serde forms here are the CLI's `--output json` shape: keep them stable.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Action, CommandId, MemberId, ReleaseRef};

/// Wall-clock milliseconds since the Unix epoch, supplied by the caller.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct UnixMs(pub u64);

impl UnixMs {
    pub fn plus(self, d: Duration) -> UnixMs {
        UnixMs(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    pub fn since(self, earlier: UnixMs) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// As an RFC 3339 UTC timestamp with milliseconds
    /// (`2023-11-14T22:13:20.000Z`).
    pub fn rfc3339(self) -> String {
        let millis = self.0 % 1000;
        let secs = self.0 / 1000;
        let (hour, minute, second) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        let (year, month, day) = civil_date(secs / 86_400);
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since
/// 1970-01-01, by 400-year eras (146 097 days each) starting on March 1st,
/// so the leap day falls at the end of an era-year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March: 0 = March … 11 = February.
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Where one member is in the rollout. Forward path:
/// `Pending → Staged → Stopped → Switched → Started → CatchingUp → Soaking → Done`.
/// Failure path: `… → Reverting(Stopped|Switched) → Reverted`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "stage")]
pub enum Stage {
    /// Untouched; still on the previous release.
    Pending,
    /// The target release is unpacked on the node; the member still serves.
    Staged,
    /// The member is stopped (gracefully) on the previous release.
    Stopped,
    /// `current` points at the target release; the member is still stopped.
    Switched,
    /// Started on the target; waiting until healthy on the target version.
    Started { at: UnixMs },
    /// Healthy on the target; waiting for lag ≤ tolerable on two consecutive reports.
    CatchingUp { since: UnixMs },
    /// Caught up; soaking before the next member.
    Soaking { since: UnixMs },
    /// Passed every gate.
    Done,
    /// Going back to the previous release after a failure on the target.
    Reverting { step: RevertStep, reason: String },
    /// Back on the previous release; the rollout is paused.
    Reverted { reason: String },
}

/// Steps of going back to the previous release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevertStep {
    /// Stop whatever runs (it may be crash-looping).
    Stop,
    /// Point `current` back at the previous release.
    Switch,
    /// Start on the previous release.
    Start,
}

impl Stage {
    /// The agent action this stage needs next, if any.
    pub fn action(&self, target: &ReleaseRef, previous: &str) -> Option<Action> {
        match self {
            Stage::Pending => Some(Action::Stage {
                release: target.clone(),
            }),
            Stage::Staged => Some(Action::Stop),
            Stage::Stopped => Some(Action::Switch {
                version: target.version.clone(),
            }),
            Stage::Switched => Some(Action::Start),
            Stage::Reverting { step, .. } => Some(match step {
                RevertStep::Stop => Action::Stop,
                RevertStep::Switch => Action::Switch {
                    version: previous.to_owned(),
                },
                RevertStep::Start => Action::Start,
            }),
            Stage::Started { .. }
            | Stage::CatchingUp { .. }
            | Stage::Soaking { .. }
            | Stage::Done
            | Stage::Reverted { .. } => None,
        }
    }

    /// The stage after this stage's action succeeded at `at`.
    pub fn on_success(&self, at: UnixMs) -> Stage {
        match self {
            Stage::Pending => Stage::Staged,
            Stage::Staged => Stage::Stopped,
            Stage::Stopped => Stage::Switched,
            Stage::Switched => Stage::Started { at },
            Stage::Reverting { step, reason } => match step {
                RevertStep::Stop => Stage::Reverting {
                    step: RevertStep::Switch,
                    reason: reason.clone(),
                },
                RevertStep::Switch => Stage::Reverting {
                    step: RevertStep::Start,
                    reason: reason.clone(),
                },
                RevertStep::Start => Stage::Reverted {
                    reason: reason.clone(),
                },
            },
            other => other.clone(),
        }
    }

    /// Whether the member is, or may be, down in this stage.
    pub fn is_disruptive(&self) -> bool {
        matches!(
            self,
            Stage::Stopped | Stage::Switched | Stage::Started { .. } | Stage::Reverting { .. }
        )
    }

    /// Whether the member has been touched and not yet finished.
    pub fn in_progress(&self) -> bool {
        !matches!(self, Stage::Pending | Stage::Done | Stage::Reverted { .. })
    }

    /// A short name for progress lines.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Pending => "pending",
            Stage::Staged => "staged",
            Stage::Stopped => "stopped",
            Stage::Switched => "switched",
            Stage::Started { .. } => "starting",
            Stage::CatchingUp { .. } => "catching-up",
            Stage::Soaking { .. } => "soaking",
            Stage::Done => "done",
            Stage::Reverting { .. } => "reverting",
            Stage::Reverted { .. } => "reverted",
        }
    }
}

/// Which gate a member passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Healthy and reporting the target version.
    Healthy,
    /// Lag ≤ tolerable on two consecutive reports.
    CaughtUp,
    /// The soak time passed.
    Soaked,
}

/// The rollout as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Working through members in order.
    Running,
    /// Stopped by a failed gate, a stall or the operator; `resume` continues.
    Paused { reason: String },
    /// The operator asked to abort: finish the current step, then pause
    /// without touching the next member.
    Aborting,
    /// The operator asked to pause while a member was between stop and
    /// healthy: that member is carried on to healthy (or reverted), then
    /// the rollout pauses with `reason`.
    Pausing { reason: String },
    /// Every member passed every gate and the verify step passed.
    Completed,
    /// Ended by the operator without finishing (a rollback replaced it).
    Closed { reason: String },
}

impl Phase {
    /// Completed or closed: nothing more will happen to this rollout.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Completed | Phase::Closed { .. })
    }

    /// Still moving members: running, or finishing a step before it
    /// pauses (aborting, pausing).
    pub fn is_moving(&self) -> bool {
        matches!(
            self,
            Phase::Running | Phase::Aborting | Phase::Pausing { .. }
        )
    }

    /// The kind of phase without its reason: `running`, `paused`,
    /// `aborting`, `pausing`, `completed` or `closed` (metric labels,
    /// tables).
    pub fn kind(&self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Pausing { .. } => "pausing",
            Phase::Paused { .. } => "paused",
            Phase::Aborting => "aborting",
            Phase::Completed => "completed",
            Phase::Closed { .. } => "closed",
        }
    }

    /// Why the rollout paused or closed; None in the other phases.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Phase::Paused { reason } | Phase::Closed { reason } | Phase::Pausing { reason } => {
                Some(reason)
            }
            Phase::Running | Phase::Aborting | Phase::Completed => None,
        }
    }
}

/// The kind, then the reason in parentheses if there is one:
/// `running`, `paused (catch-up stalled)`.
impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            Some(reason) => write!(f, "{} ({reason})", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

/// A handover in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub from: MemberId,
    pub to: MemberId,
    pub attempts: u32,
    pub requested_at: UnixMs,
    /// Set when the last step-down command failed.
    pub last_error: Option<String>,
}

/// The rollout's pre-upgrade backup: taken before the first stop, and
/// verified by the coordinator re-reading it from the store. `attempts`
/// counts the backups asked for; each gets a new id (`<rollout>-b<n>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutBackup {
    pub attempts: u32,
    pub state: BackupState,
}

/// Where the pre-upgrade backup is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum BackupState {
    /// Not asked for yet.
    #[default]
    Pending,
    /// A member's agent is taking and uploading it.
    Taking {
        id: String,
        member: MemberId,
        command: CommandId,
    },
    /// The agent says it is in the store; the coordinator re-reads it.
    Taken { id: String, member: MemberId },
    /// Re-read from the store and every part matched its manifest.
    Verified(BackupSummary),
    /// Taking or verifying failed; nothing was stopped because of it.
    Failed { id: String, reason: String },
    /// No backup: `backup = "off"`, or a failed one under `"optional"`.
    Skipped { reason: String },
}

impl BackupState {
    /// `pending`, `taking`, `taken`, `verified`, `failed` or `skipped`.
    pub fn name(&self) -> &'static str {
        match self {
            BackupState::Pending => "pending",
            BackupState::Taking { .. } => "taking",
            BackupState::Taken { .. } => "taken",
            BackupState::Verified(_) => "verified",
            BackupState::Failed { .. } => "failed",
            BackupState::Skipped { .. } => "skipped",
        }
    }

    /// Whether the rollout may take a member down as far as the backup goes.
    pub fn allows_stop(&self) -> bool {
        matches!(self, BackupState::Verified(_) | BackupState::Skipped { .. })
    }
}

/// A verified backup, as its manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub id: String,
    /// The member it was taken from.
    pub member: MemberId,
    pub bytes: u64,
    /// Hex sha256 of the whole backup.
    pub sha256: String,
    /// The revision read from the backup itself.
    pub revision: u64,
    pub parts: u32,
    /// The store it is in (a directory, `s3://bucket/prefix`).
    pub location: String,
    pub verified_at: UnixMs,
}

/// A backup as the store holds it, and whether retention keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBackup {
    pub id: String,
    /// The rollout whose pre-upgrade backup it is, read from the id
    /// (`<rollout>-b<n>`); None when the id names none.
    pub rollout: Option<String>,
    /// What the manifest says; None when the backup is incomplete (no
    /// `COMPLETE` sentinel, or one that disagrees with the manifest). An
    /// incomplete backup is never offered for a restore.
    pub complete: Option<StoredBackupDetail>,
    /// Why a prune must keep it, whatever `--keep` says; None: nothing pins it.
    pub pinned: Option<String>,
}

/// A complete backup's manifest, as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBackupDetail {
    /// The member it was taken from.
    pub member: String,
    pub adapter: String,
    pub bytes: u64,
    /// Hex sha256 of the whole backup.
    pub sha256: String,
    /// The revision read from the backup itself.
    pub revision: u64,
    /// The release the member ran, and its data format.
    pub release: String,
    pub release_format: u32,
    pub parts: u32,
    pub created_at: UnixMs,
    pub baton_version: String,
}

/// A command the journal knows about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub member: MemberId,
    pub action: Action,
    pub issued_at: UnixMs,
    /// None while in flight; Some(Ok(detail)) or Some(Err(detail)).
    pub result: Option<Result<String, String>>,
}

/// One member's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberProgress {
    pub stage: Stage,
    /// The command in flight for this member, if any.
    pub inflight: Option<CommandId>,
    /// When this member's first disruptive step began, for the summary.
    pub started_at: Option<UnixMs>,
    pub finished_at: Option<UnixMs>,
}

/// A rollout as the operator sees it: target, order, per-member progress,
/// commands, handover. The planner builds it from its own state; the
/// operator API carries it; the CLI renders it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub target: ReleaseRef,
    /// The version the members ran before.
    pub previous: String,
    /// Followers (most lagging first, then by id), then the starting leader.
    pub order: Vec<MemberId>,
    pub original_leader: MemberId,
    pub phase: Phase,
    pub members: BTreeMap<MemberId, MemberProgress>,
    pub commands: BTreeMap<CommandId, CommandRecord>,
    pub handover: Option<Handover>,
    /// Each confirmed handover: the new leader and when.
    pub leader_changes: Vec<(MemberId, UnixMs)>,
    pub started_at: UnixMs,
    pub completed_at: Option<UnixMs>,
    /// The pre-upgrade backup.
    #[serde(default)]
    pub backup: RolloutBackup,
    /// Who asked for what: every control event someone asked for, in order.
    #[serde(default)]
    pub audit: Vec<Audit>,
}

/// One line of a rollout's audit trail: a control event and who asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// `started`, `paused`, `pause requested`, `resumed`, `abort
    /// requested` or `closed`.
    pub what: String,
    /// `operator/<name>` (its certificate's), or `local` on plaintext
    /// loopback.
    pub by: String,
    pub at: UnixMs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
            // A leap day, and the day after it.
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (951_868_799_999, "2000-02-29T23:59:59.999Z"),
            (951_868_800_000, "2000-03-01T00:00:00.000Z"),
            // 2100 is not a leap year.
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (1_735_689_599_000, "2024-12-31T23:59:59.000Z"),
        ] {
            assert_eq!(UnixMs(ms).rfc3339(), text, "{ms}");
        }
    }

    fn id(s: &str) -> MemberId {
        MemberId::new(s).unwrap()
    }

    fn rollout() -> Rollout {
        let (n1, n2, n3) = (id("n1"), id("n2"), id("n3"));
        let progress = |stage, inflight: Option<&str>| MemberProgress {
            stage,
            inflight: inflight.map(|c| CommandId(c.into())),
            started_at: Some(UnixMs(10)),
            finished_at: None,
        };
        Rollout {
            id: "r1-v2".into(),
            target: ReleaseRef {
                name: "samplekv".into(),
                version: "v2".into(),
                format_version: 2,
                sha256: "ab".repeat(32),
            },
            previous: "v1".into(),
            order: vec![n2.clone(), n3.clone(), n1.clone()],
            original_leader: n1.clone(),
            phase: Phase::Paused {
                reason: "member n2: start failed".into(),
            },
            members: BTreeMap::from([
                (n1.clone(), progress(Stage::Pending, None)),
                (
                    n2.clone(),
                    progress(
                        Stage::Reverted {
                            reason: "start failed".into(),
                        },
                        None,
                    ),
                ),
                (
                    n3.clone(),
                    progress(Stage::CatchingUp { since: UnixMs(20) }, Some("r1-v2-3")),
                ),
            ]),
            commands: BTreeMap::from([
                (
                    CommandId("r1-v2-1".into()),
                    CommandRecord {
                        member: n2.clone(),
                        action: Action::Stop,
                        issued_at: UnixMs(11),
                        result: Some(Ok("stopped".into())),
                    },
                ),
                (
                    CommandId("r1-v2-2".into()),
                    CommandRecord {
                        member: n2.clone(),
                        action: Action::Start,
                        issued_at: UnixMs(12),
                        result: Some(Err("exited 1".into())),
                    },
                ),
                (
                    CommandId("r1-v2-3".into()),
                    CommandRecord {
                        member: n1.clone(),
                        action: Action::StepDown { to: n3.clone() },
                        issued_at: UnixMs(13),
                        result: None,
                    },
                ),
            ]),
            handover: Some(Handover {
                from: n1,
                to: n3.clone(),
                attempts: 1,
                requested_at: UnixMs(13),
                last_error: None,
            }),
            leader_changes: vec![(n3, UnixMs(30))],
            started_at: UnixMs(1),
            completed_at: None,
            backup: RolloutBackup {
                attempts: 1,
                state: BackupState::Verified(BackupSummary {
                    id: "r1-v2-b1".into(),
                    member: n2,
                    bytes: 4096,
                    sha256: "cd".repeat(32),
                    revision: 41,
                    parts: 1,
                    location: "/srv/baton".into(),
                    verified_at: UnixMs(5),
                }),
            },
            audit: vec![Audit {
                what: "started".into(),
                by: "operator/alice".into(),
                at: UnixMs(1),
            }],
        }
    }

    /// The CLI's `--output json` and the end-to-end tests read these names:
    /// `state["phase"]["reason"]`, `state["members"][m]["stage"]["stage"]`,
    /// `state["order"][0]`, `state["commands"][id]["result"]["Ok"]`.
    #[test]
    fn the_json_shape_is_pinned() {
        let json = serde_json::to_value(rollout()).unwrap();
        let expected = serde_json::json!({
            "id": "r1-v2",
            "target": {"name": "samplekv", "version": "v2", "format_version": 2, "sha256": "ab".repeat(32)},
            "previous": "v1",
            "order": ["n2", "n3", "n1"],
            "original_leader": "n1",
            "phase": {"phase": "paused", "reason": "member n2: start failed"},
            "members": {
                "n1": {"stage": {"stage": "pending"}, "inflight": null, "started_at": 10, "finished_at": null},
                "n2": {"stage": {"stage": "reverted", "reason": "start failed"}, "inflight": null, "started_at": 10, "finished_at": null},
                "n3": {"stage": {"stage": "catching_up", "since": 20}, "inflight": "r1-v2-3", "started_at": 10, "finished_at": null},
            },
            "commands": {
                "r1-v2-1": {"member": "n2", "action": {"action": "stop"}, "issued_at": 11, "result": {"Ok": "stopped"}},
                "r1-v2-2": {"member": "n2", "action": {"action": "start"}, "issued_at": 12, "result": {"Err": "exited 1"}},
                "r1-v2-3": {"member": "n1", "action": {"action": "step_down", "to": "n3"}, "issued_at": 13, "result": null},
            },
            "handover": {"from": "n1", "to": "n3", "attempts": 1, "requested_at": 13, "last_error": null},
            "leader_changes": [["n3", 30]],
            "started_at": 1,
            "completed_at": null,
            "backup": {"attempts": 1, "state": {
                "state": "verified", "id": "r1-v2-b1", "member": "n2", "bytes": 4096,
                "sha256": "cd".repeat(32), "revision": 41, "parts": 1,
                "location": "/srv/baton", "verified_at": 5,
            }},
            "audit": [{"what": "started", "by": "operator/alice", "at": 1}],
        });
        assert_eq!(json, expected);
        let back: Rollout = serde_json::from_value(json).unwrap();
        assert_eq!(back, rollout());
    }

    #[test]
    fn stage_and_revert_step_spellings_are_pinned() {
        let cases = [
            (Stage::Staged, serde_json::json!({"stage": "staged"})),
            (Stage::Stopped, serde_json::json!({"stage": "stopped"})),
            (Stage::Switched, serde_json::json!({"stage": "switched"})),
            (
                Stage::Started { at: UnixMs(5) },
                serde_json::json!({"stage": "started", "at": 5}),
            ),
            (
                Stage::Soaking { since: UnixMs(6) },
                serde_json::json!({"stage": "soaking", "since": 6}),
            ),
            (Stage::Done, serde_json::json!({"stage": "done"})),
            (
                Stage::Reverting {
                    step: RevertStep::Switch,
                    reason: "r".into(),
                },
                serde_json::json!({"stage": "reverting", "step": "switch", "reason": "r"}),
            ),
        ];
        for (stage, json) in cases {
            assert_eq!(serde_json::to_value(&stage).unwrap(), json, "{stage:?}");
        }
    }

    #[test]
    fn phase_kinds_and_display_keep_their_spellings() {
        let paused = Phase::Paused {
            reason: "operator request".into(),
        };
        let closed = Phase::Closed {
            reason: "rolled back".into(),
        };
        assert_eq!(
            [
                Phase::Running.kind(),
                paused.kind(),
                Phase::Aborting.kind(),
                Phase::Completed.kind(),
                closed.kind()
            ],
            ["running", "paused", "aborting", "completed", "closed"]
        );
        assert_eq!(Phase::Running.to_string(), "running");
        assert_eq!(paused.to_string(), "paused (operator request)");
        assert_eq!(closed.to_string(), "closed (rolled back)");
        assert_eq!(
            serde_json::to_value(&Phase::Completed).unwrap(),
            serde_json::json!({"phase": "completed"})
        );
    }
}
