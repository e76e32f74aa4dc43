//! In-process driver tests: the real [`Driver`] against a recording fake
//! [`AgentLink`], the in-memory journal and a [`FleetView`] fed with
//! simulated reports, under paused time. What the driver sends is asserted
//! as plain data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_domain::{
    Action, AgentCommand, CommandId, CommandOutcome, Health, Hello, MemberId, MemberState,
    Outbound, ReleaseRef, Report, Resources, Role,
};
use baton_planner::alerts::{Alert, AlertStatus, CATCH_UP_STALLED};
use baton_planner::rollout::{Event, Phase, RolloutState, Stage};
use baton_planner::{Policy, UnixMs};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::{Driver, DriverConfig, Op};
use crate::agent_link::AgentLink;
use crate::fleet::{FleetView, SessionId};
use crate::journal::{AlertEntry, Entry, Journal, MemoryJournal};

const EPOCH: UnixMs = UnixMs(1_700_000_000_000);
const STEP: Duration = Duration::from_millis(100);
const HEARTBEAT: Duration = Duration::from_secs(1);

fn id(s: &str) -> MemberId {
    MemberId::new(s).unwrap()
}

fn target() -> ReleaseRef {
    ReleaseRef {
        name: "kv".into(),
        version: "v2".into(),
        format_version: 1,
        sha256: "0".repeat(64),
    }
}

/// Records every message the driver sends; sessions come from the fleet.
struct FakeLink {
    fleet: Arc<Mutex<FleetView>>,
    /// What was sent, in order, until the test takes it.
    sent: Mutex<Vec<(MemberId, Outbound)>>,
    /// Never notified: the tests step the driver themselves.
    reports: Arc<Notify>,
}

impl FakeLink {
    fn take(&self) -> Vec<(MemberId, Outbound)> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

impl AgentLink for FakeLink {
    fn send(&self, member: &MemberId, msg: Outbound) -> Option<SessionId> {
        let session = self.session(member)?;
        self.sent.lock().unwrap().push((member.clone(), msg));
        Some(session)
    }

    fn session(&self, member: &MemberId) -> Option<SessionId> {
        self.fleet.lock().unwrap().session(member)
    }

    fn reports(&self) -> Arc<Notify> {
        self.reports.clone()
    }
}

/// The simulated members: what each runs, who leads, how they misbehave.
#[derive(Default)]
struct Sim {
    release: BTreeMap<MemberId, String>,
    up: BTreeMap<MemberId, bool>,
    leader: Option<MemberId>,
    term: u64,
    committed: u64,
    /// Start on the target release fails for this member.
    fail_start: Option<MemberId>,
    /// This member, once on the target, stays 50 entries behind.
    stuck_on_target: Option<MemberId>,
    /// How many step-downs are answered Ok but do not take effect.
    ignore_step_downs: usize,
}

impl Sim {
    fn three() -> Sim {
        let mut sim = Sim {
            leader: Some(id("n1")),
            term: 1,
            committed: 100,
            ..Sim::default()
        };
        for m in ["n1", "n2", "n3"] {
            sim.release.insert(id(m), "v1".into());
            sim.up.insert(id(m), true);
        }
        sim
    }

    fn report(&self, m: &MemberId) -> Report {
        let up = self.up[m];
        let release = &self.release[m];
        let leads = self.leader.as_ref() == Some(m);
        let applied = match &self.stuck_on_target {
            Some(s) if s == m && release == "v2" => self.committed - 50,
            _ => self.committed,
        };
        Report {
            member: m.clone(),
            state: MemberState {
                role: if leads { Role::Leader } else { Role::Follower },
                leader: if up { self.leader.clone() } else { None },
                committed_revision: self.committed,
                applied_revision: applied,
                release: if up { release.clone() } else { String::new() },
                format_version: 1,
                health: if up { Health::Healthy } else { Health::Down },
                health_detail: String::new(),
                term: self.term,
                cluster_version: String::new(),
            },
            resources: Resources {
                state_disk_free_bytes: 1 << 40,
                ..Resources::default()
            },
            timestamp_unix_ms: 0,
            process: Default::default(),
        }
    }

