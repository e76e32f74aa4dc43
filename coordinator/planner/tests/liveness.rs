//! Issue 10's planner rules, as tables: gates and stops believe only live
//! reports; an exit at start fails the start at once; pause is a safe
//! point; verify waits for the adapter's post-checks; a member that makes
//! no progress pages, whichever gate the rollout waits on.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use baton_domain::Health;
use baton_planner::alerts::{AlertStatus, GATE_STALLED};
use baton_planner::decide::Step;
use baton_planner::rollout::{Action, Event, Gate, Phase, Stage};
use baton_planner::watchdog::Watchdog;
use baton_planner::{Policy, decide, version};
use common::*;

fn not_live(view: baton_planner::View, m: &str) -> baton_planner::View {
    let mut view = view;
    view.members.get_mut(&id(m)).unwrap().live = false;
    view
}

fn waits(steps: &[Step]) -> Vec<&str> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Wait { reason } => Some(reason.as_str()),
            _ => None,
        })
        .collect()
}

fn issues(steps: &[Step]) -> Vec<(String, Action)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Issue { member, action } => Some((member.to_string(), action.clone())),
            _ => None,
        })
        .collect()
}

fn records(steps: &[Step]) -> Vec<&Event> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Record(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// A member that answers "healthy" but is not seen making progress (a
/// frozen process whose agent re-sends its last read, or a stuck apply)
/// holds the next stop; once it is live again the stop goes out.
#[test]
fn a_stop_waits_for_a_live_report_from_every_other_member() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let r = at_stage(&view, "n1", "n2", Stage::Staged);
    let p = Policy::default();
    let held = decide(&not_live(view.clone(), "n3"), &r, &p, t(5));
    assert_eq!(issues(&held), vec![]);
    assert_eq!(
        waits(&held),
        vec![
            "member n2: waiting for a live report from n3 before stopping it (a member not seen making progress may be hung)"
        ]
    );
    assert_eq!(
        issues(&decide(&view, &r, &p, t(6))),
        vec![("n2".to_owned(), Action::Stop)]
    );
}

/// A member frozen just after its last good report is still live for a
/// moment; a stop waits for progress from it after the step before (here:
/// the previous member finishing), so the freeze holds the stop.
#[test]
fn a_stop_waits_for_progress_after_the_step_before_it() {
    let mut view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut r = at_stage(&view, "n1", "n3", Stage::Staged);
    r.members.get_mut(&id("n2")).unwrap().finished_at = Some(t(5_000));
    // n2 is live (a report 10 ms ago), but its last progress was before
    // it finished: frozen right after.
    view.members.get_mut(&id("n2")).unwrap().progressed_at = Some(t(4_990));
    let held = decide(&view, &r, &Policy::default(), t(5_050));
    assert_eq!(issues(&held), vec![]);
    assert!(
        waits(&held)[0].contains("waiting for a live report from n2"),
        "{held:?}"
    );
    view.members.get_mut(&id("n2")).unwrap().progressed_at = Some(t(5_020));
    assert_eq!(
        issues(&decide(&view, &r, &Policy::default(), t(5_060))),
        vec![("n3".to_owned(), Action::Stop)]
    );
}

/// An agent that reports its member unresponsive (a read missed its
/// deadline) counts it as down for `max_unavailable`.
#[test]
fn an_unresponsive_member_counts_as_down() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut frozen = not_live(view, "n3");
    let r3 = frozen.members.get_mut(&id("n3")).unwrap();
    r3.report.as_mut().unwrap().state.health = Health::Unresponsive;
    let r = at_stage(&frozen, "n1", "n2", Stage::Staged);
    let steps = decide(&frozen, &r, &Policy::default(), t(5));
    assert_eq!(issues(&steps), vec![]);
    assert_eq!(
        waits(&steps),
        vec!["member n2: 1 other member(s) down (n3 unresponsive); max_unavailable is 1"]
    );
}

