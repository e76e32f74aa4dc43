//! The durable Raft log: entries, vote and committed log id in one
//! append-only file of JSON lines (`<data-dir>/raft-log.jsonl`).
//!
//! Every mutation (append, vote, committed, truncate, purge) is a record
//! appended to the file and replayed in order at start-up, so the in-memory
//! view after a restart (kill -9 included) is the view at the last fsync. One
//! writer thread owns the file and group-commits: it drains every queued
//! record, writes them, fsyncs once and only then fires the flush callbacks,
//! so throughput does not depend on one fsync per entry. A torn last line
//! (a crash mid-write) is cut off at start-up; a bad line anywhere else is
//! corruption and refuses the start. A purge rewrites the file to its live
//! records (temp file, fsync, rename) so the file does not grow forever.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{LogIdOptionExt, OptionalSend};
use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogId, TypeConfig, Vote};

/// The log file's name inside the data dir.
pub const LOG_FILE: &str = "raft-log.jsonl";

/// Rewrite the file on purge once this many purged entries accumulated.
const REWRITE_AFTER_PURGED: u64 = 1000;

/// Writes a fresh log file in `data_dir` that holds no entry: `vote`, and
/// everything up to `upto` purged and committed, as a log looks right after
/// a snapshot at `upto` was taken and the log behind it compacted (used by
/// [`crate::restore`]). Refuses to replace an existing log.
pub(crate) fn write_compacted(data_dir: &Path, vote: Vote, upto: LogId) -> io::Result<()> {
    let path = data_dir.join(LOG_FILE);
    if path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", path.display()),
        ));
    }
    let mem = LogMem {
        vote: Some(vote),
        committed: Some(upto),
        last_purged: Some(upto),
        ..LogMem::default()
    };
    crate::fsutil::write_atomic(&path, &mem.encode_all()?)
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// I/O failed.
    #[error("raft log {}: {source}", path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A record before the last line does not parse.
    #[error("raft log {} is corrupt at line {line}: {detail}", path.display())]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        detail: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the raft log writer thread: {0}")]
    Thread(io::Error),
}

/// One durable mutation, as read back at start-up.
#[derive(Debug, Deserialize)]
enum Record {
    Entry(Entry),
    Vote(Vote),
    Committed(Option<LogId>),
    Truncate { after: Option<u64> },
    Purge(LogId),
}

