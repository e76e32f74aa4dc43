//! The journal seam: every rollout [`Event`] and every alert that fired or
//! resolved, proposed in order and applied by the journal itself.
//!
//! This module owns the entry type ([`Entry`]), the applied state
//! ([`Applied`]: every rollout, oldest first, and the firing alerts) with its
//! one pure transition ([`Applied::apply`]), and the [`Journal`] trait that
//! the driver proposes through. The trait is shaped for a replicated log
//! (openraft): a proposal is async and may be refused; the state is what the
//! journal applied, published on a `watch` channel, never a copy the caller
//! keeps. An entry is applied to a clone of the state first, so an entry that
//! does not apply is never recorded and changes nothing.
//!
//! Implementations: [`raft::RaftJournal`] (what the coordinator runs: an
//! openraft log on 1, 3 or 5 replicas), [`file::FileJournal`] (the
//! single-writer file of the version before, read for the one-time import),
//! [`memory::MemoryJournal`] (in memory, for tests), and [`import`] (the
//! one-time import of a pre-journal `alerts.json`).

pub mod file;
pub mod import;
pub mod memory;
pub mod raft;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use baton_planner::alerts::{Alert, AlertStatus};
use baton_planner::rollout::{ApplyError, Event, RolloutState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use self::file::FileJournal;
pub use self::memory::MemoryJournal;

/// Why a proposal was refused or the journal could not be read.
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
    Replay { path: PathBuf, source: EntryError },
    #[error(
        "the rollout journal cannot be used: {0}; the coordinator will not run on a history it cannot read or extend: free space or restore the file from a backup of the state dir (moving it aside would start an empty history)"
    )]
    Log(baton_store::records::RecordError),
    #[error("refused to journal {entry}: {source}; nothing was recorded")]
    DoesNotApply { entry: String, source: EntryError },
    #[error("the journal refused {entry}: {detail}; nothing changed")]
    Rejected { entry: String, detail: String },
    #[error(
        "this coordinator replica does not lead the journal{}; only the leader records",
        leader.as_ref().map(|l| format!(" (the leader is at {l})")).unwrap_or_default()
    )]
    NotLeader { leader: Option<String> },
    #[error("the journal is unavailable: {0}")]
    Unavailable(String),
}

/// Why an entry does not apply to the journal's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Rollout(#[from] ApplyError),
    #[error("the journal already has id {id}; it cannot be given {new}")]
    Renamed { id: String, new: String },
    #[error("alert {key} is already firing")]
    AlreadyFiring { key: String },
    #[error("alert {key} is not firing, so it cannot resolve")]
    NotFiring { key: String },
    #[error("alert {key} is recorded as {recorded:?} but its status is {status:?}")]
    WrongStatus {
        key: String,
        recorded: &'static str,
        status: AlertStatus,
    },
}

/// An alert the watchdog raised or cleared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "alert_event")]
pub enum AlertEntry {
    /// The alert fires (its status is `Firing`).
    Fired { alert: Alert },
    /// The alert's condition cleared (its status is `Resolved`).
    Resolved { alert: Alert },
}

/// What the journal records about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "journal_event")]
pub enum MetaEntry {
    /// The journal's id, recorded once, before any rollout it names: a
    /// random hex string, so a journal created anew (the old one lost)
    /// never makes an id the old one made.
    Created { journal_id: String },
}

/// One journal entry. On disk a rollout event keeps its own shape
/// (`{"event": …}`), so journals written before alerts were journaled
/// still load; an alert entry is `{"alert_event": "fired"|"resolved", …}`;
/// a meta entry is `{"journal_event": "created", …}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Entry {
    Rollout(Event),
    Alert(AlertEntry),
    Meta(MetaEntry),
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Entry::from_value(value).map_err(serde::de::Error::custom)
    }
}

impl From<Event> for Entry {
    fn from(e: Event) -> Self {
        Entry::Rollout(e)
    }
}

