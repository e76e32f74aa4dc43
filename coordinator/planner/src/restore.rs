//! Deciding the next step of a restore: `baton restore --backup ID` puts
//! one backup back on every member, as etcd's own restore does, so it is an
//! outage by nature (the operator confirmed it). Phases, each for every
//! member at once, each waiting until the one before is done everywhere:
//! 1. stage the release the backup was taken on (the rollout's target);
//! 2. stop every member (a restored member must not rejoin members that
//!    still run on the data it replaces);
//! 3. restore each one's data from the backup (the agent reads it back from
//!    the store and verifies it first; the old data is moved aside);
//! 4. switch each to that release, and start it;
//! 5. each healthy and live on it, at or past the backup's revision, caught
//!    up; then the rollout's usual verify (one agreed leader, every lag
//!    tolerable) completes it.
//!
//! A failed command pauses it where it is ([`crate::rollout`]): nothing is
//! put back to what was being replaced, and `resume` carries on, re-issuing
//! what did not succeed. Pause and abort are honoured only before the first
//! stop; after it, stopping halfway would leave the cluster down.

use baton_domain::{Action, Gate, MemberId, Phase, Stage, UnixMs};

use crate::decide::{Step, verify};
use crate::policy::Policy;
use crate::rollout::{Event, RestorePlan, RolloutState};
use crate::view::View;

fn wait(reason: String) -> Vec<Step> {
    vec![Step::Wait { reason }]
}

fn restored(rollout: &RolloutState, member: &MemberId, backup: &str) -> bool {
    rollout.commands.values().any(|c| {
        &c.member == member
            && matches!(&c.action, Action::Restore { id } if id == backup)
            && matches!(c.result, Some(Ok(_)))
    })
}

fn issue_all(members: &[&MemberId], action: impl Fn() -> Action) -> Vec<Step> {
    members
        .iter()
        .map(|m| Step::Issue {
            member: (*m).clone(),
            action: action(),
        })
        .collect()
}

/// The next steps of restore `plan`; `stopping` is why the operator asked
/// to pause or abort, if they did.
pub(crate) fn next(
    view: &View,
    rollout: &RolloutState,
    plan: &RestorePlan,
    policy: &Policy,
    now: UnixMs,
    stopping: Option<&str>,
) -> Vec<Step> {
    let in_flight: Vec<String> = rollout
        .order
        .iter()
        .filter_map(|m| {
            let id = rollout.members[m].inflight.as_ref()?;
            let what = rollout.commands.get(id).map(|c| c.action.to_string());
            Some(format!("{m}: {} ({id})", what.unwrap_or_default()))
        })
        .collect();
    if !in_flight.is_empty() {
        return wait(format!("restore: {} in flight", in_flight.join(", ")));
    }
    let stage = |m: &MemberId| &rollout.members[m].stage;
    let with = |f: &dyn Fn(&Stage) -> bool| -> Vec<&MemberId> {
        rollout.order.iter().filter(|m| f(stage(m))).collect()
    };
    let touched = rollout
        .order
        .iter()
        .any(|m| !matches!(stage(m), Stage::Pending | Stage::Staged));
    if let Some(why) = stopping
        && !touched
    {
        return vec![Step::Record(Event::Paused {
            by: None,
            reason: format!("{why}; no member was stopped"),
            at: now,
        })];
    }
    let target = &rollout.target;
    let pending = with(&|s| *s == Stage::Pending);
    if !pending.is_empty() {
        return issue_all(&pending, || Action::Stage {
            release: target.clone(),
        });
    }
    let staged = with(&|s| *s == Stage::Staged);
    if !staged.is_empty() {
        return issue_all(&staged, || Action::Stop);
    }
    let stopped = with(&|s| *s == Stage::Stopped);
    let unrestored: Vec<&MemberId> = stopped
        .iter()
        .copied()
        .filter(|m| !restored(rollout, m, &plan.backup))
        .collect();
    if !unrestored.is_empty() {
        return issue_all(&unrestored, || Action::Restore {
            id: plan.backup.clone(),
        });
    }
    if !stopped.is_empty() {
        return issue_all(&stopped, || Action::Switch {
            version: target.version.clone(),
        });
    }
    let switched = with(&|s| *s == Stage::Switched);
    if !switched.is_empty() {
        return issue_all(&switched, || Action::Start);
    }
    let mut steps = Vec::new();
    let mut waiting = Vec::new();
    for m in &rollout.order {
        let v = view.members.get(m);
        match stage(m) {
            Stage::Started { at } => {
                let applied = v
                    .and_then(|v| v.report.as_ref())
                    .map_or(0, |r| r.state.applied_revision);
                let ready = v.is_some_and(|v| {
                    v.healthy() && v.live && v.release() == Some(target.version.as_str())
                }) && applied >= plan.revision;
                if ready {
                    steps.push(Step::Record(Event::GatePassed {
                        member: m.clone(),
                        gate: Gate::Healthy,
                        at: now,
                    }));
                } else if now.since(*at) > policy.health_timeout {
                    return vec![Step::Record(Event::Paused {
                        by: None,
                        reason: format!(
                            "restore: member {m} is not healthy on {} at revision {} or later after {:?} (health_timeout; it is at {applied}); check it, then `baton resume`",
                            target.version, plan.revision, policy.health_timeout
                        ),
                        at: now,
                    })];
                } else {
                    waiting.push(format!("{m} healthy at revision ≥ {}", plan.revision));
                }
            }
            Stage::CatchingUp { .. } => {
                if v.and_then(|v| v.reported_lag())
                    .is_some_and(|l| l <= policy.tolerable_lag)
                {
                    steps.push(Step::Record(Event::GatePassed {
                        member: m.clone(),
                        gate: Gate::CaughtUp,
                        at: now,
                    }));
                } else {
                    waiting.push(format!("{m} caught up"));
                }
            }
            Stage::Soaking { .. } => steps.push(Step::Record(Event::GatePassed {
                member: m.clone(),
                gate: Gate::Soaked,
                at: now,
            })),
            _ => {}
        }
    }
    if !steps.is_empty() {
        return steps;
    }
    if !waiting.is_empty() {
        return wait(format!("restore: waiting for {}", waiting.join(", ")));
    }
    if matches!(
        rollout.phase,
        Phase::Running | Phase::Pausing { .. } | Phase::Aborting
    ) {
        return verify(view, rollout, policy, now);
    }
    Vec::new()
}
