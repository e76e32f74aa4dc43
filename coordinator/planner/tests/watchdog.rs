//! Table tests of the watchdog: a view, a rollout and a clock in, alert
//! notifications out. Each alert fires once per condition and resolves once.

mod common;

use std::time::Duration;

use baton_planner::Policy;
use baton_planner::alerts::{
    AGENT_DOWN, AGENT_STATE_DISK_LOW, Alert, AlertStatus, CATCH_UP_STALLED, ROLLOUT_PAUSED,
};
use baton_planner::rollout::{Phase, Stage};
use baton_planner::watchdog::{Watchdog, describe_trend, lag_trend};
use common::*;

fn policy() -> Policy {
    Policy {
        tolerable_lag: 10,
        stall_after: Duration::from_secs(30),
        catchup_timeout: Duration::from_secs(300),
        steady_stall_after: Duration::from_secs(60),
        agent_down_after: Duration::from_secs(30),
        ..Policy::default()
    }
}

/// (status, alertname, member, rollout) of each notification.
fn brief(alerts: &[Alert]) -> Vec<(AlertStatus, String, String, String)> {
    alerts
        .iter()
        .map(|a| {
            (
                a.status,
                a.name().to_owned(),
                a.member().to_owned(),
                a.labels["rollout"].clone(),
            )
        })
        .collect()
}

fn firing(name: &str, member: &str, rollout: &str) -> (AlertStatus, String, String, String) {
    (
        AlertStatus::Firing,
        name.into(),
        member.into(),
        rollout.into(),
    )
}

fn resolved(name: &str, member: &str, rollout: &str) -> (AlertStatus, String, String, String) {
    (
        AlertStatus::Resolved,
        name.into(),
        member.into(),
        rollout.into(),
    )
}

/// Samples one second apart from `from_s`, lag given per sample.
fn samples(from_s: u64, lags: &[u64]) -> Vec<(u64, u64, u64)> {
    lags.iter()
        .enumerate()
        .map(|(i, l)| (i as u64, (from_s + i as u64) * 1000, *l))
        .collect()
}

#[test]
fn a_catch_up_stall_fires_once_with_labels_and_annotations_then_resolves() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let r = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(0) });
    let p = policy();
    let mut w = Watchdog::new("c1");
    // Lag shrank last at t=5 s, then grew: stalled from 5 s.
    let mut lags: Vec<u64> = vec![100, 90, 80, 70, 60, 50];
    lags.extend((0..40).map(|i| 50 + i * 5));
    let stalled = with_samples(with_lag(view.clone(), "n2", 245), "n2", &samples(0, &lags));
    assert!(w.evaluate(&stalled, Some(&r), &p, t(34_900)).is_empty());
    let out = w.evaluate(&stalled, Some(&r), &p, t(35_000));
    assert_eq!(brief(&out), vec![firing(CATCH_UP_STALLED, "n2", "r1")]);
    let a = &out[0];
    assert_eq!(a.labels["cluster"], "c1");
    assert_eq!(a.annotations["lag"], "245");
    assert_eq!(a.annotations["stalled_for"], "30.0s");
    assert_eq!(a.annotations["trend"], "+5.0/s (falling behind)");
    assert!(a.annotations["runbook"].contains("baton resume"));
    assert!(
        a.annotations["summary"].contains("during rollout r1"),
        "{a:?}"
    );
    assert_eq!(a.starts_at, t(5_000));
    // Once per stall: later evaluations add nothing.
    assert!(w.evaluate(&stalled, Some(&r), &p, t(36_000)).is_empty());
    assert!(w.evaluate(&stalled, Some(&r), &p, t(90_000)).is_empty());
    // Shrinking again is not enough; the lag must be within bounds.
    let shrinking = with_samples(
        with_lag(view.clone(), "n2", 40),
        "n2",
        &samples(88, &[245, 100, 40]),
    );
    assert!(w.evaluate(&shrinking, Some(&r), &p, t(91_000)).is_empty());
    let caught_up = with_lag(shrinking, "n2", 3);
    let out = w.evaluate(&caught_up, Some(&r), &p, t(92_000));
    assert_eq!(brief(&out), vec![resolved(CATCH_UP_STALLED, "n2", "r1")]);
    assert_eq!(out[0].ends_at, Some(t(92_000)));
    assert_eq!(out[0].key(), a.key());
    assert_eq!(w.firing().count(), 0);
}