/// One durable mutation, as written (borrowing, same encoding as [`Record`]).
#[derive(Debug, Serialize)]
enum RecordRef<'a> {
    Entry(&'a Entry),
    Vote(&'a Vote),
    Committed(&'a Option<LogId>),
    Truncate { after: Option<u64> },
    Purge(&'a LogId),
}

fn encode_line(out: &mut Vec<u8>, rec: &RecordRef<'_>) -> io::Result<()> {
    serde_json::to_writer(&mut *out, rec).map_err(io::Error::other)?;
    out.push(b'\n');
    Ok(())
}

/// The in-memory view of the log, always equal to the replay of the file's
/// queued records.
#[derive(Debug, Default)]
struct LogMem {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    purged_since_rewrite: u64,
}

impl LogMem {
    fn apply(&mut self, rec: Record) {
        match rec {
            Record::Entry(e) => {
                self.entries.insert(e.index(), e);
            }
            Record::Vote(v) => self.vote = Some(v),
            Record::Committed(c) => self.committed = c,
            Record::Truncate { after } => self.truncate(after),
            Record::Purge(upto) => self.purge(upto),
        }
    }

    fn truncate(&mut self, after: Option<u64>) {
        let from = after.map_or(0, |i| i + 1);
        self.entries.split_off(&from);
    }

    fn purge(&mut self, upto: LogId) {
        let keep = self.entries.split_off(&(upto.index + 1));
        self.purged_since_rewrite += self.entries.len() as u64;
        self.entries = keep;
        if self
            .last_purged
            .as_ref()
            .is_none_or(|p| p.index < upto.index)
        {
            self.last_purged = Some(upto);
        }
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .last_key_value()
            .map(|(_, e)| e.log_id())
            .or(self.last_purged)
    }

    /// Every live record, for a rewrite.
    fn encode_all(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(v) = &self.vote {
            encode_line(&mut out, &RecordRef::Vote(v))?;
        }
        if let Some(p) = &self.last_purged {
            encode_line(&mut out, &RecordRef::Purge(p))?;
        }
        encode_line(&mut out, &RecordRef::Committed(&self.committed))?;
        for e in self.entries.values() {
            encode_line(&mut out, &RecordRef::Entry(e))?;
        }
        Ok(out)
    }
}

/// What to do once a queued write is durable.
enum Done {
    Nothing,
    Flushed(IOFlushed<TypeConfig>),
    Signal(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl Done {
    fn complete(self, result: &Result<(), String>) {
        let r = result.clone().map_err(io::Error::other);
        match self {
            Done::Nothing => {}
            Done::Flushed(cb) => cb.io_completed(r),
            Done::Signal(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

enum Op {
    /// Append these bytes (whole lines) to the file.
    Append(Vec<u8>, Done),
    /// Replace the whole file with these bytes.
    Rewrite(Vec<u8>, Done),
}

/// The writer thread: owns the file, group-commits appends.
struct Writer {
    path: PathBuf,
    file: BufWriter<File>,
    /// Set once an I/O error happened; every later write fails with it.
    broken: Option<String>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < 8192 {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut pending = Vec::with_capacity(batch.len());
            for op in batch {
                match op {
                    Op::Append(bytes, done) => {
                        if self.broken.is_none()
                            && let Err(e) = self.file.write_all(&bytes)
                        {
                            self.fail(e);
                        }
                        pending.push(done);
                    }
                    Op::Rewrite(bytes, done) => {
                        self.sync_and_complete(&mut pending);
                        if self.broken.is_none()
                            && let Err(e) = self.rewrite(&bytes)
                        {
                            self.fail(e);
                        }
                        done.complete(&self.status());
                    }
                }
            }
            self.sync_and_complete(&mut pending);
        }
    }

    fn status(&self) -> Result<(), String> {
        match &self.broken {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }

    fn fail(&mut self, e: io::Error) {
        tracing::error!(path = %self.path.display(), error = %e, "raft log write failed; the log store is now broken");
        self.broken = Some(format!("raft log {}: {e}", self.path.display()));
    }

    fn sync_and_complete(&mut self, pending: &mut Vec<Done>) {
        if pending.is_empty() {
            return;
        }
        if self.broken.is_none()
            && let Err(e) = self
                .file
                .flush()
                .and_then(|()| self.file.get_ref().sync_data())
        {
            self.fail(e);
        }
        let status = self.status();
        for d in pending.drain(..) {
            d.complete(&status);
        }
    }

    fn rewrite(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.flush()?;
        crate::fsutil::write_atomic(&self.path, bytes)?;
        self.file = BufWriter::new(OpenOptions::new().append(true).open(&self.path)?);
        Ok(())
    }
}

#[derive(Debug)]
struct Shared {
    mem: Mutex<LogMem>,
    tx: Mutex<mpsc::Sender<Op>>,
    path: PathBuf,
}

/// The Raft log store; cheap to clone (clones share one log).
#[derive(Debug, Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl LogStore {
    /// Opens (or creates) the log in `data_dir`, replaying every record.
    pub fn open(data_dir: &Path) -> Result<LogStore, LogStoreError> {
        let path = data_dir.join(LOG_FILE);
        let io_err = |source| LogStoreError::Io {
            path: path.clone(),
            source,
        };
        let mem = replay(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err)?;
        crate::fsutil::sync_dir(data_dir).map_err(io_err)?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            path: path.clone(),
            file: BufWriter::with_capacity(1 << 16, file),
            broken: None,
        };
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(LogStoreError::Thread)?;
        tracing::info!(
            path = %path.display(),
            entries = mem.entries.len(),
            last_log = ?mem.last_log_id().map(|l| l.index),
            committed = ?mem.committed.as_ref().map(|l| l.index),
            "raft log opened"
        );
        Ok(LogStore {
            shared: Arc::new(Shared {
                mem: Mutex::new(mem),
                tx: Mutex::new(tx),
                path,
            }),
        })
    }

    /// True when the log holds no entry and nothing was ever purged.
    pub fn is_pristine(&self) -> bool {
        let mem = self.lock();
        mem.entries.is_empty() && mem.last_purged.is_none() && mem.vote.is_none()
    }

    fn lock(&self) -> MutexGuard<'_, LogMem> {
        // A poisoned lock means a panic mid-mutation elsewhere; the data is
        // still the replayable view, so keep going with it.
        self.shared.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `op`; the caller holds the `mem` lock so the file order is
    /// the mutation order.
    fn send(&self, op: Op) -> io::Result<()> {
        let tx = self.shared.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(op).map_err(|_| {
            io::Error::other(format!(
                "raft log writer for {} has stopped",
                self.shared.path.display()
            ))
        })
    }

    async fn wait(rx: tokio::sync::oneshot::Receiver<io::Result<()>>) -> io::Result<()> {
        rx.await
            .map_err(|_| io::Error::other("raft log writer dropped a write"))?
    }
}

/// Replays the log file; cuts a torn last line off the file.
fn replay(path: &Path) -> Result<LogMem, LogStoreError> {
    let mut mem = LogMem::default();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(mem),
        Err(source) => {
            return Err(LogStoreError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut offset = 0usize;
    let mut line_no = 0usize;
    let mut valid_len = 0usize;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            tracing::warn!(path = %path.display(), line = line_no, "raft log ends in a torn line; cutting it off");
            break;
        };
        let line = &rest[..nl];
        let next = offset + nl + 1;
        match serde_json::from_slice::<Record>(line) {
            Ok(rec) => {
                mem.apply(rec);
                valid_len = next;
            }
            Err(e) if next >= bytes.len() => {
                tracing::warn!(path = %path.display(), line = line_no, error = %e, "raft log's last line does not parse; cutting it off");
                break;
            }
            Err(e) => {
                return Err(LogStoreError::Corrupt {
                    path: path.to_owned(),
                    line: line_no,
                    detail: e.to_string(),
                });
            }
        }
        offset = next;
    }
    if valid_len < bytes.len() {
        let io_err = |source| LogStoreError::Io {
            path: path.to_owned(),
            source,
        };
        let f = OpenOptions::new().write(true).open(path).map_err(io_err)?;
        f.set_len(valid_len as u64).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
    }
    mem.purged_since_rewrite = 0;
    Ok(mem)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let mem = self.lock();
        Ok(mem.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = self.lock();
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: mem.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut mem = self.lock();
            let mut line = Vec::new();
            encode_line(&mut line, &RecordRef::Vote(vote))?;
            self.send(Op::Append(line, Done::Signal(tx)))?;
            mem.vote = Some(*vote);
        }
        Self::wait(rx).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut mem = self.lock();
        if mem.committed == committed {
            return Ok(());
        }
        let mut line = Vec::new();
        encode_line(&mut line, &RecordRef::Committed(&committed))?;
        self.send(Op::Append(line, Done::Nothing))?;
        mem.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut bytes = Vec::with_capacity(entries.len() * 128);
        for e in &entries {
            encode_line(&mut bytes, &RecordRef::Entry(e))?;
        }
        let mut mem = self.lock();
        self.send(Op::Append(bytes, Done::Flushed(callback)))?;
        for e in entries {
            mem.entries.insert(e.index(), e);
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let after = last_log_id.as_ref().map(|l| l.index);
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut mem = self.lock();
            let mut line = Vec::new();
            encode_line(&mut line, &RecordRef::Truncate { after })?;
            self.send(Op::Append(line, Done::Signal(tx)))?;
            mem.truncate(after);
        }
        Self::wait(rx).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut mem = self.lock();
            mem.purge(log_id);
            if mem.purged_since_rewrite >= REWRITE_AFTER_PURGED {
                let bytes = mem.encode_all()?;
                mem.purged_since_rewrite = 0;
                self.send(Op::Rewrite(bytes, Done::Signal(tx)))?;
            } else {
                let mut line = Vec::new();
                encode_line(&mut line, &RecordRef::Purge(&log_id))?;
                self.send(Op::Append(line, Done::Signal(tx)))?;
            }
        }
        tracing::debug!(upto = log_id.index, next = ?Some(log_id).next_index(), "raft log purged");
        Self::wait(rx).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;
    use openraft::{LogId as RLogId, StorageError};

    use super::*;
    use crate::state_machine::StateMachine;
    use crate::types::KvCommand;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
            let dir = tempfile::tempdir().unwrap();
            let log = LogStore::open(dir.path()).unwrap();
            let sm = StateMachine::open(dir.path(), Default::default()).unwrap();
            Ok((dir, log, sm))
        }
    }

    #[tokio::test]
    async fn openraft_storage_suite() {
        Suite::test_all(Builder).await.unwrap();
    }

    fn entry(term: u64, index: u64) -> Entry {
        let lid = RLogId::new(
            openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
            index,
        );
        Entry::new_normal(
            lid,
            KvCommand::Put {
                key: format!("k{index}"),
                value: "v".into(),
            },
        )
    }

    async fn append(log: &mut LogStore, entries: Vec<Entry>) {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn survives_reopen_with_truncate_purge_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            append(&mut log, (1..=10).map(|i| entry(1, i)).collect()).await;
            log.truncate_after(Some(entry(1, 7).log_id()))
                .await
                .unwrap();
            append(&mut log, (8..=9).map(|i| entry(2, i)).collect()).await;
            log.purge(entry(1, 3).log_id()).await.unwrap();
            log.save_committed(Some(entry(2, 8).log_id()))
                .await
                .unwrap();
            let vote = Vote::new(2, 1);
            log.save_vote(&vote).await.unwrap();
        }
        // A torn record at the end, as a crash mid-write leaves it.
        let path = dir.path().join(LOG_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"Entry\":{\"log_id\"").unwrap();
        drop(f);

        let mut log = LogStore::open(dir.path()).unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id.unwrap().index, 3);
        assert_eq!(st.last_log_id.unwrap(), entry(2, 9).log_id());
        let got = log.try_get_log_entries(0..100).await.unwrap();
        let ids: Vec<_> = got
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.index()))
            .collect();
        assert_eq!(ids, vec![(1, 4), (1, 5), (1, 6), (1, 7), (2, 8), (2, 9)]);
        assert_eq!(log.read_committed().await.unwrap().unwrap().index, 8);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        // Appending after the cut keeps the file parseable.
        append(&mut log, vec![entry(2, 10)]).await;
        drop(log);
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            log.get_log_state()
                .await
                .unwrap()
                .last_log_id
                .unwrap()
                .index,
            10
        );
    }

    #[tokio::test]
    async fn rewrite_on_large_purge_keeps_live_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            append(&mut log, (1..=1500).map(|i| entry(1, i)).collect()).await;
            log.save_vote(&Vote::new(1, 1)).await.unwrap();
            log.purge(entry(1, 1200).log_id()).await.unwrap();
        }
        let size = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        let mut log = LogStore::open(dir.path()).unwrap();
        let got = log.try_get_log_entries(0..10_000).await.unwrap();
        assert_eq!(got.len(), 300);
        assert_eq!(got[0].index(), 1201);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
        assert!(size < 300 * 200, "file was rewritten: {size} bytes");
    }

    #[test]
    fn corrupt_middle_line_refuses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(LOG_FILE),
            b"garbage\n{\"Committed\":null}\n",
        )
        .unwrap();
        let e = LogStore::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
