//! The FleetView: the latest valid report per member and when it arrived.
//!
//! This module owns what the coordinator believes about the cluster and the
//! rules for changing it: only a configured member may report, a report must
//! name the member its stream said Hello for, and a session that was replaced
//! by a newer one can no longer write. It does no IO. It reads the clock
//! in one place only: [`FleetView::new`] anchors the wall time once (a
//! monotonic instant and the unix time it corresponds to; tests pin both
//! with [`FleetView::with_epoch`]). Every other call that needs the time
//! takes `now`, and wall times are derived from the anchor.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_domain::{FleetStatus, Health, Hello, MemberId, MemberRow, Report, Role, VersionRule};
use baton_planner::{LagSample, MemberView, UnixMs, View};
use tokio::time::Instant;

/// Wall-clock now, for anchoring the view's monotonic clock once.
pub fn now_unix_ms() -> UnixMs {
    UnixMs(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
    )
}

/// Identifies one agent stream; a newer one for the same member supersedes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// Why a Hello or a Report was refused. Nothing in the view changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "member {member} is not in cluster {cluster}'s config; add it to `members` or fix the agent's member_id"
    )]
    UnknownMember { member: MemberId, cluster: String },
    #[error(
        "member {member} says cluster {got:?}, this coordinator runs {want:?}; fix the agent's cluster_id"
    )]
    WrongCluster {
        member: MemberId,
        got: String,
        want: String,
    },
    #[error(
        "report names member {reported} on a stream that said Hello as {hello}; the agent's identity is fixed by its Hello"
    )]
    MemberMismatch { hello: MemberId, reported: MemberId },
    #[error("member {member}: this stream was replaced by a newer connection from the same member")]
    Superseded { member: MemberId },
}

/// Lag readings kept per member for the planner's gates.
const LAG_SAMPLES: usize = 256;

/// The report cadence the coordinator asks for while a rollout runs.
pub const FAST_CADENCE: Duration = Duration::from_millis(100);

/// A report is live for this long after it arrives (3 fast-cadence
/// intervals), if it showed progress. Gates believe only live reports.
pub const LIVE_WINDOW: Duration = Duration::from_millis(3 * 100);

#[derive(Debug, Default)]
struct Entry {
    report: Option<Report>,
    last_seen: Option<Instant>,
    session: Option<SessionId>,
    /// Valid reports received, ever.
    seq: u64,
    /// (seq, wall time, lag) per report, oldest first.
    lag_samples: std::collections::VecDeque<LagSample>,
    /// When a reading last showed a lower lag than the previous one.
    lag_shrank_at: Option<UnixMs>,
    /// The version rule the agent's Hello stated (None from an older agent).
    version_rule: Option<VersionRule>,
    /// The stage checks the agent's Hello named.
    stage_checks: Vec<baton_domain::StageCheck>,
    /// Whether the latest report showed progress: its applied revision
    /// moved since the report before it, or it has applied everything the
    /// leader has committed. A member that answers but does not apply (a
    /// stuck apply loop, a stale read) does not progress.
    progressed: bool,
    /// The applied revision of the latest healthy report: what "moved" is
    /// judged against (a down or unresponsive report in between carries no
    /// revision, and 0 -> N is not progress).
    healthy_applied: Option<u64>,
    /// When the latest report that showed progress arrived.
    progressed_at: Option<Instant>,
}

/// The coordinator's picture of the cluster.
#[derive(Debug)]
pub struct FleetView {
    cluster: String,
    heartbeat: Duration,
    members: BTreeMap<MemberId, Entry>,
    /// The configured order, for display.
    order: Vec<MemberId>,
    next_session: u64,
    /// A monotonic instant and the wall time it corresponds to.
    epoch: (Instant, UnixMs),
}

impl FleetView {
    pub fn new(cluster: String, members: Vec<MemberId>, heartbeat: Duration) -> Self {
        Self::with_epoch(cluster, members, heartbeat, (Instant::now(), now_unix_ms()))
    }

