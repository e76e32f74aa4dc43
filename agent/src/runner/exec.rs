//! `exec` mode: the operator's own commands start and stop the member (a
//! systemd unit, a container runtime, a script).
//!
//! This module owns running those commands: `{release_dir}` (what
//! `base_dir/current` resolves to, empty without a `base_dir`) and
//! `{data_dir}` are substituted, each command is bounded by `run.stop_timeout_ms`,
//! and a failure carries the exit status and the last lines of its stderr.
//! The agent does not track the process itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_domain::MemberId;
use futures::future::BoxFuture;

use super::{MemberProcess, ProcessStatus};
use crate::config::ExecConfig;
use crate::runner::supervise::render_command;

/// How many lines of a failed command's stderr its error carries.
const STDERR_TAIL: usize = 5;

/// The operator's start and stop commands for one member.
#[derive(Clone, Debug)]
pub struct Exec {
    member: MemberId,
    cfg: ExecConfig,
    data_dir: PathBuf,
}

impl Exec {
    pub fn new(member: MemberId, cfg: ExecConfig, data_dir: PathBuf) -> Self {
        Exec {
            member,
            cfg,
            data_dir,
        }
    }

    /// Runs one of the operator's commands, bounded by its timeout.
    async fn run(&self, which: &str, argv: &[String]) -> Result<String, String> {
        let release_dir = self
            .cfg
            .base_dir
            .as_ref()
            .and_then(|b| std::fs::canonicalize(b.join("current")).ok())
            .unwrap_or_default();
        let argv = render_command(argv, &release_dir, &self.data_dir);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .envs(&self.cfg.env)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let timeout: Duration = self.cfg.timeout;
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| {
                format!(
                    "member {}: {which} command `{}` did not finish within {timeout:?}",
                    self.member,
                    argv.join(" "),
                )
            })?
            .map_err(|e| {
                format!(
                    "member {}: cannot run {which} command `{}`: {e}",
                    self.member, argv[0]
                )
            })?;
        if out.status.success() {
            Ok(format!("{which} command `{}` exited 0", argv.join(" ")))
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(STDERR_TAIL).collect();
            Err(format!(
                "member {}: {which} command `{}` failed ({}): {}",
                self.member,
                argv.join(" "),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ))
        }
    }
}

impl MemberProcess for Exec {
    fn mode(&self) -> &'static str {
        "exec"
    }

    fn start(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(self.run("start", &self.cfg.start))
    }

    /// The operator's stop command has its own grace; `timeout` is not
    /// passed on.
    fn stop(&self, _timeout: Option<Duration>) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(self.run("stop", &self.cfg.stop))
    }

    fn status(&self) -> ProcessStatus {
        ProcessStatus::Untracked
    }

    fn base_dir(&self) -> Option<&Path> {
        self.cfg.base_dir.as_deref()
    }
}