impl From<MetaEntry> for Entry {
    fn from(e: MetaEntry) -> Self {
        Entry::Meta(e)
    }
}

impl From<AlertEntry> for Entry {
    fn from(e: AlertEntry) -> Self {
        Entry::Alert(e)
    }
}

impl Entry {
    /// Parses one journal line. The `alert_event` key tells the kinds
    /// apart, so a bad rollout event's error names its own problem.
    pub fn from_json(line: &str) -> Result<Entry, serde_json::Error> {
        Entry::from_value(serde_json::from_str(line)?)
    }

    fn from_value(value: serde_json::Value) -> Result<Entry, serde_json::Error> {
        if value.get("journal_event").is_some() {
            serde_json::from_value(value).map(Entry::Meta)
        } else if value.get("alert_event").is_some() {
            serde_json::from_value(value).map(Entry::Alert)
        } else {
            serde_json::from_value(value).map(Entry::Rollout)
        }
    }

    /// A short description for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            Entry::Rollout(e) => format!("{e:?}"),
            Entry::Alert(AlertEntry::Fired { alert }) => format!("alert {} fired", alert.key()),
            Entry::Alert(AlertEntry::Resolved { alert }) => {
                format!("alert {} resolved", alert.key())
            }
            Entry::Meta(MetaEntry::Created { journal_id }) => {
                format!("journal {journal_id} created")
            }
        }
    }
}

/// What the journal has applied: the rollouts and the firing alerts. A
/// replicated journal's snapshot is this, whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Every rollout, oldest first; the last one may be active. Shared, so
    /// a clone (one per proposal, one per reader) copies only pointers.
    pub rollouts: Vec<Arc<RolloutState>>,
    /// The alerts firing now, by [`Alert::key`]. Shared like the rollouts:
    /// a clone of the state copies a pointer; an apply copies the map only
    /// when a reader still holds the old one.
    pub firing: Arc<BTreeMap<String, Alert>>,
    /// Entries applied so far (the next entry's index is this).
    pub applied: u64,
    /// The journal's id ([`MetaEntry::Created`]); `None` in a journal that
    /// has not recorded one (the in-memory journal of tests).
    pub journal_id: Option<String>,
}

