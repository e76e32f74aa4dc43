//! Conversions for the agent link (`agent.proto`): Hello, Report, Command
//! and CommandResult between `baton.v1` wire types and domain types.
//!
//! Inbound conversions validate and name what is wrong in a typed error; they
//! never panic and never default a bad value silently. Outbound conversions
//! (`From` domain → wire) are total.

use baton_domain::{
    Action, AgentCommand, CommandId, CommandOutcome, Fence, Health, Hello, InvalidMemberId,
    MemberId, MemberState, ProcessReport, ReleaseRef, Report, Resources, Role, StageCheck,
    VersionRule,
};

use crate::v1;

/// Why a `Hello` from the wire was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHello {
    #[error("hello has a bad member id: {0}")]
    MemberId(#[from] InvalidMemberId),
    #[error("hello from member {member} has an empty cluster id")]
    EmptyCluster { member: MemberId },
    #[error(
        "hello from member {member} has a {field} of {len} bytes, more than {max}; fix the agent's config"
    )]
    TooLong {
        member: MemberId,
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "hello from member {member} names {count} stage checks, more than {max}; configure fewer [[target.checks]] on that agent"
    )]
    TooManyStageChecks {
        member: MemberId,
        count: usize,
        max: usize,
    },
    #[error(
        "hello from member {member} has a stage check whose {field} is {len} bytes (empty or more than {max}); fix that [[target.checks]] entry on the agent"
    )]
    BadStageCheck {
        member: MemberId,
        field: &'static str,
        len: usize,
        max: usize,
    },
}

/// The largest revision (or term) a report may carry: 2^63 - 1. etcd's
/// revisions and Redis's offsets are signed 64-bit, and lag arithmetic and
/// metrics stay exact below it.
pub const MAX_REVISION: u64 = i64::MAX as u64;

/// The most stage checks one Hello may name.
pub const MAX_STAGE_CHECKS: usize = 64;

/// Why a `Report` from the wire was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidReport {
    #[error("report has a bad member id: {0}")]
    MemberId(InvalidMemberId),
    #[error("report from member {member} has a bad leader id: {source}")]
    LeaderId {
        member: MemberId,
        source: InvalidMemberId,
    },
    #[error("report from member {member} has unknown role value {value}")]
    UnknownRole { member: MemberId, value: i32 },
    #[error("report from member {member} does not set its role")]
    MissingRole { member: MemberId },
    #[error("report from member {member} has unknown health value {value}")]
    UnknownHealth { member: MemberId, value: i32 },
    #[error("report from member {member} does not set its health")]
    MissingHealth { member: MemberId },
    #[error(
        "report from member {member} says applied revision {applied} > committed revision {committed}"
    )]
    AppliedAheadOfCommitted {
        member: MemberId,
        applied: u64,
        committed: u64,
    },
    #[error(
        "report from member {member} says {field} {value}, beyond {max}; no engine counts that high, so the agent's reading is wrong"
    )]
    ImplausibleRevision {
        member: MemberId,
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error("report from member {member} has a non-finite or negative cpu figure {value}")]
    BadCpu { member: MemberId, value: f32 },
    #[error(
        "report from member {member} has a {field} of {len} bytes, more than {max}; the agent must shorten it"
    )]
    TooLong {
        member: MemberId,
        field: &'static str,
        len: usize,
        max: usize,
    },
}

/// The longest free-text field a report may carry (a health detail, an exit
/// description): enough for any real message, and a bound on what one
/// agent can make the coordinator store and log.
pub const MAX_REPORT_TEXT: usize = 4096;

impl TryFrom<v1::Hello> for Hello {
    type Error = InvalidHello;

