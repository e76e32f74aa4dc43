//! Property tests: the planner's invariants over random clusters and random
//! report sequences, driven through a simulated world.
//!
//! 1. At most `max_unavailable` members are down at once (capped at (N-1)/2).
//! 2. No member is stopped while it is the leader.
//! 3. Nothing touches the next member until the previous one passed every gate.
//! 4. Every command id is unique in the journal.
//! 5. A failed preflight starts nothing.
//! 6. Nothing downgrades a member whose data format is newer than the target.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use baton_domain::{Health, MemberId, MemberState, Report, Resources, Role};
use baton_planner::decide::Step;
use baton_planner::policy::BackupPolicy;
use baton_planner::preflight::{ArtifactVerdict, PreflightInput, order, preflight};
use baton_planner::rollout::{
    Action, BackupState, BackupSummary, Event, Phase, RolloutState, Stage,
};
use baton_planner::{CommandId, LagSample, MemberView, Policy, ReleaseRef, UnixMs, View, decide};
use common::id;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct SimMember {
    running: bool,
    release: String,
    format: u32,
    applied: u64,
    /// Apply speed per tick when running.
    speed: u64,
    /// This member's start on the target release fails.
    bad_on_target: bool,
    seq: u64,
    samples: Vec<LagSample>,
}

#[derive(Debug)]
struct World {
    members: BTreeMap<MemberId, SimMember>,
    leader: Option<MemberId>,
    committed: u64,
    handover: Option<(MemberId, u32)>,
    target: ReleaseRef,
    violations: Vec<String>,
    leader_changes: u32,
    stopped_leaders: u32,
}

impl World {
    fn view(&self, now: UnixMs) -> View {
        let mut members = BTreeMap::new();
        for (m, s) in &self.members {
            let is_leader = self.leader.as_ref() == Some(m);
            let lag = self.committed.saturating_sub(s.applied);
            members.insert(
                m.clone(),
                MemberView {
                    fresh: true,
                    connected: true,
                    report: Some(Report {
                        member: m.clone(),
                        state: MemberState {
                            role: if !s.running {
                                Role::Unknown
                            } else if is_leader {
                                Role::Leader
                            } else {
                                Role::Follower
                            },
                            leader: if s.running { self.leader.clone() } else { None },
                            committed_revision: self.committed.max(s.applied),
                            applied_revision: s.applied,
                            release: s.release.clone(),
                            format_version: s.format,
                            term: u64::from(self.leader_changes) + 1,
                            health: if s.running {
                                Health::Healthy
                            } else {
                                Health::Down
                            },
                            health_detail: String::new(),
                            cluster_version: String::new(),
                        },
                        resources: Resources {
                            state_disk_free_bytes: 1 << 40,
                            ..Resources::default()
                        },
                        timestamp_unix_ms: now.0,
                        process: Default::default(),
                    }),
                    lag: s.running.then_some(lag),
                    lag_samples: s.samples.clone(),
                    lag_shrank_at: baton_planner::view::last_shrink(&s.samples),
                    version_rule: None,
                    stage_checks: Vec::new(),
                    live: s.running,
                    progressed_at: s.running.then_some(now),
                },
            );
        }
        View {
            leader: self.leader.clone(),
            members,
        }
    }

    fn tick(&mut self, writes: u64, now: UnixMs) {
        self.committed += writes;
        if let Some((to, left)) = self.handover.take() {
            if left == 0 {
                if self.members[&to].running {
                    self.leader = Some(to);
                    self.leader_changes += 1;
                }
            } else {
                self.handover = Some((to, left - 1));
            }
        }
        let committed = self.committed;
        for s in self.members.values_mut() {
            if s.running {
                s.applied = (s.applied + s.speed).min(committed);
                s.seq += 1;
                s.samples.push(LagSample {
                    seq: s.seq,
                    at: now,
                    lag: committed - s.applied,
                    applied: s.applied,
                });
                if s.samples.len() > 64 {
                    s.samples.remove(0);
                }
            }
        }
        if let Some(l) = &self.leader
            && let Some(s) = self.members.get_mut(l)
        {
            s.applied = committed;
        }
    }

