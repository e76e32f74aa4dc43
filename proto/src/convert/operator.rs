//! Conversions for the operator API (`operator.proto`): fleet status,
//! preflight checks and the rollout read model ([`Rollout`] with its phase,
//! member stages, commands and handover) between `baton.v1` wire types and
//! domain types.
//!
//! Inbound conversions validate and name what is wrong in a typed error;
//! outbound conversions (`From` domain → wire) are total. Every message is
//! destructured field by field, so a new proto field breaks the build here
//! until someone handles it.

use std::collections::BTreeMap;

use baton_domain::{
    AgentCommand, Audit, BackupState, BackupSummary, Check, CommandId, CommandRecord, FleetStatus,
    Handover, InvalidMemberId, MemberId, MemberProgress, MemberRow, Phase, ReleaseRef, Report,
    RevertStep, Rollout, RolloutBackup, Stage, StoredBackup, StoredBackupDetail, UnixMs,
};

use crate::convert::agent_link::{InvalidCommand, InvalidReport};
use crate::v1;

/// Why a `StatusResponse` from the coordinator could not be understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidStatus {
    #[error("status names a bad member id: {0}")]
    MemberId(#[from] InvalidMemberId),
    #[error("status row for member {member} has a bad report: {source}")]
    Report {
        member: MemberId,
        source: InvalidReport,
    },
}

impl TryFrom<v1::StatusResponse> for FleetStatus {
    type Error = InvalidStatus;

    fn try_from(s: v1::StatusResponse) -> Result<Self, Self::Error> {
        let v1::StatusResponse {
            cluster_id,
            members,
            leader_id,
            heartbeat_ms,
        } = s;
        let leader = match leader_id.as_str() {
            "" => None,
            id => Some(MemberId::new(id)?),
        };
        let members = members
            .into_iter()
            .map(MemberRow::try_from)
            .collect::<Result<_, _>>()?;
        Ok(FleetStatus {
            cluster: cluster_id,
            leader,
            heartbeat_ms,
            members,
        })
    }
}

impl TryFrom<v1::MemberStatus> for MemberRow {
    type Error = InvalidStatus;

    fn try_from(m: v1::MemberStatus) -> Result<Self, Self::Error> {
        let v1::MemberStatus {
            member_id,
            ever_seen,
            connected,
            fresh,
            last_seen_ms_ago,
            report,
            lag,
            lag_known,
        } = m;
        let member = MemberId::new(member_id)?;
        let report =
            report
                .map(Report::try_from)
                .transpose()
                .map_err(|source| InvalidStatus::Report {
                    member: member.clone(),
                    source,
                })?;
        Ok(MemberRow {
            member,
            ever_seen,
            connected,
            fresh,
            last_seen_ms_ago: ever_seen.then_some(last_seen_ms_ago),
            report,
            lag: lag_known.then_some(lag),
        })
    }
}

impl From<FleetStatus> for v1::StatusResponse {
    fn from(f: FleetStatus) -> Self {
        let FleetStatus {
            cluster,
            leader,
            heartbeat_ms,
            members,
        } = f;
        v1::StatusResponse {
            cluster_id: cluster,
            leader_id: leader.map(String::from).unwrap_or_default(),
            heartbeat_ms,
            members: members.into_iter().map(v1::MemberStatus::from).collect(),
        }
    }
}

impl From<MemberRow> for v1::MemberStatus {
    fn from(m: MemberRow) -> Self {
        let MemberRow {
            member,
            ever_seen,
            connected,
            fresh,
            last_seen_ms_ago,
            report,
            lag,
        } = m;
        v1::MemberStatus {
            member_id: member.into(),
            ever_seen,
            connected,
            fresh,
            last_seen_ms_ago: last_seen_ms_ago.unwrap_or(0),
            report: report.map(v1::Report::from),
            lag: lag.unwrap_or(0),
            lag_known: lag.is_some(),
        }
    }
}

