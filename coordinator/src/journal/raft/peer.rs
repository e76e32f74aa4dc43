//! Replica-to-replica transport: openraft's messages over the
//! `baton.v1.Replica` gRPC service, JSON-encoded, on the coordinator's own
//! listener and TLS (a replica presents its server certificate as its client
//! certificate, so peers authenticate each other wherever TLS is set).
//!
//! This module owns both ends: [`Peers`] (openraft's network factory: one
//! lazily connecting channel per peer, transport failures mapped onto
//! openraft's kinds so an unreachable peer is backed off, not hammered) and
//! [`ReplicaService`] (hands a request to the local Raft after checking it
//! is meant for this replica of this journal).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use baton_net::tls::ClientTls;
use baton_proto::v1::replica_client::ReplicaClient;
use baton_proto::v1::replica_server::Replica;
use baton_proto::v1::{PeerCall, PeerReply, PeerRequest};
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::machine::{MachineSnapshot, SnapshotOf};
use super::{JournalRaft, SnapshotMeta, TypeConfig, Vote};

/// The largest peer message either side takes (a snapshot travels whole).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;
/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Floor of a replication call's deadline (openraft's own is the heartbeat
/// interval, which one slow fsync on a shared disk can exceed).
const APPEND_TIMEOUT_FLOOR: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotEnvelope {
    vote: Vote,
    meta: SnapshotMeta,
    data: MachineSnapshot,
}

/// openraft's network factory for one replica. A peer is dialled at the
/// address this replica's own `[replication]` gives it (so an operator can
/// move a replica, or route peer traffic differently per replica, without
/// a membership change); the address in the journal's membership is the
/// fallback.
#[derive(Debug, Clone)]
pub struct Peers {
    cluster: String,
    tls: Option<ClientTls>,
    addrs: BTreeMap<u64, String>,
}

impl Peers {
    pub fn new(cluster: String, tls: Option<ClientTls>, addrs: BTreeMap<u64, String>) -> Self {
        Peers {
            cluster,
            tls,
            addrs,
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut ep = Endpoint::from_shared(addr.to_owned())
            .map_err(|e| format!("bad replica address {addr:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            // Read again for every new link, so rotated certificates are
            // used without a restart.
            let tls = tls.fresh().unwrap_or_else(|e| {
                tracing::warn!(replica = %addr, error = %e, "cannot read the [tls] files again; dialling the replica with the ones read before");
                tls.clone()
            });
            ep = ep
                .tls_config(tls.tonic_config())
                .map_err(|e| format!("TLS to replica {addr}: {e}"))?;
        }
        Ok(ep.connect_lazy())
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerLink {
        let addr = self.addrs.get(&target).unwrap_or(&node.addr).clone();
        PeerLink {
            target,
            channel: self.channel(&addr),
            addr,
            cluster: self.cluster.clone(),
        }
    }
}

/// The client for one peer.
#[derive(Debug)]
pub struct PeerLink {
    target: u64,
    addr: String,
    cluster: String,
    channel: Result<Channel, String>,
}

fn unreachable(msg: String) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

impl PeerLink {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        call: PeerCall,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let channel = self.channel.clone().map_err(unreachable)?;
        let data = serde_json::to_vec(req)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))?;
        let request = PeerRequest {
            call: call as i32,
            target: self.target,
            cluster: self.cluster.clone(),
            data,
        };
        let mut client = ReplicaClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let reply = match tokio::time::timeout(ttl, client.call(request)).await {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::from_string(format!(
                    "replica {} at {}: no answer to {call:?} in {ttl:?}",
                    self.target, self.addr
                ))));
            }
            Ok(Err(s)) => {
                return Err(unreachable(format!(
                    "replica {} at {}: {} ({:?})",
                    self.target,
                    self.addr,
                    s.message(),
                    s.code()
                )));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        serde_json::from_slice(&reply.data).map_err(|e| {
            RPCError::Network(NetworkError::from_string(format!(
                "replica {} at {}: an undecodable {call:?} answer: {e}",
                self.target, self.addr
            )))
        })
    }
}

/// A remote Raft that answered with its own error: it is stopping.
fn remote<E: std::fmt::Display>(addr: &str, e: E) -> RPCError<TypeConfig> {
    unreachable(format!("replica at {addr}: its journal stopped: {e}"))
}

