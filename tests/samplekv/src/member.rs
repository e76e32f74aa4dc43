//! One samplekv member process, from flags to exit code: release manifest
//! and data-format gates, storage, openraft, the gRPC server, one-time
//! cluster bootstrap, and the SIGTERM path that hands leadership to the most
//! caught-up follower before stopping.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_proto::samplekv::admin_server::AdminServer;
use baton_proto::samplekv::kv_server::KvServer;
use baton_proto::samplekv::raft_server::RaftServer;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{InitializeError, RaftError};
use openraft::{BasicNode, Config, Instant as _, RaftMetrics, ServerState, SnapshotPolicy};
use tokio_util::sync::CancellationToken;

use crate::faults::{FaultError, Faults};
use crate::format::{FormatError, FormatOutcome};
use crate::log_store::{LogStore, LogStoreError};
use crate::manifest::{Manifest, ManifestError};
use crate::network::Network;
use crate::server::{KvService, RaftService};
use crate::state_machine::{StateMachine, StateMachineError};
use crate::types::{KvRaft, NodeId, TypeConfig};

/// Exit code: bad flags or environment.
pub const EXIT_USAGE: u8 = 64;
/// Exit code: the release manifest is missing or invalid.
pub const EXIT_MANIFEST: u8 = 65;
/// Exit code: the manifest says `fail_start = true` (a simulated bad release).
pub const EXIT_FAIL_START: u8 = 70;
/// Exit code: storage could not be opened.
pub const EXIT_IO: u8 = 74;
/// Exit code: the data dir's format is newer than this release's.
pub const EXIT_FORMAT_TOO_NEW: u8 = 78;

/// Raft heartbeat interval (loopback-sized).
pub const HEARTBEAT_MS: u64 = 100;
/// Raft election timeout range (loopback-sized).
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (300, 600);
/// How long a leader waits before it retries a peer it could not reach:
/// 10 ms, doubling to at most 100 ms. openraft's default (200 ms, doubling
/// to 1 s) left a follower that restarted in 30 ms unreplicated for another
/// 170 ms: it answered healthy and within a few entries of the leader (its
/// own log, replayed) while the leader was not sending to it, so a rollout
/// that then stopped the other follower paused commits until the backoff
/// ran out. Retrying an absent loopback peer costs a refused connect.
pub const UNREACHABLE_BACKOFF: &str = "10ms 20ms ...100ms";
/// How long a leader waits on SIGTERM for another member to lead.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(3);
/// A follower whose last acknowledgement is older than this is unreachable
/// and never chosen as successor.
pub const MAX_ACK_AGE: Duration = Duration::from_secs(1);
/// Server-side bound on one write or linearizable read.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a member is started with.
#[derive(Debug, Clone)]
pub struct MemberOptions {
    /// This member's id (a key of `peers`).
    pub id: NodeId,
    /// The gRPC listen address.
    pub listen: SocketAddr,
    /// Every member's id and `host:port`, this one included.
    pub peers: BTreeMap<NodeId, String>,
    /// Where the log, snapshot and `FORMAT` live.
    pub data_dir: PathBuf,
    /// Where `manifest.toml` lives.
    pub release_dir: PathBuf,
    /// `--pause-apply-file` (else `SAMPLEKV_PAUSE_APPLY_FILE`).
    pub pause_apply_file: Option<PathBuf>,
}

/// Why a member stopped with an error; [`MemberError::exit_code`] says how.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// A fault switch is malformed.
    #[error(transparent)]
    Faults(#[from] FaultError),
    /// The manifest is missing or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest asks for a failed start.
    #[error(
        "release {version} ({}) has fail_start = true: refusing to start (simulated bad release)",
        manifest.display()
    )]
    FailStart {
        /// The release version.
        version: String,
        /// The manifest path.
        manifest: PathBuf,
    },
    /// The data format gate refused or failed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The log could not be opened.
    #[error(transparent)]
    LogStore(#[from] LogStoreError),
    /// The state machine could not be opened.
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// openraft failed to start or stopped on its own.
    #[error("raft: {0}")]
    Raft(String),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(String),
}

impl MemberError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            MemberError::Usage(_) | MemberError::Faults(_) => EXIT_USAGE,
            MemberError::Manifest(_) => EXIT_MANIFEST,
            MemberError::FailStart { .. } => EXIT_FAIL_START,
            MemberError::Format(FormatError::TooNew { .. }) => EXIT_FORMAT_TOO_NEW,
            MemberError::Format(_) | MemberError::LogStore(_) | MemberError::StateMachine(_) => {
                EXIT_IO
            }
            MemberError::Bind { .. } | MemberError::Raft(_) | MemberError::Serve(_) => 1,
        }
    }
}

