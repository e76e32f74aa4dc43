//! Fault switches for tests: a throttled apply (`SAMPLEKV_APPLY_DELAY_MS`), a
//! pausable apply (`--pause-apply-file` / `SAMPLEKV_PAUSE_APPLY_FILE`: while
//! the file exists apply blocks, or, when the file says `slow <ms>`, each
//! entry waits that long: a member that applies, but slower than writes
//! come), a slow follower (`SAMPLEKV_APPEND_DELAY_MS`) and a backup that
//! is slow to answer (`SAMPLEKV_BACKUP_DELAY_MS`). Owns reading them from the
//! environment and the waits they impose; the state machine and the Raft
//! service call into it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Env var: sleep this many ms before applying each entry.
pub const ENV_APPLY_DELAY_MS: &str = "SAMPLEKV_APPLY_DELAY_MS";
/// Env var: while this file exists, applying blocks.
pub const ENV_PAUSE_APPLY_FILE: &str = "SAMPLEKV_PAUSE_APPLY_FILE";
/// Env var: sleep this many ms before handling each AppendEntries RPC.
pub const ENV_APPEND_DELAY_MS: &str = "SAMPLEKV_APPEND_DELAY_MS";
/// Env var: sleep this many ms before answering each `Admin.Backup`.
pub const ENV_BACKUP_DELAY_MS: &str = "SAMPLEKV_BACKUP_DELAY_MS";

/// How often a paused apply re-checks the pause file.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// Why a fault switch could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// An env var is not a number of milliseconds.
    #[error("env {name}={value:?} is not a number of milliseconds")]
    BadMillis {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
}

/// The active fault switches. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Sleep before applying each entry.
    pub apply_delay: Option<Duration>,
    /// Applying blocks while this file exists.
    pub pause_apply_file: Option<PathBuf>,
    /// Sleep before handling each AppendEntries RPC.
    pub append_delay: Option<Duration>,
    /// Sleep before answering each `Admin.Backup`.
    pub backup_delay: Option<Duration>,
    /// Faults only act once the member is live (not during start-up replay).
    live: Arc<AtomicBool>,
    /// Cancelled at shutdown: waits end at once.
    stop: CancellationToken,
}

fn millis(
    name: &'static str,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Duration>, FaultError> {
    match get(name) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(ms) => Ok(Some(Duration::from_millis(ms))),
            Err(_) => Err(FaultError::BadMillis { name, value: v }),
        },
    }
}

/// `Some(ms)` when the pause file exists and says `slow <ms>`.
fn slow_apply(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().strip_prefix("slow ")?.trim().parse().ok()
}

impl Faults {
    /// Reads the switches; `pause_flag` (the CLI flag) wins over the env var.
    pub fn from_env(pause_flag: Option<PathBuf>) -> Result<Faults, FaultError> {
        Self::from_lookup(pause_flag, &|k| std::env::var(k).ok())
    }

    /// Reads the switches through `get` (for tests).
    pub fn from_lookup(
        pause_flag: Option<PathBuf>,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Faults, FaultError> {
        let pause_apply_file = pause_flag.or_else(|| {
            get(ENV_PAUSE_APPLY_FILE)
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from)
        });
        Ok(Faults {
            apply_delay: millis(ENV_APPLY_DELAY_MS, get)?,
            pause_apply_file,
            append_delay: millis(ENV_APPEND_DELAY_MS, get)?,
            backup_delay: millis(ENV_BACKUP_DELAY_MS, get)?,
            ..Faults::default()
        })
    }

    /// True when any switch is set.
    pub fn any(&self) -> bool {
        self.apply_delay.is_some()
            || self.pause_apply_file.is_some()
            || self.append_delay.is_some()
            || self.backup_delay.is_some()
    }

    /// From now on the switches act.
    pub fn go_live(&self) {
        self.live.store(true, Ordering::SeqCst);
    }

    /// From now on every wait ends at once (shutdown).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Sleeps for `d`, or until shutdown.
    async fn sleep(&self, d: Duration) {
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = self.stop.cancelled() => {}
        }
    }

    fn active(&self) -> bool {
        self.live.load(Ordering::SeqCst) && !self.stop.is_cancelled()
    }

    /// Waits as the apply switches say, before applying one entry. A pause
    /// file that says `slow <ms>` throttles instead of blocking; one that
    /// changes to empty blocks from the next entry on.
    pub async fn before_apply(&self) {
        if !self.active() {
            return;
        }
        if let Some(path) = &self.pause_apply_file
            && let Some(ms) = slow_apply(path)
        {
            self.sleep(Duration::from_millis(ms)).await;
        } else if let Some(path) = &self.pause_apply_file
            && path.exists()
        {
            tracing::warn!(file = %path.display(), "apply paused while the pause file exists");
            while path.exists() && !self.stop.is_cancelled() {
                self.sleep(PAUSE_POLL).await;
            }
            tracing::warn!(file = %path.display(), "apply resumed");
        }
        if let Some(d) = self.apply_delay {
            self.sleep(d).await;
        }
    }

    /// Waits as the backup switch says, before answering one backup.
    pub async fn before_backup(&self) {
        if !self.active() {
            return;
        }
        if let Some(d) = self.backup_delay {
            tracing::warn!(delay = ?d, "backup answer delayed by SAMPLEKV_BACKUP_DELAY_MS");
            self.sleep(d).await;
        }
    }

    /// Waits as the append switch says, before handling one AppendEntries.
    pub async fn before_append(&self) {
        if !self.active() {
            return;
        }
        if let Some(d) = self.append_delay {
            self.sleep(d).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_env_and_flag() {
        let env = |k: &str| match k {
            ENV_APPLY_DELAY_MS => Some("15".to_owned()),
            ENV_PAUSE_APPLY_FILE => Some("/tmp/env-pause".to_owned()),
            ENV_BACKUP_DELAY_MS => Some("2500".to_owned()),
            _ => None,
        };
        let f = Faults::from_lookup(None, &env).unwrap();
        assert_eq!(f.apply_delay, Some(Duration::from_millis(15)));
        assert_eq!(f.pause_apply_file, Some(PathBuf::from("/tmp/env-pause")));
        assert_eq!(f.append_delay, None);
        assert_eq!(f.backup_delay, Some(Duration::from_millis(2500)));
        let f = Faults::from_lookup(Some("/tmp/flag".into()), &env).unwrap();
        assert_eq!(f.pause_apply_file, Some(PathBuf::from("/tmp/flag")));
        let bad = |k: &str| (k == ENV_APPEND_DELAY_MS).then(|| "soon".to_owned());
        assert!(Faults::from_lookup(None, &bad).is_err());
    }

    #[test]
    fn a_pause_file_that_says_slow_throttles() {
        let dir = std::env::temp_dir().join(format!("skv-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pause");
        assert_eq!(slow_apply(&f), None, "no file");
        std::fs::write(&f, "").unwrap();
        assert_eq!(slow_apply(&f), None, "empty: a pause");
        std::fs::write(&f, "slow 100\n").unwrap();
        assert_eq!(slow_apply(&f), Some(100));
        std::fs::write(&f, "slow soon").unwrap();
        assert_eq!(slow_apply(&f), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
