//! The firing alerts, kept on disk (`<state_dir>/alerts.json`) so that a
//! restarted coordinator still resolves what it paged about: a stall that
//! ends while the coordinator is down must still close the PagerDuty
//! incident.
//!
//! This module owns the file: written whole (temp file, fsync, rename) each
//! time the firing set changes, read once at start. A file that cannot be
//! parsed stops the coordinator with an error naming it, rather than being
//! overwritten.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use baton_planner::alerts::{Alert, AlertStatus};

/// Why the alert state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AlertStateError {
    #[error("cannot read the firing-alert state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the firing-alert state {path} is not valid ({detail}); nothing was changed. Move it aside to start with no alerts firing (their resolutions will then not be sent)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot write the firing-alert state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The on-disk set of firing alerts.
#[derive(Debug, Clone)]
pub struct AlertState {
    path: PathBuf,
}

impl AlertState {
    pub fn new(state_dir: &Path) -> AlertState {
        AlertState {
            path: state_dir.join("alerts.json"),
        }
    }

    /// The alerts that were firing when the state was last written (none
    /// when there is no file yet).
    pub fn load(&self) -> Result<Vec<Alert>, AlertStateError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(AlertStateError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let alerts: Vec<Alert> =
            serde_json::from_str(&text).map_err(|e| AlertStateError::Corrupt {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        if let Some(a) = alerts.iter().find(|a| a.status != AlertStatus::Firing) {
            return Err(AlertStateError::Corrupt {
                path: self.path.clone(),
                detail: format!("alert {} is not firing", a.key()),
            });
        }
        Ok(alerts)
    }

    /// Replaces the state with `firing`.
    pub fn store<'a>(
        &self,
        firing: impl IntoIterator<Item = &'a Alert>,
    ) -> Result<(), AlertStateError> {
        let write = |source| AlertStateError::Write {
            path: self.path.clone(),
            source,
        };
        let alerts: Vec<&Alert> = firing.into_iter().collect();
        let text =
            serde_json::to_string_pretty(&alerts).map_err(|e| write(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp).map_err(write)?;
        f.write_all(text.as_bytes()).map_err(write)?;
        f.sync_all().map_err(write)?;
        fs::rename(&tmp, &self.path).map_err(write)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_planner::UnixMs;
    use baton_planner::alerts::CATCH_UP_STALLED;

    #[test]
    fn the_firing_set_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = AlertState::new(dir.path());
        assert!(state.load().unwrap().is_empty(), "no file: nothing firing");
        let a = Alert::firing(CATCH_UP_STALLED, "c", Some("n2"), Some("r1"), UnixMs(5))
            .annotate("lag", "40");
        state.store([&a]).unwrap();
        assert_eq!(AlertState::new(dir.path()).load().unwrap(), vec![a]);
        state.store([]).unwrap();
        assert!(state.load().unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_file_is_refused_naming_it_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.json");
        fs::write(&path, "[{\"status\":").unwrap();
        let err = AlertState::new(dir.path()).load().unwrap_err().to_string();
        assert!(
            err.contains("alerts.json") && err.contains("Move it aside"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "[{\"status\":");
        // A resolved alert has no business in the firing set.
        let a = Alert::firing(CATCH_UP_STALLED, "c", Some("n2"), None, UnixMs(5));
        fs::write(
            &path,
            serde_json::to_string(&[a.resolved(UnixMs(9))]).unwrap(),
        )
        .unwrap();
        let err = AlertState::new(dir.path()).load().unwrap_err().to_string();
        assert!(err.contains("is not firing"), "{err}");
    }
}