/// The health gate and the catch-up gate pass only on live reports.
#[test]
fn gates_pass_only_on_live_reports() {
    let view = with_release(
        cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]),
        "n2",
        "v2",
    );
    let p = Policy {
        tolerable_lag: 5,
        ..Policy::default()
    };
    let started = at_stage(&view, "n1", "n2", Stage::Started { at: t(1) });
    assert_eq!(
        records(&decide(&not_live(view.clone(), "n2"), &started, &p, t(2))),
        Vec::<&Event>::new()
    );
    assert_eq!(
        records(&decide(&view, &started, &p, t(2))),
        vec![&Event::GatePassed {
            member: id("n2"),
            gate: Gate::Healthy,
            at: t(2)
        }]
    );
    let catching = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(10) });
    let two = with_samples(view, "n2", &[(1, 11, 3), (2, 12, 0)]);
    let frozen = decide(&not_live(two.clone(), "n2"), &catching, &p, t(13));
    assert_eq!(records(&frozen), Vec::<&Event>::new());
    assert!(waits(&frozen)[0].contains("no live report"), "{frozen:?}");
    assert_eq!(
        records(&decide(&two, &catching, &p, t(13))),
        vec![&Event::GatePassed {
            member: id("n2"),
            gate: Gate::CaughtUp,
            at: t(13)
        }]
    );
}

/// A member that exits after its start on the new release is a failed
/// start at once, not at `health_timeout`; `start_retries` tolerates that
/// many exits first.
#[test]
fn an_exit_at_start_fails_the_start_at_once() {
    let mut view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    {
        let rep = view
            .members
            .get_mut(&id("n2"))
            .unwrap()
            .report
            .as_mut()
            .unwrap();
        rep.state.health = Health::Down;
        rep.process.exits_since_start = 1;
        rep.process.last_exit = "exited with exit status: 1".into();
    }
    let r = at_stage(&view, "n1", "n2", Stage::Started { at: t(1) });
    let steps = decide(&view, &r, &Policy::default(), t(20));
    assert_eq!(
        records(&steps),
        vec![&Event::GateFailed {
            member: id("n2"),
            gate: Gate::Healthy,
            reason: "member n2 exited 1 time(s) since it was started (exited with exit status: 1; start_retries 0) on v2; rolling it back to v1".into(),
            at: t(20)
        }]
    );
    let patient = Policy {
        start_retries: 1,
        ..Policy::default()
    };
    assert_eq!(
        records(&decide(&view, &r, &patient, t(20))),
        Vec::<&Event>::new()
    );
}

/// Pausing while a member is between stop and healthy carries it on; the
/// pause lands once it serves again (or was put back).
#[test]
fn pausing_finishes_the_member_in_flight_then_pauses() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let reason = "paused by the operator: lunch".to_owned();
    let mut stopped = at_stage(&view, "n1", "n2", Stage::Stopped);
    stopped.phase = Phase::Pausing {
        reason: reason.clone(),
    };
    assert_eq!(
        issues(&decide(&view, &stopped, &Policy::default(), t(3))),
        vec![(
            "n2".to_owned(),
            Action::Switch {
                version: "v2".into()
            }
        )]
    );
    let mut catching = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(4) });
    catching.phase = Phase::Pausing {
        reason: reason.clone(),
    };
    assert_eq!(
        records(&decide(&view, &catching, &Policy::default(), t(5))),
        vec![&Event::Paused {
            by: None,
            reason: format!("{reason}; member n2 is catching-up"),
            at: t(5)
        }]
    );
}

/// Completion means finished: on etcd's rule, the cluster version must
/// have reached the target's minor.
#[test]
fn verify_waits_for_the_cluster_version() {
    let mut view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    for v in view.members.values_mut() {
        v.version_rule = Some(version::ETCD);
        let rep = v.report.as_mut().unwrap();
        rep.state.release = "3.5.1".into();
        rep.state.cluster_version = "3.4.0".into();
    }
    let mut r = at_stage(&view, "n1", "n1", Stage::Done);
    r.target.version = "3.5.1".into();
    let steps = decide(&view, &r, &Policy::default(), t(5));
    assert_eq!(records(&steps), Vec::<&Event>::new());
    assert!(
        waits(&steps)[0].contains("n1: cluster version 3.4.0 has not reached 3.5 yet"),
        "{steps:?}"
    );
    for v in view.members.values_mut() {
        v.report.as_mut().unwrap().state.cluster_version = "3.5.0".into();
    }
    assert_eq!(
        records(&decide(&view, &r, &Policy::default(), t(6))),
        vec![&Event::Completed { at: t(6) }]
    );
    assert_eq!(version::post_check(&version::ETCD, "3.5.1", "3.5.0"), None);
    assert_eq!(
        version::post_check(&baton_domain::VersionRule::FormatOnly, "v2", ""),
        None
    );
}