    /// What the member's agent does with `action`.
    fn run(&mut self, m: &MemberId, action: &Action) -> Result<String, String> {
        match action {
            Action::Stage { .. } => {}
            Action::Stop => {
                self.up.insert(m.clone(), false);
            }
            Action::Switch { version } => {
                self.release.insert(m.clone(), version.clone());
            }
            Action::Start => {
                if self.fail_start.as_ref() == Some(m) && self.release[m] == "v2" {
                    return Err("the member exited at start".into());
                }
                self.up.insert(m.clone(), true);
            }
            Action::Backup { .. } => {}
            Action::Restore { id } => return Err(format!("no rollout restores ({id})")),
            Action::StepDown { to } => {
                if self.ignore_step_downs > 0 {
                    self.ignore_step_downs -= 1;
                } else {
                    self.leader = Some(to.clone());
                    self.term += 1;
                }
            }
        }
        Ok("ok".into())
    }
}

struct Rig {
    driver: Driver,
    fleet: Arc<Mutex<FleetView>>,
    link: Arc<FakeLink>,
    journal: Arc<MemoryJournal>,
    policy: Policy,
    sim: Sim,
    /// Every notification the driver handed to the alert sinks.
    alerts: Arc<Mutex<Vec<Alert>>>,
}

fn hello(m: &MemberId) -> Hello {
    Hello {
        member: m.clone(),
        cluster: "demo".into(),
        agent_version: "test".into(),
        adapter_kind: "fake".into(),
        version_rule: Some(baton_domain::VersionRule::FormatOnly),
        stage_checks: Vec::new(),
    }
}

fn driver(
    rig_parts: (&Arc<Mutex<FleetView>>, &Arc<FakeLink>, &Arc<MemoryJournal>),
    policy: &Policy,
    alerts: &Arc<Mutex<Vec<Alert>>>,
) -> Driver {
    let (fleet, link, journal) = rig_parts;
    let sink = alerts.clone();
    Driver::new(
        DriverConfig {
            policy: policy.clone(),
            release_name: "kv".into(),
            store: None,
            scratch: std::env::temp_dir(),
            tick: Duration::from_millis(50),
            backups: None,
            cluster: "c1".into(),
        },
        fleet.clone(),
        link.clone(),
        journal.clone(),
        "demo",
        Box::new(move |a| sink.lock().unwrap().push(a)),
    )
}

impl Rig {
    /// Three connected members on v1 (n1 leads) and a started rollout to
    /// v2 in the journal, order n2, n3, then the leader n1.
    async fn new(sim: Sim, policy: Policy) -> Rig {
        let members = vec![id("n1"), id("n2"), id("n3")];
        let fleet = Arc::new(Mutex::new(FleetView::with_epoch(
            "demo".into(),
            members.clone(),
            HEARTBEAT,
            (Instant::now(), EPOCH),
        )));
        for m in &members {
            fleet
                .lock()
                .unwrap()
                .open_session(&hello(m), sim.report(m), Instant::now())
                .unwrap();
        }
        let link = Arc::new(FakeLink {
            fleet: fleet.clone(),
            sent: Mutex::default(),
            reports: Arc::new(Notify::new()),
        });
        let journal = Arc::new(MemoryJournal::new());
        journal
            .propose(
                Event::Started {
                    by: None,
                    id: "r1".into(),
                    target: target(),
                    previous: "v1".into(),
                    order: vec![id("n2"), id("n3"), id("n1")],
                    leader: id("n1"),
                    at: EPOCH,
                    journal: None,
                }
                .into(),
            )
            .await
            .unwrap();
        let alerts = Arc::default();
        let driver = driver((&fleet, &link, &journal), &policy, &alerts);
        Rig {
            driver,
            fleet,
            link,
            journal,
            policy,
            sim,
            alerts,
        }
    }

    /// Every connected member reports once, and the leader commits more.
    fn feed(&mut self) {
        self.sim.committed += 10;
        let mut fleet = self.fleet.lock().unwrap();
        for m in ["n1", "n2", "n3"].map(id) {
            if let Some(session) = fleet.session(&m) {
                fleet
                    .record(&m, session, self.sim.report(&m), Instant::now())
                    .unwrap();
            }
        }
    }

