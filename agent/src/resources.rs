//! Host resources next to the member (CPU and memory through sysinfo, free
//! disk on the data dir and on the agent's state dir through statvfs).
//! Owns the sysinfo handles; reads only.

use std::path::{Path, PathBuf};

use baton_domain::Resources;
use sysinfo::System;

/// Keeps sysinfo state between reads (CPU usage needs two samples).
pub struct ResourceReader {
    system: Option<System>,
    data_dir: PathBuf,
    state_dir: PathBuf,
}

impl std::fmt::Debug for ResourceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceReader")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl ResourceReader {
    pub fn new(data_dir: &Path, state_dir: &Path) -> Self {
        let system = match System::new() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "sysinfo unavailable; resources will read as 0");
                None
            }
        };
        ResourceReader {
            system,
            data_dir: data_dir.to_owned(),
            state_dir: state_dir.to_owned(),
        }
    }

    /// Reads current figures. Free disk is what the filesystem holding the
    /// data dir (and the one holding the state dir) has for the agent.
    pub fn read(&mut self) -> Resources {
        let mut r = Resources::default();
        if let Some(sys) = self.system.as_mut() {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            r.cpu_percent = sys.global_cpu_usage().max(0.0);
            if !r.cpu_percent.is_finite() {
                r.cpu_percent = 0.0;
            }
            r.memory_used_bytes = sys.used_memory();
            r.memory_total_bytes = sys.total_memory();
        }
        // Measured on the filesystem that holds the dir or will hold it: a
        // member's data dir may not exist until the member first starts
        // (etcd creates its own), so the nearest existing ancestor stands in
        // for it. A dir that cannot be measured at all reads as 0 free: the
        // preflight then refuses, naming it.
        let free = |dir: &Path| {
            dir.ancestors()
                .find(|p| p.exists())
                .and_then(|p| baton_store::records::free_bytes(p).ok())
                .unwrap_or(0)
        };
        r.data_disk_free_bytes = free(&self.data_dir);
        r.state_disk_free_bytes = free(&self.state_dir);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_and_disk_of_a_real_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = ResourceReader::new(dir.path(), dir.path());
        let got = r.read();
        assert!(got.memory_total_bytes > 0);
        assert!(got.data_disk_free_bytes > 0, "{got:?}");
        assert_eq!(got.state_disk_free_bytes > 0, got.data_disk_free_bytes > 0);
        assert!(got.cpu_percent.is_finite());
    }

    #[test]
    fn a_data_dir_not_created_yet_is_measured_where_it_will_be() {
        let disk = baton_store::testutil::SmallDisk::mount();
        let state = tempfile::tempdir().unwrap();
        let mut r = ResourceReader::new(&disk.path().join("member/data"), state.path());
        let got = r.read();
        assert!(
            got.data_disk_free_bytes > 0 && got.data_disk_free_bytes <= 64 << 10,
            "the small disk's free space, not 0 and not the state dir's: {got:?}"
        );
    }

    #[test]
    fn the_state_dir_is_measured_on_its_own_filesystem() {
        let disk = baton_store::testutil::SmallDisk::mount();
        let data = tempfile::tempdir().unwrap();
        let mut r = ResourceReader::new(data.path(), disk.path());
        let before = r.read();
        assert!(before.state_disk_free_bytes <= 64 << 10, "{before:?}");
        assert!(before.data_disk_free_bytes > 64 << 10, "{before:?}");
        disk.fill("filler");
        assert_eq!(r.read().state_disk_free_bytes, 0);
    }
}
