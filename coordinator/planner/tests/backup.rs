//! Table tests of the pre-upgrade backup: taken beside staging from the
//! most caught-up follower, verified before the first stop, and a failure
//! that pauses (`required`) or goes on without one (`optional`).

mod common;

use baton_planner::decide::Step;
use baton_planner::policy::BackupPolicy;
use baton_planner::rollout::{Action, BackupState, BackupSummary, Event, Phase, RolloutState};
use baton_planner::{Policy, UnixMs, View};
use common::*;

fn policy(backup: BackupPolicy) -> Policy {
    Policy {
        backup,
        ..Policy::default()
    }
}

/// The steps after the fast cadence every moving rollout asks for first.
fn decide(view: &View, r: &RolloutState, p: &Policy, now: UnixMs) -> Vec<Step> {
    let mut steps = baton_planner::decide(view, r, p, now);
    if r.phase.is_moving() {
        assert_eq!(steps.remove(0), Step::Cadence { fast: true });
    }
    steps
}

fn summary(id: &str, member: &str) -> BackupSummary {
    BackupSummary {
        id: id.into(),
        member: common::id(member),
        bytes: 10,
        sha256: "ab".repeat(32),
        revision: 99,
        parts: 1,
        location: "/srv/store".into(),
        verified_at: t(5),
    }
}

/// A cluster where n3 is the most caught-up follower.
fn three() -> View {
    cluster(&[("n1", L, 100), ("n2", F, 95), ("n3", F, 99)])
}

/// Stages every member and takes the backup at once; no member is stopped
/// until the coordinator has verified the backup in the store.
#[test]
fn no_member_is_stopped_until_the_backup_is_verified() {
    let view = three();
    let p = policy(BackupPolicy::Required);
    let mut r = started_needing_a_backup(&view, "n1");
    let steps = decide(&view, &r, &p, t(1));
    let stage = |m: &str| Step::Issue {
        member: id(m),
        action: Action::Stage { release: target() },
    };
    assert_eq!(
        steps,
        vec![
            stage("n2"),
            stage("n3"),
            stage("n1"),
            Step::Issue {
                member: id("n3"),
                action: Action::Backup { id: "r1-b1".into() },
            },
        ],
        "the backup comes from the most caught-up follower, beside staging"
    );
    for m in ["n2", "n3", "n1"] {
        let c = issue(&mut r, m, Action::Stage { release: target() });
        succeed(&mut r, &c, t(2));
    }
    let backup = issue(&mut r, "n3", Action::Backup { id: "r1-b1".into() });
    // A backup runs beside the member's own steps: n3 has nothing in flight.
    assert_eq!(r.members[&id("n3")].inflight, None);
    let waiting = decide(&view, &r, &p, t(3));
    assert!(
        matches!(waiting.as_slice(), [Step::Wait { reason }] if reason.contains("waiting for the pre-upgrade backup r1-b1 from n3")),
        "{waiting:?}"
    );
    succeed(&mut r, &backup, t(4));
    assert_eq!(
        decide(&view, &r, &p, t(4)),
        vec![Step::VerifyBackup {
            id: "r1-b1".into(),
            member: id("n3")
        }]
    );
    r.apply(&Event::BackupVerified {
        summary: summary("r1-b1", "n3"),
        at: t(5),
    })
    .unwrap();
    assert_eq!(
        r.backup.state,
        BackupState::Verified(summary("r1-b1", "n3"))
    );
    assert_eq!(
        decide(&view, &r, &p, t(5)),
        vec![Step::Issue {
            member: id("n2"),
            action: Action::Stop
        }]
    );
}

/// Under `required`, a backup that fails pauses the rollout with the cause
/// and stops nothing; `resume` takes a new one under a new id.
#[test]
fn a_failed_required_backup_pauses_and_resume_takes_a_new_one() {
    let view = three();
    let p = policy(BackupPolicy::Required);
    let mut r = all_staged_needing_a_backup(&view);
    let c = issue(&mut r, "n3", Action::Backup { id: "r1-b1".into() });
    r.apply(&Event::CommandFailed {
        id: c,
        detail: "backup store s3://b/p, key backups/c1/r1-b1/part-00000: bucket b does not exist"
            .into(),
        at: t(3),
    })
    .unwrap();
    let steps = decide(&view, &r, &p, t(3));
    let [Step::Record(Event::Paused { reason, .. })] = steps.as_slice() else {
        panic!("{steps:?}");
    };
    assert!(
        reason.contains("pre-upgrade backup r1-b1 failed: member n3 could not take it")
            && reason.contains("bucket b does not exist")
            && reason.contains("no member was stopped"),
        "{reason}"
    );
    r.apply(&steps[0].clone().into_event()).unwrap();
    assert!(matches!(r.phase, Phase::Paused { .. }));
    r.apply(&Event::Resumed { by: None, at: t(4) }).unwrap();
    assert_eq!(
        decide(&view, &r, &p, t(4)),
        vec![Step::Issue {
            member: id("n3"),
            action: Action::Backup { id: "r1-b2".into() },
        }],
        "a new attempt gets a new id"
    );
}

