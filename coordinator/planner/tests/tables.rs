//! Table tests of the planner: a view and a rollout in, steps out.

mod common;

use std::time::Duration;

use baton_planner::Policy;
use baton_planner::decide::Step;
use baton_planner::rollout::RolloutState;
use baton_planner::rollout::{Action, Event, Gate, Phase, Stage};
use baton_planner::{LagSample, UnixMs, View};
use common::*;

/// The planner's steps after the fast report cadence that every moving
/// rollout asks for first (asserted here, on every call).
fn decide(view: &View, r: &RolloutState, p: &Policy, now: UnixMs) -> Vec<Step> {
    let mut steps = baton_planner::decide(view, r, p, now);
    if r.phase.is_moving() {
        assert_eq!(
            steps.first(),
            Some(&Step::Cadence { fast: true }),
            "{steps:?}"
        );
        steps.remove(0);
    }
    steps
}

/// Staging never takes a member down, so a new rollout stages every
/// member at once, in order; nothing else happens until they answer.
#[test]
fn a_new_rollout_stages_every_member_at_once() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut r = started(&view, "n1");
    assert_eq!(r.order, ids(&["n2", "n3", "n1"]));
    let stage = |m: &str| Step::Issue {
        member: id(m),
        action: Action::Stage { release: target() },
    };
    assert_eq!(
        decide(&view, &r, &Policy::default(), t(1)),
        vec![stage("n2"), stage("n3"), stage("n1")]
    );
    // Issued: only waits, and no member is staged twice.
    let cmds: Vec<_> = ["n2", "n3", "n1"]
        .iter()
        .map(|m| issue(&mut r, m, Action::Stage { release: target() }))
        .collect();
    assert!(matches!(
        decide(&view, &r, &Policy::default(), t(2)).as_slice(),
        [Step::Wait { .. }]
    ));
    // The first follower moves on as soon as it is staged, whatever the
    // others' stage commands are doing.
    succeed(&mut r, &cmds[0], t(3));
    assert_eq!(
        decide(&view, &r, &Policy::default(), t(3)),
        vec![Step::Issue {
            member: id("n2"),
            action: Action::Stop
        }]
    );
}

#[test]
fn followers_go_most_lagging_first_then_by_id() {
    let view = cluster(&[("n1", F, 90), ("n2", L, 100), ("n3", F, 95), ("n4", F, 90)]);
    assert_eq!(started(&view, "n2").order, ids(&["n1", "n4", "n3", "n2"]));
}

#[test]
fn a_command_in_flight_means_wait() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut r = all_staged(&view, "n1");
    issue(&mut r, "n2", Action::Stop);
    assert!(matches!(
        decide(&view, &r, &Policy::default(), t(2)).as_slice(),
        [Step::Wait { .. }]
    ));
}

#[test]
fn the_forward_path_of_one_follower() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut r = all_staged(&view, "n1");
    let p = Policy::default();
    for want in [
        Action::Stop,
        Action::Switch {
            version: "v2".into(),
        },
        Action::Start,
    ] {
        assert_eq!(
            decide(&view, &r, &p, t(2)),
            vec![Step::Issue {
                member: id("n2"),
                action: want.clone()
            }]
        );
        let cmd = issue(&mut r, "n2", want);
        succeed(&mut r, &cmd, t(3));
    }
    assert!(matches!(r.members[&id("n2")].stage, Stage::Started { .. }));
    // Not yet on the target: wait.
    assert!(
        decide(&view, &r, &p, t(4))
            .iter()
            .any(|s| matches!(s, Step::Wait { .. }))
    );
    // Healthy on v2: the health gate passes.
    let view = with_release(view, "n2", "v2");
    assert_eq!(
        decide(&view, &r, &p, t(5)),
        vec![Step::Record(Event::GatePassed {
            member: id("n2"),
            gate: Gate::Healthy,
            at: t(5)
        })]
    );
}

