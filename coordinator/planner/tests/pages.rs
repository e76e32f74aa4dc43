//! One decider for pages: `decide` never pages, the watchdog does. Each
//! situation in which the planner stops for a human is driven here as the
//! driver does (the watchdog sees the view, then `decide` acts, commands
//! succeed at once, repeat), and must end with the watchdog paging.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use baton_planner::alerts::{Alert, AlertStatus, CATCH_UP_STALLED, ROLLOUT_PAUSED};
use baton_planner::policy::OnStall;
use baton_planner::rollout::{Action, Phase, RolloutState, Stage};
use baton_planner::watchdog::Watchdog;
use baton_planner::{Policy, Step, UnixMs, View, decide};
use common::*;

/// Runs the driver's loop on a fixed view at `now` until the planner only
/// waits; returns (alert name, member) of every firing notification.
fn drive(view: &View, r: &mut RolloutState, p: &Policy, now: UnixMs) -> Vec<(String, String)> {
    let mut wd = Watchdog::new("c1");
    let mut fired: Vec<Alert> = Vec::new();
    for _ in 0..32 {
        fired.extend(wd.evaluate(view, Some(r), p, now));
        let mut progressed = false;
        for step in decide(view, r, p, now) {
            match step {
                Step::Record(e) => {
                    r.apply(&e).unwrap();
                    progressed = true;
                }
                Step::Issue { member, action } => {
                    let c = issue_at(r, member.as_str(), action, now);
                    succeed(r, &c, now);
                    progressed = true;
                }
                Step::VerifyBackup { .. } => unreachable!("these tests run with backup = off"),
                Step::Cadence { .. } | Step::Wait { .. } => {}
            }
        }
        if !progressed {
            break;
        }
    }
    fired.extend(wd.evaluate(view, Some(r), p, now));
    fired
        .iter()
        .filter(|a| a.status == AlertStatus::Firing)
        .map(|a| (a.name().to_owned(), a.member().to_owned()))
        .collect()
}

fn alert(name: &str, member: &str) -> (String, String) {
    (name.to_owned(), member.to_owned())
}

fn three() -> View {
    cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)])
}

/// n2 under catch-up with a lag stuck at 96 since t=5000.
fn stuck() -> (View, RolloutState) {
    let view = three();
    let r = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(0) });
    let samples: Vec<(u64, u64, u64)> = (0..40)
        .map(|i| (i, 1000 + i * 1000, if i < 5 { 100 - i } else { 96 }))
        .collect();
    (with_samples(with_lag(view, "n2", 96), "n2", &samples), r)
}

fn stall_policy(on_stall: OnStall) -> Policy {
    Policy {
        stall_after: Duration::from_secs(30),
        on_stall,
        ..Policy::default()
    }
}

#[test]
fn a_member_put_back_after_a_failed_gate_pauses_and_pages() {
    let view = three();
    let mut r = at_stage(
        &view,
        "n1",
        "n2",
        Stage::Reverted {
            reason: "member n2 did not become healthy".into(),
        },
    );
    let fired = drive(&view, &mut r, &Policy::default(), t(10));
    assert!(matches!(r.phase, Phase::Paused { .. }));
    assert_eq!(fired, vec![alert(ROLLOUT_PAUSED, "n2")]);
}

#[test]
fn a_member_whose_data_the_target_cannot_read_pauses_and_pages() {
    let view = three();
    let view = {
        let mut v = view;
        v.members
            .get_mut(&id("n2"))
            .unwrap()
            .report
            .as_mut()
            .unwrap()
            .state
            .format_version = 2;
        v
    };
    // Not yet stopped: the rollout pauses before touching it.
    let mut staged = at_stage(&view, "n1", "n2", Stage::Staged);
    assert_eq!(
        drive(&view, &mut staged, &Policy::default(), t(10)),
        vec![alert(ROLLOUT_PAUSED, "n2")]
    );
    // Already stopped: it is brought back on v1, then the rollout pauses.
    let mut stopped = at_stage(&view, "n1", "n2", Stage::Stopped);
    let fired = drive(&view, &mut stopped, &Policy::default(), t(10));
    assert!(
        stopped.commands.values().any(|c| c.action
            == Action::Switch {
                version: "v1".into()
            }),
        "{stopped:?}"
    );
    assert_eq!(fired, vec![alert(ROLLOUT_PAUSED, "n2")]);
}

