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
//! Level-triggered: each tick rebuilds the view and asks `decide` again.
//! Every event (and every alert the watchdog raises or clears) is proposed
//! to the [`Journal`], which applies it; the driver keeps no state of its
//! own beyond what the journal applied. A command's id is journaled before
//! the command is sent, so a restarted coordinator replays the journal and
//! resends in-flight ids, which agents answer from their own journal without
//! running anything twice.
//!
//! The driver reaches agents only through the [`AgentLink`] trait, with
//! domain [`Outbound`] values; it builds no wire types. Time comes in two
//! ways only: `tokio::time::Instant::now()` and the wall time the
//! [`FleetView`] derives from it (its epoch), so paused-time tests are
//! deterministic.
//!
//! - `ops.rs`: operator requests ([`Op`]) and their answers.
//! - `tests.rs`: in-process tests with a recording fake link and the
//!   in-memory journal, under paused time.

mod ops;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_domain::{Action, AgentCommand, CommandId, CommandOutcome, Fence, MemberId, Outbound};
use baton_planner::alerts::{self, Alert, AlertStatus, CATCH_UP_STALLED};
use baton_planner::control;
use baton_planner::decide::Step;
use baton_planner::rollout::{BackupState, BackupSummary, Event, RolloutState};
use baton_planner::watchdog::Watchdog;
use baton_planner::{Policy, UnixMs, View, decide};
use baton_store::ArtifactStore;
use baton_store::backup::BlobStore;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::ops::{ControlError, Op, PlanOutcome, RolloutSnapshot};

use crate::agent_link::AgentLink;
use crate::fleet::{FleetView, SessionId};
use crate::journal::{AlertEntry, Applied, Journal, JournalError};
use crate::metrics::Metrics;

/// The report cadence while a rollout moves (and while a preflight waits
/// for live reports).
pub use crate::fleet::FAST_CADENCE;

/// What the driver needs besides the fleet.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub policy: Policy,
    /// The release name in the artifact store (e.g. `samplekv`).
    pub release_name: String,
    pub store: Option<Arc<dyn ArtifactStore>>,
    /// The coordinator's state dir: scratch space for verifying artifacts,
    /// and where the journal is (its free space is a preflight check).
    pub scratch: PathBuf,
    /// How often the driver re-evaluates with no other trigger.
    pub tick: Duration,
    /// Where the agents put backups, for verifying them (the same store).
    pub backups: Option<Arc<dyn BlobStore>>,
    /// The cluster id: backups live under `backups/<cluster>/`.
    pub cluster: String,
}

/// The driver task's state.
pub struct Driver {
    cfg: DriverConfig,
    /// The fleet view the agent link feeds; read for every decision.
    fleet: Arc<Mutex<FleetView>>,
    /// Where commands and cadence requests go (the gRPC service, or a fake).
    link: Arc<dyn AgentLink>,
    /// Where every event and alert is proposed (the file journal, or memory).
    journal: Arc<dyn Journal>,
    /// What the journal applied; the driver reads its rollouts from here.
    applied: watch::Receiver<Applied>,
    /// The rollouts as of the last read of `applied`, oldest first.
    rollouts: Vec<Arc<RolloutState>>,
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
    changes: watch::Sender<u64>,
    /// The backup being verified (off the loop: it re-reads every part),
    /// and where its verdict comes back.
    verifying: Option<String>,
    verified_tx: mpsc::Sender<Event>,
    verified_rx: Option<mpsc::Receiver<Event>>,
    /// The cluster id, for the alerts the driver raises itself.
    cluster: String,
    /// Set while the journal cannot be written (a full disk, a file deleted
    /// under it): the driver decides and sends nothing until `retry_at`.
    journal_down: Option<JournalDown>,
    /// Set while the journal says this replica does not lead (or no
    /// majority answers): nothing new is decided until `.0`; the backoff
    /// `.1` doubles, so a replica cut off from its peers neither spins nor
    /// floods its log. Not a page: the replicas that can still agree drive.
    not_leading: Option<(Instant, Duration)>,
    /// Results that arrived while the journal could not record them, in
    /// arrival order; recorded first when it can again.
    unjournaled: Vec<(MemberId, CommandOutcome)>,
    /// When a rollout paused for the journal's space may next ask whether
    /// the space is back (each ask writes and syncs).
    space_check_at: Instant,
}