/// Parses `--peers 1=127.0.0.1:P1,2=127.0.0.1:P2`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("peer {part:?} is not ID=HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|e| format!("peer id {id:?} in {part:?}: {e}"))?;
        let addr = addr.trim();
        if addr.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "peer address {addr:?} in {part:?} is not HOST:PORT"
            ));
        }
        if out.insert(id, addr.to_owned()).is_some() {
            return Err(format!("peer id {id} appears twice"));
        }
    }
    if out.is_empty() {
        return Err("--peers is empty".to_owned());
    }
    Ok(out)
}

/// Env var: build a snapshot every this many log entries (default 5000);
/// the log keeps half of that (at most 1000) behind the snapshot. Tests
/// lower it to exercise snapshot transfer and restore.
pub const ENV_SNAPSHOT_LOGS: &str = "SAMPLEKV_SNAPSHOT_LOGS";
/// Default snapshot interval in log entries.
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 5000;

/// The Raft config every member uses; `snapshot_logs` is the snapshot
/// interval in log entries.
pub fn raft_config(snapshot_logs: u64) -> Result<Config, MemberError> {
    let snapshot_logs = snapshot_logs.max(2);
    Config {
        cluster_name: "samplekv".to_owned(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_logs),
        max_in_snapshot_log_to_keep: (snapshot_logs / 2).min(1000),
        backoff: UNREACHABLE_BACKOFF.to_owned(),
        ..Config::default()
    }
    .validate()
    .map_err(|e| MemberError::Raft(format!("invalid raft config: {e}")))
}

fn snapshot_logs_from_env() -> Result<u64, MemberError> {
    match std::env::var(ENV_SNAPSHOT_LOGS) {
        Err(_) => Ok(DEFAULT_SNAPSHOT_LOGS),
        Ok(v) => v.trim().parse::<u64>().map_err(|_| {
            MemberError::Usage(format!(
                "env {ENV_SNAPSHOT_LOGS}={v:?} is not a number of log entries"
            ))
        }),
    }
}

/// Runs a member until `shutdown` resolves (SIGTERM/SIGINT), then hands
/// over leadership if leading and stops. `Ok` means exit 0.
pub async fn run(
    opts: MemberOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), MemberError> {
    let MemberOptions {
        id,
        listen,
        peers,
        data_dir,
        release_dir,
        pause_apply_file,
    } = opts;
    if !peers.contains_key(&id) {
        return Err(MemberError::Usage(format!(
            "--id {id} is not one of --peers ({:?})",
            peers.keys().collect::<Vec<_>>()
        )));
    }
    let faults = Faults::from_env(pause_apply_file)?;
    let snapshot_logs = snapshot_logs_from_env()?;

    let manifest = Manifest::load(&release_dir)?;
    if manifest.fail_start {
        // A bad release that dies a while after it starts
        // (`SAMPLEKV_FAIL_START_AFTER_MS`), as one that fails its own
        // start-up checks would; by default it dies at once.
        if let Some(ms) = std::env::var("SAMPLEKV_FAIL_START_AFTER_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        return Err(MemberError::FailStart {
            version: manifest.version,
            manifest: Manifest::path_in(&release_dir),
        });
    }
    match crate::format::check_and_stamp(&data_dir, manifest.format_version)? {
        FormatOutcome::Fresh => {
            tracing::info!(format_version = manifest.format_version, data_dir = %data_dir.display(), "fresh data dir stamped");
        }
        FormatOutcome::Same => {}
        FormatOutcome::Upgraded { from } => {
            tracing::info!(from, to = manifest.format_version, data_dir = %data_dir.display(), "data dir format upgraded");
        }
    }

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| MemberError::Bind {
            addr: listen,
            source,
        })?;

    let log_store = LogStore::open(&data_dir)?;
    let pristine = log_store.is_pristine();
    let sm = StateMachine::open(&data_dir, faults.clone())?;
    let config = Arc::new(raft_config(snapshot_logs)?);
    let raft: KvRaft = openraft::Raft::new(id, config, Network::new(id), log_store, sm.clone())
        .await
        .map_err(|e| MemberError::Raft(format!("cannot start: {e}")))?;
    faults.go_live();
    if faults.any() {
        tracing::info!(
            apply_delay = ?faults.apply_delay,
            pause_apply_file = ?faults.pause_apply_file,
            append_delay = ?faults.append_delay,
            backup_delay = ?faults.backup_delay,
            "fault switches set"
        );
    }

    let stop_server = CancellationToken::new();
    let raft_svc = RaftService::new(raft.clone(), id, faults.clone());
    let kv_svc = KvService::new(
        raft.clone(),
        sm.clone(),
        id,
        peers.clone(),
        manifest.version.clone(),
        manifest.format_version,
        OP_TIMEOUT,
    );
    // TCP_NODELAY on every accepted connection: without it a small gRPC
    // reply can sit behind Nagle and the peer's delayed ACK for ~40 ms.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        },
    );
    let server = tonic::transport::Server::builder()
        .add_service(
            RaftServer::new(raft_svc)
                .max_decoding_message_size(crate::network::MAX_RAFT_MESSAGE)
                .max_encoding_message_size(crate::network::MAX_RAFT_MESSAGE),
        )
        .add_service(KvServer::new(kv_svc))
        .add_service(AdminServer::new(crate::server::AdminService::new(
            raft.clone(),
            sm,
            id,
            peers.clone(),
        )))
        .serve_with_incoming_shutdown(incoming, stop_server.clone().cancelled_owned());
    let mut server_task = tokio::spawn(server);
    tracing::info!(
        id,
        %listen,
        release = %manifest.version,
        format_version = manifest.format_version,
        pristine,
        "samplekv member serving"
    );

    let stop_bootstrap = CancellationToken::new();
    if pristine {
        tokio::spawn(bootstrap(raft.clone(), id, peers, stop_bootstrap.clone()));
    }

    let mut metrics = raft.metrics();
    let fatal = async {
        loop {
            if let Err(e) = &metrics.borrow_watched().running_state {
                return e.to_string();
            }
            if metrics.changed().await.is_err() {
                return "metrics channel closed".to_owned();
            }
        }
    };

    let outcome = tokio::select! {
        () = shutdown => {
            tracing::info!(id, "shutdown requested");
            Ok(())
        }
        r = &mut server_task => Err(MemberError::Serve(match r {
            Ok(Ok(())) => "stopped unexpectedly".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        })),
        e = fatal => Err(MemberError::Raft(format!("stopped: {e}"))),
    };
    stop_bootstrap.cancel();

    if outcome.is_ok() {
        hand_over(&raft, id, HANDOVER_WAIT).await;
    }
    faults.stop();
    match tokio::time::timeout(Duration::from_secs(5), raft.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown reported an error"),
        Err(_) => tracing::warn!("raft shutdown did not finish within 5s"),
    }
    stop_server.cancel();
    if !server_task.is_finished()
        && tokio::time::timeout(Duration::from_secs(2), &mut server_task)
            .await
            .is_err()
    {
        tracing::warn!("grpc server did not stop within 2s; aborting it");
        server_task.abort();
    }
    tracing::info!(id, ok = outcome.is_ok(), "samplekv member stopped");
    outcome
}

