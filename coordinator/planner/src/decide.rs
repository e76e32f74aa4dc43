//! `decide`: the next steps of a rollout, as data.
//!
//! Level-triggered and idempotent: every tick the driver rebuilds the view
//! and calls `decide` again; the same inputs give the same steps. A step that
//! changes the rollout is an [`Event`] to journal (`Step::Record`) or an
//! action to journal and send (`Step::Issue`). `decide` does no IO and reads
//! no clock.
//!
//! Gates believe only live reports ([`MemberView::serving`]: healthy, a few
//! fast-cadence intervals old, and showing progress). Before any step that
//! takes a member down, every other member must be live now, or count as
//! down against `max_unavailable`; a member that answers but is not seen
//! making progress holds the rollout until it is, or the watchdog pages.
//! While a rollout moves, agents report at the fast cadence, and every
//! member's release is staged at once (staging never takes a member down).
//!
//! `decide` never pages: the [`crate::watchdog`] is the one decider of what
//! the on-call hears. Every situation that needs a human either pauses the
//! rollout (`BatonRolloutPaused`) or is a stall (`BatonCatchUpStalled`).

use std::cmp::Reverse;

use baton_domain::MemberId;

use crate::policy::{BackupPolicy, OnStall};
use crate::rollout::{Action, BackupState, Event, Gate, Phase, RolloutState, Stage};
use crate::view::{MemberView, View};
use crate::{Policy, UnixMs};

/// One thing the driver should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Journal this event, then apply it.
    Record(Event),
    /// Journal a `CommandIssued` with the next id, then send it to the agent.
    Issue { member: MemberId, action: Action },
    /// Ask the agents to report fast (during a gate or handover) or normally.
    Cadence { fast: bool },
    /// Re-read backup `id` (taken from `member`) from the store and check
    /// every part, then journal `BackupVerified` or `BackupFailed`.
    VerifyBackup { id: String, member: MemberId },
    /// Nothing to do until the view changes.
    Wait { reason: String },
}

/// How many times a member's agent may refuse a stop because the member
/// leads (leadership moved to it after the stop was decided) before the
/// rollout pauses instead of trying again.
const MAX_LEADER_REFUSALS: usize = 3;

fn wait(reason: impl Into<String>) -> Vec<Step> {
    vec![Step::Wait {
        reason: reason.into(),
    }]
}

/// How far behind a member is, for picking a handover target: the mean of
/// its last few lag readings (each taken against the leader's committed
/// revision when its report arrived). Reports from different members arrive
/// at different moments, so raw applied revisions compare members at
/// different times; at 100 writes/s a 100 ms skew is 10 entries, more than
/// the gap between a fast and a slow follower. With no readings, its lag now.
fn catch_up_score(v: &MemberView) -> u64 {
    let recent: Vec<u64> = v.lag_samples.iter().rev().take(5).map(|s| s.lag).collect();
    if recent.is_empty() {
        return v.lag.unwrap_or(u64::MAX);
    }
    recent.iter().sum::<u64>() / recent.len() as u64
}

/// The most caught-up of the serving members other than `from` for which
/// `eligible` holds: the lowest recent lag ([`catch_up_score`]), then the
/// highest applied revision, then the lowest id. The one rule a handover
/// target is picked by, in a rollout and in a dry run's preview.
pub fn most_caught_up(
    view: &View,
    from: &MemberId,
    eligible: impl Fn(&MemberId, &MemberView) -> bool,
) -> Option<MemberId> {
    best_serving(view, Some(from), eligible)
}

/// The most caught-up serving member other than `except` for which
/// `eligible` holds (the rule [`most_caught_up`] documents).
fn best_serving(
    view: &View,
    except: Option<&MemberId>,
    eligible: impl Fn(&MemberId, &MemberView) -> bool,
) -> Option<MemberId> {
    view.members
        .iter()
        .filter(|(m, _)| Some(*m) != except)
        .filter(|(_, v)| v.serving())
        .filter(|(m, v)| eligible(m, v))
        .min_by_key(|(m, v)| (catch_up_score(v), Reverse(v.applied()), (*m).clone()))
        .map(|(m, _)| m.clone())
}