    fn try_from(h: v1::Hello) -> Result<Self, Self::Error> {
        let v1::Hello {
            member_id,
            cluster_id,
            agent_version,
            adapter_kind,
            version_rule,
            stage_checks,
        } = h;
        let member = MemberId::new(member_id)?;
        if cluster_id.is_empty() {
            return Err(InvalidHello::EmptyCluster { member });
        }
        for (field, text) in [
            ("cluster id", &cluster_id),
            ("agent version", &agent_version),
            ("adapter kind", &adapter_kind),
        ] {
            if text.len() > baton_domain::ECHO_MAX {
                return Err(InvalidHello::TooLong {
                    member,
                    field,
                    len: text.len(),
                    max: baton_domain::ECHO_MAX,
                });
            }
        }
        if stage_checks.len() > MAX_STAGE_CHECKS {
            return Err(InvalidHello::TooManyStageChecks {
                member,
                count: stage_checks.len(),
                max: MAX_STAGE_CHECKS,
            });
        }
        let mut checks = Vec::with_capacity(stage_checks.len());
        for v1::StageCheck { name, command } in stage_checks {
            for (field, text) in [("name", &name), ("command", &command)] {
                if text.is_empty() || text.len() > MAX_REPORT_TEXT {
                    return Err(InvalidHello::BadStageCheck {
                        member,
                        field,
                        len: text.len(),
                        max: MAX_REPORT_TEXT,
                    });
                }
            }
            checks.push(StageCheck { name, command });
        }
        Ok(Hello {
            member,
            cluster: cluster_id,
            agent_version,
            adapter_kind,
            version_rule: version_rule.and_then(version_rule_from_wire),
            stage_checks: checks,
        })
    }
}

impl From<Hello> for v1::Hello {
    fn from(h: Hello) -> Self {
        let Hello {
            member,
            cluster,
            agent_version,
            adapter_kind,
            version_rule,
            stage_checks,
        } = h;
        v1::Hello {
            member_id: member.into(),
            cluster_id: cluster,
            agent_version,
            adapter_kind,
            version_rule: version_rule.map(version_rule_to_wire),
            stage_checks: stage_checks
                .into_iter()
                .map(|StageCheck { name, command }| v1::StageCheck { name, command })
                .collect(),
        }
    }
}

/// A wire version rule, or None when it names no rule this build knows (a
/// newer agent's): the coordinator then infers the rule, as for an agent
/// that sends none.
fn version_rule_from_wire(r: v1::VersionRule) -> Option<VersionRule> {
    let v1::VersionRule { rule } = r;
    match rule? {
        v1::version_rule::Rule::FormatOnly(v1::FormatOnly {}) => Some(VersionRule::FormatOnly),
        v1::version_rule::Rule::SemverOneMinor(v1::SemverOneMinor {
            no_major_change,
            not_below_cluster_version,
        }) => Some(VersionRule::SemverOneMinor {
            no_major_change,
            not_below_cluster_version,
        }),
    }
}

fn version_rule_to_wire(r: VersionRule) -> v1::VersionRule {
    let rule = match r {
        VersionRule::FormatOnly => v1::version_rule::Rule::FormatOnly(v1::FormatOnly {}),
        VersionRule::SemverOneMinor {
            no_major_change,
            not_below_cluster_version,
        } => v1::version_rule::Rule::SemverOneMinor(v1::SemverOneMinor {
            no_major_change,
            not_below_cluster_version,
        }),
    };
    v1::VersionRule { rule: Some(rule) }
}

fn role_from_wire(member: &MemberId, value: i32) -> Result<Role, InvalidReport> {
    match v1::Role::try_from(value) {
        Ok(v1::Role::Leader) => Ok(Role::Leader),
        Ok(v1::Role::Follower) => Ok(Role::Follower),
        Ok(v1::Role::Candidate) => Ok(Role::Candidate),
        Ok(v1::Role::Learner) => Ok(Role::Learner),
        Ok(v1::Role::Unknown) => Ok(Role::Unknown),
        Ok(v1::Role::Unspecified) => Err(InvalidReport::MissingRole {
            member: member.clone(),
        }),
        Err(_) => Err(InvalidReport::UnknownRole {
            member: member.clone(),
            value,
        }),
    }
}

fn health_from_wire(member: &MemberId, value: i32) -> Result<Health, InvalidReport> {
    match v1::Health::try_from(value) {
        Ok(v1::Health::Healthy) => Ok(Health::Healthy),
        Ok(v1::Health::Degraded) => Ok(Health::Degraded),
        Ok(v1::Health::Down) => Ok(Health::Down),
        Ok(v1::Health::Unresponsive) => Ok(Health::Unresponsive),
        Ok(v1::Health::Unspecified) => Err(InvalidReport::MissingHealth {
            member: member.clone(),
        }),
        Err(_) => Err(InvalidReport::UnknownHealth {
            member: member.clone(),
            value,
        }),
    }
}