/// Initializes the cluster once: the lowest id in `--peers` calls
/// `initialize` with the full membership unless a reachable peer already
/// shows a formed cluster. Seen in a benchmark run: when two members both
/// initialized (each before the other listened), both reported themselves
/// leader of term 1, so exactly one member is allowed to do it.
async fn bootstrap(
    raft: KvRaft,
    id: NodeId,
    peers: BTreeMap<NodeId, String>,
    stop: CancellationToken,
) {
    let nodes: BTreeMap<NodeId, BasicNode> = peers
        .iter()
        .map(|(pid, addr)| (*pid, BasicNode::new(addr)))
        .collect();
    let give_up_waiting = tokio::time::Instant::now() + Duration::from_secs(10);
    let designated = peers.keys().next().copied().unwrap_or(id);
    for _ in 0..600 {
        if stop.is_cancelled() {
            return;
        }
        match raft.is_initialized().await {
            Ok(true) => {
                tracing::info!(id, "joined the cluster");
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "bootstrap: raft stopped");
                return;
            }
        }
        let mut formed = false;
        let mut designated_reachable = false;
        for (pid, addr) in peers.iter().filter(|(pid, _)| **pid != id) {
            if let Ok(s) = crate::client::status_within(addr, Duration::from_millis(300)).await {
                if *pid == designated {
                    designated_reachable = true;
                }
                if s.term > 0 || s.leader_id != 0 || s.last_log_index > 0 {
                    formed = true;
                }
            }
        }
        // Only the lowest id in --peers initializes: two members that both
        // initialize (each seeing the other as not yet started) elect two
        // leaders with different first logs. Another member takes over only
        // if the designated one stayed unreachable for the whole wait.
        let fallback = !designated_reachable && tokio::time::Instant::now() > give_up_waiting;
        if !formed && (designated == id || fallback) {
            match raft.initialize(nodes.clone()).await {
                Ok(()) => {
                    tracing::info!(id, members = ?nodes.keys().collect::<Vec<_>>(), "initialized the cluster");
                    return;
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    tracing::info!(id, "cluster already initialized");
                    return;
                }
                Err(e) => tracing::warn!(id, error = %e, "initialize failed; will retry"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = stop.cancelled() => return,
        }
    }
    tracing::warn!(id, "bootstrap gave up: no cluster formed");
}

/// One follower's replication progress, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The follower's id.
    pub id: NodeId,
    /// Highest log index known to match the leader's log.
    pub matched: Option<u64>,
    /// Time since the follower last acknowledged the leader.
    pub since_ack: Option<Duration>,
}