/// A follower back from a restart reads its own log back: it can report
/// healthy and within `tolerable_lag` before the leader sends it anything
/// (samplekv's leader waited out a 200 ms reconnect backoff). Two readings
/// that applied nothing, with the leader ahead, are not a catch-up.
#[test]
fn the_catch_up_gate_needs_the_member_seen_applying() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let r = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(10) });
    let p = Policy {
        tolerable_lag: 10,
        ..Policy::default()
    };
    let samples = |applied: [u64; 2], lags: [u64; 2]| {
        let mut view = view.clone();
        view.members.get_mut(&id("n2")).unwrap().lag_samples = (0..2)
            .map(|i| LagSample {
                seq: i as u64 + 1,
                at: UnixMs(11 + i as u64),
                lag: lags[i],
                applied: applied[i],
            })
            .collect();
        view
    };
    let passed = |view: &View| {
        decide(view, &r, &p, t(13)).contains(&Step::Record(Event::GatePassed {
            member: id("n2"),
            gate: Gate::CaughtUp,
            at: t(13),
        }))
    };
    assert!(
        !passed(&samples([95, 95], [4, 6])),
        "replayed its log, nothing since"
    );
    assert!(passed(&samples([95, 99], [4, 2])), "applying");
    assert!(passed(&samples([100, 100], [0, 0])), "applied everything");
}

#[test]
fn the_catch_up_gate_needs_two_consecutive_reports() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut r = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(10) });
    let p = Policy {
        tolerable_lag: 5,
        ..Policy::default()
    };
    let one = with_samples(view.clone(), "n2", &[(1, 11, 40), (2, 12, 3)]);
    assert!(
        !decide(&one, &r, &p, t(13))
            .iter()
            .any(|s| matches!(s, Step::Record(_)))
    );
    let gap = with_samples(view.clone(), "n2", &[(1, 11, 3), (3, 12, 3)]);
    assert!(
        !decide(&gap, &r, &p, t(13))
            .iter()
            .any(|s| matches!(s, Step::Record(_))),
        "not consecutive"
    );
    let two = with_samples(view, "n2", &[(1, 11, 40), (2, 12, 3), (3, 13, 0)]);
    let steps = decide(&two, &r, &p, t(14));
    assert!(steps.contains(&Step::Record(Event::GatePassed {
        member: id("n2"),
        gate: Gate::CaughtUp,
        at: t(14)
    })));
    r.apply(&Event::GatePassed {
        member: id("n2"),
        gate: Gate::CaughtUp,
        at: t(14),
    })
    .unwrap();
    // Soak 0: done at once, then the next follower.
    assert_eq!(
        decide(&two, &r, &p, t(14)),
        vec![Step::Record(Event::GatePassed {
            member: id("n2"),
            gate: Gate::Soaked,
            at: t(14)
        })]
    );
}

#[test]
fn a_catch_up_that_never_finishes_pauses_naming_member_and_lag() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let r = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(0) });
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
    let steps = decide(&view, &r, &p, t(6000));
    let Some(Step::Record(Event::Paused { reason, .. })) = steps.first() else {
        panic!("{steps:?}")
    };
    assert_eq!(
        reason,
        "member n2 did not catch up: lag 70 > 10 after 6s (catchup_timeout 5s)"
    );
    // It pages: the watchdog, seeing the same view, raises the stall.
    let fired = baton_planner::watchdog::Watchdog::new("c1").evaluate(&view, Some(&r), &p, t(6000));
    assert!(
        fired
            .iter()
            .any(|a| a.name() == baton_planner::alerts::CATCH_UP_STALLED && a.member() == "n2"),
        "{fired:?}"
    );
}

#[test]
fn a_lag_that_stops_shrinking_is_a_stall() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let r = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(0) });
    let p = Policy {
        stall_after: Duration::from_secs(30),
        ..Policy::default()
    };
    let samples: Vec<(u64, u64, u64)> = (0..40)
        .map(|i| (i, 1000 + i * 1000, if i < 5 { 100 - i } else { 96 }))
        .collect();
    let view = with_samples(with_lag(view, "n2", 96), "n2", &samples);
    // Lag last shrank at t=5000; at t=34000 that is 29 s: still waiting.
    assert!(
        !decide(&view, &r, &p, t(34_000))
            .iter()
            .any(|s| matches!(s, Step::Record(_)))
    );
    let steps = decide(&view, &r, &p, t(35_000));
    assert!(
        matches!(&steps[0], Step::Record(Event::Paused { reason, .. }) if reason.contains("stalled") && reason.contains("n2")),
        "{steps:?}"
    );
}