/// Where the pre-upgrade backup is taken from: the most caught-up serving
/// follower (a snapshot loads the member it is taken on, so not the
/// leader), or the leader when no follower serves (a one-member cluster).
pub fn backup_source(view: &View) -> Option<MemberId> {
    let leader = view.agreed_leader();
    best_serving(view, leader, |_, _| true).or_else(|| best_serving(view, None, |_, _| true))
}

/// The most caught-up upgraded follower as of `view` (see
/// [`most_caught_up`]). Falls back to any healthy follower when no follower
/// is upgraded yet (the leader moved mid-rollout).
pub fn handover_target(view: &View, rollout: &RolloutState, from: &MemberId) -> Option<MemberId> {
    // Upgraded: on the target, and done in this rollout (or not part of
    // it, as members a rollback leaves alone).
    let upgraded = |m: &MemberId, v: &MemberView| {
        v.release() == Some(rollout.target.version.as_str())
            && rollout
                .members
                .get(m)
                .is_none_or(|p| p.stage == Stage::Done)
    };
    most_caught_up(view, from, upgraded).or_else(|| most_caught_up(view, from, |_, _| true))
}

/// Whether the member's catch-up gate holds: lag ≤ tolerable on its two
/// latest reports, which are consecutive and both taken since `since` (when
/// it passed the health gate). The report that passed the health gate does
/// not count: a member seen keeping up only at the instant it came back is
/// not yet known to carry a quorum (counting it let samplekv stop the next
/// follower while the first was still settling, an 80 ms write pause). The
/// latest must also be live: a frozen member's last good reports do not
/// count. And the member must be seen applying between the two (or have
/// applied everything): a member just restarted reads back its own log and
/// can be within `tolerable` of the leader before the leader sends it
/// anything. samplekv's leader retried a restarted follower only after a
/// 200 ms reconnect backoff; the gate passed on the replayed log, the next
/// follower was stopped, and commits paused until the leader reached the
/// first one (write gaps of 120-150 ms).
fn caught_up(view: &View, member: &MemberId, since: UnixMs, tolerable: u64) -> bool {
    let Some(v) = view.members.get(member) else {
        return false;
    };
    let recent: Vec<_> = v.lag_samples.iter().rev().take(2).collect();
    match recent.as_slice() {
        [last, prev] => {
            last.seq == prev.seq + 1
                && prev.at >= since
                && last.lag <= tolerable
                && prev.lag <= tolerable
                && (last.applied != prev.applied || last.lag == 0)
                && v.serving()
        }
        _ => false,
    }
}

/// How long the member's lag has gone without shrinking, if it is above
/// `tolerable` now: since the later of `since` and the last reading that
/// showed a lower lag than the one before it.
pub fn stalled_for(
    view: &View,
    member: &MemberId,
    since: UnixMs,
    tolerable: u64,
    now: UnixMs,
) -> Option<std::time::Duration> {
    let v = view.members.get(member)?;
    let last = v.lag_samples.last().filter(|s| s.at >= since)?;
    if last.lag <= tolerable {
        return None;
    }
    let from = v.lag_shrank_at.map_or(since, |at| at.max(since));
    Some(now.since(from))
}

/// The next steps of `rollout` given `view`, `policy` and `now`.
pub fn decide(view: &View, rollout: &RolloutState, policy: &Policy, now: UnixMs) -> Vec<Step> {
    // Why the rollout stops at the next safe point, when it does.
    let stopping = match &rollout.phase {
        Phase::Completed | Phase::Closed { .. } => return Vec::new(),
        Phase::Paused { reason } => return wait(format!("paused: {reason}")),
        Phase::Running => None,
        Phase::Aborting => Some("aborted by the operator".to_owned()),
        Phase::Pausing { reason } => Some(reason.clone()),
    };
    // While a rollout moves, every agent reports at the fast cadence: the
    // gates believe only reports a few cadence intervals old.
    let mut steps = vec![Step::Cadence { fast: true }];
    match &rollout.restore {
        Some(plan) => steps.extend(crate::restore::next(
            view,
            rollout,
            plan,
            policy,
            now,
            stopping.as_deref(),
        )),
        None => steps.extend(next(view, rollout, policy, now, stopping.as_deref())),
    }
    steps
}

/// Why `member` counts as a failed start: it exited more often than
/// `start_retries` since it was started.
fn crashed(view: &View, member: &MemberId, policy: &Policy) -> Option<String> {
    let r = view.members.get(member)?.report.as_ref()?;
    let exits = r.process.exits_since_start;
    (exits > policy.start_retries).then(|| {
        format!(
            "member {member} exited {exits} time(s) since it was started ({}; start_retries {})",
            if r.process.last_exit.is_empty() {
                "no exit status"
            } else {
                r.process.last_exit.as_str()
            },
            policy.start_retries
        )
    })
}

