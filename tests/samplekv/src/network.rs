//! Member-to-member Raft transport: openraft's `RaftNetworkFactory` /
//! `RaftNetworkV2` over the `samplekv.v1.Raft` gRPC service, each payload
//! being openraft's own serde type as JSON. Owns the wire envelope shared
//! with the server side, the per-peer channels, the mapping of transport
//! failures onto openraft's error kinds (Unreachable → back off; Timeout;
//! Network), and the target-id header that makes a peer refuse a request
//! meant for another member (a reused port).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::samplekv::RaftBytes;
use baton_proto::samplekv::raft_client::RaftClient;
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::state_machine::{KvSnapshot, KvSnapshotOf};
use crate::types::{NodeId, SnapshotMeta, TypeConfig, Vote};

/// gRPC metadata key naming the member a Raft RPC is meant for.
pub const TARGET_HEADER: &str = "x-samplekv-target";

/// Floor of an AppendEntries RPC's timeout. openraft budgets replication
/// RPCs at the heartbeat interval (soft 75 ms); a deliberately slow follower
/// (`SAMPLEKV_APPEND_DELAY_MS`) would then time out on every batch and never
/// be seen to catch up. openraft itself does not cut replication RPCs short
/// (heartbeats keep their own hard timeout), so a longer per-response
/// deadline only slows failure detection on that one follower's stream.
const APPEND_TIMEOUT_FLOOR: Duration = Duration::from_secs(1);

/// Largest Raft message either side accepts (a snapshot travels whole).
pub const MAX_RAFT_MESSAGE: usize = 256 * 1024 * 1024;

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The body of a `FullSnapshot` RPC.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotEnvelope {
    /// The sending leader's vote.
    pub vote: Vote,
    /// The snapshot's metadata.
    pub meta: SnapshotMeta,
    /// The snapshot's data.
    pub data: KvSnapshot,
}

/// The result of an AppendEntries / Vote RPC as sent back.
pub type RaftResult<T> = Result<T, RaftError<TypeConfig>>;
/// The result of a FullSnapshot / TransferLeader RPC as sent back.
pub type FatalResult<T> = Result<T, Fatal<TypeConfig>>;

/// Builds a lazily connecting channel to `addr` (`host:port`).
pub fn lazy_channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Creates one [`PeerLink`] per replication target; channels are shared
/// per address.
#[derive(Debug, Clone)]
pub struct Network {
    self_id: NodeId,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Network {
    /// A factory for member `self_id`.
    pub fn new(self_id: NodeId) -> Self {
        Network {
            self_id,
            channels: Arc::default(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = lazy_channel(addr).map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
        map.insert(addr.to_owned(), c.clone());
        Ok(c)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerLink {
        PeerLink {
            self_id: self.self_id,
            target,
            addr: node.addr.clone(),
            channel: self.channel(&node.addr),
        }
    }
}

/// The RPC client for one peer.
#[derive(Debug)]
pub struct PeerLink {
    self_id: NodeId,
    target: NodeId,
    addr: String,
    channel: Result<Channel, String>,
}

/// A failed call, before it becomes an openraft error.
#[derive(Debug)]
enum CallError {
    Timeout(Duration),
    Unreachable(String),
    Network(String),
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
    Transfer,
}

impl Method {
    fn rpc_type(self) -> RPCTypes {
        match self {
            Method::Append => RPCTypes::AppendEntries,
            Method::Vote => RPCTypes::Vote,
            Method::Snapshot => RPCTypes::InstallSnapshot,
            Method::Transfer => RPCTypes::TransferLeader,
        }
    }
}

fn status_error(addr: &str, s: &tonic::Status) -> CallError {
    let msg = format!("{addr}: {} ({:?})", s.message(), s.code());
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::FailedPrecondition | tonic::Code::Unknown => {
            CallError::Unreachable(msg)
        }
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => CallError::Network(msg),
        _ => CallError::Network(msg),
    }
}

impl PeerLink {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: Method,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let channel = self.channel.clone().map_err(CallError::Unreachable)?;
        let data = serde_json::to_vec(req).map_err(|e| CallError::Network(e.to_string()))?;
        let mut request = tonic::Request::new(RaftBytes { data });
        if let Ok(v) = self.target.to_string().parse() {
            request.metadata_mut().insert(TARGET_HEADER, v);
        }
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE);
        let fut = async move {
            match method {
                Method::Append => client.append_entries(request).await,
                Method::Vote => client.vote(request).await,
                Method::Snapshot => client.full_snapshot(request).await,
                Method::Transfer => client.transfer_leader(request).await,
            }
        };
        let resp = match tokio::time::timeout(ttl, fut).await {
            Err(_) => return Err(CallError::Timeout(ttl)),
            Ok(Err(status)) => return Err(status_error(&self.addr, &status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        serde_json::from_slice(&resp.data).map_err(|e| {
            CallError::Network(format!("{}: undecodable {method:?} reply: {e}", self.addr))
        })
    }

    fn rpc_error(&self, method: Method, e: CallError) -> RPCError<TypeConfig> {
        match e {
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action: method.rpc_type(),
                id: self.self_id,
                target: self.target,
                timeout,
            }),
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::from_string(m)),
            CallError::Network(m) => RPCError::Network(NetworkError::from_string(m)),
        }
    }

    fn remote_fatal(&self, e: impl std::fmt::Display) -> CallError {
        CallError::Unreachable(format!("{}: remote raft stopped: {e}", self.addr))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerLink {
    type SnapshotData = KvSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let m = Method::Append;
        let ttl = option.soft_ttl().max(APPEND_TIMEOUT_FLOOR);
        match self.call::<_, RaftResult<_>>(m, &rpc, ttl).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.rpc_error(m, self.remote_fatal(e))),
            Err(e) => Err(self.rpc_error(m, e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let m = Method::Vote;
        match self
            .call::<_, RaftResult<_>>(m, &rpc, option.soft_ttl())
            .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.rpc_error(m, self.remote_fatal(e))),
            Err(e) => Err(self.rpc_error(m, e)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: KvSnapshotOf,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let envelope = SnapshotEnvelope {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let m = Method::Snapshot;
        let res = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = self.call::<_, FatalResult<SnapshotResponse<TypeConfig>>>(m, &envelope, option.soft_ttl()) => r,
        };
        let err = match res {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => self.remote_fatal(e),
            Err(e) => e,
        };
        Err(match self.rpc_error(m, err) {
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::RemoteError(r) => {
                StreamingError::Network(NetworkError::from_string(r.to_string()))
            }
        })
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let m = Method::Transfer;
        match self
            .call::<_, FatalResult<_>>(m, &req, option.soft_ttl())
            .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.rpc_error(m, self.remote_fatal(e))),
            Err(e) => Err(self.rpc_error(m, e)),
        }
    }
}
