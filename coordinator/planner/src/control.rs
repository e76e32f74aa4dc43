//! Operator control of rollouts, as pure transitions: pause, resume and
//! abort; when a rollback, or a new rollout, may start; and how rollouts
//! are named.
//!
//! This module owns the phase rules the operator's requests are judged by
//! and the hint each refusal gives. It does no IO and reads no clock: the
//! caller passes `now`, and journals the returned [`Event`] itself.

use crate::UnixMs;
use crate::rollout::{Event, Phase, RolloutState};

/// An operator's request on the active rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop between steps until resumed; `reason` is the operator's.
    Pause { reason: String },
    /// Continue a paused rollout.
    Resume,
    /// Finish the current step, then pause without touching the next member.
    Abort,
}

impl Control {
    /// The verb, as the operator typed it (`pause`, `resume`, `abort`).
    pub fn verb(&self) -> &'static str {
        match self {
            Control::Pause { .. } => "pause",
            Control::Resume => "resume",
            Control::Abort => "abort",
        }
    }
}

/// Why a request was refused: the rollout is in the wrong phase for it.
/// `hint` says what the operator can do instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rollout {id} is in phase {phase:?}; {hint}")]
pub struct Refused {
    pub id: String,
    pub phase: Phase,
    pub hint: &'static str,
}

impl Refused {
    fn of(state: &RolloutState, hint: &'static str) -> Refused {
        Refused {
            id: state.id.clone(),
            phase: state.phase.clone(),
            hint,
        }
    }
}

/// The event that carries out `control` on `state` at `now`, or why the
/// rollout's phase does not allow it.
pub fn control(state: &RolloutState, control: Control, now: UnixMs) -> Result<Event, Refused> {
    match (control, &state.phase) {
        (Control::Pause { reason }, Phase::Running | Phase::Aborting) => Ok(Event::Paused {
            reason: format!("paused by the operator: {reason}"),
            at: now,
        }),
        (Control::Pause { .. }, _) => {
            Err(Refused::of(state, "only a running rollout can be paused"))
        }
        (Control::Resume, Phase::Paused { .. }) => Ok(Event::Resumed { at: now }),
        (Control::Resume, _) => Err(Refused::of(state, "only a paused rollout can be resumed")),
        (Control::Abort, Phase::Running) => Ok(Event::AbortRequested { at: now }),
        (Control::Abort, _) => Err(Refused::of(
            state,
            "only a running rollout can be aborted; a paused one is already stopped",
        )),
    }
}

/// Whether a new rollout may start after `latest` (the newest rollout, if
/// any): only once it completed or was closed.
pub fn may_start(latest: Option<&RolloutState>) -> Result<(), Refused> {
    match latest {
        Some(r) if !r.phase.is_terminal() => Err(Refused::of(
            r,
            "finish it first: `baton resume`, or wait for it to complete",
        )),
        _ => Ok(()),
    }
}

/// Whether `latest` may be rolled back: a paused or completed rollout may;
/// a moving one must be stopped first, and a closed one was already
/// replaced.
pub fn may_roll_back(latest: &RolloutState) -> Result<(), Refused> {
    match &latest.phase {
        Phase::Running | Phase::Aborting => Err(Refused::of(
            latest,
            "pause or abort it first, then roll back",
        )),
        Phase::Closed { .. } => Err(Refused::of(
            latest,
            "it was already closed; start a new rollout instead",
        )),
        Phase::Paused { .. } | Phase::Completed => Ok(()),
    }
}

/// The id of the `number`th rollout (counting from 1) of the cluster, to
/// release `to`: `r3-v2`.
pub fn rollout_id(number: usize, to: &str) -> String {
    format!("r{number}-{to}")
}

/// The id of the `number`th rollout (counting from 1) when it rolls back
/// to `previous`: `r4-rollback-to-v1`.
pub fn rollback_id(number: usize, previous: &str) -> String {
    format!("r{number}-rollback-to-{previous}")
}
