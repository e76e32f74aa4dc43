//! Table tests of a restore rollout (`baton restore`): every member staged,
//! then every member stopped, then every member restored, switched and
//! started, each phase only once the one before is done everywhere; a
//! failure pauses where it is and resume re-issues only what did not
//! succeed; pause is honoured only before the first stop.

#![allow(clippy::unwrap_used)]

mod common;

use baton_planner::decide::Step;
use baton_planner::rollout::{Action, Event, Phase, RolloutState, Stage};
use baton_planner::{Policy, UnixMs, View};
use common::*;

const BACKUP: &str = "r1-v2-b1";
const REVISION: u64 = 100;

fn decide(view: &View, r: &RolloutState, now: UnixMs) -> Vec<Step> {
    let mut steps = baton_planner::decide(view, r, &Policy::default(), now);
    if r.phase.is_moving() {
        assert_eq!(steps.remove(0), Step::Cadence { fast: true });
    }
    steps
}

fn restoring(view: &View) -> RolloutState {
    let mut r = started_needing_a_backup(view, "n1");
    r.apply(&Event::RestorePlanned {
        backup: BACKUP.into(),
        revision: REVISION,
        at: t(0),
    })
    .unwrap();
    r
}

/// The cluster after the restore: everyone on the target (v2), past the
/// backup's revision.
fn restored_view() -> View {
    let v = cluster(&[("n1", L, 120), ("n2", F, 120), ("n3", F, 120)]);
    let v = with_release(v, "n1", "v2");
    let v = with_release(v, "n2", "v2");
    with_release(v, "n3", "v2")
}

/// Runs the planner, answering every command it issues with success (or
/// failure for `fail`), until it waits or finishes; returns each round's
/// issued actions as (member, kind).
fn run(
    view: &View,
    r: &mut RolloutState,
    now: UnixMs,
    fail: Option<(&str, &str)>,
) -> Vec<Vec<(String, &'static str)>> {
    let mut rounds = Vec::new();
    for _ in 0..20 {
        let steps = decide(view, r, now);
        let mut issued = Vec::new();
        let mut records = 0;
        for step in steps {
            match step {
                Step::Issue { member, action } => {
                    let kind = action.kind();
                    issued.push((member.to_string(), kind));
                    let cmd = issue_at(r, member.as_str(), action, now);
                    if fail == Some((member.as_str(), kind)) {
                        r.apply(&Event::CommandFailed {
                            id: cmd,
                            detail: "disk full".into(),
                            at: now,
                        })
                        .unwrap();
                    } else {
                        succeed(r, &cmd, now);
                    }
                }
                Step::Record(e) => {
                    records += 1;
                    r.apply(&e).unwrap();
                }
                Step::Cadence { .. } | Step::Wait { .. } => {}
                other => panic!("a restore takes no other step: {other:?}"),
            }
        }
        if issued.is_empty() && records == 0 {
            break;
        }
        if !issued.is_empty() {
            rounds.push(issued);
        }
    }
    rounds
}