#[test]
fn the_report_that_passed_the_health_gate_does_not_count_for_catch_up() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    // Healthy at t=10; the report that showed it came at t=9.
    let r = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(10) });
    let p = Policy {
        tolerable_lag: 5,
        ..Policy::default()
    };
    let passed = |samples: &[(u64, u64, u64)]| {
        decide(&with_samples(view.clone(), "n2", samples), &r, &p, t(30))
            .iter()
            .any(|s| {
                matches!(
                    s,
                    Step::Record(Event::GatePassed {
                        gate: Gate::CaughtUp,
                        ..
                    })
                )
            })
    };
    assert!(
        !passed(&[(7, 9, 3), (8, 12, 2)]),
        "one report since the gate"
    );
    assert!(
        passed(&[(7, 9, 3), (8, 12, 2), (9, 20, 1)]),
        "two since the gate"
    );
}

#[test]
fn a_stall_is_seen_however_little_the_sample_window_holds() {
    // Reports every 10 ms fill the window in seconds; the lag has grown
    // since the catch-up began at t=0 and never shrank.
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let r = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(0) });
    let p = Policy {
        stall_after: Duration::from_secs(30),
        catchup_timeout: Duration::from_secs(300),
        ..Policy::default()
    };
    let samples: Vec<(u64, u64, u64)> = (0..256).map(|i| (i, 32_440 + i * 10, 3_000 + i)).collect();
    let view = with_samples(with_lag(view, "n2", 3_255), "n2", &samples);
    assert_eq!(view.members[&id("n2")].lag_shrank_at, None);
    let steps = decide(&view, &r, &p, t(35_000));
    assert!(
        matches!(&steps[0], Step::Record(Event::Paused { reason, .. }) if reason.contains("stalled")),
        "stalled since the catch-up began, not since the oldest reading kept: {steps:?}"
    );
}

#[test]
fn the_leader_hands_over_to_the_most_caught_up_upgraded_follower() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 97), ("n3", F, 99)]);
    let view = with_release(with_release(view, "n2", "v2"), "n3", "v2");
    let r = at_stage(&view, "n1", "n1", Stage::Staged);
    assert_eq!(
        decide(&view, &r, &Policy::default(), t(50)),
        vec![
            Step::Record(Event::HandoverPicked {
                to: id("n3"),
                lags: vec![(id("n2"), 3), (id("n3"), 1)],
                at: t(50)
            }),
            Step::Issue {
                member: id("n1"),
                action: Action::StepDown { to: id("n3") }
            }
        ]
    );
}

#[test]
fn a_handover_is_confirmed_only_when_every_report_names_the_new_leader() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut r = at_stage(&view, "n1", "n1", Stage::Staged);
    let cmd = issue(&mut r, "n1", Action::StepDown { to: id("n3") });
    succeed(&mut r, &cmd, t(60));
    // The agent said ok, but the view still shows n1 leading: wait, never stop.
    let steps = decide(&view, &r, &Policy::default(), t(61));
    assert!(
        !steps.iter().any(|s| matches!(
            s,
            Step::Issue {
                action: Action::Stop,
                ..
            }
        )),
        "{steps:?}"
    );
    let moved = led_by(view, "n3");
    assert!(
        decide(&moved, &r, &Policy::default(), t(62)).contains(&Step::Record(
            Event::HandoverConfirmed {
                to: id("n3"),
                at: t(62)
            }
        ))
    );
    r.apply(&Event::HandoverConfirmed {
        to: id("n3"),
        at: t(62),
    })
    .unwrap();
    assert_eq!(
        decide(&moved, &r, &Policy::default(), t(63)),
        vec![Step::Issue {
            member: id("n1"),
            action: Action::Stop
        }]
    );
}

