//! The release manifest (`<release-dir>/manifest.toml`): which release a
//! member runs and which data format it writes. v1 and v2 releases are the
//! same binary with different manifests. Owns the type, its loader and its
//! writer (used by baton's test harness to lay out releases).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name of a manifest inside a release directory.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// The one product name a samplekv manifest may carry.
pub const PRODUCT_NAME: &str = "samplekv";

/// A release manifest. Unknown keys are ignored (other tools may add their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `"samplekv"`.
    pub name: String,
    /// The release version string, e.g. `"v1"`.
    pub version: String,
    /// The data format this release reads and writes.
    pub format_version: u32,
    /// Simulates a bad release: the member refuses to start (exit 70).
    #[serde(default)]
    pub fail_start: bool,
}

/// Why a manifest could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file is missing or unreadable.
    #[error("cannot read release manifest {}: {source}", path.display())]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid manifest (bad TOML, missing or mistyped key).
    #[error("invalid release manifest {}: {detail}", path.display())]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// What is wrong, naming the key.
        detail: String,
    },
    /// The manifest could not be written.
    #[error("cannot write release manifest {}: {source}", path.display())]
    Write {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest could not be serialized.
    #[error("cannot serialize release manifest: {0}")]
    Serialize(#[from] toml::ser::Error),
}

impl Manifest {
    /// A manifest for `version` writing `format_version`, not failing.
    pub fn new(version: impl Into<String>, format_version: u32) -> Self {
        Manifest {
            name: PRODUCT_NAME.to_owned(),
            version: version.into(),
            format_version,
            fail_start: false,
        }
    }

    /// The manifest path inside `release_dir`.
    pub fn path_in(release_dir: &Path) -> PathBuf {
        release_dir.join(MANIFEST_FILE)
    }

    /// Parses manifest text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let invalid = |detail: String| ManifestError::Invalid {
            path: path.to_owned(),
            detail,
        };
        let m: Manifest =
            toml::from_str(text).map_err(|e| invalid(describe_toml_error(&e, text)))?;
        if m.name != PRODUCT_NAME {
            return Err(invalid(format!(
                "key `name` is {:?}, expected {PRODUCT_NAME:?}",
                m.name
            )));
        }
        if m.version.trim().is_empty() {
            return Err(invalid("key `version` is empty".to_owned()));
        }
        if m.format_version == 0 {
            return Err(invalid("key `format_version` must be >= 1".to_owned()));
        }
        Ok(m)
    }

    /// Loads `<release_dir>/manifest.toml`.
    pub fn load(release_dir: &Path) -> Result<Manifest, ManifestError> {
        let path = Self::path_in(release_dir);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Writes this manifest to `<dir>/manifest.toml`, creating `dir`.
    pub fn write_to(&self, dir: &Path) -> Result<PathBuf, ManifestError> {
        let path = Self::path_in(dir);
        let text = toml::to_string(self)?;
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|source| ManifestError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }
}

/// The error message plus the offending line (which names the key), if any.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim().to_owned();
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    if line.is_empty() {
        message
    } else {
        format!("{message} (line {line_no}: `{line}`)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::new("v2", 2);
        m.fail_start = true;
        m.write_to(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), m);
    }

    #[test]
    fn fail_start_defaults_false() {
        let m = Manifest::parse(
            "name = \"samplekv\"\nversion = \"v1\"\nformat_version = 1\n",
            Path::new("m.toml"),
        )
        .unwrap();
        assert!(!m.fail_start);
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = Manifest::parse(
            "name = \"samplekv\"\nversion = \"v1\"\n",
            Path::new("/r/m.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/r/m.toml") && e.contains("format_version"),
            "{e}"
        );
        let e = Manifest::parse(
            "name = \"samplekv\"\nversion = 1\nformat_version = 1\n",
            Path::new("/r/m.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("version"), "{e}");
        let e = Manifest::load(Path::new("/nonexistent-dir"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent-dir/manifest.toml"), "{e}");
    }
}