impl TryFrom<v1::Check> for Check {
    type Error = InvalidMemberId;

    fn try_from(c: v1::Check) -> Result<Self, Self::Error> {
        let v1::Check {
            check,
            member_id,
            ok,
            detail,
        } = c;
        let member = match member_id.as_str() {
            "" => None,
            m => Some(MemberId::new(m)?),
        };
        Ok(Check {
            check,
            member,
            ok,
            detail,
        })
    }
}

impl From<Check> for v1::Check {
    fn from(c: Check) -> Self {
        let Check {
            check,
            member,
            ok,
            detail,
        } = c;
        v1::Check {
            check,
            member_id: member.map(String::from).unwrap_or_default(),
            ok,
            detail,
        }
    }
}

/// Why a `Rollout` from the coordinator could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRollout {
    #[error("rollout has an empty id")]
    EmptyId,
    #[error("rollout {rollout} names a bad member id in {field}: {source}")]
    MemberId {
        rollout: String,
        field: &'static str,
        source: InvalidMemberId,
    },
    #[error("rollout {rollout} has no target release")]
    MissingTarget { rollout: String },
    #[error("rollout {rollout} has no phase, or one this CLI does not know; upgrade the CLI")]
    MissingPhase { rollout: String },
    #[error(
        "rollout {rollout}: member {member} has no stage, or one this CLI does not know; upgrade the CLI"
    )]
    MissingStage { rollout: String, member: MemberId },
    #[error("rollout {rollout}: member {member} is reverting with unknown step value {value}")]
    UnknownRevertStep {
        rollout: String,
        member: MemberId,
        value: i32,
    },
    #[error("rollout {rollout}: member {member} is listed twice")]
    DuplicateMember { rollout: String, member: MemberId },
    #[error("rollout {rollout}: a command record carries no command")]
    MissingCommand { rollout: String },
    #[error("rollout {rollout}: {source}")]
    Command {
        rollout: String,
        source: InvalidCommand,
    },
    #[error("rollout {rollout}: backup state {state:?} is not one this build knows")]
    UnknownBackupState { rollout: String, state: String },
    #[error("rollout {rollout}: command {id} is listed twice")]
    DuplicateCommand { rollout: String, id: CommandId },
}

impl TryFrom<v1::Rollout> for Rollout {
    type Error = InvalidRollout;

