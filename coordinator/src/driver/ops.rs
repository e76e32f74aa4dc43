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
use baton_planner::rollout::{Event, Phase, RolloutState};
use baton_planner::{UnixMs, View};
use baton_store::StoreError;
use tokio::sync::oneshot;

use super::Driver;
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
        // Free disk for the artifact, twice over (download + unpack).
        let required = match &artifact {
            ArtifactVerdict::Verified { size, .. } => size.saturating_mul(2),
            _ => 0,
        };
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
            Op::Upgrade { to, reply } => {
                let _ = reply.send(self.start(&to).await);
            }
            Op::Rollback { reply } => {
                let _ = reply.send(self.rollback().await);
            }
            Op::Pause { reason, reply } => {
                let r = self
                    .control("pause", |r| match r.phase {
                        Phase::Running | Phase::Aborting => Ok(Event::Paused {
                            reason: format!("paused by the operator: {reason}"),
                            at: UnixMs(0),
                        }),
                        _ => Err("only a running rollout can be paused"),
                    })
                    .await;
                let _ = reply.send(r);
            }
            Op::Resume { reply } => {
                let r = self
                    .control("resume", |r| match r.phase {
                        Phase::Paused { .. } => Ok(Event::Resumed { at: UnixMs(0) }),
                        _ => Err("only a paused rollout can be resumed"),
                    })
                    .await;
                let _ = reply.send(r);
            }
            Op::Abort { reply } => {
                let r = self
                    .control("abort", |r| match r.phase {
                        Phase::Running => Ok(Event::AbortRequested { at: UnixMs(0) }),
                        _ => Err(
                            "only a running rollout can be aborted; a paused one is already stopped",
                        ),
                    })
                    .await;
                let _ = reply.send(r);
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
    async fn control(
        &mut self,
        verb: &'static str,
        event: impl FnOnce(&RolloutState) -> Result<Event, &'static str>,
    ) -> Result<RolloutSnapshot, ControlError> {
        let r = self.active().ok_or(ControlError::NoRollout { verb })?;
        let mut e = event(r).map_err(|hint| ControlError::WrongPhase {
            id: r.id.clone(),
            phase: r.phase.to_string(),
            hint,
        })?;
        let (_, now) = self.view();
        match &mut e {
            Event::Paused { at, .. } | Event::Resumed { at } | Event::AbortRequested { at } => {
                *at = now
            }
            _ => {}
        }
        tracing::info!(verb, event = ?e, "operator control");
        self.record(e)
            .await
            .map_err(|e| ControlError::Journal(e.to_string()))?;
        let r = self
            .rollouts
            .last()
            .ok_or(ControlError::NoRollout { verb })?;
        Ok(self.snapshot(r))
    }

    async fn start(&mut self, to: &str) -> Result<String, ControlError> {
        if let Some(r) = self.active() {
            return Err(ControlError::WrongPhase {
                id: r.id.clone(),
                phase: r.phase.to_string(),
                hint: "finish it first: `baton resume`, or wait for it to complete",
            });
        }
        let (view, now, artifact, checks) = self.preflight(to).await;
        let id = format!("r{}-{}", self.rollouts.len() + 1, to);
        let started =
            preflight::start(&checks, id.clone(), &view, to, &artifact, now).map_err(|failed| {
                ControlError::Preflight {
                    to: to.to_owned(),
                    checks: failed,
                }
            })?;
        tracing::info!(rollout = %id, to, "preflight passed; starting rollout");
        self.record(started)
            .await
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
        match &from.phase {
            Phase::Running | Phase::Aborting => {
                return Err(ControlError::WrongPhase {
                    id: from.id.clone(),
                    phase: from.phase.to_string(),
                    hint: "pause or abort it first, then roll back",
                });
            }
            Phase::Closed { .. } => {
                return Err(ControlError::WrongPhase {
                    id: from.id.clone(),
                    phase: from.phase.to_string(),
                    hint: "it was already closed; start a new rollout instead",
                });
            }
            Phase::Paused { .. } | Phase::Completed => {}
        }
        let (view, now, artifact, checks) = self.preflight_with(&from.previous, true).await;
        let id = format!("r{}-rollback-to-{}", self.rollouts.len() + 1, from.previous);
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
            .await
            .map_err(|e| ControlError::Journal(e.to_string()))?;
        }
        tracing::info!(rollout = %id, from = %from.id, "starting rollback");
        self.record(started)
            .await
            .map_err(|e| ControlError::Journal(e.to_string()))?;
        Ok(id)
    }
}
