//! The member's gRPC services: `samplekv.v1.Raft` (peer traffic, handed to
//! openraft), `samplekv.v1.Kv` (client Put/Get and Status) and
//! `samplekv.v1.Admin` (Backup, a document of one instant serialized on a
//! thread of its own and streamed in chunks; TransferLeader). Owns the
//! mapping from openraft results to wire replies: a write or linearizable
//! read that reaches a non-leader answers `ok=false` with a leader hint;
//! Status is read from openraft's metrics only.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_proto::samplekv::kv_server::Kv;
use baton_proto::samplekv::raft_server::Raft as RaftRpc;
use baton_proto::samplekv::{
    GetRequest, GetResponse, LeaderHint, PutRequest, PutResponse, RaftBytes, Role, StatusRequest,
    StatusResponse,
};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::storage::Snapshot;
use openraft::{ReadPolicy, ServerState};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use crate::faults::Faults;
use crate::network::{SnapshotEnvelope, TARGET_HEADER};
use crate::state_machine::StateMachine;
use crate::types::{KvCommand, KvRaft, NodeId, TypeConfig, term_of};

fn decode<T: DeserializeOwned>(what: &str, req: Request<RaftBytes>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable {what} payload: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftBytes>, Status> {
    serde_json::to_vec(v)
        .map(|data| Response::new(RaftBytes { data }))
        .map_err(|e| Status::internal(format!("cannot encode reply: {e}")))
}

/// `samplekv.v1.Raft`: peer RPCs into openraft.
#[derive(Debug, Clone)]
pub struct RaftService {
    raft: KvRaft,
    id: NodeId,
    faults: Faults,
}

impl RaftService {
    /// Serves member `id`'s Raft.
    pub fn new(raft: KvRaft, id: NodeId, faults: Faults) -> Self {
        RaftService { raft, id, faults }
    }

    /// Refuses a request that names another member (e.g. a reused port).
    fn check_target<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(v) = req.metadata().get(TARGET_HEADER) else {
            return Ok(());
        };
        let meant = v.to_str().ok().and_then(|s| s.parse::<NodeId>().ok());
        if meant == Some(self.id) {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "this is member {}, not {:?}",
                self.id,
                v.to_str().unwrap_or("?")
            )))
        }
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        self.check_target(&request)?;
        self.faults.before_append().await;
        let rpc: AppendEntriesRequest<TypeConfig> = decode("AppendEntries", request)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        self.check_target(&request)?;
        let rpc: VoteRequest<TypeConfig> = decode("Vote", request)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn full_snapshot(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        self.check_target(&request)?;
        let env: SnapshotEnvelope = decode("FullSnapshot", request)?;
        let snapshot = Snapshot {
            meta: env.meta,
            snapshot: env.data,
        };
        encode(&self.raft.install_full_snapshot(env.vote, snapshot).await)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        self.check_target(&request)?;
        let rpc: TransferLeaderRequest<TypeConfig> = decode("TransferLeader", request)?;
        encode(&self.raft.handle_transfer_leader(rpc).await)
    }
}

/// `samplekv.v1.Kv`: client writes, reads and status.
#[derive(Debug, Clone)]
pub struct KvService {
    raft: KvRaft,
    sm: StateMachine,
    id: NodeId,
    peers: BTreeMap<NodeId, String>,
    release_version: String,
    format_version: u32,
    op_timeout: Duration,
}

impl KvService {
    /// Serves member `id`'s KV API; `peers` maps ids to addresses for hints.
    pub fn new(
        raft: KvRaft,
        sm: StateMachine,
        id: NodeId,
        peers: BTreeMap<NodeId, String>,
        release_version: String,
        format_version: u32,
        op_timeout: Duration,
    ) -> Self {
        KvService {
            raft,
            sm,
            id,
            peers,
            release_version,
            format_version,
            op_timeout,
        }
    }

    /// A hint naming `leader` and its address (from the membership, else
    /// from `--peers`).
    fn hint(&self, leader: Option<NodeId>) -> LeaderHint {
        let Some(id) = leader else {
            return LeaderHint::default();
        };
        let from_membership = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .get_node(&id)
            .map(|n| n.addr.clone());
        LeaderHint {
            leader_id: id,
            leader_addr: from_membership
                .or_else(|| self.peers.get(&id).cloned())
                .unwrap_or_default(),
        }
    }
}