    /// As `new`, with the clock pinned (for tests).
    pub fn with_epoch(
        cluster: String,
        members: Vec<MemberId>,
        heartbeat: Duration,
        epoch: (Instant, UnixMs),
    ) -> Self {
        FleetView {
            epoch,
            cluster,
            heartbeat,
            members: members
                .iter()
                .map(|m| (m.clone(), Entry::default()))
                .collect(),
            order: members,
            next_session: 1,
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The current session of `member`, if its agent is connected.
    pub fn session(&self, member: &MemberId) -> Option<SessionId> {
        self.members.get(member).and_then(|e| e.session)
    }

    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Whether this Hello may open a session. Changes nothing.
    pub fn check_hello(&self, hello: &Hello) -> Result<(), Refusal> {
        if !self.members.contains_key(&hello.member) {
            return Err(Refusal::UnknownMember {
                member: hello.member.clone(),
                cluster: self.cluster.clone(),
            });
        }
        if hello.cluster != self.cluster {
            return Err(Refusal::WrongCluster {
                member: hello.member.clone(),
                got: hello.cluster.clone(),
                want: self.cluster.clone(),
            });
        }
        Ok(())
    }

    fn check_report(hello: &MemberId, report: &Report) -> Result<(), Refusal> {
        if &report.member != hello {
            return Err(Refusal::MemberMismatch {
                hello: hello.clone(),
                reported: report.member.clone(),
            });
        }
        Ok(())
    }

    /// Opens a session with its first valid report; a previous session of the
    /// same member is superseded. Refused reports change nothing.
    pub fn open_session(
        &mut self,
        hello: &Hello,
        first: Report,
        now: Instant,
    ) -> Result<SessionId, Refusal> {
        self.check_hello(hello)?;
        Self::check_report(&hello.member, &first)?;
        let id = SessionId(self.next_session);
        self.next_session += 1;
        let entry = self
            .members
            .get_mut(&hello.member)
            .ok_or_else(|| Refusal::UnknownMember {
                member: hello.member.clone(),
                cluster: self.cluster.clone(),
            })?;
        entry.session = Some(id);
        entry.version_rule = hello.version_rule;
        entry.stage_checks = hello.stage_checks.clone();
        entry.report = Some(first);
        entry.last_seen = Some(now);
        self.judge_progress(&hello.member, now);
        self.sample(&hello.member, now);
        Ok(id)
    }

    /// Whether `member`'s newest report shows progress over the healthy
    /// one before it.
    fn judge_progress(&mut self, member: &MemberId, now: Instant) {
        let leader_committed = self.leader(now).map(|(_, r)| r.state.committed_revision);
        let Some(e) = self.members.get_mut(member) else {
            return;
        };
        let Some(r) = e.report.as_ref() else { return };
        if r.state.health != Health::Healthy {
            e.progressed = false;
            return;
        }
        let applied = r.state.applied_revision;
        let moved = e.healthy_applied.is_some_and(|before| applied > before);
        // With no leader known there is nothing to be complete against (a
        // member's own committed revision may stop where its apply stopped).
        let complete = leader_committed.is_some_and(|c| applied >= c);
        e.progressed = moved || complete;
        if e.progressed {
            e.progressed_at = Some(now);
        }
        e.healthy_applied = Some(applied);
    }

    /// Whether `member`'s latest report is live at `now`: healthy, showing
    /// progress, and received within [`LIVE_WINDOW`].
    pub fn is_live(&self, member: &MemberId, now: Instant) -> bool {
        self.members.get(member).is_some_and(|e| {
            e.progressed
                && e.session.is_some()
                && e.last_seen
                    .is_some_and(|t| now.saturating_duration_since(t) <= LIVE_WINDOW)
        })
    }

    /// Records the member's lag as of its newest report.
    fn sample(&mut self, member: &MemberId, now: Instant) {
        let leader_committed = self.leader(now).map(|(_, r)| r.state.committed_revision);
        let wall = self.wall(now);
        let Some(e) = self.members.get_mut(member) else {
            return;
        };
        e.seq += 1;
        let Some(r) = e.report.as_ref() else { return };
        // A member that is down or did not answer has no revision to judge.
        if matches!(r.state.health, Health::Down | Health::Unresponsive) {
            return;
        }
        let Some(committed) = leader_committed else {
            return;
        };
        let lag = committed.saturating_sub(r.state.applied_revision);
        if e.lag_samples.back().is_some_and(|prev| lag < prev.lag) {
            e.lag_shrank_at = Some(wall);
        }
        e.lag_samples.push_back(LagSample {
            seq: e.seq,
            at: wall,
            lag,
            applied: r.state.applied_revision,
        });
        while e.lag_samples.len() > LAG_SAMPLES {
            e.lag_samples.pop_front();
        }
    }

    /// Wall-clock time of a monotonic instant (fixed at construction).
    fn wall(&self, now: Instant) -> UnixMs {
        let (t0, w0) = self.epoch;
        UnixMs(w0.0 + u64::try_from(now.saturating_duration_since(t0).as_millis()).unwrap_or(0))
    }

    /// The planner's snapshot of the fleet.
    pub fn planner_view(&self, now: Instant) -> (View, UnixMs) {
        let status = self.status(now);
        let members = status
            .members
            .into_iter()
            .map(|row| {
                let entry = &self.members[&row.member];
                let samples = entry.lag_samples.iter().copied().collect();
                let live = self.is_live(&row.member, now);
                let progressed_at = entry.progressed_at.map(|t| self.wall(t));
                (
                    row.member,
                    MemberView {
                        fresh: row.fresh,
                        connected: row.connected,
                        report: row.report,
                        lag: row.lag,
                        lag_samples: samples,
                        lag_shrank_at: entry.lag_shrank_at,
                        version_rule: entry.version_rule,
                        stage_checks: entry.stage_checks.clone(),
                        live,
                        progressed_at,
                    },
                )
            })
            .collect();
        (
            View {
                leader: status.leader,
                members,
            },
            self.wall(now),
        )
    }

    /// Records a report on an open session.
    pub fn record(
        &mut self,
        hello: &MemberId,
        session: SessionId,
        report: Report,
        now: Instant,
    ) -> Result<(), Refusal> {
        Self::check_report(hello, &report)?;
        let entry = self
            .members
            .get_mut(hello)
            .filter(|e| e.session == Some(session))
            .ok_or_else(|| Refusal::Superseded {
                member: hello.clone(),
            })?;
        entry.report = Some(report);
        entry.last_seen = Some(now);
        let member = hello.clone();
        self.judge_progress(&member, now);
        self.sample(&member, now);
        Ok(())
    }

    /// Marks the session closed, unless a newer one replaced it.
    pub fn close_session(&mut self, member: &MemberId, session: SessionId) {
        if let Some(e) = self.members.get_mut(member)
            && e.session == Some(session)
        {
            e.session = None;
        }
    }

    /// Whether `member` was heard from within 3 heartbeats of `now`.
    pub fn is_fresh(&self, member: &MemberId, now: Instant) -> bool {
        self.members
            .get(member)
            .and_then(|e| e.last_seen)
            .is_some_and(|t| now.saturating_duration_since(t) <= self.heartbeat * 3)
    }

    /// The leader as fresh reports say: among fresh members that report
    /// themselves leader, the one with the highest term.
    pub fn leader(&self, now: Instant) -> Option<(&MemberId, &Report)> {
        self.members
            .iter()
            .filter(|(m, _)| self.is_fresh(m, now))
            .filter_map(|(m, e)| e.report.as_ref().map(|r| (m, r)))
            .filter(|(_, r)| r.state.role == Role::Leader)
            .max_by_key(|(_, r)| r.state.term)
    }

    /// The view as `baton status` shows it.
    pub fn status(&self, now: Instant) -> FleetStatus {
        let leader = self.leader(now);
        let leader_committed = leader.map(|(_, r)| r.state.committed_revision);
        let members = self
            .order
            .iter()
            .map(|m| {
                let e = &self.members[m];
                // A member that is down has no meaningful revision.
                let lag = match (&e.report, leader_committed) {
                    (Some(r), Some(c))
                        if self.is_fresh(m, now)
                            && !matches!(r.state.health, Health::Down | Health::Unresponsive) =>
                    {
                        Some(c.saturating_sub(r.state.applied_revision))
                    }
                    _ => None,
                };
                MemberRow {
                    member: m.clone(),
                    ever_seen: e.last_seen.is_some(),
                    connected: e.session.is_some(),
                    fresh: self.is_fresh(m, now),
                    last_seen_ms_ago: e.last_seen.map(|t| {
                        u64::try_from(now.saturating_duration_since(t).as_millis())
                            .unwrap_or(u64::MAX)
                    }),
                    report: e.report.clone(),
                    lag,
                }
            })
            .collect();
        FleetStatus {
            cluster: self.cluster.clone(),
            leader: leader.map(|(m, _)| m.clone()),
            heartbeat_ms: u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX),
            members,
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_domain::fixtures;

    use super::*;

    fn id(s: &str) -> MemberId {
        MemberId::new(s).unwrap()
    }

    fn hello(m: &str) -> Hello {
        Hello {
            member: id(m),
            cluster: "demo".into(),
            agent_version: "t".into(),
            adapter_kind: "fake".into(),
            version_rule: None,
            stage_checks: Vec::new(),
        }
    }

    fn report(m: &str, role: Role, committed: u64, applied: u64, term: u64) -> Report {
        let mut r = fixtures::report(m, role, Some("n1"), committed, applied);
        r.state.term = term;
        r
    }

    fn view() -> FleetView {
        FleetView::new(
            "demo".into(),
            vec![id("n1"), id("n2"), id("n3")],
            Duration::from_secs(1),
        )
    }

    #[test]
    fn lag_is_against_the_leaders_committed_revision() {
        let t0 = Instant::now();
        let mut v = view();
        v.open_session(&hello("n1"), report("n1", Role::Leader, 100, 100, 2), t0)
            .unwrap();
        v.open_session(&hello("n2"), report("n2", Role::Follower, 98, 90, 2), t0)
            .unwrap();
        let s = v.status(t0);
        assert_eq!(s.leader, Some(id("n1")));
        let lags: Vec<_> = s.members.iter().map(|r| r.lag).collect();
        assert_eq!(lags, vec![Some(0), Some(10), None]);
        assert!(!s.members[2].ever_seen);
        let mut down = report("n3", Role::Unknown, 0, 0, 0);
        down.state.health = Health::Down;
        v.open_session(&hello("n3"), down, t0).unwrap();
        assert_eq!(
            v.status(t0).members[2].lag,
            None,
            "a down member has no lag figure"
        );
    }

    #[test]
    fn stale_members_lose_freshness_and_a_stale_leader_is_not_leader() {
        let t0 = Instant::now();
        let mut v = view();
        v.open_session(&hello("n1"), report("n1", Role::Leader, 5, 5, 1), t0)
            .unwrap();
        let later = t0 + Duration::from_millis(3001);
        let s = v.status(later);
        assert!(!s.members[0].fresh);
        assert_eq!(s.leader, None);
        assert_eq!(s.members[0].last_seen_ms_ago, Some(3001));
    }

    #[test]
    fn the_highest_term_leader_wins() {
        let t0 = Instant::now();
        let mut v = view();
        v.open_session(&hello("n1"), report("n1", Role::Leader, 5, 5, 1), t0)
            .unwrap();
        v.open_session(&hello("n2"), report("n2", Role::Leader, 7, 7, 2), t0)
            .unwrap();
        assert_eq!(v.status(t0).leader, Some(id("n2")));
    }

    #[test]
    fn refused_hellos_and_reports_change_nothing() {
        let t0 = Instant::now();
        let mut v = view();
        let s1 = v
            .open_session(&hello("n1"), report("n1", Role::Leader, 5, 5, 1), t0)
            .unwrap();
        let before = v.status(t0);
        let t1 = t0 + Duration::from_millis(10);
        let mut wrong_cluster = hello("n2");
        wrong_cluster.cluster = "other".into();
        let cases = [
            v.open_session(&hello("n9"), report("n9", Role::Follower, 1, 1, 1), t1),
            v.open_session(&wrong_cluster, report("n2", Role::Follower, 1, 1, 1), t1),
            v.open_session(&hello("n2"), report("n3", Role::Follower, 1, 1, 1), t1),
        ];
        for c in cases {
            assert!(c.is_err());
        }
        assert!(matches!(
            v.record(&id("n1"), s1, report("n2", Role::Leader, 9, 9, 1), t1),
            Err(Refusal::MemberMismatch { .. })
        ));
        assert_eq!(v.status(t0), before);
    }

    #[test]
    fn each_report_adds_a_numbered_lag_sample() {
        let t0 = Instant::now();
        let mut v = FleetView::with_epoch(
            "demo".into(),
            vec![id("n1"), id("n2")],
            Duration::from_secs(1),
            (t0, UnixMs(1_000)),
        );
        v.open_session(&hello("n1"), report("n1", Role::Leader, 100, 100, 1), t0)
            .unwrap();
        let s = v
            .open_session(&hello("n2"), report("n2", Role::Follower, 100, 60, 1), t0)
            .unwrap();
        let t1 = t0 + Duration::from_millis(250);
        v.record(&id("n2"), s, report("n2", Role::Follower, 100, 95, 1), t1)
            .unwrap();
        let (view, now) = v.planner_view(t1);
        assert_eq!(now, UnixMs(1_250));
        let samples = &view.members[&id("n2")].lag_samples;
        assert_eq!(
            samples
                .iter()
                .map(|s| (s.seq, s.at.0, s.lag))
                .collect::<Vec<_>>(),
            vec![(1, 1_000, 40), (2, 1_250, 5)]
        );
    }

    #[test]
    fn the_last_shrink_outlives_the_sample_window() {
        let t0 = Instant::now();
        let mut v = FleetView::with_epoch(
            "demo".into(),
            vec![id("n1"), id("n2")],
            Duration::from_secs(1),
            (t0, UnixMs(1_000)),
        );
        let l = v
            .open_session(&hello("n1"), report("n1", Role::Leader, 100, 100, 1), t0)
            .unwrap();
        let s = v
            .open_session(&hello("n2"), report("n2", Role::Follower, 100, 50, 1), t0)
            .unwrap();
        // The lag shrinks once (50 -> 40 at +10 ms), then grows for longer
        // than the window holds: one reading every 10 ms.
        let at = |i: u64| t0 + Duration::from_millis(10 * i);
        v.record(
            &id("n2"),
            s,
            report("n2", Role::Follower, 100, 60, 1),
            at(1),
        )
        .unwrap();
        for i in 2..(LAG_SAMPLES as u64 + 100) {
            v.record(
                &id("n1"),
                l,
                report("n1", Role::Leader, 100 + i, 100 + i, 1),
                at(i),
            )
            .unwrap();
            v.record(
                &id("n2"),
                s,
                report("n2", Role::Follower, 100 + i, 60, 1),
                at(i),
            )
            .unwrap();
        }
        let (view, _) = v.planner_view(at(LAG_SAMPLES as u64 + 100));
        let n2 = &view.members[&id("n2")];
        assert_eq!(n2.lag_samples.len(), LAG_SAMPLES);
        assert!(
            n2.lag_samples[0].at > UnixMs(1_010),
            "the shrink left the window"
        );
        assert_eq!(n2.lag_shrank_at, Some(UnixMs(1_010)));
    }

    /// Live: healthy, recent, and progressing against the last healthy
    /// report. A member that does not apply, even if its reads alternate
    /// with unresponsive ones (applied 0), is not live.
    #[test]
    fn live_means_recent_healthy_and_progressing() {
        let t0 = Instant::now();
        let mut v = view();
        let l = v
            .open_session(&hello("n1"), report("n1", Role::Leader, 200, 200, 1), t0)
            .unwrap();
        let s = v
            .open_session(&hello("n2"), report("n2", Role::Follower, 200, 140, 1), t0)
            .unwrap();
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(
            v.is_live(&id("n1"), t0),
            "the leader has applied all it committed"
        );
        assert!(
            !v.is_live(&id("n2"), t0),
            "behind, and nothing to compare with"
        );
        let mut frozen = report("n2", Role::Unknown, 0, 0, 0);
        frozen.state.health = Health::Unresponsive;
        v.record(&id("n2"), s, frozen, ms(50)).unwrap();
        assert!(!v.is_live(&id("n2"), ms(50)));
        v.record(
            &id("n2"),
            s,
            report("n2", Role::Follower, 200, 140, 1),
            ms(100),
        )
        .unwrap();
        assert!(
            !v.is_live(&id("n2"), ms(100)),
            "0 -> 140 across an unresponsive read is not progress"
        );
        v.record(
            &id("n2"),
            s,
            report("n2", Role::Follower, 200, 150, 1),
            ms(150),
        )
        .unwrap();
        assert!(v.is_live(&id("n2"), ms(150)), "it applied more");
        assert!(v.is_live(&id("n2"), ms(150) + LIVE_WINDOW));
        assert!(!v.is_live(&id("n2"), ms(151) + LIVE_WINDOW), "too old");
        v.record(
            &id("n1"),
            l,
            report("n1", Role::Leader, 260, 260, 1),
            ms(200),
        )
        .unwrap();
        v.record(
            &id("n2"),
            s,
            report("n2", Role::Follower, 260, 150, 1),
            ms(250),
        )
        .unwrap();
        assert!(
            !v.is_live(&id("n2"), ms(250)),
            "stuck while the leader moves on"
        );
        v.record(
            &id("n2"),
            s,
            report("n2", Role::Follower, 260, 260, 1),
            ms(300),
        )
        .unwrap();
        assert!(v.is_live(&id("n2"), ms(300)));
        v.close_session(&id("n2"), s);
        assert!(!v.is_live(&id("n2"), ms(300)), "no stream, not live");
    }

    #[test]
    fn a_newer_session_supersedes_the_old_one() {
        let t0 = Instant::now();
        let mut v = view();
        let old = v
            .open_session(&hello("n1"), report("n1", Role::Leader, 5, 5, 1), t0)
            .unwrap();
        let new = v
            .open_session(&hello("n1"), report("n1", Role::Leader, 6, 6, 1), t0)
            .unwrap();
        assert_eq!(
            v.record(&id("n1"), old, report("n1", Role::Leader, 7, 7, 1), t0),
            Err(Refusal::Superseded { member: id("n1") })
        );
        v.close_session(&id("n1"), old);
        assert!(
            v.status(t0).members[0].connected,
            "old close must not disconnect the new"
        );
        v.close_session(&id("n1"), new);
        assert!(!v.status(t0).members[0].connected);
    }
}
