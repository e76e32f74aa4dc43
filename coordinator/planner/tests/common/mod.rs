//! Builders for planner tests: views and rollouts in a line each.
#![allow(dead_code, clippy::unwrap_used)]

use baton_domain::{Health, MemberId, Role, fixtures};
use baton_planner::preflight::order;
use baton_planner::rollout::{Action, CommandId, Event, RolloutState, Stage};
use baton_planner::{LagSample, MemberView, ReleaseRef, UnixMs, View};

pub const L: Role = Role::Leader;
pub const F: Role = Role::Follower;

pub fn id(s: &str) -> MemberId {
    MemberId::new(s).unwrap()
}

pub fn ids(s: &[&str]) -> Vec<MemberId> {
    s.iter().map(|m| id(m)).collect()
}

pub fn t(ms: u64) -> UnixMs {
    UnixMs(ms)
}

pub fn target() -> ReleaseRef {
    ReleaseRef {
        name: "kv".into(),
        version: "v2".into(),
        format_version: 1,
        sha256: "ab".repeat(32),
    }
}

/// A healthy cluster on v1: (member, role, applied revision). The leader's
/// applied revision is the committed one; lag is measured against it.
pub fn cluster(members: &[(&str, Role, u64)]) -> View {
    let leader = members
        .iter()
        .find(|m| m.1 == Role::Leader)
        .map(|m| id(m.0));
    let committed = members.iter().map(|m| m.2).max().unwrap_or(0);
    View {
        leader: leader.clone(),
        members: members
            .iter()
            .map(|(m, role, applied)| {
                (
                    id(m),
                    MemberView {
                        fresh: true,
                        connected: true,
                        report: Some({
                            let mut r = fixtures::report(
                                m,
                                *role,
                                leader.as_ref().map(MemberId::as_str),
                                committed,
                                *applied,
                            );
                            r.resources.data_disk_free_bytes = 1 << 40;
                            r.resources.state_disk_free_bytes = 1 << 40;
                            r
                        }),
                        lag: Some(committed - applied),
                        lag_samples: Vec::new(),
                        lag_shrank_at: None,
                        version_rule: None,
                        stage_checks: Vec::new(),
                        live: true,
                        // Progressing now: later than any step a table
                        // test finishes.
                        progressed_at: Some(UnixMs(u64::MAX / 2)),
                    },
                )
            })
            .collect(),
    }
}

fn edit(mut view: View, m: &str, f: impl FnOnce(&mut MemberView)) -> View {
    f(view.members.get_mut(&id(m)).unwrap());
    view
}

pub fn with_release(view: View, m: &str, release: &str) -> View {
    edit(view, m, |v| {
        v.report.as_mut().unwrap().state.release = release.into()
    })
}

pub fn with_lag(view: View, m: &str, lag: u64) -> View {
    edit(view, m, |v| v.lag = Some(lag))
}

pub fn with_down(view: View, m: &str) -> View {
    edit(view, m, |v| {
        let r = v.report.as_mut().unwrap();
        r.state.health = Health::Down;
        r.state.role = Role::Unknown;
        r.state.health_detail = "connection refused".into();
        v.lag = None;
        v.live = false;
    })
}

pub fn with_samples(view: View, m: &str, samples: &[(u64, u64, u64)]) -> View {
    edit(view, m, |v| {
        v.lag_samples = samples
            .iter()
            .map(|(seq, at, lag)| LagSample {
                seq: *seq,
                at: UnixMs(*at),
                lag: *lag,
                // Every reading applied something new.
                applied: *seq,
            })
            .collect();
        v.lag_shrank_at = baton_planner::view::last_shrink(&v.lag_samples);
    })
}

/// Moves leadership to `m` in every report.
pub fn led_by(mut view: View, m: &str) -> View {
    view.leader = Some(id(m));
    for (name, v) in view.members.iter_mut() {
        let r = v.report.as_mut().unwrap();
        r.state.leader = Some(id(m));
        r.state.role = if name.as_str() == m {
            Role::Leader
        } else {
            Role::Follower
        };
    }
    view
}

pub fn started(view: &View, leader: &str) -> RolloutState {
    let mut r = started_needing_a_backup(view, leader);
    // What `Policy::default()` (backup = "off") records first.
    r.apply(&Event::BackupSkipped {
        reason: "backup = \"off\" in the policy".into(),
        at: t(0),
    })
    .unwrap();
    r
}

/// A rollout that has just started and has no backup yet.
pub fn started_needing_a_backup(view: &View, leader: &str) -> RolloutState {
    RolloutState::start(&Event::Started {
        by: None,
        id: "r1".into(),
        target: target(),
        previous: "v1".into(),
        order: order(view, &id(leader)),
        leader: id(leader),
        at: t(0),
        journal: None,
    })
    .unwrap()
}

/// A rollout where every member before `m` in order is done, `m` is at
/// `stage`, and every member after it is staged (a rollout stages every
/// member at once before it touches the first).
pub fn at_stage(view: &View, leader: &str, m: &str, stage: Stage) -> RolloutState {
    let mut r = started(view, leader);
    let mut before = true;
    for name in r.order.clone() {
        let p = r.members.get_mut(&name).unwrap();
        if name == id(m) {
            before = false;
            p.stage = stage.clone();
        } else {
            p.stage = if before { Stage::Done } else { Stage::Staged };
        }
    }
    r
}

/// The rollout after its start: every member's stage command issued and
/// answered, as the planner's first step does.
pub fn all_staged(view: &View, leader: &str) -> RolloutState {
    let mut r = started(view, leader);
    for m in r.order.clone() {
        let cmd = issue(&mut r, m.as_str(), Action::Stage { release: target() });
        succeed(&mut r, &cmd, t(1));
    }
    r
}

pub fn issue_at(r: &mut RolloutState, m: &str, action: Action, at: UnixMs) -> CommandId {
    let cmd = r.next_command_id();
    r.apply(&Event::CommandIssued {
        id: cmd.clone(),
        member: id(m),
        action,
        at,
    })
    .unwrap();
    cmd
}

pub fn issue(r: &mut RolloutState, m: &str, action: Action) -> CommandId {
    issue_at(r, m, action, t(0))
}

pub fn succeed(r: &mut RolloutState, cmd: &CommandId, at: UnixMs) {
    r.apply(&Event::CommandSucceeded {
        id: cmd.clone(),
        detail: String::new(),
        at,
    })
    .unwrap();
}
