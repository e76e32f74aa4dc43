//! Framed, checksummed record logs: the on-disk form of the coordinator's
//! journal and of the agent's command journal.
//!
//! This module owns the file format and the rules for reading it back. It
//! knows nothing of what a record holds (callers encode their own entries);
//! it must never hand back a record whose checksum failed, and never let a
//! bad file read as an empty history.
//!
//! The file starts with the 8-byte magic [`MAGIC`]. Each record is framed:
//!
//! ```text
//! ┌──────────┬──────────────┬──────────────┬───────────────┐
//! │ len: u32 │ crc(payload) │ crc(len,crc) │ payload (len) │   all little-endian
//! └──────────┴──────────────┴──────────────┴───────────────┘
//! ```
//!
//! Reading it back ([`RecordLog::open`]):
//! - a valid record is returned with the offset it starts at;
//! - a frame that does not check out (cut short, a header or payload that
//!   fails its checksum) with **no valid frame anywhere after it** is a
//!   torn tail: the last append, cut short by a crash or a full disk, or
//!   the zeroed space a crash or the reserve leaves. It is truncated, and
//!   reported with its offset for the caller to warn;
//! - a frame that does not check out with a valid frame after it is
//!   corruption (records were appended after it, so no crash tore it): it
//!   refuses to open, naming the file and the offset
//!   ([`RecordError::Corrupt`]). So does a file that does not start with
//!   the magic. Only an empty (or missing) file is an empty log.
//!
//! Appending ([`RecordLog::append`]) writes one frame at the end of the last
//! good record and syncs it. A log may keep a reserve
//! ([`RecordLog::keep_reserve`]): that many zero bytes written past the last
//! record, so that on a full disk the next appends still land on space the
//! filesystem has already given, and [`RecordLog::low_space`] says the
//! reserve is being used. Zeros at the end read back as space, never as a
//! torn record. A write or sync that fails (a full disk) cuts
//! the partial frame off again, so a later append never lands behind a
//! fragment. Before each append the path is checked to still name the open
//! file: a log deleted or replaced under the running process is refused
//! ([`RecordError::Replaced`]), never written into the void.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The first bytes of every record log.
pub const MAGIC: &[u8; 8] = b"BATONRL1";

/// A frame header: length, payload checksum, header checksum.
const HEADER: usize = 12;

/// The largest record this module writes or believes.
pub const MAX_RECORD: usize = 64 << 20;

/// Why a record log cannot be opened or appended to.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path} is corrupt at byte offset {offset}: {detail}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("cannot {op} {path}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{path} was deleted or replaced while this process had it open; refusing to write a record nobody would read back"
    )]
    Replaced { path: PathBuf },
    #[error("refusing to write a record of {len} bytes to {path}: the limit is {MAX_RECORD}")]
    TooLarge { path: PathBuf, len: usize },
}

impl RecordError {
    /// Whether the disk is out of space (an append may succeed later).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, RecordError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// A torn tail that [`RecordLog::open`] cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Torn {
    /// Where the torn bytes began (the file's new length).
    pub offset: u64,
    /// How many bytes were cut off.
    pub bytes: u64,
}

/// One record read back, with the offset its frame starts at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub payload: Vec<u8>,
}

impl Record {
    /// Where the next frame starts.
    pub fn end(&self) -> u64 {
        self.offset + (HEADER + self.payload.len()) as u64
    }
}

/// What [`RecordLog::open`] found.
#[derive(Debug)]
pub struct Opened {
    pub log: RecordLog,
    pub records: Vec<Record>,
    pub torn: Option<Torn>,
}

/// An open record log.
#[derive(Debug)]
pub struct RecordLog {
    path: PathBuf,
    file: File,
    /// The end of the last good record: where the next frame goes.
    end: u64,
    /// A failed append left bytes past `end` that could not be cut off yet.
    dirty_tail: bool,
    /// Bytes kept written (as zeros) past `end`, so the next appends land
    /// on space the filesystem has already given: when the disk fills,
    /// the log still has this much to record the way out.
    reserve: u64,
    /// How far the file is written (records, then the reserve's zeros).
    allocated: u64,
    /// The last top-up of the reserve failed: the disk is (nearly) full and
    /// the appends are eating the reserve.
    low_space: bool,
    /// The open file's (device, inode), compared with the path's before
    /// each append.
    identity: (u64, u64),
}

fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// One frame for `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let body = crc(&[payload]).to_le_bytes();
    let head = crc(&[&len, &body]).to_le_bytes();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&body);
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Where a scan of `bytes` (the whole file) stopped.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// Every byte is a good record.
    Clean,
    /// The tail from this offset is torn.
    Torn(u64),
    /// A bad frame at this offset, with more of the file after it.
    Corrupt(u64, String),
}

/// Whether a whole, valid frame starts anywhere in `bytes` after `from`.
fn valid_frame_after(bytes: &[u8], from: usize) -> bool {
    (from + 1..bytes.len().saturating_sub(HEADER - 1)).any(|at| {
        let rest = &bytes[at..];
        let len = u32_at(rest, 0) as usize;
        crc(&[&rest[0..4], &rest[4..8]]) == u32_at(rest, 8)
            && len <= MAX_RECORD
            && rest.len() >= HEADER + len
            && crc(&[&rest[HEADER..HEADER + len]]) == u32_at(rest, 4)
    })
}

/// Splits `bytes` (after the magic) into records. A frame that does not
/// check out is the torn tail when no valid frame follows it anywhere (the
/// last append, cut short, or never written past a zeroed or preallocated
/// tail); when one does, records after it were appended later, so it is
/// corruption, not a crash.
fn scan(bytes: &[u8], records: &mut Vec<Record>) -> Scan {
    scan_from(bytes, MAGIC.len(), records)
}

/// [`scan`] from `from`, a record boundary.
fn scan_from(bytes: &[u8], from: usize, records: &mut Vec<Record>) -> Scan {
    let mut at = from;
    let end = bytes.len();
    while at < end {
        let rest = &bytes[at..];
        let offset = at as u64;
        let bad = |detail: &str| {
            if valid_frame_after(bytes, at) {
                Scan::Corrupt(offset, format!("{detail}, and valid records follow it"))
            } else {
                Scan::Torn(offset)
            }
        };
        if rest.len() < HEADER {
            return bad("a record header is cut short");
        }
        let len = u32_at(rest, 0) as usize;
        if crc(&[&rest[0..4], &rest[4..8]]) != u32_at(rest, 8) {
            return bad("a record header fails its checksum");
        }
        if len > MAX_RECORD {
            return bad(&format!(
                "a record claims {len} bytes, over the {MAX_RECORD}-byte limit"
            ));
        }
        if rest.len() < HEADER + len {
            return bad("a record runs past the end of the file");
        }
        let payload = &rest[HEADER..HEADER + len];
        if crc(&[payload]) != u32_at(rest, 4) {
            return bad("a record's payload fails its checksum");
        }
        records.push(Record {
            offset,
            payload: payload.to_vec(),
        });
        at += HEADER + len;
    }
    Scan::Clean
}

/// Syncs the directory holding `path`, so a created or renamed file's
/// name is durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// Reads the records of the log at `path` without changing it (for
/// readers beside the process that writes it: a torn tail may be an append
/// in progress, so it is reported, never cut off). A missing file is an
/// empty log.
pub fn read(path: &Path) -> Result<(Vec<Record>, Option<Torn>), RecordError> {
    read_after(path, MAGIC.len() as u64)
}

/// [`read`], returning only the records from `offset` on (the end of a
/// record an earlier read returned): a reader following a live log checks
/// only what is new.
pub fn read_after(path: &Path, offset: u64) -> Result<(Vec<Record>, Option<Torn>), RecordError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(source) => {
            return Err(RecordError::Io {
                path: path.to_owned(),
                op: "read",
                source,
            });
        }
    };
    if bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
        return Ok((Vec::new(), None));
    }
    if !bytes.starts_with(MAGIC) {
        return Err(RecordError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            detail: "it does not start with the record-log magic".into(),
        });
    }
    let mut records = Vec::new();
    let from = (offset as usize).clamp(MAGIC.len(), bytes.len());
    match scan_from(&bytes, from, &mut records) {
        Scan::Clean => Ok((records, None)),
        Scan::Torn(offset) => Ok((
            records,
            Some(Torn {
                offset,
                bytes: bytes.len() as u64 - offset,
            }),
        )),
        Scan::Corrupt(offset, detail) => Err(RecordError::Corrupt {
            path: path.to_owned(),
            offset,
            detail,
        }),
    }
}

