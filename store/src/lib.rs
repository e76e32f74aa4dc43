//! The artifact store: where releases live before they reach a node.
//!
//! This crate owns the release manifest format, the [`ArtifactStore`] trait
//! (a local directory, [`DirStore`], or an S3 bucket, [`s3::S3Store`],
//! behind the same trait), sha256 checksums, and packing/unpacking release
//! directories. The rules it enforces: an artifact whose sha256 does not
//! match is never unpacked, and a published release is never changed.
//! Pre-upgrade backups live in the same store, under `backups/`, and are
//! the [`backup`] module's. An agent reaches an S3 store without credentials,
//! through the coordinator's presigned requests ([`granted`]). The
//! [`records`] module is the on-disk format of what baton itself keeps:
//! framed, checksummed record logs (the coordinator's journal, the agent's
//! command journal).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub mod backup;
pub mod config;
pub mod granted;
pub mod records;
pub mod s3;
#[cfg(test)]
mod test_server;
#[cfg(any(test, feature = "test-util"))]
pub mod testutil;

pub use backup::{BackupManifest, BackupSource};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the store knows about one release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    pub name: String,
    pub version: String,
    /// The on-disk data format this release writes and the newest it reads.
    pub format_version: u32,
    /// Hex sha256 of the artifact bytes.
    pub sha256: String,
    pub size: u64,
}

/// A store failure, naming the release and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "release {name} {version} is not in the store at {location}; publish it with `baton release publish`"
    )]
    Missing {
        name: String,
        version: String,
        location: String,
    },
    #[error(
        "release {name} {version}: artifact sha256 is {actual}, the manifest says {expected}; it was not unpacked; republish the release"
    )]
    BadChecksum {
        name: String,
        version: String,
        expected: String,
        actual: String,
    },
    #[error("release {name} {version}: manifest {path} is invalid: {detail}")]
    BadManifest {
        name: String,
        version: String,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "invalid release name or version {0:?}: use only [A-Za-z0-9._-], not starting with '.'"
    )]
    BadName(String),
    #[error("release name {0:?} is reserved for the store's backups; publish under another name")]
    Reserved(String),
    #[error(
        "release {name} {version} is already in the store at {location} with sha256 {existing}; this artifact's sha256 is {offered}; releases are immutable: publish it as a new version"
    )]
    ReleaseExists {
        name: String,
        version: String,
        location: String,
        existing: String,
        offered: String,
    },
    #[error(
        "release {name} {version} is already in the store at {location} with data format {existing}; the same artifact is offered as format {offered}; releases are immutable: publish it as a new version with the format it writes"
    )]
    ReleaseFormatDiffers {
        name: String,
        version: String,
        location: String,
        existing: u32,
        offered: u32,
    },
    #[error("store {location}, object {key}: {detail}")]
    Object {
        location: String,
        key: String,
        detail: String,
    },
    #[error("backup store {location}, key {key}: {detail}")]
    Backup {
        location: String,
        key: String,
        detail: String,
    },
    #[error("artifact store I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Names and versions become path components: keep them boring.
pub fn check_name(s: &str) -> Result<(), StoreError> {
    if baton_domain::is_path_name(s) {
        Ok(())
    } else {
        Err(StoreError::BadName(baton_domain::echo(s)))
    }
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, StoreError> {
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs blocking file work (copies, hashing, tar) off the async workers, so
/// an agent keeps reporting and a coordinator keeps serving meanwhile.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        })?
}

/// Packs the files of `dir` (recursively, following no symlinks) into a tar
/// at `out`.
pub fn pack_dir(dir: &Path, out: &Path) -> Result<(), StoreError> {
    let file = fs::File::create(out).map_err(io(out))?;
    let mut builder = tar::Builder::new(file);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir).map_err(io(dir))?;
    let mut file = builder.into_inner().map_err(io(out))?;
    file.flush().map_err(io(out))?;
    file.sync_all().map_err(io(out))?;
    Ok(())
}

