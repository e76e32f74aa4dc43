//! Host resources next to the member (CPU, memory, free disk on the data
//! dir), read through sysinfo. Owns the sysinfo handles; reads only.

use std::path::{Path, PathBuf};

use baton_domain::Resources;
use sysinfo::{Disks, System};

/// Keeps sysinfo state between reads (CPU usage needs two samples).
pub struct ResourceReader {
    system: Option<System>,
    data_dir: PathBuf,
}

impl std::fmt::Debug for ResourceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceReader")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl ResourceReader {
    pub fn new(data_dir: &Path) -> Self {
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
        }
    }

    /// Reads current figures. Free disk is that of the filesystem whose mount
    /// point is the longest prefix of the data dir.
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
        let dir = std::fs::canonicalize(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        if let Ok(disks) = Disks::new_with_refreshed_list() {
            r.data_disk_free_bytes = disks
                .iter()
                .filter(|d| dir.starts_with(d.mount_point()))
                .max_by_key(|d| d.mount_point().as_os_str().len())
                .map(|d| d.available_space())
                .unwrap_or(0);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_and_disk_of_a_real_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = ResourceReader::new(dir.path());
        let got = r.read();
        assert!(got.memory_total_bytes > 0);
        assert!(got.data_disk_free_bytes > 0, "{got:?}");
        assert!(got.cpu_percent.is_finite());
    }
}