#[test]
fn a_handover_is_retried_once_then_pauses_without_stopping_the_leader() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut r = at_stage(&view, "n1", "n1", Stage::Staged);
    let p = Policy {
        handover_timeout: Duration::from_secs(10),
        ..Policy::default()
    };
    let c1 = issue_at(&mut r, "n1", Action::StepDown { to: id("n2") }, t(0));
    succeed(&mut r, &c1, t(1));
    let retry = decide(&view, &r, &p, t(10_001));
    assert!(
        retry.iter().any(|s| matches!(
            s,
            Step::Issue {
                action: Action::StepDown { .. },
                ..
            }
        )),
        "{retry:?}"
    );
    let c2 = issue_at(&mut r, "n1", Action::StepDown { to: id("n2") }, t(10_002));
    succeed(&mut r, &c2, t(10_003));
    let steps = decide(&view, &r, &p, t(20_003));
    assert!(
        matches!(&steps[0], Step::Record(Event::Paused { reason, .. })
        if reason.contains("handover from leader n1 to n2 failed after 2 attempts") && reason.contains("n1 was not stopped")),
        "{steps:?}"
    );
}

#[test]
fn an_unhealthy_start_rolls_the_member_back_and_pauses() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let view = with_down(view, "n2");
    let mut r = at_stage(&view, "n1", "n2", Stage::Started { at: t(0) });
    let p = Policy {
        health_timeout: Duration::from_secs(3),
        ..Policy::default()
    };
    assert!(
        !decide(&view, &r, &p, t(2999))
            .iter()
            .any(|s| matches!(s, Step::Record(_)))
    );
    let steps = decide(&view, &r, &p, t(3001));
    let [Step::Record(ev @ Event::GateFailed { reason, .. })] = steps.as_slice() else {
        panic!("{steps:?}")
    };
    assert!(
        reason.starts_with("member n2 did not become healthy on v2 within 3s"),
        "{reason}"
    );
    r.apply(ev).unwrap();
    // Back: stop (it may crash-loop), switch to v1, start. The others are up.
    for want in [
        Action::Stop,
        Action::Switch {
            version: "v1".into(),
        },
        Action::Start,
    ] {
        let steps = decide(&view, &r, &p, t(3002));
        assert_eq!(
            steps,
            vec![Step::Issue {
                member: id("n2"),
                action: want.clone()
            }],
            "{want:?}"
        );
        let c = issue(&mut r, "n2", want);
        succeed(&mut r, &c, t(3003));
    }
    let steps = decide(&view, &r, &p, t(3004));
    assert!(
        matches!(&steps[0], Step::Record(Event::Paused { .. })),
        "{steps:?}"
    );
    r.apply(match &steps[0] {
        Step::Record(e) => e,
        _ => unreachable!(),
    })
    .unwrap();
    assert!(matches!(r.phase, Phase::Paused { .. }));
}

#[test]
fn stop_waits_while_another_member_is_down() {
    let view = with_down(
        cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]),
        "n3",
    );
    let r = at_stage(&view, "n1", "n2", Stage::Staged);
    let steps = decide(&view, &r, &Policy::default(), t(1));
    assert!(
        matches!(&steps[..], [Step::Wait { reason }] if reason.contains("max_unavailable is 1")),
        "{steps:?}"
    );
}

#[test]
fn abort_stops_between_steps_and_never_leaves_a_member_stopped() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut stopped = at_stage(&view, "n1", "n2", Stage::Stopped);
    stopped
        .apply(&Event::AbortRequested { by: None, at: t(1) })
        .unwrap();
    assert_eq!(
        decide(&view, &stopped, &Policy::default(), t(2)),
        vec![Step::Issue {
            member: id("n2"),
            action: Action::Switch {
                version: "v2".into()
            }
        }],
        "a stopped member is brought back up first"
    );
    let mut catching = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(0) });
    catching
        .apply(&Event::AbortRequested { by: None, at: t(1) })
        .unwrap();
    let steps = decide(&view, &catching, &Policy::default(), t(2));
    assert!(
        matches!(&steps[..], [Step::Record(Event::Paused { reason, .. })] if reason.contains("aborted"))
    );
}