/// A member that is not serving for `stall_after` while the rollout moves
/// pages once, labelled with what the rollout waits on, and resolves when
/// it serves again.
#[test]
fn a_member_that_makes_no_progress_pages_naming_the_gate() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let r = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(0) });
    let p = Policy {
        stall_after: Duration::from_secs(3),
        ..Policy::default()
    };
    let frozen = not_live(not_live(view.clone(), "n2"), "n3");
    let mut w = Watchdog::new("c1");
    assert!(w.evaluate(&frozen, Some(&r), &p, t(1_000)).is_empty());
    assert!(w.evaluate(&frozen, Some(&r), &p, t(3_999)).is_empty());
    let fired = w.evaluate(&frozen, Some(&r), &p, t(4_000));
    let got: Vec<(String, String, String)> = fired
        .iter()
        .filter(|a| a.name() == GATE_STALLED && a.status == AlertStatus::Firing)
        .map(|a| {
            (
                a.member().to_owned(),
                a.labels["gate"].clone(),
                a.labels["rollout"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("n2".to_owned(), "caught_up".to_owned(), "r1".to_owned()),
            ("n3".to_owned(), "others_live".to_owned(), "r1".to_owned()),
        ]
    );
    assert_eq!(fired[0].starts_at, t(1_000), "since it stopped serving");
    assert!(
        w.evaluate(&frozen, Some(&r), &p, t(5_000)).is_empty(),
        "once"
    );
    let back = w.evaluate(&view, Some(&r), &p, t(6_000));
    assert_eq!(
        back.iter()
            .filter(|a| a.name() == GATE_STALLED && a.status == AlertStatus::Resolved)
            .count(),
        2
    );
    // A paused rollout pages as paused, not as a stalled gate.
    let mut paused = r.clone();
    paused.phase = Phase::Paused { reason: "x".into() };
    let mut w = Watchdog::new("c1");
    w.evaluate(&frozen, Some(&paused), &p, t(0));
    assert!(
        w.evaluate(&frozen, Some(&paused), &p, t(10_000))
            .iter()
            .all(|a| a.name() != GATE_STALLED)
    );
}

/// Leadership moved to the member after its stop was decided: its agent
/// refuses the stop (the leader interlock). The rollout does not pause; it
/// hands leadership over, then stops the member.
#[test]
fn a_stop_refused_because_the_member_now_leads_hands_over_instead() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut r = at_stage(&view, "n1", "n2", Stage::Staged);
    let stop = issue(&mut r, "n2", Action::Stop);
    r.apply(&Event::CommandFailed {
        id: stop,
        detail: format!(
            "member n2 is the leader; refusing to stop it ({})",
            baton_domain::LEADER_REFUSAL
        ),
        at: t(3),
    })
    .unwrap();
    assert_eq!(r.phase, Phase::Running);
    assert_eq!(r.members[&id("n2")].stage, Stage::Staged);
    let now_led = led_by(view, "n2");
    let steps = decide(&now_led, &r, &Policy::default(), t(4));
    assert!(
        issues(&steps)
            .iter()
            .any(|(m, a)| m == "n2" && matches!(a, Action::StepDown { .. })),
        "{steps:?}"
    );
    // Any other failure of that stop still pauses.
    let mut r2 = at_stage(
        &cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]),
        "n1",
        "n2",
        Stage::Staged,
    );
    let stop = issue(&mut r2, "n2", Action::Stop);
    r2.apply(&Event::CommandFailed {
        id: stop,
        detail: "supervisor stopped".into(),
        at: t(3),
    })
    .unwrap();
    assert!(matches!(r2.phase, Phase::Paused { .. }));
}
