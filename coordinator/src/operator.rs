//! The `Operator` gRPC service: what the `baton` CLI calls. Status reads the
//! FleetView; everything about rollouts is a request to the driver task.
//! Converts domain to wire on the way out and nothing else.

use std::sync::{Arc, Mutex};

use baton_proto::v1::{
    self, ControlRequest, HistoryRequest, HistoryResponse, PlanRequest, PlanResponse, RolloutReply,
    RolloutRequest, StatusRequest, StatusResponse, UpgradeRequest, UpgradeResponse,
    operator_server::Operator,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::driver::{ControlError, Op, RolloutSnapshot};
use crate::fleet::FleetView;

#[derive(Debug, Clone)]
pub struct OperatorService {
    pub fleet: Arc<Mutex<FleetView>>,
    pub ops: mpsc::Sender<Op>,
}

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
}

fn reply(s: Option<RolloutSnapshot>) -> Result<RolloutReply, Status> {
    let Some(s) = s else {
        return Ok(RolloutReply {
            found: false,
            state_json: String::new(),
            waiting_for: String::new(),
        });
    };
    let json = serde_json::to_string(&s.state)
        .map_err(|e| Status::internal(format!("cannot encode rollout: {e}")))?;
    Ok(RolloutReply {
        found: true,
        state_json: json,
        waiting_for: s.waiting_for,
    })
}

fn control_status(e: ControlError) -> Status {
    match e {
        ControlError::NoRollout { .. } => Status::not_found(e.to_string()),
        ControlError::WrongPhase { .. } | ControlError::Preflight { .. } => {
            Status::failed_precondition(e.to_string())
        }
        ControlError::Journal(_) => Status::internal(e.to_string()),
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
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let status = self
            .fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .status(Instant::now());
        Ok(Response::new(status.into()))
    }

    async fn plan(&self, request: Request<PlanRequest>) -> Result<Response<PlanResponse>, Status> {
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
        let UpgradeRequest { to_version } = request.into_inner();
        let to = version(&to_version)?;
        let started = self.ask(|reply| Op::Upgrade { to, reply }).await?;
        upgrade_response(started)
    }

    async fn rollback(
        &self,
        request: Request<v1::RollbackRequest>,
    ) -> Result<Response<UpgradeResponse>, Status> {
        let v1::RollbackRequest {} = request.into_inner();
        let started = self.ask(|reply| Op::Rollback { reply }).await?;
        upgrade_response(started)
    }

    async fn pause(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<RolloutReply>, Status> {
        let ControlRequest { reason } = request.into_inner();
        let r = self.ask(|reply| Op::Pause { reason, reply }).await?;
        Ok(Response::new(reply(Some(r.map_err(control_status)?))?))
    }

    async fn resume(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<RolloutReply>, Status> {
        let ControlRequest { reason: _ } = request.into_inner();
        let r = self.ask(|reply| Op::Resume { reply }).await?;
        Ok(Response::new(reply(Some(r.map_err(control_status)?))?))
    }

    async fn abort(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<RolloutReply>, Status> {
        let ControlRequest { reason: _ } = request.into_inner();
        let r = self.ask(|reply| Op::Abort { reply }).await?;
        Ok(Response::new(reply(Some(r.map_err(control_status)?))?))
    }

    async fn rollout(
        &self,
        request: Request<RolloutRequest>,
    ) -> Result<Response<RolloutReply>, Status> {
        let RolloutRequest { rollout_id } = request.into_inner();
        let id = (!rollout_id.is_empty()).then_some(rollout_id);
        let r = self.ask(|reply| Op::Get { id, reply }).await?;
        Ok(Response::new(reply(r)?))
    }

    async fn history(
        &self,
        _request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let all = self.ask(|reply| Op::History { reply }).await?;
        let rollouts = all
            .into_iter()
            .map(|s| reply(Some(s)))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(HistoryResponse { rollouts }))
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
        Err(e) => return Err(control_status(e)),
    }))
}
