//! baton's domain vocabulary: members, roles, health, member states, reports,
//! commands, and the rollout read model ([`rollout`]).
//!
//! These are the types every other crate speaks after the wire edge. This crate
//! owns their invariants (a [`MemberId`] is never empty, a [`Report`] always
//! names its member) and does no IO; it must not depend on tonic, tokio or any
//! generated code. Conversions from the wire live in `baton-proto`.

pub mod rollout;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use rollout::{
    Audit, BackupState, BackupSummary, CommandRecord, Gate, Handover, MemberProgress, Phase,
    RevertStep, Rollout, RolloutBackup, Stage, StoredBackup, StoredBackupDetail, UnixMs,
};

/// The most bytes of a value from the wire, a config or the disk that an
/// error or a log line repeats; the rest is cut and marked ([`echo`]).
pub const ECHO_MAX: usize = 128;

/// `s` cut to at most [`ECHO_MAX`] bytes (on a char boundary), with a note
/// of how long it was when it was cut: for echoing untrusted values.
pub fn echo(s: &str) -> String {
    if s.len() <= ECHO_MAX {
        return s.to_owned();
    }
    let mut end = ECHO_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..end], s.len())
}

/// True when `s` is safe as one path component, a label or a log word: 1
/// to 128 bytes of `[A-Za-z0-9._-]`, not starting with `.` (so never `..`).
/// Release names and versions, backup ids and command ids obey it.
pub fn is_path_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The name of one cluster member, as the operator configured it (e.g. `n1`).
///
/// Non-empty, at most 128 bytes, and made only of `[A-Za-z0-9._-]`, so that it
/// is safe in file names, metric labels and log lines.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemberId(String);

/// Why a string is not a valid [`MemberId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMemberId {
    #[error("member id is empty")]
    Empty,
    /// Holds the id as [`echo`] cut it.
    #[error("member id {0:?} is longer than 128 bytes")]
    TooLong(String),
    #[error("member id {0:?} has characters outside [A-Za-z0-9._-]")]
    BadCharacters(String),
}

impl MemberId {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidMemberId> {
        let s = s.into();
        if s.is_empty() {
            return Err(InvalidMemberId::Empty);
        }
        if s.len() > 128 {
            return Err(InvalidMemberId::TooLong(echo(&s)));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(InvalidMemberId::BadCharacters(s));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MemberId {
    type Error = InvalidMemberId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<MemberId> for String {
    fn from(m: MemberId) -> Self {
        m.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl std::str::FromStr for MemberId {
    type Err = InvalidMemberId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The part a member plays in its cluster, as its agent last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Accepts writes; every other member replicates from it.
    Leader,
    /// Replicates from the leader and votes.
    Follower,
    /// Campaigning for leadership; there may be no leader right now.
    Candidate,
    /// Replicates but does not vote.
    Learner,
    /// The agent could not reach the member, so its role is unknown.
    Unknown,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Unknown => "unknown",
        })
    }
}

/// Whether a member can serve, as its agent judged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Answers and serves.
    Healthy,
    /// Answers, but cannot serve right now (e.g. knows no leader).
    Degraded,
    /// Does not answer or is not running.
    Down,
    /// Did not answer its agent's read within the poll deadline: hung,
    /// frozen (SIGSTOP) or overloaded. Not healthy, and not known down.
    Unresponsive,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Down => "down",
            Health::Unresponsive => "unresponsive",
        })
    }
}

/// Host resources next to the member, read by the agent through sysinfo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Free bytes on the filesystem holding the member's data directory.
    pub data_disk_free_bytes: u64,
    /// Free bytes on the filesystem holding the agent's state directory
    /// (its command journal): a command the agent cannot journal is refused.
    #[serde(default)]
    pub state_disk_free_bytes: u64,
}

/// What a member says about itself, as read by its agent's adapter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub role: Role,
    /// The leader this member believes in, if any.
    pub leader: Option<MemberId>,
    pub committed_revision: u64,
    pub applied_revision: u64,
    /// The release the member runs (e.g. `v2`); empty when unknown (member down).
    pub release: String,
    pub format_version: u32,
    /// Raft term (or epoch); 0 when the target has none.
    pub term: u64,
    pub health: Health,
    /// Why the member is not healthy; empty when it is.
    pub health_detail: String,
    /// The cluster-wide version, for targets that have one (etcd); empty
    /// otherwise.
    #[serde(default)]
    pub cluster_version: String,
}