#[test]
fn verify_completes_when_all_are_on_target_with_one_leader() {
    let view = cluster(&[("n1", F, 100), ("n2", F, 100), ("n3", L, 100)]);
    let mut r = started(&view, "n1");
    for m in ["n1", "n2", "n3"] {
        r.members.get_mut(&id(m)).unwrap().stage = Stage::Done;
    }
    assert!(matches!(
        decide(&view, &r, &Policy::default(), t(1)).as_slice(),
        [Step::Wait { .. }]
    ));
    let on_v2 = ["n1", "n2", "n3"]
        .iter()
        .fold(view, |v, m| with_release(v, m, "v2"));
    assert_eq!(
        decide(&on_v2, &r, &Policy::default(), t(2)),
        vec![
            Step::Cadence { fast: false },
            Step::Record(Event::Completed { at: t(2) })
        ]
    );
}

#[test]
fn etcd_version_paths() {
    use baton_planner::preflight::version_path;
    assert_eq!(version_path("3.4.23", "3.5.1", "3.4.0"), None);
    assert_eq!(
        version_path("3.5.1", "3.4.23", "3.4.0"),
        None,
        "rollback before the cluster version moves"
    );
    let skip = version_path("3.4.23", "3.6.0", "3.4.0").unwrap();
    assert_eq!(
        skip,
        "3.4.23 -> 3.6.0 skips minor release 3.5; upgrade one minor release at a time"
    );
    let below = version_path("3.5.1", "3.4.23", "3.5.0").unwrap();
    assert!(
        below.starts_with(
            "the cluster version is 3.5 (3.5.0), so 3.4.23 would be a downgrade below it"
        ),
        "{below}"
    );
    assert!(
        version_path("3.5.1", "4.0.0", "3.5.0")
            .unwrap()
            .contains("major")
    );
    assert!(
        version_path("weird", "3.5.1", "3.4.0")
            .unwrap()
            .contains("refusing rather than guessing")
    );
}

#[test]
fn the_handover_target_is_judged_by_recent_lag_not_one_skewed_report() {
    // n2's last report happened to be taken later (higher applied), but its
    // lag readings say it trails; n3 keeps up.
    let view = cluster(&[("n1", L, 100), ("n2", F, 98), ("n3", F, 97)]);
    let view = with_release(with_release(view, "n2", "v2"), "n3", "v2");
    let view = with_samples(view, "n2", &[(1, 10, 10), (2, 20, 12), (3, 30, 11)]);
    let view = with_samples(view, "n3", &[(1, 10, 2), (2, 20, 1), (3, 30, 3)]);
    let r = at_stage(&view, "n1", "n1", Stage::Staged);
    assert!(
        decide(&view, &r, &Policy::default(), t(50)).contains(&Step::Issue {
            member: id("n1"),
            action: Action::StepDown { to: id("n3") }
        })
    );
}

#[test]
fn a_rollback_walks_back_only_the_upgraded_members_in_reverse_with_the_leader_last() {
    use baton_planner::preflight::{ArtifactVerdict, start_rollback};
    // n2 and n3 were upgraded (order n2, n3, n1), then the rollout paused;
    // n3 leads now.
    let view = cluster(&[("n1", F, 100), ("n2", F, 100), ("n3", L, 100)]);
    let from = started(&view, "n1");
    assert_eq!(from.order, ids(&["n2", "n3", "n1"]));
    let view = with_release(with_release(view, "n2", "v2"), "n3", "v2");
    let v1 = baton_domain::ReleaseRef {
        name: "kv".into(),
        version: "v1".into(),
        format_version: 1,
        sha256: "cd".repeat(32),
    };
    let artifact = ArtifactVerdict::Verified {
        release: v1.clone(),
        size: 1,
    };
    let Ok(Event::Started {
        order,
        target,
        previous,
        ..
    }) = start_rollback(&[], "r2".into(), &view, &from, &artifact, t(9))
    else {
        panic!("rollback refused")
    };
    assert_eq!(
        order,
        ids(&["n2", "n3"]),
        "reverse order is n3, n2; the leader n3 goes last"
    );
    assert_eq!((target, previous), (v1, "v2".to_owned()));
}