impl From<Role> for v1::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Leader => v1::Role::Leader,
            Role::Follower => v1::Role::Follower,
            Role::Candidate => v1::Role::Candidate,
            Role::Learner => v1::Role::Learner,
            Role::Unknown => v1::Role::Unknown,
        }
    }
}

impl From<Health> for v1::Health {
    fn from(h: Health) -> Self {
        match h {
            Health::Healthy => v1::Health::Healthy,
            Health::Degraded => v1::Health::Degraded,
            Health::Down => v1::Health::Down,
            Health::Unresponsive => v1::Health::Unresponsive,
        }
    }
}

impl TryFrom<v1::Report> for Report {
    type Error = InvalidReport;

    fn try_from(r: v1::Report) -> Result<Self, Self::Error> {
        let v1::Report {
            member_id,
            role,
            leader_id,
            committed_revision,
            applied_revision,
            release_version,
            format_version,
            health,
            health_detail,
            resources,
            timestamp_unix_ms,
            term,
            cluster_version,
            process,
        } = r;
        let member = MemberId::new(member_id).map_err(InvalidReport::MemberId)?;
        let role = role_from_wire(&member, role)?;
        let health = health_from_wire(&member, health)?;
        let leader = if leader_id.is_empty() {
            None
        } else {
            Some(
                MemberId::new(leader_id).map_err(|source| InvalidReport::LeaderId {
                    member: member.clone(),
                    source,
                })?,
            )
        };
        for (field, value) in [
            ("committed revision", committed_revision),
            ("applied revision", applied_revision),
            ("term", term),
        ] {
            if value > MAX_REVISION {
                return Err(InvalidReport::ImplausibleRevision {
                    member,
                    field,
                    value,
                    max: MAX_REVISION,
                });
            }
        }
        if applied_revision > committed_revision {
            return Err(InvalidReport::AppliedAheadOfCommitted {
                member,
                applied: applied_revision,
                committed: committed_revision,
            });
        }
        for (field, text) in [
            ("health_detail", &health_detail),
            ("cluster_version", &cluster_version),
            ("release_version", &release_version),
        ] {
            if text.len() > MAX_REPORT_TEXT {
                return Err(InvalidReport::TooLong {
                    member,
                    field,
                    len: text.len(),
                    max: MAX_REPORT_TEXT,
                });
            }
        }
        let process = match process {
            None => ProcessReport::default(),
            Some(v1::Process {
                exits_since_start,
                last_exit,
            }) => {
                if last_exit.len() > MAX_REPORT_TEXT {
                    return Err(InvalidReport::TooLong {
                        member,
                        field: "process.last_exit",
                        len: last_exit.len(),
                        max: MAX_REPORT_TEXT,
                    });
                }
                ProcessReport {
                    exits_since_start,
                    last_exit,
                }
            }
        };
        let resources = match resources {
            None => Resources::default(),
            Some(v1::Resources {
                cpu_percent,
                memory_used_bytes,
                memory_total_bytes,
                data_disk_free_bytes,
                state_disk_free_bytes,
            }) => {
                if !cpu_percent.is_finite() || cpu_percent < 0.0 {
                    return Err(InvalidReport::BadCpu {
                        member,
                        value: cpu_percent,
                    });
                }
                Resources {
                    cpu_percent,
                    memory_used_bytes,
                    memory_total_bytes,
                    data_disk_free_bytes,
                    state_disk_free_bytes,
                }
            }
        };
        Ok(Report {
            member,
            state: MemberState {
                role,
                leader,
                committed_revision,
                applied_revision,
                release: release_version,
                format_version,
                term,
                health,
                health_detail,
                cluster_version,
            },
            resources,
            timestamp_unix_ms,
            process,
        })
    }
}

