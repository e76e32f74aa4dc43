//! The embedded journal: one JSON entry per line in
//! `<state_dir>/journal.jsonl`, appended and fsynced before it is applied.
//!
//! This module owns the file. Opening it replays every line (a torn last
//! line, from a crash mid-write, was never applied and is skipped; any other
//! bad line refuses to open, naming the line). A proposal is applied to a
//! clone of the state, then written, then published, under one lock, so the
//! file and the published state never disagree.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::watch;

use super::{Applied, Entry, Journal, JournalError};

/// The file journal.
#[derive(Debug)]
pub struct FileJournal {
    path: PathBuf,
    /// The open file; held across apply-write-publish so proposals are
    /// recorded one at a time, in order.
    file: Mutex<fs::File>,
    /// Publishes the applied state to every subscriber (the driver, tests).
    applied: watch::Sender<Applied>,
}

impl FileJournal {
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join("journal.jsonl");
        let write = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(state_dir).map_err(write)?;
        let mut entries = Vec::new();
        let mut torn_at = None;
        if let Ok(text) = fs::read_to_string(&path) {
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match Entry::from_json(line) {
                    Ok(e) => entries.push(e),
                    // A torn last line (crash mid-write) was never applied.
                    Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                        tracing::warn!(path = %path.display(), "ignoring a torn last journal line");
                        torn_at = Some((text.len() - line.len()) as u64);
                    }
                    Err(e) => {
                        return Err(JournalError::Corrupt {
                            path,
                            line: i + 1,
                            detail: e.to_string(),
                        });
                    }
                }
            }
        }
        let applied = Applied::replay(&entries).map_err(|source| JournalError::Replay {
            path: path.clone(),
            source,
        })?;
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(write)?;
        if let Some(len) = torn_at {
            // Cut the torn line off, so the next entry starts a line.
            file.set_len(len).map_err(write)?;
        }
        Ok(FileJournal {
            path,
            file: Mutex::new(file),
            applied: watch::channel(applied).0,
        })
    }

    /// The journal file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies, writes and publishes one entry (blocking IO, under the lock).
    fn record(&self, entry: &Entry) -> Result<u64, JournalError> {
        let write = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.applied.borrow().applying(entry)?;
        let mut line = serde_json::to_vec(entry).map_err(|e| write(std::io::Error::other(e)))?;
        line.push(b'\n');
        file.write_all(&line).map_err(write)?;
        file.sync_data().map_err(write)?;
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
}

#[cfg(test)]
mod tests {
    use baton_planner::UnixMs;
    use baton_planner::alerts::{Alert, CATCH_UP_STALLED};
    use baton_planner::rollout::Event;

    use super::super::AlertEntry;
    use super::super::fixtures::started;
    use super::*;

    #[tokio::test]
    async fn events_survive_a_reopen_and_replay_per_rollout() {
        let dir = tempfile::tempdir().unwrap();
        let j = FileJournal::open(dir.path()).unwrap();
        j.propose(started("r1").into()).await.unwrap();
        j.propose(
            Event::Paused {
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
        let err = j
            .propose(Event::Resumed { at: UnixMs(1) }.into())
            .await
            .unwrap_err();
        assert!(matches!(err, JournalError::DoesNotApply { .. }), "{err}");
        assert_eq!(fs::read_to_string(j.path()).unwrap(), "");
        assert!(!rx.has_changed().unwrap());
        assert_eq!(j.propose(started("r1").into()).await.unwrap(), 0);
        assert!(rx.has_changed().unwrap());
    }

    #[tokio::test]
    async fn the_firing_set_survives_a_reopen_beside_old_events() {
        let dir = tempfile::tempdir().unwrap();
        // A journal written before alerts were journaled.
        let line = serde_json::to_string(&started("r1")).unwrap();
        fs::write(dir.path().join("journal.jsonl"), format!("{line}\n")).unwrap();
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

    #[test]
    fn a_torn_last_line_is_ignored_but_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let line = serde_json::to_string(&started("r1")).unwrap();
        fs::write(
            dir.path().join("journal.jsonl"),
            format!("{line}\n{{\"event\":\"pau"),
        )
        .unwrap();
        assert_eq!(
            FileJournal::open(dir.path())
                .unwrap()
                .subscribe()
                .borrow()
                .applied,
            1
        );
        fs::write(
            dir.path().join("journal.jsonl"),
            format!("garbage\n{line}\n"),
        )
        .unwrap();
        let err = FileJournal::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[tokio::test]
    async fn an_entry_after_a_torn_line_starts_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let line = serde_json::to_string(&started("r1")).unwrap();
        fs::write(
            dir.path().join("journal.jsonl"),
            format!("{line}\n{{\"event\":\"pau"),
        )
        .unwrap();
        let j = FileJournal::open(dir.path()).unwrap();
        j.propose(Event::Completed { at: UnixMs(3) }.into())
            .await
            .unwrap();
        drop(j);
        let j = FileJournal::open(dir.path()).unwrap();
        assert_eq!(j.subscribe().borrow().applied, 2);
    }
}
