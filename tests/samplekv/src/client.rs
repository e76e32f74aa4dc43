//! The samplekv client: finds the leader through `not_leader` hints and
//! retries other members, bounding each put/get by one request timeout
//! (default 2 s) that covers every attempt. A put counts as acknowledged
//! only when a member answered `ok = true`. Free functions read one member
//! directly (`status`, `get_local`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::samplekv::kv_client::KvClient;
use baton_proto::samplekv::{
    GetRequest, GetResponse, LeaderHint, PutRequest, PutResponse, Role, StatusRequest,
    StatusResponse,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::network::lazy_channel;

/// The default bound on one put or get, all retries included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on attempts within one request.
const MAX_ATTEMPTS: u32 = 1000;
/// Pause before retrying after an error or an unhelpful hint.
const RETRY_PAUSE: Duration = Duration::from_millis(25);
/// Pause between hops while members point at each other mid-handover: short,
/// because a handover settles in one election round trip.
const REDIRECT_PAUSE: Duration = Duration::from_millis(5);

/// A committed put.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutAck {
    /// The log index of the write.
    pub revision: u64,
    /// The term it was written in.
    pub term: u64,
    /// The leader that wrote it.
    pub leader_id: u64,
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client was built with no member addresses.
    #[error("no member addresses given")]
    NoMembers,
    /// An address does not form a valid endpoint.
    #[error("bad member address {addr:?}: {detail}")]
    BadAddress {
        /// The address.
        addr: String,
        /// Why.
        detail: String,
    },
    /// The request did not succeed within its timeout (or attempt bound).
    #[error("{op} failed after {attempts} attempts in {elapsed:?}: {last}")]
    Exhausted {
        /// `put` or `get`.
        op: &'static str,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure seen.
        last: String,
    },
    /// One member answered with an error (direct calls).
    #[error("{addr}: {code:?}: {message}")]
    Rpc {
        /// The member.
        addr: String,
        /// The gRPC code.
        code: tonic::Code,
        /// The message.
        message: String,
    },
    /// One member did not answer in time (direct calls).
    #[error("{addr}: no answer within {after:?}")]
    Timeout {
        /// The member.
        addr: String,
        /// The bound.
        after: Duration,
    },
}

fn channel_for(addr: &str) -> Result<Channel, ClientError> {
    lazy_channel(addr).map_err(|e| ClientError::BadAddress {
        addr: addr.to_owned(),
        detail: e.to_string(),
    })
}

#[derive(Debug)]
struct Inner {
    addrs: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
    leader: Mutex<Option<String>>,
    request_timeout: Duration,
}

/// A leader-following client over a fixed member list. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone)]
enum Op {
    Put(PutRequest),
    Get(GetRequest),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Put(_) => "put",
            Op::Get(_) => "get",
        }
    }
}

#[derive(Debug)]
enum Reply {
    Put(PutResponse),
    Get(GetResponse),
}

impl Reply {
    /// `Some(hint)` when the member said it is not the leader.
    fn not_leader(&self) -> Option<LeaderHint> {
        match self {
            Reply::Put(r) if !r.ok => Some(r.not_leader.clone().unwrap_or_default()),
            Reply::Put(_) => None,
            Reply::Get(r) => r.not_leader.clone(),
        }
    }
}

impl Client {
    /// A client for members at `addrs` (`host:port` each).
    pub fn new(addrs: Vec<String>) -> Client {
        Client {
            inner: Arc::new(Inner {
                addrs,
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
            }),
        }
    }

    /// The same members with another per-request timeout.
    pub fn with_request_timeout(&self, timeout: Duration) -> Client {
        Client {
            inner: Arc::new(Inner {
                addrs: self.inner.addrs.clone(),
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(self.leader_hint()),
                request_timeout: timeout,
            }),
        }
    }

    /// The bound on one put or get.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// The member addresses.
    pub fn addrs(&self) -> &[String] {
        &self.inner.addrs
    }