/// The failed gate to record when `member` exited after its start on the
/// target (see [`crashed`]): it goes back to the previous release.
fn crash_fails(
    view: &View,
    rollout: &RolloutState,
    policy: &Policy,
    now: UnixMs,
    member: &MemberId,
    gate: Gate,
) -> Option<Step> {
    let why = crashed(view, member, policy)?;
    Some(Step::Record(Event::GateFailed {
        member: member.clone(),
        gate,
        reason: format!(
            "{why} on {}; rolling it back to {}",
            rollout.target.version, rollout.previous
        ),
        at: now,
    }))
}

/// The other members that keep `member` from being stopped now, as a wait
/// reason: too many down for `max_unavailable`, or not seen live and making
/// progress since `since` (when the step before this stop finished).
fn others_not_ready(
    view: &View,
    policy: &Policy,
    member: &MemberId,
    since: UnixMs,
) -> Option<String> {
    let cap = policy.effective_max_unavailable(view.members.len());
    let others = || view.members.iter().filter(|(m, _)| *m != member);
    let down: Vec<String> = others()
        .filter(|(_, v)| v.down())
        .map(|(m, v)| match v.report.as_ref().filter(|_| v.fresh) {
            Some(r) => format!("{m} {}", r.state.health),
            None => format!("{m} unheard"),
        })
        .collect();
    if down.len() + 1 > cap {
        return Some(format!(
            "member {member}: {} other member(s) down ({}); max_unavailable is {cap}",
            down.len(),
            down.join(", ")
        ));
    }
    let not_live: Vec<String> = others()
        .filter(|(_, v)| {
            let progressing = v.live && v.progressed_at.is_some_and(|t| t >= since);
            !v.down() && !progressing
        })
        .map(|(m, _)| m.to_string())
        .collect();
    if !not_live.is_empty() {
        return Some(format!(
            "member {member}: waiting for a live report from {} before stopping it (a member not seen making progress may be hung)",
            not_live.join(", ")
        ));
    }
    None
}

