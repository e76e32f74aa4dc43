//! An in-memory journal for tests: the same apply-first rule as the file
//! journal, no disk. Shared (`Arc`) between two drivers, it stands in for a
//! journal that outlives a coordinator restart. [`MemoryJournal::fail_writes`]
//! makes it refuse every write the way a full disk does.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use super::{Applied, Entry, Journal, JournalError};

/// Entries in a `Vec`, applied as they are proposed.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    /// Every accepted entry, in order; held across apply-and-publish so
    /// proposals are applied one at a time.
    entries: Mutex<Vec<Entry>>,
    /// Publishes the applied state to every subscriber.
    applied: watch::Sender<Applied>,
    /// While set, every proposal fails as a full disk would.
    failing: AtomicBool,
    /// While set, the journal says its disk is nearly full (it still
    /// records).
    low: AtomicBool,
}

impl MemoryJournal {
    pub fn new() -> Self {
        Self::default()
    }

    /// While `on`, every proposal fails with "No space left on device".
    pub fn fail_writes(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// While `on`, the journal reports its disk nearly full.
    pub fn set_low_space(&self, on: bool) {
        self.low.store(on, Ordering::SeqCst);
    }

    /// Every accepted entry so far, in order.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[tonic::async_trait]
impl Journal for MemoryJournal {
    async fn propose(&self, entry: Entry) -> Result<u64, JournalError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.applied.borrow().applying(&entry)?;
        if self.failing.load(Ordering::SeqCst) {
            return Err(JournalError::Write {
                path: "memory".into(),
                source: std::io::Error::from_raw_os_error(28),
            });
        }
        entries.push(entry);
        let index = next.applied - 1;
        self.applied.send_replace(next);
        Ok(index)
    }

    fn subscribe(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    fn low_space(&self) -> bool {
        self.low.load(Ordering::SeqCst)
    }

    async fn check_space(&self) -> bool {
        !self.low.load(Ordering::SeqCst)
    }
}
