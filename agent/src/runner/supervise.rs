//! `supervise` mode: the agent runs its member from a command template.
//!
//! This module owns the member's process: it starts it from
//! `run.command` with `{release_dir}` set to the release that `current`
//! points at, restarts it after a crash (with backoff) unless it was told to
//! stop, and stops it gracefully (SIGTERM, then SIGKILL after `stop_timeout`).
//!
//! The member outlives the agent: a pidfile (pid plus the kernel's start time,
//! so a recycled pid is never mistaken for ours) lets a restarted agent adopt
//! the running member instead of starting a second one. Restarting or
//! upgrading baton never restarts the database.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use baton_domain::{MemberId, ProcessReport};
use futures::future::BoxFuture;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{MemberProcess, ProcessStatus};
use crate::config::SuperviseConfig;

/// Why the supervisor could not run the member.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(
        "member {member}: no current release: {path} does not resolve ({source}); publish and switch a release first"
    )]
    NoCurrentRelease {
        member: MemberId,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("member {member}: cannot start {program}: {source}")]
    Spawn {
        member: MemberId,
        program: String,
        source: std::io::Error,
    },
    #[error(
        "member {member}: the pidfile {path} is unreadable ({detail}); refusing to start, since it may name a running member and a second one would fight it for its data and port: check that no member process is running, then remove the file"
    )]
    Pidfile {
        member: MemberId,
        path: PathBuf,
        detail: String,
    },
    #[error("member {member}: cannot write {path}: {source}")]
    State {
        member: MemberId,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the supervisor is asked to do with the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Running,
    /// Stopped, escalating to SIGKILL after this long (None: the configured
    /// `stop_timeout`).
    Stopped(Option<Duration>),
}

/// What the supervisor knows about the member's process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcState {
    pub pid: Option<u32>,
    /// Starts after a crash (not counting the first start or an adoption).
    pub restarts: u64,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    /// Times the command could not even be spawned.
    pub spawn_failures: u64,
    /// How the last requested stop went.
    pub last_stop: Option<String>,
    /// Exits nobody asked for since the member was last asked to start
    /// (reset by a start request): what the coordinator's health gate
    /// counts against `start_retries`.
    pub exits_since_start: u32,
}

impl ProcState {
    /// What the agent reports of the process to the coordinator.
    pub fn report(&self) -> ProcessReport {
        ProcessReport {
            exits_since_start: self.exits_since_start,
            last_exit: if self.exits_since_start > 0 {
                self.last_exit.clone().unwrap_or_default()
            } else {
                String::new()
            },
        }
    }
}

/// Handle to a running supervisor task.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    /// The supervisor task's latest [`ProcState`]; stop and start wait on it.
    pub state: watch::Receiver<ProcState>,
    /// Tells the supervisor task what the member should be doing.
    desired: mpsc::Sender<Desired>,
    /// `run.base_dir`, where releases are installed.
    base_dir: PathBuf,
}

/// How long a start waits for the member's process to exist.
const START_BOUND: Duration = Duration::from_secs(30);
/// The SIGKILL grace a stop assumes when the coordinator gives none, for
/// bounding the wait (the supervisor itself uses `stop_timeout`).
const STOP_GRACE_BOUND: Duration = Duration::from_secs(60);
/// How much longer than the grace a stop waits for the process to be gone.
const STOP_SLACK: Duration = Duration::from_secs(10);

impl MemberProcess for SupervisorHandle {
    fn mode(&self) -> &'static str {
        "supervise"
    }

    fn start(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(SupervisorHandle::start(self, START_BOUND))
    }

    fn stop(&self, timeout: Option<Duration>) -> BoxFuture<'_, Result<String, String>> {
        let bound = timeout.unwrap_or(STOP_GRACE_BOUND) + STOP_SLACK;
        Box::pin(SupervisorHandle::stop(self, timeout, bound))
    }

    fn status(&self) -> ProcessStatus {
        match self.state.borrow().pid {
            Some(pid) => ProcessStatus::Running { pid },
            None => ProcessStatus::Stopped,
        }
    }

    fn base_dir(&self) -> Option<&Path> {
        Some(&self.base_dir)
    }

    fn exits(&self) -> watch::Receiver<ProcState> {
        self.state.clone()
    }
}

