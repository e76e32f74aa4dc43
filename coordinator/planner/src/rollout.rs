//! The rollout as an event-sourced state machine.
//!
//! [`RolloutState::apply`] is pure and is the only thing that changes a
//! rollout: the coordinator appends each [`Event`] to its journal first and
//! applies it second, so replaying the journal rebuilds the same state after
//! a crash. Per-member progress is one [`Stage`] enum whose transitions are
//! methods. The data types a rollout is made of (and the [`Rollout`] read
//! model the operator sees) live in `baton_domain::rollout` and are
//! re-exported here.

use std::collections::BTreeMap;

use baton_domain::MemberId;
pub use baton_domain::rollout::{
    Audit, BackupState, BackupSummary, CommandRecord, Gate, Handover, MemberProgress, Phase,
    RevertStep, Rollout, RolloutBackup, Stage,
};
pub use baton_domain::{Action, CommandId};
use serde::{Deserialize, Serialize};

use crate::{ReleaseRef, UnixMs};

/// Everything that can happen to a rollout. Appended to the journal before
/// it is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// Preflight passed; the order and the starting leader are fixed.
    Started {
        id: String,
        target: ReleaseRef,
        previous: String,
        order: Vec<MemberId>,
        leader: MemberId,
        at: UnixMs,
        /// The id of the journal that records this rollout, carried in
        /// every command and backup id it makes, so no id repeats even
        /// after a journal is lost and created anew. Absent in journals
        /// written before journals had ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        journal: Option<String>,
        /// Who asked for it (`operator/<name>`, or `local` on plaintext
        /// loopback); absent when baton itself decided, and in journals
        /// written before actors were recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    CommandIssued {
        id: CommandId,
        member: MemberId,
        action: Action,
        at: UnixMs,
    },
    CommandSucceeded {
        id: CommandId,
        detail: String,
        at: UnixMs,
    },
    CommandFailed {
        id: CommandId,
        detail: String,
        at: UnixMs,
    },
    GatePassed {
        member: MemberId,
        gate: Gate,
        at: UnixMs,
    },
    /// A gate failed on the target release: go back to the previous one.
    GateFailed {
        member: MemberId,
        gate: Gate,
        reason: String,
        at: UnixMs,
    },
    HandoverConfirmed {
        to: MemberId,
        at: UnixMs,
    },
    /// Why a handover target was picked: every candidate's recent lag as the
    /// planner saw it. Recorded for the operator and tests; changes nothing.
    HandoverPicked {
        to: MemberId,
        lags: Vec<(MemberId, u64)>,
        at: UnixMs,
    },
    Paused {
        reason: String,
        at: UnixMs,
        /// Who asked for it (`operator/<name>`, or `local` on plaintext
        /// loopback); absent when baton itself decided, and in journals
        /// written before actors were recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The operator asked to pause while a member was between stop and
    /// healthy: carry it on (or back), then pause with `reason`.
    PauseRequested {
        reason: String,
        at: UnixMs,
        /// Who asked for it (`operator/<name>`, or `local` on plaintext
        /// loopback); absent when baton itself decided, and in journals
        /// written before actors were recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    Resumed {
        at: UnixMs,
        /// Who asked for it (`operator/<name>`, or `local` on plaintext
        /// loopback); absent when baton itself decided, and in journals
        /// written before actors were recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    AbortRequested {
        at: UnixMs,
        /// Who asked for it (`operator/<name>`, or `local` on plaintext
        /// loopback); absent when baton itself decided, and in journals
        /// written before actors were recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    Completed {
        at: UnixMs,
    },
    /// The operator ended a paused rollout without finishing it.
    Closed {
        reason: String,
        at: UnixMs,
        /// Who asked for it (`operator/<name>`, or `local` on plaintext
        /// loopback); absent when baton itself decided, and in journals
        /// written before actors were recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The coordinator re-read the backup from the store and every part
    /// matched its manifest.
    BackupVerified {
        summary: BackupSummary,
        at: UnixMs,
    },
    /// The backup could not be verified in the store.
    BackupFailed {
        id: String,
        reason: String,
        at: UnixMs,
    },
    /// The rollout goes on without a backup (`backup = "off"`, or a failed
    /// one under `"optional"`).
    BackupSkipped {
        reason: String,
        at: UnixMs,
    },
    /// Right after `Started`: this rollout is `baton restore` of backup
    /// `backup`, which holds `revision`, onto the release it was taken on
    /// (the rollout's target). Every member is stopped, restored, switched
    /// and started; see [`crate::restore`].
    RestorePlanned {
        backup: String,
        revision: u64,
        at: UnixMs,
    },
}

/// What a restore rollout puts back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePlan {
    pub backup: String,
    /// The revision the backup holds; every member must reach it.
    pub revision: u64,
}