impl From<Report> for v1::Report {
    fn from(r: Report) -> Self {
        let Report {
            member,
            state:
                MemberState {
                    role,
                    leader,
                    committed_revision,
                    applied_revision,
                    release,
                    format_version,
                    term,
                    health,
                    health_detail,
                    cluster_version,
                },
            resources,
            timestamp_unix_ms,
            process,
        } = r;
        let Resources {
            cpu_percent,
            memory_used_bytes,
            memory_total_bytes,
            data_disk_free_bytes,
            state_disk_free_bytes,
        } = resources;
        v1::Report {
            member_id: member.into(),
            role: v1::Role::from(role) as i32,
            leader_id: leader.map(String::from).unwrap_or_default(),
            committed_revision,
            applied_revision,
            release_version: release,
            format_version,
            health: v1::Health::from(health) as i32,
            health_detail,
            resources: Some(v1::Resources {
                cpu_percent,
                memory_used_bytes,
                memory_total_bytes,
                data_disk_free_bytes,
                state_disk_free_bytes,
            }),
            timestamp_unix_ms,
            term,
            cluster_version,
            process: Some(v1::Process {
                exits_since_start: process.exits_since_start,
                last_exit: process.last_exit,
            }),
        }
    }
}

/// Why a `Command` from the wire was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    #[error("command id {id:?} is not 1 to 128 characters of [A-Za-z0-9._-]")]
    BadId { id: String },
    #[error(
        "command {id}: release {field} {value:?} is not 1 to 128 characters of [A-Za-z0-9._-] (not starting with '.'); refused, nothing touched"
    )]
    BadName {
        id: String,
        field: &'static str,
        value: String,
    },
    #[error("command has an empty id")]
    EmptyId,
    #[error("command {id} has no step")]
    NoStep { id: String },
    #[error("command {id} is a no-op, which carries no action")]
    Noop { id: String },
    #[error("command {id} names a bad member: {source}")]
    Member { id: String, source: InvalidMemberId },
    #[error("command {id}: stage needs a name, a version and a 64-hex-digit sha256")]
    BadStage { id: String },
    #[error("command {id}: switch needs a version")]
    BadSwitch { id: String },
    #[error(
        "command {id}: backup id {backup:?} must be 1-128 of [A-Za-z0-9._-], not starting with '.'"
    )]
    BadBackup { id: String, backup: String },
    #[error("result {id} has unknown outcome value {value}")]
    UnknownOutcome { id: String, value: i32 },
}

