//! The rollout driver: turns the planner's steps into journaled events and
//! commands, and agents' results into events.
//!
//! ```text
//!  operator        coordinator (driver)                    agent (follower F, then leader L)
//!     │ Upgrade V        │ preflight(view) ── fail ─▶ refuse, nothing touched
//!     │─────────────────▶│ journal Started{order: F.., L}
//!     │                  │ for F: journal CommandIssued{id, Stage}  ──Command{id}──▶ stage, verify sha256
//!     │                  │◀──────────────────────────────── Result{id, ok} ── journal CommandSucceeded
//!     │                  │ … Stop, Switch, Start (same id discipline) …
//!     │                  │ gate: healthy on V ─▶ gate: lag ≤ tolerable on 2 reports (fast cadence)
//!     │                  │ for L: StepDown{to: most caught-up upgraded F} ──▶ member hands over
//!     │                  │ wait: every report names the new leader ─▶ journal HandoverConfirmed
//!     │                  │ L: Stop, Switch, Start, gates (L is a follower now)
//!     │◀─────────────────│ verify ─▶ journal Completed
//! ```
//!
//! Level-triggered: each tick rebuilds the view and asks `decide` again. An
//! event is appended to the journal before it is applied, and a command's id
//! is journaled before the command is sent, so a restarted coordinator
//! replays the journal and resends in-flight ids, which agents answer from
//! their own journal without running anything twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_domain::{Action, AgentCommand, Check, CommandId, CommandOutcome, MemberId};
use baton_planner::alerts::{AGENT_DOWN, Alert, AlertStatus, CATCH_UP_STALLED, ROLLOUT_PAUSED};
use baton_planner::control::{self, Control};
use baton_planner::decide::Step;
use baton_planner::preflight::{self, ArtifactVerdict, PlannedStep, PreflightInput};
use baton_planner::rollout::{Event, Phase, RolloutState};
use baton_planner::watchdog::Watchdog;
use baton_planner::{Policy, UnixMs, View, decide};
use baton_proto::v1::{self, CoordinatorMessage, coordinator_message};
use baton_store::{ArtifactStore, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent_link::AgentLinkService;
use crate::alert_state::AlertState;
use crate::fleet::{FleetView, SessionId};
use crate::journal::{Journal, JournalError};
use crate::metrics::{self, Metrics};

/// Fast report cadence during gates and handovers.
pub const FAST_CADENCE: Duration = Duration::from_millis(100);

/// What the driver needs besides the fleet.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub policy: Policy,
    /// The release name in the artifact store (e.g. `samplekv`).
    pub release_name: String,
    pub store: Option<Arc<dyn ArtifactStore>>,
    /// Scratch space for verifying artifacts.
    pub scratch: PathBuf,
    /// How often the driver re-evaluates with no other trigger.
    pub tick: Duration,
}

/// A dry run's answer.
#[derive(Debug, Clone)]
pub struct PlanOutcome {
    pub checks: Vec<Check>,
    pub steps: Vec<PlannedStep>,
    pub handover: Option<MemberId>,
}

/// A rollout and what it waits for.
#[derive(Debug, Clone)]
pub struct RolloutSnapshot {
    pub state: RolloutState,
    pub waiting_for: String,
}

/// Why a control request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("no rollout to {verb}; start one with `baton upgrade --to VERSION`")]
    NoRollout { verb: &'static str },
    #[error("rollout {id} is {phase}; {hint}")]
    WrongPhase {
        id: String,
        phase: String,
        hint: &'static str,
    },
    #[error("preflight refused the rollout to {to}: {} check(s) failed", checks.len())]
    Preflight { to: String, checks: Vec<Check> },
    #[error("{0}")]
    Journal(String),
}

impl From<control::Refused> for ControlError {
    fn from(r: control::Refused) -> Self {
        ControlError::WrongPhase {
            id: r.id,
            phase: phase_name(&r.phase),
            hint: r.hint,
        }
    }
}

/// Requests from the operator API to the driver task.
#[derive(Debug)]
pub enum Op {
    Plan {
        to: String,
        reply: oneshot::Sender<PlanOutcome>,
    },
    Upgrade {
        to: String,
        reply: oneshot::Sender<Result<String, ControlError>>,
    },
    /// Walks the latest rollout back to its previous release.
    Rollback {
        reply: oneshot::Sender<Result<String, ControlError>>,
    },
    Pause {
        reason: String,
        reply: oneshot::Sender<Result<RolloutSnapshot, ControlError>>,
    },
    Resume {
        reply: oneshot::Sender<Result<RolloutSnapshot, ControlError>>,
    },
    Abort {
        reply: oneshot::Sender<Result<RolloutSnapshot, ControlError>>,
    },
    Get {
        id: Option<String>,
        reply: oneshot::Sender<Option<RolloutSnapshot>>,
    },
    History {
        reply: oneshot::Sender<Vec<RolloutSnapshot>>,
    },
}