fn role_of(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let PutRequest { key, value } = request.into_inner();
        if key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        let write = self.raft.client_write(KvCommand::Put { key, value });
        let res = tokio::time::timeout(self.op_timeout, write)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "write not committed within {:?}; its outcome is unknown",
                    self.op_timeout
                ))
            })?;
        let not_leader = |hint| PutResponse {
            ok: false,
            not_leader: Some(hint),
            ..PutResponse::default()
        };
        match res {
            Ok(resp) => Ok(Response::new(PutResponse {
                ok: true,
                not_leader: None,
                revision: resp.log_id.index,
                term: term_of(&resp.log_id),
                // The leader that proposed the entry.
                leader_id: resp.log_id.leader_id.node_id,
            })),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(Response::new(not_leader(self.hint(f.leader_id))))
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                Ok(Response::new(not_leader(self.hint(f.leader_id))))
            }
            Err(RaftError::APIError(e)) => Err(Status::failed_precondition(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(Status::unavailable(format!("raft stopped: {f}"))),
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let GetRequest { key, linearizable } = request.into_inner();
        if linearizable {
            let read = self.raft.ensure_linearizable(ReadPolicy::ReadIndex);
            let res = tokio::time::timeout(self.op_timeout, read)
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "linearizable read not ready within {:?}",
                        self.op_timeout
                    ))
                })?;
            match res {
                Ok(_) => {}
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                    return Ok(Response::new(GetResponse {
                        found: false,
                        value: String::new(),
                        not_leader: Some(self.hint(f.leader_id)),
                    }));
                }
                Err(RaftError::APIError(e)) => return Err(Status::unavailable(e.to_string())),
                Err(RaftError::Fatal(f)) => {
                    return Err(Status::unavailable(format!("raft stopped: {f}")));
                }
            }
        }
        let value = self.sm.get(&key);
        Ok(Response::new(GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
            not_leader: None,
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let m = self.raft.metrics().borrow_watched().clone();
        // Applied as the state machine has it, entry by entry: a member
        // slowly working through a long batch (after a restart) is seen
        // applying, as a real database's applied index would show.
        let applied = m
            .last_applied
            .as_ref()
            .map_or(0, |l| l.index)
            .max(self.sm.applied_index().unwrap_or(0));
        Ok(Response::new(StatusResponse {
            member_id: self.id,
            role: role_of(m.state) as i32,
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            committed_revision: m.local_committed.as_ref().map_or(0, |l| l.index),
            applied_revision: applied,
            release_version: self.release_version.clone(),
            format_version: self.format_version,
            last_log_index: m.last_log_index.unwrap_or(0),
        }))
    }
}

/// `samplekv.v1.Admin`: what baton's agent asks of a member. A handover to a
/// named member, answered as soon as openraft accepted the request; the
/// caller confirms the new leader from Status.
#[derive(Debug, Clone)]
pub struct AdminService {
    raft: KvRaft,
    sm: StateMachine,
    id: NodeId,
    peers: BTreeMap<NodeId, String>,
}

impl AdminService {
    pub fn new(
        raft: KvRaft,
        sm: StateMachine,
        id: NodeId,
        peers: BTreeMap<NodeId, String>,
    ) -> Self {
        AdminService {
            raft,
            sm,
            id,
            peers,
        }
    }
}

/// Bytes per `BackupChunk`.
const BACKUP_CHUNK: usize = 1 << 20;

/// Chunks serialized ahead of the client; beyond that the thread waits.
const BACKUP_CHUNKS_AHEAD: usize = 2;

type ChunkResult = Result<baton_proto::samplekv::BackupChunk, Status>;

/// Serializes one backup document into `BACKUP_CHUNK`-sized chunks on `tx`;
/// stops early when the client goes away. Runs on its own thread. Returns
/// the bytes the channel accepted.
fn serialize_backup(
    index: u64,
    kv: &BTreeMap<String, String>,
    tx: tokio::sync::mpsc::Sender<ChunkResult>,
) -> u64 {
    let mut out = ChunkWriter {
        tx,
        buf: Vec::with_capacity(BACKUP_CHUNK),
        sent: 0,
    };
    match crate::state_machine::write_backup_document(index, kv, &mut out) {
        Ok(()) => tracing::info!(bytes = out.sent, index, "backup taken"),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            tracing::warn!(bytes = out.sent, "backup abandoned: the client went away");
        }
        Err(e) => {
            tracing::warn!(error = %e, "backup failed");
            let _ = out
                .tx
                .blocking_send(Err(Status::internal(format!("backup failed: {e}"))));
        }
    }
    out.sent
}