    fn try_from(r: v1::Rollout) -> Result<Self, Self::Error> {
        let v1::Rollout {
            id,
            target,
            previous_version,
            order,
            original_leader_id,
            phase,
            members,
            commands,
            handover,
            leader_changes,
            started_at_unix_ms,
            completed_at_unix_ms,
            backup,
            audit,
        } = r;
        if id.is_empty() {
            return Err(InvalidRollout::EmptyId);
        }
        let member = |field: &'static str, m: String| {
            MemberId::new(m).map_err(|source| InvalidRollout::MemberId {
                rollout: id.clone(),
                field,
                source,
            })
        };
        let v1::Release {
            name,
            version,
            format_version,
            sha256,
        } = target.ok_or_else(|| InvalidRollout::MissingTarget {
            rollout: id.clone(),
        })?;
        let phase = phase_from_wire(phase).ok_or_else(|| InvalidRollout::MissingPhase {
            rollout: id.clone(),
        })?;
        let order = order
            .into_iter()
            .map(|m| member("order", m))
            .collect::<Result<_, _>>()?;
        let original_leader = member("original_leader_id", original_leader_id)?;
        let mut progress = BTreeMap::new();
        for p in members {
            let v1::MemberProgress {
                member_id,
                stage,
                inflight_command_id,
                started_at_unix_ms,
                finished_at_unix_ms,
            } = p;
            let m = member("members", member_id)?;
            let stage = stage_from_wire(&id, &m, stage)?;
            let value = MemberProgress {
                stage,
                inflight: (!inflight_command_id.is_empty())
                    .then_some(CommandId(inflight_command_id)),
                started_at: started_at_unix_ms.map(UnixMs),
                finished_at: finished_at_unix_ms.map(UnixMs),
            };
            if progress.insert(m.clone(), value).is_some() {
                return Err(InvalidRollout::DuplicateMember {
                    rollout: id.clone(),
                    member: m,
                });
            }
        }
        let mut records = BTreeMap::new();
        for c in commands {
            let v1::CommandRecord {
                command,
                member_id,
                issued_at_unix_ms,
                result,
            } = c;
            let command = command.ok_or_else(|| InvalidRollout::MissingCommand {
                rollout: id.clone(),
            })?;
            let AgentCommand {
                id: command_id,
                action,
                stop_timeout_ms: _, // a record keeps the action, not the agent's timeout
                even_if_leader: _,
                fence: _,
            } = AgentCommand::try_from(command).map_err(|source| InvalidRollout::Command {
                rollout: id.clone(),
                source,
            })?;
            let record = CommandRecord {
                member: member("commands", member_id)?,
                action,
                issued_at: UnixMs(issued_at_unix_ms),
                result: result.map(|r| match r {
                    v1::command_record::Result::Ok(detail) => Ok(detail),
                    v1::command_record::Result::Failed(detail) => Err(detail),
                }),
            };
            if records.insert(command_id.clone(), record).is_some() {
                return Err(InvalidRollout::DuplicateCommand {
                    rollout: id.clone(),
                    id: command_id,
                });
            }
        }
        let handover = match handover {
            None => None,
            Some(v1::Handover {
                from_member_id,
                to_member_id,
                attempts,
                requested_at_unix_ms,
                last_error,
            }) => Some(Handover {
                from: member("handover", from_member_id)?,
                to: member("handover", to_member_id)?,
                attempts,
                requested_at: UnixMs(requested_at_unix_ms),
                last_error,
            }),
        };
        let leader_changes = leader_changes
            .into_iter()
            .map(
                |v1::LeaderChange {
                     member_id,
                     at_unix_ms,
                 }| {
                    Ok((member("leader_changes", member_id)?, UnixMs(at_unix_ms)))
                },
            )
            .collect::<Result<_, InvalidRollout>>()?;
        let backup = match backup {
            None => RolloutBackup::default(),
            Some(b) => backup_from_wire(&id, b)?,
        };
        Ok(Rollout {
            target: ReleaseRef {
                name,
                version,
                format_version,
                sha256,
            },
            previous: previous_version,
            order,
            original_leader,
            phase,
            members: progress,
            commands: records,
            handover,
            leader_changes,
            started_at: UnixMs(started_at_unix_ms),
            completed_at: completed_at_unix_ms.map(UnixMs),
            backup,
            audit: audit
                .into_iter()
                .map(|a| Audit {
                    what: a.what,
                    by: a.by,
                    at: UnixMs(a.at_unix_ms),
                })
                .collect(),
            id,
        })
    }
}

fn backup_from_wire(rollout: &str, b: v1::RolloutBackup) -> Result<RolloutBackup, InvalidRollout> {
    let v1::RolloutBackup {
        state,
        attempts,
        id,
        member_id,
        command_id,
        reason,
        bytes,
        sha256,
        revision,
        parts,
        location,
        verified_at_unix_ms,
    } = b;
    let member = || {
        MemberId::new(member_id.clone()).map_err(|source| InvalidRollout::MemberId {
            rollout: rollout.to_owned(),
            field: "backup.member_id",
            source,
        })
    };
    let state = match state.as_str() {
        "pending" => BackupState::Pending,
        "taking" => BackupState::Taking {
            id,
            member: member()?,
            command: CommandId(command_id),
        },
        "taken" => BackupState::Taken {
            id,
            member: member()?,
        },
        "verified" => BackupState::Verified(BackupSummary {
            id,
            member: member()?,
            bytes,
            sha256,
            revision,
            parts,
            location,
            verified_at: UnixMs(verified_at_unix_ms),
        }),
        "failed" => BackupState::Failed { id, reason },
        "skipped" => BackupState::Skipped { reason },
        _ => {
            return Err(InvalidRollout::UnknownBackupState {
                rollout: rollout.to_owned(),
                state,
            });
        }
    };
    Ok(RolloutBackup { attempts, state })
}