impl MemberState {
    /// The state to report when a read of the member did not answer within
    /// its deadline: nothing about it is known now.
    pub fn unresponsive(detail: String) -> Self {
        MemberState {
            health: Health::Unresponsive,
            ..MemberState::unreachable(detail)
        }
    }

    /// The state to report when the member cannot be read at all.
    pub fn unreachable(detail: String) -> Self {
        MemberState {
            role: Role::Unknown,
            leader: None,
            committed_revision: 0,
            applied_revision: 0,
            release: String::new(),
            format_version: 0,
            term: 0,
            health: Health::Down,
            health_detail: detail,
            cluster_version: String::new(),
        }
    }
}

/// What an agent says about its member at one moment: the member's own
/// [`MemberState`] plus what the agent adds (resources, when it read).
///
/// Serialized flat (the state's fields beside `member`), as before the
/// state was its own type, so stored journals still read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub member: MemberId,
    #[serde(flatten)]
    pub state: MemberState,
    pub resources: Resources,
    /// The agent's wall clock when it read the member, unix milliseconds.
    pub timestamp_unix_ms: u64,
    /// What the agent's runner saw of the member's process (supervise mode).
    #[serde(default)]
    pub process: ProcessReport,
}

/// The member process's exits as the agent's runner saw them. Only the
/// supervise runner sees exits; other run modes report the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessReport {
    /// Exits the agent did not ask for since it last started the member
    /// (a `start` command resets it): a crash, or a binary that exits at once.
    pub exits_since_start: u32,
    /// How the latest of them ended (`exited with status 1`, `killed by
    /// signal SIGSEGV`); empty when there was none.
    pub last_exit: String,
}

impl Report {
    /// The parts whose change makes an agent report at once instead of
    /// waiting for the next heartbeat.
    pub fn salient(&self) -> (Role, Option<&MemberId>, &str, u32, Health, &str, u32) {
        let s = &self.state;
        (
            s.role,
            s.leader.as_ref(),
            &s.release,
            s.format_version,
            s.health,
            &s.cluster_version,
            self.process.exits_since_start,
        )
    }
}

/// The first message an agent sends on its stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub member: MemberId,
    pub cluster: String,
    pub agent_version: String,
    pub adapter_kind: String,
    /// The adapter's version rule; None from an agent older than the field
    /// (the coordinator then infers it from the member's reports).
    pub version_rule: Option<VersionRule>,
    /// The operator's own checks the member's adapter runs on each staged
    /// release before anything is stopped (the exec adapter's
    /// `[[target.checks]]`), so a dry run can list them. Empty when it has
    /// none, or from an agent older than the field.
    pub stage_checks: Vec<StageCheck>,
}

/// One operator check an agent runs at stage time, as its Hello names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StageCheck {
    pub name: String,
    /// The command line, as configured (placeholders unexpanded).
    pub command: String,
}

/// Which releases a member may move between, as its adapter states it; the
/// planner evaluates it as data. On top of any rule, no member is ever moved
/// onto a release that reads only an older data format than the member has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum VersionRule {
    /// Only the data format limits the path (samplekv).
    FormatOnly,
    /// Releases are `major.minor[.patch]` (an optional `v` prefix) and move
    /// one minor release at a time, never skipping one (etcd). A release
    /// name that does not parse is refused rather than guessed at.
    SemverOneMinor {
        /// Refuse a change of the major version.
        no_major_change: bool,
        /// Refuse a target below the cluster-wide version the member
        /// reports: the cluster may already write data it cannot read.
        not_below_cluster_version: bool,
    },
}

/// Report fixtures for tests in every crate (feature `test-util`).
#[cfg(any(test, feature = "test-util"))]
pub mod fixtures {
    use super::{Health, MemberId, MemberState, ProcessReport, Report, Resources, Role};

