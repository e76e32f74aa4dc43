//! A read-only reader of etcd's bbolt database files (a snapshot from
//! `Maintenance.Snapshot`, or a member's `member/snap/db`): it answers which
//! revision the file holds, read from the file itself, and which members the
//! cluster had (its `members` bucket, for a restore).
//!
//! This module owns bbolt's on-disk format as far as that answer needs it:
//! the two meta pages (magic `0xED0CDAED`, version 2, an FNV-1a 64 checksum;
//! the valid one with the highest txid wins), page headers, branch and leaf
//! elements, inline buckets and overflow pages. It reads pages on demand
//! with positioned reads, so a multi-GB file is never loaded whole, and it
//! checks every bound it follows: an error names the file, the byte offset
//! and what is wrong there.
//!
//! The revision is the highest main revision among the keys of etcd's `key`
//! bucket (each key is 8 bytes of big-endian main revision, `_`, 8 bytes of
//! big-endian sub revision, and a `t` when it is a tombstone), which is what
//! `etcdctl snapshot status` reports. The `meta` bucket's `consistent_index`
//! is read too when it is there.
//!
//! It never writes, and it knows nothing about etcd's processes or API.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// bbolt's magic number, in each meta page.
const MAGIC: u32 = 0xED0C_DAED;
/// The only data format version bbolt has written.
const VERSION: u32 = 2;
/// A page header: id u64, flags u16, count u16, overflow u32.
const PAGE_HEADER: usize = 16;
/// A meta page's body, checksum included.
const META_SIZE: usize = 64;
/// The checksum covers the meta body up to the checksum itself.
const META_CHECKED: usize = 56;
/// A branch or leaf element.
const ELEMENT: usize = 16;
/// A bucket's header in its parent's leaf value: root page id, sequence.
const BUCKET_HEADER: usize = 16;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
/// A leaf element that is a sub-bucket, not a key/value pair.
const BUCKET_LEAF: u32 = 0x01;

/// Deeper than any real B+tree of a file that fits on a disk: a deeper walk
/// means the pages point in a cycle.
const MAX_DEPTH: usize = 64;

/// The etcd mvcc keys bucket and the meta bucket.
const KEY_BUCKET: &[u8] = b"key";
const META_BUCKET: &[u8] = b"meta";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const MEMBERS_BUCKET: &[u8] = b"members";

/// What an etcd database file holds, as far as a backup needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbRevision {
    /// The highest main revision among the `key` bucket's keys (0 when the
    /// bucket is empty).
    pub revision: u64,
    /// How many keys (revisions, tombstones included) the `key` bucket holds.
    pub keys: u64,
    /// The `meta` bucket's `consistent_index`, when it has one.
    pub consistent_index: Option<u64>,
    /// The bbolt transaction id of the meta page that was read.
    pub txid: u64,
    pub page_size: u32,
}

/// Why a file is not a readable etcd database.
#[derive(Debug, thiserror::Error)]
#[error("{}: at byte {offset}: {what}", file.display())]
pub struct BoltError {
    pub file: PathBuf,
    pub offset: u64,
    pub what: String,
}

/// Reads the revision `path` holds. Blocking: call it from
/// `spawn_blocking` in async code.
pub fn read_revision(path: &Path) -> Result<DbRevision, BoltError> {
    Db::open(path)?.revision()
}

impl Db {
    fn open(path: &Path) -> Result<Db, BoltError> {
        let file = File::open(path).map_err(|e| BoltError {
            file: path.to_owned(),
            offset: 0,
            what: format!("cannot open it: {e}"),
        })?;
        let len = file
            .metadata()
            .map_err(|e| BoltError {
                file: path.to_owned(),
                offset: 0,
                what: format!("cannot read its size: {e}"),
            })?
            .len();
        let mut db = Db {
            path: path.to_owned(),
            file,
            len,
            meta: Meta::default(),
        };
        db.meta = db.pick_meta()?;
        Ok(db)
    }
}

/// One meta page's fields.
/// A cluster member as an etcd database records it (`members` bucket).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct DbMember {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