fn backup_to_wire(b: RolloutBackup) -> v1::RolloutBackup {
    let RolloutBackup { attempts, state } = b;
    let mut w = v1::RolloutBackup {
        state: state.name().to_owned(),
        attempts,
        ..Default::default()
    };
    match state {
        BackupState::Pending => {}
        BackupState::Taking {
            id,
            member,
            command,
        } => {
            (w.id, w.member_id, w.command_id) = (id, member.into(), command.0);
        }
        BackupState::Taken { id, member } => (w.id, w.member_id) = (id, member.into()),
        BackupState::Verified(BackupSummary {
            id,
            member,
            bytes,
            sha256,
            revision,
            parts,
            location,
            verified_at,
        }) => {
            (w.id, w.member_id, w.bytes, w.sha256) = (id, member.into(), bytes, sha256);
            (w.revision, w.parts, w.location) = (revision, parts, location);
            w.verified_at_unix_ms = verified_at.0;
        }
        BackupState::Failed { id, reason } => (w.id, w.reason) = (id, reason),
        BackupState::Skipped { reason } => w.reason = reason,
    }
    w
}

/// None when the phase is missing or one this build does not know.
fn phase_from_wire(p: Option<v1::RolloutPhase>) -> Option<Phase> {
    use v1::rollout_phase::{self as wire, Phase as P};
    let v1::RolloutPhase { phase } = p?;
    Some(match phase? {
        P::Running(wire::Running {}) => Phase::Running,
        P::Paused(wire::Paused { reason }) => Phase::Paused { reason },
        P::Aborting(wire::Aborting {}) => Phase::Aborting,
        P::Completed(wire::Completed {}) => Phase::Completed,
        P::Closed(wire::Closed { reason }) => Phase::Closed { reason },
        P::Pausing(wire::Pausing { reason }) => Phase::Pausing { reason },
    })
}

fn stage_from_wire(
    rollout: &str,
    member: &MemberId,
    s: Option<v1::MemberStage>,
) -> Result<Stage, InvalidRollout> {
    use v1::member_stage::{self as wire, Stage as S};
    let missing = || InvalidRollout::MissingStage {
        rollout: rollout.to_owned(),
        member: member.clone(),
    };
    let v1::MemberStage { stage } = s.ok_or_else(missing)?;
    Ok(match stage.ok_or_else(missing)? {
        S::Pending(wire::Pending {}) => Stage::Pending,
        S::Staged(wire::Staged {}) => Stage::Staged,
        S::Stopped(wire::Stopped {}) => Stage::Stopped,
        S::Switched(wire::Switched {}) => Stage::Switched,
        S::Started(wire::Started { at_unix_ms }) => Stage::Started {
            at: UnixMs(at_unix_ms),
        },
        S::CatchingUp(wire::CatchingUp { since_unix_ms }) => Stage::CatchingUp {
            since: UnixMs(since_unix_ms),
        },
        S::Soaking(wire::Soaking { since_unix_ms }) => Stage::Soaking {
            since: UnixMs(since_unix_ms),
        },
        S::Done(wire::Done {}) => Stage::Done,
        S::Reverting(wire::Reverting { step, reason }) => Stage::Reverting {
            step: match v1::RevertStep::try_from(step) {
                Ok(v1::RevertStep::Stop) => RevertStep::Stop,
                Ok(v1::RevertStep::Switch) => RevertStep::Switch,
                Ok(v1::RevertStep::Start) => RevertStep::Start,
                Ok(v1::RevertStep::Unspecified) | Err(_) => {
                    return Err(InvalidRollout::UnknownRevertStep {
                        rollout: rollout.to_owned(),
                        member: member.clone(),
                        value: step,
                    });
                }
            },
            reason,
        },
        S::Reverted(wire::Reverted { reason }) => Stage::Reverted { reason },
    })
}