/// An `io::Write` that sends full chunks down a bounded channel.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<ChunkResult>,
    buf: Vec<u8>,
    sent: u64,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(BACKUP_CHUNK));
        let len = data.len() as u64;
        self.tx
            .blocking_send(Ok(baton_proto::samplekv::BackupChunk { data }))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        self.sent += len;
        Ok(())
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = BACKUP_CHUNK - self.buf.len();
        let n = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == BACKUP_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[tonic::async_trait]
impl baton_proto::samplekv::admin_server::Admin for AdminService {
    type BackupStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<baton_proto::samplekv::BackupChunk, Status>> + Send>,
    >;

    async fn backup(
        &self,
        _request: Request<baton_proto::samplekv::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        // Copy under the lock, then serialize on a thread of its own, chunk
        // by chunk as the client takes them: apply waits only for the copy,
        // the runtime's workers not at all, and no whole document is held.
        self.sm.faults().before_backup().await;
        let (index, kv) = self.sm.backup_copy();
        let (tx, rx) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_AHEAD);
        std::thread::Builder::new()
            .name("samplekv-backup".into())
            .spawn(move || serialize_backup(index, &kv, tx))
            .map_err(|e| Status::internal(format!("cannot start the backup thread: {e}")))?;
        let chunks = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn transfer_leader(
        &self,
        request: Request<baton_proto::samplekv::TransferLeaderRequest>,
    ) -> Result<Response<baton_proto::samplekv::TransferLeaderResponse>, Status> {
        use baton_proto::samplekv::TransferLeaderResponse;
        let baton_proto::samplekv::TransferLeaderRequest { to_member_id } = request.into_inner();
        let m = self.raft.metrics().borrow_watched().clone();
        let leader = m.current_leader.unwrap_or(0);
        let refuse = |detail: String| {
            Ok(Response::new(TransferLeaderResponse {
                ok: false,
                detail,
                leader_id: leader,
            }))
        };
        if !self.peers.contains_key(&to_member_id) {
            return refuse(format!("member {to_member_id} is not in this cluster"));
        }
        if to_member_id == self.id {
            return refuse(format!(
                "member {} cannot hand leadership to itself",
                self.id
            ));
        }
        if m.state != ServerState::Leader {
            return refuse(format!(
                "member {} is not the leader (it is {:?}; the leader is {leader})",
                self.id, m.state
            ));
        }
        tracing::info!(
            id = self.id,
            target = to_member_id,
            "handing leadership over on request"
        );
        if let Err(e) = self.raft.trigger().transfer_leader(to_member_id).await {
            return refuse(format!("openraft refused the transfer: {e}"));
        }
        Ok(Response::new(TransferLeaderResponse {
            ok: true,
            detail: format!("transfer to {to_member_id} requested"),
            leader_id: leader,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_map(keys: usize, value_len: usize) -> BTreeMap<String, String> {
        (0..keys)
            .map(|i| (format!("k{i:05}"), "v".repeat(value_len)))
            .collect()
    }

    #[test]
    fn a_backup_streams_in_full_chunks_that_reassemble_to_the_document() {
        let kv = sample_map(40, 100_000);
        let mut whole = Vec::new();
        crate::state_machine::write_backup_document(9, &kv, &mut whole).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_AHEAD);
        let writer = std::thread::spawn(move || serialize_backup(9, &kv, tx));
        let mut chunks = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            chunks.push(c.unwrap().data);
        }
        assert_eq!(writer.join().unwrap(), whole.len() as u64);
        assert!(chunks.len() > 3, "{} chunks", chunks.len());
        let (last, full) = chunks.split_last().unwrap();
        assert!(full.iter().all(|c| c.len() == BACKUP_CHUNK));
        assert!(!last.is_empty() && last.len() <= BACKUP_CHUNK);
        assert_eq!(chunks.concat(), whole);
        let doc = crate::state_machine::BackupDocument::parse(&whole).unwrap();
        assert_eq!((doc.applied_index, doc.kv.len()), (9, 40));
    }

    #[test]
    fn a_backup_stops_serializing_when_its_client_goes_away() {
        let kv = sample_map(200, 100_000);
        let (tx, mut rx) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_AHEAD);
        let writer = std::thread::spawn(move || serialize_backup(1, &kv, tx));
        let first = rx.blocking_recv().unwrap().unwrap();
        drop(rx);
        let sent = writer.join().unwrap();
        assert_eq!(first.data.len(), BACKUP_CHUNK);
        // At most the chunks already queued, not the whole ~20 MB document.
        let bound = ((1 + BACKUP_CHUNKS_AHEAD) * BACKUP_CHUNK) as u64;
        assert!(sent <= bound, "{sent} bytes accepted after the client left");
    }
}
