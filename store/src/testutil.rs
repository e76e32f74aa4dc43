//! Test helpers other crates' tests share (the `test-util` feature): a
//! small disk that fills up. Nothing here is used outside tests.

use std::path::{Path, PathBuf};

/// A 64 KiB tmpfs mounted for one test, unmounted on drop (lazily, so
/// also while a process still has a file open there), also when the test
/// fails. Mounting needs root: a test that uses it fails, loudly, without
/// it (never skips).
#[derive(Debug)]
pub struct SmallDisk {
    path: PathBuf,
    /// The temporary dir it is mounted on, when it made its own.
    _dir: Option<tempfile::TempDir>,
}

impl SmallDisk {
    /// Mounts on a temporary dir of its own.
    pub fn mount() -> SmallDisk {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut disk = SmallDisk::mount_at(dir.path());
        disk._dir = Some(dir);
        disk
    }

    /// Mounts on `path`, an existing dir (what was in it is hidden until
    /// the unmount).
    pub fn mount_at(path: &Path) -> SmallDisk {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a 64 KiB tmpfs and must run as root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            path: path.to_owned(),
            _dir: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the disk with `name` until a write fails for want of space.
    pub fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join(name)).expect("create the filler");
        let block = [0x5au8; 4096];
        for _ in 0..64 {
            if f.write_all(&block).is_err() {
                return;
            }
        }
        panic!("a 64 KiB tmpfs took 256 KiB");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&self.path)
            .status();
    }
}
