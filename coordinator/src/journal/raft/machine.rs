//! The replica's state machine: the journal's [`Applied`] state, built by
//! applying committed entries in log order, and its snapshots.
//!
//! This module owns the applied state and `<state_dir>/replica/snapshot`, a
//! one-record [`baton_store::records`] file (so it is checksummed too),
//! replaced atomically. A snapshot is the whole applied state, not the
//! entries, so a long history starts without replaying them. An entry that
//! does not apply changes nothing; it is answered with the reason, the same
//! way on every replica (apply is deterministic). Every change is published
//! on the `watch` channel the driver and the operator API read.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use baton_store::records::{self, RecordError, RecordLog};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{LogId, Proposal, SnapshotMeta, StoredMembership, TypeConfig};
use crate::journal::Applied;

/// The snapshot file, under the replica dir.
pub const SNAPSHOT_FILE: &str = "snapshot";

/// A snapshot's data: the whole applied state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineSnapshot {
    pub applied: Applied,
}

/// A snapshot as stored and sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMeta,
    data: MachineSnapshot,
}

/// A snapshot of this configuration.
pub type SnapshotOf = Snapshot<
    openraft::alias::CommittedLeaderIdOf<TypeConfig>,
    u64,
    openraft::BasicNode,
    MachineSnapshot,
>;

#[derive(Debug, Default)]
struct Position {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

#[derive(Debug)]
struct Shared {
    position: Mutex<Position>,
    current: Mutex<Option<Stored>>,
    applied: watch::Sender<Applied>,
    path: PathBuf,
}

/// The state machine; clones share one state.
#[derive(Debug, Clone)]
pub struct Machine {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Machine {
    /// Opens the state machine in `dir`: empty, plus the last snapshot,
    /// which openraft installs before it applies the log after it. A
    /// snapshot file that does not check out refuses, naming the offset.
    pub fn open(dir: &Path) -> Result<Machine, RecordError> {
        let path = dir.join(SNAPSHOT_FILE);
        let current = if path.exists() {
            let (recs, torn) = records::read(&path)?;
            if let Some(t) = torn {
                return Err(RecordError::Corrupt {
                    path,
                    offset: t.offset,
                    detail: "a snapshot is written whole and renamed into place, so a cut-off one is damage".into(),
                });
            }
            let [rec] = recs.as_slice() else {
                return Err(RecordError::Corrupt {
                    path,
                    offset: 0,
                    detail: format!("a snapshot holds one record, this one {}", recs.len()),
                });
            };
            let stored: Stored =
                serde_json::from_slice(&rec.payload).map_err(|e| RecordError::Corrupt {
                    path: path.clone(),
                    offset: rec.offset,
                    detail: format!("not a journal snapshot: {e}"),
                })?;
            Some(stored)
        } else {
            None
        };
        Ok(Machine {
            shared: Arc::new(Shared {
                position: Mutex::default(),
                current: Mutex::new(current),
                applied: watch::channel(Applied::default()).0,
                path,
            }),
        })
    }

    /// The applied state, updated after every entry.
    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.shared.applied.subscribe()
    }

    /// The state as of now.
    pub fn state(&self) -> Applied {
        self.shared.applied.borrow().clone()
    }

    fn store(&self, snap: Stored, force: bool) -> io::Result<()> {
        let mut cur = lock(&self.shared.current);
        if !force
            && cur
                .as_ref()
                .is_some_and(|c| c.meta.last_log_id >= snap.meta.last_log_id)
        {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&snap).map_err(io::Error::other)?;
        RecordLog::create_with(&self.shared.path, &[&bytes])
            .map_err(|e| io::Error::other(e.to_string()))?;
        *cur = Some(snap);
        Ok(())
    }

    /// Applies one proposal to the state: what it answers.
    fn apply_one(&self, proposal: Proposal) -> Result<u64, String> {
        let mut answer = Err(String::new());
        self.shared.applied.send_if_modified(|state| {
            // `Applied::apply` changes nothing when it refuses, so an entry
            // applies in place; an import goes onto a copy, all or nothing.
            let applied = match &proposal {
                Proposal::Entry(entry) => state.apply(entry).map_err(|e| e.to_string()),
                Proposal::Import { entries, from } => {
                    import(state, entries, from).map(|next| *state = next)
                }
            };
            match applied {
                Ok(()) => {
                    answer = Ok(state.applied.saturating_sub(1));
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a committed journal entry does not apply; it changes nothing");
                    answer = Err(e);
                    false
                }
            }
        });
        answer
    }
}

/// `state` with a whole older journal applied: only onto a journal that
/// has recorded nothing yet.
fn import(
    state: &Applied,
    entries: &[crate::journal::Entry],
    from: &str,
) -> Result<Applied, String> {
    if state.journal_id.is_some() || !state.rollouts.is_empty() || !state.firing.is_empty() {
        return Err(format!(
            "refused to import {from}: this journal already holds a history (journal {:?}, {} rollouts)",
            state.journal_id,
            state.rollouts.len()
        ));
    }
    let mut next = state.clone();
    for e in entries {
        next.apply(e)
            .map_err(|err| format!("cannot import {from}: {err}"))?;
    }
    Ok(next)
}

impl RaftSnapshotBuilder<TypeConfig> for Machine {
    type SnapshotData = MachineSnapshot;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf, io::Error> {
        let snap = {
            let pos = lock(&self.shared.position);
            Stored {
                meta: SnapshotMeta {
                    last_log_id: pos.last_applied,
                    last_membership: pos.membership.clone(),
                },
                data: MachineSnapshot {
                    applied: self.state(),
                },
            }
        };
        self.store(snap.clone(), false)?;
        tracing::info!(
            last_log_index = ?snap.meta.last_log_id.as_ref().map(|l| l.index),
            rollouts = snap.data.applied.rollouts.len(),
            "journal snapshot built"
        );
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: snap.data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotData = MachineSnapshot;
    type SnapshotBuilder = Machine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let pos = lock(&self.shared.position);
        Ok((pos.last_applied, pos.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let answer = match entry.payload {
                EntryPayload::Blank => Ok(0),
                EntryPayload::Normal(p) => self.apply_one(p),
                EntryPayload::Membership(m) => {
                    lock(&self.shared.position).membership =
                        openraft::StoredMembership::new(Some(entry.log_id), m);
                    Ok(0)
                }
            };
            lock(&self.shared.position).last_applied = Some(entry.log_id);
            if let Some(r) = responder {
                r.send(answer);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: MachineSnapshot,
    ) -> Result<(), io::Error> {
        tracing::info!(
            last_log_index = ?meta.last_log_id.as_ref().map(|l| l.index),
            rollouts = snapshot.applied.rollouts.len(),
            "installing a journal snapshot"
        );
        self.store(
            Stored {
                meta: meta.clone(),
                data: snapshot.clone(),
            },
            true,
        )?;
        {
            let mut pos = lock(&self.shared.position);
            pos.last_applied = meta.last_log_id;
            pos.membership = meta.last_membership.clone();
        }
        self.shared.applied.send_replace(snapshot.applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf>, io::Error> {
        Ok(lock(&self.shared.current).clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: s.data,
        }))
    }
}
