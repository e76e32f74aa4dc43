//! The replicated journal: the journal's entries as an openraft log on one
//! or more coordinator replicas, the applied state as its state machine.
//!
//! This module owns the Raft type configuration, [`RaftJournal`] (the
//! [`Journal`] the driver proposes through, and the leadership it drives
//! under) and the start-up of a replica: its log ([`log`]), its state machine
//! and snapshots ([`machine`]), and its peers ([`peer`]). One replica is the
//! embedded default; three or five, listed in `[replication]`, survive the
//! loss of one or two. A proposal commits once a majority has it on disk and
//! is then applied on every replica in the same order, so a new leader
//! carries on from exactly what the old one recorded. Only the leader
//! proposes; a follower's proposal fails with the leader to ask instead.
//!
//! The replica with the lowest id initializes a journal that never ran; the
//! others wait to be contacted, so two replicas never start two histories.

pub mod log;
pub mod machine;
pub mod peer;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Instant as _, ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::log::LogStore;
use self::machine::Machine;
use super::{Applied, Entry, Journal, JournalError};

/// What the replicated log carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proposal {
    /// One journal entry.
    Entry(Entry),
    /// A whole journal from before replication, imported once, atomically,
    /// into a journal that holds nothing yet.
    Import { entries: Vec<Entry>, from: String },
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proposal::Entry(e) => write!(f, "{}", e.describe()),
            Proposal::Import { entries, from } => {
                write!(f, "import {} entries from {from}", entries.len())
            }
        }
    }
}

openraft::declare_raft_types!(
    /// The journal's openraft type configuration: a proposal in, the
    /// entry's journal index (or why it did not apply) out.
    pub TypeConfig:
        D = Proposal,
        R = Result<u64, String>,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// A replica's Raft handle.
pub type JournalRaft = openraft::Raft<TypeConfig, Machine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type LogEntry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;

/// The replica dir, under the state dir.
pub const DIR: &str = "replica";
/// Entries between snapshots (each snapshot is the whole applied state).
pub const SNAPSHOT_EVERY: u64 = 1000;
/// Below this much reserve left, a proposal is refused before it reaches
/// openraft (for which a failed write is fatal): room for the votes and
/// blank entries of a few elections.
pub const MIN_RESERVE_LEFT: u64 = 4 << 10;

/// How long a leader may go without a majority's acknowledgement and still
/// answer operators ([`RaftJournal::answers_as_leader`]): many heartbeats
/// (50 ms) and more than an election takes.
pub const LEASE: std::time::Duration = std::time::Duration::from_millis(1000);

/// How long a proposal may wait for a majority before the driver is told
/// the journal is unavailable (it may still commit; entries are checked
/// against the state they apply to, so a repeat does not apply twice).
pub const PROPOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Who this replica is and who its peers are.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    pub id: u64,
    /// Every replica's address (this one's included), by id.
    pub peers: BTreeMap<u64, String>,
    /// The cluster the journal belongs to.
    pub cluster: String,
    pub state_dir: PathBuf,
    /// TLS for peer traffic (client side), when the coordinator has [tls].
    pub tls: Option<baton_net::tls::ClientTls>,
}

/// The replicated journal.
#[derive(Debug)]
pub struct RaftJournal {
    raft: JournalRaft,
    machine: Machine,
    log: LogStore,
    settings: ReplicaSettings,
    /// The term this replica leads in, set when it takes the lead.
    term: AtomicU64,
}

fn raft_config(cluster: &str) -> Result<Config, JournalError> {
    Config {
        cluster_name: cluster.to_owned(),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: SNAPSHOT_EVERY / 2,
        ..Config::default()
    }
    .validate()
    .map_err(|e| JournalError::Unavailable(format!("invalid raft config: {e}")))
}

impl RaftJournal {
    /// Opens this replica's log and state machine and starts its Raft.
    pub async fn open(settings: ReplicaSettings) -> Result<RaftJournal, JournalError> {
        let dir = settings.state_dir.join(DIR);
        let opened = LogStore::open(&dir).map_err(JournalError::Log)?;
        if let Some((offset, bytes)) = opened.torn {
            tracing::warn!(
                path = %opened.store.path().display(), offset, bytes,
                "cut off a torn journal tail (an append a crash or a full disk interrupted; it was never acknowledged)"
            );
        }
        let machine = Machine::open(&dir).map_err(JournalError::Log)?;
        let raft = JournalRaft::new(
            settings.id,
            std::sync::Arc::new(raft_config(&settings.cluster)?),
            peer::Peers::new(
                settings.cluster.clone(),
                settings.tls.clone(),
                settings.peers.clone(),
            ),
            opened.store.clone(),
            machine.clone(),
        )
        .await
        .map_err(|e| JournalError::Unavailable(format!("cannot start the journal's raft: {e}")))?;
        let first = settings.peers.keys().next().copied();
        if opened.pristine && first == Some(settings.id) {
            let members: BTreeMap<u64, BasicNode> = settings
                .peers
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            raft.initialize(members).await.map_err(|e| {
                JournalError::Unavailable(format!("cannot initialize the journal: {e}"))
            })?;
            tracing::info!(replicas = settings.peers.len(), "initialized a new journal");
        }
        Ok(RaftJournal {
            raft,
            machine,
            log: opened.store,
            settings,
            term: AtomicU64::new(0),
        })
    }