impl Applied {
    /// Applies one entry, or changes nothing and says why not.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), EntryError> {
        self.refusal(entry)?;
        match entry {
            Entry::Meta(MetaEntry::Created { journal_id }) => {
                self.journal_id = Some(journal_id.clone());
            }
            Entry::Rollout(e @ Event::Started { .. }) => {
                self.rollouts.push(Arc::new(RolloutState::start(e)?));
            }
            Entry::Rollout(e) => {
                let last = self
                    .rollouts
                    .last_mut()
                    .ok_or_else(|| ApplyError::NotStarted(format!("{e:?}")))?;
                // Copy-on-write: a failed apply leaves the shared original.
                let mut next = RolloutState::clone(last);
                next.apply(e)?;
                *last = Arc::new(next);
            }
            Entry::Alert(AlertEntry::Fired { alert }) => {
                Arc::make_mut(&mut self.firing).insert(alert.key(), alert.clone());
            }
            Entry::Alert(AlertEntry::Resolved { alert }) => {
                Arc::make_mut(&mut self.firing).remove(&alert.key());
            }
        }
        self.applied += 1;
        Ok(())
    }

    /// Why `entry` cannot apply, for what can be judged without applying
    /// it: a second journal name, an alert fired twice or resolved while
    /// not firing, or recorded with the wrong status. Rollout events are
    /// judged by their rollout's own rules, as they apply.
    fn refusal(&self, entry: &Entry) -> Result<(), EntryError> {
        match entry {
            Entry::Meta(MetaEntry::Created { journal_id }) => match &self.journal_id {
                Some(id) => Err(EntryError::Renamed {
                    id: id.clone(),
                    new: journal_id.clone(),
                }),
                None => Ok(()),
            },
            Entry::Rollout(_) => Ok(()),
            Entry::Alert(AlertEntry::Fired { alert }) => {
                let key = alert.key();
                if alert.status != AlertStatus::Firing {
                    return Err(EntryError::WrongStatus {
                        key,
                        recorded: "fired",
                        status: alert.status,
                    });
                }
                if self.firing.contains_key(&key) {
                    return Err(EntryError::AlreadyFiring { key });
                }
                Ok(())
            }
            Entry::Alert(AlertEntry::Resolved { alert }) => {
                let key = alert.key();
                if alert.status != AlertStatus::Resolved {
                    return Err(EntryError::WrongStatus {
                        key,
                        recorded: "resolved",
                        status: alert.status,
                    });
                }
                if !self.firing.contains_key(&key) {
                    return Err(EntryError::NotFiring { key });
                }
                Ok(())
            }
        }
    }

    /// `self` with `entry` applied, leaving `self` as it was; refused
    /// entries come back as [`JournalError::DoesNotApply`].
    pub fn applying(&self, entry: &Entry) -> Result<Applied, JournalError> {
        let mut next = self.clone();
        next.apply(entry)
            .map_err(|source| JournalError::DoesNotApply {
                entry: entry.describe(),
                source,
            })?;
        Ok(next)
    }

    /// Whether `entry` would apply, changing nothing. A proposal is checked
    /// this way before it is written: an alert entry by its conditions
    /// alone, a rollout event by applying it to a copy of its rollout (the
    /// rest of the state is shared, not copied; the firing alerts are
    /// never copied for a check).
    pub fn check(&self, entry: &Entry) -> Result<(), JournalError> {
        let refused = match entry {
            Entry::Rollout(_) => self.clone().apply(entry),
            _ => self.refusal(entry),
        };
        refused.map_err(|source| JournalError::DoesNotApply {
            entry: entry.describe(),
            source,
        })
    }

    /// Replays `entries` from nothing.
    pub fn replay<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Result<Applied, EntryError> {
        let mut state = Applied::default();
        for e in entries {
            state.apply(e)?;
        }
        Ok(state)
    }
}