impl SupervisorHandle {
    pub async fn set_desired(&self, d: Desired) {
        // The task only ends at shutdown, when nobody cares any more.
        let _ = self.desired.send(d).await;
    }

    /// Stops the member and waits until it is gone.
    pub async fn stop(&self, timeout: Option<Duration>, bound: Duration) -> Result<String, String> {
        self.set_desired(Desired::Stopped(timeout)).await;
        let mut rx = self.state.clone();
        match tokio::time::timeout(bound, rx.wait_for(|s| s.pid.is_none())).await {
            Ok(Ok(s)) => Ok(s
                .last_stop
                .clone()
                .unwrap_or_else(|| "already stopped".to_owned())),
            Ok(Err(_)) => Err("supervisor stopped".to_owned()),
            Err(_) => Err(format!("member still running after {bound:?}")),
        }
    }

    /// Starts the member and waits until its process exists.
    pub async fn start(&self, bound: Duration) -> Result<String, String> {
        let failures = self.state.borrow().spawn_failures;
        self.set_desired(Desired::Running).await;
        let mut rx = self.state.clone();
        match tokio::time::timeout(
            bound,
            rx.wait_for(|s| s.pid.is_some() || s.spawn_failures > failures),
        )
        .await
        {
            Ok(Ok(s)) => match s.pid {
                Some(pid) => Ok(format!("started, pid {pid}")),
                None => Err(s
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "could not start".to_owned())),
            },
            Ok(Err(_)) => Err("supervisor stopped".to_owned()),
            Err(_) => Err(format!("member not started after {bound:?}")),
        }
    }
}

/// Substitutes `{release_dir}` and `{data_dir}` in each argv element.
pub fn render_command(template: &[String], release_dir: &Path, data_dir: &Path) -> Vec<String> {
    template
        .iter()
        .map(|a| {
            a.replace("{release_dir}", &release_dir.to_string_lossy())
                .replace("{data_dir}", &data_dir.to_string_lossy())
        })
        .collect()
}

/// The kernel's start time of `pid` (field 22 of /proc/pid/stat), or None if
/// there is no such live process.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

struct Supervisor {
    member: MemberId,
    cfg: SuperviseConfig,
    data_dir: PathBuf,
    state_dir: PathBuf,
    /// Publishes the process's state to every [`SupervisorHandle`].
    state: watch::Sender<ProcState>,
}

enum Running {
    Child(tokio::process::Child),
    Adopted(u32),
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Child(c) => c.id(),
            Running::Adopted(p) => Some(*p),
        }
    }
}

/// The pidfile's fixed length (a pid and a start time, space-padded).
const PIDFILE_LEN: usize = 48;

impl Supervisor {
    fn pidfile(&self) -> PathBuf {
        self.state_dir.join("member.pid")
    }

