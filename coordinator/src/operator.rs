//! The `Operator` gRPC service: what the `baton` CLI calls. Every call is
//! first authorized ([`crate::access`]: the caller's role must cover it).
//! Status reads the FleetView; everything about rollouts is a request to
//! the driver task.
//! Converts domain to wire on the way out (with `baton_proto::convert`) and
//! nothing else; errors become `Status` in [`crate::error`].

use std::sync::{Arc, Mutex};

use baton_proto::v1::{
    self, ControlRequest, HistoryRequest, HistoryResponse, PlanRequest, PlanResponse, RolloutReply,
    RolloutRequest, StatusRequest, StatusResponse, UpgradeRequest, UpgradeResponse,
    operator_server::Operator,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::access::{Access, Role};
use crate::backups::{self, BackupStore};
use crate::driver::{Op, RolloutSnapshot};
use crate::error::ControlError;
use crate::fleet::FleetView;

#[derive(Debug, Clone)]
pub struct OperatorService {
    pub fleet: Arc<Mutex<FleetView>>,
    pub ops: mpsc::Sender<Op>,
    /// The driver's change counter (see `RolloutReply.version`).
    pub changes: tokio::sync::watch::Receiver<u64>,
    /// Where backups are kept; None without a `[store]`.
    pub backups: Option<BackupStore>,
    /// Who may call what ([`crate::access`]).
    pub access: Access,
}

/// The longest a `Rollout` long poll waits.
pub const MAX_ROLLOUT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl OperatorService {
    async fn ask<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(op(tx))
            .await
            .map_err(|_| Status::unavailable("the rollout driver is not running"))?;
        rx.await
            .map_err(|_| Status::unavailable("the rollout driver stopped"))
    }

    fn backup_store(&self) -> Result<&BackupStore, Status> {
        self.backups.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "the coordinator has no [store] configured, so it keeps no backups; add a [store] section to its config",
            )
        })
    }

    /// Every backup of the cluster with its pin, as of now. The history is
    /// read before the store is listed: a backup a rollout takes in between
    /// names a rollout the history lacks, and is pinned for that.
    async fn stored_backups(
        &self,
    ) -> Result<(&BackupStore, Vec<baton_domain::StoredBackup>), Status> {
        let store = self.backup_store()?;
        let history = self.ask(|reply| Op::History { reply }).await?;
        let rollouts: Vec<_> = history.iter().map(|s| &s.state).collect();
        let listings = baton_store::backup::list(store.store.as_ref(), &store.cluster)
            .await
            .map_err(|e| Status::unavailable(format!("listing backups: {e}")))?;
        let now = baton_domain::UnixMs(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        );
        Ok((
            store,
            backups::stored(listings, &rollouts, now, store.keep_for),
        ))
    }
}

fn reply(s: Option<RolloutSnapshot>) -> RolloutReply {
    match s {
        None => RolloutReply {
            found: false,
            waiting_for: String::new(),
            version: 0,
            rollout: None,
        },
        Some(RolloutSnapshot { state, waiting_for }) => RolloutReply {
            found: true,
            waiting_for,
            version: 0,
            rollout: Some(v1::Rollout::from(state.view())),
        },
    }
}

