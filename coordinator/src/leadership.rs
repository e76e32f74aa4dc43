//! Driving only while this replica leads the journal.
//!
//! This module owns the loop that turns leadership into a running driver:
//! wait until this replica leads (and has applied everything committed
//! before its term), bring the journal up to date (a one-time import of a
//! pre-replication journal, the journal's id), build a driver from what the
//! journal applied, run it, and drop it the moment another replica's term
//! begins. While a replica follows, what operators send is answered with
//! the leader's address ([`follower_hint`]), and whatever reaches the
//! driver's queues is dropped: nobody waits on a follower's driver.

use std::sync::Arc;

use baton_domain::{CommandOutcome, MemberId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::driver::{Driver, Op};
use crate::journal::raft::RaftJournal;
use crate::journal::{Entry, Journal, JournalError, MetaEntry, file};

pub use baton_proto::LEADER_HINT;

/// Refuses a call on a follower: UNAVAILABLE, with the leader's address in
/// [`LEADER_HINT`] when it is known.
pub fn follower_hint(journal: &RaftJournal) -> Result<(), tonic::Status> {
    if journal.answers_as_leader() {
        return Ok(());
    }
    let me = journal.settings().id;
    Err(match journal.leader() {
        Some((id, addr)) => {
            let mut s = tonic::Status::unavailable(format!(
                "coordinator replica {me} is a follower; the leader is replica {id} at {addr}"
            ));
            if let Ok(v) = addr.parse() {
                s.metadata_mut().insert(LEADER_HINT, v);
            }
            s
        }
        None => tonic::Status::unavailable(format!(
            "coordinator replica {me} knows no leader yet (an election is on); try again shortly or another replica"
        )),
    })
}

/// Brings the journal up to date before the first decision of a term: the
/// one-time import of an older journal, then the journal's id.
async fn prepare(journal: &RaftJournal) -> Result<(), JournalError> {
    let state_dir = journal.settings().state_dir.clone();
    if let Some(legacy) = file::read_legacy(&state_dir)? {
        let state = journal.subscribe().borrow().clone();
        if legacy.is_in(&state) {
            tracing::info!(from = %legacy.source.display(), "the older journal is already imported; setting it aside");
        } else if state.journal_id.is_some() || !state.rollouts.is_empty() {
            return Err(JournalError::Rejected {
                entry: format!("the import of {}", legacy.source.display()),
                detail: format!(
                    "the replicated journal already holds another history (journal {:?}, {} rollouts); move {} aside if it is stale, or restore the replica dir it belongs with",
                    state.journal_id,
                    state.rollouts.len(),
                    legacy.source.display()
                ),
            });
        } else {
            let n = legacy.entries.len();
            journal
                .import(legacy.entries.clone(), legacy.source.display().to_string())
                .await?;
            tracing::info!(from = %legacy.source.display(), entries = n, "imported the older journal into the replicated journal");
        }
        legacy.set_aside()?;
    }
    if journal.subscribe().borrow().journal_id.is_none() {
        let id = file::new_journal_id().map_err(|source| JournalError::Write {
            path: state_dir.clone(),
            source,
        })?;
        journal
            .propose(Entry::Meta(MetaEntry::Created {
                journal_id: id.clone(),
            }))
            .await?;
        tracing::info!(journal = %id, "named the new journal");
    }
    crate::journal::import::import_alerts_json(&state_dir, journal)
        .await
        .map_err(|e| JournalError::Rejected {
            entry: "the import of alerts.json".into(),
            detail: e.to_string(),
        })
        .map(drop)
}

/// Runs a driver (made by `make`) for every term this replica leads, until
/// `shutdown`. Returns an error when the journal's Raft stopped for good.
pub async fn drive_while_leading(
    journal: Arc<RaftJournal>,
    make: impl Fn() -> Driver,
    mut ops: mpsc::Receiver<Op>,
    mut results: mpsc::Receiver<(MemberId, CommandOutcome)>,
    shutdown: CancellationToken,
) -> Result<(), JournalError> {
    loop {
        let term = {
            let lead = journal.lead(&shutdown);
            tokio::pin!(lead);
            loop {
                tokio::select! {
                    t = &mut lead => break t,
                    Some(_) = ops.recv() => {}
                    Some(_) = results.recv() => {}
                }
            }
        };
        let Some(term) = term else {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let why = journal.stopped().unwrap_or_else(|| "it stopped".into());
            return Err(JournalError::Unavailable(why));
        };
        tracing::info!(
            replica = journal.settings().id,
            term,
            "leading the journal; driving"
        );
        if let Err(e) = prepare(&journal).await {
            tracing::error!(error = %e, term, "cannot bring the journal up to date; not driving in this term");
            tokio::select! {
                () = journal.deposed(term) => continue,
                () = shutdown.cancelled() => return Ok(()),
            }
        }
        let driver = make();
        tokio::select! {
            () = driver.run(&mut ops, &mut results, shutdown.clone()) => return Ok(()),
            () = journal.deposed(term) => {
                tracing::warn!(replica = journal.settings().id, term, leader = ?journal.leader(), "no longer leading the journal; stopped driving");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::journal::fixtures::started;
    use crate::journal::raft::ReplicaSettings;

    async fn leading(dir: &std::path::Path) -> RaftJournal {
        let j = RaftJournal::open(ReplicaSettings {
            id: 1,
            peers: BTreeMap::from([(1, "http://127.0.0.1:1".to_owned())]),
            cluster: "t".into(),
            state_dir: dir.to_owned(),
            tls: None,
        })
        .await
        .unwrap();
        let never = CancellationToken::new();
        tokio::time::timeout(Duration::from_secs(10), j.lead(&never))
            .await
            .unwrap()
            .unwrap();
        j
    }

    #[tokio::test]
    async fn a_journal_log_written_by_the_file_journal_is_imported_once_with_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let old = file::FileJournal::open(dir.path()).unwrap();
        old.propose(started("r1").into()).await.unwrap();
        let before = old.subscribe().borrow().clone();
        drop(old);
        let j = leading(dir.path()).await;
        prepare(&j).await.unwrap();
        let after = j.subscribe().borrow().clone();
        assert_eq!(after.journal_id, before.journal_id, "the old id is kept");
        assert_eq!(after.rollouts, before.rollouts);
        assert!(!dir.path().join(file::FILE).exists());
        assert!(dir.path().join("journal.log.imported").exists());
        j.shutdown().await;
        drop(j);
        // Again, with the file put back (a crash before the rename): not
        // imported twice, only set aside.
        std::fs::rename(
            dir.path().join("journal.log.imported"),
            dir.path().join(file::FILE),
        )
        .unwrap();
        let j = leading(dir.path()).await;
        prepare(&j).await.unwrap();
        assert_eq!(*j.subscribe().borrow(), after);
        assert!(!dir.path().join(file::FILE).exists());
        j.shutdown().await;
    }

    #[tokio::test]
    async fn a_jsonl_journal_from_an_older_version_is_imported_and_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/journal-0eeb9eb.jsonl"
            ),
            dir.path().join(file::LEGACY_FILE),
        )
        .unwrap();
        let replayed = file::read_legacy(dir.path()).unwrap().unwrap();
        let expect = crate::journal::Applied::replay(&replayed.entries).unwrap();
        let j = leading(dir.path()).await;
        prepare(&j).await.unwrap();
        let s = j.subscribe().borrow().clone();
        assert_eq!(s.rollouts, expect.rollouts);
        assert!(s.journal_id.is_some(), "named after the import");
        assert!(dir.path().join("journal.jsonl.imported").exists());
        j.shutdown().await;
    }

    #[tokio::test]
    async fn an_older_journal_beside_another_history_refuses_to_drive() {
        let dir = tempfile::tempdir().unwrap();
        let j = leading(dir.path()).await;
        prepare(&j).await.unwrap();
        j.propose(started("r1").into()).await.unwrap();
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/journal-0eeb9eb.jsonl"
            ),
            dir.path().join(file::LEGACY_FILE),
        )
        .unwrap();
        let before = j.subscribe().borrow().clone();
        let err = prepare(&j).await.unwrap_err().to_string();
        assert!(err.contains("already holds another history"), "{err}");
        assert!(
            dir.path().join(file::LEGACY_FILE).exists(),
            "left where it was"
        );
        assert_eq!(*j.subscribe().borrow(), before);
        j.shutdown().await;
    }
}
