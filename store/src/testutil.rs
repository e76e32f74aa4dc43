//! Test helpers other crates' tests share (the `test-util` feature): a
//! small disk that fills up. Nothing here is used outside tests.

use std::path::Path;

/// A 64 KiB tmpfs mounted on a temporary dir for one test, unmounted (and
/// the dir removed) on drop, also when the test fails. Mounting needs root:
/// a test that uses it fails, loudly, without it (never skips).
#[derive(Debug)]
pub struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    pub fn mount() -> SmallDisk {
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a 64 KiB tmpfs and must run as root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
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
            .arg(self.0.path())
            .status();
    }
}