/// The cluster's members as the etcd database at `path` records them, in
/// the bucket's (member id) order.
pub fn read_members(path: &Path) -> Result<Vec<DbMember>, BoltError> {
    let db = Db::open(path)?;
    let Some((bucket, at)) = db.top_bucket(MEMBERS_BUCKET)? else {
        return Err(db.err(
            u64::from(db.meta.page_size) * db.meta.root,
            "the database has no `members` bucket: it is not an etcd 3.4+ database",
        ));
    };
    let root = db.bucket_root(&bucket, at)?;
    let mut out = Vec::new();
    db.walk(&root, 0, &mut |e| {
        if e.flags & BUCKET_LEAF != 0 {
            return Ok(());
        }
        let m: DbMember = serde_json::from_slice(e.value).map_err(|err| {
            db.err(
                e.value_at,
                format!("`members` bucket entry is not a member's JSON: {err}"),
            )
        })?;
        out.push(m);
        Ok(())
    })?;
    Ok(out)
}

#[derive(Clone, Copy, Debug, Default)]
struct Meta {
    page_size: u32,
    /// The root page of the top-level bucket tree.
    root: u64,
    /// The high-water mark: pages `0..pgid` exist.
    pgid: u64,
    txid: u64,
    /// Where this meta page's root field is, for messages.
    root_at: u64,
}

/// A page (or an inline bucket's page) in memory, and where it came from.
struct Page {
    buf: Vec<u8>,
    /// The file offset of `buf[0]`, for messages.
    base: u64,
}

impl Page {
    fn flags(&self) -> u16 {
        u16::from_le_bytes([self.buf[8], self.buf[9]])
    }

    fn count(&self) -> usize {
        u16::from_le_bytes([self.buf[10], self.buf[11]]) as usize
    }
}

/// What one element of a leaf holds.
struct LeafEntry<'a> {
    flags: u32,
    key: &'a [u8],
    value: &'a [u8],
    /// The file offset of the value, for messages and inline pages.
    value_at: u64,
}

struct Db {
    path: PathBuf,
    file: File,
    len: u64,
    meta: Meta,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// FNV-1a, 64 bit: bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn plausible_page_size(size: u32) -> bool {
    size.is_power_of_two() && (512..=1 << 20).contains(&size)
}

impl Db {
    fn err(&self, offset: u64, what: impl Into<String>) -> BoltError {
        BoltError {
            file: self.path.clone(),
            offset,
            what: what.into(),
        }
    }