impl From<Rollout> for v1::Rollout {
    fn from(r: Rollout) -> Self {
        let Rollout {
            id,
            target,
            previous,
            order,
            original_leader,
            phase,
            members,
            commands,
            handover,
            leader_changes,
            started_at,
            completed_at,
            backup,
            audit,
        } = r;
        let ReleaseRef {
            name,
            version,
            format_version,
            sha256,
        } = target;
        v1::Rollout {
            id,
            target: Some(v1::Release {
                name,
                version,
                format_version,
                sha256,
            }),
            previous_version: previous,
            order: order.into_iter().map(String::from).collect(),
            original_leader_id: original_leader.into(),
            phase: Some(v1::RolloutPhase::from(phase)),
            members: members
                .into_iter()
                .map(|(member, p)| {
                    let MemberProgress {
                        stage,
                        inflight,
                        started_at,
                        finished_at,
                    } = p;
                    v1::MemberProgress {
                        member_id: member.into(),
                        stage: Some(v1::MemberStage::from(stage)),
                        inflight_command_id: inflight.map(|c| c.0).unwrap_or_default(),
                        started_at_unix_ms: started_at.map(|t| t.0),
                        finished_at_unix_ms: finished_at.map(|t| t.0),
                    }
                })
                .collect(),
            commands: commands
                .into_iter()
                .map(|(id, c)| {
                    let CommandRecord {
                        member,
                        action,
                        issued_at,
                        result,
                    } = c;
                    v1::CommandRecord {
                        command: Some(v1::Command::from(AgentCommand {
                            id,
                            action,
                            stop_timeout_ms: None,
                            even_if_leader: false,
                            fence: None,
                        })),
                        member_id: member.into(),
                        issued_at_unix_ms: issued_at.0,
                        result: result.map(|r| match r {
                            Ok(detail) => v1::command_record::Result::Ok(detail),
                            Err(detail) => v1::command_record::Result::Failed(detail),
                        }),
                    }
                })
                .collect(),
            handover: handover.map(|h| {
                let Handover {
                    from,
                    to,
                    attempts,
                    requested_at,
                    last_error,
                } = h;
                v1::Handover {
                    from_member_id: from.into(),
                    to_member_id: to.into(),
                    attempts,
                    requested_at_unix_ms: requested_at.0,
                    last_error,
                }
            }),
            leader_changes: leader_changes
                .into_iter()
                .map(|(member, at)| v1::LeaderChange {
                    member_id: member.into(),
                    at_unix_ms: at.0,
                })
                .collect(),
            started_at_unix_ms: started_at.0,
            completed_at_unix_ms: completed_at.map(|t| t.0),
            backup: Some(backup_to_wire(backup)),
            audit: audit
                .into_iter()
                .map(|a| v1::AuditLine {
                    what: a.what,
                    by: a.by,
                    at_unix_ms: a.at.0,
                })
                .collect(),
        }
    }
}

impl From<Phase> for v1::RolloutPhase {
    fn from(p: Phase) -> Self {
        use v1::rollout_phase::{self as wire, Phase as P};
        let phase = match p {
            Phase::Running => P::Running(wire::Running {}),
            Phase::Paused { reason } => P::Paused(wire::Paused { reason }),
            Phase::Aborting => P::Aborting(wire::Aborting {}),
            Phase::Completed => P::Completed(wire::Completed {}),
            Phase::Closed { reason } => P::Closed(wire::Closed { reason }),
            Phase::Pausing { reason } => P::Pausing(wire::Pausing { reason }),
        };
        v1::RolloutPhase { phase: Some(phase) }
    }
}

