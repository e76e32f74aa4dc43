//! Pre-upgrade backups on the node.
//!
//! This module owns taking backup `id` for the coordinator: the adapter
//! writes a consistent copy of the member's data to a scratch file under
//! `<state_dir>/backups/` (streamed, never held in memory), the adapter
//! test-restores it where it can, and the file is uploaded to the store in
//! parts with its manifest and `COMPLETE` sentinel
//! ([`baton_store::backup::upload`]). The scratch file is removed whatever
//! happens. A restore goes the other way: read back and verified from the
//! store, then handed to the adapter to replace the stopped member's data. The coordinator then re-reads the backup from the store before
//! any member is stopped.

use std::path::PathBuf;
use std::sync::Arc;

use baton_domain::MemberId;
use baton_store::backup::{self, BackupSource, BlobStore};

use crate::adapter::Adapter;

/// Where this member's backups go.
#[derive(Debug, Clone)]
pub struct Backups {
    member: MemberId,
    cluster: String,
    store: Arc<dyn BlobStore>,
    scratch: PathBuf,
    /// The member's data dir, which a restore replaces.
    data_dir: PathBuf,
}

/// The release a member runs, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRelease {
    pub version: String,
    pub format_version: u32,
}

impl Backups {
    pub fn new(
        member: MemberId,
        cluster: String,
        store: Arc<dyn BlobStore>,
        state_dir: &std::path::Path,
        data_dir: &std::path::Path,
    ) -> Self {
        Backups {
            member,
            cluster,
            store,
            scratch: state_dir.join("backups"),
            data_dir: data_dir.to_owned(),
        }
    }

    /// `name` in the scratch dir, which is created if need be.
    fn scratch_file(&self, name: &str) -> Result<PathBuf, String> {
        std::fs::create_dir_all(&self.scratch).map_err(|e| {
            format!(
                "member {}: cannot create the backup scratch dir {}: {e}",
                self.member,
                self.scratch.display()
            )
        })?;
        Ok(self.scratch.join(name))
    }

    /// Restores backup `id` into the (stopped) member's data dir: it is read
    /// back from the store into a scratch file, every part checked against
    /// the manifest, and only then handed to the adapter, which must end
    /// with the manifest's revision. A backup that is incomplete or does not
    /// verify changes nothing. The scratch file is removed whatever happens.
    pub async fn restore(&self, adapter: &dyn Adapter, id: &str) -> Result<String, String> {
        let member = &self.member;
        baton_store::check_name(id).map_err(|e| format!("member {member}: {e}"))?;
        let file = self.scratch_file(&format!("{id}.restore"))?;
        let result = async {
            let m = backup::download(self.store.as_ref(), &self.cluster, id, &file)
                .await
                .map_err(|e| {
                    format!("member {member}: backup {id} cannot be restored, nothing was changed: {e}")
                })?;
            if m.adapter != adapter.kind() {
                return Err(format!(
                    "member {member}: backup {id} was taken by the {} adapter, this member runs {}; nothing was changed",
                    m.adapter,
                    adapter.kind()
                ));
            }
            let done = adapter
                .restore(&file, m.revision, &m.release, &self.data_dir)
                .await
                .map_err(|e| format!("member {member}: restoring backup {id} failed: {e}"))?;
            Ok(format!(
                "backup {id} (revision {}, from {} on {} format {}, sha256 {}): {done}",
                m.revision, m.member, m.release, m.release_format, m.sha256
            ))
        }
        .await;
        let _ = std::fs::remove_file(&file);
        result
    }

    /// Takes backup `id` through `adapter` and uploads it. The error names
    /// the member, the step and, for the store, the location and key.
    pub async fn take(
        &self,
        adapter: &dyn Adapter,
        id: &str,
        release: SourceRelease,
    ) -> Result<String, String> {
        let member = &self.member;
        baton_store::check_name(id).map_err(|e| format!("member {member}: {e}"))?;
        let file = self.scratch_file(&format!("{id}.part"))?;
        let _ = std::fs::remove_file(&file);
        let result = self.take_into(adapter, id, release, &file).await;
        let _ = std::fs::remove_file(&file);
        result
    }

    async fn take_into(
        &self,
        adapter: &dyn Adapter,
        id: &str,
        release: SourceRelease,
        file: &std::path::Path,
    ) -> Result<String, String> {
        let member = &self.member;
        let t0 = tokio::time::Instant::now();
        let taken = adapter
            .backup(file)
            .await
            .map_err(|e| format!("member {member}: taking backup {id} failed: {e}"))?;
        let took = t0.elapsed();
        let restored = adapter
            .test_restore(&taken, &self.scratch)
            .await
            .map_err(|e| {
                format!("member {member}: backup {id} failed its scratch test-restore: {e}")
            })?;
        let tested = t0.elapsed() - took;
        let source = BackupSource {
            cluster: self.cluster.clone(),
            id: id.to_owned(),
            member: member.to_string(),
            adapter: adapter.kind().to_owned(),
            revision: taken.revision,
            release: release.version,
            release_format: release.format_version,
        };
        let m = backup::upload(self.store.as_ref(), &source, file)
            .await
            .map_err(|e| format!("member {member}: uploading backup {id} failed: {e}"))?;
        if m.sha256 != taken.sha256 || m.bytes != taken.bytes {
            return Err(format!(
                "member {member}: backup {id} changed while it was uploaded ({} bytes sha256 {} written, {} bytes sha256 {} read); take it again",
                taken.bytes, taken.sha256, m.bytes, m.sha256
            ));
        }
        let uploaded = t0.elapsed() - took - tested;
        tracing::info!(
            %member, id, bytes = m.bytes,
            take_ms = took.as_millis(), test_restore_ms = tested.as_millis(),
            upload_ms = uploaded.as_millis(), "backup taken, test-restored and uploaded"
        );
        Ok(format!(
            "backup {id}: {} bytes in {} part(s), sha256 {}, revision {}, {restored}, in {} (taken in {} ms, test-restored in {} ms, uploaded in {} ms)",
            m.bytes,
            m.parts.len(),
            m.sha256,
            m.revision,
            self.store.location(),
            took.as_millis(),
            tested.as_millis(),
            uploaded.as_millis()
        ))
    }
}