    /// Reads exactly `n` bytes at `offset`, or says the file is too short.
    fn read_at(&self, offset: u64, n: usize, what: &str) -> Result<Vec<u8>, BoltError> {
        let end = offset.checked_add(n as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(self.err(
                offset,
                format!(
                    "truncated: {what} needs {n} bytes here but the file ends at byte {}",
                    self.len
                ),
            ));
        }
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| self.err(offset, format!("cannot read {what}: {e}")))?;
        Ok(buf)
    }

    /// Parses the meta page `id` at `offset`, checking its header, magic,
    /// version and checksum.
    fn meta_at(&self, id: u64, offset: u64) -> Result<Meta, BoltError> {
        let b = self.read_at(offset, PAGE_HEADER + META_SIZE, &format!("meta page {id}"))?;
        let m = &b[PAGE_HEADER..];
        let magic = u32_at(m, 0);
        if magic != MAGIC {
            return Err(self.err(
                offset + PAGE_HEADER as u64,
                format!(
                    "meta page {id}: magic is {magic:#010x}, not bbolt's {MAGIC:#010x}; this is not an etcd (bbolt) database"
                ),
            ));
        }
        let version = u32_at(m, 4);
        if version != VERSION {
            return Err(self.err(
                offset + PAGE_HEADER as u64 + 4,
                format!("meta page {id}: bbolt format version {version}, not {VERSION}"),
            ));
        }
        let stored = u64_at(m, META_CHECKED);
        let computed = fnv1a64(&m[..META_CHECKED]);
        if stored != computed {
            return Err(self.err(
                offset + (PAGE_HEADER + META_CHECKED) as u64,
                format!(
                    "meta page {id}: checksum {stored:#018x} does not match its contents ({computed:#018x})"
                ),
            ));
        }
        let flags = u16::from_le_bytes([b[8], b[9]]);
        if flags & META_PAGE == 0 {
            return Err(self.err(
                offset + 8,
                format!("meta page {id}: page flags {flags:#06x} are not a meta page's"),
            ));
        }
        let page_size = u32_at(m, 8);
        if !plausible_page_size(page_size) {
            return Err(self.err(
                offset + PAGE_HEADER as u64 + 8,
                format!(
                    "meta page {id}: page size {page_size} is not a power of two in 512..=1 MiB"
                ),
            ));
        }
        Ok(Meta {
            page_size,
            root: u64_at(m, 16),
            pgid: u64_at(m, 40),
            txid: u64_at(m, 48),
            root_at: offset + PAGE_HEADER as u64 + 16,
        })
    }

    /// The valid meta page with the highest txid, checked against the
    /// file's length.
    fn pick_meta(&self) -> Result<Meta, BoltError> {
        let first = self.meta_at(0, 0);
        // Meta page 1 sits one page in: the page size comes from meta 0,
        // or, when meta 0 is damaged, from the common sizes.
        let mut sizes = Vec::new();
        match &first {
            Ok(m) => sizes.push(m.page_size),
            Err(_) => {
                if let Ok(b) = self.read_at(0, PAGE_HEADER + META_SIZE, "meta page 0") {
                    let size = u32_at(&b, PAGE_HEADER + 8);
                    if plausible_page_size(size) {
                        sizes.push(size);
                    }
                }
                for size in [4096, 16384, 65536, 8192, 32768] {
                    if !sizes.contains(&size) {
                        sizes.push(size);
                    }
                }
            }
        }
        let mut second = None;
        for size in &sizes {
            let m = self.meta_at(1, u64::from(*size));
            let ok = m.is_ok();
            if second.is_none() || ok {
                second = Some(m);
            }
            if ok {
                break;
            }
        }
        let second = second.expect("at least one page size tried");
        let meta = match (first, second) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(a), Err(b)) => {
                return Err(self.err(
                    a.offset,
                    format!(
                        "neither meta page is valid: {}; and at byte {}: {}",
                        a.what, b.offset, b.what
                    ),
                ));
            }
        };
        let size = u64::from(meta.page_size);
        let needed = meta.pgid.checked_mul(size);
        if meta.pgid < 3 || needed.is_none_or(|n| n > self.len) {
            return Err(self.err(
                self.len,
                format!(
                    "truncated: the meta page (txid {}) says the database has {} pages of {size} bytes, but the file is {} bytes",
                    meta.txid, meta.pgid, self.len
                ),
            ));
        }
        Ok(meta)
    }

    /// Reads page `id` with its overflow pages, checking its header.
    fn page(&self, id: u64, from: u64) -> Result<Page, BoltError> {
        let size = u64::from(self.meta.page_size);
        if id < 2 || id >= self.meta.pgid {
            return Err(self.err(
                from,
                format!(
                    "points to page {id}, outside the database's pages 2..{}",
                    self.meta.pgid
                ),
            ));
        }
        let base = id * size;
        let header = self.read_at(base, PAGE_HEADER, &format!("page {id}'s header"))?;
        let stored = u64_at(&header, 0);
        if stored != id {
            return Err(self.err(base, format!("page {id}'s header says it is page {stored}")));
        }
        let overflow = u64::from(u32_at(&header, 12));
        if id + overflow >= self.meta.pgid {
            return Err(self.err(
                base + 12,
                format!(
                    "page {id} overflows by {overflow} pages, past the database's {} pages",
                    self.meta.pgid
                ),
            ));
        }
        let n = ((overflow + 1) * size) as usize;
        let buf = self.read_at(base, n, &format!("page {id}"))?;
        Ok(Page { buf, base })
    }

    /// Checks that the element table of `page` fits.
    fn elements(&self, page: &Page) -> Result<usize, BoltError> {
        let count = page.count();
        if PAGE_HEADER + count * ELEMENT > page.buf.len() {
            return Err(self.err(
                page.base + 10,
                format!(
                    "{count} elements do not fit in a page of {} bytes",
                    page.buf.len()
                ),
            ));
        }
        Ok(count)
    }

    fn leaf_entry<'p>(&self, page: &'p Page, i: usize) -> Result<LeafEntry<'p>, BoltError> {
        let e = PAGE_HEADER + i * ELEMENT;
        let b = &page.buf;
        let flags = u32_at(b, e);
        let pos = u32_at(b, e + 4) as usize;
        let ksize = u32_at(b, e + 8) as usize;
        let vsize = u32_at(b, e + 12) as usize;
        let start = e + pos;
        let end = start.checked_add(ksize).and_then(|k| k.checked_add(vsize));
        match end {
            Some(end) if end <= b.len() => Ok(LeafEntry {
                flags,
                key: &b[start..start + ksize],
                value: &b[start + ksize..end],
                value_at: page.base + (start + ksize) as u64,
            }),
            _ => Err(self.err(
                page.base + e as u64,
                format!(
                    "leaf element {i}: a {ksize}-byte key and {vsize}-byte value at +{pos} run past the page's {} bytes",
                    b.len()
                ),
            )),
        }
    }

    /// Calls `visit` on every leaf entry of the tree at `page`, in order.
    fn walk(
        &self,
        page: &Page,
        depth: usize,
        visit: &mut dyn FnMut(&LeafEntry<'_>) -> Result<(), BoltError>,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(self.err(
                page.base,
                format!("the tree is deeper than {MAX_DEPTH} pages: its pages point in a cycle"),
            ));
        }
        let count = self.elements(page)?;
        match page.flags() {
            LEAF_PAGE => {
                for i in 0..count {
                    visit(&self.leaf_entry(page, i)?)?;
                }
                Ok(())
            }
            BRANCH_PAGE => {
                for i in 0..count {
                    let e = PAGE_HEADER + i * ELEMENT;
                    let child = u64_at(&page.buf, e + 8);
                    let child = self.page(child, page.base + e as u64 + 8)?;
                    self.walk(&child, depth + 1, visit)?;
                }
                Ok(())
            }
            flags => Err(self.err(
                page.base + 8,
                format!("page flags {flags:#06x}: expected a branch or leaf page in a bucket"),
            )),
        }
    }

    /// The root of the bucket whose header is `value` (at `value_at`):
    /// its own page, or the page inlined after the header.
    fn bucket_root(&self, value: &[u8], value_at: u64) -> Result<Page, BoltError> {
        if value.len() < BUCKET_HEADER {
            return Err(self.err(
                value_at,
                format!(
                    "a bucket header needs {BUCKET_HEADER} bytes, this one has {}",
                    value.len()
                ),
            ));
        }
        let root = u64_at(value, 0);
        if root != 0 {
            return self.page(root, value_at);
        }
        let inline = &value[BUCKET_HEADER..];
        let base = value_at + BUCKET_HEADER as u64;
        if inline.len() < PAGE_HEADER {
            return Err(self.err(
                base,
                format!(
                    "an inline bucket's page needs a {PAGE_HEADER}-byte header, it has {} bytes",
                    inline.len()
                ),
            ));
        }
        let page = Page {
            buf: inline.to_vec(),
            base,
        };
        if page.flags() != LEAF_PAGE {
            return Err(self.err(
                base + 8,
                format!(
                    "an inline bucket's page has flags {:#06x}, not a leaf's",
                    page.flags()
                ),
            ));
        }
        Ok(page)
    }

    /// The top-level bucket named `name`: its header bytes and offset.
    fn top_bucket(&self, name: &[u8]) -> Result<Option<(Vec<u8>, u64)>, BoltError> {
        let root = self.page(self.meta.root, self.meta.root_at)?;
        let mut found = None;
        self.walk(&root, 0, &mut |e| {
            if e.key == name && e.flags & BUCKET_LEAF != 0 {
                found = Some((e.value.to_vec(), e.value_at));
            }
            Ok(())
        })?;
        Ok(found)
    }

    fn revision(&self) -> Result<DbRevision, BoltError> {
        let Some((key, key_at)) = self.top_bucket(KEY_BUCKET)? else {
            return Err(self.err(
                u64::from(self.meta.page_size) * self.meta.root,
                "the database has no `key` bucket: it is not an etcd database",
            ));
        };
        let root = self.bucket_root(&key, key_at)?;
        let mut revision = 0u64;
        let mut keys = 0u64;
        let mut last: Vec<u8> = Vec::new();
        self.walk(&root, 0, &mut |e| {
            let k = e.key;
            let shape_ok = (k.len() == 17 || (k.len() == 18 && k[17] == b't')) && k[8] == b'_';
            let key_at = e.value_at - k.len() as u64;
            if e.flags & BUCKET_LEAF != 0 || !shape_ok {
                return Err(self.err(
                    key_at,
                    format!(
                        "`key` bucket entry {keys} is not an etcd revision key (8-byte main, `_`, 8-byte sub, optional `t`): {} bytes {:02x?}",
                        k.len(),
                        &k[..k.len().min(18)]
                    ),
                ));
            }
            if keys > 0 && k <= last.as_slice() {
                return Err(self.err(
                    key_at,
                    format!("`key` bucket entry {keys} is out of order: the tree is corrupt"),
                ));
            }
            last.clear();
            last.extend_from_slice(k);
            let main = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            revision = revision.max(main);
            keys += 1;
            Ok(())
        })?;
        let mut consistent_index = None;
        if let Some((meta, meta_at)) = self.top_bucket(META_BUCKET)? {
            let root = self.bucket_root(&meta, meta_at)?;
            self.walk(&root, 0, &mut |e| {
                if e.key == CONSISTENT_INDEX && e.flags & BUCKET_LEAF == 0 {
                    let v: [u8; 8] = e.value.try_into().map_err(|_| {
                        self.err(
                            e.value_at,
                            format!(
                                "`meta` bucket's consistent_index is {} bytes, not 8",
                                e.value.len()
                            ),
                        )
                    })?;
                    consistent_index = Some(u64::from_be_bytes(v));
                }
                Ok(())
            })?;
        }
        Ok(DbRevision {
            revision,
            keys,
            consistent_index,
            txid: self.meta.txid,
            page_size: self.meta.page_size,
        })
    }
}