impl From<Stage> for v1::MemberStage {
    fn from(s: Stage) -> Self {
        use v1::member_stage::{self as wire, Stage as S};
        let stage = match s {
            Stage::Pending => S::Pending(wire::Pending {}),
            Stage::Staged => S::Staged(wire::Staged {}),
            Stage::Stopped => S::Stopped(wire::Stopped {}),
            Stage::Switched => S::Switched(wire::Switched {}),
            Stage::Started { at } => S::Started(wire::Started { at_unix_ms: at.0 }),
            Stage::CatchingUp { since } => S::CatchingUp(wire::CatchingUp {
                since_unix_ms: since.0,
            }),
            Stage::Soaking { since } => S::Soaking(wire::Soaking {
                since_unix_ms: since.0,
            }),
            Stage::Done => S::Done(wire::Done {}),
            Stage::Reverting { step, reason } => S::Reverting(wire::Reverting {
                step: match step {
                    RevertStep::Stop => v1::RevertStep::Stop,
                    RevertStep::Switch => v1::RevertStep::Switch,
                    RevertStep::Start => v1::RevertStep::Start,
                } as i32,
                reason,
            }),
            Stage::Reverted { reason } => S::Reverted(wire::Reverted { reason }),
        };
        v1::MemberStage { stage: Some(stage) }
    }
}

