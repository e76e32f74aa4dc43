//! Operator requests to the driver: the [`Op`] messages the operator API
//! sends, their answers ([`PlanOutcome`], [`RolloutSnapshot`],
//! [`ControlError`]), and how the driver handles each (dry run, start,
//! rollback, pause, resume, abort, lookups).
//!
//! This module owns the request/answer shapes and the preflight it runs for
//! a plan or a start; every change it makes goes through the journal like
//! any other event.

use baton_domain::{Check, MemberId};
use baton_planner::preflight::{self, ArtifactVerdict, PlannedStep, PreflightInput};
use baton_planner::rollout::{Event, RolloutState};
use baton_planner::{UnixMs, View};
use baton_store::StoreError;
use tokio::sync::oneshot;

use baton_planner::control::{self, Control};

use super::Driver;

/// A journal error as the operator's answer: a lost leadership (or quorum)
/// is UNAVAILABLE, naming the leader when known, so the CLI asks again
/// where it can be recorded (nothing was); anything else is internal.
fn journal_refusal(e: crate::journal::JournalError) -> ControlError {
    match e {
        crate::journal::JournalError::NotLeader { ref leader } => ControlError::NotLeader {
            leader: leader.clone(),
            detail: e.to_string(),
        },
        crate::journal::JournalError::Unavailable(_) => ControlError::NotLeader {
            leader: None,
            detail: e.to_string(),
        },
        other => ControlError::Journal(other.to_string()),
    }
}
pub use crate::error::ControlError;

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

/// Requests from the operator API to the driver task.
#[derive(Debug)]
pub enum Op {
    Plan {
        to: String,
        reply: oneshot::Sender<PlanOutcome>,
    },
    Upgrade {
        to: String,
        /// Who asked ([`crate::access::Actor`]'s name), for the journal.
        by: String,
        reply: oneshot::Sender<Result<String, ControlError>>,
    },
    /// Walks the latest rollout back to its previous release.
    Rollback {
        by: String,
        reply: oneshot::Sender<Result<String, ControlError>>,
    },
    Pause {
        reason: String,
        by: String,
        reply: oneshot::Sender<Result<RolloutSnapshot, ControlError>>,
    },
    Resume {
        /// Try again a release that failed on a member (and was put back).
        retry: bool,
        by: String,
        reply: oneshot::Sender<Result<RolloutSnapshot, ControlError>>,
    },
    Abort {
        by: String,
        reply: oneshot::Sender<Result<RolloutSnapshot, ControlError>>,
    },
    Get {
        id: Option<String>,
        reply: oneshot::Sender<Option<RolloutSnapshot>>,
    },
    History {
        reply: oneshot::Sender<Vec<RolloutSnapshot>>,
    },
    /// Starts a restore of a backup the operator service has just verified
    /// in the store: `revision` and `release` are its manifest's.
    Restore {
        backup: String,
        revision: u64,
        release: String,
        by: String,
        reply: oneshot::Sender<Result<String, ControlError>>,
    },
}