/// Builds small bbolt files by hand, for tests here and in the adapter.
#[cfg(test)]
pub(crate) mod craft {
    use super::*;

    pub const PS: usize = 4096;

    fn header(buf: &mut [u8], id: u64, flags: u16, count: u16, overflow: u32) {
        buf[0..8].copy_from_slice(&id.to_le_bytes());
        buf[8..10].copy_from_slice(&flags.to_le_bytes());
        buf[10..12].copy_from_slice(&count.to_le_bytes());
        buf[12..16].copy_from_slice(&overflow.to_le_bytes());
    }

    /// A leaf page body (header included) holding `entries`.
    pub fn leaf(id: u64, entries: &[(u32, Vec<u8>, Vec<u8>)], len: usize) -> Vec<u8> {
        let data_len: usize = entries.iter().map(|(_, k, v)| k.len() + v.len()).sum();
        let needed = PAGE_HEADER + entries.len() * ELEMENT + data_len;
        let mut buf = vec![0u8; len.max(needed)];
        header(&mut buf, id, LEAF_PAGE, entries.len() as u16, 0);
        let mut data = PAGE_HEADER + entries.len() * ELEMENT;
        for (i, (flags, k, v)) in entries.iter().enumerate() {
            let e = PAGE_HEADER + i * ELEMENT;
            buf[e..e + 4].copy_from_slice(&flags.to_le_bytes());
            buf[e + 4..e + 8].copy_from_slice(&((data - e) as u32).to_le_bytes());
            buf[e + 8..e + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            buf[e + 12..e + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            buf[data..data + k.len()].copy_from_slice(k);
            data += k.len();
            buf[data..data + v.len()].copy_from_slice(v);
            data += v.len();
        }
        buf
    }

    fn branch(id: u64, children: &[(Vec<u8>, u64)]) -> Vec<u8> {
        let mut buf = vec![0u8; PS];
        header(&mut buf, id, BRANCH_PAGE, children.len() as u16, 0);
        let mut data = PAGE_HEADER + children.len() * ELEMENT;
        for (i, (k, child)) in children.iter().enumerate() {
            let e = PAGE_HEADER + i * ELEMENT;
            buf[e..e + 4].copy_from_slice(&((data - e) as u32).to_le_bytes());
            buf[e + 4..e + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
            buf[e + 8..e + 16].copy_from_slice(&child.to_le_bytes());
            buf[data..data + k.len()].copy_from_slice(k);
            data += k.len();
        }
        buf
    }

    fn meta(id: u64, root: u64, pgid: u64, txid: u64) -> Vec<u8> {
        let mut buf = vec![0u8; PS];
        header(&mut buf, id, META_PAGE, 0, 0);
        let m = &mut buf[PAGE_HEADER..PAGE_HEADER + META_SIZE];
        m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        m[4..8].copy_from_slice(&VERSION.to_le_bytes());
        m[8..12].copy_from_slice(&(PS as u32).to_le_bytes());
        m[16..24].copy_from_slice(&root.to_le_bytes());
        m[32..40].copy_from_slice(&2u64.to_le_bytes());
        m[40..48].copy_from_slice(&pgid.to_le_bytes());
        m[48..56].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv1a64(&m[..META_CHECKED]);
        m[META_CHECKED..].copy_from_slice(&sum.to_le_bytes());
        buf
    }

    /// An etcd revision key.
    pub fn rev_key(main: u64, sub: u64, tombstone: bool) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&sub.to_be_bytes());
        if tombstone {
            k.push(b't');
        }
        k
    }

    /// An etcd-shaped database: the `key` bucket spread over two leaves
    /// under a branch (pages 4, 5, 6), an inline `meta` bucket with
    /// `consistent_index`, meta 0 at txid 7 and meta 1 at txid 8.
    pub fn etcd_db(keys: &[Vec<u8>], consistent_index: u64) -> Vec<u8> {
        let pgid = 7u64;
        let inline_meta = {
            let mut v = vec![0u8; BUCKET_HEADER];
            v.extend(leaf(
                0,
                &[(
                    0,
                    CONSISTENT_INDEX.to_vec(),
                    consistent_index.to_be_bytes().to_vec(),
                )],
                0,
            ));
            v
        };
        let mut key_bucket = 4u64.to_le_bytes().to_vec();
        key_bucket.extend_from_slice(&0u64.to_le_bytes());
        let root = leaf(
            3,
            &[
                (BUCKET_LEAF, KEY_BUCKET.to_vec(), key_bucket),
                (BUCKET_LEAF, META_BUCKET.to_vec(), inline_meta),
            ],
            PS,
        );
        let half = keys.len() / 2;
        let entries = |ks: &[Vec<u8>]| -> Vec<(u32, Vec<u8>, Vec<u8>)> {
            ks.iter().map(|k| (0, k.clone(), b"v".to_vec())).collect()
        };
        let first_key = |ks: &[Vec<u8>]| ks.first().cloned().unwrap_or_default();
        let mut file = Vec::new();
        file.extend(meta(0, 3, pgid, 7));
        file.extend(meta(1, 3, pgid, 8));
        let mut freelist = vec![0u8; PS];
        header(&mut freelist, 2, 0x10, 0, 0);
        file.extend(freelist);
        file.extend(root);
        file.extend(branch(
            4,
            &[(first_key(&keys[..half]), 5), (first_key(&keys[half..]), 6)],
        ));
        file.extend(leaf(5, &entries(&keys[..half]), PS));
        file.extend(leaf(6, &entries(&keys[half..]), PS));
        file
    }
}

#[cfg(test)]
mod tests {
    use super::craft::*;
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn keys() -> Vec<Vec<u8>> {
        vec![
            rev_key(2, 0, false),
            rev_key(3, 0, false),
            rev_key(3, 1, false),
            rev_key(5, 0, true),
            rev_key(9, 0, false),
            rev_key(12, 0, true),
        ]
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_revision_is_the_highest_main_revision_across_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "db", &etcd_db(&keys(), 41));
        let got = read_revision(&p).unwrap();
        assert_eq!(
            got,
            DbRevision {
                revision: 12,
                keys: 6,
                consistent_index: Some(41),
                txid: 8,
                page_size: PS as u32,
            }
        );
        // Trailing bytes (etcd's appended sha256) do not matter.
        let mut with_tail = etcd_db(&keys(), 41);
        with_tail.extend_from_slice(&[7u8; 32]);
        let p = write(dir.path(), "tail", &with_tail);
        assert_eq!(read_revision(&p).unwrap().revision, 12);
    }