    /// The `baton.v1.Replica` service that feeds this replica's Raft.
    pub fn replica_service(&self) -> peer::ReplicaService {
        peer::ReplicaService::new(
            self.raft.clone(),
            self.settings.id,
            self.settings.cluster.clone(),
            self.settings.peers.clone(),
        )
        .with_identity(self.settings.tls.is_some())
    }

    pub fn settings(&self) -> &ReplicaSettings {
        &self.settings
    }

    /// The leader this replica knows of: its id and address.
    pub fn leader(&self) -> Option<(u64, String)> {
        let id = self.raft.metrics().borrow_watched().current_leader?;
        Some((id, self.settings.peers.get(&id)?.clone()))
    }

    /// Whether this replica's Raft leads now (it may yet learn it was
    /// deposed; a proposal then fails).
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.settings.id)
    }

    /// Whether this replica may answer as the leader: it leads, and, with
    /// peers, a majority acknowledged it within [`LEASE`]. A leader cut off
    /// from its peers keeps its Raft state for a while, but answers
    /// operators as a follower would rather than with a stale view.
    pub fn answers_as_leader(&self) -> bool {
        if !self.is_leader() {
            return false;
        }
        self.settings.peers.len() == 1
            || self
                .raft
                .metrics()
                .borrow_watched()
                .last_quorum_acked
                .as_ref()
                .is_some_and(|t| t.elapsed() <= LEASE)
    }

    /// Why the Raft stopped, if it did (a storage error is fatal to it).
    pub fn stopped(&self) -> Option<String> {
        match &self.raft.metrics().borrow_watched().running_state {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Waits until this replica leads and has applied everything committed
    /// before its term (a read index confirmed by a majority); returns the
    /// term. `None` on shutdown or when the Raft stopped.
    pub async fn lead(&self, shutdown: &CancellationToken) -> Option<u64> {
        let mut metrics = self.raft.metrics();
        loop {
            if self.stopped().is_some() {
                return None;
            }
            let term = metrics.borrow_watched().current_term;
            if self.is_leader() {
                match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                    Ok(_) if self.is_leader() => {
                        self.term.store(term, Ordering::SeqCst);
                        return Some(term);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "not confirmed as leader yet"),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                changed = metrics.changed() => if changed.is_err() { return None },
            }
        }
    }

    /// Resolves once this replica's Raft no longer leads in `term`. Not a
    /// lease: a leader cut off from its peers keeps driving, but it can
    /// journal nothing (so it starts nothing new), and what it re-sends
    /// carries its old term, which agents that saw a newer one refuse.
    pub async fn deposed(&self, term: u64) {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_watched();
                if m.current_term != term
                    || m.state != ServerState::Leader
                    || m.running_state.is_err()
                {
                    return;
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Imports a journal from before replication into this one, which must
    /// hold nothing yet (one entry, so all of it or none).
    pub async fn import(&self, entries: Vec<Entry>, from: String) -> Result<(), JournalError> {
        self.write(Proposal::Import { entries, from })
            .await
            .map(|_| ())
    }

    /// Stops the Raft (on shutdown).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "the journal's raft did not stop cleanly");
        }
    }

    async fn write(&self, p: Proposal) -> Result<u64, JournalError> {
        let described = p.to_string();
        // A log deleted or replaced under this process: refused here, where
        // the driver pages and backs off, before openraft meets it as a
        // failed write (which stops its Raft for good).
        self.log.check_identity().map_err(JournalError::Log)?;
        if self.log.reserve_left() < MIN_RESERVE_LEFT {
            return Err(JournalError::Write {
                path: self.log.path().to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "the disk is full and the journal's reserve is spent",
                ),
            });
        }
        let written = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.client_write(p)).await;
        let Ok(written) = written else {
            return Err(JournalError::Unavailable(format!(
                "no majority of replicas acknowledged {described} in {PROPOSE_TIMEOUT:?}"
            )));
        };
        match written {
            Ok(resp) => resp.data.map_err(|detail| JournalError::Rejected {
                entry: described,
                detail,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(JournalError::NotLeader {
                    leader: f.leader_node.map(|n| n.addr),
                })
            }
            Err(e) => Err(JournalError::Unavailable(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl Journal for RaftJournal {
    async fn propose(&self, entry: Entry) -> Result<u64, JournalError> {
        if !self.is_leader() {
            return Err(JournalError::NotLeader {
                leader: self.leader().map(|(_, addr)| addr),
            });
        }
        // Checked on this replica's state first: an entry that cannot apply
        // is refused without a round trip (and is never in the log).
        self.machine.subscribe().borrow().check(&entry)?;
        self.write(Proposal::Entry(entry)).await
    }

    fn subscribe(&self) -> watch::Receiver<Applied> {
        self.machine.subscribe()
    }

    fn low_space(&self) -> bool {
        self.log.low_space()
    }

    async fn check_space(&self) -> bool {
        self.log.retry_reserve()
    }

    fn term(&self) -> u64 {
        self.term.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests;
