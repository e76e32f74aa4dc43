//! Shared test support: real `samplekv` processes on free loopback ports in
//! a temp dir, killed by pid on drop; bounded polling helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_proto::samplekv::{Role, StatusResponse};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use samplekv::Manifest;
use samplekv::client;
use tokio::time::Instant;

/// Serializes the cluster tests of one test binary: each runs 3 members
/// plus load, and 2 cores do not carry several at once without spurious
/// elections.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn samplekv_bin() -> &'static str {
    env!("CARGO_BIN_EXE_samplekv")
}

/// A free TCP port on 127.0.0.1 (bound, read, dropped).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `f` every 25 ms until it yields `Some`, or fails after `within`.
pub async fn poll_until<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One member's files and (maybe) running process.
#[derive(Debug)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub release_dir: PathBuf,
    pub pause_file: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Member {
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Sends SIGTERM by pid.
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }

    /// SIGKILL by pid and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<Option<i32>> {
        let child = self.child.as_mut().context("member not running")?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st.code());
            }
            if Instant::now() >= deadline {
                bail!("member {} did not exit within {within:?}", self.id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn status(&self) -> Result<StatusResponse> {
        Ok(client::status_within(&self.addr, Duration::from_millis(500)).await?)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A cluster of real member processes. Drop kills every one by pid.
#[derive(Debug)]
pub struct Cluster {
    pub members: Vec<Member>,
    pub peers: String,
    /// Removed last, after every process is dead.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Lays out `n` members (manifest v1/format 1) without starting them.
    pub fn new(n: usize) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("samplekv-test-")
            .tempdir()?;
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let base = dir.path().join(format!("m{id}"));
            let release_dir = base.join("release");
            Manifest::new("v1", 1).write_to(&release_dir)?;
            members.push(Member {
                id,
                addr: format!("127.0.0.1:{port}"),
                data_dir: base.join("data"),
                release_dir,
                pause_file: base.join("pause-apply"),
                log: base.join("member.log"),
                child: None,
            });
        }
        Ok(Cluster {
            members,
            peers,
            dir,
        })
    }

    /// Starts member `i` (0-based) with extra env vars.
    pub fn start(&mut self, i: usize, env: &[(&str, &str)]) -> Result<()> {
        let peers = self.peers.clone();
        let m = &mut self.members[i];
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(samplekv_bin());
        cmd.args([
            "--id",
            &m.id.to_string(),
            "--listen",
            &m.addr,
            "--peers",
            &peers,
        ])
        .arg("--data-dir")
        .arg(&m.data_dir)
        .arg("--release-dir")
        .arg(&m.release_dir)
        .arg("--pause-apply-file")
        .arg(&m.pause_file)
        .env("RUST_LOG", "info,openraft=warn")
        .env_remove("SAMPLEKV_APPLY_DELAY_MS")
        .env_remove("SAMPLEKV_APPEND_DELAY_MS")
        .env_remove("SAMPLEKV_PAUSE_APPLY_FILE")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        m.child = Some(cmd.spawn().context("spawn samplekv")?);
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        self.start_all_with(&[])
    }

    pub fn start_all_with(&mut self, env: &[(&str, &str)]) -> Result<()> {
        for i in 0..self.members.len() {
            self.start(i, env)?;
        }
        Ok(())
    }

    pub fn addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.addr.clone()).collect()
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.members
            .iter()
            .position(|m| m.id == id)
            .expect("known member id")
    }

    /// Statuses of the running members that answer.
    pub async fn statuses(&self) -> BTreeMap<u64, StatusResponse> {
        let mut out = BTreeMap::new();
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            if let Ok(s) = m.status().await {
                out.insert(m.id, s);
            }
        }
        out
    }

    /// Waits until every running member answers, exactly one says it leads,
    /// and all agree on it; returns the leader's id.
    pub async fn wait_one_leader(&self, within: Duration) -> Result<u64> {
        let running = self.members.iter().filter(|m| m.child.is_some()).count();
        poll_until("exactly one agreed leader", within, || async {
            let st = self.statuses().await;
            if st.len() != running {
                return None;
            }
            let leaders: Vec<u64> = st
                .values()
                .filter(|s| s.role == Role::Leader as i32)
                .map(|s| s.member_id)
                .collect();
            let [leader] = leaders[..] else {
                return None;
            };
            st.values().all(|s| s.leader_id == leader).then_some(leader)
        })
        .await
    }

    /// Waits until member `id` has applied at least `index`.
    pub async fn wait_applied(
        &self,
        id: u64,
        index: u64,
        within: Duration,
    ) -> Result<StatusResponse> {
        let m = &self.members[self.index_of(id)];
        poll_until(
            &format!("member {id} applied >= {index}"),
            within,
            || async {
                m.status()
                    .await
                    .ok()
                    .filter(|s| s.applied_revision >= index)
            },
        )
        .await
    }

    fn dump_logs(&self) {
        for m in &self.members {
            let text = m.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "----- member {} ({}), last {} lines\n{}",
                m.id,
                m.log.display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// Runs `samplekv` once for a start-up check; returns (exit code, output).
pub async fn run_to_exit(
    data_dir: &Path,
    release_dir: &Path,
    within: Duration,
) -> Result<(Option<i32>, String)> {
    let port = free_port();
    let log = data_dir.with_extension("log");
    let out = fs::File::create(&log)?;
    let err = out.try_clone()?;
    let mut child = Command::new(samplekv_bin())
        .args(["--id", "1", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--peers", &format!("1=127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--release-dir")
        .arg(release_dir)
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()?;
    let deadline = Instant::now() + within;
    let code = loop {
        if let Some(st) = child.try_wait()? {
            break st.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "samplekv did not exit within {within:?}; output:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok((code, fs::read_to_string(&log)?))
}