#[test]
fn the_dry_run_previews_the_handover_the_real_pick_would_make() {
    use baton_planner::decide::handover_target;
    use baton_planner::preflight::planned_steps;
    // The two old rules disagree: n2 shows the highest applied revision (its
    // report happened to be taken later), n3 the lowest recent lag.
    let view = cluster(&[("n1", L, 100), ("n2", F, 98), ("n3", F, 97)]);
    let view = with_samples(view, "n2", &[(1, 10, 10), (2, 20, 12), (3, 30, 11)]);
    let view = with_samples(view, "n3", &[(1, 10, 2), (2, 20, 1), (3, 30, 3)]);
    let (steps, preview) = planned_steps(&view, "v2", &Policy::default());
    let real = handover_target(&view, &started(&view, "n1"), &id("n1"));
    assert_eq!(preview, real);
    assert_eq!(preview, Some(id("n3")), "recent lag, not applied revision");
    assert!(
        steps.iter().any(|s| s.action == "hand leadership to n3"),
        "{steps:?}"
    );
}

/// The dry run lists what happens while every member still serves: the
/// stage, each agent's own checks by name and command (as its Hello named
/// them), and the backup with its source and policy.
#[test]
fn the_dry_run_lists_the_stage_checks_and_the_backup_before_any_stop() {
    use baton_planner::policy::BackupPolicy;
    use baton_planner::preflight::planned_steps;
    let mut view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 99)]);
    view.members.get_mut(&id("n2")).unwrap().stage_checks = vec![
        baton_domain::StageCheck {
            name: "doctor".into(),
            command: "z4j doctor".into(),
        },
        baton_domain::StageCheck {
            name: "setting REDIS_URL".into(),
            command: "grep -q '^REDIS_URL=' .env".into(),
        },
    ];
    let p = Policy {
        backup: BackupPolicy::Required,
        ..Policy::default()
    };
    let (steps, _) = planned_steps(&view, "v2", &p);
    let first_upgrade = steps
        .iter()
        .position(|s| s.action.starts_with("upgrade:"))
        .unwrap();
    let before: Vec<(Option<&str>, &str)> = steps[..first_upgrade]
        .iter()
        .map(|s| (s.member.as_ref().map(|m| m.as_str()), s.action.as_str()))
        .collect();
    assert_eq!(before.len(), 3, "{steps:#?}");
    assert!(before[0].0.is_none() && before[0].1.starts_with("stage v2 on every member"));
    assert_eq!(
        before[1],
        (
            Some("n2"),
            "check the staged v2: doctor (`z4j doctor`); setting REDIS_URL (`grep -q '^REDIS_URL=' .env`)"
        ),
        "only the member whose agent has checks, each by name and command"
    );
    assert_eq!(
        before[2].0,
        Some("n2"),
        "the most caught-up follower backs up"
    );
    assert!(before[2].1.starts_with("back up"), "{steps:#?}");
    assert!(
        steps[first_upgrade - 1]
            .reason
            .contains("backup = \"required\""),
        "{steps:#?}"
    );

    // backup = "off": no backup step; no checks: no check step.
    view.members
        .get_mut(&id("n2"))
        .unwrap()
        .stage_checks
        .clear();
    let (steps, _) = planned_steps(&view, "v2", &Policy::default());
    assert!(steps[1].action.starts_with("upgrade:"), "{steps:#?}");
}

#[test]
fn a_member_needs_free_disk_for_twice_the_artifact() {
    use baton_planner::preflight::{ArtifactVerdict, DISK_PER_ARTIFACT_BYTE, required_disk};
    assert_eq!(DISK_PER_ARTIFACT_BYTE, 2);
    let verified = ArtifactVerdict::Verified {
        release: target(),
        size: 300,
    };
    assert_eq!(required_disk(&verified), 600);
    let missing = ArtifactVerdict::Missing {
        detail: "not there".into(),
    };
    assert_eq!(required_disk(&missing), 0);
    let huge = ArtifactVerdict::Verified {
        release: target(),
        size: u64::MAX,
    };
    assert_eq!(required_disk(&huge), u64::MAX);
}