    fn rollout(&self) -> Arc<RolloutState> {
        self.journal
            .subscribe()
            .borrow()
            .rollouts
            .last()
            .unwrap()
            .clone()
    }

    /// The commands sent since the last call, dropping cadence messages.
    fn commands(&self) -> Vec<(MemberId, AgentCommand)> {
        self.link
            .take()
            .into_iter()
            .filter_map(|(m, o)| match o {
                Outbound::Command(c) => Some((m, c)),
                Outbound::Cadence { .. } => None,
            })
            .collect()
    }

    fn cmd(&self, n: u64, action: Action) -> AgentCommand {
        AgentCommand {
            id: CommandId(format!("r1-{n}")),
            action,
            stop_timeout_ms: Some(self.policy.stop_timeout.as_millis() as u32),
            even_if_leader: false,
            fence: None,
        }
    }

    async fn op<T>(&mut self, make: impl FnOnce(oneshot::Sender<T>) -> Op) -> T {
        let (tx, rx) = oneshot::channel();
        self.driver.handle_op(make(tx)).await;
        rx.await.unwrap()
    }

    /// Steps the driver, has the simulated agents run whatever it sent and
    /// answer, and moves time on by 100 ms; until `done` holds or `limit`
    /// rounds passed. Returns the commands sent, in order.
    async fn run(
        &mut self,
        limit: usize,
        done: impl Fn(&RolloutState) -> bool,
    ) -> Vec<(MemberId, Action)> {
        let mut sent = Vec::new();
        for _ in 0..limit {
            self.feed();
            self.driver.step().await;
            for (m, c) in self.commands() {
                sent.push((m.clone(), c.action.clone()));
                let result = self.sim.run(&m, &c.action);
                self.driver
                    .handle_result(m, CommandOutcome { id: c.id, result })
                    .await;
            }
            if done(&self.rollout()) {
                return sent;
            }
            tokio::time::advance(STEP).await;
        }
        panic!(
            "not done after {limit} rounds: {:?}; sent {sent:?}",
            self.rollout().phase
        );
    }

    /// Steps `rounds` times, feeding reports and moving time on; returns
    /// the commands sent (unanswered).
    async fn idle(&mut self, rounds: usize) -> Vec<(MemberId, AgentCommand)> {
        let mut sent = Vec::new();
        for _ in 0..rounds {
            self.feed();
            self.driver.step().await;
            sent.extend(self.commands());
            tokio::time::advance(STEP).await;
        }
        sent
    }

