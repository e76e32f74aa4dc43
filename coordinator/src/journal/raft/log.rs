//! The replica's Raft log on disk: one [`baton_store::records`] log
//! (`<state_dir>/replica/log`), every mutation a checksummed record.
//!
//! This module owns that file. An append, a vote, a truncation and a purge
//! are each a record, synced before openraft is told it is durable (a batch
//! of entries is one write and one sync); opening the file replays them in
//! order, so the view after kill -9 is the view at the last sync. A torn
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

#[derive(Debug)]
struct Inner {
    mem: Mem,
    file: RecordLog,
}

/// The log store; clones share one file (openraft's reader is a clone).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    path: PathBuf,
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
        Ok(OpenedLog {
            store: LogStore {
                inner: Arc::new(Mutex::new(Inner { mem, file })),
                path,
            },
            torn: opened.torn.map(|t| (t.offset, t.bytes)),
            pristine,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the reserve could not be kept whole (the disk is full).
    pub fn low_space(&self) -> bool {
        self.lock().file.low_space()
    }

    /// How much of the reserve is left to append into.
    pub fn reserve_left(&self) -> u64 {
        self.lock().file.reserve_left()
    }

    /// Tries to write the reserve back to full; whether it is whole.
    pub fn retry_reserve(&self) -> bool {
        self.lock().file.retry_reserve()
    }

    /// Appends `records` with one sync; the view changes only once they
    /// are durable.
    fn write(&self, records: Vec<LogRecord>) -> io::Result<()> {
        let bytes = records.iter().map(encode).collect::<io::Result<Vec<_>>>()?;
        let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        let mut inner = self.lock();
        inner.file.append_all(&slices).map_err(to_io)?;
        for r in records {
            inner.mem.apply(r);
        }
        Ok(())
    }
}

fn to_io(e: RecordError) -> io::Error {
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
        Ok(self
            .lock()
            .mem
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().mem.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.mem.purged,
            last_log_id: inner.mem.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write(vec![LogRecord::Vote(*vote)])
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
        let records = entries
            .into_iter()
            .map(|e| LogRecord::Entry(Box::new(e)))
            .collect();
        let written = self.write(records);
        let reported = written
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), e.to_string()));
        callback.io_completed(reported);
        written
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.write(vec![LogRecord::Truncate {
            after: last_log_id.map(|l| l.index),
        }])
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), io::Error> {
        self.write(vec![LogRecord::Purge { upto }])?;
        let mut inner = self.lock();
        if inner.mem.dead < REWRITE_AFTER_PURGED {
            return Ok(());
        }
        let bytes = inner
            .mem
            .live_records()
            .iter()
            .map(encode)
            .collect::<io::Result<Vec<_>>>()?;
        let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        let mut file = RecordLog::create_with(&self.path, &slices).map_err(to_io)?;
        if !file.keep_reserve(RESERVE).map_err(to_io)? {
            tracing::warn!(path = %self.path.display(), "the journal's disk is full after a rewrite: on its reserve");
        }
        inner.file = file;
        inner.mem.dead = 0;
        tracing::info!(path = %self.path.display(), live = slices.len(), "rewrote the raft log without its purged entries");
        Ok(())
    }
}

/// Every entry the log at `dir/log` holds that is not truncated or purged,
/// read without changing the file (for tests and tools).
pub fn read_entries(dir: &Path) -> Result<Vec<LogEntry>, RecordError> {
    let path = dir.join(FILE);
    let (records, _) = baton_store::records::read(&path)?;
    let mut mem = Mem::default();
    for r in records {
        let rec: LogRecord =
            serde_json::from_slice(&r.payload).map_err(|e| RecordError::Corrupt {
                path: path.clone(),
                offset: r.offset,
                detail: e.to_string(),
            })?;
        mem.apply(rec);
    }
    Ok(mem.entries.into_values().collect())
}
