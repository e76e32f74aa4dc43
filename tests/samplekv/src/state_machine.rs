//! The replicated KV map, its snapshots and its backup documents.
//!
//! The map lives in memory; durability comes from the log (committed entries
//! are re-applied at start-up, since the log store saves the committed log
//! id) plus a snapshot file (`<data-dir>/snapshot.json`, replaced
//! atomically) that openraft builds every few thousand entries before it
//! purges the log. Reads (`get`) take a read lock that is never held across
//! an await, so a paused or throttled apply never blocks them.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, StoredMembership as RStoredMembership};
use serde::{Deserialize, Serialize};

use crate::faults::Faults;
use crate::types::{KvCommand, LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// The snapshot file's name inside the data dir.
pub const SNAPSHOT_FILE: &str = "snapshot.json";

/// The first word of a backup document (see [`StateMachine::backup_document`]).
pub const BACKUP_FORMAT: &str = "samplekv-backup/1";

/// A parsed backup document: its applied index and map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDocument {
    pub applied_index: u64,
    pub kv: BTreeMap<String, String>,
}

impl BackupDocument {
    /// Reads a whole document, checking its header against its body.
    pub fn parse(bytes: &[u8]) -> Result<BackupDocument, String> {
        let nl = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("no header line")?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|e| e.to_string())?;
        let (index, keys) = parse_backup_header(header)?;
        let kv: BTreeMap<String, String> =
            serde_json::from_slice(&bytes[nl + 1..]).map_err(|e| format!("body: {e}"))?;
        if kv.len() as u64 != keys {
            return Err(format!(
                "header says {keys} keys, the body has {}",
                kv.len()
            ));
        }
        Ok(BackupDocument {
            applied_index: index,
            kv,
        })
    }
}

/// Writes a backup document (see [`BACKUP_FORMAT`]) of `kv` at applied
/// index `index`: its header line names the index, so a reader learns the
/// revision from the backup itself; a JSON object of the map follows.
pub fn write_backup_document(
    index: u64,
    kv: &BTreeMap<String, String>,
    mut out: impl io::Write,
) -> io::Result<()> {
    writeln!(
        out,
        "{BACKUP_FORMAT} applied_index={index} keys={}",
        kv.len()
    )?;
    serde_json::to_writer(&mut out, kv).map_err(io::Error::from)?;
    out.flush()
}

/// `(applied_index, keys)` from a backup document's header line.
pub fn parse_backup_header(line: &str) -> Result<(u64, u64), String> {
    let mut words = line.split_whitespace();
    if words.next() != Some(BACKUP_FORMAT) {
        return Err(format!("not a {BACKUP_FORMAT} document: {line:?}"));
    }
    let mut field = |name: &str| -> Result<u64, String> {
        words
            .next()
            .and_then(|w| w.strip_prefix(name))
            .and_then(|w| w.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("header {line:?} has no {name}"))
    };
    Ok((field("applied_index")?, field("keys")?))
}

/// A snapshot's data: the whole map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSnapshot {
    /// Every key and value.
    pub kv: BTreeMap<String, String>,
}

/// A snapshot as stored on disk and sent to followers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    pub(crate) data: KvSnapshot,
}

/// A snapshot of this configuration.
pub type KvSnapshotOf = Snapshot<
    openraft::alias::CommittedLeaderIdOf<TypeConfig>,
    crate::types::NodeId,
    openraft::BasicNode,
    KvSnapshot,
>;

/// Why the state machine could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// The snapshot file is unreadable.
    #[error("snapshot {}: {detail}", path.display())]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

#[derive(Debug, Default)]
struct SmData {
    kv: BTreeMap<String, String>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

#[derive(Debug)]
struct Shared {
    data: RwLock<SmData>,
    current: Mutex<Option<StoredSnapshot>>,
    path: PathBuf,
    faults: Faults,
}

/// The state machine; cheap to clone (clones share one map).
#[derive(Debug, Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl StateMachine {
    /// Opens the state machine in `data_dir`: an empty map plus the last
    /// snapshot, which openraft installs and then re-applies the log over.
    pub fn open(data_dir: &Path, faults: Faults) -> Result<StateMachine, StateMachineError> {
        let path = data_dir.join(SNAPSHOT_FILE);
        let current =
            match std::fs::read(&path) {
                Ok(bytes) => Some(serde_json::from_slice::<StoredSnapshot>(&bytes).map_err(
                    |e| StateMachineError::Snapshot {
                        path: path.clone(),
                        detail: e.to_string(),
                    },
                )?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(StateMachineError::Snapshot {
                        path,
                        detail: e.to_string(),
                    });
                }
            };
        Ok(StateMachine {
            shared: Arc::new(Shared {
                data: RwLock::new(SmData::default()),
                current: Mutex::new(current),
                path,
                faults,
            }),
        })
    }