/// A rollout: target, order, per-member progress, commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    pub id: String,
    pub target: ReleaseRef,
    pub previous: String,
    /// Followers (most lagging first, then by id), then the starting leader.
    pub order: Vec<MemberId>,
    pub original_leader: MemberId,
    pub phase: Phase,
    pub members: BTreeMap<MemberId, MemberProgress>,
    pub commands: BTreeMap<CommandId, CommandRecord>,
    pub next_command: u64,
    pub handover: Option<Handover>,
    pub leader_changes: Vec<(MemberId, UnixMs)>,
    pub started_at: UnixMs,
    pub completed_at: Option<UnixMs>,
    /// The journal's id (see `Event::Started`), in every id this rollout
    /// makes.
    #[serde(default)]
    pub journal: Option<String>,
    /// The pre-upgrade backup.
    #[serde(default)]
    pub backup: RolloutBackup,
    /// Set when this rollout is a restore (`Event::RestorePlanned`).
    #[serde(default)]
    pub restore: Option<RestorePlan>,
    /// Who asked for each control event ([`Event::audit`]), in order.
    #[serde(default)]
    pub audit: Vec<Audit>,
}

/// An event that does not fit the state it was applied to. Replaying a
/// journal written by `apply`'s own caller never produces one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("the first event of a rollout must be Started, got {0}")]
    NotStarted(String),
    #[error("event names member {0}, which is not in the rollout")]
    UnknownMember(MemberId),
    #[error("event names command {0}, which was never issued")]
    UnknownCommand(CommandId),
    #[error("command {0} was issued twice")]
    DuplicateCommand(CommandId),
}

impl Event {
    /// This event with `actor` recorded as who asked for it: for the
    /// control events (started, paused, pause requested, resumed, abort
    /// requested, closed); any other event is returned as it is.
    pub fn asked_by(mut self, actor: &str) -> Event {
        match &mut self {
            Event::Started { by, .. }
            | Event::Paused { by, .. }
            | Event::PauseRequested { by, .. }
            | Event::Resumed { by, .. }
            | Event::AbortRequested { by, .. }
            | Event::Closed { by, .. } => *by = Some(actor.to_owned()),
            _ => {}
        }
        self
    }

    /// The audit line this event adds, when someone asked for it.
    pub fn audit(&self) -> Option<Audit> {
        let (what, by, at) = match self {
            Event::Started { by, at, .. } => ("started", by, at),
            Event::Paused { by, at, .. } => ("paused", by, at),
            Event::PauseRequested { by, at, .. } => ("pause requested", by, at),
            Event::Resumed { by, at } => ("resumed", by, at),
            Event::AbortRequested { by, at } => ("abort requested", by, at),
            Event::Closed { by, at, .. } => ("closed", by, at),
            _ => return None,
        };
        Some(Audit {
            what: what.to_owned(),
            by: by.clone()?,
            at: *at,
        })
    }
}

impl RolloutState {
    /// Builds the state from its first event.
    pub fn start(event: &Event) -> Result<RolloutState, ApplyError> {
        let Event::Started {
            by: _,
            id,
            target,
            previous,
            order,
            leader,
            at,
            journal,
        } = event
        else {
            return Err(ApplyError::NotStarted(format!("{event:?}")));
        };
        Ok(RolloutState {
            id: id.clone(),
            target: target.clone(),
            previous: previous.clone(),
            order: order.clone(),
            original_leader: leader.clone(),
            phase: Phase::Running,
            members: order
                .iter()
                .map(|m| {
                    (
                        m.clone(),
                        MemberProgress {
                            stage: Stage::Pending,
                            inflight: None,
                            started_at: None,
                            finished_at: None,
                        },
                    )
                })
                .collect(),
            commands: BTreeMap::new(),
            next_command: 1,
            handover: None,
            leader_changes: Vec::new(),
            started_at: *at,
            journal: journal.clone(),
            completed_at: None,
            backup: RolloutBackup::default(),
            audit: event.audit().into_iter().collect(),
            restore: None,
        })
    }