impl Driver {
    pub(super) fn snapshot(&self, r: &RolloutState) -> RolloutSnapshot {
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
            Err(e @ StoreError::Missing { .. }) => ArtifactVerdict::Missing {
                detail: e.to_string(),
            },
            Err(e) => ArtifactVerdict::Unverifiable {
                detail: e.to_string(),
            },
        }
    }

    async fn preflight(&mut self, to: &str) -> (View, UnixMs, ArtifactVerdict, Vec<Check>) {
        self.preflight_with(to, false).await
    }

    /// Asks every agent for the fast cadence and waits, boundedly, until
    /// every connected member is live: preflight then judges reports read
    /// within a cadence interval of each other (lags compared across
    /// heartbeat-old reports count the writes in between), and a member
    /// that answers but does not progress is seen as such.
    async fn settle(&mut self) {
        self.fast = true;
        self.send_cadence();
        let heartbeat = self
            .fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heartbeat();
        let bound = (heartbeat * 2).max(super::FAST_CADENCE * 10);
        let deadline = tokio::time::Instant::now() + bound;
        let reports = self.link.reports();
        loop {
            let all_live = {
                let fleet = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
                let now = tokio::time::Instant::now();
                fleet
                    .status(now)
                    .members
                    .iter()
                    .filter(|row| row.connected)
                    .all(|row| fleet.is_live(&row.member, now))
            };
            let now = tokio::time::Instant::now();
            if all_live || now >= deadline {
                return;
            }
            // Reports wake this early; the short sleep bounds each wait.
            tokio::select! {
                () = reports.notified() => {}
                () = tokio::time::sleep_until(deadline.min(now + super::FAST_CADENCE)) => {}
            }
        }
    }

    async fn preflight_with(
        &mut self,
        to: &str,
        allow_mixed: bool,
    ) -> (View, UnixMs, ArtifactVerdict, Vec<Check>) {
        let artifact = self.artifact(to).await;
        self.settle().await;
        let (view, now) = self.view();
        let required = preflight::required_disk(&artifact);
        let checks = preflight::preflight(
            &PreflightInput {
                view: &view,
                target_version: to,
                artifact: &artifact,
                required_disk: required,
                allow_mixed,
                coordinator_state_free: Some(
                    baton_store::records::free_bytes(&self.cfg.scratch).unwrap_or(0),
                ),
            },
            &self.cfg.policy,
        );
        (view, now, artifact, checks)
    }

    pub(super) async fn handle_op(&mut self, op: Op) {
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
            Op::Upgrade { to, by, reply } => {
                let _ = reply.send(self.start(&to, &by).await);
            }
            Op::Rollback { by, reply } => {
                let _ = reply.send(self.rollback(&by).await);
            }
            Op::Pause { reason, by, reply } => {
                let _ = reply.send(self.control(Control::Pause { reason }, &by).await);
            }
            Op::Resume { retry, by, reply } => {
                let _ = reply.send(self.control(Control::Resume { retry }, &by).await);
            }
            Op::Abort { by, reply } => {
                let _ = reply.send(self.control(Control::Abort, &by).await);
            }
            Op::Get { id, reply } => {
                let found = match id {
                    Some(id) => self.rollouts.iter().find(|r| r.id == id),
                    None => self.rollouts.last(),
                };
                let _ = reply.send(found.map(|r| self.snapshot(r)));
            }
            Op::Restore {
                backup,
                revision,
                release,
                by,
                reply,
            } => {
                let _ = reply.send(self.restore(&backup, revision, &release, &by).await);
            }
            Op::History { reply } => {
                let _ = reply.send(self.rollouts.iter().map(|r| self.snapshot(r)).collect());
            }
        }
    }

    /// Journals an operator control event on the active rollout, with who
    /// asked for it (`by`).
    async fn control(
        &mut self,
        request: Control,
        by: &str,
    ) -> Result<RolloutSnapshot, ControlError> {
        let verb = request.verb();
        let r = self.active().ok_or(ControlError::NoRollout { verb })?;
        let (_, now) = self.view();
        let e = control::control(r, request, now)
            .map_err(ControlError::from)?
            .asked_by(by);
        tracing::info!(verb, by, event = ?e, "operator control");
        self.record(e).await.map_err(journal_refusal)?;
        // Act on it now, so the answer's phase and what the rollout waits
        // for agree (a resumed rollout says what it does next; a paused one
        // says why it is paused).
        self.step_rollout(None).await;
        let r = self
            .rollouts
            .last()
            .ok_or(ControlError::NoRollout { verb })?;
        Ok(self.snapshot(r))
    }

    async fn start(&mut self, to: &str, by: &str) -> Result<String, ControlError> {
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
        tracing::info!(rollout = %id, to, by, "preflight passed; starting rollout");
        self.record(started.asked_by(by))
            .await
            .map_err(journal_refusal)?;
        Ok(id)
    }

    /// Starts restore rollout of `backup` onto `release`: journals `Started`
    /// then `RestorePlanned`. Refused while another rollout is not finished,
    /// when the release is not in the store, or when a member's agent is not
    /// connected (its member could be neither stopped nor restored).
    async fn restore(
        &mut self,
        backup: &str,
        revision: u64,
        release: &str,
        by: &str,
    ) -> Result<String, ControlError> {
        // A paused rollout (every member serving) is closed by the restore,
        // as a rollback closes it; a moving one must finish first.
        let paused = self
            .active()
            .filter(|r| matches!(r.phase, baton_planner::rollout::Phase::Paused { .. }))
            .map(|r| r.id.clone());
        if paused.is_none() {
            control::may_start(self.active())?;
        }
        let target = match self.artifact(release).await {
            ArtifactVerdict::Verified { release, .. } => release,
            ArtifactVerdict::Missing { detail }
            | ArtifactVerdict::Unverifiable { detail }
            | ArtifactVerdict::BadChecksum { detail } => {
                return Err(ControlError::Restore(format!(
                    "backup {backup} was taken on release {release}, which cannot be restored onto: {detail}"
                )));
            }
        };
        let (view, now) = self.view();
        let absent: Vec<String> = view
            .members
            .iter()
            .filter(|(_, v)| !v.connected || !v.fresh)
            .map(|(m, _)| m.to_string())
            .collect();
        if !absent.is_empty() {
            return Err(ControlError::Restore(format!(
                "the agents of {} are not connected with fresh reports, so their members could not be stopped and restored; start them, then run the restore again (nothing was touched)",
                absent.join(", ")
            )));
        }
        let leader = view
            .leader
            .clone()
            .or_else(|| view.members.keys().next().cloned())
            .ok_or_else(|| ControlError::Restore("the cluster has no members".into()))?;
        let previous = view
            .members
            .get(&leader)
            .and_then(|v| v.release())
            .unwrap_or_default()
            .to_owned();
        let id = control::rollout_id(self.rollouts.len() + 1, &format!("restore-{release}"));
        let started = Event::Started {
            by: Some(by.to_owned()),
            id: id.clone(),
            target,
            previous,
            order: preflight::order(&view, &leader),
            leader,
            at: now,
            journal: None,
        };
        if let Some(closed) = paused {
            tracing::info!(rollout = %closed, by = %id, "closing the paused rollout for a restore");
            self.record(Event::Closed {
                by: Some(by.to_owned()),
                reason: format!("closed by restore {id}"),
                at: now,
            })
            .await
            .map_err(journal_refusal)?;
        }
        tracing::warn!(rollout = %id, backup, revision, release, "starting a restore: every member's data is replaced");
        for e in [
            started,
            Event::RestorePlanned {
                backup: backup.to_owned(),
                revision,
                at: now,
            },
        ] {
            self.record(e).await.map_err(journal_refusal)?;
        }
        Ok(id)
    }

    /// Closes the latest rollout (if it is paused) and starts its reverse.
    async fn rollback(&mut self, by: &str) -> Result<String, ControlError> {
        let from = self
            .rollouts
            .last()
            .cloned()
            .ok_or(ControlError::NoRollout { verb: "roll back" })?;
        control::may_roll_back(&from)?;
        // Nothing to walk back (the release failed on the only member it
        // reached, which was put back): close the rollout, so a new one can
        // start.
        let (view, now) = self.view();
        let on_target = from
            .order
            .iter()
            .filter(|m| {
                view.members.get(*m).and_then(|v| v.release()) == Some(from.target.version.as_str())
            })
            .count();
        if on_target == 0 && !from.phase.is_terminal() {
            let reason = format!(
                "rolled back: no member runs {} (every member is on {}); nothing to walk back",
                from.target.version, from.previous
            );
            tracing::info!(rollout = %from.id, reason, "closing rollout");
            self.record(Event::Closed {
                by: Some(by.to_owned()),
                reason,
                at: now,
            })
            .await
            .map_err(journal_refusal)?;
            return Ok(from.id.clone());
        }
        let (view, now, artifact, checks) = self.preflight_with(&from.previous, true).await;
        let id = control::rollback_id(self.rollouts.len() + 1, &from.previous);
        let started = preflight::start_rollback(&checks, id.clone(), &view, &from, &artifact, now)
            .map_err(|failed| ControlError::Preflight {
                to: from.previous.clone(),
                checks: failed,
            })?;
        if !from.phase.is_terminal() {
            self.record(Event::Closed {
                by: Some(by.to_owned()),
                reason: format!("rolled back by {id}"),
                at: now,
            })
            .await
            .map_err(journal_refusal)?;
        }
        tracing::info!(rollout = %id, from = %from.id, by, "starting rollback");
        self.record(started.asked_by(by))
            .await
            .map_err(journal_refusal)?;
        Ok(id)
    }
}

impl From<control::Refused> for ControlError {
    fn from(r: control::Refused) -> Self {
        ControlError::WrongPhase {
            id: r.id,
            phase: r.phase.to_string(),
            hint: r.hint,
        }
    }
}