fn phase_name(p: &Phase) -> String {
    match p {
        Phase::Running => "running".into(),
        Phase::Paused { reason } => format!("paused ({reason})"),
        Phase::Aborting => "aborting".into(),
        Phase::Completed => "completed".into(),
        Phase::Closed { reason } => format!("closed ({reason})"),
    }
}

/// The driver task's state.
pub struct Driver {
    cfg: DriverConfig,
    fleet: Arc<Mutex<FleetView>>,
    link: AgentLinkService,
    journal: Box<dyn Journal>,
    rollouts: Vec<RolloutState>,
    waiting_for: String,
    /// Which session each in-flight command was last sent on.
    sent: HashMap<CommandId, SessionId>,
    /// The cadence each connected agent was last asked for.
    cadence: HashMap<MemberId, (SessionId, bool)>,
    /// Prometheus series fed from here (phase, commands, step durations).
    metrics: Metrics,
    fast: bool,
    watchdog: Watchdog,
    /// Where alert notifications go (the notifier; never blocks).
    alerts: AlertOut,
    /// Moves on every journaled event and every change of `waiting_for`;
    /// the operator API's long poll waits on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// Where the firing set is kept across restarts, if anywhere.
    alert_state: Option<AlertState>,
}

/// Takes each alert notification the watchdog emits. It must not block:
/// the coordinator's implementation queues for the sinks.
pub type AlertOut = Box<dyn Fn(Alert) + Send + Sync>;

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("rollouts", &self.rollouts.len())
            .field("waiting_for", &self.waiting_for)
            .finish_non_exhaustive()
    }
}

impl Driver {
    pub fn new(
        cfg: DriverConfig,
        fleet: Arc<Mutex<FleetView>>,
        link: AgentLinkService,
        journal: Box<dyn Journal>,
        rollouts: Vec<RolloutState>,
        cluster: &str,
        alerts: AlertOut,
    ) -> Self {
        if let Some(r) = rollouts.last() {
            tracing::info!(rollout = %r.id, phase = %phase_name(&r.phase), "replayed rollout journal");
        }
        Driver {
            cfg,
            metrics: Metrics::new(fleet.clone()),
            fleet,
            link,
            journal,
            rollouts,
            waiting_for: String::new(),
            sent: HashMap::new(),
            cadence: HashMap::new(),
            fast: false,
            watchdog: Watchdog::new(cluster),
            alerts,
            changes: tokio::sync::watch::channel(1).0,
            alert_state: None,
        }
    }

    /// Asks the watchdog which alerts changed, and hands them on.
    fn watch(&mut self, view: &View, now: UnixMs) {
        let latest = self.rollouts.last();
        let changed = self.watchdog.evaluate(view, latest, &self.cfg.policy, now);
        if changed.is_empty() {
            return;
        }
        for name in [CATCH_UP_STALLED, AGENT_DOWN, ROLLOUT_PAUSED] {
            let n = self.watchdog.firing().filter(|a| a.name() == name).count();
            self.metrics.set_alerts_firing(name, n as u64);
        }
        if let Some(state) = &self.alert_state
            && let Err(e) = state.store(self.watchdog.firing())
        {
            tracing::error!(error = %e, "cannot keep the firing alerts; a restart would not resolve them");
        }
        for alert in changed {
            if alert.status == AlertStatus::Firing
                && alert.name() == CATCH_UP_STALLED
                && let Some(m) = view.members.keys().find(|m| m.as_str() == alert.member())
            {
                self.metrics.stall(m);
            }
            tracing::warn!(
                alert = alert.name(),
                member = alert.member(),
                status = ?alert.status,
                summary = %alert.summary(),
                "alert"
            );
            (self.alerts)(alert);
        }
    }

