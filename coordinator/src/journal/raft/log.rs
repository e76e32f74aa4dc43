//! The replica's Raft log on disk: one [`baton_store::records`] log
//! (`<state_dir>/replica/log`), every mutation a checksummed record.
//!
//! This module owns that file. An append, a vote, a truncation and a purge
//! are each a record, synced before openraft is told it is durable. One
//! writer thread owns the file and group-commits: it takes every record
//! queued since its last write, writes them with one write and one sync,
//! and only then completes their callbacks, so the Raft core never blocks
//! on the disk and many proposals in flight share a sync. Opening the file
//! replays the records in order, so the view after kill -9 is the view at
//! the last sync. A torn
//! tail is cut off with a warning naming its offset; anything else that does
//! not check out refuses to open, naming the file and the offset. After
//! enough purged entries the file is rewritten to its live records
//! (atomically), so it does not grow forever. Space is kept written past
//! the last record (the reserve) so that, on a full disk, the replica still
//! records its way to a safe point; [`LogStore::reserve_left`] tells the
//! journal when to stop proposing before openraft meets an IO error (which
//! it treats as fatal).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use baton_store::records::{RecordError, RecordLog};
use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use serde::{Deserialize, Serialize};

use super::{LogEntry, LogId, TypeConfig, Vote};

/// The log file, under the replica dir.
pub const FILE: &str = "log";
/// Space kept written past the last record (see the module docs).
pub const RESERVE: u64 = 32 << 10;
/// Rewrite the file once this many purged entries are dead in it.
const REWRITE_AFTER_PURGED: u64 = 512;

/// One record of the file, externally tagged (`{"entry": {…}}`): an
/// internally tagged enum would buffer its content, and openraft's
/// membership maps (u64 keys) do not survive the buffer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LogRecord {
    Entry(Box<LogEntry>),
    Vote(Vote),
    /// Every entry after index `after` is gone (`None`: every entry).
    Truncate {
        after: Option<u64>,
    },
    /// Every entry up to and including `upto` is gone (it is in a snapshot).
    Purge {
        upto: LogId,
    },
}

/// The log as replayed: what openraft reads back.
#[derive(Debug, Default)]
struct Mem {
    entries: BTreeMap<u64, LogEntry>,
    vote: Option<Vote>,
    purged: Option<LogId>,
    /// Purged entries whose records are still in the file.
    dead: u64,
}

impl Mem {
    fn apply(&mut self, r: LogRecord) {
        match r {
            LogRecord::Entry(entry) => {
                self.entries.insert(entry.index(), *entry);
            }
            LogRecord::Vote(vote) => self.vote = Some(vote),
            LogRecord::Truncate { after } => {
                let from = after.map_or(0, |a| a + 1);
                self.entries.split_off(&from);
            }
            LogRecord::Purge { upto } => {
                let keep = self.entries.split_off(&(upto.index + 1));
                self.dead += self.entries.len() as u64;
                self.entries = keep;
                self.purged = Some(upto);
            }
        }
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .values()
            .next_back()
            .map(|e| e.log_id())
            .or(self.purged)
    }

    /// The records that rebuild this view, for a rewrite.
    fn live_records(&self) -> Vec<LogRecord> {
        let mut out = Vec::with_capacity(self.entries.len() + 2);
        if let Some(vote) = self.vote {
            out.push(LogRecord::Vote(vote));
        }
        if let Some(upto) = self.purged {
            out.push(LogRecord::Purge { upto });
        }
        out.extend(
            self.entries
                .values()
                .map(|e| LogRecord::Entry(Box::new(e.clone()))),
        );
        out
    }
}

fn encode(r: &LogRecord) -> io::Result<Vec<u8>> {
    serde_json::to_vec(r).map_err(io::Error::other)
}