fn next(
    view: &View,
    rollout: &RolloutState,
    policy: &Policy,
    now: UnixMs,
    stopping: Option<&str>,
) -> Vec<Step> {
    // Stage every member's release at once, and take the backup beside it:
    // neither takes a member down, and later stops then wait on nothing but
    // the gates (and the backup, before the first stop).
    if stopping.is_none() {
        let mut stages: Vec<Step> = rollout
            .order
            .iter()
            .filter(|m| {
                rollout
                    .members
                    .get(*m)
                    .is_some_and(|p| p.stage == Stage::Pending && p.inflight.is_none())
            })
            .map(|m| Step::Issue {
                member: m.clone(),
                action: Action::Stage {
                    release: rollout.target.clone(),
                },
            })
            .collect();
        stages.extend(backup_steps(view, rollout, policy, now));
        if !stages.is_empty() {
            return stages;
        }
    }
    let Some(member) = rollout.current().cloned() else {
        return verify(view, rollout, policy, now);
    };
    let progress = &rollout.members[&member];

    if let Some(id) = &progress.inflight {
        let action = rollout.commands.get(id).map(|c| c.action.to_string());
        return wait(format!(
            "member {member}: {} ({id}) in flight",
            action.unwrap_or_default()
        ));
    }
    // Pause and abort stop between steps, never leaving a member stopped.
    if let Some(why) = stopping
        && !progress.stage.is_disruptive()
    {
        return vec![Step::Record(Event::Paused {
            by: None,
            reason: format!("{why}; member {member} is {}", progress.stage.name()),
            at: now,
        })];
    }

    match &progress.stage {
        Stage::Started { at } => {
            if let Some(step) = crash_fails(view, rollout, policy, now, &member, Gate::Healthy) {
                return vec![step];
            }
            let v = view.members.get(&member);
            let on_target = v.and_then(|v| v.release()) == Some(rollout.target.version.as_str());
            if v.is_some_and(MemberView::serving) && on_target {
                return vec![Step::Record(Event::GatePassed {
                    member,
                    gate: Gate::Healthy,
                    at: now,
                })];
            }
            if now.since(*at) > policy.health_timeout {
                let detail = match v.and_then(|v| v.report.as_ref()) {
                    Some(r) if r.state.health_detail.is_empty() => {
                        format!("{} on release {:?}", r.state.health, r.state.release)
                    }
                    Some(r) => format!(
                        "{} on release {:?}: {}",
                        r.state.health, r.state.release, r.state.health_detail
                    ),
                    None => "never reported".to_owned(),
                };
                return vec![Step::Record(Event::GateFailed {
                    member: member.clone(),
                    gate: Gate::Healthy,
                    reason: format!(
                        "member {member} did not become healthy on {} within {:?} ({detail}); rolling it back to {}",
                        rollout.target.version, policy.health_timeout, rollout.previous
                    ),
                    at: now,
                })];
            }
            wait(format!(
                "member {member}: waiting to be healthy on {}",
                rollout.target.version
            ))
        }
        Stage::CatchingUp { since } => {
            if let Some(step) = crash_fails(view, rollout, policy, now, &member, Gate::CaughtUp) {
                return vec![step];
            }
            catch_up(view, rollout, policy, now, &member, *since)
        }
        Stage::Soaking { since } => {
            if now.since(*since) >= policy.soak {
                vec![Step::Record(Event::GatePassed {
                    member,
                    gate: Gate::Soaked,
                    at: now,
                })]
            } else {
                wait(format!("member {member}: soaking"))
            }
        }
        Stage::Reverted { reason } => vec![Step::Record(Event::Paused {
            by: None,
            reason: reason.clone(),
            at: now,
        })],
        Stage::Done => Vec::new(),
        stage @ (Stage::Pending
        | Stage::Staged
        | Stage::Stopped
        | Stage::Switched
        | Stage::Reverting { .. }) => {
            let Some(action) = stage.action(&rollout.target, &rollout.previous) else {
                return Vec::new();
            };
            // Invariant 6, checked again before the member is touched: never
            // put a member onto a release that cannot read its data.
            let forward = matches!(stage, Stage::Pending | Stage::Staged | Stage::Stopped);
            if forward
                && let Some(r) = view.members.get(&member).and_then(|v| v.report.as_ref())
                && r.state.format_version > rollout.target.format_version
            {
                let reason = format!(
                    "member {member} has data format {} but {} reads only format {}; refusing to move it to {}",
                    r.state.format_version,
                    rollout.target.version,
                    rollout.target.format_version,
                    rollout.target.version
                );
                let record = if *stage == Stage::Stopped {
                    // Already stopped: bring it back on the previous release.
                    Event::GateFailed {
                        member: member.clone(),
                        gate: Gate::Healthy,
                        reason,
                        at: now,
                    }
                } else {
                    Event::Paused {
                        by: None,
                        reason,
                        at: now,
                    }
                };
                return vec![Step::Record(record)];
            }
            // The leader hands over before it stops. A stop that takes a
            // serving member down waits for the others (one being put back
            // after a failure is down or failing already).
            if action == Action::Stop {
                if *stage == Stage::Staged
                    && let Some(reason) = backup_not_ready(view, rollout)
                {
                    return wait(format!("member {member}: {reason}"));
                }
                let refusals = rollout
                    .commands
                    .values()
                    .filter(|c| c.member == member && c.action == Action::Stop)
                    .filter(
                        |c| matches!(&c.result, Some(Err(d)) if baton_domain::is_leader_refusal(d)),
                    )
                    .count();
                if refusals >= MAX_LEADER_REFUSALS {
                    return vec![Step::Record(Event::Paused {
                        by: None,
                        reason: format!(
                            "member {member} refused to stop {refusals} times because it leads by its own reads, while the reports name another leader; check the cluster's leadership, then `baton resume`"
                        ),
                        at: now,
                    })];
                }
                let handing_over = rollout.handover.as_ref().is_some_and(|h| h.from == member);
                // A one-member cluster (a single-member app) has no one to
                // hand over to: its leader is upgraded in place, and the
                // write pause is the stop-to-healthy window.
                let alone = view.members.len() == 1 && rollout.order.len() == 1;
                if !alone && (handing_over || view.is_leader(&member)) {
                    return handover(view, rollout, policy, now, &member);
                }
                // The step before this stop: the last member that finished,
                // the handover, or the rollout's start.
                let since = rollout
                    .members
                    .values()
                    .filter_map(|p| p.finished_at)
                    .chain(rollout.leader_changes.iter().map(|(_, at)| *at))
                    .max()
                    .unwrap_or(rollout.started_at);
                if *stage == Stage::Staged
                    && let Some(reason) = others_not_ready(view, policy, &member, since)
                {
                    return wait(reason);
                }
            }
            vec![Step::Issue { member, action }]
        }
    }
}