/// A backup id: 1-128 of `[A-Za-z0-9._-]`, not starting with `.` (it names
/// a store key and a scratch file).
fn backup_id_ok(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 128
        && !b.starts_with('.')
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

impl TryFrom<v1::Command> for AgentCommand {
    type Error = InvalidCommand;

    fn try_from(c: v1::Command) -> Result<Self, Self::Error> {
        use v1::command::Step;
        let v1::Command {
            id,
            step,
            journal,
            term,
        } = c;
        if id.is_empty() {
            return Err(InvalidCommand::EmptyId);
        }
        if !baton_domain::is_path_name(&id) {
            return Err(InvalidCommand::BadId {
                id: baton_domain::echo(&id),
            });
        }
        let mut stop_timeout_ms = None;
        let mut stop_even_if_leader = false;
        let action = match step {
            None => return Err(InvalidCommand::NoStep { id }),
            Some(Step::Noop(v1::Noop {})) => return Err(InvalidCommand::Noop { id }),
            Some(Step::Stage(v1::Stage {
                name,
                version,
                format_version,
                sha256,
            })) => {
                let hex = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
                if name.is_empty() || version.is_empty() || !hex {
                    return Err(InvalidCommand::BadStage { id });
                }
                for (field, value) in [("name", &name), ("version", &version)] {
                    if !baton_domain::is_path_name(value) {
                        return Err(InvalidCommand::BadName {
                            id,
                            field,
                            value: baton_domain::echo(value),
                        });
                    }
                }
                Action::Stage {
                    release: ReleaseRef {
                        name,
                        version,
                        format_version,
                        sha256,
                    },
                }
            }
            Some(Step::Stop(v1::Stop {
                timeout_ms,
                even_if_leader,
            })) => {
                stop_timeout_ms = (timeout_ms > 0).then_some(timeout_ms);
                stop_even_if_leader = even_if_leader;
                Action::Stop
            }
            Some(Step::Switch(v1::Switch { version })) => {
                if version.is_empty() {
                    return Err(InvalidCommand::BadSwitch { id });
                }
                if !baton_domain::is_path_name(&version) {
                    return Err(InvalidCommand::BadName {
                        id,
                        field: "version",
                        value: baton_domain::echo(&version),
                    });
                }
                Action::Switch { version }
            }
            Some(Step::Start(v1::Start {})) => Action::Start,
            Some(Step::Backup(v1::Backup { id: backup })) => {
                if !backup_id_ok(&backup) {
                    return Err(InvalidCommand::BadBackup { id, backup });
                }
                Action::Backup { id: backup }
            }
            Some(Step::Restore(v1::Restore { id: backup })) => {
                if !backup_id_ok(&backup) {
                    return Err(InvalidCommand::BadBackup { id, backup });
                }
                Action::Restore { id: backup }
            }
            Some(Step::StepDown(v1::StepDown { to_member_id })) => Action::StepDown {
                to: MemberId::new(to_member_id).map_err(|source| InvalidCommand::Member {
                    id: id.clone(),
                    source,
                })?,
            },
        };
        // A fence names its journal; a term without one (or none at all,
        // from a coordinator that does not fence) is no fence.
        let fence = (!journal.is_empty()).then_some(Fence { journal, term });
        Ok(AgentCommand {
            id: CommandId(id),
            action,
            stop_timeout_ms,
            even_if_leader: stop_even_if_leader,
            fence,
        })
    }
}

impl From<AgentCommand> for v1::Command {
    fn from(c: AgentCommand) -> Self {
        use v1::command::Step;
        let AgentCommand {
            id,
            action,
            stop_timeout_ms,
            even_if_leader,
            fence,
        } = c;
        let step = match action {
            Action::Stage { release } => {
                let ReleaseRef {
                    name,
                    version,
                    format_version,
                    sha256,
                } = release;
                Step::Stage(v1::Stage {
                    name,
                    version,
                    format_version,
                    sha256,
                })
            }
            Action::Stop => Step::Stop(v1::Stop {
                timeout_ms: stop_timeout_ms.unwrap_or(0),
                even_if_leader,
            }),
            Action::Switch { version } => Step::Switch(v1::Switch { version }),
            Action::Start => Step::Start(v1::Start {}),
            Action::StepDown { to } => Step::StepDown(v1::StepDown {
                to_member_id: to.into(),
            }),
            Action::Backup { id } => Step::Backup(v1::Backup { id }),
            Action::Restore { id } => Step::Restore(v1::Restore { id }),
        };
        let (journal, term) = fence.map_or((String::new(), 0), |f| (f.journal, f.term));
        v1::Command {
            id: id.0,
            step: Some(step),
            journal,
            term,
        }
    }
}

impl TryFrom<v1::CommandResult> for CommandOutcome {
    type Error = InvalidCommand;

    fn try_from(r: v1::CommandResult) -> Result<Self, Self::Error> {
        let v1::CommandResult {
            id,
            outcome,
            detail,
        } = r;
        if id.is_empty() {
            return Err(InvalidCommand::EmptyId);
        }
        let result = match v1::Outcome::try_from(outcome) {
            Ok(v1::Outcome::Ok) => Ok(detail),
            Ok(v1::Outcome::Failed) => Err(detail),
            _ => return Err(InvalidCommand::UnknownOutcome { id, value: outcome }),
        };
        Ok(CommandOutcome {
            id: CommandId(id),
            result,
        })
    }
}

impl From<CommandOutcome> for v1::CommandResult {
    fn from(o: CommandOutcome) -> Self {
        let CommandOutcome { id, result } = o;
        let (outcome, detail) = match result {
            Ok(d) => (v1::Outcome::Ok, d),
            Err(d) => (v1::Outcome::Failed, d),
        };
        v1::CommandResult {
            id: id.0,
            outcome: outcome as i32,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> v1::Report {
        v1::Report {
            member_id: "n1".into(),
            role: v1::Role::Follower as i32,
            leader_id: "n2".into(),
            committed_revision: 10,
            applied_revision: 9,
            release_version: "v1".into(),
            format_version: 1,
            health: v1::Health::Healthy as i32,
            health_detail: String::new(),
            resources: None,
            timestamp_unix_ms: 1,
            term: 3,
            cluster_version: String::new(),
            process: Some(v1::Process {
                exits_since_start: 2,
                last_exit: "exited with exit status: 1".into(),
            }),
        }
    }

    #[test]
    fn a_good_report_round_trips() {
        let domain = Report::try_from(good()).unwrap();
        assert_eq!(domain.state.role, Role::Follower);
        assert_eq!(domain.state.leader.as_ref().map(|m| m.as_str()), Some("n2"));
        assert_eq!(domain.process.exits_since_start, 2);
        let back = v1::Report::from(domain.clone());
        assert_eq!(Report::try_from(back).unwrap(), domain);
    }

    #[test]
    fn unresponsive_health_round_trips_and_overlong_text_is_refused() {
        let r = v1::Report {
            health: v1::Health::Unresponsive as i32,
            ..good()
        };
        assert_eq!(
            Report::try_from(r).unwrap().state.health,
            Health::Unresponsive
        );
        let long = "x".repeat(MAX_REPORT_TEXT + 1);
        let r = v1::Report {
            health_detail: long.clone(),
            ..good()
        };
        let e = Report::try_from(r).unwrap_err();
        assert!(
            e.to_string().contains("member n1") && e.to_string().contains("health_detail"),
            "{e}"
        );
        let r = v1::Report {
            process: Some(v1::Process {
                exits_since_start: 1,
                last_exit: long,
            }),
            ..good()
        };
        assert!(matches!(
            Report::try_from(r),
            Err(InvalidReport::TooLong {
                field: "process.last_exit",
                ..
            })
        ));
        // An older agent sends no process: no exits.
        let r = v1::Report {
            process: None,
            ..good()
        };
        assert_eq!(
            Report::try_from(r).unwrap().process,
            ProcessReport::default()
        );
    }

    #[test]
    fn bad_reports_name_what_is_wrong() {
        let cases: Vec<(v1::Report, &str)> = vec![
            (
                v1::Report { role: 99, ..good() },
                "report from member n1 has unknown role value 99",
            ),
            (
                v1::Report { role: 0, ..good() },
                "report from member n1 does not set its role",
            ),
            (
                v1::Report {
                    member_id: String::new(),
                    ..good()
                },
                "report has a bad member id: member id is empty",
            ),
            (
                v1::Report {
                    health: 42,
                    ..good()
                },
                "report from member n1 has unknown health value 42",
            ),
            (
                v1::Report {
                    applied_revision: 11,
                    ..good()
                },
                "report from member n1 says applied revision 11 > committed revision 10",
            ),
            (
                v1::Report {
                    leader_id: "a b".into(),
                    ..good()
                },
                "report from member n1 has a bad leader id: member id \"a b\" has characters outside [A-Za-z0-9._-]",
            ),
        ];
        for (wire, want) in cases {
            assert_eq!(Report::try_from(wire).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn commands_round_trip_and_bad_ones_are_named() {
        let cmds = [
            Action::Stage {
                release: ReleaseRef {
                    name: "kv".into(),
                    version: "v2".into(),
                    format_version: 2,
                    sha256: "a".repeat(64),
                },
            },
            Action::Stop,
            Action::Switch {
                version: "v2".into(),
            },
            Action::Start,
            Action::StepDown {
                to: MemberId::new("n3").unwrap(),
            },
            Action::Backup { id: "r-b1".into() },
            Action::Restore { id: "r-b1".into() },
        ];
        for action in cmds {
            let c = AgentCommand {
                id: CommandId("r-1".into()),
                action,
                stop_timeout_ms: None,
                even_if_leader: false,
                fence: None,
            };
            assert_eq!(
                AgentCommand::try_from(v1::Command::from(c.clone())).unwrap(),
                c
            );
        }
        // A restore's stop of the whole cluster keeps its flag and timeout.
        let c = AgentCommand {
            id: CommandId("r-9".into()),
            action: Action::Stop,
            stop_timeout_ms: Some(5000),
            even_if_leader: true,
            fence: Some(Fence {
                journal: "0a1b2c3d4e5f".into(),
                term: 7,
            }),
        };
        assert_eq!(
            AgentCommand::try_from(v1::Command::from(c.clone())).unwrap(),
            c
        );
        let bad = v1::Command {
            id: "r-2".into(),
            step: Some(v1::command::Step::Stage(v1::Stage {
                name: "kv".into(),
                version: "v2".into(),
                format_version: 1,
                sha256: "xyz".into(),
            })),
            ..Default::default()
        };
        assert_eq!(
            AgentCommand::try_from(bad).unwrap_err().to_string(),
            "command r-2: stage needs a name, a version and a 64-hex-digit sha256"
        );
        for backup in ["", "../x", ".x", "a/b"] {
            let bad = v1::Command {
                id: "r-3".into(),
                step: Some(v1::command::Step::Backup(v1::Backup { id: backup.into() })),
                ..Default::default()
            };
            assert!(
                matches!(
                    AgentCommand::try_from(bad),
                    Err(InvalidCommand::BadBackup { .. })
                ),
                "{backup:?}"
            );
            let bad = v1::Command {
                id: "r-4".into(),
                step: Some(v1::command::Step::Restore(v1::Restore {
                    id: backup.into(),
                })),
                ..Default::default()
            };
            assert!(
                matches!(
                    AgentCommand::try_from(bad),
                    Err(InvalidCommand::BadBackup { .. })
                ),
                "{backup:?}"
            );
        }
        let empty = v1::Command {
            id: String::new(),
            ..Default::default()
        };
        assert_eq!(
            AgentCommand::try_from(empty).unwrap_err(),
            InvalidCommand::EmptyId
        );
    }

    #[test]
    fn hello_needs_member_and_cluster() {
        let h = v1::Hello {
            member_id: "n1".into(),
            cluster_id: String::new(),
            agent_version: "0.1.0".into(),
            adapter_kind: "samplekv".into(),
            version_rule: None,
            stage_checks: Vec::new(),
        };
        assert_eq!(
            Hello::try_from(h.clone()).unwrap_err().to_string(),
            "hello from member n1 has an empty cluster id"
        );
        let long = "x".repeat(1 << 20);
        for field in ["cluster id", "agent version", "adapter kind"] {
            let mut bad = v1::Hello {
                cluster_id: "e2e".into(),
                ..h.clone()
            };
            match field {
                "cluster id" => bad.cluster_id = long.clone(),
                "agent version" => bad.agent_version = long.clone(),
                _ => bad.adapter_kind = long.clone(),
            }
            let err = Hello::try_from(bad).unwrap_err().to_string();
            assert!(
                err.contains(field) && err.contains("1048576 bytes") && err.len() < 200,
                "{err}"
            );
        }
        let huge_id = v1::Hello {
            member_id: long.clone(),
            ..h
        };
        let err = Hello::try_from(huge_id).unwrap_err().to_string();
        assert!(
            err.contains("longer than 128 bytes") && err.len() < 300,
            "the refusal repeats {} bytes of the id",
            err.len()
        );
    }

    #[test]
    fn a_hello_carries_its_stage_checks_within_bounds() {
        let check = |name: &str, command: &str| v1::StageCheck {
            name: name.into(),
            command: command.into(),
        };
        let hello = |stage_checks| v1::Hello {
            member_id: "n1".into(),
            cluster_id: "c1".into(),
            agent_version: "0.1.0".into(),
            adapter_kind: "exec".into(),
            version_rule: None,
            stage_checks,
        };
        let ok = Hello::try_from(hello(vec![check("doctor", "[\"z4j\", \"doctor\"]")])).unwrap();
        assert_eq!(
            ok.stage_checks,
            [StageCheck {
                name: "doctor".into(),
                command: "[\"z4j\", \"doctor\"]".into()
            }]
        );
        assert_eq!(Hello::try_from(v1::Hello::from(ok.clone())), Ok(ok));
        let err = Hello::try_from(hello(vec![check("x", "true"); MAX_STAGE_CHECKS + 1]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("names 65 stage checks, more than 64"), "{err}");
        for (bad, field) in [
            (check("", "true"), "name"),
            (check("x", ""), "command"),
            (check("x", &"y".repeat(MAX_REPORT_TEXT + 1)), "command"),
        ] {
            let err = Hello::try_from(hello(vec![bad])).unwrap_err().to_string();
            assert!(
                err.contains(&format!("member n1 has a stage check whose {field}")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_hello_carries_its_version_rule_and_an_older_one_none() {
        for rule in [
            None,
            Some(VersionRule::FormatOnly),
            Some(VersionRule::SemverOneMinor {
                no_major_change: true,
                not_below_cluster_version: false,
            }),
        ] {
            let h = Hello {
                member: MemberId::new("n1").unwrap(),
                cluster: "c1".into(),
                agent_version: "0.1.0".into(),
                adapter_kind: "etcd".into(),
                version_rule: rule,
                stage_checks: Vec::new(),
            };
            assert_eq!(Hello::try_from(v1::Hello::from(h.clone())), Ok(h));
        }
        let unknown = v1::Hello {
            member_id: "n1".into(),
            cluster_id: "c1".into(),
            agent_version: "0.9.0".into(),
            adapter_kind: "etcd".into(),
            version_rule: Some(v1::VersionRule { rule: None }),
            stage_checks: Vec::new(),
        };
        assert_eq!(Hello::try_from(unknown).unwrap().version_rule, None);
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;

    fn command(id: &str, step: v1::command::Step) -> v1::Command {
        v1::Command {
            id: id.into(),
            step: Some(step),
            ..Default::default()
        }
    }

    #[test]
    fn names_that_are_paths_are_refused_at_the_edge() {
        use v1::command::Step;
        let sha = "a".repeat(64);
        let long = "v".repeat(10 * 1024);
        for bad in [
            "../../etc",
            "v2/../v1",
            ".hidden",
            "v1;rm -rf /",
            long.as_str(),
        ] {
            let stage = command(
                "r1-v2-1",
                Step::Stage(v1::Stage {
                    name: "kv".into(),
                    version: bad.into(),
                    format_version: 1,
                    sha256: sha.clone(),
                }),
            );
            let err = AgentCommand::try_from(stage).unwrap_err();
            assert!(
                matches!(err, InvalidCommand::BadName { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().len() < 400, "{err}");
            let named = command(
                "r1-v2-1",
                Step::Stage(v1::Stage {
                    name: bad.into(),
                    version: "v2".into(),
                    format_version: 1,
                    sha256: sha.clone(),
                }),
            );
            assert!(matches!(
                AgentCommand::try_from(named),
                Err(InvalidCommand::BadName { field: "name", .. })
            ));
            let switch = command(
                "r1-v2-2",
                Step::Switch(v1::Switch {
                    version: bad.into(),
                }),
            );
            assert!(matches!(
                AgentCommand::try_from(switch),
                Err(InvalidCommand::BadName {
                    field: "version",
                    ..
                })
            ));
            let id = command(bad, Step::Start(v1::Start {}));
            assert!(matches!(
                AgentCommand::try_from(id),
                Err(InvalidCommand::BadId { .. })
            ));
        }
    }

    #[test]
    fn revisions_beyond_i64_are_refused() {
        let report = v1::Report {
            member_id: "n2".into(),
            role: v1::Role::Follower as i32,
            leader_id: "n1".into(),
            committed_revision: u64::MAX,
            applied_revision: 5,
            release_version: "v1".into(),
            format_version: 1,
            health: v1::Health::Healthy as i32,
            ..Default::default()
        };
        let err = Report::try_from(report.clone()).unwrap_err();
        assert!(
            matches!(err, InvalidReport::ImplausibleRevision { .. }),
            "{err}"
        );
        let ok = v1::Report {
            committed_revision: MAX_REVISION,
            ..report
        };
        assert!(Report::try_from(ok).is_ok());
    }
}