    /// Writes `<pid> <start time>` into the pidfile in place, padded to a
    /// fixed [`PIDFILE_LEN`] bytes: once the file exists, rewriting it needs
    /// no new space, so a member can be started again on a full disk (a
    /// temp file and a rename would need a free block each time).
    fn write_pidfile(&self, pid: u32) -> Result<(), SupervisorError> {
        use std::os::unix::fs::FileExt;
        let start = proc_start_time(pid).unwrap_or(0);
        let path = self.pidfile();
        let mut line = format!("{pid} {start}");
        line.extend(std::iter::repeat_n(
            ' ',
            PIDFILE_LEN.saturating_sub(line.len() + 1),
        ));
        line.push('\n');
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|f| {
                f.write_all_at(line.as_bytes(), 0)?;
                f.set_len(line.len() as u64)
            })
            .map_err(|source| SupervisorError::State {
                member: self.member.clone(),
                path,
                source,
            })
    }

    /// A member left running by an earlier agent, if the pidfile names a
    /// live process with the recorded start time. No pidfile, or one naming
    /// a process that is gone (or a pid reused by another), adopts nothing;
    /// a pidfile that does not parse is an error: guessing could start a
    /// second member beside a running one.
    fn adoptable(&self) -> Result<Option<u32>, SupervisorError> {
        let path = self.pidfile();
        let bad = |detail: String| SupervisorError::Pidfile {
            member: self.member.clone(),
            path: path.clone(),
            detail,
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(format!("cannot read it: {e}"))),
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| bad("it is not text".into()))?;
        let shown: String = text.trim().chars().take(40).collect();
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [pid, start] = fields[..] else {
            return Err(bad(format!(
                "it holds {shown:?}, not \"<pid> <start time>\""
            )));
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
            return Err(bad(format!(
                "it holds {shown:?}, not \"<pid> <start time>\""
            )));
        };
        Ok((pid > 0 && proc_start_time(pid) == Some(start)).then_some(pid))
    }

    fn spawn(&self) -> Result<tokio::process::Child, SupervisorError> {
        let current = self.cfg.base_dir.join("current");
        let release_dir = std::fs::canonicalize(&current).map_err(|source| {
            SupervisorError::NoCurrentRelease {
                member: self.member.clone(),
                path: current.clone(),
                source,
            }
        })?;
        let argv = render_command(&self.cfg.command, &release_dir, &self.data_dir);
        let log_path = self.state_dir.join("member.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| SupervisorError::State {
                member: self.member.clone(),
                path: log_path.clone(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| SupervisorError::State {
            member: self.member.clone(),
            path: log_path,
            source,
        })?;
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .envs(&self.cfg.env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C aimed at the agent must not
            // reach the database.
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn().map_err(|source| SupervisorError::Spawn {
            member: self.member.clone(),
            program: argv[0].clone(),
            source,
        })?;
        if let Some(pid) = child.id() {
            self.write_pidfile(pid)?;
            tracing::info!(member = %self.member, pid, release_dir = %release_dir.display(), "started member");
        }
        Ok(child)
    }

    /// Waits until the running member exits; returns a description.
    async fn wait_exit(running: &mut Running) -> String {
        match running {
            Running::Child(c) => match c.wait().await {
                Ok(status) => format!("exited with {status}"),
                Err(e) => format!("wait failed: {e}"),
            },
            Running::Adopted(pid) => {
                let pid = *pid;
                let start = proc_start_time(pid);
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    if proc_start_time(pid) != start || start.is_none() {
                        return "exited (adopted process, status unknown)".to_owned();
                    }
                }
            }
        }
    }

    async fn stop(&self, running: &mut Running, timeout: Option<Duration>) -> String {
        let Some(pid) = running.pid() else {
            return "not running".to_owned();
        };
        let Ok(raw) = i32::try_from(pid) else {
            return "bad pid".to_owned();
        };
        let timeout = timeout.unwrap_or(self.cfg.stop_timeout);
        tracing::info!(member = %self.member, pid, "stopping member (SIGTERM)");
        let started = tokio::time::Instant::now();
        let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        match tokio::time::timeout(timeout, Self::wait_exit(running)).await {
            Ok(how) => format!(
                "stopped pid {pid} with SIGTERM in {:?} ({how})",
                started.elapsed()
            ),
            Err(_) => {
                tracing::warn!(member = %self.member, pid, ?timeout, "member ignored SIGTERM; sending SIGKILL");
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
                Self::wait_exit(running).await;
                format!("pid {pid} ignored SIGTERM for {timeout:?}; killed with SIGKILL")
            }
        }
    }

    async fn run(
        self,
        adopted: Option<u32>,
        mut desired_rx: mpsc::Receiver<Desired>,
        shutdown: CancellationToken,
    ) {
        let mut desired = Desired::Running;
        let mut running: Option<Running> = adopted.map(|pid| {
            tracing::info!(member = %self.member, pid, "adopted running member from pidfile");
            Running::Adopted(pid)
        });
        let mut first_start = running.is_none();
        let mut backoff = Duration::from_millis(100);
        let mut started_at = tokio::time::Instant::now();
        // A start request after a stop begins a new count of exits.
        let want = |current: Desired, next: Desired| {
            if current != Desired::Running && next == Desired::Running {
                self.state.send_modify(|s| s.exits_since_start = 0);
            }
            next
        };
        loop {
            let pid = running.as_ref().and_then(Running::pid);
            self.state.send_modify(|s| s.pid = pid);
            match (&mut running, desired) {
                (None, Desired::Running) => match self.spawn() {
                    Ok(child) => {
                        self.state.send_modify(|s| {
                            if !first_start {
                                s.restarts += 1;
                            }
                            // A later stop's answer is about this run.
                            s.last_stop = None;
                        });
                        first_start = false;
                        running = Some(Running::Child(child));
                        started_at = tokio::time::Instant::now();
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start member");
                        self.state.send_modify(|s| {
                            s.last_error = Some(e.to_string());
                            s.spawn_failures += 1;
                        });
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                            Some(d) = desired_rx.recv() => desired = want(desired, d),
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                },
                (Some(r), Desired::Stopped(timeout)) => {
                    let how = self.stop(r, timeout).await;
                    self.state.send_modify(|s| s.last_stop = Some(how));
                    running = None;
                }
                (Some(r), Desired::Running) => {
                    tokio::select! {
                        // The member outlives the agent: leave it running.
                        () = shutdown.cancelled() => return,
                        Some(d) = desired_rx.recv() => desired = want(desired, d),
                        how = Self::wait_exit(r) => {
                            // A member that ran a while is restarted at once;
                            // one that keeps dying early backs off (100 ms,
                            // doubling to 5 s) so a bad release cannot spin.
                            let wait = if started_at.elapsed() >= Duration::from_secs(1) {
                                backoff = Duration::from_millis(100);
                                Duration::ZERO
                            } else {
                                let w = backoff;
                                backoff = (backoff * 2).min(Duration::from_secs(5));
                                w
                            };
                            tracing::warn!(member = %self.member, how, "member exited; restarting after {wait:?}");
                            // Gone now: a stop asked for during the backoff
                            // returns at once, and is not preceded by one
                            // more start of a release that keeps dying.
                            self.state.send_modify(|s| {
                                s.pid = None;
                                s.last_exit = Some(how);
                                s.exits_since_start = s.exits_since_start.saturating_add(1);
                            });
                            running = None;
                            tokio::select! {
                                () = shutdown.cancelled() => return,
                                () = tokio::time::sleep(wait) => {}
                                Some(d) = desired_rx.recv() => desired = want(desired, d),
                            }
                        }
                    }
                }
                (None, Desired::Stopped(_)) => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        Some(d) = desired_rx.recv() => desired = want(desired, d),
                    }
                    backoff = Duration::from_millis(100);
                }
            }
        }
    }
}

