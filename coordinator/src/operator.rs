//! The `Operator` gRPC service: what the `baton` CLI calls. Reads the
//! FleetView; converts domain to wire on the way out and nothing else.

use std::sync::{Arc, Mutex};

use baton_proto::v1::{StatusRequest, StatusResponse, operator_server::Operator};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::fleet::FleetView;

#[derive(Debug, Clone)]
pub struct OperatorService {
    pub fleet: Arc<Mutex<FleetView>>,
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
}