    /// Replays a journal.
    pub fn replay<'a>(
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<Option<RolloutState>, ApplyError> {
        let mut state: Option<RolloutState> = None;
        for e in events {
            match (&mut state, e) {
                (_, Event::Started { .. }) => state = Some(RolloutState::start(e)?),
                (Some(s), e) => s.apply(e)?,
                (None, e) => return Err(ApplyError::NotStarted(format!("{e:?}"))),
            }
        }
        Ok(state)
    }

    /// The agent's answer to backup command `command` (backup `backup`,
    /// taken on `member`), if it is the one the rollout waits for.
    fn backup_answered(
        &mut self,
        command: &CommandId,
        backup: &str,
        member: MemberId,
        result: Result<(), &String>,
    ) {
        if !matches!(&self.backup.state, BackupState::Taking { command: c, .. } if c == command) {
            return;
        }
        let id = backup.to_owned();
        self.backup.state = match result {
            Ok(()) => BackupState::Taken { id, member },
            Err(detail) => BackupState::Failed {
                id,
                reason: format!("member {member} could not take it: {detail}"),
            },
        };
    }

    /// The id the next backup gets: `<rollout>-b<attempt>.<journal>`
    /// (`<rollout>-b<attempt>` in a journal without an id), never reused.
    pub fn next_backup_id(&self) -> String {
        let id = format!("{}-b{}", self.id, self.backup.attempts + 1);
        self.in_journal(id)
    }

    /// The id the next command gets: `<rollout>-<n>.<journal>` (or
    /// `<rollout>-<n>`), unique for the journal's whole life and, through
    /// the journal id, across journals.
    pub fn next_command_id(&self) -> CommandId {
        CommandId(self.in_journal(format!("{}-{}", self.id, self.next_command)))
    }

    fn in_journal(&self, id: String) -> String {
        match &self.journal {
            Some(j) => format!("{id}.{j}"),
            None => id,
        }
    }

    fn member_mut(&mut self, m: &MemberId) -> Result<&mut MemberProgress, ApplyError> {
        self.members
            .get_mut(m)
            .ok_or_else(|| ApplyError::UnknownMember(m.clone()))
    }

