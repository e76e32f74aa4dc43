//! Running the member: how the agent starts, stops and sees the member
//! process in each run mode.
//!
//! This module owns the [`MemberProcess`] trait and [`build`], which picks
//! one implementation from `[run] mode`:
//! - [`supervise`]: the agent runs the member itself from a command template
//!   (restarts it after a crash, adopts it again after the agent restarts).
//! - [`exec`]: the operator's own `start`/`stop` commands (a systemd unit, a
//!   container runtime, a script); the agent runs them and waits.
//! - [`External`]: something else runs the member; the agent refuses to
//!   start or stop it.
//!
//! The executor holds exactly one `Box<dyn MemberProcess>`; the leader
//! interlock on stop is the executor's, not the runner's.

pub mod exec;
pub mod supervise;

use std::path::Path;
use std::time::Duration;

use baton_domain::MemberId;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RunMode;

/// What a runner knows about the member's process right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessStatus {
    /// Running as this pid (supervise mode).
    Running { pid: u32 },
    /// Not running (supervise mode: stopped, crashed or not started yet).
    Stopped,
    /// This agent does not track the process (exec and external modes).
    Untracked,
}

/// Starts, stops and reports on the member's process, in one run mode.
///
/// Errors are the operator-facing line the command result carries.
pub trait MemberProcess: Send + Sync + std::fmt::Debug {
    /// The run mode's name (`supervise`, `exec`, `external`).
    fn mode(&self) -> &'static str;
    /// Starts the member and waits until it runs (or the start failed).
    fn start(&self) -> BoxFuture<'_, Result<String, String>>;
    /// Stops the member and waits until it is gone. `timeout` is the
    /// coordinator's grace before SIGKILL (None: the configured one).
    fn stop(&self, timeout: Option<Duration>) -> BoxFuture<'_, Result<String, String>>;
    /// The process as this runner sees it.
    fn status(&self) -> ProcessStatus;
    /// Where releases are installed (`releases/<version>/`, `current`), when
    /// baton installs them in this mode.
    fn base_dir(&self) -> Option<&Path>;
    /// The process's state as this runner sees it, changing on every exit
    /// and start ([`supervise::ProcState::report`] is what the agent
    /// reports). Runners that see no exits hand out a receiver that never
    /// changes.
    fn exits(&self) -> watch::Receiver<supervise::ProcState> {
        watch::channel(supervise::ProcState::default()).1
    }
}

/// The runner for `config`'s run mode; supervise mode starts its task on
/// `tracker` (and refuses an unreadable pidfile).
pub fn build(
    member: &MemberId,
    run: &RunMode,
    data_dir: &Path,
    state_dir: &Path,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Box<dyn MemberProcess>, supervise::SupervisorError> {
    Ok(match run {
        RunMode::External => Box::new(External {
            member: member.clone(),
        }),
        RunMode::Supervise(sup) => Box::new(supervise::spawn(
            member.clone(),
            sup.clone(),
            data_dir.to_owned(),
            state_dir.to_owned(),
            tracker,
            shutdown,
        )?),
        RunMode::Exec(cfg) => Box::new(exec::Exec::new(
            member.clone(),
            cfg.clone(),
            data_dir.to_owned(),
        )),
    })
}

/// `external` mode: something else runs the member; start and stop are
/// refused with what to configure instead.
#[derive(Clone, Debug)]
pub struct External {
    pub member: MemberId,
}

impl External {
    fn refuse(&self) -> String {
        format!(
            "member {} runs in {} mode, so this agent cannot stop or start it; use run.mode = \"supervise\"",
            self.member,
            self.mode()
        )
    }
}

impl MemberProcess for External {
    fn mode(&self) -> &'static str {
        "external"
    }
    fn start(&self) -> BoxFuture<'_, Result<String, String>> {
        let refused = self.refuse();
        Box::pin(async move { Err(refused) })
    }
    fn stop(&self, _timeout: Option<Duration>) -> BoxFuture<'_, Result<String, String>> {
        let refused = self.refuse();
        Box::pin(async move { Err(refused) })
    }
    fn status(&self) -> ProcessStatus {
        ProcessStatus::Untracked
    }
    fn base_dir(&self) -> Option<&Path> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn external_mode_refuses_both_ways_and_tracks_nothing() {
        let p = External {
            member: MemberId::new("n1").unwrap(),
        };
        for got in [p.start().await, p.stop(None).await] {
            assert_eq!(
                got.unwrap_err(),
                "member n1 runs in external mode, so this agent cannot stop or start it; use run.mode = \"supervise\""
            );
        }
        assert_eq!(p.status(), ProcessStatus::Untracked);
        assert!(p.base_dir().is_none());
    }
}