/// A one-member cluster (a single-member app under the exec adapter) is
/// upgraded in place: stop, switch, start, healthy on the target, done. Its
/// leader is never handed over (there is no one to hand to), and a failed
/// health wait puts it back on the previous release.
#[test]
fn a_single_member_cluster_upgrades_in_place_with_no_handover() {
    let view = cluster(&[("app1", L, 7)]);
    let p = Policy::default();
    assert_eq!(
        p.health_timeout,
        Duration::from_secs(180),
        "the health wait is 3 minutes by default, as Piprio's"
    );
    let (plan, handover) = baton_planner::preflight::planned_steps(&view, "v2", &p);
    assert_eq!(handover, None);
    assert_eq!(
        plan.iter()
            .map(|s| s.action.split(':').next().unwrap_or(""))
            .collect::<Vec<_>>(),
        vec!["stage v2 on every member", "upgrade in place", "verify"],
        "{plan:?}"
    );
    let mut r = all_staged(&view, "app1");
    assert_eq!(r.order, ids(&["app1"]));
    for want in [
        Action::Stop,
        Action::Switch {
            version: "v2".into(),
        },
        Action::Start,
    ] {
        assert_eq!(
            decide(&view, &r, &p, t(2)),
            vec![Step::Issue {
                member: id("app1"),
                action: want.clone()
            }]
        );
        let cmd = issue(&mut r, "app1", want);
        succeed(&mut r, &cmd, t(3));
    }
    let up = with_samples(with_release(view.clone(), "app1", "v2"), "app1", &[]);
    assert_eq!(
        decide(&up, &r, &p, t(5)),
        vec![Step::Record(Event::GatePassed {
            member: id("app1"),
            gate: Gate::Healthy,
            at: t(5)
        })]
    );
    r.apply(&Event::GatePassed {
        member: id("app1"),
        gate: Gate::Healthy,
        at: t(5),
    })
    .unwrap();
    // Alone, it is its own leader: lag 0 on two consecutive reports.
    let up = with_samples(up, "app1", &[(1, 6, 0), (2, 7, 0)]);
    assert_eq!(
        decide(&up, &r, &p, t(8)),
        vec![Step::Record(Event::GatePassed {
            member: id("app1"),
            gate: Gate::CaughtUp,
            at: t(8)
        })]
    );
    for (gate, at) in [(Gate::CaughtUp, 8), (Gate::Soaked, 9)] {
        r.apply(&Event::GatePassed {
            member: id("app1"),
            gate,
            at: t(at),
        })
        .unwrap();
    }
    assert_eq!(
        decide(&up, &r, &p, t(10)),
        vec![
            Step::Cadence { fast: false },
            Step::Record(Event::Completed { at: t(10) })
        ]
    );
    assert!(
        !r.commands
            .values()
            .any(|c| matches!(c.action, Action::StepDown { .. })),
        "no handover"
    );

    // Started on v2 but never healthy within the health wait: back to v1.
    let mut r = all_staged(&view, "app1");
    for a in [
        Action::Stop,
        Action::Switch {
            version: "v2".into(),
        },
        Action::Start,
    ] {
        let cmd = issue(&mut r, "app1", a);
        succeed(&mut r, &cmd, t(3));
    }
    let down = with_down(view, "app1");
    let late = t(3 + 180_001);
    let steps = decide(&down, &r, &p, late);
    let [Step::Record(Event::GateFailed { member, reason, .. })] = steps.as_slice() else {
        panic!("{steps:?}");
    };
    assert_eq!(member, &id("app1"));
    assert!(
        reason.contains("did not become healthy on v2 within 180s")
            && reason.contains("rolling it back to v1"),
        "{reason}"
    );
    let Step::Record(failed) = &steps[0] else {
        unreachable!()
    };
    r.apply(failed).unwrap();
    assert_eq!(
        decide(&down, &r, &p, late),
        vec![Step::Issue {
            member: id("app1"),
            action: Action::Stop
        }]
    );
}