    /// The address this client currently believes leads.
    pub fn leader_hint(&self) -> Option<String> {
        self.inner
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_leader(&self, addr: Option<String>) {
        *self.inner.leader.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut map = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = channel_for(addr)?;
        map.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// Writes `key = value`; `Ok` only once the write is committed.
    pub async fn put(&self, key: &str, value: &str) -> Result<PutAck, ClientError> {
        let op = Op::Put(PutRequest {
            key: key.to_owned(),
            value: value.to_owned(),
        });
        match self.route(op).await? {
            Reply::Put(r) => Ok(PutAck {
                revision: r.revision,
                term: r.term,
                leader_id: r.leader_id,
            }),
            Reply::Get(_) => mismatched_reply("put"),
        }
    }

    /// Reads `key`; `linearizable` goes through the leader (read index),
    /// otherwise the first member that answers reads its local state.
    pub async fn get(&self, key: &str, linearizable: bool) -> Result<Option<String>, ClientError> {
        let op = Op::Get(GetRequest {
            key: key.to_owned(),
            linearizable,
        });
        match self.route(op).await? {
            Reply::Get(r) => Ok(r.found.then_some(r.value)),
            Reply::Put(_) => mismatched_reply("get"),
        }
    }

    /// Reads `key` from member `addr`'s local state (not linearizable, no
    /// retries), reusing this client's connection to it.
    pub async fn get_from(&self, addr: &str, key: &str) -> Result<Option<String>, ClientError> {
        let kv = KvClient::new(self.channel(addr)?);
        let req = GetRequest {
            key: key.to_owned(),
            linearizable: false,
        };
        let r = direct_on(kv, addr, self.inner.request_timeout, async |mut kv| {
            kv.get(req).await
        })
        .await?;
        Ok(r.found.then_some(r.value))
    }

    async fn call(&self, addr: &str, op: &Op, within: Duration) -> Result<Reply, String> {
        let channel = self.channel(addr).map_err(|e| e.to_string())?;
        let mut kv = KvClient::new(channel);
        let fut = async {
            match op {
                Op::Put(r) => kv.put(r.clone()).await.map(|r| Reply::Put(r.into_inner())),
                Op::Get(r) => kv.get(r.clone()).await.map(|r| Reply::Get(r.into_inner())),
            }
        };
        match tokio::time::timeout(within, fut).await {
            Err(_) => Err(format!("{addr}: no answer within {within:?}")),
            Ok(Err(s)) => Err(format!("{addr}: {:?}: {}", s.code(), s.message())),
            Ok(Ok(r)) => Ok(r),
        }
    }

    fn next_member(&self, current: &str, cursor: &mut usize) -> String {
        let addrs = &self.inner.addrs;
        for _ in 0..addrs.len() {
            *cursor = (*cursor + 1) % addrs.len();
            if addrs[*cursor] != current || addrs.len() == 1 {
                return addrs[*cursor].clone();
            }
        }
        current.to_owned()
    }

    /// Sends `op` to the leader, following hints and trying other members,
    /// until it succeeds or the request timeout passes.
    async fn route(&self, op: Op) -> Result<Reply, ClientError> {
        if self.inner.addrs.is_empty() {
            return Err(ClientError::NoMembers);
        }
        let start = Instant::now();
        let deadline = start + self.inner.request_timeout;
        let mut cursor = 0usize;
        let mut target = self
            .leader_hint()
            .unwrap_or_else(|| self.inner.addrs[0].clone());
        let mut attempts = 0u32;
        let mut redirects = 0u32;
        let mut last = String::from("no attempt made");
        loop {
            let now = Instant::now();
            if now >= deadline || attempts >= MAX_ATTEMPTS {
                return Err(ClientError::Exhausted {
                    op: op.name(),
                    attempts,
                    elapsed: now - start,
                    last,
                });
            }
            attempts += 1;
            let pause = match self.call(&target, &op, deadline - now).await {
                Ok(reply) => match reply.not_leader() {
                    None => {
                        if matches!(op, Op::Put(_)) || matches!(&op, Op::Get(g) if g.linearizable) {
                            self.set_leader(Some(target));
                        }
                        return Ok(reply);
                    }
                    Some(hint) => {
                        last = format!(
                            "{target} is not the leader (hint: id {} at {:?})",
                            hint.leader_id, hint.leader_addr
                        );
                        if self.leader_hint().as_deref() == Some(target.as_str()) {
                            self.set_leader(None);
                        }
                        if !hint.leader_addr.is_empty() && hint.leader_addr != target {
                            target = hint.leader_addr;
                            redirects += 1;
                            // Two members pointing at each other mid-election:
                            // slow down after the first hops.
                            (redirects > 2).then_some(REDIRECT_PAUSE)
                        } else {
                            target = self.next_member(&target, &mut cursor);
                            Some(RETRY_PAUSE)
                        }
                    }
                },
                Err(e) => {
                    last = e;
                    if self.leader_hint().as_deref() == Some(target.as_str()) {
                        self.set_leader(None);
                    }
                    target = self.next_member(&target, &mut cursor);
                    Some(RETRY_PAUSE)
                }
            };
            if let Some(p) = pause {
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(p.min(left)).await;
            }
        }
    }
}

fn mismatched_reply<T>(op: &'static str) -> Result<T, ClientError> {
    Err(ClientError::Exhausted {
        op,
        attempts: 0,
        elapsed: Duration::ZERO,
        last: "mismatched reply type".to_owned(),
    })
}

async fn direct<T>(
    addr: &str,
    within: Duration,
    f: impl AsyncFnOnce(KvClient<Channel>) -> Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, ClientError> {
    direct_on(KvClient::new(channel_for(addr)?), addr, within, f).await
}

async fn direct_on<T>(
    kv: KvClient<Channel>,
    addr: &str,
    within: Duration,
    f: impl AsyncFnOnce(KvClient<Channel>) -> Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(within, f(kv)).await {
        Err(_) => Err(ClientError::Timeout {
            addr: addr.to_owned(),
            after: within,
        }),
        Ok(Err(s)) => Err(ClientError::Rpc {
            addr: addr.to_owned(),
            code: s.code(),
            message: s.message().to_owned(),
        }),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// One member's `Kv.Status`, within [`DEFAULT_REQUEST_TIMEOUT`].
pub async fn status(addr: &str) -> Result<StatusResponse, ClientError> {
    status_within(addr, DEFAULT_REQUEST_TIMEOUT).await
}

/// One member's `Kv.Status`, within `within`.
pub async fn status_within(addr: &str, within: Duration) -> Result<StatusResponse, ClientError> {
    direct(addr, within, async |mut kv| {
        kv.status(StatusRequest {}).await
    })
    .await
}

/// Reads `key` from one member's local state (not linearizable), on a new
/// connection; for many reads use [`Client::get_from`].
pub async fn get_local(addr: &str, key: &str) -> Result<Option<String>, ClientError> {
    let req = GetRequest {
        key: key.to_owned(),
        linearizable: false,
    };
    let r = direct(addr, DEFAULT_REQUEST_TIMEOUT, async |mut kv| {
        kv.get(req).await
    })
    .await?;
    Ok(r.found.then_some(r.value))
}

/// A JSON view of a status reply (role as a name).
pub fn status_json(s: &StatusResponse) -> serde_json::Value {
    let role = Role::try_from(s.role).map_or("UNKNOWN", |r| {
        r.as_str_name().strip_prefix("ROLE_").unwrap_or("UNKNOWN")
    });
    serde_json::json!({
        "member_id": s.member_id,
        "role": role,
        "leader_id": s.leader_id,
        "term": s.term,
        "committed_revision": s.committed_revision,
        "applied_revision": s.applied_revision,
        "last_log_index": s.last_log_index,
        "release_version": s.release_version,
        "format_version": s.format_version,
    })
}