/// How often a rollout paused for the journal's space checks for it.
const SPACE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The journal refused an append for a reason of its own (not an entry
/// that does not apply): nothing is decided or sent while it lasts, and an
/// append is retried with a backoff, so the log stays bounded.
#[derive(Debug)]
struct JournalDown {
    /// The page that fired (`BatonJournalUnavailable`).
    alert: Alert,
    retry_at: Instant,
    backoff: Duration,
    attempts: u64,
}

/// The first retry after the journal fails, and the longest wait between
/// retries.
const JOURNAL_RETRY_FIRST: Duration = Duration::from_millis(200);
const JOURNAL_RETRY_MAX: Duration = Duration::from_secs(5);

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
    /// A driver that carries on from what `journal` has applied: its
    /// rollouts, and the alerts that were firing (those are not raised again
    /// while their condition holds, and are resolved when it clears).
    pub fn new(
        cfg: DriverConfig,
        fleet: Arc<Mutex<FleetView>>,
        link: Arc<dyn AgentLink>,
        journal: Arc<dyn Journal>,
        cluster: &str,
        alerts: AlertOut,
    ) -> Self {
        let mut applied = journal.subscribe();
        let (rollouts, firing) = {
            let a = applied.borrow_and_update();
            (
                a.rollouts.clone(),
                a.firing.values().cloned().collect::<Vec<_>>(),
            )
        };
        if let Some(r) = rollouts.last() {
            tracing::info!(rollout = %r.id, phase = %r.phase, "replayed rollout journal");
        }
        if !firing.is_empty() {
            tracing::info!(firing = firing.len(), "restored firing alerts");
        }
        let mut watchdog = Watchdog::new(cluster);
        let cluster = cluster.to_owned();
        watchdog.restore(firing);
        let (verified_tx, verified_rx) = mpsc::channel(4);
        Driver {
            verifying: None,
            verified_tx,
            verified_rx: Some(verified_rx),
            cfg,
            metrics: Metrics::new(fleet.clone()),
            fleet,
            link,
            journal,
            applied,
            rollouts,
            waiting_for: String::new(),
            sent: HashMap::new(),
            cadence: HashMap::new(),
            fast: false,
            watchdog,
            alerts,
            cluster,
            journal_down: None,
            not_leading: None,
            unjournaled: Vec::new(),
            space_check_at: Instant::now(),
            changes: watch::channel(1).0,
        }
    }

    /// Asks the watchdog which alerts changed, journals them, and hands
    /// them on.
    async fn watch(&mut self, view: &View, now: UnixMs) {
        let latest = self.rollouts.last().map(Arc::as_ref);
        let changed = self.watchdog.evaluate(view, latest, &self.cfg.policy, now);
        if changed.is_empty() {
            return;
        }
        for name in alerts::ALL {
            let n = self.watchdog.firing().filter(|a| a.name() == name).count();
            self.metrics.set_alerts_firing(name, n as u64);
        }
        for alert in changed {
            let entry = match alert.status {
                AlertStatus::Firing => AlertEntry::Fired {
                    alert: alert.clone(),
                },
                AlertStatus::Resolved => AlertEntry::Resolved {
                    alert: alert.clone(),
                },
            };
            if let Err(e) = self.journal.propose(entry.into()).await {
                tracing::error!(error = %e, "cannot journal the alert; a restart would not resolve it");
                self.journal_failed(&e);
            }
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
            self.metrics.set_rollout_phase(&r.id, r.phase.kind());
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
        self.rollouts
            .last()
            .map(Arc::as_ref)
            .filter(|r| !r.phase.is_terminal())
    }

    /// Moves `changes` on every change instead of a counter of its own
    /// (the operator API keeps one across drivers: one per leadership).
    pub fn with_changes(mut self, changes: watch::Sender<u64>) -> Self {
        self.changes = changes;
        self.bump();
        self
    }

    /// The change counter the operator API long-polls on.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn bump(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1).max(1));
    }

    /// Reads the rollouts back from what the journal applied.
    fn refresh(&mut self) {
        if self.applied.has_changed().unwrap_or(false) {
            self.rollouts = self.applied.borrow_and_update().rollouts.clone();
        }
    }

    /// Proposes one event to the journal and reads back what it applied.
    /// A refused event changes nothing.
    async fn record(&mut self, mut event: Event) -> Result<(), JournalError> {
        if let Event::Started { journal, .. } = &mut event
            && journal.is_none()
        {
            // Every id the rollout makes carries the journal's.
            journal.clone_from(&self.applied.borrow().journal_id);
        }
        if let Err(e) = self.journal.propose(event.into()).await {
            self.journal_failed(&e);
            return Err(e);
        }
        self.journal_recovered();
        self.refresh();
        self.bump();
        if let Some(r) = self.rollouts.last() {
            self.metrics.set_rollout_phase(&r.id, r.phase.kind());
        }
        Ok(())
    }

    /// Notes a failed proposal: one the journal could not write (not an
    /// entry that does not apply) stops the driver until a retry, and pages
    /// once (`BatonJournalUnavailable`).
    fn journal_failed(&mut self, e: &JournalError) {
        if matches!(
            e,
            JournalError::NotLeader { .. } | JournalError::Unavailable(_)
        ) {
            let backoff = self
                .not_leading
                .map_or(JOURNAL_RETRY_FIRST, |(_, b)| (b * 2).min(JOURNAL_RETRY_MAX));
            if self.not_leading.is_none() {
                tracing::warn!(error = %e, "the journal does not take this replica's proposals; deciding nothing new, retrying with backoff");
            } else {
                tracing::debug!(error = %e, retry_in = ?backoff, "still not taken");
            }
            self.not_leading = Some((Instant::now() + backoff, backoff));
            return;
        }
        if !matches!(e, JournalError::Write { .. } | JournalError::Log(_)) {
            return;
        }
        let now = Instant::now();
        match &mut self.journal_down {
            Some(down) => {
                down.attempts += 1;
                down.backoff = (down.backoff * 2).min(JOURNAL_RETRY_MAX);
                down.retry_at = now + down.backoff;
                tracing::warn!(error = %e, attempts = down.attempts, retry_in = ?down.backoff, "the journal still cannot be written; deciding and sending nothing");
            }
            None => {
                let (_, wall) = self.view();
                let rollout = self.active().map(|r| r.id.clone());
                let alert = Alert::firing(
                    alerts::JOURNAL_UNAVAILABLE,
                    &self.cluster,
                    None,
                    rollout.as_deref(),
                    wall,
                )
                .annotate(
                    "summary",
                    format!(
                        "the coordinator cannot write its journal ({e}); it decides and sends nothing until it can (no member is stopped meanwhile)"
                    ),
                )
                .annotate(
                    "runbook",
                    "free space under the coordinator's state_dir, or put back the journal file if it was moved; the coordinator retries on its own and carries on; a member the rollout had already stopped stays stopped until then",
                );
                tracing::error!(error = %e, retry_in = ?JOURNAL_RETRY_FIRST, "the journal cannot be written; deciding and sending nothing until it can");
                self.metrics
                    .set_alerts_firing(alerts::JOURNAL_UNAVAILABLE, 1);
                self.waiting_for = format!("the journal cannot be written ({e}); retrying");
                (self.alerts)(alert.clone());
                self.journal_down = Some(JournalDown {
                    alert,
                    retry_at: now + JOURNAL_RETRY_FIRST,
                    backoff: JOURNAL_RETRY_FIRST,
                    attempts: 1,
                });
                self.bump();
            }
        }
    }

    /// A journal on its reserve pauses the running rollout at a safe point;
    /// a rollout so paused resumes once the reserve is whole again.
    async fn mind_journal_space(&mut self) {
        let Some(r) = self.active() else { return };
        let paused = control::paused_for_journal_space(r);
        let low = self.journal.low_space();
        if !low && !paused {
            return; // every step, nearly always: no view built
        }
        let (_, now) = self.view();
        let pause = self
            .active()
            .and_then(|r| control::pause_for_journal_space(r, now));
        if low {
            if let Some(pause) = pause {
                tracing::warn!(
                    "the journal's disk is nearly full; pausing the rollout at a safe point"
                );
                if let Err(e) = self.record(pause).await {
                    tracing::error!(error = %e, "cannot journal the pause for the journal's space");
                }
                return;
            }
            if !paused || Instant::now() < self.space_check_at {
                return;
            }
            self.space_check_at = Instant::now() + SPACE_CHECK_EVERY;
            if !self.journal.check_space().await {
                return;
            }
        }
        tracing::info!("the journal has space again; resuming the rollout it paused");
        if let Err(e) = self.record(Event::Resumed { by: None, at: now }).await {
            tracing::error!(error = %e, "cannot journal the resume");
        }
    }

    /// A proposal was written: a journal that was down is back.
    fn journal_recovered(&mut self) {
        if self.not_leading.take().is_some() {
            tracing::info!("the journal takes this replica's proposals again");
        }
        if let Some(down) = self.journal_down.take() {
            let (_, wall) = self.view();
            tracing::info!(
                attempts = down.attempts,
                "the journal can be written again; carrying on"
            );
            self.metrics
                .set_alerts_firing(alerts::JOURNAL_UNAVAILABLE, 0);
            (self.alerts)(down.alert.resolved(wall));
        }
    }

    async fn handle_result(&mut self, member: MemberId, outcome: CommandOutcome) {
        if self
            .journal_down
            .as_ref()
            .is_some_and(|d| Instant::now() < d.retry_at)
        {
            // Recorded, in order, once the journal can be written.
            self.unjournaled.push((member, outcome));
            return;
        }
        let Some(r) = self.active() else { return };
        let Some(rec) = r.commands.get(&outcome.id) else {
            tracing::debug!(member = %member, id = %outcome.id, "result for a command not in the active rollout");
            return;
        };
        if rec.result.is_some() || rec.member != member {
            return;
        }
        let (action, issued_at) = (rec.action.clone(), rec.issued_at);
        let (_, now) = self.view();
        let kept = (member.clone(), outcome.clone());
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
        let id = kept.1.id.clone();
        match self.record(event).await {
            Ok(()) => {
                self.sent.remove(&id);
                let took = Duration::from_millis(now.0.saturating_sub(issued_at.0));
                self.metrics.observe_step(&action, took);
                if kept.1.result.is_err() {
                    self.metrics.command_failed(&action);
                }
            }
            // Kept, not asked for again: the agent has answered; the
            // answer is recorded once the journal can be written.
            Err(e) if self.journal_down.is_some() => {
                tracing::error!(member = %member, id = %id, error = %e, "cannot journal a command result; keeping it until the journal can be written");
                self.unjournaled.push(kept);
            }
            Err(e) => {
                tracing::error!(member = %member, id = %id, error = %e, "cannot journal a command result")
            }
        }
    }

    fn command(&self, id: &CommandId, action: &Action) -> Outbound {
        // A restore stops every member, the leader too: nobody is left to
        // hand over to. Every other stop keeps the agent's leader interlock.
        let restoring = self.active().is_some_and(|r| r.restore.is_some());
        Outbound::Command(AgentCommand {
            id: id.clone(),
            action: action.clone(),
            stop_timeout_ms: u32::try_from(self.cfg.policy.stop_timeout.as_millis()).ok(),
            even_if_leader: restoring && *action == Action::Stop,
            fence: self
                .applied
                .borrow()
                .journal_id
                .clone()
                .map(|journal| Fence {
                    journal,
                    term: self.journal.term(),
                }),
        })
    }

    /// Sends every in-flight command that has not reached the agent's
    /// current session (new, or the agent reconnected, or we restarted).
    fn send_inflight(&mut self) {
        let Some(r) = self.active() else { return };
        let backup = match &r.backup.state {
            BackupState::Taking {
                member, command, ..
            } => Some((command, member)),
            _ => None,
        };
        let inflight: Vec<(CommandId, MemberId, Action)> = r
            .members
            .iter()
            .filter_map(|(m, p)| p.inflight.as_ref().map(|id| (id, m)))
            .chain(backup)
            .filter_map(|(id, m)| {
                r.commands
                    .get(id)
                    .map(|c| (id.clone(), m.clone(), c.action.clone()))
            })
            .collect();
        for (id, member, action) in inflight {
            let current = self.link.session(&member);
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

    /// Keeps the agents on the wanted cadence: the latest rollout's
    /// members, every member while the fast cadence is wanted (a preflight
    /// waiting for live reports), and any member asked before, so it is
    /// brought back. An agent nobody asked keeps its own heartbeat.
    fn send_cadence(&mut self) {
        let (heartbeat, members) = {
            let fleet = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
            let mut members: std::collections::BTreeSet<MemberId> =
                self.cadence.keys().cloned().collect();
            if let Some(r) = self.rollouts.last() {
                members.extend(r.order.iter().cloned());
            }
            if self.fast {
                members.extend(
                    fleet
                        .status(Instant::now())
                        .members
                        .into_iter()
                        .map(|row| row.member),
                );
            }
            (fleet.heartbeat(), members)
        };
        for m in members {
            let Some(session) = self.link.session(&m) else {
                continue;
            };
            if self.cadence.get(&m) == Some(&(session, self.fast)) {
                continue;
            }
            let every = if self.fast { FAST_CADENCE } else { heartbeat };
            if self.link.send(&m, Outbound::Cadence { every }).is_some() {
                self.cadence.insert(m, (session, self.fast));
            }
        }
    }

    /// One level-triggered evaluation: the rollout, then the watchdog.
    /// While the journal is down, nothing until the next retry; then the
    /// results it could not record first.
    async fn step(&mut self) {
        if let Some(down) = &self.journal_down {
            if Instant::now() < down.retry_at {
                return;
            }
            // The retry: the first proposal says whether the journal is
            // back; a failure moves `retry_at` on, and the rest queue again.
            for (member, outcome) in std::mem::take(&mut self.unjournaled) {
                self.handle_result(member, outcome).await;
            }
            if self.journal_down.is_some() && !self.unjournaled.is_empty() {
                return;
            }
        }
        self.refresh();
        self.mind_journal_space().await;
        let span = self
            .active()
            .map(|r| tracing::info_span!("rollout", id = %r.id, to = %r.target.version));
        let span = span.unwrap_or_else(tracing::Span::none);
        // The watchdog sees exactly what the planner is about to see: a stall
        // the planner acts on in this step (pausing, or rolling the member
        // back, which ends its catch-up) pages in this step too.
        let (view, now) = self.view();
        let waiting_for = self.waiting_for.clone();
        tracing::Instrument::instrument(
            async {
                self.watch(&view, now).await;
                self.step_rollout(Some((view, now))).await;
            },
            span,
        )
        .await;
        if self.waiting_for != waiting_for {
            self.bump();
        }
    }

    /// One level-triggered evaluation of the active rollout, starting from
    /// `first` (the view the watchdog just saw) when given.
    async fn step_rollout(&mut self, mut first: Option<(View, UnixMs)>) {
        let Some(r) = self.active() else {
            self.fast = false;
            self.send_cadence();
            return;
        };
        if !r.phase.is_moving() {
            self.waiting_for = r.phase.to_string();
            self.fast = false;
            self.send_cadence();
            return;
        }
        // What is journaled as in flight reaches every new session first,
        // whether or not anything new can be recorded now (it carries this
        // driver's term: an agent that saw a newer one refuses it).
        self.send_inflight();
        if let Some((until, _)) = self.not_leading
            && Instant::now() < until
        {
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
                        if let Err(err) = self.record(e).await {
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
                        if let Err(err) = self.record(issued).await {
                            tracing::error!(error = %err, "cannot journal a command; not sending it");
                            return;
                        }
                    }
                    Step::VerifyBackup { id, member } => {
                        self.verify_backup(id, member, now);
                        self.waiting_for = "verifying the pre-upgrade backup".into();
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

    /// Re-reads backup `id` from the store in a task of its own (a large
    /// backup takes seconds; the loop keeps serving reports and operators),
    /// once per id; the verdict comes back as an event to journal.
    fn verify_backup(&mut self, id: String, member: MemberId, now: UnixMs) {
        if self.verifying.as_deref() == Some(id.as_str()) {
            return;
        }
        self.verifying = Some(id.clone());
        let (store, cluster, tx) = (
            self.cfg.backups.clone(),
            self.cfg.cluster.clone(),
            self.verified_tx.clone(),
        );
        let started = Instant::now();
        tokio::spawn(async move {
            let at = |started: Instant| now.plus(started.elapsed());
            let event = match store {
                None => Event::BackupFailed {
                    id,
                    reason: "the coordinator has no [store] to verify it in; configure [store] as the agents have it".into(),
                    at: at(started),
                },
                Some(store) => {
                    match baton_store::backup::verify(store.as_ref(), &cluster, &id).await {
                        Ok(m) => Event::BackupVerified {
                            summary: BackupSummary {
                                id,
                                member,
                                bytes: m.bytes,
                                sha256: m.sha256,
                                revision: m.revision,
                                parts: u32::try_from(m.parts.len()).unwrap_or(u32::MAX),
                                location: store.location(),
                                verified_at: at(started),
                            },
                            at: at(started),
                        },
                        Err(e) => Event::BackupFailed {
                            id,
                            reason: format!("re-reading it from the store failed: {e}"),
                            at: at(started),
                        },
                    }
                }
            };
            let _ = tx.send(event).await;
        });
    }

    async fn backup_verdict(&mut self, event: Event) {
        self.verifying = None;
        match &event {
            Event::BackupVerified { summary, .. } => tracing::info!(
                id = %summary.id,
                bytes = summary.bytes,
                sha256 = %summary.sha256,
                revision = summary.revision,
                "pre-upgrade backup verified"
            ),
            Event::BackupFailed { id, reason, .. } => {
                tracing::warn!(id, reason, "pre-upgrade backup failed verification")
            }
            _ => {}
        }
        if let Err(e) = self.record(event).await {
            tracing::error!(error = %e, "cannot journal the backup's verdict; it will be verified again");
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(
        mut self,
        ops: &mut mpsc::Receiver<Op>,
        results: &mut mpsc::Receiver<(MemberId, CommandOutcome)>,
        shutdown: CancellationToken,
    ) {
        let reports = self.link.reports();
        let mut verified = self.verified_rx.take().expect("run once");
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(op) = ops.recv() => self.handle_op(op).await,
                Some((member, outcome)) = results.recv() => self.handle_result(member, outcome).await,
                Some(event) = verified.recv() => self.backup_verdict(event).await,
                () = reports.notified() => {}
                _ = tick.tick() => {}
            }
            self.step().await;
        }
    }
}
