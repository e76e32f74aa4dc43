//! The Raft type configuration: what a log entry carries (`KvCommand`), what
//! applying one returns, and the node type (`BasicNode` holding the member's
//! gRPC address). Every other module names openraft types through here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A member's numeric id, as given by `--id` and `--peers`.
pub type NodeId = u64;

/// A command replicated through the Raft log and applied to the KV map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
}

impl fmt::Display for KvCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvCommand::Put { key, value } => write!(f, "put({key}, {} bytes)", value.len()),
        }
    }
}

openraft::declare_raft_types!(
    /// samplekv's openraft type configuration.
    pub TypeConfig:
        D = KvCommand,
        R = (),
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

/// The Raft handle type used by a member.
pub type KvRaft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;

/// A log id of this configuration.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry of this configuration.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A vote of this configuration.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Snapshot metadata of this configuration.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// The membership as stored with the applied state.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;

/// The term of a log id (the leader id is `(term, node_id)`).
pub fn term_of(log_id: &LogId) -> u64 {
    log_id.leader_id.term
}