    /// Reads one key from the local map (no consistency check).
    pub fn get(&self, key: &str) -> Option<String> {
        self.read().kv.get(key).cloned()
    }

    /// The index of the last entry applied, entry by entry (openraft's
    /// metrics move only once a whole batch is applied).
    pub fn applied_index(&self) -> Option<u64> {
        self.read().last_applied.as_ref().map(|l| l.index)
    }

    /// The applied index and a copy of the map, as of one instant. The
    /// read lock (which apply waits on) is held only for the copy, not for
    /// the far slower serialization of a backup document.
    pub fn backup_copy(&self) -> (u64, BTreeMap<String, String>) {
        let d = self.read();
        (d.last_applied.as_ref().map_or(0, |l| l.index), d.kv.clone())
    }

    /// A whole backup document of the applied state as of one instant (see
    /// [`write_backup_document`]).
    pub fn backup_document(&self) -> Vec<u8> {
        let (index, kv) = self.backup_copy();
        let mut out = Vec::new();
        write_backup_document(index, &kv, &mut out).expect("a string map serializes");
        out
    }

    /// The fault switches this member runs with.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The number of keys in the local map.
    pub fn len(&self) -> usize {
        self.read().kv.len()
    }

    /// True when the local map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SmData> {
        self.shared.data.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SmData> {
        self.shared.data.write().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<StoredSnapshot>> {
        self.shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `snap` the current snapshot (on disk first) unless a newer one is.
    fn store_snapshot(&self, snap: StoredSnapshot, force: bool) -> io::Result<()> {
        let mut cur = self.current();
        if !force
            && let Some(c) = cur.as_ref()
            && c.meta.last_log_id >= snap.meta.last_log_id
        {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&snap).map_err(io::Error::other)?;
        crate::fsutil::write_atomic(&self.shared.path, &bytes)?;
        *cur = Some(snap);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = KvSnapshot;

    async fn build_snapshot(&mut self) -> Result<KvSnapshotOf, io::Error> {
        let snap = {
            let d = self.read();
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: d.last_applied,
                    last_membership: d.membership.clone(),
                },
                data: KvSnapshot { kv: d.kv.clone() },
            }
        };
        self.store_snapshot(snap.clone(), false)?;
        tracing::info!(
            last_log_index = ?snap.meta.last_log_id.as_ref().map(|l| l.index),
            keys = snap.data.kv.len(),
            "snapshot built"
        );
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: snap.data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = KvSnapshot;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let d = self.read();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            self.shared.faults.before_apply().await;
            {
                let mut d = self.write();
                d.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(KvCommand::Put { key, value }) => {
                        d.kv.insert(key, value);
                    }
                    EntryPayload::Membership(m) => {
                        d.membership = RStoredMembership::new(Some(entry.log_id), m);
                    }
                }
            }
            if let Some(r) = responder {
                r.send(());
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
        snapshot: KvSnapshot,
    ) -> Result<(), io::Error> {
        tracing::info!(
            last_log_index = ?meta.last_log_id.as_ref().map(|l| l.index),
            keys = snapshot.kv.len(),
            "installing snapshot"
        );
        self.store_snapshot(
            StoredSnapshot {
                meta: meta.clone(),
                data: snapshot.clone(),
            },
            true,
        )?;
        let mut d = self.write();
        d.kv = snapshot.kv;
        d.last_applied = meta.last_log_id;
        d.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<KvSnapshotOf>, io::Error> {
        Ok(self.current().as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: s.data.clone(),
        }))
    }
}

#[cfg(test)]
mod backup_tests {
    use super::*;

    #[test]
    fn a_backup_document_names_its_applied_index_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path(), Faults::default()).unwrap();
        {
            let mut d = sm.write();
            d.kv.insert("a".into(), "1".into());
            d.kv.insert("b".into(), "2".into());
            d.last_applied = Some(openraft::LogId::new(
                openraft::impls::leader_id_adv::LeaderId {
                    term: 1,
                    node_id: 1,
                },
                7,
            ));
        }
        let doc = sm.backup_document();
        let text = String::from_utf8(doc.clone()).unwrap();
        assert!(
            text.starts_with("samplekv-backup/1 applied_index=7 keys=2\n"),
            "{text}"
        );
        let parsed = BackupDocument::parse(&doc).unwrap();
        assert_eq!(parsed.applied_index, 7);
        assert_eq!(parsed.kv.len(), 2);
        // A body that does not match its header is refused.
        let bad = text.replace("keys=2", "keys=3");
        assert!(BackupDocument::parse(bad.as_bytes()).is_err());
        assert!(parse_backup_header("etcd 3").is_err());
    }
}
