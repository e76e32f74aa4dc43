//! Table tests of operator control: each request in each phase, the
//! rollback and start rules, and rollout ids.

#![allow(clippy::unwrap_used)]

mod common;

use baton_planner::control;
use baton_planner::control::{Control, Refused, may_roll_back, may_start, rollback_id, rollout_id};
use baton_planner::rollout::{Event, Phase, RolloutState};
use common::*;

fn in_phase(phase: Phase) -> RolloutState {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100)]);
    let mut r = started(&view, "n1");
    r.phase = phase;
    r
}

fn paused() -> Phase {
    Phase::Paused {
        reason: "gate".into(),
    }
}

fn closed() -> Phase {
    Phase::Closed {
        reason: "rolled back by r2".into(),
    }
}

fn refused(phase: Phase, hint: &'static str) -> Result<Event, Refused> {
    Err(Refused {
        id: "r1".into(),
        phase,
        hint: hint.into(),
    })
}

fn pausing() -> Phase {
    Phase::Pausing {
        reason: "paused by the operator: lunch".into(),
    }
}

#[test]
fn pause_resume_and_abort_in_every_phase() {
    let pause = || Control::Pause {
        reason: "change freeze".into(),
    };
    let paused_event = Ok(Event::Paused {
        by: None,
        reason: "paused by the operator: change freeze".into(),
        at: t(7),
    });
    const NOT_PAUSABLE: &str = "only a running rollout can be paused";
    const ALREADY_PAUSING: &str = "it is already pausing: the member being worked on is carried on to healthy (or put back) first; `baton watch` follows it";
    const NOT_RESUMABLE: &str = "only a paused rollout can be resumed";
    const NOT_ABORTABLE: &str = "only a running rollout can be aborted";
    const PAUSED_ABORT: &str = "a paused rollout moves nothing already: `baton rollback` puts back every member that moved, `baton resume` carries on";
    let resume = || Control::Resume { retry: false };
    let table: Vec<(Phase, Control, Result<Event, Refused>)> = vec![
        (Phase::Running, pause(), paused_event.clone()),
        (Phase::Aborting, pause(), paused_event),
        (pausing(), pause(), refused(pausing(), ALREADY_PAUSING)),
        (paused(), pause(), refused(paused(), NOT_PAUSABLE)),
        (
            Phase::Completed,
            pause(),
            refused(Phase::Completed, NOT_PAUSABLE),
        ),
        (closed(), pause(), refused(closed(), NOT_PAUSABLE)),
        (
            paused(),
            resume(),
            Ok(Event::Resumed { by: None, at: t(7) }),
        ),
        (
            pausing(),
            resume(),
            Ok(Event::Resumed { by: None, at: t(7) }),
        ),
        (
            Phase::Running,
            resume(),
            refused(Phase::Running, NOT_RESUMABLE),
        ),
        (
            Phase::Aborting,
            resume(),
            refused(Phase::Aborting, NOT_RESUMABLE),
        ),
        (
            Phase::Completed,
            resume(),
            refused(Phase::Completed, NOT_RESUMABLE),
        ),
        (
            Phase::Running,
            Control::Abort,
            Ok(Event::AbortRequested { by: None, at: t(7) }),
        ),
        (
            pausing(),
            Control::Abort,
            Ok(Event::AbortRequested { by: None, at: t(7) }),
        ),
        (paused(), Control::Abort, refused(paused(), PAUSED_ABORT)),
        (
            Phase::Aborting,
            Control::Abort,
            refused(Phase::Aborting, NOT_ABORTABLE),
        ),
        (closed(), Control::Abort, refused(closed(), NOT_ABORTABLE)),
    ];
    for (phase, request, want) in table {
        let r = in_phase(phase.clone());
        let verb = request.verb();
        assert_eq!(control(&r, request, t(7)), want, "{verb} while {phase:?}");
    }
}

#[test]
fn a_control_event_carries_the_time_it_was_asked_for_and_applies() {
    let mut r = in_phase(Phase::Running);
    let e = control(&r, Control::Abort, t(42)).unwrap();
    assert_eq!(
        e,
        Event::AbortRequested {
            by: None,
            at: t(42)
        }
    );
    r.apply(&e).unwrap();
    assert_eq!(r.phase, Phase::Aborting);
}

