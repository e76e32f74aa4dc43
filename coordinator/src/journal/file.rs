//! The single-writer journal of the version before replication: one
//! checksummed record per entry in `<state_dir>/journal.log` (a
//! [`baton_store::records`] log), appended and synced before it is applied.
//! The coordinator now runs [`super::raft::RaftJournal`]; this module keeps
//! [`read_legacy`], which reads such a file (or the older `journal.jsonl`)
//! without changing it for the one-time import, and [`FileJournal`] itself,
//! a [`Journal`] on one file that tests use.
//!
//! This module owns the file. Opening it replays every record: a torn tail
//! (a crash or a full disk mid-append) was never applied, so it is cut off
//! with a warning naming its offset; anything else that does not check out
//! refuses to open, naming the file and the offset, so a history is never
//! lost silently. A `journal.jsonl` written before this format is imported
//! once (into a new log, atomically) and then renamed
//! `journal.jsonl.imported`. A proposal is applied to a clone of the state,
//! then written, then published, under one lock, so the file and the
//! published state never disagree; a write that fails records nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use baton_store::records::{self, RecordError, RecordLog};
use tokio::sync::watch;

use super::{Applied, Entry, Journal, JournalError, MetaEntry};

/// The journal file, under the state dir.
pub const FILE: &str = "journal.log";
/// Space kept written past the last entry: when the disk fills, enough to
/// record a pause at a safe point (a member carried back to serving, its
/// results, the alert) before anything is refused.
pub const RESERVE: u64 = 32 << 10;
/// The JSON-lines journal of earlier versions, imported once.
pub const LEGACY_FILE: &str = "journal.jsonl";

/// A new journal id: 12 hex digits from the kernel's random source.
pub(crate) fn new_journal_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 6];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The file journal.
#[derive(Debug)]
pub struct FileJournal {
    path: PathBuf,
    /// The open log; held across apply-write-publish so proposals are
    /// recorded one at a time, in order.
    log: Mutex<RecordLog>,
    /// Publishes the applied state to every subscriber (the driver, tests).
    applied: watch::Sender<Applied>,
}

impl FileJournal {
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join(FILE);
        fs::create_dir_all(state_dir).map_err(|source| JournalError::Write {
            path: path.clone(),
            source,
        })?;
        let legacy = state_dir.join(LEGACY_FILE);
        if !path.exists() && legacy.exists() {
            import_legacy(&legacy, &path)?;
        }
        let opened = RecordLog::open(&path).map_err(JournalError::Log)?;
        if let Some(torn) = opened.torn {
            tracing::warn!(
                path = %path.display(), offset = torn.offset, bytes = torn.bytes,
                "cut off a torn journal tail (an append a crash or a full disk interrupted; it was never applied)"
            );
        }
        let entries = decode(&path, &opened.records)?;
        let mut applied = Applied::replay(&entries).map_err(|source| JournalError::Replay {
            path: path.clone(),
            source,
        })?;
        let mut log = opened.log;
        if applied.journal_id.is_none() {
            // A new journal, or one from before journals had ids: name it
            // now, before any rollout it records.
            let created = Entry::Meta(MetaEntry::Created {
                journal_id: new_journal_id().map_err(|source| JournalError::Write {
                    path: path.clone(),
                    source,
                })?,
            });
            applied = applied.applying(&created)?;
            let bytes = serde_json::to_vec(&created).map_err(|e| JournalError::Write {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            log.append(&bytes).map_err(JournalError::Log)?;
        }
        if !log.keep_reserve(RESERVE).map_err(JournalError::Log)? {
            tracing::warn!(path = %path.display(), reserve = RESERVE, "the journal's disk is full: starting on what is left of its reserve");
        }
        if legacy.exists() {
            // Imported by an earlier start that stopped before the rename.
            rename_imported(&legacy)?;
        }
        Ok(FileJournal {
            path,
            log: Mutex::new(log),
            applied: watch::channel(applied).0,
        })
    }

    /// The journal file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies, writes and publishes one entry (blocking IO, under the lock).
    fn record(&self, entry: &Entry) -> Result<u64, JournalError> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.applied.borrow().applying(entry)?;
        let bytes = serde_json::to_vec(entry).map_err(|e| JournalError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        log.append(&bytes).map_err(JournalError::Log)?;
        let index = next.applied - 1;
        self.applied.send_replace(next);
        Ok(index)
    }
}

#[tonic::async_trait]
impl Journal for FileJournal {
    async fn propose(&self, entry: Entry) -> Result<u64, JournalError> {
        self.record(&entry)
    }

    fn subscribe(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    fn low_space(&self) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .low_space()
    }

    async fn check_space(&self) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retry_reserve()
    }
}

