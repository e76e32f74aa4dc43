//! The one-time import of `<state_dir>/alerts.json`, where coordinators
//! before the journal kept the firing alerts.
//!
//! At start, an existing file is read, each alert in it that the journal
//! does not already have firing is proposed as fired, and the file is
//! renamed to `alerts.json.imported`, so it is imported exactly once and
//! kept for the operator. A file that cannot be parsed stops the
//! coordinator with an error naming it, and is left as it was.

use std::fs;
use std::path::{Path, PathBuf};

use baton_planner::alerts::{Alert, AlertStatus};

use super::{AlertEntry, Journal, JournalError};

/// The legacy file's name in the state directory.
pub const ALERTS_JSON: &str = "alerts.json";

/// Why the legacy firing-alert file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read the firing-alert state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the firing-alert state {path} is not valid ({detail}); nothing was changed. Move it aside to start with no alerts firing (their resolutions will then not be sent)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot import the firing-alert state {path} into the journal: {source}")]
    Journal { path: PathBuf, source: JournalError },
    #[error("imported {path} but cannot rename it aside to {to}: {source}; rename it by hand")]
    Rename {
        path: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

/// The alerts in a legacy `alerts.json` (none when there is no file).
fn load(path: &Path) -> Result<Vec<Alert>, ImportError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ImportError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let alerts: Vec<Alert> = serde_json::from_str(&text).map_err(|e| ImportError::Corrupt {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    if let Some(a) = alerts.iter().find(|a| a.status != AlertStatus::Firing) {
        return Err(ImportError::Corrupt {
            path: path.to_owned(),
            detail: format!("alert {} is not firing", a.key()),
        });
    }
    Ok(alerts)
}

/// Imports `<state_dir>/alerts.json` into `journal` once, if it exists;
/// returns how many alerts were newly journaled as firing.
pub async fn import_alerts_json(
    state_dir: &Path,
    journal: &dyn Journal,
) -> Result<usize, ImportError> {
    let path = state_dir.join(ALERTS_JSON);
    if !path.exists() {
        return Ok(0);
    }
    let alerts = load(&path)?;
    let mut imported = 0;
    for alert in alerts {
        if journal
            .subscribe()
            .borrow()
            .firing
            .contains_key(&alert.key())
        {
            continue;
        }
        journal
            .propose(AlertEntry::Fired { alert }.into())
            .await
            .map_err(|source| ImportError::Journal {
                path: path.clone(),
                source,
            })?;
        imported += 1;
    }
    let to = path.with_extension("json.imported");
    fs::rename(&path, &to).map_err(|source| ImportError::Rename {
        path: path.clone(),
        to: to.clone(),
        source,
    })?;
    tracing::info!(from = %path.display(), to = %to.display(), imported, "imported the firing alerts into the journal");
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use baton_planner::UnixMs;
    use baton_planner::alerts::CATCH_UP_STALLED;

    use super::super::MemoryJournal;
    use super::*;

    #[tokio::test]
    async fn an_alerts_json_is_imported_once_and_renamed_aside() {
        let dir = tempfile::tempdir().unwrap();
        let journal = MemoryJournal::new();
        assert_eq!(import_alerts_json(dir.path(), &journal).await.unwrap(), 0);
        let a = Alert::firing(CATCH_UP_STALLED, "c", Some("n2"), Some("r1"), UnixMs(5))
            .annotate("lag", "40");
        let text = serde_json::to_string_pretty(&[&a]).unwrap();
        fs::write(dir.path().join(ALERTS_JSON), &text).unwrap();
        assert_eq!(import_alerts_json(dir.path(), &journal).await.unwrap(), 1);
        let firing = journal.subscribe().borrow().firing.clone();
        assert_eq!(firing.values().collect::<Vec<_>>(), vec![&a]);
        assert!(!dir.path().join(ALERTS_JSON).exists());
        assert_eq!(
            fs::read_to_string(dir.path().join("alerts.json.imported")).unwrap(),
            text
        );
        // A second start finds nothing to import.
        assert_eq!(import_alerts_json(dir.path(), &journal).await.unwrap(), 0);
        assert_eq!(journal.entries().len(), 1);
    }

    #[tokio::test]
    async fn a_corrupt_file_is_refused_naming_it_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let journal = MemoryJournal::new();
        let path = dir.path().join("alerts.json");
        fs::write(&path, "[{\"status\":").unwrap();
        let err = import_alerts_json(dir.path(), &journal)
            .await
            .unwrap_err()
            .to_string();
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
        let err = import_alerts_json(dir.path(), &journal)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not firing"), "{err}");
        assert!(journal.entries().is_empty());
        assert!(path.exists());
    }
}
