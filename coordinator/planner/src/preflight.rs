//! Preflight: every check that must hold before a rollout touches anything,
//! and the member order it will use. A failed check names the member and the
//! check; a failed preflight starts nothing (invariant 5).

use std::cmp::Reverse;

pub use baton_domain::Check;
use baton_domain::{MemberId, Role};

use crate::policy::BackupPolicy;
use crate::view::View;
use crate::{Policy, ReleaseRef, version};

/// etcd's version-path rule, kept here for callers that knew it here.
pub use crate::version::version_path;

/// Constructors for [`Check`] verdicts.
trait Verdict {
    fn pass(check: &str, member: Option<&MemberId>, detail: impl Into<String>) -> Check;
    fn fail(check: &str, member: Option<&MemberId>, detail: impl Into<String>) -> Check;
}

impl Verdict for Check {
    fn pass(check: &str, member: Option<&MemberId>, detail: impl Into<String>) -> Check {
        Check {
            check: check.to_owned(),
            member: member.cloned(),
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(check: &str, member: Option<&MemberId>, detail: impl Into<String>) -> Check {
        Check {
            check: check.to_owned(),
            member: member.cloned(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What the artifact store says about the target release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactVerdict {
    /// Present, and its bytes match the manifest's sha256.
    Verified { release: ReleaseRef, size: u64 },
    /// Not in the store.
    Missing { detail: String },
    /// The store (or the coordinator's scratch space) could not be read or
    /// written while checking it: nothing is known about the release.
    Unverifiable { detail: String },
    /// In the store, but the bytes do not match the sha256.
    BadChecksum { detail: String },
}

/// Everything preflight needs besides the view.
#[derive(Clone, Debug)]
pub struct PreflightInput<'a> {
    pub view: &'a View,
    pub target_version: &'a str,
    pub artifact: &'a ArtifactVerdict,
    /// Bytes each member needs free: artifact plus backup.
    pub required_disk: u64,
    /// A rollback starts from a mixed cluster by design.
    pub allow_mixed: bool,
    /// Free bytes under the coordinator's own state dir (its journal), when
    /// measured.
    pub coordinator_state_free: Option<u64>,
}

/// The default least free space a state dir (the coordinator's journal, an
/// agent's command journal) must have for a rollout to start
/// (`policy.min_state_disk_free_bytes`): a journal that cannot be written
/// stops the coordinator deciding, and makes an agent refuse its commands.
pub const MIN_STATE_DISK_FREE: u64 = 16 << 20;

/// Free disk each member needs per byte of artifact: the packed artifact is
/// downloaded and then unpacked beside it, so both copies are on disk at once.
pub const DISK_PER_ARTIFACT_BYTE: u64 = 2;

/// The free disk each member needs for `artifact` ([`DISK_PER_ARTIFACT_BYTE`]
/// per byte of it); nothing when it is not verified (that check fails anyway).
pub fn required_disk(artifact: &ArtifactVerdict) -> u64 {
    match artifact {
        ArtifactVerdict::Verified { size, .. } => size.saturating_mul(DISK_PER_ARTIFACT_BYTE),
        ArtifactVerdict::Missing { .. }
        | ArtifactVerdict::Unverifiable { .. }
        | ArtifactVerdict::BadChecksum { .. } => 0,
    }
}

/// Runs every check; the rollout may start only if all are ok.
pub fn preflight(input: &PreflightInput<'_>, policy: &Policy) -> Vec<Check> {
    let view = input.view;
    let mut checks = Vec::new();

    // 1. A connected, fresh agent for every member.
    for (m, v) in &view.members {
        checks.push(if v.connected && v.fresh {
            Check::pass("agent", Some(m), "agent connected")
        } else if !v.connected {
            Check::fail(
                "agent",
                Some(m),
                format!("member {m} has no connected agent; start baton-agent on its node"),
            )
        } else {
            Check::fail(
                "agent",
                Some(m),
                format!("member {m}'s agent has not reported within 3 heartbeats"),
            )
        });
    }

    // 2. One leader that everyone agrees on; everyone healthy.
    let leaders: Vec<&MemberId> = view
        .members
        .iter()
        .filter(|(_, v)| v.role() == Some(Role::Leader))
        .map(|(m, _)| m)
        .collect();
    match (leaders.as_slice(), view.agreed_leader()) {
        ([one], Some(agreed)) if *one == agreed => {
            checks.push(Check::pass("leader", Some(agreed), format!("{agreed} leads, all members agree")))
        }
        ([], _) => checks.push(Check::fail("leader", None, "no member reports itself leader; wait for an election")),
        _ => checks.push(Check::fail(
            "leader",
            None,
            format!("members disagree on the leader (self-declared: {leaders:?}); wait until the cluster settles"),
        )),
    }
    for (m, v) in &view.members {
        if v.fresh && !v.healthy() {
            let detail = v
                .report
                .as_ref()
                .map(|r| r.state.health_detail.clone())
                .unwrap_or_default();
            checks.push(Check::fail(
                "health",
                Some(m),
                format!("member {m} is not healthy: {detail}"),
            ));
        }
    }

    // 3. Everyone on the same release.
    // A member that is down reports no release; the health and agent
    // checks already name it.
    let mut releases: Vec<(&str, &MemberId)> = view
        .members
        .iter()
        .filter_map(|(m, v)| v.release().filter(|r| !r.is_empty()).map(|r| (r, m)))
        .collect();
    releases.sort();
    let distinct: std::collections::BTreeSet<&str> = releases.iter().map(|(r, _)| *r).collect();
    if distinct.len() > 1 && input.allow_mixed {
        checks.push(Check::pass(
            "release",
            None,
            format!("rolling back from mixed releases {distinct:?}"),
        ));
    } else if distinct.len() > 1 {
        for (r, m) in &releases {
            checks.push(Check::fail(
                "release",
                Some(m),
                format!("member {m} is on {r:?}, the cluster is on mixed releases {distinct:?}; finish or roll back the last rollout first"),
            ));
        }
    } else if let Some(r) = distinct.first() {
        if *r == input.target_version {
            checks.push(Check::fail(
                "release",
                None,
                format!("every member is already on {r}"),
            ));
        } else {
            checks.push(Check::pass("release", None, format!("every member on {r}")));
        }
    }

    // 4. The version path: never onto a release that cannot read the data.
    if let ArtifactVerdict::Verified { release, .. } = input.artifact {
        for (m, v) in &view.members {
            let Some(r) = v.report.as_ref() else { continue };
            if release.format_version < r.state.format_version {
                checks.push(Check::fail(
                    "format",
                    Some(m),
                    format!(
                        "member {m} has data format {} but {} reads only format {}: a downgrade across formats would not start; roll forward instead",
                        r.state.format_version, release.version, release.format_version
                    ),
                ));
            }
        }
    }

    // 4b. The version path, by each member's adapter's rule (etcd: one
    // minor at a time, no skipped minor, never below the cluster version).
    // A member that reports no release is down; the health and agent
    // checks already name it.
    for (m, v) in &view.members {
        let Some(r) = v.report.as_ref().filter(|r| !r.state.release.is_empty()) else {
            continue;
        };
        let rule = version::rule_for(v.version_rule, r);
        if let Err(problem) = version::check(
            &rule,
            &r.state.release,
            input.target_version,
            &r.state.cluster_version,
        ) {
            checks.push(Check::fail(
                "version-path",
                Some(m),
                format!("member {m}: {problem}"),
            ));
        }
    }

    // 1b. Live: healthy, reporting at the fast cadence, and seen making
    // progress. A member that answers but does not apply would pass the
    // health check and then hold (or wreck) the first gate.
    for (m, v) in &view.members {
        if v.healthy() && !v.live {
            checks.push(Check::fail(
                "live",
                Some(m),
                format!(
                    "member {m} sent no live report (healthy, recent, and showing its applied revision moving or complete); it may be hung or not applying: check it, then retry"
                ),
            ));
        }
    }

    // 5. Lag, as of each member's own latest report: comparing revisions
    // read at different moments would count the writes in between.
    for (m, v) in &view.members {
        match v.reported_lag() {
            Some(l) if l <= policy.tolerable_lag => {}
            Some(l) => checks.push(Check::fail(
                "lag",
                Some(m),
                format!(
                    "member {m} lags by {l} > tolerable_lag {}; wait for it to catch up",
                    policy.tolerable_lag
                ),
            )),
            None if v.fresh => checks.push(Check::fail(
                "lag",
                Some(m),
                format!("member {m}'s lag is unknown"),
            )),
            None => {}
        }
    }

    // 6. The artifact.
    match input.artifact {
        ArtifactVerdict::Verified { release, .. } => checks.push(Check::pass(
            "artifact",
            None,
            format!("{} in the store, sha256 {}", release.version, release.sha256),
        )),
        ArtifactVerdict::Missing { detail } => checks.push(Check::fail(
            "artifact",
            None,
            format!("release {} is not in the artifact store ({detail}); publish it with `baton release publish`", input.target_version),
        )),
        ArtifactVerdict::Unverifiable { detail } => checks.push(Check::fail(
            "artifact",
            None,
            format!("release {} could not be verified: {detail}; fix the store's or the coordinator's disk and run it again", input.target_version),
        )),
        ArtifactVerdict::BadChecksum { detail } => checks.push(Check::fail(
            "artifact",
            None,
            format!("release {} is refused: {detail}", input.target_version),
        )),
    }

    // 7. Disk.
    for (m, v) in &view.members {
        let Some(r) = v.report.as_ref() else { continue };
        let free = r.resources.data_disk_free_bytes;
        if free < input.required_disk {
            checks.push(Check::fail(
                "disk",
                Some(m),
                format!(
                    "member {m} has {free} bytes free, needs {} for the artifact and backup",
                    input.required_disk
                ),
            ));
        }
    }

    // 8. State disks: where the journals are written.
    let min = policy.min_state_disk_free;
    if let Some(free) = input.coordinator_state_free
        && free < min
    {
        checks.push(Check::fail(
            "state-disk",
            None,
            format!(
                "the coordinator's state_dir has {free} bytes free, needs at least {min} (policy.min_state_disk_free_bytes) for its journal; free space there"
            ),
        ));
    }
    for (m, v) in &view.members {
        let Some(r) = v.report.as_ref() else { continue };
        let free = r.resources.state_disk_free_bytes;
        if free < min {
            let older = if free == 0 {
                " (an agent older than this coordinator reports no figure: upgrade it)"
            } else {
                ""
            };
            checks.push(Check::fail(
                "state-disk",
                Some(m),
                format!(
                    "member {m}'s agent state_dir has {free} bytes free, needs at least {min} (policy.min_state_disk_free_bytes) to journal its commands (one it cannot journal is refused){older}; free space there"
                ),
            ));
        }
    }
    checks
}

/// The rollout order: followers most-lagging first, then by id; the leader last.
pub fn order(view: &View, leader: &MemberId) -> Vec<MemberId> {
    let mut followers: Vec<(&MemberId, u64)> = view
        .members
        .iter()
        .filter(|(m, _)| *m != leader)
        .map(|(m, v)| (m, v.lag.unwrap_or(u64::MAX)))
        .collect();
    followers.sort_by_key(|(m, lag)| (Reverse(*lag), (*m).clone()));
    let mut order: Vec<MemberId> = followers.into_iter().map(|(m, _)| m.clone()).collect();
    order.push(leader.clone());
    order
}

/// The only way to start a rollout: from a preflight with no failed check.
/// Returns the `Started` event to journal, or the failed checks (invariant 5:
/// a failed preflight starts nothing).
pub fn start(
    checks: &[Check],
    id: String,
    view: &View,
    target_version: &str,
    artifact: &ArtifactVerdict,
    now: crate::UnixMs,
) -> Result<crate::rollout::Event, Vec<Check>> {
    let failed: Vec<Check> = checks.iter().filter(|c| !c.ok).cloned().collect();
    if !failed.is_empty() {
        return Err(failed);
    }
    let refuse = |check: &str, detail: String| Err(vec![Check::fail(check, None, detail)]);
    let ArtifactVerdict::Verified { release, .. } = artifact else {
        return refuse(
            "artifact",
            format!("release {target_version} is not verified in the store"),
        );
    };
    let Some(leader) = view.agreed_leader() else {
        return refuse("leader", "no agreed leader".to_owned());
    };
    let Some(previous) = view.members.values().find_map(|v| v.release()) else {
        return refuse("release", "no member reports a release".to_owned());
    };
    Ok(crate::rollout::Event::Started {
        by: None,
        id,
        target: release.clone(),
        previous: previous.to_owned(),
        order: order(view, leader),
        leader: leader.clone(),
        at: now,
        journal: None,
    })
}

/// The steps a rollout takes while every member still serves: staging (with
/// each agent's own checks, as its Hello named them) and the backup.
fn before_the_first_stop(view: &View, target: &str, policy: &Policy) -> Vec<PlannedStep> {
    let mut steps = vec![PlannedStep {
        member: None,
        action: format!(
            "stage {target} on every member: download, verify its sha256, unpack, run the release's own checks.toml"
        ),
        reason: "while every member serves; a failed stage or check refuses the rollout before anything is stopped".into(),
    }];
    for (m, v) in &view.members {
        if v.stage_checks.is_empty() {
            continue;
        }
        let list: Vec<String> = v
            .stage_checks
            .iter()
            .map(|c| format!("{} (`{}`)", c.name, c.command))
            .collect();
        steps.push(PlannedStep {
            member: Some(m.clone()),
            action: format!("check the staged {target}: {}", list.join("; ")),
            reason: "the agent's [[target.checks]]; a failure refuses the rollout before anything is stopped".into(),
        });
    }
    let backup = match policy.backup {
        BackupPolicy::Off => return steps,
        BackupPolicy::Required => {
            "backup = \"required\": a failed or unverified backup pauses the rollout with nothing stopped"
        }
        BackupPolicy::Optional => {
            "backup = \"optional\": a failed backup is reported and the rollout goes on without one"
        }
    };
    let source = crate::decide::backup_source(view);
    steps.push(PlannedStep {
        member: source.clone(),
        action: "back up: take, upload, test-restore where the adapter can, then the coordinator re-reads every part and checks its sha256".into(),
        reason: format!(
            "{}; {backup}",
            match &source {
                Some(m) if Some(m) == view.agreed_leader() => {
                    "the leader: no follower serves to take it from"
                }
                Some(_) => "the most caught-up follower, so the leader is not loaded",
                None => "no member is serving to take it from yet",
            }
        ),
    });
    steps
}

/// One line of a dry-run plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStep {
    pub member: Option<MemberId>,
    pub action: String,
    pub reason: String,
}

/// The ordered steps a rollout to `target` would take from `view`, each with
/// its reason, and the handover target as of now.
pub fn planned_steps(
    view: &View,
    target: &str,
    policy: &Policy,
) -> (Vec<PlannedStep>, Option<MemberId>) {
    let Some(leader) = view.agreed_leader().cloned() else {
        return (
            vec![PlannedStep {
                member: None,
                action: "nothing".into(),
                reason: "no agreed leader, so no order can be fixed".into(),
            }],
            None,
        );
    };
    let mut steps = before_the_first_stop(view, target, policy);
    let gates = format!(
        "stage {target}, stop (SIGKILL after {:?}), switch current, start, wait healthy on {target} (<= {:?}), wait lag <= {} on 2 consecutive reports (<= {:?})",
        policy.stop_timeout, policy.health_timeout, policy.tolerable_lag, policy.catchup_timeout
    );
    let order = order(view, &leader);
    let followers = &order[..order.len() - 1];
    for m in followers {
        let lag = view.members.get(m).and_then(|v| v.lag);
        steps.push(PlannedStep {
            member: Some(m.clone()),
            action: format!("upgrade: {gates}"),
            reason: format!(
                "follower, lag {}; followers go most-lagging first, then by id",
                lag.map_or("unknown".into(), |l| l.to_string())
            ),
        });
    }
    // As of now, by the rule the real pick uses at handover time
    // (`decide::handover_target`): before the rollout no follower is on the
    // target yet, so it would pick among all healthy followers, as here.
    let handover = crate::decide::most_caught_up(view, &leader, |_, _| true);
    if followers.is_empty() {
        steps.push(PlannedStep {
            member: Some(leader),
            action: format!("upgrade in place: {gates}"),
            reason: "the only member: no handover; it is down from its stop until it is healthy on the target".into(),
        });
        steps.push(PlannedStep {
            member: None,
            action: "verify".into(),
            reason: format!("the member on {target} and healthy"),
        });
        return (steps, None);
    }
    steps.push(PlannedStep {
        member: Some(leader.clone()),
        action: format!(
            "hand leadership to {}",
            handover.as_ref().map_or("(none healthy)".to_owned(), |m| m.to_string())
        ),
        reason: "the leader is never stopped while it leads; the target is the most caught-up upgraded follower, picked at handover time".into(),
    });
    steps.push(PlannedStep {
        member: Some(leader),
        action: format!("upgrade: {gates}"),
        reason: "the old leader goes last".into(),
    });
    steps.push(PlannedStep {
        member: None,
        action: "verify".into(),
        reason: format!(
            "every member on {target}, one leader, every lag <= {}",
            policy.tolerable_lag
        ),
    });
    (steps, handover)
}

/// Starts a rollback of `from` (a paused or aborted rollout): a new rollout
/// to `from`'s previous release that touches only the members now on
/// `from`'s target, in reverse of `from`'s order, with the current leader
/// last. The same gates apply; the preflight (with mixed releases allowed)
/// must have passed.
pub fn start_rollback(
    checks: &[Check],
    id: String,
    view: &View,
    from: &crate::rollout::RolloutState,
    artifact: &ArtifactVerdict,
    now: crate::UnixMs,
) -> Result<crate::rollout::Event, Vec<Check>> {
    let failed: Vec<Check> = checks.iter().filter(|c| !c.ok).cloned().collect();
    if !failed.is_empty() {
        return Err(failed);
    }
    let refuse = |check: &str, detail: String| Err(vec![Check::fail(check, None, detail)]);
    let ArtifactVerdict::Verified { release, .. } = artifact else {
        return refuse(
            "artifact",
            format!("release {} is not verified in the store", from.previous),
        );
    };
    let Some(leader) = view.agreed_leader() else {
        return refuse("leader", "no agreed leader".to_owned());
    };
    let on_target = |m: &MemberId| {
        view.members.get(m).and_then(|v| v.release()) == Some(from.target.version.as_str())
    };
    let mut order: Vec<MemberId> = from
        .order
        .iter()
        .rev()
        .filter(|m| on_target(m))
        .cloned()
        .collect();
    if order.is_empty() {
        return refuse(
            "release",
            format!(
                "no member runs {}; nothing to roll back",
                from.target.version
            ),
        );
    }
    if let Some(pos) = order.iter().position(|m| m == leader) {
        let l = order.remove(pos);
        order.push(l);
    }
    Ok(crate::rollout::Event::Started {
        by: None,
        id,
        target: release.clone(),
        previous: from.target.version.clone(),
        order,
        leader: leader.clone(),
        at: now,
        journal: None,
    })
}
