//! The rollout journal: every [`Event`] of every rollout, appended and
//! fsynced before it is applied.
//!
//! This module owns the on-disk log (`<state_dir>/journal.jsonl`, one JSON
//! event per line). Replaying it rebuilds every rollout exactly, so a
//! restarted coordinator carries on from the last recorded event. The
//! [`Journal`] trait is the seam where the openraft-replicated log goes later.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use baton_planner::rollout::{ApplyError, Event, RolloutState};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "cannot write the rollout journal {path}: {source}; the coordinator cannot record decisions, so it changes nothing"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the rollout journal {path} is unreadable at line {line}: {detail}; restore it from backup or move it aside (history would be lost)"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("the rollout journal {path} does not replay: {source}")]
    Replay { path: PathBuf, source: ApplyError },
}

/// Where rollout events are recorded.
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// Appends one event durably.
    fn append(&mut self, event: &Event) -> Result<(), JournalError>;
    /// Every event recorded so far, in order.
    fn events(&self) -> &[Event];
}

/// The embedded default: a JSON-lines file on local disk.
#[derive(Debug)]
pub struct FileJournal {
    path: PathBuf,
    file: fs::File,
    events: Vec<Event>,
}

impl FileJournal {
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join("journal.jsonl");
        let write = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(state_dir).map_err(write)?;
        let mut events = Vec::new();
        if let Ok(text) = fs::read_to_string(&path) {
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Event>(line) {
                    Ok(e) => events.push(e),
                    // A torn last line (crash mid-write) was never applied.
                    Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                        tracing::warn!(path = %path.display(), "ignoring a torn last journal line");
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
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(write)?;
        let journal = FileJournal { path, file, events };
        journal.rollouts()?;
        Ok(journal)
    }

    /// Every rollout in the journal, oldest first.
    pub fn rollouts(&self) -> Result<Vec<RolloutState>, JournalError> {
        replay_all(&self.events).map_err(|source| JournalError::Replay {
            path: self.path.clone(),
            source,
        })
    }
}

/// Splits a journal into rollouts at each `Started` and replays each.
pub fn replay_all(events: &[Event]) -> Result<Vec<RolloutState>, ApplyError> {
    let mut out: Vec<RolloutState> = Vec::new();
    for e in events {
        match e {
            Event::Started { .. } => out.push(RolloutState::start(e)?),
            other => match out.last_mut() {
                Some(r) => r.apply(other)?,
                None => return Err(ApplyError::NotStarted(format!("{other:?}"))),
            },
        }
    }
    Ok(out)
}

impl Journal for FileJournal {
    fn append(&mut self, event: &Event) -> Result<(), JournalError> {
        let write = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(event).map_err(|e| write(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(write)?;
        self.file.sync_data().map_err(write)?;
        self.events.push(event.clone());
        Ok(())
    }

    fn events(&self) -> &[Event] {
        &self.events
    }
}

#[cfg(test)]
mod tests {
    use baton_domain::{MemberId, ReleaseRef};
    use baton_planner::UnixMs;

    use super::*;

    fn started(id: &str) -> Event {
        Event::Started {
            id: id.into(),
            target: ReleaseRef {
                name: "kv".into(),
                version: "v2".into(),
                format_version: 1,
                sha256: "0".repeat(64),
            },
            previous: "v1".into(),
            order: vec![MemberId::new("n2").unwrap(), MemberId::new("n1").unwrap()],
            leader: MemberId::new("n1").unwrap(),
            at: UnixMs(1),
        }
    }

    #[test]
    fn events_survive_a_reopen_and_replay_per_rollout() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = FileJournal::open(dir.path()).unwrap();
        j.append(&started("r1")).unwrap();
        j.append(&Event::Paused {
            reason: "x".into(),
            at: UnixMs(2),
        })
        .unwrap();
        j.append(&started("r2")).unwrap();
        drop(j);
        let j = FileJournal::open(dir.path()).unwrap();
        let rollouts = j.rollouts().unwrap();
        assert_eq!(rollouts.len(), 2);
        assert!(matches!(
            rollouts[0].phase,
            baton_planner::Phase::Paused { .. }
        ));
        assert_eq!(rollouts[1].id, "r2");
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
        assert_eq!(FileJournal::open(dir.path()).unwrap().events().len(), 1);
        fs::write(
            dir.path().join("journal.jsonl"),
            format!("garbage\n{line}\n"),
        )
        .unwrap();
        let err = FileJournal::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
