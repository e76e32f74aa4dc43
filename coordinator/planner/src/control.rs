//! Operator control of rollouts, as pure transitions: pause, resume and
//! abort; when a rollback, or a new rollout, may start; and how rollouts
//! are named.
//!
//! This module owns the phase rules the operator's requests are judged by
//! and the hint each refusal gives. It does no IO and reads no clock: the
//! caller passes `now`, and journals the returned [`Event`] itself.
//!
//! Pause and abort are safe points: a member between stop and healthy is
//! never left there. Asked while one is, pause becomes `PauseRequested`
//! (phase `pausing`) and abort `aborting`; the planner carries the member
//! on to healthy, or back, and only then pauses.

use crate::UnixMs;
use crate::rollout::{Action, Event, Phase, RolloutState, Stage};

/// An operator's request on the active rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop between steps until resumed; `reason` is the operator's.
    Pause { reason: String },
    /// Continue a paused rollout. A member whose new release failed on it
    /// (and was put back) is tried again only with `retry`.
    Resume { retry: bool },
    /// Finish the current step, then pause without touching the next member.
    Abort,
}

impl Control {
    /// The verb, as the operator typed it (`pause`, `resume`, `abort`).
    pub fn verb(&self) -> &'static str {
        match self {
            Control::Pause { .. } => "pause",
            Control::Resume { .. } => "resume",
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
    pub hint: String,
}

impl Refused {
    fn of(state: &RolloutState, hint: impl Into<String>) -> Refused {
        Refused {
            id: state.id.clone(),
            phase: state.phase.clone(),
            hint: hint.into(),
        }
    }
}

/// The member the rollout is working on, if it is between stop and
/// healthy (stopped, switched, started, or being put back), or about to be:
/// a stop, switch or start in flight.
fn member_down(state: &RolloutState) -> Option<(&baton_domain::MemberId, &Stage)> {
    let moving = |p: &crate::rollout::MemberProgress| {
        p.inflight
            .as_ref()
            .and_then(|id| state.commands.get(id))
            .is_some_and(|c| {
                matches!(
                    c.action,
                    Action::Stop | Action::Switch { .. } | Action::Start
                )
            })
    };
    state
        .members
        .iter()
        .find(|(_, p)| p.stage.is_disruptive() || moving(p))
        .map(|(m, p)| (m, &p.stage))
}

/// The members whose new release failed on them and that were put back,
/// with why.
pub fn reverted(state: &RolloutState) -> Vec<(&baton_domain::MemberId, &str)> {
    state
        .members
        .iter()
        .filter_map(|(m, p)| match &p.stage {
            Stage::Reverted { reason } => Some((m, reason.as_str())),
            _ => None,
        })
        .collect()
}

/// How a pause for the journal's disk space begins its reason; a rollout
/// paused so resumes by itself once the space is back.
pub const JOURNAL_SPACE_PAUSE: &str = "the coordinator's journal is nearly out of disk space";

/// The pause the coordinator asks for itself when its journal's disk is
/// nearly full (it is recording on its reserve): at the next safe point,
/// as an operator's pause, so a member that is down is brought back first
/// and nothing new is stopped. `None` unless the rollout is running.
pub fn pause_for_journal_space(state: &RolloutState, now: UnixMs) -> Option<Event> {
    if !matches!(state.phase, Phase::Running) {
        return None;
    }
    let reason = format!(
        "{JOURNAL_SPACE_PAUSE}: paused at a safe point with every member serving; it resumes by itself once there is space under the coordinator's state_dir again"
    );
    Some(pause(state, reason, now))
}

/// A pause with `reason`: at once, or, while a member is between stop and
/// healthy, a request to pause once its step is finished (or undone), so
/// no member is left down.
fn pause(state: &RolloutState, reason: String, now: UnixMs) -> Event {
    match member_down(state) {
        Some(_) => Event::PauseRequested {
            by: None,
            reason,
            at: now,
        },
        None => Event::Paused {
            by: None,
            reason,
            at: now,
        },
    }
}

/// Whether `state` is paused for the journal's disk space (and so resumes
/// by itself once the space is back).
pub fn paused_for_journal_space(state: &RolloutState) -> bool {
    matches!(&state.phase, Phase::Paused { reason } if reason.starts_with(JOURNAL_SPACE_PAUSE))
}

/// The event that carries out `control` on `state` at `now`, or why the
/// rollout's phase does not allow it.
pub fn control(state: &RolloutState, control: Control, now: UnixMs) -> Result<Event, Refused> {
    match (control, &state.phase) {
        (Control::Pause { reason }, Phase::Running | Phase::Aborting) => Ok(pause(
            state,
            format!("paused by the operator: {reason}"),
            now,
        )),
        (Control::Pause { .. }, Phase::Pausing { .. }) => Err(Refused::of(
            state,
            "it is already pausing: the member being worked on is carried on to healthy (or put back) first; `baton watch` follows it",
        )),
        (Control::Pause { .. }, _) => {
            Err(Refused::of(state, "only a running rollout can be paused"))
        }
        (Control::Resume { retry }, Phase::Paused { .. } | Phase::Pausing { .. }) => {
            let failed = reverted(state);
            if !retry && let Some((m, why)) = failed.first() {
                return Err(Refused::of(
                    state,
                    format!(
                        "member {m} failed on {} and was put back on {} ({why}); resuming would try that release on it again. Fix the release and `baton resume --retry`, or `baton rollback`",
                        state.target.version, state.previous
                    ),
                ));
            }
            Ok(Event::Resumed { by: None, at: now })
        }
        (Control::Resume { .. }, _) => {
            Err(Refused::of(state, "only a paused rollout can be resumed"))
        }
        (Control::Abort, Phase::Running | Phase::Pausing { .. }) => {
            Ok(Event::AbortRequested { by: None, at: now })
        }
        (Control::Abort, Phase::Paused { .. }) => Err(Refused::of(
            state,
            "a paused rollout moves nothing already: `baton rollback` puts back every member that moved, `baton resume` carries on",
        )),
        (Control::Abort, _) => Err(Refused::of(state, "only a running rollout can be aborted")),
    }
}

/// Whether a new rollout may start after `latest` (the newest rollout, if
/// any): only once it completed or was closed.
pub fn may_start(latest: Option<&RolloutState>) -> Result<(), Refused> {
    match latest {
        Some(r) if !r.phase.is_terminal() => Err(Refused::of(
            r,
            "finish it first: `baton resume`, `baton rollback` (it closes a rollout that moved nothing), or wait for it to complete",
        )),
        _ => Ok(()),
    }
}

/// Whether `latest` may be rolled back: a paused or completed rollout may;
/// a moving one must be stopped first, and a closed one was already
/// replaced.
pub fn may_roll_back(latest: &RolloutState) -> Result<(), Refused> {
    match &latest.phase {
        Phase::Running | Phase::Aborting | Phase::Pausing { .. } => Err(Refused::of(
            latest,
            "pause or abort it first (wait until it is paused), then roll back",
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