    /// A member id from a test literal.
    ///
    /// # Panics
    /// On an id [`MemberId::new`] refuses: a fixture bug, not a test result.
    pub fn id(s: &str) -> MemberId {
        MemberId::new(s).expect("a fixture's member id is valid")
    }

    /// A healthy member on release `v1` (format 1, term 1, no cluster
    /// version, zero resources, timestamp 0) in `role`, believing in
    /// `leader`, at the given revisions. Tests change the fields they are
    /// about.
    pub fn report(
        member: &str,
        role: Role,
        leader: Option<&str>,
        committed: u64,
        applied: u64,
    ) -> Report {
        Report {
            member: id(member),
            state: MemberState {
                role,
                leader: leader.map(id),
                committed_revision: committed,
                applied_revision: applied,
                release: "v1".into(),
                format_version: 1,
                term: 1,
                health: Health::Healthy,
                health_detail: String::new(),
                cluster_version: String::new(),
            },
            resources: Resources::default(),
            timestamp_unix_ms: 0,
            process: ProcessReport::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_validated() {
        assert_eq!(MemberId::new(""), Err(InvalidMemberId::Empty));
        assert!(matches!(
            MemberId::new("n 1"),
            Err(InvalidMemberId::BadCharacters(_))
        ));
        assert!(matches!(
            MemberId::new("x".repeat(129)),
            Err(InvalidMemberId::TooLong(_))
        ));
        assert_eq!(
            MemberId::new("etcd-1.a_b").map(|m| m.to_string()),
            Ok("etcd-1.a_b".into())
        );
    }

    #[test]
    fn action_kinds_name_the_command_without_its_arguments() {
        let release = ReleaseRef {
            name: "samplekv".into(),
            version: "v2".into(),
            format_version: 2,
            sha256: String::new(),
        };
        let kinds = [
            Action::Stage { release },
            Action::Stop,
            Action::Switch {
                version: "v2".into(),
            },
            Action::Start,
            Action::StepDown {
                to: MemberId::new("n3").unwrap(),
            },
            Action::Backup { id: "r1-b1".into() },
        ]
        .map(|a| a.kind());
        assert_eq!(
            kinds,
            ["stage", "stop", "switch", "start", "step_down", "backup"]
        );
    }

    #[test]
    fn member_ids_deserialize_through_validation() {
        let ok: Result<MemberId, _> = serde_json::from_str("\"n1\"");
        assert!(ok.is_ok());
        let bad: Result<MemberId, _> = serde_json::from_str("\"\"");
        assert!(bad.is_err());
    }

    /// A report serializes flat, as it did before [`MemberState`] was its
    /// own type, so stored snapshots written then still read.
    #[test]
    fn a_report_serializes_flat_and_reads_old_flat_json() {
        let r = fixtures::report("n2", Role::Follower, Some("n1"), 10, 9);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["member"], "n2");
        assert_eq!(v["role"], "follower");
        assert_eq!(v["leader"], "n1");
        assert_eq!(v["applied_revision"], 9);
        assert!(v.get("state").is_none(), "{v}");
        let old = r#"{"member":"n2","role":"follower","leader":"n1","committed_revision":10,
            "applied_revision":9,"release":"v1","format_version":1,"health":"healthy",
            "health_detail":"","resources":{"cpu_percent":0.0,"memory_used_bytes":0,
            "memory_total_bytes":0,"data_disk_free_bytes":0},"timestamp_unix_ms":0,"term":1}"#;
        let back: Report = serde_json::from_str(old).unwrap();
        assert_eq!(back, r);
    }
}

/// One member's row in the coordinator's fleet view, as `baton status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberRow {
    pub member: MemberId,
    /// The agent has sent at least one valid report.
    pub ever_seen: bool,
    /// The agent's stream is open now.
    pub connected: bool,
    /// Heard from within 3 heartbeats.
    pub fresh: bool,
    /// Milliseconds since the last valid report; None when never seen.
    pub last_seen_ms_ago: Option<u64>,
    /// The latest valid report.
    pub report: Option<Report>,
    /// Leader's committed revision minus this member's applied revision;
    /// None when no leader is known.
    pub lag: Option<u64>,
}