    /// Feeds `metrics` (the ones `/metrics` serves) instead of private ones.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        if let Some(r) = self.rollouts.last() {
            self.metrics
                .set_rollout_phase(&r.id, metrics::phase_label(&r.phase));
        }
        self
    }

    fn view(&self) -> (View, UnixMs) {
        self.fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .planner_view(Instant::now())
    }

    fn active(&self) -> Option<&RolloutState> {
        self.rollouts.last().filter(|r| !r.phase.is_terminal())
    }

    fn snapshot(&self, r: &RolloutState) -> RolloutSnapshot {
        let is_active = self.active().is_some_and(|a| a.id == r.id);
        RolloutSnapshot {
            state: r.clone(),
            waiting_for: if is_active {
                self.waiting_for.clone()
            } else {
                String::new()
            },
        }
    }

    /// Keeps the firing alerts in `state`, starting from `restored` (what
    /// was firing when the coordinator last stopped): those are not raised
    /// again while their condition holds, and are resolved when it clears.
    /// (The caller gives them back to the notifier too.)
    pub fn with_alert_state(mut self, state: AlertState, restored: Vec<Alert>) -> Self {
        if !restored.is_empty() {
            tracing::info!(firing = restored.len(), "restored firing alerts");
        }
        self.watchdog.restore(restored);
        self.alert_state = Some(state);
        self
    }

    /// The change counter the operator API long-polls on.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn bump(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1).max(1));
    }

    /// Journals and applies one event to the active rollout.
    fn record(&mut self, event: Event) -> Result<(), JournalError> {
        self.journal.append(&event)?;
        self.bump();
        match &event {
            Event::Started { .. } => match RolloutState::start(&event) {
                Ok(r) => self.rollouts.push(r),
                Err(e) => tracing::error!(error = %e, "journaled a bad start event"),
            },
            _ => {
                if let Some(r) = self.rollouts.last_mut()
                    && let Err(e) = r.apply(&event)
                {
                    tracing::error!(error = %e, ?event, "journaled an event that does not apply");
                }
            }
        }
        if let Some(r) = self.rollouts.last() {
            self.metrics
                .set_rollout_phase(&r.id, metrics::phase_label(&r.phase));
        }
        Ok(())
    }

    async fn artifact(&self, version: &str) -> ArtifactVerdict {
        let Some(store) = &self.cfg.store else {
            return ArtifactVerdict::Missing {
                detail: "the coordinator has no [store] configured".into(),
            };
        };
        match baton_store::verify(
            store.as_ref(),
            &self.cfg.release_name,
            version,
            &self.cfg.scratch,
        )
        .await
        {
            Ok(m) => ArtifactVerdict::Verified {
                release: baton_domain::ReleaseRef {
                    name: m.name,
                    version: m.version,
                    format_version: m.format_version,
                    sha256: m.sha256,
                },
                size: m.size,
            },
            Err(e @ StoreError::BadChecksum { .. }) => ArtifactVerdict::BadChecksum {
                detail: e.to_string(),
            },
            Err(e) => ArtifactVerdict::Missing {
                detail: e.to_string(),
            },
        }
    }

    async fn preflight(&self, to: &str) -> (View, UnixMs, ArtifactVerdict, Vec<Check>) {
        self.preflight_with(to, false).await
    }

    async fn preflight_with(
        &self,
        to: &str,
        allow_mixed: bool,
    ) -> (View, UnixMs, ArtifactVerdict, Vec<Check>) {
        let artifact = self.artifact(to).await;
        let (view, now) = self.view();
        let required = preflight::required_disk(&artifact);
        let checks = preflight::preflight(
            &PreflightInput {
                view: &view,
                target_version: to,
                artifact: &artifact,
                required_disk: required,
                allow_mixed,
            },
            &self.cfg.policy,
        );
        (view, now, artifact, checks)
    }

    async fn handle_op(&mut self, op: Op) {
        match op {
            Op::Plan { to, reply } => {
                let (view, _, _, checks) = self.preflight(&to).await;
                let (steps, handover) = preflight::planned_steps(&view, &to, &self.cfg.policy);
                let _ = reply.send(PlanOutcome {
                    checks,
                    steps,
                    handover,
                });
            }
            Op::Upgrade { to, reply } => {
                let _ = reply.send(self.start(&to).await);
            }
            Op::Rollback { reply } => {
                let _ = reply.send(self.rollback().await);
            }
            Op::Pause { reason, reply } => {
                let _ = reply.send(self.control(Control::Pause { reason }));
            }
            Op::Resume { reply } => {
                let _ = reply.send(self.control(Control::Resume));
            }
            Op::Abort { reply } => {
                let _ = reply.send(self.control(Control::Abort));
            }
            Op::Get { id, reply } => {
                let found = match id {
                    Some(id) => self.rollouts.iter().find(|r| r.id == id),
                    None => self.rollouts.last(),
                };
                let _ = reply.send(found.map(|r| self.snapshot(r)));
            }
            Op::History { reply } => {
                let _ = reply.send(self.rollouts.iter().map(|r| self.snapshot(r)).collect());
            }
        }
    }

    /// Journals an operator control event on the active rollout.
    fn control(&mut self, request: Control) -> Result<RolloutSnapshot, ControlError> {
        let verb = request.verb();
        let r = self.active().ok_or(ControlError::NoRollout { verb })?;
        let (_, now) = self.view();
        let e = control::control(r, request, now).map_err(ControlError::from)?;
        tracing::info!(verb, event = ?e, "operator control");
        self.record(e)
            .map_err(|e| ControlError::Journal(e.to_string()))?;
        let r = self
            .rollouts
            .last()
            .ok_or(ControlError::NoRollout { verb })?;
        Ok(self.snapshot(r))
    }

    async fn start(&mut self, to: &str) -> Result<String, ControlError> {
        control::may_start(self.active())?;
        let (view, now, artifact, checks) = self.preflight(to).await;
        let id = control::rollout_id(self.rollouts.len() + 1, to);
        let started =
            preflight::start(&checks, id.clone(), &view, to, &artifact, now).map_err(|failed| {
                ControlError::Preflight {
                    to: to.to_owned(),
                    checks: failed,
                }
            })?;
        tracing::info!(rollout = %id, to, "preflight passed; starting rollout");
        self.record(started)
            .map_err(|e| ControlError::Journal(e.to_string()))?;
        Ok(id)
    }

    /// Closes the latest rollout (if it is paused) and starts its reverse.
    async fn rollback(&mut self) -> Result<String, ControlError> {
        let from = self
            .rollouts
            .last()
            .cloned()
            .ok_or(ControlError::NoRollout { verb: "roll back" })?;
        control::may_roll_back(&from)?;
        let (view, now, artifact, checks) = self.preflight_with(&from.previous, true).await;
        let id = control::rollback_id(self.rollouts.len() + 1, &from.previous);
        let started = preflight::start_rollback(&checks, id.clone(), &view, &from, &artifact, now)
            .map_err(|failed| ControlError::Preflight {
                to: from.previous.clone(),
                checks: failed,
            })?;
        if !from.phase.is_terminal() {
            self.record(Event::Closed {
                reason: format!("rolled back by {id}"),
                at: now,
            })
            .map_err(|e| ControlError::Journal(e.to_string()))?;
        }
        tracing::info!(rollout = %id, from = %from.id, "starting rollback");
        self.record(started)
            .map_err(|e| ControlError::Journal(e.to_string()))?;
        Ok(id)
    }

    fn handle_result(&mut self, member: MemberId, outcome: CommandOutcome) {
        let _span = tracing::info_span!("member", member = %member).entered();
        let Some(r) = self.active() else { return };
        let Some(rec) = r.commands.get(&outcome.id) else {
            tracing::debug!(id = %outcome.id, "result for a command not in the active rollout");
            return;
        };
        if rec.result.is_some() || rec.member != member {
            return;
        }
        let (action, issued_at) = (rec.action.clone(), rec.issued_at);
        let (_, now) = self.view();
        self.sent.remove(&outcome.id);
        let took = Duration::from_millis(now.0.saturating_sub(issued_at.0));
        self.metrics.observe_step(&action, took);
        if outcome.result.is_err() {
            self.metrics.command_failed(&action);
        }
        let event = match outcome.result {
            Ok(detail) => Event::CommandSucceeded {
                id: outcome.id,
                detail,
                at: now,
            },
            Err(detail) => Event::CommandFailed {
                id: outcome.id,
                detail,
                at: now,
            },
        };
        if let Err(e) = self.record(event) {
            tracing::error!(error = %e, "cannot journal a command result; it will be asked for again");
        }
    }

    fn command(&self, id: &CommandId, action: &Action) -> CoordinatorMessage {
        let stop_timeout_ms = u32::try_from(self.cfg.policy.stop_timeout.as_millis()).ok();
        CoordinatorMessage {
            body: Some(coordinator_message::Body::Command(
                AgentCommand {
                    id: id.clone(),
                    action: action.clone(),
                    stop_timeout_ms,
                }
                .into(),
            )),
        }
    }

    /// Sends every in-flight command that has not reached the agent's
    /// current session (new, or the agent reconnected, or we restarted).
    fn send_inflight(&mut self) {
        let Some(r) = self.active() else { return };
        let inflight: Vec<(CommandId, MemberId, Action)> = r
            .members
            .iter()
            .filter_map(|(m, p)| p.inflight.as_ref().map(|id| (id, m)))
            .filter_map(|(id, m)| {
                r.commands
                    .get(id)
                    .map(|c| (id.clone(), m.clone(), c.action.clone()))
            })
            .collect();
        for (id, member, action) in inflight {
            let current = self
                .fleet
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .session(&member);
            if current.is_some() && self.sent.get(&id) == current.as_ref() {
                continue;
            }
            let msg = self.command(&id, &action);
            if let Some(session) = self.link.send(&member, msg) {
                tracing::info!(member = %member, id = %id, action = %action, "sent command");
                self.metrics.command_sent(&action);
                self.sent.insert(id, session);
            }
        }
    }

    /// Keeps every connected agent on the wanted cadence.
    fn send_cadence(&mut self) {
        let heartbeat = self
            .fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heartbeat();
        let members: Vec<MemberId> = self
            .rollouts
            .last()
            .map(|r| r.order.clone())
            .unwrap_or_default();
        for m in members {
            let session = self
                .fleet
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .session(&m);
            let Some(session) = session else { continue };
            if self.cadence.get(&m) == Some(&(session, self.fast)) {
                continue;
            }
            let every = if self.fast { FAST_CADENCE } else { heartbeat };
            let msg = CoordinatorMessage {
                body: Some(coordinator_message::Body::SetCadence(v1::SetCadence {
                    report_interval_ms: u32::try_from(every.as_millis()).unwrap_or(u32::MAX),
                })),
            };
            if self.link.send(&m, msg).is_some() {
                self.cadence.insert(m, (session, self.fast));
            }
        }
    }

    /// One level-triggered evaluation: the rollout, then the watchdog.
    fn step(&mut self) {
        let span = self
            .active()
            .map(|r| tracing::info_span!("rollout", id = %r.id, to = %r.target.version));
        let _entered = span.as_ref().map(tracing::Span::enter);
        // The watchdog sees exactly what the planner is about to see: a stall
        // the planner acts on in this step (pausing, or rolling the member
        // back, which ends its catch-up) pages in this step too.
        let (view, now) = self.view();
        self.watch(&view, now);
        let waiting_for = self.waiting_for.clone();
        self.step_rollout(Some((view, now)));
        if self.waiting_for != waiting_for {
            self.bump();
        }
    }

    /// One level-triggered evaluation of the active rollout, starting from
    /// `first` (the view the watchdog just saw) when given.
    fn step_rollout(&mut self, mut first: Option<(View, UnixMs)>) {
        let Some(r) = self.active() else {
            self.fast = false;
            self.send_cadence();
            return;
        };
        if !matches!(r.phase, Phase::Running | Phase::Aborting) {
            self.waiting_for = phase_name(&r.phase);
            self.fast = false;
            self.send_cadence();
            return;
        }
        // Decide, record, repeat, until the planner only waits or issues
        // (a recorded event may unlock the next step at once).
        for _ in 0..16 {
            let Some(r) = self.active() else { break };
            let (view, now) = first.take().unwrap_or_else(|| self.view());
            let steps = decide(&view, r, &self.cfg.policy, now);
            let mut progressed = false;
            for step in steps {
                match step {
                    Step::Record(e) => {
                        if let Event::Paused { reason, .. } = &e {
                            tracing::warn!(reason, "rollout paused");
                        }
                        if let Err(err) = self.record(e) {
                            tracing::error!(error = %err, "cannot journal; changing nothing");
                            return;
                        }
                        progressed = true;
                    }
                    Step::Issue { member, action } => {
                        let Some(r) = self.active() else { break };
                        let id = r.next_command_id();
                        let issued = Event::CommandIssued {
                            id,
                            member,
                            action,
                            at: now,
                        };
                        if let Err(err) = self.record(issued) {
                            tracing::error!(error = %err, "cannot journal a command; not sending it");
                            return;
                        }
                    }
                    Step::Cadence { fast } => self.fast = fast,
                    Step::Wait { reason } => self.waiting_for = reason,
                }
            }
            if !progressed {
                break;
            }
        }
        if self.active().is_none() {
            self.waiting_for = "completed".into();
            self.fast = false;
        }
        self.send_inflight();
        self.send_cadence();
    }

    /// Runs until `shutdown`.
    pub async fn run(
        mut self,
        mut ops: mpsc::Receiver<Op>,
        mut results: mpsc::Receiver<(MemberId, CommandOutcome)>,
        shutdown: CancellationToken,
    ) {
        let reports = self.link.reports.clone();
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(op) = ops.recv() => self.handle_op(op).await,
                Some((member, outcome)) = results.recv() => self.handle_result(member, outcome),
                () = reports.notified() => {}
                _ = tick.tick() => {}
            }
            self.step();
        }
    }
}
