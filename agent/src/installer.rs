//! Releases on the node: staging, the atomic `current` switch, pruning.
//!
//! Layout under `run.base_dir`:
//! ```text
//! releases/<version>/        unpacked, verified release (+ .baton-sha256)
//! current -> releases/<v>    the release the member runs
//! ```
//! This module owns that layout. It stages while the member still serves,
//! never unpacks an artifact whose sha256 does not match, switches `current`
//! with one `rename`, runs a release's `migrate` hook, and keeps the last 3
//! releases (never the current one).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_domain::{MemberId, ReleaseRef};
use baton_store::{ArtifactStore, StoreError, check_name, unpack_verified};

/// Releases kept on a node, counting the current one.
pub const KEEP_RELEASES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("member {member}: {source}")]
    Store {
        member: MemberId,
        source: Box<StoreError>,
    },
    #[error("member {member}: release {version} is not staged under {dir}; stage it first")]
    NotStaged {
        member: MemberId,
        version: String,
        dir: PathBuf,
    },
    #[error(
        "member {member}: migrate hook of {version} failed: {detail}; `current` was switched back"
    )]
    Migrate {
        member: MemberId,
        version: String,
        detail: String,
    },
    #[error("member {member}: filesystem error on {path}: {source}")]
    Io {
        member: MemberId,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Stages and switches releases for one member.
#[derive(Debug, Clone)]
pub struct Installer {
    member: MemberId,
    base_dir: PathBuf,
    data_dir: PathBuf,
    store: Arc<dyn ArtifactStore>,
}

const SHA_MARKER: &str = ".baton-sha256";

impl Installer {
    pub fn new(
        member: MemberId,
        base_dir: PathBuf,
        data_dir: PathBuf,
        store: Arc<dyn ArtifactStore>,
    ) -> Self {
        Installer {
            member,
            base_dir,
            data_dir,
            store,
        }
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
        let path = path.to_owned();
        move |source| InstallError::Io {
            member: self.member.clone(),
            path,
            source,
        }
    }

    fn releases(&self) -> PathBuf {
        self.base_dir.join("releases")
    }

    /// Where release `version` is (or would be) staged.
    pub fn release_dir(&self, version: &str) -> PathBuf {
        self.releases().join(version)
    }

    /// The member's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The version `current` points at, if any.
    pub fn current(&self) -> Option<String> {
        let target = fs::read_link(self.base_dir.join("current")).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// Downloads, verifies and unpacks `release` into `releases/<version>/`.
    /// Idempotent: a release already staged with the same sha256 is kept.
    pub async fn stage(&self, release: &ReleaseRef) -> Result<String, InstallError> {
        let store_err = |source| InstallError::Store {
            member: self.member.clone(),
            source: Box::new(source),
        };
        check_name(&release.version).map_err(store_err)?;
        let releases = self.releases();
        fs::create_dir_all(&releases).map_err(self.io(&releases))?;
        let dest = releases.join(&release.version);
        if let Ok(sha) = fs::read_to_string(dest.join(SHA_MARKER))
            && sha.trim().eq_ignore_ascii_case(&release.sha256)
        {
            return Ok(format!("{} already staged", release.version));
        }
        // The release that runs now, installed before baton staged anything
        // here (no marker): it is what a restore or rollback wants, and it
        // cannot be replaced under the running member. Releases are
        // immutable in the store, so the same version is the same content.
        if dest.is_dir() && self.current().as_deref() == Some(release.version.as_str()) {
            return Ok(format!(
                "{} is the current release here; kept as installed",
                release.version
            ));
        }
        let download = releases.join(format!(".{}.download", release.version));
        let unpack = releases.join(format!(".{}.unpack", release.version));
        let _ = fs::remove_dir_all(&unpack);
        self.store
            .fetch(&release.name, &release.version, &download)
            .await
            .map_err(store_err)?;
        let (art, sha, dir, name, version) = (
            download.clone(),
            release.sha256.clone(),
            unpack.clone(),
            release.name.clone(),
            release.version.clone(),
        );
        let unpacked =
            baton_store::blocking(move || unpack_verified(&art, &sha, &dir, &name, &version)).await;
        let _ = fs::remove_file(&download);
        if let Err(e) = unpacked {
            let _ = fs::remove_dir_all(&unpack);
            return Err(store_err(e));
        }
        fs::write(unpack.join(SHA_MARKER), &release.sha256).map_err(self.io(&unpack))?;
        if dest.exists() && self.current().as_deref() != Some(release.version.as_str()) {
            fs::remove_dir_all(&dest).map_err(self.io(&dest))?;
        }
        fs::rename(&unpack, &dest).map_err(self.io(&dest))?;
        Ok(format!(
            "staged {} (sha256 {})",
            release.version, release.sha256
        ))
    }

    /// Points `current` at `releases/<version>` with one atomic rename, runs
    /// the release's `migrate` hook if it has one, and prunes old releases.
    pub fn switch(&self, version: &str) -> Result<String, InstallError> {
        check_name(version).map_err(|source| InstallError::Store {
            member: self.member.clone(),
            source: Box::new(source),
        })?;
        let dir = self.releases().join(version);
        if !dir.is_dir() {
            return Err(InstallError::NotStaged {
                member: self.member.clone(),
                version: version.to_owned(),
                dir,
            });
        }
        let previous = self.current();
        self.point_current_at(version)?;
        let hook = dir.join("migrate");
        if hook.is_file() {
            let out = std::process::Command::new(&hook)
                .arg(&self.data_dir)
                .output()
                .map_err(self.io(&hook))?;
            if !out.status.success() {
                if let Some(prev) = &previous {
                    self.point_current_at(prev)?;
                }
                return Err(InstallError::Migrate {
                    member: self.member.clone(),
                    version: version.to_owned(),
                    detail: format!(
                        "{}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
        }
        self.prune();
        Ok(match previous {
            Some(p) if p != version => format!("current: {p} -> {version}"),
            _ => format!("current: {version}"),
        })
    }

    fn point_current_at(&self, version: &str) -> Result<(), InstallError> {
        let tmp = self.base_dir.join(".current.tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(version), &tmp)
            .map_err(self.io(&tmp))?;
        let current = self.base_dir.join("current");
        fs::rename(&tmp, &current).map_err(self.io(&current))?;
        Ok(())
    }

    /// Removes the oldest releases beyond [`KEEP_RELEASES`], never the current.
    fn prune(&self) {
        let current = self.current();
        let Ok(entries) = fs::read_dir(self.releases()) else {
            return;
        };
        let mut releases: Vec<(std::time::SystemTime, PathBuf, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !e.path().is_dir() {
                    return None;
                }
                let t = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((t, e.path(), name))
            })
            .collect();
        releases.sort();
        let excess = releases.len().saturating_sub(KEEP_RELEASES);
        for (_, path, name) in releases
            .into_iter()
            .filter(|(_, _, n)| Some(n) != current.as_ref())
            .take(excess)
        {
            tracing::info!(member = %self.member, release = %name, "pruning old release");
            let _ = fs::remove_dir_all(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_store::{DirStore, publish};

    use super::*;

    async fn setup() -> (tempfile::TempDir, Installer, Arc<DirStore>) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(DirStore::new(tmp.path().join("store")));
        let inst = Installer::new(
            MemberId::new("n1").unwrap(),
            tmp.path().join("base"),
            tmp.path().join("data"),
            store.clone(),
        );
        (tmp, inst, store)
    }

    async fn release(
        tmp: &Path,
        store: &DirStore,
        version: &str,
        migrate: Option<&str>,
    ) -> ReleaseRef {
        let src = tmp.join(format!("build-{version}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(
            src.join("manifest.toml"),
            format!("version = {version:?}\n"),
        )
        .unwrap();
        if let Some(script) = migrate {
            let hook = src.join("migrate");
            fs::write(&hook, script).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let m = publish(store, "kv", version, 1, &src, tmp).await.unwrap();
        ReleaseRef {
            name: "kv".into(),
            version: version.into(),
            format_version: 1,
            sha256: m.sha256,
        }
    }

    #[tokio::test]
    async fn stage_switch_and_keep_three() {
        let (tmp, inst, store) = setup().await;
        for v in ["v1", "v2", "v3", "v4"] {
            let r = release(tmp.path(), &store, v, None).await;
            inst.stage(&r).await.unwrap();
            assert!(inst.stage(&r).await.unwrap().contains("already staged"));
            inst.switch(v).unwrap();
            assert_eq!(inst.current().as_deref(), Some(v));
            let text = fs::read_to_string(tmp.path().join("base/current/manifest.toml")).unwrap();
            assert!(text.contains(v));
        }
        let mut left: Vec<String> = fs::read_dir(tmp.path().join("base/releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["v2", "v3", "v4"]);
    }

    #[tokio::test]
    async fn the_running_release_installed_by_hand_is_kept_when_staged_again() {
        let (tmp, inst, store) = setup().await;
        let r = release(tmp.path(), &store, "v1", None).await;
        // Installed before baton: no sha marker, and the member runs it.
        let dir = tmp.path().join("base/releases/v1");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("app.db"), b"live data").unwrap();
        std::os::unix::fs::symlink(&dir, tmp.path().join("base/current")).unwrap();
        let said = inst.stage(&r).await.unwrap();
        assert!(said.contains("current release here; kept"), "{said}");
        assert_eq!(fs::read(dir.join("app.db")).unwrap(), b"live data");
    }

    #[tokio::test]
    async fn a_wrong_sha256_is_never_unpacked() {
        let (tmp, inst, store) = setup().await;
        let mut r = release(tmp.path(), &store, "v2", None).await;
        r.sha256 = "0".repeat(64);
        let err = inst.stage(&r).await.unwrap_err().to_string();
        assert!(
            err.contains("member n1") && err.contains("was not unpacked"),
            "{err}"
        );
        assert!(!tmp.path().join("base/releases/v2").exists());
        let err = inst.switch("v2").unwrap_err().to_string();
        assert!(err.contains("not staged"), "{err}");
    }

    #[tokio::test]
    async fn a_failed_migrate_hook_switches_back() {
        let (tmp, inst, store) = setup().await;
        let v1 = release(tmp.path(), &store, "v1", None).await;
        inst.stage(&v1).await.unwrap();
        inst.switch("v1").unwrap();
        let v2 = release(
            tmp.path(),
            &store,
            "v2",
            Some("#!/bin/sh\necho schema too new >&2\nexit 3\n"),
        )
        .await;
        inst.stage(&v2).await.unwrap();
        let err = inst.switch("v2").unwrap_err().to_string();
        assert!(
            err.contains("migrate hook of v2 failed") && err.contains("schema too new"),
            "{err}"
        );
        assert_eq!(inst.current().as_deref(), Some("v1"));
    }
}
