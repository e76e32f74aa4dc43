//! Restoring a member's data dir from a backup document
//! ([`crate::state_machine::BACKUP_FORMAT`]), as `samplekv-restore` does for
//! baton's restore.
//!
//! Every member of the cluster is restored from the same document while all
//! are stopped, as an etcd cluster is from one snapshot: each data dir then
//! holds that document's map as a snapshot at its applied index, under the
//! membership of `--peers`, and a log with nothing after it (compacted up to
//! the snapshot, committed there). Started, the members elect a leader over
//! identical logs and go on from the backup's revision. The data dir that
//! was there is moved aside to `<data-dir>.pre-restore-<unix-ms>`, never
//! deleted, and no `FORMAT` marker is written: the release the member is
//! started on stamps its own, as on a fresh dir.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::impls::leader_id_adv::LeaderId;
use openraft::{BasicNode, Membership, StoredMembership};

use crate::state_machine::{BackupDocument, KvSnapshot, SNAPSHOT_FILE, StoredSnapshot};
use crate::types::{LogId, NodeId, SnapshotMeta, Vote};

/// Why a restore did not happen; nothing was changed unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("backup {path}: {detail}")]
    BadBackup { path: PathBuf, detail: String },
    #[error("{0}")]
    Usage(String),
    #[error("restoring into {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The applied index the restored member starts from.
    pub applied_index: u64,
    pub keys: usize,
    /// Where the data dir that was there went; None if there was none.
    pub moved_aside: Option<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Restores `data_dir` from the backup document at `backup`, for a cluster
/// of `peers`. The document is read and checked in full before anything on
/// disk is touched.
pub fn restore(
    data_dir: &Path,
    backup: &Path,
    peers: &BTreeMap<NodeId, String>,
) -> Result<Restored, RestoreError> {
    let bytes = std::fs::read(backup).map_err(io(backup))?;
    let bad = |detail: String| RestoreError::BadBackup {
        path: backup.to_owned(),
        detail,
    };
    let doc = BackupDocument::parse(&bytes).map_err(bad)?;
    if doc.applied_index == 0 {
        return Err(bad(
            "its applied index is 0: it was taken before the cluster applied anything, and holds nothing to restore".into(),
        ));
    }
    let Some(&first) = peers.keys().next() else {
        return Err(RestoreError::Usage("--peers names no member".into()));
    };
    let moved_aside = move_aside(data_dir)?;
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;

    // One synthetic leader id for every member: term 1, the lowest id. The
    // vote is at that term and not committed, so the first election after
    // the start runs at term 2 over logs that end at the same id.
    let upto: LogId = LogId::new(
        LeaderId {
            term: 1,
            node_id: first,
        },
        doc.applied_index,
    );
    let voters: BTreeSet<NodeId> = peers.keys().copied().collect();
    let nodes: BTreeMap<NodeId, BasicNode> = peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    let membership = Membership::new(vec![voters], nodes)
        .map_err(|e| RestoreError::Usage(format!("--peers: {e}")))?;
    let keys = doc.kv.len();
    let snapshot = StoredSnapshot {
        meta: SnapshotMeta {
            last_log_id: Some(upto),
            last_membership: StoredMembership::new(Some(upto), membership),
        },
        data: KvSnapshot { kv: doc.kv },
    };
    let snap_path = data_dir.join(SNAPSHOT_FILE);
    let body = serde_json::to_vec(&snapshot).map_err(|e| bad(e.to_string()))?;
    crate::fsutil::write_atomic(&snap_path, &body).map_err(io(&snap_path))?;
    crate::log_store::write_compacted(data_dir, Vote::new(1, first), upto).map_err(io(data_dir))?;
    Ok(Restored {
        applied_index: doc.applied_index,
        keys,
        moved_aside,
    })
}

/// Renames a non-empty `data_dir` to `<data_dir>.pre-restore-<unix-ms>`.
fn move_aside(data_dir: &Path) -> Result<Option<PathBuf>, RestoreError> {
    let empty = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(data_dir)(e)),
    };
    if empty {
        return Ok(None);
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut name = data_dir.as_os_str().to_owned();
    name.push(format!(".pre-restore-{ms}"));
    let aside = PathBuf::from(name);
    std::fs::rename(data_dir, &aside).map_err(io(data_dir))?;
    Ok(Some(aside))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(index: u64, kv: &[(&str, &str)]) -> Vec<u8> {
        let map: BTreeMap<&str, &str> = kv.iter().copied().collect();
        let mut out = format!(
            "{} applied_index={index} keys={}\n",
            crate::state_machine::BACKUP_FORMAT,
            map.len()
        )
        .into_bytes();
        out.extend(serde_json::to_vec(&map).unwrap());
        out
    }

    fn peers() -> BTreeMap<NodeId, String> {
        [(1, "127.0.0.1:1".to_owned()), (2, "127.0.0.1:2".to_owned())].into()
    }

    #[test]
    fn a_bad_backup_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("raft-log.jsonl"), b"old").unwrap();
        let file = dir.path().join("b");
        for (body, want) in [
            (b"garbage".to_vec(), "no header line"),
            (doc(0, &[]), "applied index is 0"),
            (
                b"samplekv-backup/1 applied_index=3 keys=2\n{\"a\":\"1\"}".to_vec(),
                "header says 2 keys",
            ),
        ] {
            std::fs::write(&file, &body).unwrap();
            let err = restore(&data, &file, &peers()).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert_eq!(std::fs::read(data.join("raft-log.jsonl")).unwrap(), b"old");
        }
    }

    #[test]
    fn the_old_dir_is_moved_aside_and_the_new_one_holds_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("raft-log.jsonl"), b"old").unwrap();
        let file = dir.path().join("b");
        std::fs::write(&file, doc(41, &[("a", "1"), ("b", "2")])).unwrap();
        let r = restore(&data, &file, &peers()).unwrap();
        assert_eq!((r.applied_index, r.keys), (41, 2));
        let aside = r.moved_aside.expect("moved aside");
        assert_eq!(std::fs::read(aside.join("raft-log.jsonl")).unwrap(), b"old");
        let snap: StoredSnapshot =
            serde_json::from_slice(&std::fs::read(data.join(SNAPSHOT_FILE)).unwrap()).unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(41));
        assert_eq!(snap.data.kv.get("b").map(String::as_str), Some("2"));
        assert!(!data.join(crate::format::FORMAT_FILE).exists());
        // A second restore into the now-populated dir moves that aside too.
        let again = restore(&data, &file, &peers()).unwrap();
        assert!(again.moved_aside.is_some());
    }
}