/// Free bytes an unprivileged writer can use on the filesystem holding
/// `path` (what a log's appends can still take).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the widths differ by platform
    let (blocks, size) = (
        u64::from(s.blocks_available()),
        u64::from(s.fragment_size()),
    );
    Ok(blocks.saturating_mul(size))
}

/// Parses a JSON-lines file written before this format, for a one-time
/// import: every non-blank line goes through `parse`. A last line with no
/// newline after it that does not parse was torn by a crash and never
/// counted: it is dropped, and its 1-based number returned. Any other line
/// that does not parse (including one that is not UTF-8) fails, with its
/// number: an import never drops history silently.
pub fn parse_legacy_lines<T>(
    bytes: &[u8],
    mut parse: impl FnMut(&str) -> Result<T, String>,
) -> Result<(Vec<T>, Option<usize>), (usize, String)> {
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let mut out = Vec::new();
    let mut torn = None;
    for (i, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = std::str::from_utf8(line)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(&mut parse);
        match parsed {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == lines.len() => torn = Some(i + 1),
            Err(detail) => return Err((i + 1, detail)),
        }
    }
    Ok((out, torn))
}

/// Renames an imported legacy file to `<name>.imported`, so it is imported
/// once and kept for the operator.
pub fn set_aside_imported(legacy: &Path) -> std::io::Result<PathBuf> {
    let mut name = legacy.as_os_str().to_owned();
    name.push(".imported");
    let done = PathBuf::from(name);
    fs::rename(legacy, &done)?;
    sync_parent(&done)?;
    Ok(done)
}