#[test]
fn catchup_timeout_is_a_stall_even_while_the_lag_shrinks() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let r = at_stage(&view, "n1", "n2", Stage::CatchingUp { since: t(0) });
    let p = Policy {
        catchup_timeout: Duration::from_secs(5),
        ..policy()
    };
    let view = with_samples(
        with_lag(view, "n2", 50),
        "n2",
        &samples(0, &[90, 80, 70, 60, 55, 50]),
    );
    let mut w = Watchdog::new("c1");
    assert!(w.evaluate(&view, Some(&r), &p, t(5_000)).is_empty());
    let out = w.evaluate(&view, Some(&r), &p, t(5_001));
    assert_eq!(brief(&out), vec![firing(CATCH_UP_STALLED, "n2", "r1")]);
    assert!(
        out[0].annotations["summary"].contains("catchup_timeout"),
        "{out:?}"
    );
}

#[test]
fn a_steady_state_lag_above_threshold_fires_after_steady_stall_after() {
    let view = cluster(&[("n1", L, 500), ("n2", F, 500), ("n3", F, 100)]);
    let p = policy();
    let mut w = Watchdog::new("c1");
    // First seen above at t=1 s; no rollout at all.
    assert!(w.evaluate(&view, None, &p, t(1_000)).is_empty());
    assert!(w.evaluate(&view, None, &p, t(60_999)).is_empty());
    let out = w.evaluate(&view, None, &p, t(61_000));
    assert_eq!(brief(&out), vec![firing(CATCH_UP_STALLED, "n3", "none")]);
    assert!(out[0].annotations["summary"].contains("outside a rollout"));
    // Dipping below resets the spell; the alert resolves.
    let ok = with_lag(view.clone(), "n3", 0);
    assert_eq!(
        brief(&w.evaluate(&ok, None, &p, t(62_000))),
        vec![resolved(CATCH_UP_STALLED, "n3", "none")]
    );
    // A new spell needs the full steady_stall_after again.
    assert!(w.evaluate(&view, None, &p, t(63_000)).is_empty());
    assert!(w.evaluate(&view, None, &p, t(122_999)).is_empty());
    assert_eq!(w.evaluate(&view, None, &p, t(123_000)).len(), 1);
}

#[test]
fn a_completed_rollout_leaves_the_steady_state_rule() {
    let view = cluster(&[("n1", L, 500), ("n2", F, 500), ("n3", F, 100)]);
    let mut r = at_stage(&view, "n1", "n3", Stage::CatchingUp { since: t(0) });
    r.phase = Phase::Completed;
    let mut w = Watchdog::new("c1");
    w.evaluate(&view, Some(&r), &policy(), t(0));
    // Not the rollout rule (stall_after 30 s would have fired by now).
    assert!(w.evaluate(&view, Some(&r), &policy(), t(45_000)).is_empty());
    assert_eq!(
        brief(&w.evaluate(&view, Some(&r), &policy(), t(60_000))),
        vec![firing(CATCH_UP_STALLED, "n3", "none")]
    );
}

#[test]
fn an_unknown_lag_neither_fires_nor_resolves_a_stall() {
    let view = cluster(&[("n1", L, 500), ("n2", F, 500), ("n3", F, 100)]);
    let mut w = Watchdog::new("c1");
    let p = Policy {
        agent_down_after: Duration::from_secs(3600),
        ..policy()
    };
    w.evaluate(&view, None, &p, t(0));
    assert_eq!(w.evaluate(&view, None, &p, t(60_000)).len(), 1);
    let down = with_down(view, "n3");
    assert!(w.evaluate(&down, None, &p, t(61_000)).is_empty());
    assert_eq!(w.firing().count(), 1);
}

#[test]
fn an_agent_unheard_of_fires_agent_down_and_its_next_report_resolves_it() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut silent = view.clone();
    silent.members.get_mut(&id("n2")).unwrap().fresh = false;
    silent.members.get_mut(&id("n2")).unwrap().lag = None;
    let p = policy();
    let mut w = Watchdog::new("c1");
    assert!(w.evaluate(&silent, None, &p, t(1_000)).is_empty());
    assert!(w.evaluate(&silent, None, &p, t(30_999)).is_empty());
    let out = w.evaluate(&silent, None, &p, t(31_000));
    assert_eq!(brief(&out), vec![firing(AGENT_DOWN, "n2", "none")]);
    assert!(out[0].annotations["runbook"].contains("baton-agent"));
    assert!(w.evaluate(&silent, None, &p, t(40_000)).is_empty());
    assert_eq!(
        brief(&w.evaluate(&view, None, &p, t(41_000))),
        vec![resolved(AGENT_DOWN, "n2", "none")]
    );
}