fn kinds(round: &[(String, &'static str)]) -> Vec<&'static str> {
    round.iter().map(|(_, k)| *k).collect()
}

#[test]
fn every_member_goes_through_each_phase_before_any_goes_to_the_next() {
    let before = cluster(&[("n1", L, 150), ("n2", F, 150), ("n3", F, 150)]);
    let mut r = restoring(&before);
    let rounds = run(&before, &mut r, t(10), None);
    assert_eq!(
        rounds.iter().map(|r| kinds(r)).collect::<Vec<_>>(),
        vec![
            vec!["stage"; 3],
            vec!["stop"; 3],
            vec!["restore"; 3],
            vec!["switch"; 3],
            vec!["start"; 3],
        ],
        "{rounds:?}"
    );
    // No backup is taken before a restore.
    assert!(r.commands.values().all(|c| c.action.kind() != "backup"));
    // Started, but still on the old data (revision below the backup's
    // would be impossible) or the old release: not done yet.
    assert!(
        r.members
            .values()
            .all(|p| matches!(p.stage, Stage::Started { .. }))
    );
    let steps = decide(&before, &r, t(20));
    assert!(
        matches!(&steps[..], [Step::Wait { reason }] if reason.contains("healthy at revision ≥ 100")),
        "{steps:?}"
    );

    // On the target at or past the revision: gates pass, then verify completes.
    let after = restored_view();
    run(&after, &mut r, t(30), None);
    assert_eq!(r.phase, Phase::Completed, "{:?}", r.members);
    assert!(r.members.values().all(|p| p.stage == Stage::Done));
}

#[test]
fn a_failed_restore_pauses_where_it_is_and_resume_redoes_only_that_member() {
    let view = cluster(&[("n1", L, 150), ("n2", F, 150), ("n3", F, 150)]);
    let mut r = restoring(&view);
    run(&view, &mut r, t(10), Some(("n2", "restore")));
    let Phase::Paused { reason } = &r.phase else {
        panic!("paused: {:?}", r.phase)
    };
    assert!(
        reason.contains("member n2: restore backup r1-v2-b1 failed: disk full"),
        "{reason}"
    );
    assert!(reason.contains("the restore did not finish"), "{reason}");
    // Nothing went back: every member is still stopped.
    assert!(
        r.members.values().all(|p| p.stage == Stage::Stopped),
        "{:?}",
        r.members
    );
    // Paused: nothing moves.
    assert!(matches!(&decide(&view, &r, t(11))[..], [Step::Wait { .. }]));

    r.apply(&Event::Resumed {
        by: None,
        at: t(12),
    })
    .unwrap();
    let rounds = run(&view, &mut r, t(12), None);
    assert_eq!(rounds[0], vec![("n2".to_owned(), "restore")], "{rounds:?}");
    assert_eq!(kinds(&rounds[1]), vec!["switch"; 3]);
}

#[test]
fn pause_is_honoured_before_the_first_stop_and_not_after() {
    let view = cluster(&[("n1", L, 150), ("n2", F, 150), ("n3", F, 150)]);
    let mut r = restoring(&view);
    r.apply(&Event::PauseRequested {
        by: None,
        reason: "operator".into(),
        at: t(1),
    })
    .unwrap();
    run(&view, &mut r, t(2), None);
    let Phase::Paused { reason } = &r.phase else {
        panic!("paused: {:?}", r.phase)
    };
    assert!(reason.contains("no member was stopped"), "{reason}");
    assert!(r.commands.is_empty());

    // Once the members are stopped, a pause does not strand them.
    let mut r = restoring(&view);
    for m in ["n1", "n2", "n3"] {
        let c = issue(&mut r, m, Action::Stage { release: target() });
        succeed(&mut r, &c, t(1));
        let c = issue(&mut r, m, Action::Stop);
        succeed(&mut r, &c, t(1));
    }
    r.apply(&Event::PauseRequested {
        by: None,
        reason: "operator".into(),
        at: t(2),
    })
    .unwrap();
    let rounds = run(&view, &mut r, t(3), None);
    assert_eq!(kinds(&rounds[0]), vec!["restore"; 3], "{rounds:?}");
}

#[test]
fn a_member_that_never_reaches_the_revision_pauses_at_the_health_timeout() {
    let view = cluster(&[("n1", L, 150), ("n2", F, 150), ("n3", F, 150)]);
    let mut r = restoring(&view);
    run(&view, &mut r, t(10), None);
    // Healthy on v2 but at revision 50: not the backup's data.
    let low = cluster(&[("n1", L, 50), ("n2", F, 50), ("n3", F, 50)]);
    let low = with_release(
        with_release(with_release(low, "n1", "v2"), "n2", "v2"),
        "n3",
        "v2",
    );
    let late = UnixMs(10 + Policy::default().health_timeout.as_millis() as u64 + 1);
    run(&low, &mut r, late, None);
    let Phase::Paused { reason } = &r.phase else {
        panic!("paused: {:?}", r.phase)
    };
    assert!(
        reason.contains("at revision 100 or later") && reason.contains("it is at 50"),
        "{reason}"
    );
}

#[test]
fn a_restore_pages_from_its_start_until_it_completes() {
    use baton_planner::alerts::AlertStatus;
    use baton_planner::watchdog::Watchdog;
    let view = cluster(&[("n1", L, 150), ("n2", F, 150), ("n3", F, 150)]);
    let mut r = restoring(&view);
    let mut w = Watchdog::new("c1");
    let p = Policy::default();
    let named = |alerts: &[baton_planner::alerts::Alert], status: AlertStatus| {
        alerts
            .iter()
            .filter(|a| a.status == status && a.labels["alertname"] == "BatonRestoreRunning")
            .count()
    };
    let fired = w.evaluate(&view, Some(&r), &p, t(1));
    assert_eq!(named(&fired, AlertStatus::Firing), 1, "{fired:?}");
    assert!(
        fired
            .iter()
            .any(|a| a.annotations["summary"].contains("backup r1-v2-b1 (revision 100)"))
    );
    // Once, not on every evaluation.
    assert_eq!(
        named(&w.evaluate(&view, Some(&r), &p, t(2)), AlertStatus::Firing),
        0
    );
    run(&view, &mut r, t(10), None);
    run(&restored_view(), &mut r, t(30), None);
    assert_eq!(r.phase, Phase::Completed);
    let resolved = w.evaluate(&restored_view(), Some(&r), &p, t(31));
    assert_eq!(named(&resolved, AlertStatus::Resolved), 1, "{resolved:?}");
}