/// What the backup needs next: ask a member for it, verify what it took,
/// or act on a failure (pause under `required`, go on under `optional`).
fn backup_steps(view: &View, rollout: &RolloutState, policy: &Policy, now: UnixMs) -> Vec<Step> {
    match &rollout.backup.state {
        BackupState::Pending if policy.backup == BackupPolicy::Off => {
            vec![Step::Record(Event::BackupSkipped {
                reason: "backup = \"off\" in the policy".to_owned(),
                at: now,
            })]
        }
        BackupState::Pending => match backup_source(view) {
            Some(member) => vec![Step::Issue {
                member,
                action: Action::Backup {
                    id: rollout.next_backup_id(),
                },
            }],
            // The stop gate says why it waits.
            None => Vec::new(),
        },
        BackupState::Taken { id, member } => vec![Step::VerifyBackup {
            id: id.clone(),
            member: member.clone(),
        }],
        BackupState::Failed { id, reason } => match policy.backup {
            BackupPolicy::Optional => vec![Step::Record(Event::BackupSkipped {
                reason: format!(
                    "backup {id} failed ({reason}); backup = \"optional\", so going on without one"
                ),
                at: now,
            })],
            _ => vec![Step::Record(Event::Paused {
                by: None,
                reason: format!(
                    "pre-upgrade backup {id} failed: {reason}; no member was stopped; fix the cause, then `baton resume` takes a new backup"
                ),
                at: now,
            })],
        },
        BackupState::Taking { .. } | BackupState::Verified(_) | BackupState::Skipped { .. } => {
            Vec::new()
        }
    }
}

/// Why the first stop must wait for the backup, if it must.
fn backup_not_ready(view: &View, rollout: &RolloutState) -> Option<String> {
    match &rollout.backup.state {
        BackupState::Verified(_) | BackupState::Skipped { .. } => None,
        BackupState::Pending if backup_source(view).is_none() => Some(
            "waiting for a live, healthy member to take the pre-upgrade backup from".to_owned(),
        ),
        BackupState::Pending => Some("waiting for the pre-upgrade backup to start".to_owned()),
        BackupState::Taking { id, member, .. } => Some(format!(
            "waiting for the pre-upgrade backup {id} from {member}"
        )),
        BackupState::Taken { id, .. } => Some(format!(
            "waiting for the coordinator to verify backup {id} in the store"
        )),
        BackupState::Failed { id, .. } => Some(format!("backup {id} failed")),
    }
}

fn catch_up(
    view: &View,
    rollout: &RolloutState,
    policy: &Policy,
    now: UnixMs,
    member: &MemberId,
    since: UnixMs,
) -> Vec<Step> {
    if caught_up(view, member, since, policy.tolerable_lag) {
        return vec![Step::Record(Event::GatePassed {
            member: member.clone(),
            gate: Gate::CaughtUp,
            at: now,
        })];
    }
    let lag = view.members.get(member).and_then(|v| v.lag);
    let lag_text = lag.map_or("unknown".to_owned(), |l| l.to_string());
    let waited = now.since(since);
    if waited > policy.catchup_timeout {
        let reason = format!(
            "member {member} did not catch up: lag {lag_text} > {} after {waited:?} (catchup_timeout {:?})",
            policy.tolerable_lag, policy.catchup_timeout
        );
        return vec![Step::Record(Event::Paused {
            by: None,
            reason,
            at: now,
        })];
    }
    if let Some(stalled) = stalled_for(view, member, since, policy.tolerable_lag, now)
        && stalled >= policy.stall_after
    {
        let reason = format!(
            "member {member} catch-up stalled: lag {lag_text} has not shrunk for {stalled:?} (stall_after {:?})",
            policy.stall_after
        );
        // The watchdog pages for the stall (BatonCatchUpStalled), from the
        // same view at the same instant.
        return match policy.on_stall {
            OnStall::Pause => vec![Step::Record(Event::Paused {
                by: None,
                reason,
                at: now,
            })],
            OnStall::Wait => wait(format!("{reason}; on_stall = wait, so waiting")),
            OnStall::Rollback => vec![Step::Record(Event::GateFailed {
                member: member.clone(),
                gate: Gate::CaughtUp,
                reason: format!("{reason}; rolling it back to {}", rollout.previous),
                at: now,
            })],
        };
    }
    let live = view.members.get(member).is_some_and(|v| v.live);
    if live {
        wait(format!("member {member}: catching up, lag {lag_text}"))
    } else {
        wait(format!(
            "member {member}: catching up, lag {lag_text}; no live report (not seen making progress)"
        ))
    }
}