#[test]
fn an_agent_state_disk_below_the_minimum_pages_once_and_room_again_resolves() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let p = policy();
    let with_free = |free: u64, fresh: bool| {
        let mut v = view.clone();
        let m = v.members.get_mut(&id("n3")).unwrap();
        m.report.as_mut().unwrap().resources.state_disk_free_bytes = free;
        m.fresh = fresh;
        v
    };
    let mut w = Watchdog::new("c1");
    assert!(w.evaluate(&view, None, &p, t(1_000)).is_empty());
    let low = p.min_state_disk_free - 1;
    let out = w.evaluate(&with_free(low, true), None, &p, t(2_000));
    assert_eq!(
        brief(&out),
        vec![firing(AGENT_STATE_DISK_LOW, "n3", "none")]
    );
    assert_eq!(out[0].annotations["free_bytes"], low.to_string());
    assert!(out[0].annotations["runbook"].contains("state_dir"));
    // Once per condition; a stale report neither repeats nor resolves it.
    assert!(
        w.evaluate(&with_free(low, true), None, &p, t(3_000))
            .is_empty()
    );
    assert!(
        w.evaluate(&with_free(p.min_state_disk_free, false), None, &p, t(4_000))
            .iter()
            .all(|a| a.name() != AGENT_STATE_DISK_LOW)
    );
    assert_eq!(
        brief(&w.evaluate(&with_free(p.min_state_disk_free, true), None, &p, t(5_000))),
        vec![resolved(AGENT_STATE_DISK_LOW, "n3", "none")]
    );
}

#[test]
fn a_paused_rollout_fires_and_resuming_resolves() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let mut r = at_stage(&view, "n1", "n2", Stage::Started { at: t(0) });
    let p = policy();
    let mut w = Watchdog::new("c1");
    assert!(w.evaluate(&view, Some(&r), &p, t(1)).is_empty());
    r.phase = Phase::Paused {
        reason: "member n2 did not become healthy".into(),
    };
    let out = w.evaluate(&view, Some(&r), &p, t(2));
    assert_eq!(brief(&out), vec![firing(ROLLOUT_PAUSED, "n2", "r1")]);
    assert!(out[0].annotations["summary"].contains("did not become healthy"));
    assert!(w.evaluate(&view, Some(&r), &p, t(3)).is_empty());
    r.phase = Phase::Running;
    assert_eq!(
        brief(&w.evaluate(&view, Some(&r), &p, t(4))),
        vec![resolved(ROLLOUT_PAUSED, "n2", "r1")]
    );
}

#[test]
fn the_trend_is_the_least_squares_slope_of_recent_samples() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100)]);
    let view = with_samples(view, "n2", &samples(0, &[0, 0, 0, 10, 20, 30, 40]));
    // Only the last 10 s count: at t=16 s, samples from t=6 s (one: 40).
    assert_eq!(lag_trend(&view, &id("n2"), t(16_000)), None);
    // At t=6 s all seven count; slope over (0,0,0,10,20,30,40) per second.
    let slope = lag_trend(&view, &id("n2"), t(6_000)).unwrap();
    assert!((slope - 7.142857).abs() < 1e-3, "{slope}");
    assert_eq!(describe_trend(Some(-4.0)), "-4.0/s (catching up)");
    assert_eq!(describe_trend(Some(0.0)), "0.0/s (flat)");
    assert_eq!(describe_trend(None), "unknown (too few reports)");
}

#[test]
fn a_restored_alert_is_not_raised_again_and_resolves_when_its_condition_clears() {
    let view = cluster(&[("n1", L, 500), ("n2", F, 500), ("n3", F, 100)]);
    let p = policy();
    // Firing before the coordinator restarted.
    let before = Alert::firing(CATCH_UP_STALLED, "c1", Some("n3"), None, t(1_000));
    let mut w = Watchdog::new("c1");
    w.restore([before.clone()]);
    // The condition still holds (and would fire anew after 60 s): nothing.
    assert!(w.evaluate(&view, None, &p, t(0)).is_empty());
    assert!(w.evaluate(&view, None, &p, t(120_000)).is_empty());
    assert_eq!(
        w.firing().cloned().collect::<Vec<_>>(),
        vec![before.clone()]
    );
    // Caught up: the restored alert resolves, under the same key.
    let out = w.evaluate(&with_lag(view, "n3", 0), None, &p, t(121_000));
    assert_eq!(brief(&out), vec![resolved(CATCH_UP_STALLED, "n3", "none")]);
    assert_eq!(out[0].key(), before.key());
}
