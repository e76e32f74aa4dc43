//! The data directory's format marker (`<data-dir>/FORMAT`), checked fail
//! closed at start-up: a data dir written by a newer format than this
//! release's manifest allows is refused (roll the binary forward instead);
//! an older or absent marker is (re)written with this release's format.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The marker's file name inside the data dir.
pub const FORMAT_FILE: &str = "FORMAT";

/// Why the data dir's format is not acceptable or could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The data dir was written by a newer format than this release supports.
    #[error(
        "data dir {} has format version {found}, newer than this release's format_version {supported}: \
         refusing to start; roll the binary forward to a release with format_version >= {found}",
        dir.display()
    )]
    TooNew {
        /// The data dir.
        dir: PathBuf,
        /// The version in `FORMAT`.
        found: u32,
        /// The manifest's `format_version`.
        supported: u32,
    },
    /// The marker exists but is not a number.
    #[error("data format marker {} is unreadable: {detail}", path.display())]
    Corrupt {
        /// The marker path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// I/O failed.
    #[error("data format marker {}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What [`check_and_stamp`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatOutcome {
    /// No marker: a fresh data dir, now stamped.
    Fresh,
    /// The marker matched.
    Same,
    /// An older marker, now upgraded to the manifest's version.
    Upgraded {
        /// The previous version.
        from: u32,
    },
}

/// Reads the data dir's format version, if the marker exists.
pub fn read(data_dir: &Path) -> Result<Option<u32>, FormatError> {
    let path = data_dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u32>()
            .map(Some)
            .map_err(|e| FormatError::Corrupt {
                path,
                detail: format!("{e} (content {:?})", text.trim()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FormatError::Io { path, source }),
    }
}

/// Refuses a newer format; (re)writes the marker when older or absent.
pub fn check_and_stamp(data_dir: &Path, supported: u32) -> Result<FormatOutcome, FormatError> {
    std::fs::create_dir_all(data_dir).map_err(|source| FormatError::Io {
        path: data_dir.to_owned(),
        source,
    })?;
    let outcome = match read(data_dir)? {
        Some(found) if found > supported => {
            return Err(FormatError::TooNew {
                dir: data_dir.to_owned(),
                found,
                supported,
            });
        }
        Some(found) if found == supported => return Ok(FormatOutcome::Same),
        Some(from) => FormatOutcome::Upgraded { from },
        None => FormatOutcome::Fresh,
    };
    write(data_dir, supported)?;
    Ok(outcome)
}

/// Writes the marker durably (temp file, fsync, rename).
fn write(data_dir: &Path, version: u32) -> Result<(), FormatError> {
    let path = data_dir.join(FORMAT_FILE);
    let tmp = data_dir.join(format!("{FORMAT_FILE}.tmp"));
    let io = |source| FormatError::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(format!("{version}\n").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    crate::fsutil::sync_dir(data_dir).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_same_upgrade_and_too_new() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check_and_stamp(dir.path(), 1).unwrap(),
            FormatOutcome::Fresh
        );
        assert_eq!(check_and_stamp(dir.path(), 1).unwrap(), FormatOutcome::Same);
        assert_eq!(
            check_and_stamp(dir.path(), 2).unwrap(),
            FormatOutcome::Upgraded { from: 1 }
        );
        assert_eq!(read(dir.path()).unwrap(), Some(2));
        let e = check_and_stamp(dir.path(), 1).unwrap_err();
        assert!(matches!(
            e,
            FormatError::TooNew {
                found: 2,
                supported: 1,
                ..
            }
        ));
        let msg = e.to_string();
        assert!(
            msg.contains("format version 2") && msg.contains("format_version 1"),
            "{msg}"
        );
        assert!(msg.contains("roll the binary forward"), "{msg}");
        assert_eq!(
            read(dir.path()).unwrap(),
            Some(2),
            "refusal must not rewrite"
        );
    }
}
