//! The rollout as an event-sourced state machine.
//!
//! [`RolloutState::apply`] is pure and is the only thing that changes a
//! rollout: the coordinator appends each [`Event`] to its journal first and
//! applies it second, so replaying the journal rebuilds the same state after
//! a crash. Per-member progress is one [`Stage`] enum whose transitions are
//! methods.

use std::collections::BTreeMap;

use baton_domain::MemberId;
pub use baton_domain::{Action, CommandId};
use serde::{Deserialize, Serialize};

use crate::{ReleaseRef, UnixMs};

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
    },
    Resumed {
        at: UnixMs,
    },
    AbortRequested {
        at: UnixMs,
    },
    Completed {
        at: UnixMs,
    },
    /// The operator ended a paused rollout without finishing it.
    Closed {
        reason: String,
        at: UnixMs,
    },
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

impl RolloutState {
    /// Builds the state from its first event.
    pub fn start(event: &Event) -> Result<RolloutState, ApplyError> {
        let Event::Started {
            id,
            target,
            previous,
            order,
            leader,
            at,
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
            completed_at: None,
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

    /// The id the next command gets.
    pub fn next_command_id(&self) -> CommandId {
        CommandId(format!("{}-{}", self.id, self.next_command))
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
                let progress = self.member_mut(member)?;
                progress.inflight = Some(id.clone());
                if progress.started_at.is_none() && !matches!(action, Action::Stage { .. }) {
                    progress.started_at = Some(*at);
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
                let progress = self.member_mut(&member)?;
                if progress.inflight.as_ref() == Some(id) {
                    progress.inflight = None;
                    // A step-down does not move the stage: the handover is
                    // confirmed from the view, not from the agent's word.
                    if !matches!(action, Action::StepDown { .. }) {
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
                let progress = self.member_mut(&member)?;
                if progress.inflight.as_ref() == Some(id) {
                    progress.inflight = None;
                }
                let stage = progress.stage.clone();
                let reason = format!("member {member}: {action} failed: {detail}");
                match (&action, stage) {
                    // A failed step-down is retried once by the planner.
                    (Action::StepDown { .. }, _) => {
                        if let Some(h) = self.handover.as_mut() {
                            h.last_error = Some(detail.clone());
                        }
                    }
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
            Event::Paused { reason, at: _ } => {
                if !self.phase.is_terminal() {
                    self.phase = Phase::Paused {
                        reason: reason.clone(),
                    };
                }
            }
            Event::Resumed { at: _ } => {
                if matches!(self.phase, Phase::Paused { .. } | Phase::Aborting) {
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
            }
            Event::AbortRequested { at: _ } => {
                if self.phase == Phase::Running {
                    self.phase = Phase::Aborting;
                }
            }
            Event::Completed { at } => {
                self.phase = Phase::Completed;
                self.completed_at = Some(*at);
            }
            Event::Closed { reason, at } => {
                if !self.phase.is_terminal() {
                    self.phase = Phase::Closed {
                        reason: reason.clone(),
                    };
                    self.completed_at = Some(*at);
                }
            }
        }
        Ok(())
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