/// Where rollout events and alerts are recorded. The driver proposes; the
/// journal applies and publishes what it applied.
#[tonic::async_trait]
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// Records `entry` durably and applies it; returns its index. An entry
    /// that does not apply is refused and nothing changes.
    async fn propose(&self, entry: Entry) -> Result<u64, JournalError>;
    /// The applied state, updated after every accepted proposal.
    fn subscribe(&self) -> watch::Receiver<Applied>;
    /// Whether the journal's disk is (nearly) full: it still records, on a
    /// reserve kept for reaching a safe point, so no new work should start.
    fn low_space(&self) -> bool {
        false
    }
    /// Tries to win the reserve back; returns whether there is room again.
    async fn check_space(&self) -> bool {
        true
    }
    /// The term this journal's leader proposes in (a replicated journal's
    /// leader term; 0 for a journal with one writer and no terms). Commands
    /// carry it, and agents refuse an older one ([`baton_domain::Fence`]).
    fn term(&self) -> u64 {
        0
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use baton_domain::{MemberId, ReleaseRef};
    use baton_planner::UnixMs;
    use baton_planner::rollout::Event;

    pub fn started(id: &str) -> Event {
        Event::Started {
            by: None,
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
            journal: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_planner::UnixMs;
    use baton_planner::alerts::CATCH_UP_STALLED;

    use super::fixtures::started;
    use super::*;

    #[test]
    fn a_refused_entry_changes_nothing() {
        let state = Applied::default();
        let paused = Entry::from(Event::Paused {
            by: None,
            reason: "x".into(),
            at: UnixMs(2),
        });
        let err = state.applying(&paused).unwrap_err().to_string();
        assert!(err.contains("nothing was recorded"), "{err}");
        assert_eq!(state, Applied::default());
        let state = state.applying(&started("r1").into()).unwrap();
        let before = state.clone();
        let bogus = Entry::from(Event::CommandSucceeded {
            id: baton_domain::CommandId("r1-c9".into()),
            detail: String::new(),
            at: UnixMs(3),
        });
        assert!(state.applying(&bogus).is_err());
        assert_eq!(state, before);
    }

    #[test]
    fn alerts_fire_once_and_resolve_once() {
        let a = Alert::firing(CATCH_UP_STALLED, "c", Some("n2"), Some("r1"), UnixMs(5));
        let fired = Entry::from(AlertEntry::Fired { alert: a.clone() });
        let resolved = Entry::from(AlertEntry::Resolved {
            alert: a.resolved(UnixMs(9)),
        });
        let s = Applied::default().applying(&fired).unwrap();
        assert_eq!(s.firing.values().collect::<Vec<_>>(), vec![&a]);
        assert!(s.applying(&fired).is_err(), "fires once");
        let s = s.applying(&resolved).unwrap();
        assert!(s.firing.is_empty());
        assert!(s.applying(&resolved).is_err(), "resolves once");
        let wrong = Entry::from(AlertEntry::Fired {
            alert: a.resolved(UnixMs(9)),
        });
        assert!(Applied::default().applying(&wrong).is_err());
    }

    /// `check` (what a proposal is judged by before it is written) agrees
    /// with `apply` on every kind of entry, refused or not, and changes
    /// nothing.
    #[test]
    fn a_check_judges_an_entry_as_applying_it_would() {
        let a = Alert::firing(CATCH_UP_STALLED, "c", Some("n2"), Some("r1"), UnixMs(5));
        let fired = Entry::from(AlertEntry::Fired { alert: a.clone() });
        let resolved = Entry::from(AlertEntry::Resolved {
            alert: a.resolved(UnixMs(9)),
        });
        let wrong = Entry::from(AlertEntry::Fired {
            alert: a.resolved(UnixMs(9)),
        });
        let named = Entry::Meta(MetaEntry::Created {
            journal_id: "j1".into(),
        });
        let bogus = Entry::from(Event::CommandSucceeded {
            id: baton_domain::CommandId("r1-c9".into()),
            detail: String::new(),
            at: UnixMs(3),
        });
        let started = Entry::from(started("r1"));
        // Each entry is checked, then applied when it applies, in order.
        let steps = [
            (&bogus, false),
            (&named, true),
            (&named, false),
            (&resolved, false),
            (&wrong, false),
            (&fired, true),
            (&fired, false),
            (&started, true),
            (&bogus, false),
            (&resolved, true),
            (&resolved, false),
        ];
        let mut state = Applied::default();
        for (i, (entry, applies)) in steps.into_iter().enumerate() {
            let before = state.clone();
            let checked = state.check(entry);
            assert_eq!(state, before, "step {i}: a check changes nothing");
            assert_eq!(checked.is_ok(), applies, "step {i}: {}", entry.describe());
            match state.applying(entry) {
                Ok(next) => {
                    assert!(applies, "step {i}: applied what the check refused");
                    state = next;
                }
                Err(e) => {
                    assert!(!applies, "step {i}: refused what the check passed");
                    assert_eq!(e.to_string(), checked.unwrap_err().to_string());
                }
            }
        }
    }

    #[test]
    fn entries_parse_by_kind_and_old_events_keep_their_shape() {
        let e = started("r1");
        let line = serde_json::to_string(&Entry::from(e.clone())).unwrap();
        assert_eq!(line, serde_json::to_string(&e).unwrap());
        assert_eq!(Entry::from_json(&line).unwrap(), Entry::Rollout(e));
        let a = Alert::firing(CATCH_UP_STALLED, "c", None, None, UnixMs(5));
        let entry = Entry::from(AlertEntry::Fired { alert: a });
        let line = serde_json::to_string(&entry).unwrap();
        assert!(line.starts_with("{\"alert_event\":\"fired\""), "{line}");
        assert_eq!(Entry::from_json(&line).unwrap(), entry);
        let err = Entry::from_json("{\"event\":\"paused\"}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("reason"), "{err}");
    }
}
