//! Backups in the store: parts, the manifest that matches them, and the
//! `COMPLETE` sentinel.
//!
//! This module owns the backup layout under a store's root and the rules
//! that make a backup usable:
//! ```text
//! backups/<cluster>/<id>/part-00000 ...  the backup's bytes, PART_SIZE each
//! backups/<cluster>/<id>/manifest.json   sha256 per part, total size and sha256,
//!                                        revision, source member and release,
//!                                        baton version, time
//! backups/<cluster>/<id>/COMPLETE        the manifest's sha256; written last
//! ```
//! A backup without `COMPLETE`, or whose `COMPLETE` does not match its
//! manifest, is never offered as usable. A complete backup is never
//! overwritten. [`verify`] re-reads every part. The objects live behind the
//! small [`BlobStore`] trait, which the directory store and S3 implement.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{DirStore, StoreError, check_name};

/// The size of every part but the last.
pub const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once during an upload (memory: this many parts).
pub const UPLOAD_CONCURRENCY: usize = 4;
/// The manifest's own schema version.
pub const MANIFEST_FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const COMPLETE: &str = "COMPLETE";

/// Whole objects under string keys (`a/b/c`): what backups need from a
/// store.
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Where the objects are, for messages (a directory, `s3://bucket/prefix`).
    fn location(&self) -> String;
    /// Writes the whole object atomically: readers see all of it or none.
    fn put_blob<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The whole object, or `None` if there is none under `key`.
    fn get_blob<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>>;
    /// Every key that starts with `prefix`, sorted.
    fn list_blobs<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
    /// Removes the object; removing one that is not there is not an error.
    fn delete_blob<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// What the taker knows about a backup before its bytes are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSource {
    pub cluster: String,
    pub id: String,
    /// The member it was taken from.
    pub member: String,
    /// The adapter kind (`etcd`, `samplekv`, `exec`).
    pub adapter: String,
    /// The revision read from the backup itself.
    pub revision: u64,
    /// The release the member ran, and its data format.
    pub release: String,
    pub release_format: u32,
}

/// One part of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartEntry {
    pub bytes: u64,
    pub sha256: String,
}

/// `manifest.json`: what was saved, part by part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupManifest {
    pub format: u32,
    pub cluster: String,
    pub id: String,
    pub member: String,
    pub adapter: String,
    pub revision: u64,
    pub release: String,
    pub release_format: u32,
    pub baton_version: String,
    /// When the upload finished, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    pub bytes: u64,
    /// Hex sha256 of the whole backup.
    pub sha256: String,
    pub part_size: u64,
    pub parts: Vec<PartEntry>,
}

/// A backup as listed: complete (sentinel and manifest agree) or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupListing {
    pub id: String,
    /// Present only for a complete backup.
    pub manifest: Option<BackupManifest>,
}

struct Reader {
    file: fs::File,
    whole: Sha256,
}

fn prefix(cluster: &str, id: &str) -> Result<String, StoreError> {
    check_name(cluster)?;
    check_name(id)?;
    Ok(format!("backups/{cluster}/{id}/"))
}

fn part_key(prefix: &str, index: usize) -> String {
    format!("{prefix}part-{index:05}")
}

pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn backup_err(store: &dyn BlobStore, key: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Backup {
        location: store.location(),
        key: key.to_owned(),
        detail: detail.into(),
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads `file` in parts and stores it as backup `source.id` of
/// `source.cluster`: every part, then the manifest, then `COMPLETE`. Refuses
/// an id that already has a complete backup; the parts of an earlier,
/// incomplete attempt under the same id are replaced. Memory stays at
/// [`UPLOAD_CONCURRENCY`] parts whatever the file's size.
pub async fn upload(
    store: &dyn BlobStore,
    source: &BackupSource,
    file: &Path,
) -> Result<BackupManifest, StoreError> {
    let pre = prefix(&source.cluster, &source.id)?;
    let complete_key = format!("{pre}{COMPLETE}");
    if store.get_blob(&complete_key).await?.is_some() {
        return Err(backup_err(
            store,
            &complete_key,
            format!(
                "backup {} is already complete; a complete backup is never overwritten; take a new one under a new id",
                source.id
            ),
        ));
    }
    for stale in store.list_blobs(&pre).await? {
        store.delete_blob(&stale).await?;
    }
    let f = fs::File::open(file).map_err(crate::io(file))?;
    let reader = Arc::new(Mutex::new(Reader {
        file: f,
        whole: Sha256::new(),
    }));
    // Parts are read (and hashed) in order, off the async workers, and
    // uploaded UPLOAD_CONCURRENCY at a time: `buffered` keeps polling the
    // uploads in flight while the next part is read.
    // Part buffers are reused once their upload is done, so memory stays at
    // UPLOAD_CONCURRENCY + 1 parts instead of growing with the allocator's
    // per-thread caches of freed 8 MiB blocks.
    let pool: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::new()));
    let reads = futures::stream::unfold(Some(0usize), |state| {
        let reader = reader.clone();
        let pool = pool.clone();
        let path: PathBuf = file.to_owned();
        async move {
            let index = state?;
            let spare = pool.lock().expect("pool lock").pop();
            let read = crate::blocking(move || {
                let mut r = reader.lock().expect("reader lock");
                let mut buf = spare.unwrap_or_else(|| Vec::with_capacity(PART_SIZE));
                buf.clear();
                (&mut r.file)
                    .take(PART_SIZE as u64)
                    .read_to_end(&mut buf)
                    .map_err(crate::io(&path))?;
                r.whole.update(&buf);
                let sha256 = hex(&Sha256::digest(&buf));
                Ok((buf, sha256))
            })
            .await;
            match read {
                // An empty file is one empty part; otherwise stop at the end.
                Ok((buf, _)) if buf.is_empty() && index > 0 => None,
                Ok((buf, sha256)) => {
                    let next = (buf.len() == PART_SIZE).then_some(index + 1);
                    Some((Ok((index, buf, sha256)), next))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    let pre_ref = &pre;
    let pool_ref = &pool;
    let mut parts: Vec<(usize, PartEntry)> = reads
        .map(|r| async move {
            let (index, buf, sha256) = r?;
            let bytes = buf.len() as u64;
            let body = Bytes::from(buf);
            let kept = body.clone();
            store.put_blob(&part_key(pre_ref, index), body).await?;
            // Back to the pool when the store let go of its copy.
            if let Ok(buf) = kept.try_into_mut() {
                pool_ref.lock().expect("pool lock").push(Vec::from(buf));
            }
            Ok::<_, StoreError>((index, PartEntry { bytes, sha256 }))
        })
        .buffered(UPLOAD_CONCURRENCY)
        .try_collect()
        .await?;
    parts.sort_by_key(|(i, _)| *i);
    let whole = hex(&reader.lock().expect("reader lock").whole.clone().finalize());
    let total = parts.iter().map(|(_, p)| p.bytes).sum();
    let manifest = BackupManifest {
        format: MANIFEST_FORMAT,
        cluster: source.cluster.clone(),
        id: source.id.clone(),
        member: source.member.clone(),
        adapter: source.adapter.clone(),
        revision: source.revision,
        release: source.release.clone(),
        release_format: source.release_format,
        baton_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_unix_ms: now_unix_ms(),
        bytes: total,
        sha256: whole,
        part_size: PART_SIZE as u64,
        parts: parts.into_iter().map(|(_, p)| p).collect(),
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    let manifest_sha = hex(&Sha256::digest(&text));
    store
        .put_blob(&format!("{pre}{MANIFEST}"), Bytes::from(text))
        .await?;
    store
        .put_blob(&complete_key, Bytes::from(manifest_sha))
        .await?;
    Ok(manifest)
}

/// The manifest of a complete backup: `COMPLETE` present and equal to the
/// manifest's sha256, and the manifest well formed and about this backup.
/// Reads no part.
pub async fn complete_manifest(
    store: &dyn BlobStore,
    cluster: &str,
    id: &str,
) -> Result<BackupManifest, StoreError> {
    let pre = prefix(cluster, id)?;
    let complete_key = format!("{pre}{COMPLETE}");
    let manifest_key = format!("{pre}{MANIFEST}");
    let Some(sentinel) = store.get_blob(&complete_key).await? else {
        let detail = if store.list_blobs(&pre).await?.is_empty() {
            format!(
                "there is no backup {id} of cluster {cluster}; `baton backups list` shows those there are"
            )
        } else {
            format!(
                "backup {id} has no COMPLETE sentinel: its upload never finished, so it is not usable; take a new backup"
            )
        };
        return Err(backup_err(store, &complete_key, detail));
    };
    let Some(text) = store.get_blob(&manifest_key).await? else {
        return Err(backup_err(
            store,
            &manifest_key,
            "COMPLETE is there but the manifest is missing; the backup is not usable; take a new one",
        ));
    };
    let actual = hex(&Sha256::digest(&text));
    let want = String::from_utf8_lossy(&sentinel).trim().to_owned();
    if !actual.eq_ignore_ascii_case(&want) {
        return Err(backup_err(
            store,
            &manifest_key,
            format!(
                "the manifest's sha256 is {actual} but COMPLETE says {want}: the manifest was changed after the backup finished; it is not usable"
            ),
        ));
    }
    let m: BackupManifest = serde_json::from_slice(&text).map_err(|e| {
        backup_err(
            store,
            &manifest_key,
            format!("the manifest is not valid: {e}"),
        )
    })?;
    let sum: u64 = m.parts.iter().map(|p| p.bytes).sum();
    if m.format != MANIFEST_FORMAT || m.cluster != cluster || m.id != id || sum != m.bytes {
        return Err(backup_err(
            store,
            &manifest_key,
            format!(
                "the manifest does not describe this backup (format {}, cluster {}, id {}, parts sum to {sum} of {} bytes)",
                m.format, m.cluster, m.id, m.bytes
            ),
        ));
    }
    Ok(m)
}

/// Reads every part of a complete backup back from the store and checks it
/// against the manifest (each part's sha256 and size, the whole file's
/// sha256). Each part read is handed to `sink` in order.
async fn read_back(
    store: &dyn BlobStore,
    cluster: &str,
    id: &str,
    mut sink: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<BackupManifest, StoreError> {
    let m = complete_manifest(store, cluster, id).await?;
    let pre = prefix(cluster, id)?;
    let mut whole = Sha256::new();
    for (index, part) in m.parts.iter().enumerate() {
        let key = part_key(&pre, index);
        let Some(body) = store.get_blob(&key).await? else {
            return Err(backup_err(
                store,
                &key,
                format!("part {index} is missing; the backup is not usable"),
            ));
        };
        let actual = hex(&Sha256::digest(&body));
        if body.len() as u64 != part.bytes || actual != part.sha256 {
            return Err(backup_err(
                store,
                &key,
                format!(
                    "part {index} is {} bytes with sha256 {actual}; the manifest says {} bytes with sha256 {}; the backup is corrupt",
                    body.len(),
                    part.bytes,
                    part.sha256
                ),
            ));
        }
        whole.update(&body);
        sink(&body)?;
    }
    let actual = hex(&whole.finalize());
    if actual != m.sha256 {
        return Err(backup_err(
            store,
            &format!("{pre}{MANIFEST}"),
            format!(
                "the parts hash to {actual}, the manifest says {}; the backup is corrupt",
                m.sha256
            ),
        ));
    }
    Ok(m)
}

/// Re-reads a complete backup from the store and checks every part.
pub async fn verify(
    store: &dyn BlobStore,
    cluster: &str,
    id: &str,
) -> Result<BackupManifest, StoreError> {
    read_back(store, cluster, id, |_| Ok(())).await
}

/// Writes a verified copy of a complete backup to `dest` (replaced). On any
/// mismatch `dest` is removed and the error names the part.
pub async fn download(
    store: &dyn BlobStore,
    cluster: &str,
    id: &str,
    dest: &Path,
) -> Result<BackupManifest, StoreError> {
    let mut f = fs::File::create(dest).map_err(crate::io(dest))?;
    let got = read_back(store, cluster, id, |body| {
        f.write_all(body).map_err(crate::io(dest))
    })
    .await;
    match got {
        Ok(m) => {
            f.sync_all().map_err(crate::io(dest))?;
            Ok(m)
        }
        Err(e) => {
            drop(f);
            let _ = fs::remove_file(dest);
            Err(e)
        }
    }
}

/// Every backup of `cluster`, by id, complete or not.
pub async fn list(store: &dyn BlobStore, cluster: &str) -> Result<Vec<BackupListing>, StoreError> {
    check_name(cluster)?;
    let root = format!("backups/{cluster}/");
    let mut ids: BTreeMap<String, ()> = BTreeMap::new();
    for key in store.list_blobs(&root).await? {
        if let Some((id, _)) = key[root.len()..].split_once('/') {
            ids.insert(id.to_owned(), ());
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids.into_keys() {
        let manifest = complete_manifest(store, cluster, &id).await.ok();
        out.push(BackupListing { id, manifest });
    }
    Ok(out)
}

/// Removes every object of one backup, the sentinel first (so a half-deleted
/// backup is never offered as usable).
pub async fn delete(store: &dyn BlobStore, cluster: &str, id: &str) -> Result<(), StoreError> {
    let pre = prefix(cluster, id)?;
    store.delete_blob(&format!("{pre}{COMPLETE}")).await?;
    for key in store.list_blobs(&pre).await? {
        store.delete_blob(&key).await?;
    }
    Ok(())
}

impl DirStore {
    fn blob_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let mut path = self.root.clone();
        for part in key.split('/') {
            check_name(part)?;
            path.push(part);
        }
        Ok(path)
    }
}

fn object_err(store: &DirStore, key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Object {
        location: crate::ArtifactStore::location(store),
        key: key.to_owned(),
        detail: e.to_string(),
    }
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // a write in progress
        }
        let key = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else {
            out.push(key);
        }
    }
    Ok(())
}

impl BlobStore for DirStore {
    fn location(&self) -> String {
        crate::ArtifactStore::location(self)
    }

    fn put_blob<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let path = self.blob_path(key)?;
            let (location, owned_key) = (BlobStore::location(self), key.to_owned());
            crate::blocking(move || {
                let write = || -> std::io::Result<()> {
                    let dir = path.parent().expect("a key has a parent");
                    fs::create_dir_all(dir)?;
                    let mut tmp = tempfile::Builder::new().prefix(".put-").tempfile_in(dir)?;
                    tmp.write_all(&body)?;
                    tmp.as_file().sync_all()?;
                    // Readable by an unprivileged agent or operator.
                    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))?;
                    tmp.persist(&path).map_err(|e| e.error)?;
                    Ok(())
                };
                write().map_err(|e| StoreError::Object {
                    location,
                    key: owned_key,
                    detail: e.to_string(),
                })
            })
            .await
        })
    }

    fn get_blob<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move {
            let path = self.blob_path(key)?;
            let read = crate::blocking(move || match fs::read(&path) {
                Ok(b) => Ok(Some(Bytes::from(b))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(crate::io(&path)(e)),
            });
            read.await.map_err(|e| object_err(self, key, e))
        })
    }

    fn list_blobs<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            // Walk from the deepest whole directory the prefix names.
            let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
            let start = if dir_part.is_empty() {
                self.root.clone()
            } else {
                self.blob_path(dir_part)?
            };
            let mut keys = Vec::new();
            walk(&start, dir_part, &mut keys).map_err(|e| object_err(self, prefix, e))?;
            keys.retain(|k| k.starts_with(prefix));
            keys.sort();
            Ok(keys)
        })
    }

    fn delete_blob<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let path = self.blob_path(key)?;
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(object_err(self, key, e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(id: &str) -> BackupSource {
        BackupSource {
            cluster: "c1".into(),
            id: id.into(),
            member: "n2".into(),
            adapter: "samplekv".into(),
            revision: 42,
            release: "v1".into(),
            release_format: 1,
        }
    }

    /// A file of `len` bytes that differ from part to part.
    fn data(dir: &Path, len: usize) -> PathBuf {
        let path = dir.join("snap");
        let body: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        fs::write(&path, body).unwrap();
        path
    }

    #[tokio::test]
    async fn an_upload_in_parts_verifies_and_downloads_byte_for_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        let len = 2 * PART_SIZE + 12345;
        let file = data(tmp.path(), len);
        let m = upload(&store, &source("r1-b1"), &file).await.unwrap();
        assert_eq!(m.bytes, len as u64);
        assert_eq!(m.parts.len(), 3);
        assert_eq!(m.parts[2].bytes, 12345);
        assert_eq!(m.sha256, crate::sha256_file(&file).unwrap());
        assert_eq!((m.revision, m.member.as_str()), (42, "n2"));
        assert_eq!(verify(&store, "c1", "r1-b1").await.unwrap(), m);
        let out = tmp.path().join("out");
        download(&store, "c1", "r1-b1", &out).await.unwrap();
        assert_eq!(fs::read(&out).unwrap(), fs::read(&file).unwrap());
        let listed = list(&store, "c1").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].manifest.as_ref(), Some(&m));
        // Objects are readable by others (an unprivileged agent user).
        let mode = fs::metadata(tmp.path().join("store/backups/c1/r1-b1/part-00000"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[tokio::test]
    async fn an_exact_multiple_of_the_part_size_and_an_empty_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        let file = data(tmp.path(), PART_SIZE);
        let m = upload(&store, &source("a"), &file).await.unwrap();
        assert_eq!(m.parts.len(), 1);
        verify(&store, "c1", "a").await.unwrap();
        let file = data(tmp.path(), 0);
        let m = upload(&store, &source("b"), &file).await.unwrap();
        assert_eq!((m.parts.len(), m.bytes), (1, 0));
        verify(&store, "c1", "b").await.unwrap();
    }

    #[tokio::test]
    async fn a_corrupt_part_is_found_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        let file = data(tmp.path(), PART_SIZE + 10);
        upload(&store, &source("r1-b1"), &file).await.unwrap();
        let part = tmp.path().join("store/backups/c1/r1-b1/part-00001");
        let mut body = fs::read(&part).unwrap();
        body[3] ^= 0xff;
        fs::write(&part, body).unwrap();
        let err = verify(&store, "c1", "r1-b1").await.unwrap_err().to_string();
        assert!(
            err.contains("backups/c1/r1-b1/part-00001") && err.contains("corrupt"),
            "{err}"
        );
        let out = tmp.path().join("out");
        assert!(download(&store, "c1", "r1-b1", &out).await.is_err());
        assert!(!out.exists(), "a failed download leaves no file");
    }

    #[tokio::test]
    async fn without_its_sentinel_or_with_an_edited_manifest_a_backup_is_not_usable() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        let file = data(tmp.path(), 1000);
        upload(&store, &source("r1-b1"), &file).await.unwrap();
        let dir = tmp.path().join("store/backups/c1/r1-b1");
        let manifest = fs::read_to_string(dir.join("manifest.json")).unwrap();
        fs::write(
            dir.join("manifest.json"),
            manifest.replace("\"revision\": 42", "\"revision\": 43"),
        )
        .unwrap();
        let err = verify(&store, "c1", "r1-b1").await.unwrap_err().to_string();
        assert!(err.contains("changed after the backup finished"), "{err}");
        fs::remove_file(dir.join("COMPLETE")).unwrap();
        let err = verify(&store, "c1", "r1-b1").await.unwrap_err().to_string();
        assert!(err.contains("no COMPLETE sentinel"), "{err}");
        let listed = list(&store, "c1").await.unwrap();
        assert_eq!((listed.len(), listed[0].manifest.is_none()), (1, true));
        let err = verify(&store, "c1", "nosuch")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("there is no backup nosuch"), "{err}");
        // An incomplete backup's id may be taken again; its parts are replaced.
        upload(&store, &source("r1-b1"), &file).await.unwrap();
        verify(&store, "c1", "r1-b1").await.unwrap();
    }

    #[tokio::test]
    async fn a_complete_backup_is_never_overwritten_and_deletes_sentinel_first() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        let file = data(tmp.path(), 1000);
        let m = upload(&store, &source("r1-b1"), &file).await.unwrap();
        let other = tmp.path().join("other");
        fs::write(&other, b"different").unwrap();
        let err = upload(&store, &source("r1-b1"), &other)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("never overwritten"), "{err}");
        assert_eq!(verify(&store, "c1", "r1-b1").await.unwrap(), m);
        delete(&store, "c1", "r1-b1").await.unwrap();
        assert!(list(&store, "c1").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn keys_and_ids_stay_inside_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        let file = data(tmp.path(), 10);
        for bad in ["../x", "", ".hidden", "a/b"] {
            assert!(upload(&store, &source(bad), &file).await.is_err(), "{bad}");
        }
        assert!(store.put_blob("a/../b", Bytes::new()).await.is_err());
        assert!(store.get_blob("/etc/passwd").await.is_err());
        // A release cannot be published over the backups' tree.
        let err = crate::ArtifactStore::manifest(&store, "backups", "c1")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
    }
}