    /// Applies one event. Pure: no IO, no clock.
    pub fn apply(&mut self, event: &Event) -> Result<(), ApplyError> {
        match event {
            Event::Started { .. } => *self = RolloutState::start(event)?,
            Event::CommandIssued {
                id,
                member,
                action,
                at,
            } => {
                if self.commands.contains_key(id) {
                    return Err(ApplyError::DuplicateCommand(id.clone()));
                }
                // A backup runs beside the member's own steps: it is the
                // rollout's, not the member's stage.
                if let Action::Backup { id: backup } = action {
                    self.member_mut(member)?;
                    self.backup.attempts += 1;
                    self.backup.state = BackupState::Taking {
                        id: backup.clone(),
                        member: member.clone(),
                        command: id.clone(),
                    };
                } else {
                    let progress = self.member_mut(member)?;
                    progress.inflight = Some(id.clone());
                    if progress.started_at.is_none() && !matches!(action, Action::Stage { .. }) {
                        progress.started_at = Some(*at);
                    }
                }
                if let Action::StepDown { to } = action {
                    let attempts = self.handover.as_ref().map_or(0, |h| h.attempts) + 1;
                    self.handover = Some(Handover {
                        from: member.clone(),
                        to: to.clone(),
                        attempts,
                        requested_at: *at,
                        last_error: None,
                    });
                }
                self.commands.insert(
                    id.clone(),
                    CommandRecord {
                        member: member.clone(),
                        action: action.clone(),
                        issued_at: *at,
                        result: None,
                    },
                );
                self.next_command += 1;
            }
            Event::CommandSucceeded { id, detail, at } => {
                let rec = self
                    .commands
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::UnknownCommand(id.clone()))?;
                if rec.result.is_some() {
                    return Ok(()); // a repeated result changes nothing
                }
                rec.result = Some(Ok(detail.clone()));
                let (member, action) = (rec.member.clone(), rec.action.clone());
                if let Action::Backup { id: backup } = &action {
                    self.backup_answered(id, backup, member, Ok(()));
                    return Ok(());
                }
                let progress = self.member_mut(&member)?;
                if progress.inflight.as_ref() == Some(id) {
                    progress.inflight = None;
                    // A step-down does not move the stage: the handover is
                    // confirmed from the view, not from the agent's word. A
                    // restore happens while stopped, and stays there.
                    if !matches!(action, Action::StepDown { .. } | Action::Restore { .. }) {
                        progress.stage = progress.stage.on_success(*at);
                    }
                }
            }
            Event::CommandFailed { id, detail, at: _ } => {
                let rec = self
                    .commands
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::UnknownCommand(id.clone()))?;
                if rec.result.is_some() {
                    return Ok(());
                }
                rec.result = Some(Err(detail.clone()));
                let (member, action) = (rec.member.clone(), rec.action.clone());
                let restoring = self.restore.is_some();
                if let Action::Backup { id: backup } = &action {
                    self.backup_answered(id, backup, member, Err(detail));
                    return Ok(());
                }
                let progress = self.member_mut(&member)?;
                if progress.inflight.as_ref() == Some(id) {
                    progress.inflight = None;
                }
                let stage = progress.stage.clone();
                let reason = format!("member {member}: {action} failed: {detail}");
                // A restore never goes back to what it is replacing: it
                // pauses where it is, and resume carries it on.
                if restoring {
                    self.phase = Phase::Paused {
                        reason: format!(
                            "{reason}; the restore did not finish: fix the cause, then `baton resume` carries it on (the members it stopped stay stopped until then)"
                        ),
                    };
                    return Ok(());
                }
                match (&action, stage) {
                    // A failed step-down is retried once by the planner.
                    (Action::StepDown { .. }, _) => {
                        if let Some(h) = self.handover.as_mut() {
                            h.last_error = Some(detail.clone());
                        }
                    }
                    // The member leads by its own read (leadership moved to
                    // it after the stop was decided): still untouched and
                    // serving; the planner hands over first.
                    (Action::Stop, Stage::Staged) if baton_domain::is_leader_refusal(detail) => {}
                    // Before the member was touched: nothing to undo.
                    (Action::Stage { .. }, _) | (_, Stage::Staged) => {
                        self.phase = Phase::Paused { reason };
                    }
                    // A failure while going back: pause, keep the stage.
                    (_, Stage::Reverting { .. }) => {
                        self.phase = Phase::Paused {
                            reason: format!("{reason}; rollback of this member did not finish"),
                        };
                    }
                    // Stopped/switched/started on the target: go back.
                    _ => {
                        progress.stage = Stage::Reverting {
                            step: RevertStep::Stop,
                            reason: reason.clone(),
                        };
                    }
                }
            }
            Event::GatePassed { member, gate, at } => {
                let progress = self.member_mut(member)?;
                progress.stage = match (gate, &progress.stage) {
                    (Gate::Healthy, Stage::Started { .. }) => Stage::CatchingUp { since: *at },
                    (Gate::CaughtUp, Stage::CatchingUp { .. }) => Stage::Soaking { since: *at },
                    (Gate::Soaked, Stage::Soaking { .. }) => Stage::Done,
                    (_, other) => other.clone(),
                };
                if progress.stage == Stage::Done {
                    progress.finished_at = Some(*at);
                }
            }
            Event::GateFailed {
                member,
                gate: _,
                reason,
                at: _,
            } => {
                let progress = self.member_mut(member)?;
                progress.stage = Stage::Reverting {
                    step: RevertStep::Stop,
                    reason: reason.clone(),
                };
            }
            Event::HandoverPicked { .. } => {}
            Event::HandoverConfirmed { to, at } => {
                self.handover = None;
                self.leader_changes.push((to.clone(), *at));
            }
            Event::Paused {
                by: _,
                reason,
                at: _,
            } => {
                if !self.phase.is_terminal() {
                    self.phase = Phase::Paused {
                        reason: reason.clone(),
                    };
                }
            }
            Event::PauseRequested {
                by: _,
                reason,
                at: _,
            } => {
                if matches!(self.phase, Phase::Running | Phase::Aborting) {
                    self.phase = Phase::Pausing {
                        reason: reason.clone(),
                    };
                }
            }
            Event::Resumed { by: _, at: _ } => {
                if matches!(
                    self.phase,
                    Phase::Paused { .. } | Phase::Aborting | Phase::Pausing { .. }
                ) {
                    self.phase = Phase::Running;
                }
                // A member that was reverted is retried from the start.
                for p in self.members.values_mut() {
                    if matches!(p.stage, Stage::Reverted { .. }) {
                        p.stage = Stage::Pending;
                    }
                }
                if let Some(h) = self.handover.as_mut() {
                    h.attempts = 0;
                }
                // A failed backup is taken again, under a new id.
                if matches!(self.backup.state, BackupState::Failed { .. }) {
                    self.backup.state = BackupState::Pending;
                }
            }
            Event::AbortRequested { by: _, at: _ } => {
                if matches!(self.phase, Phase::Running | Phase::Pausing { .. }) {
                    self.phase = Phase::Aborting;
                }
            }
            Event::Completed { at } => {
                self.phase = Phase::Completed;
                self.completed_at = Some(*at);
            }
            Event::RestorePlanned {
                backup,
                revision,
                at: _,
            } => {
                self.restore = Some(RestorePlan {
                    backup: backup.clone(),
                    revision: *revision,
                });
                // Nothing to back up before it: each member's data is moved
                // aside by the restore itself, not deleted.
                self.backup.state = BackupState::Skipped {
                    reason: format!("this rollout restores backup {backup}"),
                };
            }
            Event::BackupVerified { summary, at: _ } => {
                if matches!(&self.backup.state, BackupState::Taken { id, .. } if *id == summary.id)
                {
                    self.backup.state = BackupState::Verified(summary.clone());
                }
            }
            Event::BackupFailed { id, reason, at: _ } => {
                if matches!(&self.backup.state, BackupState::Taken { id: taken, .. } if taken == id)
                {
                    self.backup.state = BackupState::Failed {
                        id: id.clone(),
                        reason: reason.clone(),
                    };
                }
            }
            Event::BackupSkipped { reason, at: _ } => {
                if !self.backup.state.allows_stop() {
                    self.backup.state = BackupState::Skipped {
                        reason: reason.clone(),
                    };
                }
            }
            Event::Closed { by: _, reason, at } => {
                if !self.phase.is_terminal() {
                    self.phase = Phase::Closed {
                        reason: reason.clone(),
                    };
                    self.completed_at = Some(*at);
                }
            }
        }
        // Who asked (Started's line is the new state's first).
        if !matches!(event, Event::Started { .. })
            && let Some(line) = event.audit()
        {
            self.audit.push(line);
        }
        Ok(())
    }

    /// The rollout as the operator sees it (the operator API's read model).
    pub fn view(&self) -> Rollout {
        Rollout::from(self)
    }

    /// The member being worked on: the first in order that is not done.
    pub fn current(&self) -> Option<&MemberId> {
        self.order
            .iter()
            .find(|m| self.members.get(*m).is_some_and(|p| p.stage != Stage::Done))
    }

    /// Members whose stage means they are or may be down.
    pub fn disrupted(&self) -> usize {
        self.members
            .values()
            .filter(|p| p.stage.is_disruptive())
            .count()
    }
}

impl From<&RolloutState> for Rollout {
    fn from(s: &RolloutState) -> Self {
        let RolloutState {
            id,
            target,
            previous,
            order,
            original_leader,
            phase,
            members,
            commands,
            next_command: _, // bookkeeping for command ids, not for operators
            handover,
            leader_changes,
            started_at,
            completed_at,
            backup,
            // The view shows a restore by its commands and its backup line.
            restore: _,
            // In every command id the view shows.
            journal: _,
            audit,
        } = s;
        Rollout {
            id: id.clone(),
            target: target.clone(),
            previous: previous.clone(),
            order: order.clone(),
            original_leader: original_leader.clone(),
            phase: phase.clone(),
            members: members.clone(),
            commands: commands.clone(),
            handover: handover.clone(),
            leader_changes: leader_changes.clone(),
            started_at: *started_at,
            completed_at: *completed_at,
            backup: backup.clone(),
            audit: audit.clone(),
        }
    }
}
