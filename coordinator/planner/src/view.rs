//! The planner's input: a snapshot of the fleet, built by the coordinator
//! from its FleetView. Plain data; the planner never asks for more.

use std::collections::BTreeMap;

use baton_domain::{Health, MemberId, Report, Role, VersionRule};
use serde::{Deserialize, Serialize};

use crate::UnixMs;

/// One lag reading, taken when a report from the member arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagSample {
    /// The member's report sequence number (consecutive reports differ by 1).
    pub seq: u64,
    pub at: UnixMs,
    pub lag: u64,
    /// The revision the member had applied, as of that report.
    #[serde(default)]
    pub applied: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    /// Heard from within 3 heartbeats.
    pub fresh: bool,
    pub connected: bool,
    pub report: Option<Report>,
    /// Lag now, against the leader's committed revision; None if unknown.
    pub lag: Option<u64>,
    /// Recent lag readings, oldest first. A bounded window: at a fast
    /// report cadence it may span only seconds.
    pub lag_samples: Vec<LagSample>,
    /// When a reading last showed a lower lag than the one before it, kept
    /// however far back that was (stall detection must not depend on how
    /// many readings the window holds).
    #[serde(default)]
    pub lag_shrank_at: Option<UnixMs>,
    /// The version rule the member's agent stated in its Hello; None from
    /// an agent too old to state one ([`crate::version::rule_for`] infers it).
    #[serde(default)]
    pub version_rule: Option<VersionRule>,
    /// The operator's checks the member's agent runs on each staged release
    /// (its Hello's): what a dry run lists for the stage step.
    #[serde(default)]
    pub stage_checks: Vec<baton_domain::StageCheck>,
    /// The latest report arrived within 3 fast-cadence intervals, says
    /// healthy, and shows progress (applied moved since the report before,
    /// or equals the leader's committed revision). Gates believe only live
    /// members; a frozen member's agent may still be heard, but is not live.
    #[serde(default)]
    pub live: bool,
    /// When the latest report that showed progress arrived. A stop waits
    /// for one from every other member after the step before it finished:
    /// a member frozen just after its last good report is still "live" for
    /// a moment, but shows no progress after that.
    #[serde(default)]
    pub progressed_at: Option<UnixMs>,
}

/// The time of the last reading in `samples` whose lag is below its
/// predecessor's: what a view builder keeps as [`MemberView::lag_shrank_at`].
pub fn last_shrink<'a>(samples: impl IntoIterator<Item = &'a LagSample>) -> Option<UnixMs> {
    let mut prev: Option<u64> = None;
    let mut at = None;
    for s in samples {
        if prev.is_some_and(|p| s.lag < p) {
            at = Some(s.at);
        }
        prev = Some(s.lag);
    }
    at
}

impl MemberView {
    /// The member is up and serving, per a fresh report.
    pub fn healthy(&self) -> bool {
        self.fresh
            && self
                .report
                .as_ref()
                .is_some_and(|r| r.state.health == Health::Healthy)
    }

    pub fn role(&self) -> Option<Role> {
        self.report
            .as_ref()
            .filter(|_| self.fresh)
            .map(|r| r.state.role)
    }

    pub fn release(&self) -> Option<&str> {
        self.report.as_ref().map(|r| r.state.release.as_str())
    }

    pub fn applied(&self) -> u64 {
        self.report.as_ref().map_or(0, |r| r.state.applied_revision)
    }

    /// Counts as down for `max_unavailable`.
    pub fn down(&self) -> bool {
        !self.healthy()
    }

    /// Healthy on a live report: what every gate asks of a member.
    pub fn serving(&self) -> bool {
        self.healthy() && self.live
    }

    /// The member's lag as of its latest report: the leader's committed
    /// revision when that report arrived, minus what it had applied. Unlike
    /// [`MemberView::lag`] it does not grow while the member is between
    /// reports, so members reporting at different moments compare fairly.
    /// None when the latest report is not a healthy one; with no readings
    /// yet, the lag now.
    pub fn reported_lag(&self) -> Option<u64> {
        let r = self.report.as_ref()?;
        if r.state.health != Health::Healthy || !self.fresh {
            return None;
        }
        self.lag_samples.last().map(|s| s.lag).or(self.lag)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// The leader fresh reports name.
    pub leader: Option<MemberId>,
    pub members: BTreeMap<MemberId, MemberView>,
}

impl View {
    /// The single leader that every fresh, healthy report agrees on.
    pub fn agreed_leader(&self) -> Option<&MemberId> {
        let leader = self.leader.as_ref()?;
        let all_agree = self
            .members
            .values()
            .filter(|m| m.healthy())
            .all(|m| m.report.as_ref().and_then(|r| r.state.leader.as_ref()) == Some(leader));
        let leaders = self
            .members
            .values()
            .filter(|m| m.role() == Some(Role::Leader))
            .count();
        (all_agree && leaders == 1).then_some(leader)
    }

    /// Whether `member` leads, by its own fresh report or by the view.
    pub fn is_leader(&self, member: &MemberId) -> bool {
        self.leader.as_ref() == Some(member)
            || self
                .members
                .get(member)
                .and_then(|m| m.report.as_ref())
                .is_some_and(|r| r.state.role == Role::Leader)
    }
}