impl RecordLog {
    /// Opens `path`, creating it (with its magic) when it is missing or
    /// empty, and reads every record back. A torn tail is cut off and
    /// returned in [`Opened::torn`]; corruption refuses.
    pub fn open(path: &Path) -> Result<Opened, RecordError> {
        let io = |op, source| RecordError::Io {
            path: path.to_owned(),
            op,
            source,
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("open", e))?;
        let bytes = fs::read(path).map_err(|e| io("read", e))?;
        let mut records = Vec::new();
        let (end, torn) = if bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
            // Missing, empty, or its creation was cut short: a new log.
            file.set_len(0).map_err(|e| io("truncate", e))?;
            file.write_all_at(MAGIC, 0).map_err(|e| io("write", e))?;
            file.sync_all().map_err(|e| io("sync", e))?;
            sync_parent(path).map_err(|e| io("sync the directory of", e))?;
            (MAGIC.len() as u64, None)
        } else if !bytes.starts_with(MAGIC) {
            return Err(RecordError::Corrupt {
                path: path.to_owned(),
                offset: 0,
                detail: format!(
                    "it does not start with the record-log magic {:?}",
                    String::from_utf8_lossy(MAGIC)
                ),
            });
        } else {
            match scan(&bytes, &mut records) {
                Scan::Clean => (bytes.len() as u64, None),
                Scan::Torn(offset) => {
                    file.set_len(offset).map_err(|e| io("truncate", e))?;
                    file.sync_all().map_err(|e| io("sync", e))?;
                    // Zeros are the reserve (or space a crash left
                    // unwritten), not a record cut short.
                    let zeros = bytes[offset as usize..].iter().all(|b| *b == 0);
                    let torn = (!zeros).then(|| Torn {
                        offset,
                        bytes: bytes.len() as u64 - offset,
                    });
                    (offset, torn)
                }
                Scan::Corrupt(offset, detail) => {
                    return Err(RecordError::Corrupt {
                        path: path.to_owned(),
                        offset,
                        detail,
                    });
                }
            }
        };
        let meta = file.metadata().map_err(|e| io("stat", e))?;
        Ok(Opened {
            log: RecordLog {
                path: path.to_owned(),
                file,
                end,
                dirty_tail: false,
                reserve: 0,
                allocated: end,
                low_space: false,
                identity: (meta.dev(), meta.ino()),
            },
            records,
            torn,
        })
    }

    /// Writes `records` as a new log at `path`, atomically: into a
    /// temporary file beside it, synced, then renamed over `path`. For a
    /// one-time import and for rewriting a log without its dead records.
    pub fn create_with(path: &Path, records: &[&[u8]]) -> Result<RecordLog, RecordError> {
        let io = |op, source| RecordError::Io {
            path: path.to_owned(),
            op,
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut bytes = MAGIC.to_vec();
        for r in records {
            if r.len() > MAX_RECORD {
                return Err(RecordError::TooLarge {
                    path: path.to_owned(),
                    len: r.len(),
                });
            }
            bytes.extend_from_slice(&frame(r));
        }
        let written = (|| {
            let f = File::create(&tmp)?;
            f.write_all_at(&bytes, 0)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            sync_parent(path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io("write", e));
        }
        Ok(RecordLog::open(path)?.log)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the next record goes (the file's length when all is well).
    pub fn len(&self) -> u64 {
        self.end
    }

    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.end == MAGIC.len() as u64
    }

    /// Keeps `bytes` of space written past the last record from now on
    /// (see [`RecordLog::low_space`]); returns whether it is all there.
    pub fn keep_reserve(&mut self, bytes: u64) -> Result<bool, RecordError> {
        self.reserve = bytes;
        self.top_up(self.end);
        self.file.sync_data().map_err(|source| RecordError::Io {
            path: self.path.clone(),
            op: "sync",
            source,
        })?;
        Ok(!self.low_space)
    }

    /// Whether the reserve could not be kept whole: the disk is full and
    /// each append now eats into it. A caller should stop taking on new
    /// work and use what is left to reach a safe point.
    pub fn low_space(&self) -> bool {
        self.low_space
    }

    /// Whether the file at the log's path is still the one it opened (not
    /// deleted, not replaced); every append checks this first.
    pub fn check_identity(&self) -> Result<(), RecordError> {
        match fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => Ok(()),
            Ok(_) => Err(RecordError::Replaced {
                path: self.path.clone(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RecordError::Replaced {
                path: self.path.clone(),
            }),
            Err(source) => Err(RecordError::Io {
                path: self.path.clone(),
                op: "stat",
                source,
            }),
        }
    }

    /// How many bytes are written past the last record: what an append can
    /// still use on a full disk.
    pub fn reserve_left(&self) -> u64 {
        self.allocated.saturating_sub(self.end)
    }

    /// Tries to write the reserve back to full (a disk that had filled may
    /// have room again); returns whether it is whole.
    pub fn retry_reserve(&mut self) -> bool {
        if self.low_space {
            self.top_up(self.end);
            if self.file.sync_data().is_err() {
                self.low_space = true;
            }
        }
        !self.low_space
    }

    /// Writes zeros from what is written up to `end + reserve`; a failure
    /// (a full disk) sets `low_space` and keeps whatever was written.
    fn top_up(&mut self, end: u64) {
        let want = end + self.reserve;
        if self.allocated >= want {
            self.low_space = false;
            return;
        }
        let zeros = vec![0u8; (want - self.allocated) as usize];
        match self.file.write_all_at(&zeros, self.allocated) {
            Ok(()) => {
                self.allocated = want;
                self.low_space = false;
            }
            Err(_) => {
                // Some of it may be there; the length says how much.
                self.allocated = self.file.metadata().map_or(end, |m| m.len().max(end));
                self.low_space = true;
            }
        }
    }

    /// Appends one record and syncs it. On failure nothing was recorded:
    /// the partial frame is cut off (or, if even that fails, cut off
    /// before the next append).
    pub fn append(&mut self, payload: &[u8]) -> Result<(), RecordError> {
        self.append_all(&[payload])
    }

    /// Appends `payloads` in order with one write and one sync (a group
    /// commit). All or nothing: on failure every frame of the batch is cut
    /// off, as [`RecordLog::append`] does for one.
    pub fn append_all(&mut self, payloads: &[&[u8]]) -> Result<(), RecordError> {
        let path = self.path.clone();
        let io = |op, source| RecordError::Io {
            path: path.clone(),
            op,
            source,
        };
        if let Some(big) = payloads.iter().find(|p| p.len() > MAX_RECORD) {
            return Err(RecordError::TooLarge {
                path: self.path.clone(),
                len: big.len(),
            });
        }
        self.check_identity()?;
        if self.dirty_tail {
            self.file.set_len(self.end).map_err(|e| io("truncate", e))?;
            self.dirty_tail = false;
            self.allocated = self.end;
        }
        let bytes: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
        let mut written = self.file.write_all_at(&bytes, self.end);
        if written.is_ok() {
            let end = self.end + bytes.len() as u64;
            self.allocated = self.allocated.max(end);
            if self.reserve > 0 {
                self.top_up(end);
            }
            written = self.file.sync_data();
        }
        match written {
            Ok(()) => {
                self.end += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // The frames (and any reserve) are cut off: the next append
                // starts clean, and finds its space again.
                if self.file.set_len(self.end).is_err() {
                    self.dirty_tail = true;
                }
                self.allocated = self.end;
                Err(io("append to", e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(o: &Opened) -> Vec<Vec<u8>> {
        o.records.iter().map(|r| r.payload.clone()).collect()
    }

    fn log_with(dir: &Path, records: &[&[u8]]) -> PathBuf {
        let path = dir.join("j.log");
        let mut log = RecordLog::open(&path).unwrap().log;
        for r in records {
            log.append(r).unwrap();
        }
        path
    }

    #[test]
    fn a_batch_is_one_write_in_order_and_reads_back_as_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_with(dir.path(), &[b"zero"]);
        let mut log = RecordLog::open(&path).unwrap().log;
        log.append_all(&[b"one", b"two", b""]).unwrap();
        let end = log.len();
        log.append_all(&[]).unwrap();
        assert_eq!(log.len(), end, "an empty batch writes nothing");
        let o = RecordLog::open(&path).unwrap();
        assert_eq!(
            payloads(&o),
            vec![b"zero".to_vec(), b"one".to_vec(), b"two".to_vec(), vec![]]
        );
        assert_eq!(o.records.last().unwrap().end(), end);
        let big = vec![0u8; MAX_RECORD + 1];
        let mut log = o.log;
        assert!(matches!(
            log.append_all(&[b"ok", &big]),
            Err(RecordError::TooLarge { .. })
        ));
        assert_eq!(log.len(), end, "a refused batch records none of it");
    }

    #[test]
    fn records_survive_a_reopen_with_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_with(dir.path(), &[b"one", b"", "µs \u{ff}".as_bytes()]);
        let o = RecordLog::open(&path).unwrap();
        assert_eq!(
            payloads(&o),
            vec![b"one".to_vec(), vec![], "µs \u{ff}".as_bytes().to_vec()]
        );
        assert_eq!(o.torn, None);
        assert_eq!(o.records[0].offset, 8);
        assert_eq!(o.records[1].offset, 8 + 12 + 3);
        assert_eq!(o.log.len(), fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn a_missing_or_empty_file_is_an_empty_log_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.log");
        let o = RecordLog::open(&path).unwrap();
        assert!(o.records.is_empty() && o.log.is_empty());
        assert_eq!(fs::read(&path).unwrap(), MAGIC);
        fs::write(&path, b"").unwrap();
        assert!(RecordLog::open(&path).unwrap().log.is_empty());
        // A creation cut short inside the magic.
        fs::write(&path, &MAGIC[..3]).unwrap();
        assert!(RecordLog::open(&path).unwrap().log.is_empty());
        // Anything else (a JSON-lines journal, garbage) is not a record log.
        fs::write(&path, b"{\"id\":\"x\"}\n").unwrap();
        let err = RecordLog::open(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt at byte offset 0"), "{err}");
        assert!(err.contains("new.log"), "{err}");
        fs::write(&path, b"\xff").unwrap();
        assert!(RecordLog::open(&path).is_err());
    }

    #[test]
    fn every_torn_tail_is_cut_off_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_with(dir.path(), &[b"first", b"second"]);
        let good = fs::read(&path).unwrap();
        let last = frame(b"third entry");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("one appended 0xff byte", vec![0xff]),
            ("a header cut short", last[..7].to_vec()),
            ("a payload cut short", last[..last.len() - 2].to_vec()),
            ("a last payload that fails its checksum", {
                let mut f = last.clone();
                let n = f.len();
                f[n - 1] ^= 0x20;
                f
            }),
        ];
        for (what, tail) in cases {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&tail);
            fs::write(&path, &bytes).unwrap();
            let o = RecordLog::open(&path).unwrap();
            assert_eq!(
                payloads(&o),
                vec![b"first".to_vec(), b"second".to_vec()],
                "{what}"
            );
            assert_eq!(
                o.torn,
                Some(Torn {
                    offset: good.len() as u64,
                    bytes: tail.len() as u64
                }),
                "{what}"
            );
            assert_eq!(
                fs::read(&path).unwrap(),
                good,
                "{what}: the tail is cut off on disk"
            );
            // And the next append starts a clean frame.
            let mut log = o.log;
            log.append(b"next").unwrap();
            let again = RecordLog::open(&path).unwrap();
            assert_eq!(again.records.len(), 3, "{what}");
            assert_eq!(again.torn, None, "{what}");
        }
    }

    #[test]
    fn a_zeroed_tail_is_space_not_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_with(dir.path(), &[b"first"]);
        let good = fs::read(&path).unwrap();
        let mut bytes = good.clone();
        bytes.extend_from_slice(&[0; 4000]);
        fs::write(&path, &bytes).unwrap();
        let o = RecordLog::open(&path).unwrap();
        assert_eq!(payloads(&o), vec![b"first".to_vec()]);
        assert_eq!(o.torn, None, "nothing was lost, nothing to warn about");
        assert_eq!(fs::read(&path).unwrap(), good);
    }

    #[test]
    fn the_reserve_lets_appends_go_on_after_the_disk_fills_and_comes_back() {
        let disk = crate::testutil::SmallDisk::mount();
        let path = disk.path().join("j.log");
        let mut log = RecordLog::open(&path).unwrap().log;
        assert!(log.keep_reserve(16 << 10).unwrap());
        assert!(!log.low_space());
        log.append(b"before").unwrap();
        disk.fill("filler");
        // The disk is full: the reserve cannot be topped up, but the
        // appends land in it.
        let record = vec![b'r'; 1000];
        let (mut appended, mut in_reserve) = (0, 0);
        let err = loop {
            match log.append(&record) {
                Ok(()) => appended += 1,
                Err(e) => break e,
            }
            // Once a top-up fails (the last page's slack used), every
            // later append lives on the reserve.
            if log.low_space() {
                in_reserve += 1;
            }
            assert!(appended < 100, "the reserve never ran out");
        };
        assert!(err.is_disk_full(), "{err}");
        assert!(log.low_space());
        assert!(
            in_reserve >= 12,
            "16 KiB of reserve took only {in_reserve} records of 1 KB"
        );
        assert!(!log.retry_reserve(), "still full");
        fs::remove_file(disk.path().join("filler")).unwrap();
        assert!(log.retry_reserve(), "space came back");
        assert!(!log.low_space());
        log.append(b"after").unwrap();
        let o = RecordLog::open(&path).unwrap();
        assert_eq!(o.torn, None);
        assert_eq!(o.records.len(), 1 + appended + 1);
        assert_eq!(o.records.last().unwrap().payload, b"after");
    }

    #[test]
    fn a_flipped_byte_before_the_last_record_refuses_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_with(dir.path(), &[b"first", b"second", b"third"]);
        let good = fs::read(&path).unwrap();
        let second = 8 + 12 + 5;
        // Every byte of the second frame: its header and its payload.
        for at in second..second + 12 + 6 {
            let mut bytes = good.clone();
            bytes[at] ^= 0x01;
            fs::write(&path, &bytes).unwrap();
            let err = RecordLog::open(&path).unwrap_err();
            match &err {
                RecordError::Corrupt { offset, .. } => {
                    assert_eq!(*offset, second as u64, "byte {at}: {err}")
                }
                other => panic!("byte {at}: {other}"),
            }
            assert!(err.to_string().contains("j.log"), "{err}");
            assert_eq!(fs::read(&path).unwrap(), bytes, "a refusal changes nothing");
        }
        // A flipped magic byte.
        let mut bytes = good.clone();
        bytes[2] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            RecordLog::open(&path),
            Err(RecordError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn read_reports_a_torn_tail_without_cutting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_with(dir.path(), &[b"a", b"b"]);
        let mut bytes = fs::read(&path).unwrap();
        let good = bytes.len() as u64;
        bytes.extend_from_slice(&frame(b"in progress")[..5]);
        fs::write(&path, &bytes).unwrap();
        let (records, torn) = read(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            torn,
            Some(Torn {
                offset: good,
                bytes: 5
            })
        );
        assert_eq!(fs::read(&path).unwrap(), bytes, "read changes nothing");
        // From the end of the first record: only the second.
        let second = records[1].offset;
        let (rest, _) = read_after(&path, second).unwrap();
        assert_eq!(rest, records[1..].to_vec());
        assert_eq!(read(&dir.path().join("none.log")).unwrap().0, vec![]);
        // The first record's payload, with the second still valid after it.
        bytes[8 + 12] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read(&path),
            Err(RecordError::Corrupt { offset: 8, .. })
        ));
    }

    #[test]
    fn legacy_lines_drop_only_a_torn_last_line() {
        let parse = |l: &str| l.parse::<u32>().map_err(|e| e.to_string());
        assert_eq!(
            parse_legacy_lines(b"1\n2\n\n3\n", parse),
            Ok((vec![1, 2, 3], None))
        );
        assert_eq!(
            parse_legacy_lines(b"1\n2\n3x", parse),
            Ok((vec![1, 2], Some(3)))
        );
        assert_eq!(
            parse_legacy_lines(b"1\n\xff", parse),
            Ok((vec![1], Some(2)))
        );
        assert_eq!(parse_legacy_lines(b"1\nx\n3\n", parse).unwrap_err().0, 2);
        // The last line, whole (a newline after it), is not torn.
        assert_eq!(parse_legacy_lines(b"1\n3x\n", parse).unwrap_err().0, 2);
        let (line, detail) = parse_legacy_lines(b"\xff\n1\n", parse).unwrap_err();
        assert_eq!(line, 1);
        assert!(detail.contains("not UTF-8"), "{detail}");
    }

    #[test]
    fn a_deleted_or_replaced_log_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.log");
        let mut log = RecordLog::open(&path).unwrap().log;
        log.append(b"a").unwrap();
        fs::remove_file(&path).unwrap();
        assert!(matches!(
            log.append(b"b"),
            Err(RecordError::Replaced { .. })
        ));
        // A new file under the same name is another file.
        let mut other = RecordLog::open(&path).unwrap().log;
        other.append(b"c").unwrap();
        assert!(matches!(
            log.append(b"d"),
            Err(RecordError::Replaced { .. })
        ));
        let o = RecordLog::open(&path).unwrap();
        assert_eq!(payloads(&o), vec![b"c".to_vec()]);
    }

    #[test]
    fn create_with_writes_a_whole_log_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.log");
        fs::write(&path, b"old contents").unwrap();
        let mut log = RecordLog::create_with(&path, &[b"x", b"y"]).unwrap();
        log.append(b"z").unwrap();
        let o = RecordLog::open(&path).unwrap();
        assert_eq!(
            payloads(&o),
            vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]
        );
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn oversized_records_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.log");
        let mut log = RecordLog::open(&path).unwrap().log;
        let big = vec![0u8; MAX_RECORD + 1];
        assert!(matches!(
            log.append(&big),
            Err(RecordError::TooLarge { .. })
        ));
        assert!(log.is_empty());
        assert_eq!(fs::read(&path).unwrap(), MAGIC);
    }

    #[test]
    fn a_full_disk_records_nothing_leaves_no_fragment_and_recovers() {
        let disk = crate::testutil::SmallDisk::mount();
        let path = disk.path().join("j.log");
        let filler = disk.path().join("filler");
        fs::write(&filler, vec![1u8; 16 << 10]).unwrap();
        let mut log = RecordLog::open(&path).unwrap().log;
        let record = vec![b'r'; 3000];
        let mut written = 0;
        let err = loop {
            match log.append(&record) {
                Ok(()) => written += 1,
                Err(e) => break e,
            }
            assert!(written < 100, "a 64 KiB disk never filled");
        };
        assert!(err.is_disk_full(), "{err}");
        assert!(written > 0);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            log.len(),
            "no fragment is left"
        );
        // Space comes back: the next append is whole, right after the last.
        fs::remove_file(&filler).unwrap();
        log.append(b"after").unwrap();
        let o = RecordLog::open(&path).unwrap();
        assert_eq!(o.torn, None);
        assert_eq!(o.records.len(), written + 1);
        assert_eq!(o.records.last().unwrap().payload, b"after");
    }
}