    fn issued(&self) -> usize {
        self.journal
            .entries()
            .iter()
            .filter(|e| matches!(e, Entry::Rollout(Event::CommandIssued { .. })))
            .count()
    }
}

/// The stage commands a rollout opens with: one per member, all at once,
/// sent in member-id order (ids follow the rollout's order n2, n3, n1).
fn stages() -> Vec<(MemberId, Action)> {
    ["n1", "n2", "n3"]
        .map(|m| (id(m), Action::Stage { release: target() }))
        .to_vec()
}

fn upgrade(m: &str) -> Vec<(MemberId, Action)> {
    [
        Action::Stage { release: target() },
        Action::Stop,
        Action::Switch {
            version: "v2".into(),
        },
        Action::Start,
    ]
    .into_iter()
    .map(|a| (id(m), a))
    .collect()
}

fn is_paused(r: &RolloutState) -> bool {
    matches!(r.phase, Phase::Paused { .. })
}

fn paused_reason(r: &RolloutState) -> String {
    match &r.phase {
        Phase::Paused { reason } => reason.clone(),
        other => panic!("not paused: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_clean_rollout_upgrades_followers_then_hands_over_then_the_old_leader() {
    let mut rig = Rig::new(Sim::three(), Policy::default()).await;
    // The first step: every member's stage at once (ids in the rollout's
    // order n2, n3, n1), then every agent on the fast cadence.
    rig.feed();
    rig.driver.step().await;
    let every = super::FAST_CADENCE;
    let stage = |n| Outbound::Command(rig.cmd(n, Action::Stage { release: target() }));
    assert_eq!(
        rig.link.take(),
        vec![
            (id("n1"), stage(3)),
            (id("n2"), stage(1)),
            (id("n3"), stage(2)),
            (id("n1"), Outbound::Cadence { every }),
            (id("n2"), Outbound::Cadence { every }),
            (id("n3"), Outbound::Cadence { every }),
        ]
    );
    for (m, n) in [("n2", 1), ("n3", 2), ("n1", 3)] {
        rig.sim
            .run(&id(m), &Action::Stage { release: target() })
            .unwrap();
        rig.driver
            .handle_result(
                id(m),
                CommandOutcome {
                    id: CommandId(format!("r1-{n}")),
                    result: Ok("ok".into()),
                },
            )
            .await;
    }
    let sent = rig.run(400, |r| r.phase == Phase::Completed).await;
    let mut want = upgrade("n2")[1..].to_vec();
    want.extend(upgrade("n3")[1..].to_vec());
    want.push((id("n1"), Action::StepDown { to: id("n2") }));
    want.extend(upgrade("n1")[1..].to_vec());
    assert_eq!(sent, want);
    let r = rig.rollout();
    assert_eq!(r.leader_changes.len(), 1, "one handover");
    assert_eq!(r.leader_changes[0].0, id("n2"));
    assert!(r.members.values().all(|p| p.stage == Stage::Done));
}

#[tokio::test(start_paused = true)]
async fn a_journal_that_cannot_be_written_stops_the_driver_pages_once_and_carries_on() {
    use baton_planner::alerts::{AlertStatus, JOURNAL_UNAVAILABLE};
    let mut rig = Rig::new(Sim::three(), Policy::default()).await;
    // Up to n2's stop: sent, not answered yet.
    let mut sent = Vec::new();
    let mut stop = None;
    for _ in 0..200 {
        rig.feed();
        rig.driver.step().await;
        for (m, c) in rig.commands() {
            sent.push((m.clone(), c.action.clone()));
            if c.action == Action::Stop {
                stop = Some((m, c));
                continue;
            }
            let result = rig.sim.run(&m, &c.action);
            rig.driver
                .handle_result(m, CommandOutcome { id: c.id, result })
                .await;
        }
        if stop.is_some() {
            break;
        }
        tokio::time::advance(STEP).await;
    }
    let (m, c) = stop.expect("n2's stop within 200 rounds");
    assert_eq!(m, id("n2"));
    let entries = rig.journal.entries().len();
    rig.journal.fail_writes(true);
    let result = rig.sim.run(&m, &c.action);
    rig.driver
        .handle_result(m, CommandOutcome { id: c.id, result })
        .await;
    let mut resent = Vec::new();
    for _ in 0..100 {
        rig.feed();
        rig.driver.step().await;
        for (m, c) in rig.commands() {
            resent.push((m.clone(), c.clone()));
            let result = rig.sim.run(&m, &c.action);
            rig.driver
                .handle_result(m, CommandOutcome { id: c.id, result })
                .await;
        }
        tokio::time::advance(STEP).await;
    }
    // 10 s of a full disk: nothing journaled, no command sent again or
    // anew, and one page.
    assert_eq!(rig.journal.entries().len(), entries);
    assert!(
        resent.is_empty(),
        "sent while the journal was down: {resent:?}"
    );
    let pages: Vec<_> = rig
        .alerts
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.name() == JOURNAL_UNAVAILABLE)
        .cloned()
        .collect();
    assert_eq!(pages.len(), 1, "{pages:?}");
    assert_eq!(pages[0].status, AlertStatus::Firing);
    assert!(
        pages[0].annotations["summary"].contains("No space left on device"),
        "{pages:?}"
    );
    // Space returns: the held answer is journaled, the page resolves, and
    // the rollout completes with every command sent once.
    rig.journal.fail_writes(false);
    let rest = rig.run(400, |r| r.phase.is_terminal()).await;
    assert!(
        matches!(rig.rollout().phase, Phase::Completed),
        "{:?}",
        rig.rollout().phase
    );
    let pages: Vec<_> = rig
        .alerts
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.name() == JOURNAL_UNAVAILABLE)
        .map(|a| a.status)
        .collect();
    assert_eq!(pages, vec![AlertStatus::Firing, AlertStatus::Resolved]);
    let all: Vec<_> = sent
        .into_iter()
        .chain(resent.into_iter().map(|(m, c)| (m, c.action)))
        .chain(rest)
        .collect();
    let stops = all
        .iter()
        .filter(|(m, a)| *m == id("n2") && *a == Action::Stop)
        .count();
    assert_eq!(stops, 1, "n2 was stopped once: {all:?}");
    let ids: Vec<_> = rig
        .journal
        .entries()
        .into_iter()
        .filter_map(|e| match e {
            Entry::Rollout(Event::CommandIssued { id, .. }) => Some(id),
            _ => None,
        })
        .collect();
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no id issued twice: {ids:?}");
}

#[tokio::test(start_paused = true)]
async fn a_journal_on_its_reserve_pauses_at_a_safe_point_and_resumes_when_space_returns() {
    let mut rig = Rig::new(Sim::three(), Policy::default()).await;
    // Up to n2's stop, answered: n2 is down when the disk fills.
    let before = rig
        .run(200, |r| {
            r.commands
                .values()
                .any(|c| c.action == Action::Stop && c.result.is_some())
        })
        .await;
    assert!(!rig.sim.up[&id("n2")], "n2 is down");
    rig.journal.set_low_space(true);
    let during = rig.run(200, is_paused).await;
    let reason = paused_reason(&rig.rollout());
    assert!(
        reason.starts_with(baton_planner::control::JOURNAL_SPACE_PAUSE),
        "{reason}"
    );
    // n2 was carried back to serving first; nothing else was stopped.
    assert!(rig.sim.up.values().all(|up| *up), "{:?}", rig.sim.up);
    assert!(
        !during.iter().any(|(_, a)| *a == Action::Stop),
        "stopped while the journal was low: {during:?}"
    );
    // Still low: it stays paused.
    assert!(rig.idle(50).await.is_empty());
    assert!(is_paused(&rig.rollout()));
    // Space is back: it resumes by itself and completes.
    rig.journal.set_low_space(false);
    let after = rig.run(400, |r| r.phase.is_terminal()).await;
    assert!(
        matches!(rig.rollout().phase, Phase::Completed),
        "{:?}",
        rig.rollout().phase
    );
    let stops = before
        .iter()
        .chain(&during)
        .chain(&after)
        .filter(|(_, a)| *a == Action::Stop)
        .count();
    assert_eq!(stops, 3, "each member stopped once");
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_reverts_the_member_and_pauses() {
    let sim = Sim {
        fail_start: Some(id("n2")),
        ..Sim::three()
    };
    let mut rig = Rig::new(sim, Policy::default()).await;
    let sent = rig.run(100, is_paused).await;
    let mut want = stages();
    want.extend(upgrade("n2")[1..].to_vec());
    want.extend([
        (id("n2"), Action::Stop),
        (
            id("n2"),
            Action::Switch {
                version: "v1".into(),
            },
        ),
        (id("n2"), Action::Start),
    ]);
    assert_eq!(sent, want);
    let r = rig.rollout();
    assert!(
        matches!(r.members[&id("n2")].stage, Stage::Reverted { .. }),
        "{:?}",
        r.members[&id("n2")].stage
    );
    assert!(paused_reason(&r).contains("start failed"), "{:?}", r.phase);
    assert_eq!(
        r.members[&id("n3")].stage,
        Stage::Staged,
        "nobody else touched (staged, still serving)"
    );
    assert_eq!(rig.sim.release[&id("n2")], "v1");
    // Paused: nothing more is sent.
    assert_eq!(rig.idle(20).await, vec![]);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_catch_up_pauses_and_pages_through_the_journal() {
    let sim = Sim {
        stuck_on_target: Some(id("n2")),
        ..Sim::three()
    };
    let policy = Policy {
        stall_after: Duration::from_secs(2),
        ..Policy::default()
    };
    let mut rig = Rig::new(sim, policy).await;
    let sent = rig.run(100, is_paused).await;
    let mut want = stages();
    want.extend(upgrade("n2")[1..].to_vec());
    assert_eq!(sent, want);
    let r = rig.rollout();
    assert!(
        paused_reason(&r).contains("member n2 catch-up stalled"),
        "{:?}",
        r.phase
    );
    assert!(matches!(
        r.members[&id("n2")].stage,
        Stage::CatchingUp { .. }
    ));
    // The page is an alert, journaled before it was handed to the sinks.
    let fired: Vec<Alert> = rig
        .journal
        .entries()
        .into_iter()
        .filter_map(|e| match e {
            Entry::Alert(AlertEntry::Fired { alert }) => Some(alert),
            _ => None,
        })
        .collect();
    assert!(
        fired
            .iter()
            .any(|a| a.name() == CATCH_UP_STALLED && a.member() == "n2"),
        "{fired:?}"
    );
    let notified = rig.alerts.lock().unwrap().clone();
    assert!(notified.iter().any(|a| a.name() == CATCH_UP_STALLED
        && a.member() == "n2"
        && a.status == AlertStatus::Firing));
    let firing = rig.journal.subscribe().borrow().firing.clone();
    assert!(
        firing.values().any(|a| a.name() == CATCH_UP_STALLED),
        "{firing:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_down_that_does_not_take_effect_is_retried_once() {
    let sim = Sim {
        ignore_step_downs: 1,
        ..Sim::three()
    };
    let policy = Policy {
        handover_timeout: Duration::from_secs(1),
        ..Policy::default()
    };
    let mut rig = Rig::new(sim, policy).await;
    let sent = rig.run(400, |r| r.phase == Phase::Completed).await;
    let leader: Vec<Action> = sent
        .into_iter()
        .filter(|(m, _)| *m == id("n1"))
        .map(|(_, a)| a)
        .collect();
    let step_down = Action::StepDown { to: id("n2") };
    assert_eq!(
        leader,
        vec![
            Action::Stage { release: target() },
            step_down.clone(),
            step_down,
            Action::Stop,
            Action::Switch {
                version: "v2".into()
            },
            Action::Start,
        ]
    );
    assert_eq!(rig.rollout().leader_changes.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn pause_stops_before_the_next_command_and_resume_goes_on() {
    let mut rig = Rig::new(Sim::three(), Policy::default()).await;
    rig.feed();
    rig.driver.step().await;
    let stage = rig.cmd(1, Action::Stage { release: target() });
    assert_eq!(rig.commands().len(), 3, "every member stages at once");
    let snap = rig
        .op(|reply| Op::Pause {
            by: "operator/test".into(),
            reason: "lunch".into(),
            reply,
        })
        .await
        .unwrap();
    assert_eq!(
        snap.state.phase,
        Phase::Paused {
            reason: "paused by the operator: lunch".into()
        }
    );
    // The in-flight command still lands; nothing new is sent.
    rig.driver
        .handle_result(
            id("n2"),
            CommandOutcome {
                id: stage.id,
                result: Ok("ok".into()),
            },
        )
        .await;
    assert_eq!(rig.idle(5).await, vec![]);
    assert_eq!(rig.rollout().members[&id("n2")].stage, Stage::Staged);
    rig.op(|reply| Op::Resume {
        by: "operator/test".into(),
        retry: false,
        reply,
    })
    .await
    .unwrap();
    rig.feed();
    rig.driver.step().await;
    assert_eq!(rig.commands(), vec![(id("n2"), rig.cmd(4, Action::Stop))]);
    // Who asked is journaled with each control event, in order.
    let audit: Vec<(String, String)> = rig
        .rollout()
        .audit
        .iter()
        .map(|a| (a.what.clone(), a.by.clone()))
        .collect();
    assert_eq!(
        audit,
        vec![
            ("paused".to_owned(), "operator/test".to_owned()),
            ("resumed".to_owned(), "operator/test".to_owned()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn abort_stops_after_the_current_step_and_never_leaves_a_member_down() {
    // Aborted while n2 stages: it stops there, n2 still serving.
    let mut rig = Rig::new(Sim::three(), Policy::default()).await;
    rig.feed();
    rig.driver.step().await;
    assert_eq!(rig.commands().len(), 3, "every member stages at once");
    let snap = rig
        .op(|reply| Op::Abort {
            by: "operator/test".into(),
            reply,
        })
        .await
        .unwrap();
    assert_eq!(snap.state.phase, Phase::Aborting);
    rig.driver
        .handle_result(
            id("n2"),
            CommandOutcome {
                id: CommandId("r1-1".into()),
                result: Ok("ok".into()),
            },
        )
        .await;
    let sent = rig.run(10, is_paused).await;
    assert_eq!(sent, vec![]);
    assert!(paused_reason(&rig.rollout()).contains("aborted by the operator; member n2 is staged"));

    // Aborted while n2 is down: it is brought back first, then it stops.
    let mut rig = Rig::new(Sim::three(), Policy::default()).await;
    rig.run(20, |r| r.members[&id("n2")].stage == Stage::Staged)
        .await;
    rig.feed();
    rig.driver.step().await;
    let stop = rig.commands();
    assert_eq!(stop, vec![(id("n2"), rig.cmd(4, Action::Stop))]);
    rig.op(|reply| Op::Abort {
        by: "operator/test".into(),
        reply,
    })
    .await
    .unwrap();
    rig.sim.run(&id("n2"), &Action::Stop).unwrap();
    rig.driver
        .handle_result(
            id("n2"),
            CommandOutcome {
                id: stop[0].1.id.clone(),
                result: Ok("ok".into()),
            },
        )
        .await;
    let sent = rig.run(50, is_paused).await;
    assert_eq!(sent, upgrade("n2")[2..].to_vec());
    assert!(rig.sim.up[&id("n2")], "n2 serves again");
    assert!(paused_reason(&rig.rollout()).contains("aborted by the operator"));
}

#[tokio::test(start_paused = true)]
async fn a_restarted_coordinator_resends_the_in_flight_id_and_issues_no_new_one() {
    let mut rig = Rig::new(Sim::three(), Policy::default()).await;
    rig.feed();
    rig.driver.step().await;
    let first = rig.commands();
    let stage = |n| rig.cmd(n, Action::Stage { release: target() });
    assert_eq!(
        first,
        vec![
            (id("n1"), stage(3)),
            (id("n2"), stage(1)),
            (id("n3"), stage(2))
        ]
    );
    assert_eq!(rig.issued(), 3);
    // A new driver on the same journal (the old one is gone).
    rig.driver = driver(
        (&rig.fleet, &rig.link, &rig.journal),
        &rig.policy,
        &rig.alerts,
    );
    rig.feed();
    rig.driver.step().await;
    assert_eq!(
        rig.commands(),
        first,
        "the same commands, with the same ids"
    );
    assert_eq!(rig.issued(), 3, "no new id journaled");
}

#[tokio::test(start_paused = true)]
async fn a_reconnected_agent_gets_its_in_flight_command_again_with_the_same_id() {
    let mut rig = Rig::new(Sim::three(), Policy::default()).await;
    rig.feed();
    rig.driver.step().await;
    let first = rig.commands();
    assert_eq!(first.len(), 3);
    // Same session: not sent twice.
    rig.feed();
    rig.driver.step().await;
    assert_eq!(rig.link.take(), vec![]);
    // The agent reconnects: a new session gets the command and the cadence.
    let n2 = id("n2");
    let report = rig.sim.report(&n2);
    rig.fleet
        .lock()
        .unwrap()
        .open_session(&hello(&n2), report, Instant::now())
        .unwrap();
    rig.driver.step().await;
    assert_eq!(
        rig.link.take(),
        vec![
            (n2.clone(), Outbound::Command(first[1].1.clone())),
            (
                n2,
                Outbound::Cadence {
                    every: super::FAST_CADENCE
                }
            ),
        ]
    );
    assert_eq!(rig.issued(), 3);
}