/// The coordinator's view of the whole cluster at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub cluster: String,
    /// The leader that fresh reports name (highest term wins); None if none.
    pub leader: Option<MemberId>,
    pub heartbeat_ms: u64,
    pub members: Vec<MemberRow>,
}

/// A release as commands and plans refer to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub name: String,
    pub version: String,
    /// The on-disk data format the release writes (and the newest it reads).
    pub format_version: u32,
    /// Hex sha256 of the artifact.
    pub sha256: String,
}

/// A command's id: `<rollout id>-<n>`, journaled before it is sent. An agent
/// runs an id at most once and answers a repeat with the stored result.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId(pub String);

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an agent is asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Download, verify and unpack the release while the member serves.
    Stage { release: ReleaseRef },
    /// Stop the member gracefully (escalating after the stop timeout).
    Stop,
    /// Point `current` at this release and run its migrate hook.
    Switch { version: String },
    /// Start the member.
    Start,
    /// Hand leadership to `to`.
    StepDown { to: MemberId },
    /// Take backup `id` of the member's data and upload it to the store,
    /// while the member serves.
    Backup { id: String },
    /// Replace the stopped member's data with backup `id`, read back from
    /// the store and verified part by part first. Refused while the member
    /// runs.
    Restore { id: String },
}

impl Action {
    /// The kind of command without its arguments: `stage`, `stop`,
    /// `switch`, `start`, `step_down`, `backup` or `restore` (metric labels).
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Stage { .. } => "stage",
            Action::Stop => "stop",
            Action::Switch { .. } => "switch",
            Action::Start => "start",
            Action::StepDown { .. } => "step_down",
            Action::Backup { .. } => "backup",
            Action::Restore { .. } => "restore",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Stage { release } => write!(f, "stage {}", release.version),
            Action::Stop => f.write_str("stop"),
            Action::Switch { version } => write!(f, "switch to {version}"),
            Action::Start => f.write_str("start"),
            Action::StepDown { to } => write!(f, "step down to {to}"),
            Action::Backup { id } => write!(f, "back up as {id}"),
            Action::Restore { id } => write!(f, "restore backup {id}"),
        }
    }
}

/// A command as an agent receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCommand {
    pub id: CommandId,
    pub action: Action,
    /// For `Stop`: how long to wait before SIGKILL; None = the agent's own.
    pub stop_timeout_ms: Option<u32>,
    /// For `Stop`: stop it even if it leads (a restore stops every member;
    /// there is nobody to hand over to). False for every rollout step.
    #[serde(default)]
    pub even_if_leader: bool,
    /// Who sent it: the journal and the leader's term. `None` from a
    /// coordinator that does not fence (and in journals written before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<Fence>,
}

/// The journal a command was recorded in and the term of the coordinator
/// leader that sent it. Within one journal terms only grow: a command from
/// an older term than one already seen comes from a deposed leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The journal's id (its `created` entry).
    pub journal: String,
    /// The sending leader's term.
    pub term: u64,
}

/// What the coordinator sends an agent, as domain data: the driver emits
/// these and the agent link turns them into wire messages at the edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Run (or, for a known id, answer again) this command.
    Command(AgentCommand),
    /// Report at this interval from now on.
    Cadence { every: std::time::Duration },
}

/// The words an agent's refusal to stop its member ends with when the member
/// leads by its own latest read (the agent's leader interlock): the
/// coordinator then hands leadership over instead of pausing.
pub const LEADER_REFUSAL: &str = "hand leadership over first";

/// Whether a failed command's detail is the agent's leader interlock.
pub fn is_leader_refusal(detail: &str) -> bool {
    detail.ends_with(&format!("({LEADER_REFUSAL})"))
}

/// An agent's answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    pub id: CommandId,
    /// Ok(detail) or Err(what failed and why).
    pub result: Result<String, String>,
}

/// The verdict of one preflight check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `agent`, `live`, `leader`, `health`, `release`, `format`, `lag`, `artifact`, `disk`,
    /// `state-disk`.
    pub check: String,
    pub member: Option<MemberId>,
    pub ok: bool,
    /// What was found, and for a failure what to do next.
    pub detail: String,
}