fn handover(
    view: &View,
    rollout: &RolloutState,
    policy: &Policy,
    now: UnixMs,
    from: &MemberId,
) -> Vec<Step> {
    if let Some(h) = rollout.handover.as_ref().filter(|h| &h.from == from) {
        // Every report names a new leader: normally the one asked for, but
        // any leader other than `from` makes it safe to go on.
        if let Some(new) = view.agreed_leader().filter(|l| *l != from) {
            return vec![Step::Record(Event::HandoverConfirmed {
                to: new.clone(),
                at: now,
            })];
        }
        let failed = h.last_error.is_some() || now.since(h.requested_at) > policy.handover_timeout;
        if !failed {
            return wait(format!(
                "handover from {from} to {}: waiting for every report to name it",
                h.to
            ));
        }
        if h.attempts >= 2 {
            let why = h.last_error.clone().unwrap_or_else(|| {
                format!(
                    "not every report named {} within {:?}",
                    h.to, policy.handover_timeout
                )
            });
            let reason = format!(
                "handover from leader {from} to {} failed after {} attempts: {why}; {from} was not stopped and still leads",
                h.to, h.attempts
            );
            return vec![Step::Record(Event::Paused {
                by: None,
                reason,
                at: now,
            })];
        }
    }
    match handover_target(view, rollout, from) {
        Some(to) => {
            let lags = view
                .members
                .iter()
                .filter(|(m, v)| *m != from && v.serving())
                .map(|(m, v)| (m.clone(), catch_up_score(v)))
                .collect();
            vec![
                Step::Record(Event::HandoverPicked {
                    to: to.clone(),
                    lags,
                    at: now,
                }),
                Step::Issue {
                    member: from.clone(),
                    action: Action::StepDown { to },
                },
            ]
        }
        None => wait(format!(
            "leader {from}: no live, healthy follower to hand leadership to"
        )),
    }
}

pub(crate) fn verify(
    view: &View,
    rollout: &RolloutState,
    policy: &Policy,
    now: UnixMs,
) -> Vec<Step> {
    let target = rollout.target.version.as_str();
    let mut problems = Vec::new();
    for (m, v) in &view.members {
        if !v.healthy() {
            problems.push(format!("{m} not healthy"));
        } else if !v.live {
            problems.push(format!("{m} has no live report"));
        } else if v.release() != Some(target) {
            problems.push(format!("{m} on {:?}", v.release().unwrap_or("")));
        } else if v.reported_lag().is_none_or(|l| l > policy.tolerable_lag) {
            problems.push(format!("{m} lag {:?}", v.reported_lag()));
        } else if let Some(r) = v.report.as_ref()
            && let Some(left) = crate::version::post_check(
                &crate::version::rule_for(v.version_rule, r),
                target,
                &r.state.cluster_version,
            )
        {
            problems.push(format!("{m}: {left}"));
        }
    }
    if view.agreed_leader().is_none() {
        problems.push("no single agreed leader".to_owned());
    }
    if problems.is_empty() {
        return vec![
            Step::Cadence { fast: false },
            Step::Record(Event::Completed { at: now }),
        ];
    }
    let last_done = rollout
        .members
        .values()
        .filter_map(|p| p.finished_at)
        .max()
        .unwrap_or(rollout.started_at);
    if now.since(last_done) > policy.catchup_timeout {
        let reason = format!(
            "verify failed after {:?} (catchup_timeout): {}",
            policy.catchup_timeout,
            problems.join(", ")
        );
        return vec![Step::Record(Event::Paused {
            by: None,
            reason,
            at: now,
        })];
    }
    wait(format!("verify: {}", problems.join(", ")))
}