/// Pause is a safe point: asked while a member is between stop and healthy,
/// it becomes a request (phase `pausing`) that the planner finishes.
#[test]
fn a_pause_while_a_member_is_down_waits_for_it() {
    use baton_planner::rollout::Stage;
    for stage in [Stage::Stopped, Stage::Switched, Stage::Started { at: t(3) }] {
        let mut r = in_phase(Phase::Running);
        r.members.get_mut(&id("n2")).unwrap().stage = stage.clone();
        let e = control(
            &r,
            Control::Pause {
                reason: "lunch".into(),
            },
            t(9),
        )
        .unwrap();
        assert_eq!(
            e,
            Event::PauseRequested {
                by: None,
                reason: "paused by the operator: lunch".into(),
                at: t(9)
            },
            "{stage:?}"
        );
        r.apply(&e).unwrap();
        assert_eq!(r.phase, pausing(), "{stage:?}");
    }
    // A stop in flight is about to take the member down: the same.
    let mut r = in_phase(Phase::Running);
    r.members.get_mut(&id("n2")).unwrap().stage = Stage::Staged;
    issue(&mut r, "n2", baton_planner::rollout::Action::Stop);
    assert!(matches!(
        control(&r, Control::Pause { reason: "x".into() }, t(9)),
        Ok(Event::PauseRequested { .. })
    ));
    // A stage in flight takes nobody down: pause at once.
    let mut r = in_phase(Phase::Running);
    issue(
        &mut r,
        "n2",
        baton_planner::rollout::Action::Stage { release: target() },
    );
    assert!(matches!(
        control(&r, Control::Pause { reason: "x".into() }, t(9)),
        Ok(Event::Paused { .. })
    ));
}

/// A release that failed on a member (which was put back) is not tried
/// again by a plain resume: the refusal names the member and the failure.
#[test]
fn resume_after_a_failed_start_needs_retry() {
    use baton_planner::rollout::Stage;
    let mut r = in_phase(paused());
    r.members.get_mut(&id("n2")).unwrap().stage = Stage::Reverted {
        reason: "member n2 exited 1 time(s) since it was started".into(),
    };
    let e = control(&r, Control::Resume { retry: false }, t(5)).unwrap_err();
    assert!(
        e.hint.contains("member n2 failed on v2")
            && e.hint.contains("exited 1 time(s)")
            && e.hint.contains("--retry"),
        "{e}"
    );
    assert_eq!(
        control(&r, Control::Resume { retry: true }, t(5)),
        Ok(Event::Resumed { by: None, at: t(5) })
    );
}

#[test]
fn a_rollback_needs_a_stopped_or_completed_rollout() {
    const MOVING: &str = "pause or abort it first (wait until it is paused), then roll back";
    const CLOSED: &str = "it was already closed; start a new rollout instead";
    let table: Vec<(Phase, Option<&'static str>)> = vec![
        (Phase::Running, Some(MOVING)),
        (Phase::Aborting, Some(MOVING)),
        (pausing(), Some(MOVING)),
        (closed(), Some(CLOSED)),
        (paused(), None),
        (Phase::Completed, None),
    ];
    for (phase, hint) in table {
        let got = may_roll_back(&in_phase(phase.clone()));
        let want = hint.map_or(Ok(()), |hint| {
            Err(Refused {
                id: "r1".into(),
                phase: phase.clone(),
                hint: hint.into(),
            })
        });
        assert_eq!(got, want, "{phase:?}");
    }
}

#[test]
fn a_new_rollout_waits_until_the_last_one_finished() {
    const FINISH: &str = "finish it first: `baton resume`, `baton rollback` (it closes a rollout that moved nothing), or wait for it to complete";
    assert_eq!(may_start(None), Ok(()));
    for phase in [Phase::Running, Phase::Aborting, pausing(), paused()] {
        assert_eq!(
            may_start(Some(&in_phase(phase.clone()))),
            Err(Refused {
                id: "r1".into(),
                phase: phase.clone(),
                hint: FINISH.into()
            }),
            "{phase:?}"
        );
    }
    for phase in [Phase::Completed, closed()] {
        assert_eq!(
            may_start(Some(&in_phase(phase.clone()))),
            Ok(()),
            "{phase:?}"
        );
    }
}

#[test]
fn rollout_ids_count_rollouts_and_name_the_release() {
    assert_eq!(rollout_id(1, "v2"), "r1-v2");
    assert_eq!(rollout_id(12, "3.5.1"), "r12-3.5.1");
    assert_eq!(rollback_id(3, "v1"), "r3-rollback-to-v1");
}