/// Starts the supervisor task on `tracker`, adopting a member an earlier
/// agent left running. Refuses (starting nothing) when the pidfile cannot
/// be read.
pub fn spawn(
    member: MemberId,
    cfg: SuperviseConfig,
    data_dir: PathBuf,
    state_dir: PathBuf,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) -> Result<SupervisorHandle, SupervisorError> {
    let (state_tx, state_rx) = watch::channel(ProcState::default());
    let (desired_tx, desired_rx) = mpsc::channel(8);
    let base_dir = cfg.base_dir.clone();
    let sup = Supervisor {
        member,
        cfg,
        data_dir,
        state_dir,
        state: state_tx,
    };
    let adopted = sup.adoptable()?;
    tracker.spawn(sup.run(adopted, desired_rx, shutdown));
    Ok(SupervisorHandle {
        state: state_rx,
        desired: desired_tx,
        base_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_substitute_dirs() {
        let argv = render_command(
            &["{release_dir}/bin/kv".into(), "--data={data_dir}".into()],
            Path::new("/r/v2"),
            Path::new("/d"),
        );
        assert_eq!(argv, vec!["/r/v2/bin/kv", "--data=/d"]);
    }

    #[test]
    fn start_time_of_self_is_readable_and_dead_pids_are_not() {
        assert!(proc_start_time(std::process::id()).is_some());
        assert!(proc_start_time(u32::MAX - 1).is_none());
    }

    fn setup(script: &str) -> (tempfile::TempDir, SuperviseConfig) {
        let dir = tempfile::tempdir().unwrap();
        let rel = dir.path().join("releases/v1");
        std::fs::create_dir_all(&rel).unwrap();
        std::os::unix::fs::symlink(&rel, dir.path().join("current")).unwrap();
        let cfg = SuperviseConfig {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            base_dir: dir.path().to_owned(),
            env: Default::default(),
            stop_timeout: Duration::from_secs(2),
        };
        (dir, cfg)
    }

    async fn wait_for(
        rx: &mut watch::Receiver<ProcState>,
        f: impl Fn(&ProcState) -> bool,
    ) -> ProcState {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| f(s)))
            .await
            .expect("supervisor state in time")
            .expect("supervisor alive")
            .clone()
    }

    #[tokio::test]
    async fn restarts_a_crashed_member_and_stops_on_request() {
        let (dir, cfg) = setup("exec sleep 30");
        let tracker = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        let m = MemberId::new("n1").unwrap();
        let mut h = spawn(
            m,
            cfg,
            dir.path().into(),
            dir.path().into(),
            &tracker,
            shutdown.clone(),
        )
        .unwrap();
        let first = wait_for(&mut h.state, |s| s.pid.is_some())
            .await
            .pid
            .unwrap();
        kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
        let second = wait_for(&mut h.state, |s| s.pid.is_some_and(|p| p != first)).await;
        assert_eq!(second.restarts, 1);
        assert_eq!(
            MemberProcess::status(&h),
            ProcessStatus::Running {
                pid: second.pid.unwrap()
            }
        );
        let how = h.stop(None, Duration::from_secs(5)).await.unwrap();
        assert!(how.contains("SIGTERM"), "{how}");
        let pid = second.pid.unwrap();
        assert!(
            proc_start_time(pid).is_none(),
            "stopped member must be gone"
        );
        assert_eq!(MemberProcess::status(&h), ProcessStatus::Stopped);
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }

    /// Every exit nobody asked for is counted and reported, with how it
    /// ended; a requested stop is not an exit, and the next start begins a
    /// new count.
    #[tokio::test]
    async fn exits_since_start_count_crashes_and_reset_on_start() {
        let (dir, cfg) = setup("exit 3");
        let tracker = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        let m = MemberId::new("n1").unwrap();
        let mut h = spawn(
            m,
            cfg,
            dir.path().into(),
            dir.path().into(),
            &tracker,
            shutdown.clone(),
        )
        .unwrap();
        let mut exits = MemberProcess::exits(&h);
        let crashed = wait_for(&mut exits, |s| s.exits_since_start >= 2).await;
        let report = crashed.report();
        assert!(report.exits_since_start >= 2);
        assert!(report.last_exit.contains("exit status: 3"), "{report:?}");
        h.stop(None, Duration::from_secs(5)).await.unwrap();
        let stopped = h.state.borrow().clone();
        h.set_desired(Desired::Running).await;
        let fresh = wait_for(&mut h.state, |s| {
            s.exits_since_start < stopped.exits_since_start
        })
        .await;
        assert!(fresh.exits_since_start <= 1, "{fresh:?}");
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        // A member that never exited reports nothing.
        assert_eq!(ProcState::default().report(), ProcessReport::default());
    }

    /// A member that keeps dying backs off for longer each time; a stop
    /// asked for during that backoff is honoured at once, not after it
    /// (the revert of a crash-looping release must not wait seconds).
    #[tokio::test]
    async fn a_stop_during_the_crash_backoff_returns_at_once() {
        let (dir, cfg) = setup("exit 3");
        let tracker = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        let h = spawn(
            MemberId::new("n1").unwrap(),
            cfg,
            dir.path().into(),
            dir.path().into(),
            &tracker,
            shutdown.clone(),
        )
        .unwrap();
        // After 4 quick exits the next backoff is 1.6 s.
        let mut exits = MemberProcess::exits(&h);
        wait_for(&mut exits, |s| s.exits_since_start >= 4 && s.pid.is_none()).await;
        let how = h.stop(None, Duration::from_millis(500)).await;
        assert_eq!(how.as_deref(), Ok("already stopped"));
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn a_restarted_agent_adopts_the_running_member() {
        let (dir, cfg) = setup("exec sleep 30");
        let m = MemberId::new("n1").unwrap();
        let tracker = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        let mut h = spawn(
            m.clone(),
            cfg.clone(),
            dir.path().into(),
            dir.path().into(),
            &tracker,
            shutdown.clone(),
        )
        .unwrap();
        let pid = wait_for(&mut h.state, |s| s.pid.is_some())
            .await
            .pid
            .unwrap();
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        assert!(proc_start_time(pid).is_some(), "member outlives the agent");

        let tracker = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        let mut h = spawn(
            m,
            cfg,
            dir.path().into(),
            dir.path().into(),
            &tracker,
            shutdown.clone(),
        )
        .unwrap();
        let adopted = wait_for(&mut h.state, |s| s.pid.is_some()).await;
        assert_eq!(adopted.pid, Some(pid));
        assert_eq!(adopted.restarts, 0);
        h.stop(None, Duration::from_secs(5)).await.unwrap();
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn a_garbage_pidfile_refuses_to_start_and_a_stale_one_is_ignored() {
        let (dir, cfg) = setup("echo started >> started; exec sleep 30");
        let m = MemberId::new("n1").unwrap();
        let pidfile = dir.path().join("member.pid");
        for garbage in [&b"12x 99\n"[..], b"\xff\xfe", b"4242\n", b"1 2 3\n", b""] {
            std::fs::write(&pidfile, garbage).unwrap();
            let tracker = tokio_util::task::TaskTracker::new();
            let err = spawn(
                m.clone(),
                cfg.clone(),
                dir.path().into(),
                dir.path().into(),
                &tracker,
                CancellationToken::new(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with("member n1: the pidfile") && err.contains("refusing to start"),
                "{garbage:?}: {err}"
            );
            assert!(tracker.is_empty(), "nothing was started");
            assert_eq!(
                std::fs::read(&pidfile).unwrap(),
                garbage,
                "left for the operator"
            );
        }
        assert!(!dir.path().join("started").exists());
        // A pidfile naming a process that is gone is stale: the member starts.
        std::fs::write(&pidfile, format!("{} 1\n", u32::MAX - 1)).unwrap();
        let tracker = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        let mut h = spawn(
            m,
            cfg,
            dir.path().into(),
            dir.path().into(),
            &tracker,
            shutdown.clone(),
        )
        .unwrap();
        let started = wait_for(&mut h.state, |s| s.pid.is_some()).await;
        assert_ne!(started.pid, Some(u32::MAX - 1));
        h.stop(None, Duration::from_secs(5)).await.unwrap();
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn a_member_is_started_again_on_a_full_state_disk() {
        let (dir, cfg) = setup("exec sleep 30");
        let disk = baton_store::testutil::SmallDisk::mount();
        let m = MemberId::new("n1").unwrap();
        let tracker = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        let mut h = spawn(
            m,
            cfg,
            dir.path().into(),
            disk.path().into(),
            &tracker,
            shutdown.clone(),
        )
        .unwrap();
        let first = wait_for(&mut h.state, |s| s.pid.is_some()).await.pid;
        h.stop(None, Duration::from_secs(5)).await.unwrap();
        disk.fill("filler");
        h.start(Duration::from_secs(5)).await.unwrap();
        let again = wait_for(&mut h.state, |s| s.pid.is_some() && s.pid != first).await;
        let text = std::fs::read_to_string(disk.path().join("member.pid")).unwrap();
        assert_eq!(
            text.split_whitespace().next(),
            again.pid.map(|p| p.to_string()).as_deref(),
            "the pidfile names the new process: {text:?}"
        );
        assert_eq!(text.len(), PIDFILE_LEN);
        h.stop(None, Duration::from_secs(5)).await.unwrap();
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }
}

#[cfg(test)]
mod escalation_tests {
    use super::*;

    #[tokio::test]
    async fn a_member_that_ignores_sigterm_is_killed_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let rel = dir.path().join("releases/v1");
        std::fs::create_dir_all(&rel).unwrap();
        std::os::unix::fs::symlink(&rel, dir.path().join("current")).unwrap();
        let cfg = SuperviseConfig {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "trap '' TERM; exec sleep 30".into(),
            ],
            base_dir: dir.path().to_owned(),
            env: Default::default(),
            stop_timeout: Duration::from_secs(30),
        };
        let tracker = tokio_util::task::TaskTracker::new();
        let shutdown = CancellationToken::new();
        let h = spawn(
            MemberId::new("n1").unwrap(),
            cfg,
            dir.path().into(),
            dir.path().into(),
            &tracker,
            shutdown.clone(),
        )
        .unwrap();
        h.start(Duration::from_secs(5)).await.unwrap();
        // Give sh a moment to install the trap before exec.
        let pid = h.state.borrow().pid.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            != "sleep"
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "sh never exec'd sleep"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let how = h
            .stop(Some(Duration::from_millis(300)), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(how.contains("SIGKILL"), "{how}");
        assert!(proc_start_time(pid).is_none());
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