#[test]
fn a_catch_up_past_its_timeout_pages_as_a_stall_and_a_pause() {
    let view = three();
    let mut r = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(0) });
    let p = Policy {
        catchup_timeout: Duration::from_secs(5),
        stall_after: Duration::from_secs(60),
        ..Policy::default()
    };
    let view = with_samples(
        with_lag(view, "n2", 70),
        "n2",
        &[(1, 1000, 80), (2, 2000, 70)],
    );
    let fired = drive(&view, &mut r, &p, t(6000));
    assert_eq!(
        fired,
        vec![alert(CATCH_UP_STALLED, "n2"), alert(ROLLOUT_PAUSED, "n2")]
    );
}

#[test]
fn a_stall_pages_whatever_on_stall_says() {
    let table = [
        (
            OnStall::Pause,
            vec![alert(CATCH_UP_STALLED, "n2"), alert(ROLLOUT_PAUSED, "n2")],
        ),
        (OnStall::Wait, vec![alert(CATCH_UP_STALLED, "n2")]),
        (
            OnStall::Rollback,
            vec![alert(CATCH_UP_STALLED, "n2"), alert(ROLLOUT_PAUSED, "n2")],
        ),
    ];
    for (on_stall, want) in table {
        let (view, mut r) = stuck();
        let fired = drive(&view, &mut r, &stall_policy(on_stall), t(35_000));
        assert_eq!(fired, want, "{on_stall:?}");
        let stage = &r.members[&id("n2")].stage;
        match on_stall {
            OnStall::Wait => assert!(matches!(stage, Stage::CatchingUp { .. }), "{stage:?}"),
            OnStall::Pause => assert!(matches!(r.phase, Phase::Paused { .. })),
            OnStall::Rollback => assert!(matches!(stage, Stage::Reverted { .. }), "{stage:?}"),
        }
    }
}

#[test]
fn a_handover_that_failed_twice_pauses_and_pages() {
    let view = three();
    let mut r = at_stage(&view, "n1", "n1", Stage::Staged);
    let p = Policy {
        handover_timeout: Duration::from_secs(10),
        ..Policy::default()
    };
    let c1 = issue_at(&mut r, "n1", Action::StepDown { to: id("n2") }, t(0));
    succeed(&mut r, &c1, t(1));
    let c2 = issue_at(&mut r, "n1", Action::StepDown { to: id("n2") }, t(10_002));
    succeed(&mut r, &c2, t(10_003));
    let fired = drive(&view, &mut r, &p, t(20_003));
    let Phase::Paused { reason } = &r.phase else {
        panic!("{:?}", r.phase)
    };
    assert!(reason.contains("failed after 2 attempts"), "{reason}");
    assert_eq!(fired, vec![alert(ROLLOUT_PAUSED, "n1")]);
}

#[test]
fn a_verify_that_never_holds_pauses_and_pages() {
    let view = three();
    let mut r = started(&view, "n1");
    for m in ["n1", "n2", "n3"] {
        r.members.get_mut(&id(m)).unwrap().stage = Stage::Done;
    }
    let p = Policy {
        catchup_timeout: Duration::from_secs(5),
        ..Policy::default()
    };
    let fired = drive(&view, &mut r, &p, t(6000));
    let Phase::Paused { reason } = &r.phase else {
        panic!("{:?}", r.phase)
    };
    assert!(reason.starts_with("verify failed"), "{reason}");
    assert_eq!(fired, vec![alert(ROLLOUT_PAUSED, "none")]);
}