/// Imports the JSON-lines journal at `legacy` into a new record log at
/// `path` (see [`baton_store::records::parse_legacy_lines`]: only a torn
/// last line is dropped), after checking that it replays.
fn import_legacy(legacy: &Path, path: &Path) -> Result<(), JournalError> {
    let entries = read_jsonl(legacy)?;
    replays(legacy, &entries)?;
    let encoded: Vec<Vec<u8>> = entries
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()
        .map_err(|e| JournalError::Write {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })?;
    let records: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    RecordLog::create_with(path, &records).map_err(JournalError::Log)?;
    tracing::info!(
        from = %legacy.display(), to = %path.display(), entries = entries.len(),
        "imported the JSON-lines journal into the checksummed journal"
    );
    rename_imported(legacy)
}

/// A journal from before replication, read for import into the replicated
/// one: its entries and the files that hold them.
#[derive(Debug)]
pub struct Legacy {
    pub entries: Vec<Entry>,
    /// The file the entries come from (named in the import).
    pub source: PathBuf,
    /// Every legacy file to set aside once the import is recorded.
    pub files: Vec<PathBuf>,
}

impl Legacy {
    /// The id the old journal recorded, if it did.
    pub fn journal_id(&self) -> Option<&str> {
        self.entries.iter().find_map(|e| match e {
            Entry::Meta(MetaEntry::Created { journal_id }) => Some(journal_id.as_str()),
            _ => None,
        })
    }

    /// Whether `state` already holds this history (imported by an earlier
    /// start that stopped before setting the files aside).
    pub fn is_in(&self, state: &Applied) -> bool {
        match self.journal_id() {
            Some(id) => state.journal_id.as_deref() == Some(id),
            None => {
                let ours = Applied::replay(&self.entries).ok();
                let first = ours.as_ref().and_then(|a| a.rollouts.first());
                match (first, state.rollouts.first()) {
                    (Some(a), Some(b)) => a.id == b.id && a.started_at == b.started_at,
                    (None, _) => true,
                    _ => false,
                }
            }
        }
    }

    /// Sets every legacy file aside (`<name>.imported`).
    pub fn set_aside(&self) -> Result<(), JournalError> {
        for f in &self.files {
            if f.exists() {
                rename_imported(f)?;
            }
        }
        Ok(())
    }
}

/// Reads, without changing anything, the journal an earlier version left in
/// `state_dir`: the checksummed `journal.log`, else the JSON-lines
/// `journal.jsonl`. `None` when there is neither. A torn tail is left out
/// (it was never applied); anything else that does not check out refuses,
/// naming the file and the offset or line.
pub fn read_legacy(state_dir: &Path) -> Result<Option<Legacy>, JournalError> {
    let log = state_dir.join(FILE);
    let jsonl = state_dir.join(LEGACY_FILE);
    let files: Vec<PathBuf> = [&log, &jsonl]
        .into_iter()
        .filter(|p| p.exists())
        .cloned()
        .collect();
    let (source, entries) = if log.exists() {
        let (recs, torn) = records::read(&log).map_err(JournalError::Log)?;
        if let Some(t) = torn {
            tracing::warn!(path = %log.display(), offset = t.offset, "not importing a torn journal tail");
        }
        let entries = decode(&log, &recs)?;
        (log, entries)
    } else if jsonl.exists() {
        let entries = read_jsonl(&jsonl)?;
        (jsonl, entries)
    } else {
        return Ok(None);
    };
    replays(&source, &entries)?;
    Ok(Some(Legacy {
        entries,
        source,
        files,
    }))
}

/// The journal entries `records` of the log at `path` hold; a record that
/// checks out but is not an entry is corruption at its offset.
fn decode(path: &Path, records: &[records::Record]) -> Result<Vec<Entry>, JournalError> {
    records
        .iter()
        .map(|r| {
            std::str::from_utf8(&r.payload)
                .map_err(|e| e.to_string())
                .and_then(|text| Entry::from_json(text).map_err(|e| e.to_string()))
                .map_err(|detail| {
                    JournalError::Log(RecordError::Corrupt {
                        path: path.to_owned(),
                        offset: r.offset,
                        detail: format!(
                            "a record that checks out is not a journal entry: {detail}"
                        ),
                    })
                })
        })
        .collect()
}

/// The entries of the JSON-lines journal at `legacy` (see
/// [`baton_store::records::parse_legacy_lines`]: only a torn last line is
/// dropped, with a warning).
fn read_jsonl(legacy: &Path) -> Result<Vec<Entry>, JournalError> {
    let bytes = fs::read(legacy).map_err(|source| JournalError::Write {
        path: legacy.to_owned(),
        source,
    })?;
    let (entries, torn) = records::parse_legacy_lines(&bytes, |line| {
        Entry::from_json(line).map_err(|e| e.to_string())
    })
    .map_err(|(line, detail)| JournalError::Corrupt {
        path: legacy.to_owned(),
        line,
        detail,
    })?;
    if let Some(line) = torn {
        tracing::warn!(path = %legacy.display(), line, "not importing a torn last journal line");
    }
    Ok(entries)
}