/// Verifies `artifact` against `expected` sha256 and only then unpacks it
/// into `dest` (which must not exist). Entries that would escape `dest` are
/// refused by the tar reader.
pub fn unpack_verified(
    artifact: &Path,
    expected: &str,
    dest: &Path,
    name: &str,
    version: &str,
) -> Result<(), StoreError> {
    let actual = sha256_file(artifact)?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(StoreError::BadChecksum {
            name: name.to_owned(),
            version: version.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    fs::create_dir_all(dest).map_err(io(dest))?;
    let file = fs::File::open(artifact).map_err(io(artifact))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    archive.unpack(dest).map_err(io(dest))?;
    Ok(())
}

/// Where releases are kept. Implementations: [`DirStore`] and
/// [`s3::S3Store`].
///
/// Releases are immutable: `put` of a name and version that is already
/// stored succeeds without writing when the sha256 is the same, and fails
/// with [`StoreError::ReleaseExists`] when it differs.
pub trait ArtifactStore: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages.
    fn location(&self) -> String;
    /// The manifest of a release.
    fn manifest<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseManifest, StoreError>>;
    /// Copies the artifact bytes to `dest`.
    fn fetch<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Stores `artifact` under `manifest` (name, version), once: see the
    /// trait's immutability rule.
    fn put<'a>(
        &'a self,
        manifest: &'a ReleaseManifest,
        artifact: &'a Path,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Every release in the store, sorted by [`release_order`]. The
    /// reserved `backups` tree is not a release and is skipped.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ReleaseManifest>, StoreError>>;
    /// The sha256 of the artifact's bytes as stored. By default they are
    /// fetched into a temporary file under `scratch` and hashed there; a
    /// store that can read them in place needs no scratch space.
    fn sha256<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
        scratch: &'a Path,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(async move {
            let tmp = scratch_file(scratch, "verify")?;
            self.fetch(name, version, tmp.path()).await?;
            let path = tmp.path().to_owned();
            blocking(move || sha256_file(&path)).await
        })
    }
}

/// The order releases are listed in: by name, then by version with runs of
/// digits compared as numbers (`v2` before `v10`).
pub fn release_order(a: &ReleaseManifest, b: &ReleaseManifest) -> std::cmp::Ordering {
    a.name
        .cmp(&b.name)
        .then_with(|| version_order(&a.version, &b.version))
}

/// Compares versions chunk by chunk: digit runs numerically (ignoring
/// leading zeros), everything else bytewise; ties broken bytewise.
pub fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

/// The answer to a `put` of a release that is already stored: a no-op for
/// the same content and format, [`StoreError::ReleaseExists`] for other
/// content, [`StoreError::ReleaseFormatDiffers`] for the same content
/// claimed as another data format.
pub(crate) fn already_stored(
    location: String,
    stored: &ReleaseManifest,
    offered: &ReleaseManifest,
) -> Result<(), StoreError> {
    if stored.sha256.eq_ignore_ascii_case(&offered.sha256) {
        if stored.format_version == offered.format_version {
            return Ok(());
        }
        Err(StoreError::ReleaseFormatDiffers {
            name: offered.name.clone(),
            version: offered.version.clone(),
            location,
            existing: stored.format_version,
            offered: offered.format_version,
        })
    } else {
        Err(StoreError::ReleaseExists {
            name: offered.name.clone(),
            version: offered.version.clone(),
            location,
            existing: stored.sha256.clone(),
            offered: offered.sha256.clone(),
        })
    }
}

/// Parses and checks a stored manifest: well formed, about this release,
/// with a hex sha256. `path` names it in errors.
pub(crate) fn parse_manifest(
    text: &str,
    name: &str,
    version: &str,
    path: &Path,
) -> Result<ReleaseManifest, StoreError> {
    let bad = |detail: String| StoreError::BadManifest {
        name: name.to_owned(),
        version: version.to_owned(),
        path: path.to_owned(),
        detail,
    };
    let m: ReleaseManifest = toml::from_str(text).map_err(|e| bad(e.message().to_owned()))?;
    if m.name != name
        || m.version != version
        || m.sha256.len() != 64
        || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad(
            "name, version or sha256 does not fit this release".to_owned()
        ));
    }
    Ok(m)
}

/// Puts a copy of `from` at `to`, replacing it. On the same filesystem that
/// is a hard link: a stored artifact is never changed or replaced (releases
/// are immutable), so sharing the inode is safe, and tens of MB are not
/// copied again. Elsewhere it copies.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = to.with_file_name(format!(".{name}.link"));
    let _ = fs::remove_file(&tmp);
    let linked = fs::hard_link(from, &tmp).and_then(|()| fs::rename(&tmp, to));
    if linked.is_ok() {
        return Ok(());
    }
    let _ = fs::remove_file(&tmp);
    fs::copy(from, to).map(drop)
}