    /// Runs one action; Ok(detail) or Err(detail) as an agent would answer.
    fn execute(
        &mut self,
        member: &MemberId,
        action: &Action,
        cap: usize,
        handover_delay: u32,
    ) -> Result<(), String> {
        match action {
            Action::Stage { .. } => Ok(()),
            Action::Stop => {
                if self.leader.as_ref() == Some(member) {
                    self.violations
                        .push(format!("invariant 2: stopped leader {member}"));
                    self.stopped_leaders += 1;
                    self.leader = None;
                }
                self.members.get_mut(member).expect("member").running = false;
                let down = self.members.values().filter(|s| !s.running).count();
                if down > cap {
                    self.violations
                        .push(format!("invariant 1: {down} down > {cap}"));
                }
                Ok(())
            }
            Action::Switch { version } => {
                let s = self.members.get_mut(member).expect("member");
                if *version == self.target.version && s.format > self.target.format_version {
                    self.violations.push(format!(
                        "invariant 6: switched {member} with format {} to target format {}",
                        s.format, self.target.format_version
                    ));
                }
                s.release = version.clone();
                Ok(())
            }
            Action::Start => {
                let target = self.target.version.clone();
                let s = self.members.get_mut(member).expect("member");
                if s.release == target && s.bad_on_target {
                    return Err("exited with status 70 at start-up".into());
                }
                s.running = true;
                Ok(())
            }
            Action::StepDown { to } => {
                if self.leader.as_ref() != Some(member) {
                    return Err(format!("{member} is not the leader"));
                }
                self.handover = Some((to.clone(), handover_delay));
                Ok(())
            }
            Action::Backup { .. } => {
                if !self.members[member].running {
                    self.violations
                        .push(format!("backup asked of {member}, which is down"));
                }
                Ok(())
            }
            // A rollout never restores: that is `baton restore`'s alone.
            Action::Restore { id } => {
                self.violations
                    .push(format!("a rollout asked {member} to restore {id}"));
                Err("not a rollout step".into())
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Scenario {
    speeds: Vec<u64>,
    lags: Vec<u64>,
    leader: usize,
    bad: Option<usize>,
    newer_format: Option<usize>,
    max_unavailable: usize,
    writes: Vec<u64>,
    handover_delay: u32,
    /// Ticks the backup takes before its agent answers.
    backup_ticks: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (3usize..=7).prop_flat_map(|n| {
        (
            // Apply speed per tick outruns the write rate (below 20 per tick), so a
            // catch-up can finish; stalls have their own table tests.
            prop::collection::vec(20u64..60, n),
            prop::collection::vec(0u64..5, n),
            0..n,
            prop::option::weighted(0.2, 0..n),
            prop::option::weighted(0.1, 0..n),
            1usize..=3,
            prop::collection::vec(0u64..20, 64),
            0u32..4,
            0u64..20,
        )
            .prop_map(
                |(
                    speeds,
                    lags,
                    leader,
                    bad,
                    newer_format,
                    max_unavailable,
                    writes,
                    handover_delay,
                    backup_ticks,
                )| Scenario {
                    speeds,
                    lags,
                    leader,
                    bad,
                    newer_format,
                    max_unavailable,
                    writes,
                    handover_delay,
                    backup_ticks,
                },
            )
    })
}

fn run(sc: &Scenario) -> (World, RolloutState, Vec<Event>) {
    let n = sc.speeds.len();
    let target = ReleaseRef {
        name: "kv".into(),
        version: "v2".into(),
        format_version: 1,
        sha256: "cd".repeat(32),
    };
    let members: BTreeMap<MemberId, SimMember> = (0..n)
        .map(|i| {
            (
                id(&format!("m{i}")),
                SimMember {
                    running: true,
                    release: "v1".into(),
                    format: if sc.newer_format == Some(i) { 2 } else { 1 },
                    applied: 1000 - sc.lags[i],
                    speed: sc.speeds[i],
                    bad_on_target: sc.bad == Some(i),
                    seq: 0,
                    samples: Vec::new(),
                },
            )
        })
        .collect();
    let leader = id(&format!("m{}", sc.leader));
    let mut world = World {
        members,
        leader: Some(leader.clone()),
        committed: 1000,
        handover: None,
        target: target.clone(),
        violations: Vec::new(),
        leader_changes: 0,
        stopped_leaders: 0,
    };
    world.members.get_mut(&leader).expect("leader").applied = 1000;
    let policy = Policy {
        max_unavailable: sc.max_unavailable,
        health_timeout: Duration::from_secs(2),
        catchup_timeout: Duration::from_secs(60),
        handover_timeout: Duration::from_secs(1),
        backup: BackupPolicy::Required,
        ..Policy::default()
    };
    let cap = policy.effective_max_unavailable(n);
    let view = world.view(UnixMs(0));
    let started = Event::Started {
        by: None,
        id: "r".into(),
        target: target.clone(),
        previous: "v1".into(),
        order: order(&view, &leader),
        leader,
        at: UnixMs(0),
        journal: None,
    };
    let mut journal = vec![started.clone()];
    let mut r = RolloutState::start(&started).expect("start");
    // The backup's answer, due at a later tick: stops must wait for it.
    let mut backup_due: Option<(u64, CommandId)> = None;
    for tick in 0..3000u64 {
        if matches!(r.phase, Phase::Completed | Phase::Paused { .. }) {
            break;
        }
        let now = UnixMs(tick * 100);
        if let Some((_, cmd)) = backup_due.take_if(|(due, _)| *due <= tick) {
            let done = Event::CommandSucceeded {
                id: cmd,
                detail: "backed up".into(),
                at: now,
            };
            r.apply(&done).expect("apply backup result");
            journal.push(done);
        }
        world.tick(sc.writes[(tick as usize) % sc.writes.len()], now);
        let view = world.view(now);
        for step in decide(&view, &r, &policy, now) {
            match step {
                Step::Record(e) => {
                    r.apply(&e).expect("apply a decided event");
                    journal.push(e);
                }
                Step::Issue { member, action } => {
                    // Invariant 3: every member before this one is done.
                    // Staging is not touching: it never takes a member down,
                    // so every member is staged at once (issue 10).
                    let pos = r.order.iter().position(|m| *m == member).expect("in order");
                    let touches = !matches!(action, Action::Stage { .. } | Action::Backup { .. });
                    // No member is stopped before the backup is verified.
                    if action == Action::Stop && !matches!(r.backup.state, BackupState::Verified(_))
                    {
                        world.violations.push(format!(
                            "stopped {member} with the backup {}",
                            r.backup.state.name()
                        ));
                    }
                    for earlier in r.order[..pos].iter().filter(|_| touches) {
                        if r.members[earlier].stage != Stage::Done {
                            world.violations.push(format!(
                                "invariant 3: touched {member} before {earlier} was done"
                            ));
                        }
                    }
                    let cmd = r.next_command_id();
                    let issued = Event::CommandIssued {
                        id: cmd.clone(),
                        member: member.clone(),
                        action: action.clone(),
                        at: now,
                    };
                    // Invariant 4: apply refuses a duplicate id.
                    r.apply(&issued).expect("unique command id");
                    journal.push(issued);
                    if let Action::Backup { .. } = action {
                        world
                            .execute(&member, &action, cap, sc.handover_delay)
                            .expect("backup");
                        backup_due = Some((tick + sc.backup_ticks, cmd));
                        continue;
                    }
                    let result = match world.execute(&member, &action, cap, sc.handover_delay) {
                        Ok(()) => Event::CommandSucceeded {
                            id: cmd,
                            detail: String::new(),
                            at: now,
                        },
                        Err(detail) => Event::CommandFailed {
                            id: cmd,
                            detail,
                            at: now,
                        },
                    };
                    r.apply(&result).expect("apply result");
                    journal.push(result);
                }
                Step::VerifyBackup { id, member } => {
                    let verified = Event::BackupVerified {
                        summary: BackupSummary {
                            id,
                            member,
                            bytes: 1,
                            sha256: "00".repeat(32),
                            revision: 1,
                            parts: 1,
                            location: "mem".into(),
                            verified_at: now,
                        },
                        at: now,
                    };
                    r.apply(&verified).expect("apply verified");
                    journal.push(verified);
                }
                Step::Cadence { .. } | Step::Wait { .. } => {}
            }
        }
    }
    (world, r, journal)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_clusters(sc in scenario()) {
        let (world, r, journal) = run(&sc);
        prop_assert!(world.violations.is_empty(), "{:?}", world.violations);
        prop_assert_eq!(world.stopped_leaders, 0);

        // Invariant 4 over the whole journal.
        let ids: Vec<_> = journal.iter().filter_map(|e| match e {
            Event::CommandIssued { id, .. } => Some(id.clone()),
            _ => None,
        }).collect();
        let unique: BTreeSet<_> = ids.iter().cloned().collect();
        prop_assert_eq!(ids.len(), unique.len());

        // Replaying the journal rebuilds the same state.
        let replayed = RolloutState::replay(&journal).expect("replay").expect("started");
        prop_assert_eq!(&replayed, &r);

        let original = id(&format!("m{}", sc.leader));
        if sc.bad.is_none() && sc.newer_format.is_none() {
            prop_assert_eq!(&r.phase, &Phase::Completed, "a clean rollout completes");
            prop_assert!(world.members.values().all(|s| s.release == "v2" && s.running));
            prop_assert_eq!(r.order.last(), Some(&original), "the original leader goes last");
            prop_assert_eq!(world.leader_changes, 1, "exactly one leader change");
        } else {
            prop_assert!(matches!(r.phase, Phase::Paused { .. }), "{:?}", r.phase);
            // Nobody is left stopped, and the failed member is back on v1.
            prop_assert!(world.members.values().all(|s| s.running), "{:?}", world.members);
            if let Some(b) = sc.bad {
                let m = id(&format!("m{b}"));
                prop_assert_eq!(&world.members[&m].release, "v1");
            }
            if let Some(f) = sc.newer_format {
                let m = id(&format!("m{f}"));
                prop_assert_eq!(&world.members[&m].release, "v1", "a newer-format member is never switched");
            }
        }
    }

    /// Invariant 5: any failed check means the rollout does not start.
    #[test]
    fn a_failed_preflight_starts_nothing(lags in prop::collection::vec(0u64..30, 3..6), fmt in 1u32..3, missing in any::<bool>()) {
        let n = lags.len();
        let roles: Vec<(String, Role, u64)> = (0..n)
            .map(|i| (format!("m{i}"), if i == 0 { Role::Leader } else { Role::Follower }, 1000 - lags[i] * u64::from(i != 0)))
            .collect();
        let spec: Vec<(&str, Role, u64)> = roles.iter().map(|(m, r, a)| (m.as_str(), *r, *a)).collect();
        let view = common::cluster(&spec);
        let release = ReleaseRef { name: "kv".into(), version: "v2".into(), format_version: fmt, sha256: "00".repeat(32) };
        let artifact = if missing {
            ArtifactVerdict::Missing { detail: "no such key".into() }
        } else {
            ArtifactVerdict::Verified { release, size: 10 }
        };
        let policy = Policy { tolerable_lag: 10, ..Policy::default() };
        let checks = preflight(&PreflightInput { view: &view, target_version: "v2", artifact: &artifact, required_disk: 1, allow_mixed: false, coordinator_state_free: None }, &policy);
        let should_fail = missing || lags.iter().skip(1).any(|l| *l > 10);
        prop_assert_eq!(checks.iter().any(|c| !c.ok), should_fail, "{:?}", checks);
        prop_assert_eq!(baton_planner::preflight::start(&checks, "r".into(), &view, "v2", &artifact, UnixMs(0)).is_ok(), !should_fail);
    }
}