fn version(v: &str) -> Result<String, Status> {
    baton_store::check_name(v)
        .map(|()| v.to_owned())
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let _actor = self.access.authorize(&request, Role::Viewer, "status")?;
        let status = self
            .fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .status(Instant::now());
        Ok(Response::new(status.into()))
    }

    async fn plan(&self, request: Request<PlanRequest>) -> Result<Response<PlanResponse>, Status> {
        let _actor = self.access.authorize(&request, Role::Viewer, "plan")?;
        let PlanRequest { to_version } = request.into_inner();
        let to = version(&to_version)?;
        let plan = self.ask(|reply| Op::Plan { to, reply }).await?;
        Ok(Response::new(PlanResponse {
            ok: plan.checks.iter().all(|c| c.ok),
            checks: plan.checks.into_iter().map(v1::Check::from).collect(),
            steps: plan
                .steps
                .into_iter()
                .map(|s| v1::PlannedStep {
                    member_id: s.member.map(String::from).unwrap_or_default(),
                    action: s.action,
                    reason: s.reason,
                })
                .collect(),
            handover_target: plan.handover.map(String::from).unwrap_or_default(),
        }))
    }

    async fn upgrade(
        &self,
        request: Request<UpgradeRequest>,
    ) -> Result<Response<UpgradeResponse>, Status> {
        let by = self
            .access
            .authorize(&request, Role::Operator, "upgrade")?
            .name;
        let UpgradeRequest { to_version } = request.into_inner();
        let to = version(&to_version)?;
        let started = self.ask(|reply| Op::Upgrade { to, by, reply }).await?;
        upgrade_response(started)
    }

    async fn rollback(
        &self,
        request: Request<v1::RollbackRequest>,
    ) -> Result<Response<UpgradeResponse>, Status> {
        let by = self
            .access
            .authorize(&request, Role::Operator, "rollback")?
            .name;
        let v1::RollbackRequest {} = request.into_inner();
        let started = self.ask(|reply| Op::Rollback { by, reply }).await?;
        upgrade_response(started)
    }

    async fn pause(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<RolloutReply>, Status> {
        let by = self
            .access
            .authorize(&request, Role::Operator, "pause")?
            .name;
        let ControlRequest { reason, retry: _ } = request.into_inner();
        let r = self.ask(|reply| Op::Pause { reason, by, reply }).await?;
        Ok(Response::new(reply(Some(r.map_err(Status::from)?))))
    }

    async fn resume(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<RolloutReply>, Status> {
        let by = self
            .access
            .authorize(&request, Role::Operator, "resume")?
            .name;
        let ControlRequest { reason: _, retry } = request.into_inner();
        let r = self.ask(|reply| Op::Resume { retry, by, reply }).await?;
        Ok(Response::new(reply(Some(r.map_err(Status::from)?))))
    }

    async fn abort(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<RolloutReply>, Status> {
        let by = self
            .access
            .authorize(&request, Role::Operator, "abort")?
            .name;
        let ControlRequest {
            reason: _,
            retry: _,
        } = request.into_inner();
        let r = self.ask(|reply| Op::Abort { by, reply }).await?;
        Ok(Response::new(reply(Some(r.map_err(Status::from)?))))
    }

    async fn rollout(
        &self,
        request: Request<RolloutRequest>,
    ) -> Result<Response<RolloutReply>, Status> {
        let _actor = self.access.authorize(&request, Role::Viewer, "rollout")?;
        let RolloutRequest {
            rollout_id,
            after_version,
            wait_ms,
        } = request.into_inner();
        let id = (!rollout_id.is_empty()).then_some(rollout_id);
        let mut changes = self.changes.clone();
        if after_version != 0 && *changes.borrow_and_update() == after_version {
            let wait = std::time::Duration::from_millis(u64::from(wait_ms)).min(MAX_ROLLOUT_WAIT);
            // A timeout or a stopped driver both just answer with what is.
            let _ = tokio::time::timeout(wait, changes.changed()).await;
        }
        // Read the counter before the state: a change in between shows as
        // a newer state under the older number, and the next poll returns
        // at once.
        let version = *changes.borrow();
        let r = self.ask(|reply| Op::Get { id, reply }).await?;
        let mut out = reply(r);
        out.version = version;
        Ok(Response::new(out))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let _actor = self.access.authorize(&request, Role::Viewer, "history")?;
        let all = self.ask(|reply| Op::History { reply }).await?;
        let rollouts = all.into_iter().map(|s| reply(Some(s))).collect();
        Ok(Response::new(HistoryResponse { rollouts }))
    }

    async fn backups(
        &self,
        request: Request<v1::BackupsRequest>,
    ) -> Result<Response<v1::BackupsResponse>, Status> {
        let _actor = self.access.authorize(&request, Role::Viewer, "backups")?;
        let v1::BackupsRequest {} = request.into_inner();
        let (store, backups) = self.stored_backups().await?;
        Ok(Response::new(v1::BackupsResponse {
            location: store.store.location(),
            keep_days: (store.keep_for.as_secs() / 86_400) as u32,
            backups: backups.into_iter().map(Into::into).collect(),
        }))
    }

    async fn verify_backup(
        &self,
        request: Request<v1::VerifyBackupRequest>,
    ) -> Result<Response<v1::VerifyBackupResponse>, Status> {
        let _actor = self
            .access
            .authorize(&request, Role::Operator, "verify backup")?;
        let v1::VerifyBackupRequest { id } = request.into_inner();
        baton_store::check_name(&id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (store, all) = self.stored_backups().await?;
        let location = store.store.location();
        let Some(found) = all.into_iter().find(|b| b.id == id) else {
            return Err(Status::not_found(format!(
                "no backup {id} of cluster {} in store {location}; `baton backups list` shows them",
                store.cluster
            )));
        };
        if found.complete.is_none() {
            return Err(Status::failed_precondition(format!(
                "backup {id} in store {location} is incomplete (no COMPLETE sentinel that matches its manifest): its upload never finished, and it cannot be restored; prune it with `baton backups prune`"
            )));
        }
        baton_store::backup::verify(store.store.as_ref(), &store.cluster, &id)
            .await
            .map_err(|e| Status::data_loss(format!("backup {id} does not verify: {e}")))?;
        Ok(Response::new(v1::VerifyBackupResponse {
            location,
            backup: Some(found.into()),
        }))
    }

    async fn restore(
        &self,
        request: Request<v1::RestoreRequest>,
    ) -> Result<Response<UpgradeResponse>, Status> {
        let by = self
            .access
            .authorize(&request, Role::Admin, "restore")?
            .name;
        let v1::RestoreRequest {
            backup_id,
            confirm_cluster_id,
        } = request.into_inner();
        baton_store::check_name(&backup_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let store = self.backup_store()?;
        if confirm_cluster_id != store.cluster {
            return Err(Status::invalid_argument(format!(
                "a restore replaces every member's data: confirm it with the cluster id ({}), e.g. `baton restore --backup {backup_id} --confirm {}`; nothing was touched",
                store.cluster, store.cluster
            )));
        }
        let (store, all) = self.stored_backups().await?;
        let location = store.store.location();
        match all.iter().find(|b| b.id == backup_id) {
            None => {
                return Err(Status::not_found(format!(
                    "no backup {backup_id} of cluster {} in store {location}; `baton backups list` shows them; nothing was touched",
                    store.cluster
                )));
            }
            Some(b) if b.complete.is_none() => {
                return Err(Status::failed_precondition(format!(
                    "backup {backup_id} in store {location} is incomplete (no COMPLETE sentinel that matches its manifest) and cannot be restored; nothing was touched"
                )));
            }
            Some(_) => {}
        }
        let manifest = baton_store::backup::verify(store.store.as_ref(), &store.cluster, &backup_id)
            .await
            .map_err(|e| {
                Status::data_loss(format!(
                    "backup {backup_id} does not verify, so it is not restored (nothing was touched): {e}"
                ))
            })?;
        tracing::warn!(backup = %backup_id, store = %location, revision = manifest.revision, release = %manifest.release, "restore confirmed by the operator");
        let started = self
            .ask(|reply| Op::Restore {
                backup: backup_id,
                revision: manifest.revision,
                release: manifest.release,
                by,
                reply,
            })
            .await?;
        upgrade_response(started)
    }

    async fn prune_backups(
        &self,
        request: Request<v1::PruneBackupsRequest>,
    ) -> Result<Response<v1::PruneBackupsResponse>, Status> {
        let _actor = self
            .access
            .authorize(&request, Role::Admin, "prune backups")?;
        let v1::PruneBackupsRequest { keep, dry_run } = request.into_inner();
        let (store, all) = self.stored_backups().await?;
        let plan = backups::prune_plan(all, keep as usize);
        let location = store.store.location();
        if !dry_run {
            for (done, b) in plan.delete.iter().enumerate() {
                baton_store::backup::delete(store.store.as_ref(), &store.cluster, &b.id)
                    .await
                    .map_err(|e| {
                        let gone: Vec<&str> =
                            plan.delete[..done].iter().map(|b| b.id.as_str()).collect();
                        Status::unavailable(format!(
                            "pruning backup {} failed after deleting [{}]: {e}; run the prune again",
                            b.id,
                            gone.join(", ")
                        ))
                    })?;
                tracing::info!(backup = %b.id, store = %location, "pruned backup");
            }
        }
        Ok(Response::new(v1::PruneBackupsResponse {
            location,
            dry_run,
            deleted: plan.delete.into_iter().map(Into::into).collect(),
            kept: plan.keep.into_iter().map(Into::into).collect(),
        }))
    }
}

fn upgrade_response(
    started: Result<String, ControlError>,
) -> Result<Response<UpgradeResponse>, Status> {
    Ok(Response::new(match started {
        Ok(id) => UpgradeResponse {
            started: true,
            rollout_id: id,
            checks: Vec::new(),
            detail: String::new(),
        },
        Err(ControlError::Preflight { to: _, checks }) => UpgradeResponse {
            started: false,
            rollout_id: String::new(),
            detail: format!(
                "preflight refused: {} check(s) failed; nothing was touched",
                checks.len()
            ),
            checks: checks.into_iter().map(v1::Check::from).collect(),
        },
        Err(e) => return Err(e.into()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetView;
    use baton_proto::v1::operator_server::Operator;

    /// An operator service whose driver answers every `Get` with "none".
    fn service() -> (OperatorService, tokio::sync::watch::Sender<u64>) {
        let (changes_tx, changes) = tokio::sync::watch::channel(1u64);
        let (ops, mut rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                if let Op::Get { reply, .. } = op {
                    let _ = reply.send(None);
                }
            }
        });
        let fleet = Arc::new(Mutex::new(FleetView::new(
            "c".into(),
            Vec::new(),
            std::time::Duration::from_secs(1),
        )));
        (
            OperatorService {
                fleet,
                ops,
                changes,
                backups: None,
                access: crate::access::Access::new("c".into(), false, Default::default()),
            },
            changes_tx,
        )
    }

    fn ask(after: u64, wait_ms: u32) -> Request<RolloutRequest> {
        Request::new(RolloutRequest {
            rollout_id: String::new(),
            after_version: after,
            wait_ms,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_returns_on_the_next_change_not_at_its_deadline() {
        let (svc, changes) = service();
        let svc = Arc::new(svc);
        let t0 = tokio::time::Instant::now();
        let poll = {
            let svc = svc.clone();
            tokio::spawn(async move { svc.rollout(ask(1, 5_000)).await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!poll.is_finished(), "nothing changed: it waits");
        changes.send(2).unwrap();
        let reply = poll.await.unwrap().unwrap().into_inner();
        assert_eq!(reply.version, 2);
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_without_change_ends_at_its_bounded_deadline() {
        let (svc, _changes) = service();
        let t0 = tokio::time::Instant::now();
        let reply = svc.rollout(ask(1, 60_000)).await.unwrap().into_inner();
        assert_eq!(reply.version, 1);
        assert!(!reply.found);
        assert_eq!(t0.elapsed(), MAX_ROLLOUT_WAIT, "capped at 10 s");
        // A stale version (or none) answers at once.
        let t1 = tokio::time::Instant::now();
        assert_eq!(
            svc.rollout(ask(7, 5_000))
                .await
                .unwrap()
                .into_inner()
                .version,
            1
        );
        assert_eq!(
            svc.rollout(ask(0, 5_000))
                .await
                .unwrap()
                .into_inner()
                .version,
            1
        );
        assert_eq!(t1.elapsed(), std::time::Duration::ZERO);
    }
}