/// A scratch file of its own (removed on drop): two publishes or verifies
/// of the same release at once must never share one.
fn scratch_file(dir: &Path, what: &str) -> Result<tempfile::NamedTempFile, StoreError> {
    tempfile::Builder::new()
        .prefix(&format!(".baton-{what}-"))
        .suffix(".tar")
        .tempfile_in(dir)
        .map_err(io(dir))
}

/// Checks the artifact's bytes against its manifest's sha256 (read in place
/// where the store can, otherwise through a temporary file under
/// `scratch`: see [`ArtifactStore::sha256`]).
pub async fn verify(
    store: &dyn ArtifactStore,
    name: &str,
    version: &str,
    scratch: &Path,
) -> Result<ReleaseManifest, StoreError> {
    let manifest = store.manifest(name, version).await?;
    let actual = store.sha256(name, version, scratch).await?;
    if !actual.eq_ignore_ascii_case(&manifest.sha256) {
        return Err(StoreError::BadChecksum {
            name: name.to_owned(),
            version: version.to_owned(),
            expected: manifest.sha256,
            actual,
        });
    }
    Ok(manifest)
}

/// Packs `dir` and puts it in the store as `name` `version`.
pub async fn publish(
    store: &dyn ArtifactStore,
    name: &str,
    version: &str,
    format_version: u32,
    dir: &Path,
    scratch: &Path,
) -> Result<ReleaseManifest, StoreError> {
    check_name(name)?;
    check_name(version)?;
    let tmp = scratch_file(scratch, "publish")?;
    let tar = tmp.path().to_owned();
    let (src, out) = (dir.to_owned(), tar.clone());
    let (sha256, size) = blocking(move || {
        pack_dir(&src, &out)?;
        let size = fs::metadata(&out).map_err(io(&out))?.len();
        Ok((sha256_file(&out)?, size))
    })
    .await?;
    let manifest = ReleaseManifest {
        name: name.to_owned(),
        version: version.to_owned(),
        format_version,
        sha256,
        size,
    };
    store.put(&manifest, &tar).await?;
    Ok(manifest)
}

/// A store in a local (or shared) directory:
/// `<root>/<name>/<version>/{manifest.toml,artifact.tar}`.
#[derive(Clone, Debug)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore { root: root.into() }
    }

    fn dir(&self, name: &str, version: &str) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        if name == "backups" {
            // The backups' own tree (see [`backup`]).
            return Err(StoreError::Reserved(name.to_owned()));
        }
        check_name(version)?;
        Ok(self.root.join(name).join(version))
    }
}

impl ArtifactStore for DirStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn manifest<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseManifest, StoreError>> {
        Box::pin(async move {
            let path = self.dir(name, version)?.join("manifest.toml");
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Missing {
                        name: name.to_owned(),
                        version: version.to_owned(),
                        location: self.location(),
                    });
                }
                Err(e) => return Err(io(&path)(e)),
            };
            let m = parse_manifest(&text, name, version, &path)?;
            Ok(m)
        })
    }

    fn fetch<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let src = self.dir(name, version)?.join("artifact.tar");
            let (from, to) = (src.clone(), dest.to_owned());
            let copied = tokio::task::spawn_blocking(move || link_or_copy(&from, &to))
                .await
                .map_err(|e| io(&src)(std::io::Error::other(e)))?;
            match copied {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Missing {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    location: self.location(),
                }),
                Err(e) => Err(io(&src)(e)),
            }
        })
    }

    /// Hashed where it lies: verifying needs no disk space beside it.
    fn sha256<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
        _scratch: &'a Path,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(async move {
            let src = self.dir(name, version)?.join("artifact.tar");
            match fs::metadata(&src) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Missing {
                        name: name.to_owned(),
                        version: version.to_owned(),
                        location: self.location(),
                    });
                }
                Err(e) => return Err(io(&src)(e)),
            }
            blocking(move || sha256_file(&src)).await
        })
    }

    fn put<'a>(
        &'a self,
        manifest: &'a ReleaseManifest,
        artifact: &'a Path,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let dir = self.dir(&manifest.name, &manifest.version)?;
            let text = toml::to_string(manifest).map_err(|e| StoreError::BadManifest {
                name: manifest.name.clone(),
                version: manifest.version.clone(),
                path: dir.join("manifest.toml"),
                detail: e.to_string(),
            })?;
            let (store, manifest, artifact) = (self.clone(), manifest.clone(), artifact.to_owned());
            blocking(move || store.put_locked(&dir, &manifest, &artifact, &text)).await
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ReleaseManifest>, StoreError>> {
        Box::pin(async move {
            let store = self.clone();
            let mut all = blocking(move || store.list_sync()).await?;
            all.sort_by(release_order);
            Ok(all)
        })
    }
}