impl RaftNetworkV2<TypeConfig> for PeerLink {
    type SnapshotData = MachineSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let ttl = option.soft_ttl().max(APPEND_TIMEOUT_FLOOR);
        let r: Result<_, RaftError<TypeConfig>> = self.call(PeerCall::Append, &rpc, ttl).await?;
        r.map_err(|e| remote(&self.addr, e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r: Result<_, RaftError<TypeConfig>> =
            self.call(PeerCall::Vote, &rpc, option.soft_ttl()).await?;
        r.map_err(|e| remote(&self.addr, e))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let envelope = SnapshotEnvelope {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let ttl = option.soft_ttl().max(Duration::from_secs(10));
        let sent = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = self.call::<_, Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>>>(PeerCall::Snapshot, &envelope, ttl) => r,
        };
        let err = match sent {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => remote(&self.addr, e),
            Err(e) => e,
        };
        Err(match err {
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::RemoteError(r) => {
                StreamingError::Network(NetworkError::from_string(r.to_string()))
            }
        })
    }
}

/// `baton.v1.Replica`: the local end of peer traffic.
#[derive(Debug, Clone)]
pub struct ReplicaService {
    raft: JournalRaft,
    id: u64,
    cluster: String,
    /// The peers by id, for naming them in refusals.
    peers: BTreeMap<u64, String>,
    /// Under mutual TLS: every call must come with a coordinator replica's
    /// certificate of this cluster (`spiffe://<cluster>/coordinator/<name>`).
    require_identity: bool,
}

impl ReplicaService {
    pub fn new(raft: JournalRaft, id: u64, cluster: String, peers: BTreeMap<u64, String>) -> Self {
        ReplicaService {
            raft,
            id,
            cluster,
            peers,
            require_identity: false,
        }
    }

    /// Requires a coordinator replica's certificate on every call when
    /// `tls` (the replicas speak mutual TLS).
    pub fn with_identity(mut self, tls: bool) -> Self {
        self.require_identity = tls;
        self
    }

    /// Refuses a caller whose certificate is not a coordinator replica's of
    /// this cluster: before its request is read.
    fn check_peer(&self, request: &Request<PeerRequest>) -> Result<(), Status> {
        if !self.require_identity {
            return Ok(());
        }
        let from = request
            .remote_addr()
            .map_or_else(|| "an unknown address".to_owned(), |a| a.to_string());
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.to_vec()));
        let verdict = match leaf {
            None => Err("no client certificate was presented".to_owned()),
            Some(der) => baton_net::identity::PeerIdentity::from_der(&der)
                .and_then(|id| id.coordinator_name(&self.cluster).map(|_| ()))
                .map_err(|e| e.to_string()),
        };
        verdict.map_err(|why| {
            tracing::warn!(replica = self.id, peer = %from, reason = %why, "refused a replica call");
            Status::permission_denied(format!(
                "replica {} refused a peer call from {from}: {why}",
                self.id
            ))
        })
    }
}

/// Serves `svc` alone on `listener` (with `tls`, when given) until `stop`:
/// replicas in one process, as tests and benchmarks run them. The
/// coordinator serves the same service beside agents and operators on its
/// own listener instead.
pub fn spawn_server(
    svc: ReplicaService,
    listener: tokio::net::TcpListener,
    tls: Option<baton_net::server_tls::ServerTls>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    tokio::spawn(async move {
        let router = tonic::transport::Server::builder().add_service(
            baton_proto::v1::replica_server::ReplicaServer::new(svc)
                .max_decoding_message_size(MAX_PEER_MESSAGE),
        );
        match tls {
            Some(tls) => {
                let incoming = baton_net::server_tls::accept(listener, tls, stop.clone());
                router
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop.cancelled_owned(),
                    )
                    .await
            }
        }
    })
}

fn decode<T: DeserializeOwned>(call: PeerCall, data: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(data)
        .map_err(|e| Status::invalid_argument(format!("an undecodable {call:?} request: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<PeerReply>, Status> {
    serde_json::to_vec(v)
        .map(|data| Response::new(PeerReply { data }))
        .map_err(|e| Status::internal(format!("cannot encode the answer: {e}")))
}

#[tonic::async_trait]
impl Replica for ReplicaService {
    async fn call(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        self.check_peer(&request)?;
        let PeerRequest {
            call,
            target,
            cluster,
            data,
        } = request.into_inner();
        if cluster != self.cluster {
            return Err(Status::failed_precondition(format!(
                "replica {} journals cluster {:?}, not {cluster:?}: check [replication] peers on both",
                self.id, self.cluster
            )));
        }
        if target != self.id {
            return Err(Status::failed_precondition(format!(
                "this is replica {} ({}), not replica {target}: check [replication] peers",
                self.id,
                self.peers.get(&self.id).map_or("?", String::as_str)
            )));
        }
        let call = PeerCall::try_from(call)
            .map_err(|_| Status::invalid_argument(format!("unknown peer call {call}")))?;
        match call {
            PeerCall::Append => {
                let rpc: AppendEntriesRequest<TypeConfig> = decode(call, &data)?;
                encode(&self.raft.append_entries(rpc).await)
            }
            PeerCall::Vote => {
                let rpc: VoteRequest<TypeConfig> = decode(call, &data)?;
                encode(&self.raft.vote(rpc).await)
            }
            PeerCall::Snapshot => {
                let env: SnapshotEnvelope = decode(call, &data)?;
                let snapshot = openraft::storage::Snapshot {
                    meta: env.meta,
                    snapshot: env.data,
                };
                encode(&self.raft.install_full_snapshot(env.vote, snapshot).await)
            }
            PeerCall::TransferLeader | PeerCall::Unspecified => Err(Status::unimplemented(
                format!("peer call {call:?} is not served"),
            )),
        }
    }
}