fn some_if(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<v1::StoredBackup> for StoredBackup {
    fn from(b: v1::StoredBackup) -> Self {
        let v1::StoredBackup {
            id,
            rollout,
            complete,
            pinned,
            member_id,
            adapter,
            bytes,
            sha256,
            revision,
            release,
            release_format,
            parts,
            created_unix_ms,
            baton_version,
        } = b;
        StoredBackup {
            id,
            rollout: some_if(rollout),
            complete: complete.then_some(StoredBackupDetail {
                member: member_id,
                adapter,
                bytes,
                sha256,
                revision,
                release,
                release_format,
                parts,
                created_at: UnixMs(created_unix_ms),
                baton_version,
            }),
            pinned: some_if(pinned),
        }
    }
}

impl From<StoredBackup> for v1::StoredBackup {
    fn from(b: StoredBackup) -> Self {
        let StoredBackup {
            id,
            rollout,
            complete,
            pinned,
        } = b;
        let mut w = v1::StoredBackup {
            id,
            rollout: rollout.unwrap_or_default(),
            complete: complete.is_some(),
            pinned: pinned.unwrap_or_default(),
            ..Default::default()
        };
        if let Some(StoredBackupDetail {
            member,
            adapter,
            bytes,
            sha256,
            revision,
            release,
            release_format,
            parts,
            created_at,
            baton_version,
        }) = complete
        {
            (w.member_id, w.adapter, w.bytes, w.sha256) = (member, adapter, bytes, sha256);
            (w.revision, w.release, w.release_format) = (revision, release, release_format);
            (w.parts, w.created_unix_ms, w.baton_version) = (parts, created_at.0, baton_version);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use baton_domain::Action;

    use super::*;

    fn id(s: &str) -> MemberId {
        MemberId::new(s).unwrap()
    }

    /// A rollout that uses every stage, every kind of result and a handover.
    fn rollout() -> Rollout {
        let stages = [
            Stage::Pending,
            Stage::Staged,
            Stage::Stopped,
            Stage::Switched,
            Stage::Started { at: UnixMs(5) },
            Stage::CatchingUp { since: UnixMs(6) },
            Stage::Soaking { since: UnixMs(7) },
            Stage::Done,
            Stage::Reverting {
                step: RevertStep::Switch,
                reason: "start failed".into(),
            },
            Stage::Reverted {
                reason: "start failed".into(),
            },
        ];
        let order: Vec<MemberId> = (1..=stages.len()).map(|i| id(&format!("n{i}"))).collect();
        let members = order
            .iter()
            .zip(stages)
            .enumerate()
            .map(|(i, (m, stage))| {
                (
                    m.clone(),
                    MemberProgress {
                        stage,
                        inflight: (i == 2).then(|| CommandId("r1-v2-3".into())),
                        started_at: (i > 1).then_some(UnixMs(3)),
                        finished_at: (i == 7).then_some(UnixMs(9)),
                    },
                )
            })
            .collect();
        let target = ReleaseRef {
            name: "samplekv".into(),
            version: "v2".into(),
            format_version: 2,
            sha256: "ab".repeat(32),
        };
        let record = |member: &str, action, result| CommandRecord {
            member: id(member),
            action,
            issued_at: UnixMs(4),
            result,
        };
        Rollout {
            audit: vec![Audit {
                what: "paused".into(),
                by: "operator/olga".into(),
                at: UnixMs(7),
            }],
            id: "r1-v2".into(),
            previous: "v1".into(),
            original_leader: order[0].clone(),
            phase: Phase::Paused {
                reason: "member n9: start failed".into(),
            },
            members,
            commands: BTreeMap::from([
                (
                    CommandId("r1-v2-1".into()),
                    record(
                        "n2",
                        Action::Stage {
                            release: target.clone(),
                        },
                        Some(Ok("staged".into())),
                    ),
                ),
                (
                    CommandId("r1-v2-2".into()),
                    record("n9", Action::Start, Some(Err("exited 1".into()))),
                ),
                (
                    CommandId("r1-v2-3".into()),
                    record("n1", Action::StepDown { to: id("n3") }, None),
                ),
            ]),
            handover: Some(Handover {
                from: id("n1"),
                to: id("n3"),
                attempts: 2,
                requested_at: UnixMs(8),
                last_error: Some("not a leader".into()),
            }),
            leader_changes: vec![(id("n3"), UnixMs(10))],
            started_at: UnixMs(1),
            completed_at: Some(UnixMs(11)),
            backup: RolloutBackup {
                attempts: 2,
                state: BackupState::Verified(BackupSummary {
                    id: "r1-v2-b2".into(),
                    member: id("n2"),
                    bytes: 123,
                    sha256: "b".repeat(64),
                    revision: 77,
                    parts: 1,
                    location: "s3://bucket/baton".into(),
                    verified_at: UnixMs(3),
                }),
            },
            target,
            order,
        }
    }

    #[test]
    fn a_rollout_round_trips_through_the_wire() {
        let r = rollout();
        assert_eq!(Rollout::try_from(v1::Rollout::from(r.clone())), Ok(r));
        for phase in [
            Phase::Running,
            Phase::Aborting,
            Phase::Pausing {
                reason: "paused by the operator: lunch".into(),
            },
            Phase::Completed,
            Phase::Closed {
                reason: "rolled back".into(),
            },
        ] {
            let r = Rollout {
                phase,
                handover: None,
                completed_at: None,
                ..rollout()
            };
            assert_eq!(Rollout::try_from(v1::Rollout::from(r.clone())), Ok(r));
        }
        let n2 = id("n2");
        for state in [
            BackupState::Pending,
            BackupState::Taking {
                id: "b1".into(),
                member: n2.clone(),
                command: CommandId("r1-v2-4".into()),
            },
            BackupState::Taken {
                id: "b1".into(),
                member: n2.clone(),
            },
            BackupState::Failed {
                id: "b1".into(),
                reason: "bucket missing".into(),
            },
            BackupState::Skipped {
                reason: "backup = off".into(),
            },
        ] {
            let r = Rollout {
                backup: RolloutBackup { attempts: 1, state },
                ..rollout()
            };
            assert_eq!(Rollout::try_from(v1::Rollout::from(r.clone())), Ok(r));
        }
        let mut wire = v1::Rollout::from(rollout());
        wire.backup.as_mut().unwrap().state = "lost".into();
        assert_eq!(
            Rollout::try_from(wire).unwrap_err().to_string(),
            "rollout r1-v2: backup state \"lost\" is not one this build knows"
        );
    }

    #[test]
    fn bad_rollouts_name_what_is_wrong() {
        let good = || v1::Rollout::from(rollout());
        let err = |w: v1::Rollout| Rollout::try_from(w).unwrap_err();

        assert_eq!(
            err(v1::Rollout {
                id: String::new(),
                ..good()
            }),
            InvalidRollout::EmptyId
        );
        assert_eq!(
            err(v1::Rollout {
                target: None,
                ..good()
            }),
            InvalidRollout::MissingTarget {
                rollout: "r1-v2".into()
            }
        );
        assert_eq!(
            err(v1::Rollout {
                phase: Some(v1::RolloutPhase { phase: None }),
                ..good()
            }),
            InvalidRollout::MissingPhase {
                rollout: "r1-v2".into()
            }
        );
        assert!(matches!(
            err(v1::Rollout {
                order: vec!["n 1".into()],
                ..good()
            }),
            InvalidRollout::MemberId { field: "order", .. }
        ));

        let mut w = good();
        w.members[0].stage = None;
        assert_eq!(
            err(w),
            InvalidRollout::MissingStage {
                rollout: "r1-v2".into(),
                member: id("n1")
            }
        );

        let mut w = good();
        let reverting = w
            .members
            .iter_mut()
            .find(|m| m.member_id == "n9")
            .and_then(|m| m.stage.as_mut())
            .and_then(|s| s.stage.as_mut());
        if let Some(v1::member_stage::Stage::Reverting(r)) = reverting {
            r.step = 42;
        }
        assert_eq!(
            err(w),
            InvalidRollout::UnknownRevertStep {
                rollout: "r1-v2".into(),
                member: id("n9"),
                value: 42
            }
        );

        let mut w = good();
        let again = w.members[0].clone();
        w.members.push(again);
        assert_eq!(
            err(w),
            InvalidRollout::DuplicateMember {
                rollout: "r1-v2".into(),
                member: id("n1")
            }
        );

        let mut w = good();
        w.commands[0].command = None;
        assert_eq!(
            err(w),
            InvalidRollout::MissingCommand {
                rollout: "r1-v2".into()
            }
        );

        let mut w = good();
        if let Some(c) = w.commands[0].command.as_mut() {
            c.step = None;
        }
        assert!(matches!(
            err(w),
            InvalidRollout::Command {
                source: InvalidCommand::NoStep { .. },
                ..
            }
        ));

        let mut w = good();
        let again = w.commands[0].clone();
        w.commands.push(again);
        assert_eq!(
            err(w),
            InvalidRollout::DuplicateCommand {
                rollout: "r1-v2".into(),
                id: CommandId("r1-v2-1".into())
            }
        );
    }

    #[test]
    fn a_stored_backup_round_trips_complete_or_not() {
        let complete = StoredBackup {
            id: "r1-v2-b1".into(),
            rollout: Some("r1-v2".into()),
            complete: Some(StoredBackupDetail {
                member: "n2".into(),
                adapter: "samplekv".into(),
                bytes: 9,
                sha256: "c".repeat(64),
                revision: 41,
                release: "v1".into(),
                release_format: 1,
                parts: 1,
                created_at: UnixMs(5),
                baton_version: "0.1.0".into(),
            }),
            pinned: Some("rollout r1-v2 is running".into()),
        };
        let incomplete = StoredBackup {
            id: "odd".into(),
            rollout: None,
            complete: None,
            pinned: None,
        };
        for b in [complete, incomplete] {
            assert_eq!(StoredBackup::from(v1::StoredBackup::from(b.clone())), b);
        }
    }
}