/// Refuses `entries` (from `path`) unless they replay from nothing.
fn replays(path: &Path, entries: &[Entry]) -> Result<(), JournalError> {
    Applied::replay(entries)
        .map(drop)
        .map_err(|source| JournalError::Replay {
            path: path.to_owned(),
            source,
        })
}

fn rename_imported(legacy: &Path) -> Result<(), JournalError> {
    records::set_aside_imported(legacy)
        .map(drop)
        .map_err(|source| JournalError::Write {
            path: legacy.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use baton_planner::UnixMs;
    use baton_planner::alerts::{Alert, CATCH_UP_STALLED};
    use baton_planner::rollout::Event;

    use super::super::AlertEntry;
    use super::super::fixtures::started;
    use super::*;

    fn legacy_line(e: &Entry) -> String {
        serde_json::to_string(e).unwrap()
    }

    #[tokio::test]
    async fn events_survive_a_reopen_and_replay_per_rollout() {
        let dir = tempfile::tempdir().unwrap();
        let j = FileJournal::open(dir.path()).unwrap();
        j.propose(started("r1").into()).await.unwrap();
        j.propose(
            Event::Paused {
                by: None,
                reason: "x".into(),
                at: UnixMs(2),
            }
            .into(),
        )
        .await
        .unwrap();
        j.propose(started("r2").into()).await.unwrap();
        drop(j);
        let j = FileJournal::open(dir.path()).unwrap();
        let rollouts = j.subscribe().borrow().rollouts.clone();
        assert_eq!(rollouts.len(), 2);
        assert!(matches!(
            rollouts[0].phase,
            baton_planner::Phase::Paused { .. }
        ));
        assert_eq!(rollouts[1].id, "r2");
    }

    #[tokio::test]
    async fn an_entry_that_does_not_apply_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let j = FileJournal::open(dir.path()).unwrap();
        let rx = j.subscribe();
        let before = fs::read(j.path()).unwrap();
        let err = j
            .propose(
                Event::Resumed {
                    by: None,
                    at: UnixMs(1),
                }
                .into(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, JournalError::DoesNotApply { .. }), "{err}");
        assert_eq!(fs::read(j.path()).unwrap(), before);
        assert!(!rx.has_changed().unwrap());
        // Index 0 is the journal's own `created` entry.
        assert_eq!(j.propose(started("r1").into()).await.unwrap(), 1);
        assert!(rx.has_changed().unwrap());
    }

    #[tokio::test]
    async fn the_firing_set_survives_a_reopen_beside_old_events() {
        let dir = tempfile::tempdir().unwrap();
        // A journal written before alerts were journaled (and before the
        // checksummed format).
        let line = legacy_line(&started("r1").into());
        fs::write(dir.path().join(LEGACY_FILE), format!("{line}\n")).unwrap();
        let j = FileJournal::open(dir.path()).unwrap();
        let a = Alert::firing(CATCH_UP_STALLED, "c", Some("n2"), Some("r1"), UnixMs(5))
            .annotate("lag", "40");
        j.propose(AlertEntry::Fired { alert: a.clone() }.into())
            .await
            .unwrap();
        drop(j);
        let j = FileJournal::open(dir.path()).unwrap();
        let applied = j.subscribe().borrow().clone();
        assert_eq!(applied.rollouts.len(), 1);
        assert_eq!(applied.firing.values().collect::<Vec<_>>(), vec![&a]);
        j.propose(
            AlertEntry::Resolved {
                alert: a.resolved(UnixMs(9)),
            }
            .into(),
        )
        .await
        .unwrap();
        drop(j);
        let j = FileJournal::open(dir.path()).unwrap();
        assert!(j.subscribe().borrow().firing.is_empty());
    }

    #[tokio::test]
    async fn a_legacy_journal_is_imported_once_and_its_torn_line_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            legacy_line(&started("r1").into()),
            legacy_line(&Event::Completed { at: UnixMs(3) }.into()),
        ];
        fs::write(
            dir.path().join(LEGACY_FILE),
            format!("{}\n{}\n{{\"event\":\"pau", lines[0], lines[1]),
        )
        .unwrap();
        let j = FileJournal::open(dir.path()).unwrap();
        assert_eq!(
            j.subscribe().borrow().applied,
            3,
            "2 lines and the journal's id"
        );
        assert!(!dir.path().join(LEGACY_FILE).exists());
        assert!(dir.path().join("journal.jsonl.imported").exists());
        j.propose(started("r2").into()).await.unwrap();
        drop(j);
        // A second start reads the log; the imported file is left alone.
        let j = FileJournal::open(dir.path()).unwrap();
        assert_eq!(j.subscribe().borrow().applied, 4);
        assert_eq!(j.subscribe().borrow().rollouts.len(), 2);
    }

    #[test]
    fn a_legacy_journal_with_a_bad_line_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let line = legacy_line(&started("r1").into());
        let legacy = dir.path().join(LEGACY_FILE);
        for bad in [&b"garbage"[..], &b"{\"event\":\"started\xff\"}"[..]] {
            let mut text = bad.to_vec();
            text.push(b'\n');
            text.extend_from_slice(line.as_bytes());
            text.push(b'\n');
            fs::write(&legacy, &text).unwrap();
            let err = FileJournal::open(dir.path()).unwrap_err().to_string();
            assert!(err.contains("line 1"), "{err}");
            assert_eq!(fs::read(&legacy).unwrap(), text);
            assert!(!dir.path().join(FILE).exists());
        }
        // An appended 0xff (a torn last line) imports the rest.
        let mut bytes = format!("{line}\n").into_bytes();
        bytes.push(0xff);
        fs::write(&legacy, &bytes).unwrap();
        let j = FileJournal::open(dir.path()).unwrap();
        assert_eq!(j.subscribe().borrow().applied, 2);
    }

    #[tokio::test]
    async fn an_appended_byte_is_cut_off_and_a_flipped_one_refuses_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let j = FileJournal::open(dir.path()).unwrap();
        j.propose(started("r1").into()).await.unwrap();
        j.propose(Event::Completed { at: UnixMs(3) }.into())
            .await
            .unwrap();
        let path = j.path().to_owned();
        drop(j);
        let good = fs::read(&path).unwrap();
        let mut torn = good.clone();
        torn.push(0xff);
        fs::write(&path, &torn).unwrap();
        let j = FileJournal::open(dir.path()).unwrap();
        assert_eq!(j.subscribe().borrow().applied, 3, "history is intact");
        drop(j);
        assert_eq!(fs::read(&path).unwrap(), good);
        let mut flipped = good.clone();
        flipped[20] ^= 0x04;
        fs::write(&path, &flipped).unwrap();
        let err = FileJournal::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("journal.log is corrupt at byte offset 8"),
            "{err}"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            flipped,
            "a refusal changes nothing"
        );
    }

    #[tokio::test]
    async fn a_journal_written_by_the_jsonl_coordinator_imports_whole() {
        // A demo rollout's journal.jsonl, written by the coordinator at
        // 0eeb9eb (the last JSON-lines version): backup, 3 members, handover.
        let dir = tempfile::tempdir().unwrap();
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/journal-0eeb9eb.jsonl"
        );
        fs::copy(fixture, dir.path().join(LEGACY_FILE)).unwrap();
        let check = |j: &FileJournal| {
            let applied = j.subscribe().borrow().clone();
            assert_eq!(applied.applied, 43, "42 lines and the journal's id");
            let r = &applied.rollouts[0];
            assert_eq!((applied.rollouts.len(), r.id.as_str()), (1, "r1-v2"));
            assert!(
                matches!(r.phase, baton_planner::Phase::Completed),
                "{:?}",
                r.phase
            );
            assert_eq!(r.commands.len(), 14);
            assert!(r.commands.values().all(|c| matches!(c.result, Some(Ok(_)))));
        };
        let j = FileJournal::open(dir.path()).unwrap();
        check(&j);
        drop(j);
        assert_eq!(
            fs::read(dir.path().join("journal.jsonl.imported")).unwrap(),
            fs::read(fixture).unwrap(),
            "the original is kept as it was"
        );
        check(&FileJournal::open(dir.path()).unwrap());
    }

    #[tokio::test]
    async fn a_journal_is_named_once_and_a_new_one_never_reuses_its_ids() {
        let dir = tempfile::tempdir().unwrap();
        let j = FileJournal::open(dir.path()).unwrap();
        let id = j.subscribe().borrow().journal_id.clone().unwrap();
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        drop(j);
        let j = FileJournal::open(dir.path()).unwrap();
        assert_eq!(
            j.subscribe().borrow().journal_id.as_deref(),
            Some(id.as_str())
        );
        assert_eq!(j.subscribe().borrow().applied, 1, "named once");
        let err = j
            .propose(
                MetaEntry::Created {
                    journal_id: "0".into(),
                }
                .into(),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already has id"), "{err}");
        drop(j);
        // The journal is lost; the new one has another name.
        fs::remove_file(dir.path().join(FILE)).unwrap();
        let j = FileJournal::open(dir.path()).unwrap();
        let again = j.subscribe().borrow().journal_id.clone().unwrap();
        assert_ne!(again, id);
    }
}