impl DirStore {
    /// `put` under an exclusive lock on `<dir>/.lock`, so two publishes of
    /// one version at once cannot interleave: the first stores, the second
    /// sees its manifest. The manifest is written last; a version directory
    /// without one (a publish that crashed) is not a release and is
    /// written over.
    fn put_locked(
        &self,
        dir: &Path,
        manifest: &ReleaseManifest,
        artifact: &Path,
        text: &str,
    ) -> Result<(), StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let manifest_path = dir.join("manifest.toml");
        match fs::read_to_string(&manifest_path) {
            Ok(stored) => {
                let stored =
                    parse_manifest(&stored, &manifest.name, &manifest.version, &manifest_path)?;
                return already_stored(self.location(), &stored, manifest);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&manifest_path)(e)),
        }
        let tmp = dir.join(".artifact.tar.tmp");
        fs::copy(artifact, &tmp).map_err(io(&tmp))?;
        readable_and_synced(&tmp)?;
        fs::rename(&tmp, dir.join("artifact.tar")).map_err(io(dir))?;
        let mtmp = dir.join(".manifest.toml.tmp");
        fs::write(&mtmp, text).map_err(io(&mtmp))?;
        readable_and_synced(&mtmp)?;
        fs::rename(&mtmp, &manifest_path).map_err(io(dir))?;
        Ok(())
    }

    fn list_sync(&self) -> Result<Vec<ReleaseManifest>, StoreError> {
        let mut out = Vec::new();
        for name in subdirs(&self.root)? {
            if name == "backups" || check_name(&name).is_err() {
                continue;
            }
            for version in subdirs(&self.root.join(&name))? {
                if check_name(&version).is_err() {
                    continue;
                }
                let path = self.root.join(&name).join(&version).join("manifest.toml");
                match fs::read_to_string(&path) {
                    Ok(text) => out.push(parse_manifest(&text, &name, &version, &path)?),
                    // No manifest: a publish that never finished.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path)(e)),
                }
            }
        }
        Ok(out)
    }
}