/// A backup the coordinator cannot verify is a failed backup too.
#[test]
fn a_backup_that_does_not_verify_pauses() {
    let view = three();
    let p = policy(BackupPolicy::Required);
    let mut r = all_staged_needing_a_backup(&view);
    let c = issue(&mut r, "n3", Action::Backup { id: "r1-b1".into() });
    succeed(&mut r, &c, t(3));
    r.apply(&Event::BackupFailed {
        id: "r1-b1".into(),
        reason: "part 0 is corrupt".into(),
        at: t(4),
    })
    .unwrap();
    let steps = decide(&view, &r, &p, t(4));
    assert!(
        matches!(steps.as_slice(), [Step::Record(Event::Paused { reason, .. })] if reason.contains("part 0 is corrupt")),
        "{steps:?}"
    );
}

/// Under `optional`, a failed backup is skipped, and the rollout goes on.
#[test]
fn a_failed_optional_backup_is_skipped() {
    let view = three();
    let p = policy(BackupPolicy::Optional);
    let mut r = all_staged_needing_a_backup(&view);
    let c = issue(&mut r, "n3", Action::Backup { id: "r1-b1".into() });
    r.apply(&Event::CommandFailed {
        id: c,
        detail: "disk full".into(),
        at: t(3),
    })
    .unwrap();
    let steps = decide(&view, &r, &p, t(3));
    let [Step::Record(e @ Event::BackupSkipped { reason, .. })] = steps.as_slice() else {
        panic!("{steps:?}");
    };
    assert!(
        reason.contains("disk full") && reason.contains("optional"),
        "{reason}"
    );
    r.apply(e).unwrap();
    assert_eq!(
        decide(&view, &r, &p, t(4)),
        vec![Step::Issue {
            member: id("n2"),
            action: Action::Stop
        }]
    );
}

#[test]
fn with_backups_off_the_rollout_records_that_it_skipped_one() {
    let view = three();
    let r = all_staged_needing_a_backup(&view);
    let steps = decide(&view, &r, &policy(BackupPolicy::Off), t(3));
    assert!(
        matches!(steps.as_slice(), [Step::Record(Event::BackupSkipped { reason, .. })] if reason.contains("off")),
        "{steps:?}"
    );
}

/// With no follower serving, the backup comes from the leader (a
/// one-member cluster); with no member serving, it waits and says why.
#[test]
fn the_source_is_the_leader_when_it_is_alone_and_nobody_when_all_are_down() {
    let one = cluster(&[("n1", L, 100)]);
    let p = policy(BackupPolicy::Required);
    let r = started_needing_a_backup(&one, "n1");
    let steps = decide(&one, &r, &p, t(1));
    assert!(
        steps.contains(&Step::Issue {
            member: id("n1"),
            action: Action::Backup { id: "r1-b1".into() }
        }),
        "{steps:?}"
    );
    let view = with_down(with_down(with_down(three(), "n1"), "n2"), "n3");
    let r = all_staged_needing_a_backup(&three());
    let steps = decide(&view, &r, &p, t(3));
    assert!(
        !steps.iter().any(|s| matches!(s, Step::Issue { .. })),
        "{steps:?}"
    );
}

fn all_staged_needing_a_backup(view: &View) -> RolloutState {
    let mut r = started_needing_a_backup(view, "n1");
    for m in r.order.clone() {
        let c = issue(&mut r, m.as_str(), Action::Stage { release: target() });
        succeed(&mut r, &c, t(1));
    }
    r
}

trait IntoEvent {
    fn into_event(self) -> Event;
}

impl IntoEvent for Step {
    fn into_event(self) -> Event {
        match self {
            Step::Record(e) => e,
            other => panic!("not a record: {other:?}"),
        }
    }
}