/// What a queued write completes when it is on disk.
enum Done {
    /// openraft's callback for an append.
    Flushed(IOFlushed<TypeConfig>),
    /// A caller that waits (a vote, a truncation, a purge).
    Signal(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl Done {
    fn complete(self, r: &Result<(), (io::ErrorKind, String)>) {
        let r = r.clone().map_err(|(kind, msg)| io::Error::new(kind, msg));
        match self {
            Done::Flushed(cb) => cb.io_completed(r),
            Done::Signal(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// One queued write for the writer thread.
enum Op {
    /// Append these encoded records.
    Append(Vec<Vec<u8>>, Done),
    /// Replace the file with exactly these records (after a purge).
    Rewrite(Vec<Vec<u8>>, Done),
}

/// The writer thread: drains the queue, writes what it took with one sync,
/// completes it. Exits when every sender is gone.
fn writer(file: Arc<Mutex<RecordLog>>, path: PathBuf, rx: std::sync::mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        // Appends up to a rewrite go together; a rewrite stands alone.
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut dones = Vec::new();
        for op in ops {
            match op {
                Op::Append(records, done) => {
                    batch.extend(records);
                    dones.push(done);
                }
                Op::Rewrite(records, done) => {
                    flush(&file, &mut batch, &mut dones);
                    let r = rewrite(&file, &path, &records);
                    done.complete(&r);
                }
            }
        }
        flush(&file, &mut batch, &mut dones);
    }
}

fn flush(file: &Mutex<RecordLog>, batch: &mut Vec<Vec<u8>>, dones: &mut Vec<Done>) {
    if dones.is_empty() {
        return;
    }
    let slices: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
    let r = lock(file)
        .append_all(&slices)
        .map_err(|e| (to_io(&e).kind(), e.to_string()));
    batch.clear();
    for d in dones.drain(..) {
        d.complete(&r);
    }
}

fn rewrite(
    file: &Mutex<RecordLog>,
    path: &Path,
    records: &[Vec<u8>],
) -> Result<(), (io::ErrorKind, String)> {
    let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let fail = |e: RecordError| (to_io(&e).kind(), e.to_string());
    // Held across the rename and the swap: an identity check in between
    // would find the new file under the path and the old one open, and
    // call the log replaced (seen in the throughput bench: proposals
    // refused with "deleted or replaced" right after a rewrite).
    let mut open = lock(file);
    let mut fresh = RecordLog::create_with(path, &slices).map_err(fail)?;
    if !fresh.keep_reserve(RESERVE).map_err(fail)? {
        tracing::warn!(path = %path.display(), "the journal's disk is full after a rewrite: on its reserve");
    }
    *open = fresh;
    drop(open);
    tracing::info!(path = %path.display(), live = records.len(), "rewrote the raft log without its purged entries");
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The log store; clones share one view and one writer (openraft's reader
/// is a clone).
#[derive(Clone)]
pub struct LogStore {
    mem: Arc<Mutex<Mem>>,
    file: Arc<Mutex<RecordLog>>,
    queue: std::sync::mpsc::Sender<Op>,
    path: PathBuf,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What [`LogStore::open`] found.
#[derive(Debug)]
pub struct OpenedLog {
    pub store: LogStore,
    /// Where a torn tail was cut off, and how many bytes it had.
    pub torn: Option<(u64, u64)>,
    /// Whether the file held no record (a replica that never ran).
    pub pristine: bool,
}

impl LogStore {
    /// Opens (or creates) the log at `dir/log` and replays it.
    pub fn open(dir: &Path) -> Result<OpenedLog, RecordError> {
        let path = dir.join(FILE);
        std::fs::create_dir_all(dir).map_err(|source| RecordError::Io {
            path: path.clone(),
            op: "create the directory of",
            source,
        })?;
        let opened = RecordLog::open(&path)?;
        let mut mem = Mem::default();
        for r in &opened.records {
            let rec: LogRecord =
                serde_json::from_slice(&r.payload).map_err(|e| RecordError::Corrupt {
                    path: path.clone(),
                    offset: r.offset,
                    detail: format!("a record that checks out is not a raft log record: {e}"),
                })?;
            mem.apply(rec);
        }
        let pristine = opened.records.is_empty();
        let mut file = opened.log;
        if !file.keep_reserve(RESERVE)? {
            tracing::warn!(path = %path.display(), reserve = RESERVE, "the journal's disk is full: starting on what is left of its reserve");
        }
        let file = Arc::new(Mutex::new(file));
        let (queue, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn({
                let (file, path) = (file.clone(), path.clone());
                move || writer(file, path, rx)
            })
            .map_err(|source| RecordError::Io {
                path: path.clone(),
                op: "start the writer thread for",
                source,
            })?;
        Ok(OpenedLog {
            store: LogStore {
                mem: Arc::new(Mutex::new(mem)),
                file,
                queue,
                path,
            },
            torn: opened.torn.map(|t| (t.offset, t.bytes)),
            pristine,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the reserve could not be kept whole (the disk is full).
    pub fn low_space(&self) -> bool {
        lock(&self.file).low_space()
    }

    /// How much of the reserve is left to append into.
    pub fn reserve_left(&self) -> u64 {
        lock(&self.file).reserve_left()
    }

    /// Tries to write the reserve back to full; whether it is whole.
    pub fn retry_reserve(&self) -> bool {
        lock(&self.file).retry_reserve()
    }

    /// Whether the file is still the one opened (see
    /// [`RecordLog::check_identity`]).
    pub fn check_identity(&self) -> Result<(), RecordError> {
        lock(&self.file).check_identity()
    }

    fn queue(&self, op: Op) -> io::Result<()> {
        self.queue
            .send(op)
            .map_err(|_| io::Error::other("the journal's writer thread stopped"))
    }

    /// Queues `records`, applies them to the view, and waits until they
    /// are on disk (off the runtime's threads).
    async fn write_and_wait(&self, records: Vec<LogRecord>) -> io::Result<()> {
        let bytes = records.iter().map(encode).collect::<io::Result<Vec<_>>>()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut mem = lock(&self.mem);
            self.queue(Op::Append(bytes, Done::Signal(tx)))?;
            for r in records {
                mem.apply(r);
            }
        }
        wait(rx).await
    }
}

async fn wait(rx: tokio::sync::oneshot::Receiver<io::Result<()>>) -> io::Result<()> {
    rx.await
        .unwrap_or_else(|_| Err(io::Error::other("the journal's writer thread stopped")))
}

fn to_io(e: &RecordError) -> io::Error {
    let kind = if e.is_disk_full() {
        io::ErrorKind::StorageFull
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, io::Error> {
        Ok(lock(&self.mem)
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(lock(&self.mem).vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = lock(&self.mem);
        Ok(LogState {
            last_purged_log_id: mem.purged,
            last_log_id: mem.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write_and_wait(vec![LogRecord::Vote(*vote)]).await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Readable at once, durable when the writer's sync completes the
        // callback: openraft counts an entry only once it is flushed.
        let records: Vec<LogRecord> = entries
            .into_iter()
            .map(|e| LogRecord::Entry(Box::new(e)))
            .collect();
        let bytes = records.iter().map(encode).collect::<io::Result<Vec<_>>>()?;
        let mut mem = lock(&self.mem);
        self.queue(Op::Append(bytes, Done::Flushed(callback)))?;
        for r in records {
            mem.apply(r);
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.write_and_wait(vec![LogRecord::Truncate {
            after: last_log_id.map(|l| l.index),
        }])
        .await
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), io::Error> {
        self.write_and_wait(vec![LogRecord::Purge { upto }]).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut mem = lock(&self.mem);
            if mem.dead < REWRITE_AFTER_PURGED {
                return Ok(());
            }
            let bytes = mem
                .live_records()
                .iter()
                .map(encode)
                .collect::<io::Result<Vec<_>>>()?;
            // Queued under the view's lock: no append can slip in between
            // the records it copies and the file it replaces.
            self.queue(Op::Rewrite(bytes, Done::Signal(tx)))?;
            mem.dead = 0;
        }
        wait(rx).await
    }
}