/// The names of the directories in `dir` (none if `dir` does not exist).
fn subdirs(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        if entry.file_type().map_err(io(dir))?.is_dir() {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

/// Makes a file written for the store readable by an unprivileged agent
/// user (0644, whatever the umask or the source's mode) and durable.
fn readable_and_synced(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(io(path))?;
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn release_dir(root: &Path, body: &str) -> PathBuf {
        let d = root.join("build");
        fs::create_dir_all(d.join("bin")).unwrap();
        fs::write(d.join("bin/tool"), body).unwrap();
        fs::write(d.join("manifest.toml"), "version = \"v2\"\n").unwrap();
        d
    }

    #[tokio::test]
    async fn a_fetch_shares_the_stored_file_which_is_never_replaced() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        let src = release_dir(tmp.path(), "first");
        let first = publish(&store, "kv", "v2", 1, &src, tmp.path())
            .await
            .unwrap();
        let dest = tmp.path().join("download.tar");
        fs::write(&dest, b"an old download").unwrap();
        store.fetch("kv", "v2", &dest).await.unwrap();
        let stored = tmp.path().join("store/kv/v2/artifact.tar");
        assert_eq!(
            fs::metadata(&dest).unwrap().ino(),
            fs::metadata(&stored).unwrap().ino(),
            "same filesystem: linked, not copied"
        );
        let before = fs::read(&dest).unwrap();
        // The same content again is a no-op.
        let again = publish(&store, "kv", "v2", 1, &src, tmp.path())
            .await
            .unwrap();
        assert_eq!(again, first);
        // The same bytes claimed as another data format are refused.
        let err = publish(&store, "kv", "v2", 2, &src, tmp.path())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::ReleaseFormatDiffers {
                    existing: 1,
                    offered: 2,
                    ..
                }
            ),
            "{err}"
        );
        // Other content under the same version is refused, naming both sums.
        let src = release_dir(tmp.path(), "second, longer body");
        let err = publish(&store, "kv", "v2", 1, &src, tmp.path())
            .await
            .unwrap_err();
        let StoreError::ReleaseExists {
            ref existing,
            ref offered,
            ..
        } = err
        else {
            panic!("{err}")
        };
        assert_eq!(existing, &first.sha256);
        assert_ne!(offered, &first.sha256);
        let text = err.to_string();
        assert!(
            text.contains("release kv v2 is already in the store")
                && text.contains(&first.sha256)
                && text.contains(offered.as_str())
                && text.contains("publish it as a new version"),
            "{text}"
        );
        assert_eq!(fs::read(&stored).unwrap(), before);
        assert_eq!(fs::read(&dest).unwrap(), before);
        assert_eq!(store.manifest("kv", "v2").await.unwrap(), first);
    }

    #[tokio::test]
    async fn stored_artifacts_and_manifests_are_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        let src = release_dir(tmp.path(), "hello");
        publish(&store, "kv", "v2", 1, &src, tmp.path())
            .await
            .unwrap();
        for f in ["artifact.tar", "manifest.toml"] {
            let path = tmp.path().join("store/kv/v2").join(f);
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "{}", path.display());
        }
    }

    #[tokio::test]
    async fn concurrent_puts_of_one_version_store_exactly_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(DirStore::new(tmp.path().join("store")));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (root, store) = (tmp.path().to_owned(), store.clone());
            tasks.push(tokio::spawn(async move {
                let src = root.join(format!("build-{i}"));
                fs::create_dir_all(&src).unwrap();
                fs::write(src.join("body"), format!("body {i}").repeat(3000)).unwrap();
                publish(&*store, "kv", "v2", 1, &src, &root).await
            }));
        }
        let mut won = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(m) => won.push(m),
                Err(StoreError::ReleaseExists { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(won.len(), 1, "{won:?}");
        assert_eq!(store.manifest("kv", "v2").await.unwrap(), won[0]);
        verify(&*store, "kv", "v2", tmp.path()).await.unwrap();
    }

    #[tokio::test]
    async fn list_shows_every_release_sorted_and_skips_backups_and_unfinished() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        assert!(store.list().await.unwrap().is_empty(), "no store dir yet");
        let mut published = Vec::new();
        for (name, version, format) in [
            ("kv", "v10", 2),
            ("etcd", "3.5.1", 0),
            ("kv", "v2", 1),
            ("kv", "v9", 1),
        ] {
            let src = release_dir(tmp.path(), &format!("{name} {version}"));
            published.push(
                publish(&store, name, version, format, &src, tmp.path())
                    .await
                    .unwrap(),
            );
        }
        // A backup and a publish that crashed before its manifest.
        crate::backup::BlobStore::put_blob(&store, "backups/c1/b1/COMPLETE", "x".into())
            .await
            .unwrap();
        fs::create_dir_all(tmp.path().join("store/kv/v11")).unwrap();
        fs::write(tmp.path().join("store/kv/v11/artifact.tar"), b"half").unwrap();
        let listed = store.list().await.unwrap();
        let keys: Vec<(&str, &str, u32)> = listed
            .iter()
            .map(|m| (m.name.as_str(), m.version.as_str(), m.format_version))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("etcd", "3.5.1", 0),
                ("kv", "v2", 1),
                ("kv", "v9", 1),
                ("kv", "v10", 2)
            ]
        );
        for m in &listed {
            assert!(published.contains(m), "{m:?}");
            assert!(m.size > 0 && m.sha256.len() == 64);
        }
    }

    #[test]
    fn versions_order_numbers_as_numbers() {
        use std::cmp::Ordering::*;
        for (a, b, want) in [
            ("v2", "v10", Less),
            ("v10", "v2", Greater),
            ("3.4.23", "3.5.1", Less),
            ("3.10.0", "3.9.9", Greater),
            ("v1", "v1", Equal),
            ("v01", "v1", Less),
            ("v1", "v1-rc1", Less),
            ("a", "b", Less),
        ] {
            assert_eq!(version_order(a, b), want, "{a} vs {b}");
        }
    }

    #[tokio::test]
    async fn publish_verify_and_unpack() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        let src = release_dir(tmp.path(), "hello");
        let m = publish(&store, "kv", "v2", 2, &src, tmp.path())
            .await
            .unwrap();
        assert_eq!(m.format_version, 2);
        assert_eq!(verify(&store, "kv", "v2", tmp.path()).await.unwrap(), m);
        let art = tmp.path().join("a.tar");
        store.fetch("kv", "v2", &art).await.unwrap();
        let dest = tmp.path().join("out");
        unpack_verified(&art, &m.sha256, &dest, "kv", "v2").unwrap();
        assert_eq!(fs::read_to_string(dest.join("bin/tool")).unwrap(), "hello");
    }

    #[tokio::test]
    async fn the_dir_store_verifies_in_place_with_no_scratch_space() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        let src = release_dir(tmp.path(), "hello");
        let m = publish(&store, "kv", "v2", 1, &src, tmp.path())
            .await
            .unwrap();
        // A scratch dir that cannot hold anything (here: none at all), as
        // with a coordinator whose state disk is full.
        let nowhere = tmp.path().join("no-such-dir");
        assert_eq!(verify(&store, "kv", "v2", &nowhere).await.unwrap(), m);
        assert!(!nowhere.exists());
        // A missing release is still missing, not an I/O error.
        let err = verify(&store, "kv", "v3", &nowhere).await.unwrap_err();
        assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_bad_checksum_is_never_unpacked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path().join("store"));
        let src = release_dir(tmp.path(), "hello");
        let m = publish(&store, "kv", "v2", 1, &src, tmp.path())
            .await
            .unwrap();
        // Corrupt the stored artifact.
        let stored = tmp.path().join("store/kv/v2/artifact.tar");
        let mut bytes = fs::read(&stored).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&stored, bytes).unwrap();
        let err = verify(&store, "kv", "v2", tmp.path()).await.unwrap_err();
        assert!(matches!(err, StoreError::BadChecksum { .. }), "{err}");
        let art = tmp.path().join("a.tar");
        store.fetch("kv", "v2", &art).await.unwrap();
        let dest = tmp.path().join("out");
        let err = unpack_verified(&art, &m.sha256, &dest, "kv", "v2").unwrap_err();
        assert!(err.to_string().contains("was not unpacked"), "{err}");
        assert!(!dest.exists(), "nothing was unpacked");
    }

    #[tokio::test]
    async fn concurrent_publishes_of_one_version_do_not_share_scratch() {
        let tmp = tempfile::tempdir().unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let root = tmp.path().to_owned();
            tasks.push(tokio::spawn(async move {
                let src = root.join(format!("build-{i}"));
                fs::create_dir_all(&src).unwrap();
                fs::write(src.join("body"), format!("release body {i}").repeat(5000)).unwrap();
                let store = DirStore::new(root.join(format!("store-{i}")));
                publish(&store, "kv", "v2", 1, &src, &root).await.unwrap();
                verify(&store, "kv", "v2", &root).await.unwrap();
                let art = root.join(format!("a-{i}.tar"));
                store.fetch("kv", "v2", &art).await.unwrap();
                let m = store.manifest("kv", "v2").await.unwrap();
                let out = root.join(format!("out-{i}"));
                unpack_verified(&art, &m.sha256, &out, "kv", "v2").unwrap();
                fs::read_to_string(out.join("body")).unwrap()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), format!("release body {i}").repeat(5000));
        }
    }

    #[tokio::test]
    async fn missing_releases_and_bad_names_are_clear() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::new(tmp.path());
        let err = store.manifest("kv", "v9").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("release kv v9 is not in the store"),
            "{err}"
        );
        assert!(matches!(
            store.manifest("kv", "../etc").await,
            Err(StoreError::BadName(_))
        ));
        fs::create_dir_all(tmp.path().join("kv/v3")).unwrap();
        fs::write(tmp.path().join("kv/v3/manifest.toml"), "name = 1").unwrap();
        assert!(matches!(
            store.manifest("kv", "v3").await,
            Err(StoreError::BadManifest { .. })
        ));
    }
}