    #[test]
    fn a_damaged_meta_page_falls_back_to_the_other_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = etcd_db(&keys(), 41);
        // Meta 1 (txid 8) has a bad checksum: meta 0 (txid 7) is used.
        db[PS + PAGE_HEADER + 50] ^= 0xff;
        let p = write(dir.path(), "db", &db);
        assert_eq!(read_revision(&p).unwrap().txid, 7);
        // Meta 0's magic is wrong too: nothing valid is left.
        db[PAGE_HEADER] ^= 0x01;
        let p = write(dir.path(), "both", &db);
        let err = read_revision(&p).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: at byte 16: ", p.display())),
            "{err}"
        );
        assert!(
            err.contains("magic is 0xed0cdaec, not bbolt's 0xed0cdaed")
                && err.contains(&format!("at byte {}: meta page 1: checksum", PS + 72)),
            "{err}"
        );
    }

    #[test]
    fn a_bad_checksum_names_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = etcd_db(&keys(), 41);
        db[PAGE_HEADER + 40] ^= 1;
        db[PS + PAGE_HEADER + 40] ^= 1;
        let p = write(dir.path(), "db", &db);
        let err = read_revision(&p).unwrap_err().to_string();
        assert!(
            err.contains("at byte 72: neither meta page is valid: meta page 0: checksum 0x")
                && err.contains("does not match its contents"),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let db = etcd_db(&keys(), 41);
        let p = write(dir.path(), "db", &db[..db.len() - 100]);
        let err = read_revision(&p).unwrap_err().to_string();
        assert!(
            err.contains("truncated: the meta page (txid 8) says the database has 7 pages of 4096 bytes, but the file is 28572 bytes"),
            "{err}"
        );
        let p = write(dir.path(), "tiny", &db[..40]);
        let err = read_revision(&p).unwrap_err().to_string();
        assert!(
            err.contains("at byte 0: neither meta page is valid: truncated: meta page 0 needs 80 bytes here but the file ends at byte 40"),
            "{err}"
        );
        let p = write(dir.path(), "empty", b"");
        assert!(
            read_revision(&p)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        let err = read_revision(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot open it"), "{err}");
    }

    #[test]
    fn damaged_pages_and_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        // A branch that points past the end.
        let mut db = etcd_db(&keys(), 41);
        let e = 4 * PS + PAGE_HEADER + ELEMENT + 8;
        db[e..e + 8].copy_from_slice(&99u64.to_le_bytes());
        let p = write(dir.path(), "far", &db);
        let err = read_revision(&p).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "at byte {e}: points to page 99, outside the database's pages 2..7"
            )),
            "{err}"
        );
        // A leaf whose header claims to be another page.
        let mut db = etcd_db(&keys(), 41);
        db[5 * PS] = 9;
        let p = write(dir.path(), "id", &db);
        let err = read_revision(&p).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "at byte {}: page 5's header says it is page 9",
                5 * PS
            )),
            "{err}"
        );
        // A leaf element that runs off its page.
        let mut db = etcd_db(&keys(), 41);
        let e = 6 * PS + PAGE_HEADER;
        db[e + 12..e + 16].copy_from_slice(&100_000u32.to_le_bytes());
        let p = write(dir.path(), "long", &db);
        let err = read_revision(&p).unwrap_err().to_string();
        assert!(
            err.contains(&format!("at byte {e}: leaf element 0")),
            "{err}"
        );
        // Not an etcd key, and keys out of order.
        let mut bad = keys();
        bad[4] = b"not-a-revision-key".to_vec();
        let p = write(dir.path(), "shape", &etcd_db(&bad, 1));
        let err = read_revision(&p).unwrap_err().to_string();
        assert!(
            err.contains("`key` bucket entry 4 is not an etcd revision key"),
            "{err}"
        );
        let mut bad = keys();
        bad.swap(3, 4);
        let p = write(dir.path(), "order", &etcd_db(&bad, 1));
        let err = read_revision(&p).unwrap_err().to_string();
        assert!(
            err.contains("`key` bucket entry 4 is out of order"),
            "{err}"
        );
        // Pages that point in a cycle.
        let mut db = etcd_db(&keys(), 41);
        let e = 4 * PS + PAGE_HEADER + 8;
        db[e..e + 8].copy_from_slice(&4u64.to_le_bytes());
        let p = write(dir.path(), "cycle", &db);
        let err = read_revision(&p).unwrap_err().to_string();
        assert!(err.contains("point in a cycle"), "{err}");
    }

    #[test]
    fn a_file_without_a_key_bucket_is_not_etcd() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = etcd_db(&keys(), 41);
        // Rename the `key` bucket to `kez`.
        let root = 3 * PS;
        let pos = db[root..root + PS]
            .windows(3)
            .position(|w| w == b"key")
            .unwrap();
        db[root + pos + 2] = b'z';
        let p = write(dir.path(), "db", &db);
        let err = read_revision(&p).unwrap_err().to_string();
        assert!(
            err.contains("has no `key` bucket: it is not an etcd database"),
            "{err}"
        );
    }
}