/// Picks the successor: the reachable voter with the highest matched index;
/// ties go to the lowest id. Unknown matched or a stale/absent ack excludes.
pub fn pick_successor(followers: &[FollowerProgress]) -> Option<FollowerProgress> {
    followers
        .iter()
        .filter(|f| f.matched.is_some() && f.since_ack.is_some_and(|a| a <= MAX_ACK_AGE))
        .min_by(|a, b| b.matched.cmp(&a.matched).then(a.id.cmp(&b.id)))
        .copied()
}

/// The leader's view of its voters' progress, from its metrics.
pub fn follower_progress(self_id: NodeId, m: &RaftMetrics<TypeConfig>) -> Vec<FollowerProgress> {
    let voters: BTreeSet<NodeId> = m.membership_config.voter_ids().collect();
    let Some(replication) = &m.replication else {
        return Vec::new();
    };
    replication
        .iter()
        .filter(|(id, _)| **id != self_id && voters.contains(id))
        .map(|(id, matched)| FollowerProgress {
            id: *id,
            matched: matched.as_ref().map(|l| l.index),
            since_ack: m
                .heartbeat
                .as_ref()
                .and_then(|h| h.get(id).cloned().flatten())
                .map(|t| t.elapsed()),
        })
        .collect()
}

/// On SIGTERM: a leader transfers leadership to its most caught-up follower
/// and waits (bounded) until another member leads and has committed past
/// this member's log. A follower does nothing.
pub async fn hand_over(raft: &KvRaft, id: NodeId, wait: Duration) {
    let m = raft.metrics().borrow_watched().clone();
    if m.state != ServerState::Leader {
        tracing::info!(id, state = ?m.state, "not the leader; no handover");
        return;
    }
    let progress = follower_progress(id, &m);
    let Some(target) = pick_successor(&progress) else {
        tracing::warn!(
            id,
            ?progress,
            "leader has no reachable follower with known progress; stopping without handover"
        );
        return;
    };
    let matched = target.matched.unwrap_or(0);
    tracing::info!(
        id,
        target = target.id,
        matched_index = matched,
        ?progress,
        "handing leadership to member {} (most caught-up follower, matched index {matched})",
        target.id
    );
    if let Err(e) = raft.trigger().transfer_leader(target.id).await {
        tracing::warn!(id, error = %e, "transfer_leader failed; stopping anyway");
        return;
    }
    // Stay until the new leader has committed an entry of its own term past
    // our log (its blank entry): then its leadership is established and it
    // never depends on a slow member for its first commit.
    let our_last = m.last_log_index;
    let res = raft
        .wait(Some(wait))
        .metrics(
            |m| {
                m.current_leader.is_some_and(|l| l != id)
                    && m.local_committed.as_ref().map(|c| c.index) > our_last
            },
            "another member leads and has committed past our log",
        )
        .await;
    match res {
        Ok(m) => {
            tracing::info!(id, new_leader = ?m.current_leader, term = m.current_term, "leadership handed over")
        }
        Err(e) => tracing::warn!(id, error = %e, "no new leader within {wait:?}; stopping anyway"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: NodeId, matched: Option<u64>, ack_ms: Option<u64>) -> FollowerProgress {
        FollowerProgress {
            id,
            matched,
            since_ack: ack_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn successor_is_most_caught_up_then_lowest_id() {
        let p = [f(2, Some(10), Some(5)), f(3, Some(12), Some(5))];
        assert_eq!(pick_successor(&p).map(|s| s.id), Some(3));
        let p = [f(3, Some(12), Some(5)), f(2, Some(12), Some(5))];
        assert_eq!(pick_successor(&p).map(|s| s.id), Some(2));
        // Unknown matched or unreachable are skipped.
        let p = [
            f(2, None, Some(5)),
            f(3, Some(1), Some(5000)),
            f(4, Some(1), Some(10)),
        ];
        assert_eq!(pick_successor(&p).map(|s| s.id), Some(4));
        let p = [f(2, Some(9), None)];
        assert_eq!(pick_successor(&p), None);
        assert_eq!(pick_successor(&[]), None);
    }

    #[test]
    fn peers_parse() {
        let p = parse_peers("1=127.0.0.1:1001, 2=127.0.0.1:1002").unwrap();
        assert_eq!(p.get(&2).map(String::as_str), Some("127.0.0.1:1002"));
        assert!(parse_peers("1=127.0.0.1:1,1=127.0.0.1:2").is_err());
        assert!(parse_peers("x=127.0.0.1:1").is_err());
        assert!(parse_peers("1=nohost").is_err());
        assert!(parse_peers("").is_err());
    }
}
